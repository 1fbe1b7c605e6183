/*
 * file_io — what the Parquet and Arrow readers share: the error line, little-endian loads, buffer growth
 * and exact positioned reads.
 */
#pragma once
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

// Writes one error line into ERR (nothing when ERR is NULL).
static void put_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap; va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint32_t le32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

// Makes *buf hold at least n bytes (doubling): 0, or -1 when out of memory.
static int grow_bytes(uint8_t **buf, size_t *cap, size_t n) {
    if (n <= *cap) return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < n) c = c > SIZE_MAX / 2 ? n : c * 2;
    uint8_t *b = realloc(*buf, c);
    if (!b) return -1;
    *buf = b; *cap = c;
    return 0;
}

// Reads exactly n bytes of fd at offset off: 0; -1 on a read error (errno set) or -2 when the file ends
// first, with *where the offset reached.
static int pread_exact(int fd, void *dst, size_t n, int64_t off, int64_t *where) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)dst + got, n - got, (off_t)(off + (int64_t)got));
        if (k < 0 && errno == EINTR) continue;
        *where = off + (int64_t)got;
        if (k < 0) return -1;
        if (k == 0) return -2;
        got += (size_t)k;
    }
    return 0;
}
