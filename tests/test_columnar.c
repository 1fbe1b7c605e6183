// The Parquet and Arrow IPC readers vs fixtures from pyarrow and datasets (dev/gen_parquet_fixtures.py,
// dev/gen_arrow_fixtures.py): every value of every file, the error messages of broken files, and files
// damaged at random (no crash, no hang, one-line errors).
// Run from the repository root; PARQUET_FUZZ=100 damages files 100 times as often.
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "prepro/arrow.h"
#include "prepro/parquet.h"

// A reader of one string column: the Parquet or the Arrow one.
typedef struct {
    const char *dir;           // its fixtures, with cases.json
    const char *tmp;           // where damaged copies are written
    const char *read_error;    // what a read error says after "FILE: "
    void *(*open)(const char *path, const char *column, char *err, size_t errlen);
    int (*next)(void *r, const char **s, size_t *len, char *err, size_t errlen);
    void (*close)(void *r);
    int64_t (*num_rows)(void *r);   // NULL: not known before reading
} Format;

static void *pq_open(const char *path, const char *column, char *err, size_t errlen) { return parquet_open(path, column, err, errlen); }
static int pq_next(void *r, const char **s, size_t *len, char *err, size_t errlen) { return parquet_next(r, s, len, err, errlen); }
static void pq_close(void *r) { parquet_close(r); }
static int64_t pq_num_rows(void *r) { return parquet_num_rows(r); }
static void *ar_open(const char *path, const char *column, char *err, size_t errlen) { return arrow_open(path, column, err, errlen); }
static int ar_next(void *r, const char **s, size_t *len, char *err, size_t errlen) { return arrow_next(r, s, len, err, errlen); }
static void ar_close(void *r) { arrow_close(r); }

static const Format PARQUET = {"tests/fixtures/parquet/", "tests/tmp/damaged.parquet", "row group ", pq_open, pq_next, pq_close, pq_num_rows};
static const Format ARROW = {"tests/fixtures/arrow/", "tests/tmp/damaged.arrow", "record batch ", ar_open, ar_next, ar_close, NULL};

#include "test_util.h"

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

// The expected values: one JSON value a line (a string or null); the first MAX lines (-1: all).
static json_t **load_expected(const char *path, long max, long *count) {
    size_t n;
    char *text = read_file(path, &n);
    if (!text) { failf("cannot read %s", path); *count = 0; return NULL; }
    json_t **v = NULL;
    long len = 0, cap = 0;
    for (char *line = text, *nl; *line && (max < 0 || len < max); line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl) nl = line + strlen(line) - 1;
        json_error_t e;
        json_t *j = json_loadb(line, (size_t)(nl - line + 1), JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
        if (!j || !(json_is_string(j) || json_is_null(j))) { failf("%s line %ld: %s", path, len + 1, j ? "not a string or null" : e.text); break; }
        if (len == cap) v = realloc(v, (size_t)(cap = cap ? 2 * cap : 256) * sizeof *v);
        v[len++] = j;
    }
    free(text);
    *count = len;
    return v;
}

static void show(const char *label, const char *s, size_t len) {
    if (!s) { fprintf(stderr, "    %s: null\n", label); return; }
    fprintf(stderr, "    %s (%zu bytes): \"", label, len);
    for (size_t i = 0; i < len && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 32 && c < 127 && c != '"' && c != '\\') fputc(c, stderr); else fprintf(stderr, "\\x%02x", c);
    }
    fprintf(stderr, "%s\"\n", len > 80 ? "..." : "");
}

static int starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

