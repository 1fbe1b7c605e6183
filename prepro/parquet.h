/*
 * parquet — a streaming reader for one string column of a Parquet file, in plain C11.
 *
 *   char err[512];
 *   ParquetReader *r = parquet_open("data.parquet", "text", err, sizeof err);
 *   if (!r) { fprintf(stderr, "%s\n", err); exit(1); }
 *   const char *s; size_t len; int rc;
 *   while ((rc = parquet_next(r, &s, &len, err, sizeof err)) == 1) {
 *       if (s) use(s, len);                  // s == NULL: a null value
 *   }
 *   if (rc < 0) { fprintf(stderr, "%s\n", err); exit(1); }
 *   parquet_close(r);
 *
 * The column must be a top-level BYTE_ARRAY column (string / binary / large_string in Arrow terms),
 * required or optional. Supported: data pages v1 and v2, dictionary pages; encodings PLAIN,
 * PLAIN_DICTIONARY / RLE_DICTIONARY, DELTA_LENGTH_BYTE_ARRAY and DELTA_BYTE_ARRAY; RLE definition
 * levels; codecs UNCOMPRESSED, SNAPPY, GZIP and ZSTD; page CRC-32 checksums where present. Row groups are read one page at a time: memory
 * is one page (compressed and uncompressed) plus the column chunk's dictionary.
 *
 * Link with -lsnappy -lzstd -lz (Debian: libsnappy-dev libzstd-dev zlib1g-dev).
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct ParquetReader ParquetReader;

// Opens PATH and selects the column named COLUMN. NULL on failure with one line in ERR:
// "PATH: ..." (a missing column names the columns present).
ParquetReader *parquet_open(const char *path, const char *column, char *err, size_t errlen);

// The next value: 1 with *s and *len set (valid until the next call; not NUL-terminated), 0 at the
// end, -1 on error with one line in ERR: "PATH: row group R, page P: ..." (both counted from 0;
// a dictionary page counts as a page). A null value is 1 with *s = NULL and *len = 0.
int parquet_next(ParquetReader *r, const char **s, size_t *len, char *err, size_t errlen);

// The number of rows in the file (from the footer): the number of values parquet_next returns.
int64_t parquet_num_rows(const ParquetReader *r);

void parquet_close(ParquetReader *r);
