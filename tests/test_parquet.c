// The Parquet reader vs fixtures from pyarrow (dev/gen_parquet_fixtures.py): every value of every file,
// the error messages of broken files, and files damaged at random (no crash, no hang, one-line errors).
// Run from the repository root; PARQUET_FUZZ=100 damages files 100 times as often.
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "prepro/parquet.h"

#define DIR "tests/fixtures/parquet/"
#define TMP "tests/tmp/parquet_damaged.parquet"

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
static void check_values(const char *path, const char *column, const char *expect, long count) {
    char err[512], epath[512];
    snprintf(epath, sizeof epath, DIR "%s", expect);
    long n;
    json_t **want = load_expected(epath, count, &n);
    if (count >= 0 && n != count) failf("%s has %ld lines, fewer than %ld", epath, n, count);
    ParquetReader *r = parquet_open(path, column, err, sizeof err);
    checks++;
    if (!r) { failf("%s: parquet_open failed: %s", path, err); goto done; }
    if (parquet_num_rows(r) != n) failf("%s: parquet_num_rows %lld, expected %ld", path, (long long)parquet_num_rows(r), n);
    const char *s; size_t len;
    long i = 0, bad = 0;
    int rc;
    while ((rc = parquet_next(r, &s, &len, err, sizeof err)) == 1) {
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
    if (rc < 0) failf("%s: parquet_next failed after %ld values: %s", path, i, err);
    else if (i < n) failf("%s: %ld values, expected %ld", path, i, n);
    if (rc == 0 && parquet_next(r, &s, &len, err, sizeof err) != 0) failf("%s: parquet_next after the end is not 0", path);
    parquet_close(r);
    if (!bad && rc == 0 && i == n) printf("ok   %-40s %-6s %5ld values\n", path + strlen(DIR), column, n);
done:
    for (long k = 0; k < n; k++) json_decref(want[k]);
    free(want);
}

static void check_open_error(const char *path, const char *column, const char *msg) {
    char err[512], prefix[600];
    checks++;
    ParquetReader *r = parquet_open(path, column, err, sizeof err);
    if (r) { failf("%s column %s: opened, expected the error \"%s\"", path, column, msg); parquet_close(r); return; }
    snprintf(prefix, sizeof prefix, "%s: ", path);
    if (!starts_with(err, prefix) || !strstr(err, msg) || strchr(err, '\n'))
        failf("%s column %s: error\n    \"%s\"\n  expected one line starting \"%s\" and containing \"%s\"", path, column, err, prefix, msg);
    else printf("ok   %-40s %-6s %s\n", path + strlen(DIR), column, err + strlen(prefix));
    // no error buffer: no crash
    if ((r = parquet_open(path, column, NULL, 0))) { failf("%s: opened without an error buffer", path); parquet_close(r); }
}

static void check_next_error(const char *path, const char *column, const char *msg) {
    char err[512], prefix[600];
    checks++;
    ParquetReader *r = parquet_open(path, column, err, sizeof err);
    if (!r) { failf("%s: parquet_open failed: %s", path, err); return; }
    const char *s; size_t len;
    int rc;
    long i = 0;
    while ((rc = parquet_next(r, &s, &len, err, sizeof err)) == 1) i++;
    snprintf(prefix, sizeof prefix, "%s: ", path);
    if (rc != -1) failf("%s: %ld values and the end, expected the error \"%s\"", path, i, msg);
    else if (!starts_with(err, prefix) || !strstr(err, msg) || strchr(err, '\n'))
        failf("%s: error\n    \"%s\"\n  expected one line starting \"%s\" and containing \"%s\"", path, err, prefix, msg);
    else printf("ok   %-40s %-6s %s (after %ld values)\n", path + strlen(DIR), column, err + strlen(prefix), i);
    if (rc == -1 && parquet_next(r, &s, &len, NULL, 0) != -1) failf("%s: parquet_next after an error is not -1", path);
    parquet_close(r);
}

// ---- damaged files: whatever the damage, parquet_open / parquet_next return NULL / -1 with a one-line
// error naming the file, or read values; never crash (run this under -fsanitize=address,undefined)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void) { rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17; return rng_state; }

static long outcomes[3];
static int rounds = 1;     // PARQUET_FUZZ=N: N times as many random damages (and a seed of N)   // opened and read to the end, failed at open, failed while reading

static void try_damaged(const uint8_t *data, size_t n, const char *column, long max_values, const char *what) {
    char err[512];
    if (write_file(TMP, data, n) < 0) { failf("cannot write " TMP); return; }
    err[0] = 0;
    ParquetReader *r = parquet_open(TMP, column, err, sizeof err);
    if (!r) {
        outcomes[1]++;
        if (!starts_with(err, TMP ": ") || strchr(err, '\n')) failf("%s: open error is not one line naming the file: \"%s\"", what, err);
        return;
    }
    const char *s; size_t len;
    long i = 0;
    int rc;
    while ((rc = parquet_next(r, &s, &len, err, sizeof err)) == 1 && ++i < max_values) {
        if (s && len) { volatile char c = s[0]; c = s[len - 1]; (void)c; }   // the bytes are there
    }
    if (rc == -1) {
        outcomes[2]++;
        if (!starts_with(err, TMP ": row group ") || strchr(err, '\n')) failf("%s: read error is not one line naming the file and place: \"%s\"", what, err);
    } else outcomes[0]++;
    parquet_close(r);
}

static void fuzz(const char *name, const char *column, long rows) {
    char path[512];
    snprintf(path, sizeof path, DIR "%s", name);
    size_t n;
    uint8_t *good = (uint8_t *)read_file(path, &n);
    if (!good) { failf("cannot read %s", path); return; }
    uint8_t *d = malloc(n + 1);
    uint32_t flen = good[n - 8] | good[n - 7] << 8 | good[n - 6] << 16 | (uint32_t)good[n - 5] << 24;
    long max_values = 4 * rows + 1000;
    char what[600];
    // random bytes changed anywhere, 1 to 4 at a time
    for (int k = 0; k < 400 * rounds; k++) {
        memcpy(d, good, n);
        for (int j = 1 + (int)(rng() % 4); j > 0; j--) d[rng() % n] = (uint8_t)rng();
        snprintf(what, sizeof what, "%s with random bytes changed (%d)", name, k);
        try_damaged(d, n, column, max_values, what);
    }
    // random bytes changed in the footer only
    for (int k = 0; k < 300 * rounds && flen > 0 && flen < n - 8; k++) {
        memcpy(d, good, n);
        for (int j = 1 + (int)(rng() % 3); j > 0; j--) d[n - 8 - flen + rng() % flen] = (uint8_t)rng();
        snprintf(what, sizeof what, "%s with footer bytes changed (%d)", name, k);
        try_damaged(d, n, column, max_values, what);
    }
    // the footer cut short at every length (the length field says less)
    for (uint32_t k = 0; k < flen && flen < n - 8; k += 1 + flen / 200) {
        memcpy(d, good, n);
        memmove(d + n - 8 - flen + k, d + n - 8, 8);
        d[n - 8 - flen + k] = (uint8_t)k; d[n - 7 - flen + k] = (uint8_t)(k >> 8);
        d[n - 6 - flen + k] = (uint8_t)(k >> 16); d[n - 5 - flen + k] = (uint8_t)(k >> 24);
        snprintf(what, sizeof what, "%s with the footer cut to %u bytes", name, k);
        try_damaged(d, n - flen + k, column, max_values, what);
    }
    // the file cut short, its last 8 bytes (length + PAR1) kept
    for (size_t k = 12; k + 8 < n; k += 1 + n / 150) {
        memcpy(d, good, k);
        memcpy(d + k, good + n - 8, 8);
        snprintf(what, sizeof what, "%s cut to %zu bytes + the tail", name, k);
        try_damaged(d, k + 8, column, max_values, what);
    }
    free(d); free(good);
}

int main(void) {
    json_error_t e;
    json_t *root = json_load_file(DIR "cases.json", 0, &e);
    if (!root) { fprintf(stderr, "FAIL: " DIR "cases.json: %s (run dev/gen_parquet_fixtures.py)\n", e.text); return 1; }
    mkdir("tests/tmp", 0777);
    if (getenv("PARQUET_FUZZ")) { rounds = atoi(getenv("PARQUET_FUZZ")); rng_state += (uint64_t)rounds; if (rounds < 1) rounds = 1; }
    json_t *cases = json_object_get(root, "cases"), *c;
    size_t i;
    json_array_foreach(cases, i, c) {
        const char *file = json_string_value(json_object_get(c, "file"));
        const char *column = json_string_value(json_object_get(c, "column"));
        json_t *expect = json_object_get(c, "expect"), *oe = json_object_get(c, "open_error"), *ne = json_object_get(c, "next_error");
        if (!file || !column) { failf("cases.json case %zu: no file or column", i); continue; }
        char path[512];
        snprintf(path, sizeof path, DIR "%s", file);
        json_t *count = json_object_get(c, "count");
        if (expect) check_values(path, column, json_string_value(expect), count ? (long)json_integer_value(count) : -1);
        else if (oe) check_open_error(path, column, json_string_value(oe));
        else if (ne) check_next_error(path, column, json_string_value(ne));
        else failf("cases.json case %zu: no expect, open_error or next_error", i);
    }
    // damaged copies of every good file
    json_array_foreach(cases, i, c) {
        const char *file = json_string_value(json_object_get(c, "file"));
        if (!json_object_get(c, "expect") || !file) continue;
        if (i > 0 && !strcmp(file, json_string_value(json_object_get(json_array_get(cases, i - 1), "file")))) continue;
        fuzz(file, json_string_value(json_object_get(c, "column")), 400);
        checks++;
    }
    printf("damaged files: %ld read to the end, %ld refused at open, %ld failed while reading\n", outcomes[0], outcomes[1], outcomes[2]);
    remove(TMP);
    json_decref(root);
    if (failures) { fprintf(stderr, "%d of %d checks failed\n", failures, checks); return 1; }
    printf("all %d checks passed\n", checks);
    return 0;
}