// Every value of PATH's COLUMN against EXPECT (a .jsonl; its first COUNT lines, or all when COUNT < 0).
static void check_values(const Format *fm, const char *path, const char *column, const char *expect, long count) {
    char err[512], epath[512];
    snprintf(epath, sizeof epath, "%s%s", fm->dir, expect);
    long n;
    json_t **want = load_expected(epath, count, &n);
    if (count >= 0 && n != count) failf("%s has %ld lines, fewer than %ld", epath, n, count);
    void *r = fm->open(path, column, err, sizeof err);
    checks++;
    if (!r) { failf("%s: open failed: %s", path, err); goto done; }
    if (fm->num_rows && fm->num_rows(r) != n) failf("%s: num_rows %lld, expected %ld", path, (long long)fm->num_rows(r), n);
    const char *s; size_t len;
    long i = 0, bad = 0;
    int rc;
    while ((rc = fm->next(r, &s, &len, err, sizeof err)) == 1) {
        checks++;
        if (i >= n) { if (i == n) failf("%s: more values than the %ld expected", path, n); i++; continue; }
        json_t *w = want[i];
        int same = json_is_null(w) ? s == NULL
                 : s != NULL && json_string_length(w) == len && !memcmp(json_string_value(w), s, len);
        if (!same && bad++ < 3) {
            failf("%s column %s: value %ld differs", path, column, i);
            show("got", s, len);
            show("expected", json_is_null(w) ? NULL : json_string_value(w), json_is_null(w) ? 0 : json_string_length(w));
        }
        i++;
    }
    if (rc < 0) failf("%s: next failed after %ld values: %s", path, i, err);
    else if (i < n) failf("%s: %ld values, expected %ld", path, i, n);
    if (rc == 0 && fm->next(r, &s, &len, err, sizeof err) != 0) failf("%s: next after the end is not 0", path);
    fm->close(r);
    if (!bad && rc == 0 && i == n) printf("ok   %-40s %-6s %5ld values\n", path, column, n);
done:
    for (long k = 0; k < n; k++) json_decref(want[k]);
    free(want);
}

static void check_open_error(const Format *fm, const char *path, const char *column, const char *msg) {
    char err[512], prefix[600];
    checks++;
    void *r = fm->open(path, column, err, sizeof err);
    if (r) { failf("%s column %s: opened, expected the error \"%s\"", path, column, msg); fm->close(r); return; }
    snprintf(prefix, sizeof prefix, "%s: ", path);
    if (!starts_with(err, prefix) || !strstr(err, msg) || strchr(err, '\n'))
        failf("%s column %s: error\n    \"%s\"\n  expected one line starting \"%s\" and containing \"%s\"", path, column, err, prefix, msg);
    else printf("ok   %-40s %-6s %s\n", path, column, err + strlen(prefix));
    // no error buffer: no crash
    if ((r = fm->open(path, column, NULL, 0))) { failf("%s: opened without an error buffer", path); fm->close(r); }
}

static void check_next_error(const Format *fm, const char *path, const char *column, const char *msg) {
    char err[512], prefix[600];
    checks++;
    void *r = fm->open(path, column, err, sizeof err);
    if (!r) { failf("%s: open failed: %s", path, err); return; }
    const char *s; size_t len;
    int rc;
    long i = 0;
    while ((rc = fm->next(r, &s, &len, err, sizeof err)) == 1) i++;
    snprintf(prefix, sizeof prefix, "%s: ", path);
    if (rc != -1) failf("%s: %ld values and the end, expected the error \"%s\"", path, i, msg);
    else if (!starts_with(err, prefix) || !strstr(err, msg) || strchr(err, '\n'))
        failf("%s: error\n    \"%s\"\n  expected one line starting \"%s\" and containing \"%s\"", path, err, prefix, msg);
    else printf("ok   %-40s %-6s %s (after %ld values)\n", path, column, err + strlen(prefix), i);
    if (rc == -1 && fm->next(r, &s, &len, NULL, 0) != -1) failf("%s: next after an error is not -1", path);
    fm->close(r);
}

// ---- damaged files: whatever the damage, open / next return NULL / -1 with a one-line
// error naming the file, or read values; never crash (run this under -fsanitize=address,undefined)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) { rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17; return rng_state; }

static long outcomes[3];
static int rounds = 1;     // PARQUET_FUZZ=N: N times as many random damages (and a seed of N)   // opened and read to the end, failed at open, failed while reading

static void try_damaged(const Format *fm, const uint8_t *data, size_t n, const char *column, long max_values, const char *what) {
    char err[512], prefix[600];
    if (write_file(fm->tmp, data, n) < 0) { failf("cannot write %s", fm->tmp); return; }
    err[0] = 0;
    void *r = fm->open(fm->tmp, column, err, sizeof err);
    snprintf(prefix, sizeof prefix, "%s: ", fm->tmp);
    if (!r) {
        outcomes[1]++;
        if (!starts_with(err, prefix) || strchr(err, '\n')) failf("%s: open error is not one line naming the file: \"%s\"", what, err);
        return;
    }
    const char *s; size_t len;
    long i = 0;
    int rc;
    while ((rc = fm->next(r, &s, &len, err, sizeof err)) == 1 && ++i < max_values) {
        if (s && len) { volatile char c = s[0]; c = s[len - 1]; (void)c; }   // the bytes are there
    }
    if (rc == -1) {
        outcomes[2]++;
        snprintf(prefix, sizeof prefix, "%s: %s", fm->tmp, fm->read_error);
        if (!starts_with(err, prefix) || strchr(err, '\n')) failf("%s: read error is not one line naming the file and place: \"%s\"", what, err);
    } else outcomes[0]++;
    fm->close(r);
}

