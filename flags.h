/*
 flags.h — command-line flags as a table: each flag's name, type, destination and valid range, and the
 one function that checks a value against its entry and stores it. train, train_gpu and prepro all parse
 their flags with it, so every number is checked the same way:

   train: --beta1 2: out of range [0, 1)
   train: --steps 4294967297: out of range [0, 2147483647]
   train: --eval-every -1: out of range [0, 2147483647] (0: off)

 A range is [min, max], with either bound excluded on request; an infinite bound is always excluded, so a
 real number must be finite (nan and inf are refused). Whole numbers are read as 64-bit and then checked,
 so an oversized value is refused instead of wrapping. Plain C, usable from C++ (train_gpu.cu).
*/
#ifndef FLAGS_H
#define FLAGS_H

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    FLAG_SWITCH,   /* no value: sets an int to 1 */
    FLAG_STRING,   /* any text: const char * */
    FLAG_CHOICE,   /* one of the values listed in detail, "a|b|c": const char * */
    FLAG_INT,      /* a whole number in the range: int */
    FLAG_LONG,     /* a whole number in the range: long */
    FLAG_U64,      /* a whole number from 0 to 2^64 - 1: uint64_t (min and max unused) */
    FLAG_FLOAT,    /* a finite number in the range: float */
    FLAG_DOUBLE    /* a finite number in the range: double */
} FlagType;

/* which bounds of [min, max] are themselves outside the range */
enum { FLAG_CLOSED = 0, FLAG_OPEN_MIN = 1, FLAG_OPEN_MAX = 2 };

typedef struct {
    const char *name;     /* "--lr" */
    FlagType type;
    void *dst;            /* where the value goes (the C type named above) */
    double min, max;      /* the range of a number; whole-number bounds stay within 2^53, so they are exact */
    int open;             /* FLAG_OPEN_MIN | FLAG_OPEN_MAX, or FLAG_CLOSED */
    const char *detail;   /* FLAG_CHOICE: the values "a|b"; a number: what a special value means ("0: off") */
} Flag;

/* The entry named name in table[0..n), or NULL. */
static const Flag *flag_find(const Flag *table, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(table[i].name, name)) return &table[i];
    return NULL;
}

/* A bound as text: whole numbers in full (2147483647, not 2.147e+09), others as %g ("inf", "0.5"). */
static void flag_bound(double b, char *out, size_t n) {
    if (b == floor(b) && fabs(b) <= 9007199254740992.0) snprintf(out, n, "%.0f", b);
    else snprintf(out, n, "%g", b);
}

/* The range as text: "[0, 1)", "(0, inf)", "[1, 2147483647] (0: off)". */
static void flag_range(const Flag *f, char *out, size_t n) {
    if (f->type == FLAG_U64) { snprintf(out, n, "[0, 18446744073709551615]"); return; }
    int open_min = (f->open & FLAG_OPEN_MIN) || isinf(f->min), open_max = (f->open & FLAG_OPEN_MAX) || isinf(f->max);
    char lo[32], hi[32];
    flag_bound(f->min, lo, sizeof(lo));
    flag_bound(f->max, hi, sizeof(hi));
    snprintf(out, n, "%c%s, %s%c%s%s%s", open_min ? '(' : '[', lo, hi, open_max ? ')' : ']',
             f->detail ? " (" : "", f->detail ? f->detail : "", f->detail ? ")" : "");
}

/* Is x inside the flag's range (and finite)? */
static int flag_in_range(const Flag *f, double x) {
    if (!isfinite(x)) return 0;
    if ((f->open & FLAG_OPEN_MIN) ? x <= f->min : x < f->min) return 0;
    if ((f->open & FLAG_OPEN_MAX) ? x >= f->max : x > f->max) return 0;
    return 1;
}

/* Is v one of the "|"-separated values of choices? */
static int flag_is_choice(const char *choices, const char *v) {
    size_t len = strlen(v);
    for (const char *p = choices; *p; ) {
        const char *bar = strchr(p, '|');
        size_t k = bar ? (size_t)(bar - p) : strlen(p);
        if (k == len && !strncmp(p, v, len)) return 1;
        p += k + (bar ? 1 : 0);
    }
    return 0;
}

/* Checks the value v of flag f (NULL for a switch) and stores it in f->dst. 0 on success; -1 with a
   one-line message naming the flag, the value and the range in err (nothing stored). */
static int flag_set(const Flag *f, const char *v, char *err, size_t errlen) {
    char range[160], *end = NULL;
    flag_range(f, range, sizeof(range));
    errno = 0;
    switch (f->type) {
    case FLAG_SWITCH: *(int *)f->dst = 1; return 0;
    case FLAG_STRING: *(const char **)f->dst = v; return 0;
    case FLAG_CHOICE:
        if (!flag_is_choice(f->detail, v)) { snprintf(err, errlen, "%s %s: must be one of %s", f->name, v, f->detail); return -1; }
        *(const char **)f->dst = v;
        return 0;
    case FLAG_U64: {
        unsigned long long x = strtoull(v, &end, 10);   /* (strtoull also takes "-1", as 2^64 - 1) */
        const char *digits = v[0] == '-' ? v + 1 : v;
        if (digits[0] < '0' || digits[0] > '9' || *end) { snprintf(err, errlen, "%s %s: not a whole number", f->name, v); return -1; }
        if (v[0] == '-' || errno == ERANGE) { snprintf(err, errlen, "%s %s: out of range %s", f->name, v, range); return -1; }
        *(uint64_t *)f->dst = (uint64_t)x;
        return 0;
    }
    case FLAG_INT: case FLAG_LONG: {
        long long x = strtoll(v, &end, 10);
        if (end == v || *end) { snprintf(err, errlen, "%s %s: not a whole number", f->name, v); return -1; }
        if (errno == ERANGE || !flag_in_range(f, (double)x)) { snprintf(err, errlen, "%s %s: out of range %s", f->name, v, range); return -1; }
        if (f->type == FLAG_INT) *(int *)f->dst = (int)x;
        else *(long *)f->dst = (long)x;
        return 0;
    }
    case FLAG_FLOAT: case FLAG_DOUBLE: {
        double x = strtod(v, &end);
        if (end == v || *end) { snprintf(err, errlen, "%s %s: not a number", f->name, v); return -1; }
        /* a float is checked as it will be stored: 1e-50 becomes 0, and 1e39 does not fit */
        int too_big = f->type == FLAG_FLOAT && fabs(x) > FLT_MAX;
        if (f->type == FLAG_FLOAT && !too_big) x = (float)x;
        if (too_big || !flag_in_range(f, x)) { snprintf(err, errlen, "%s %s: out of range %s", f->name, v, range); return -1; }
        if (f->type == FLAG_FLOAT) *(float *)f->dst = (float)x;
        else *(double *)f->dst = x;
        return 0;
    }
    }
    snprintf(err, errlen, "%s: unknown flag type", f->name);
    return -1;
}

#endif /* FLAGS_H */
