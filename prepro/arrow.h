/*
 * arrow — a streaming reader for one string column of an Arrow IPC file, in plain C11.
 *
 *   char err[512];
 *   ArrowReader *r = arrow_open("data-00000-of-00001.arrow", "text", err, sizeof err);
 *   if (!r) { fprintf(stderr, "%s\n", err); exit(1); }
 *   const char *s; size_t len; int rc;
 *   while ((rc = arrow_next(r, &s, &len, err, sizeof err)) == 1) {
 *       if (s) use(s, len);                  // s == NULL: a null value
 *   }
 *   if (rc < 0) { fprintf(stderr, "%s\n", err); exit(1); }
 *   arrow_close(r);
 *
 * Reads the IPC streaming format (what Hugging Face `datasets` writes: data-00000-of-0000N.arrow) and
 * the IPC file format (ARROW1 magic, read as the stream it holds). The column must be a top-level
 * utf8, large_utf8, binary or large_binary column; other columns are passed over. Record batches are
 * read one at a time, and of each only the selected column's buffers: memory is one column of one
 * batch. ZSTD-compressed record batches are read (link with -lzstd); LZ4_FRAME-compressed ones and
 * dictionary-encoded text columns are refused.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct ArrowReader ArrowReader;

// Opens PATH, reads its schema and selects the column named COLUMN. NULL on failure with one line in
// ERR: "PATH: ..." (a missing column names the columns present).
ArrowReader *arrow_open(const char *path, const char *column, char *err, size_t errlen);

// The next value: 1 with *s and *len set (valid until the next call; not NUL-terminated), 0 at the
// end-of-stream marker, -1 on error with one line in ERR: "PATH: record batch B: ..." (counted from 0).
// A null value is 1 with *s = NULL and *len = 0.
int arrow_next(ArrowReader *r, const char **s, size_t *len, char *err, size_t errlen);

void arrow_close(ArrowReader *r);
