/* Small helpers shared by the C tests: a failure counter with a message, and reading a whole file. */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int failures = 0, checks = 0;

static void failf(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "FAIL: "); vfprintf(stderr, fmt, ap); fprintf(stderr, "\n");
    va_end(ap);
    failures++;
}

/* The whole file, NUL-terminated (the NUL not counted in *n); NULL if it cannot be read. */
static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) { fclose(f); free(buf); return NULL; }
    fclose(f);
    buf[len] = 0;
    *n = (size_t)len;
    return buf;
}

#endif