// Random bytes changed anywhere in GOOD (N bytes), 1 to 4 at a time, TIMES times.
static void damage_anywhere(const Format *fm, const uint8_t *good, uint8_t *d, size_t n, const char *name, const char *column,
                            long max_values, int times) {
    char what[600];
    for (int k = 0; k < times * rounds; k++) {
        memcpy(d, good, n);
        for (int j = 1 + (int)(rng() % 4); j > 0; j--) d[rng() % n] = (uint8_t)rng();
        snprintf(what, sizeof what, "%s with random bytes changed (%d)", name, k);
        try_damaged(fm, d, n, column, max_values, what);
    }
}

// The fixture NAME of FM (*n bytes) and a buffer for damaged copies of it (n + 8 bytes); NULL when unreadable.
static uint8_t *load_fixture(const Format *fm, const char *name, size_t *n, uint8_t **d) {
    char path[512];
    snprintf(path, sizeof path, "%s%s", fm->dir, name);
    uint8_t *good = (uint8_t *)read_file(path, n);
    if (!good) { failf("cannot read %s", path); return NULL; }
    *d = malloc(*n + 8);
    return good;
}

static void fuzz_parquet(const Format *fm, const char *name, const char *column, long rows) {
    size_t n;
    uint8_t *d, *good = load_fixture(fm, name, &n, &d);
    if (!good) return;
    uint32_t flen = good[n - 8] | good[n - 7] << 8 | good[n - 6] << 16 | (uint32_t)good[n - 5] << 24;
    long max_values = 4 * rows + 1000;
    char what[600];
    damage_anywhere(fm, good, d, n, name, column, max_values, 400);
    // random bytes changed in the footer only
    for (int k = 0; k < 300 * rounds && flen > 0 && flen < n - 8; k++) {
        memcpy(d, good, n);
        for (int j = 1 + (int)(rng() % 3); j > 0; j--) d[n - 8 - flen + rng() % flen] = (uint8_t)rng();
        snprintf(what, sizeof what, "%s with footer bytes changed (%d)", name, k);
        try_damaged(fm, d, n, column, max_values, what);
    }
    // the footer cut short at every length (the length field says less)
    for (uint32_t k = 0; k < flen && flen < n - 8; k += 1 + flen / 200) {
        memcpy(d, good, n);
        memmove(d + n - 8 - flen + k, d + n - 8, 8);
        d[n - 8 - flen + k] = (uint8_t)k; d[n - 7 - flen + k] = (uint8_t)(k >> 8);
        d[n - 6 - flen + k] = (uint8_t)(k >> 16); d[n - 5 - flen + k] = (uint8_t)(k >> 24);
        snprintf(what, sizeof what, "%s with the footer cut to %u bytes", name, k);
        try_damaged(fm, d, n - flen + k, column, max_values, what);
    }
    // the file cut short, its last 8 bytes (length + PAR1) kept
    for (size_t k = 12; k + 8 < n; k += 1 + n / 150) {
        memcpy(d, good, k);
        memcpy(d + k, good + n - 8, 8);
        snprintf(what, sizeof what, "%s cut to %zu bytes + the tail", name, k);
        try_damaged(fm, d, k + 8, column, max_values, what);
    }
    free(d); free(good);
}

// Arrow: bytes changed in the flatbuffer metadata of the messages (each found by its 0xFFFFFFFF marker
// and length), and the file cut short at many lengths (with and without an end-of-stream marker after).
static void fuzz_arrow(const Format *fm, const char *name, const char *column, long rows) {
    size_t n;
    uint8_t *d, *good = load_fixture(fm, name, &n, &d);
    if (!good) return;
    long max_values = 4 * rows + 1000;
    char what[600];
    damage_anywhere(fm, good, d, n, name, column, max_values, 150);   // (mostly string bytes: few errors)
    size_t meta[64][2]; int nmeta = 0;
    for (size_t i = 0; i + 8 <= n && nmeta < 64; i++) {
        uint32_t len = good[i + 4] | good[i + 5] << 8 | good[i + 6] << 16 | (uint32_t)good[i + 7] << 24;
        if (!memcmp(good + i, "\xff\xff\xff\xff", 4) && len > 0 && len < 4096 && i + 8 + len <= n) {
            meta[nmeta][0] = i + 4; meta[nmeta][1] = len + 4;   // the length field and the metadata
            nmeta++;
        }
    }
    if (nmeta < 2) failf("%s: %d messages found, expected a schema and record batches", name, nmeta);
    for (int k = 0; k < 300 * rounds && nmeta; k++) {
        memcpy(d, good, n);
        const size_t *m = meta[rng() % (uint64_t)nmeta];
        for (int j = 1 + (int)(rng() % 3); j > 0; j--) d[m[0] + rng() % m[1]] = (uint8_t)rng();
        snprintf(what, sizeof what, "%s with message metadata bytes changed (%d)", name, k);
        try_damaged(fm, d, n, column, max_values, what);
    }
    for (size_t k = 0; k < n; k += 1 + n / 120) {
        memcpy(d, good, k);
        snprintf(what, sizeof what, "%s cut to %zu bytes", name, k);
        try_damaged(fm, d, k, column, max_values, what);
        memcpy(d + k, "\xff\xff\xff\xff\0\0\0\0", 8);
        snprintf(what, sizeof what, "%s cut to %zu bytes + an end-of-stream marker", name, k);
        try_damaged(fm, d, k + 8, column, max_values, what);
    }
    free(d); free(good);
}

// Every case of FM's cases.json, then damaged copies of every good file.
static void run_cases(const Format *fm, void (*fuzz)(const Format *, const char *, const char *, long)) {
    json_error_t e;
    char cpath[512];
    snprintf(cpath, sizeof cpath, "%scases.json", fm->dir);
    json_t *root = json_load_file(cpath, 0, &e);
    if (!root) { failf("%s: %s (run the dev/gen_*_fixtures.py generator)", cpath, e.text); return; }
    json_t *cases = json_object_get(root, "cases"), *c;
    size_t i;
    json_array_foreach(cases, i, c) {
        const char *file = json_string_value(json_object_get(c, "file"));
        const char *column = json_string_value(json_object_get(c, "column"));
        json_t *expect = json_object_get(c, "expect"), *oe = json_object_get(c, "open_error"), *ne = json_object_get(c, "next_error");
        if (!file || !column) { failf("%s case %zu: no file or column", cpath, i); continue; }
        char path[512];
        snprintf(path, sizeof path, "%s%s", fm->dir, file);
        json_t *count = json_object_get(c, "count");
        if (expect) check_values(fm, path, column, json_string_value(expect), count ? (long)json_integer_value(count) : -1);
        else if (oe) check_open_error(fm, path, column, json_string_value(oe));
        else if (ne) check_next_error(fm, path, column, json_string_value(ne));
        else failf("%s case %zu: no expect, open_error or next_error", cpath, i);
    }
    long before[3] = {outcomes[0], outcomes[1], outcomes[2]};
    json_array_foreach(cases, i, c) {
        const char *file = json_string_value(json_object_get(c, "file"));
        if (!json_object_get(c, "expect") || !file) continue;
        if (i > 0 && !strcmp(file, json_string_value(json_object_get(json_array_get(cases, i - 1), "file")))) continue;
        fuzz(fm, file, json_string_value(json_object_get(c, "column")), 400);
        checks++;
    }
    printf("damaged %s files: %ld read to the end, %ld refused at open, %ld failed while reading\n", fm->dir,
           outcomes[0] - before[0], outcomes[1] - before[1], outcomes[2] - before[2]);
    remove(fm->tmp);
    json_decref(root);
}

int main(void) {
    mkdir("tests/tmp", 0777);
    if (getenv("PARQUET_FUZZ")) { rounds = atoi(getenv("PARQUET_FUZZ")); rng_state += (uint64_t)rounds; if (rounds < 1) rounds = 1; }
    run_cases(&PARQUET, fuzz_parquet);
    run_cases(&ARROW, fuzz_arrow);
    if (failures) { fprintf(stderr, "%d of %d checks failed\n", failures, checks); return 1; }
    printf("all %d checks passed\n", checks);
    return 0;
}
