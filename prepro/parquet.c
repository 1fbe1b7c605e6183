/*
 * parquet — a streaming reader for one string column of a Parquet file (see parquet.h).
 *
 * A Parquet file is "PAR1", the column chunks of each row group, the footer (a thrift
 * compact-protocol FileMetaData), the footer's length (4 bytes, little-endian) and "PAR1".
 * A column chunk is a sequence of pages, each a thrift PageHeader followed by its (compressed) bytes:
 * at most one dictionary page first, then data pages.
 *
 * Page checksums (CRC-32), where the writer stored them, are checked.
 *
 * Reading order:
 *   1. format constants, errors, small helpers
 *   2. the thrift compact protocol decoder (bounds-checked; errors are sticky)
 *   3. the footer: schema -> the selected column's leaf index, row groups -> one Chunk each
 *   4. value decoders: RLE / bit-packed hybrid, DELTA_BINARY_PACKED
 *   5. pages: header, decompression, dictionary, data page setup
 *   6. parquet_next: values of the current page, then the next page, then the next row group
 *   7. parquet_open / parquet_close
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   // pread, O_CLOEXEC
#endif
#include "parquet.h"
#include "file_io.h"

#include <errno.h>
#include <fcntl.h>
#include <snappy-c.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

// ----------------------------------------------------------------------------------------------
// 1. format constants, errors, small helpers

enum { T_BOOLEAN, T_INT32, T_INT64, T_INT96, T_FLOAT, T_DOUBLE, T_BYTE_ARRAY, T_FIXED_LEN_BYTE_ARRAY };
static const char *TYPE_NAMES[] = {"BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY",
                                   "FIXED_LEN_BYTE_ARRAY"};
enum { REP_REQUIRED, REP_OPTIONAL, REP_REPEATED };
enum { ENC_PLAIN = 0, ENC_PLAIN_DICTIONARY = 2, ENC_RLE = 3, ENC_BIT_PACKED = 4, ENC_DELTA_BINARY_PACKED = 5,
       ENC_DELTA_LENGTH_BYTE_ARRAY = 6, ENC_DELTA_BYTE_ARRAY = 7, ENC_RLE_DICTIONARY = 8 };
static const char *ENCODING_NAMES[] = {"PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE", "BIT_PACKED",
                                       "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY",
                                       "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
enum { CODEC_UNCOMPRESSED, CODEC_SNAPPY, CODEC_GZIP, CODEC_LZO, CODEC_BROTLI, CODEC_LZ4, CODEC_ZSTD, CODEC_LZ4_RAW };
static const char *CODEC_NAMES[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD", "LZ4_RAW"};
enum { PAGE_DATA, PAGE_INDEX, PAGE_DICTIONARY, PAGE_DATA_V2 };

static const char *encoding_name(int e) {
    return e >= 0 && e < (int)(sizeof ENCODING_NAMES / sizeof *ENCODING_NAMES) ? ENCODING_NAMES[e] : "unknown";
}

typedef struct { int64_t start, size, num_values; int codec; } Chunk;   // the column's chunk in one row group
typedef struct { uint32_t off, len; } Span;                              // a dictionary entry in r->dict

// The RLE / bit-packed hybrid decoder (dictionary indices, definition levels).
typedef struct {
    const uint8_t *p, *end;     // the next run header, the end of the encoded data
    int width;                  // bits per value, 0..32
    uint64_t left;              // values left in the current run
    int packed;                 // the current run is bit-packed (else one repeated value)
    uint32_t value;             // the repeated value
    const uint8_t *bits, *bits_end; uint64_t bit;   // a bit-packed run: its bytes, the next value's bit
} Rle;

// The DELTA_BINARY_PACKED decoder (lengths and prefix lengths of the DELTA_* string encodings).
typedef struct {
    const uint8_t *p, *end;     // the next block or miniblock, the end of the page
    uint64_t per_block, nminis, per_mini;
    uint64_t left;              // values not yet returned
    uint64_t last;              // the previous value (two's complement, wrapping)
    int started;                // the first value (from the header) has been returned
    uint64_t min_delta;
    const uint8_t *widths;      // the bit widths of the current block's miniblocks
    uint64_t mini;              // the next miniblock of the current block
    const uint8_t *mp; uint64_t mi; int mw;   // the current miniblock: bytes, next index, bit width
} Delta;

struct ParquetReader {
    char *path;
    int fd;
    int64_t num_rows;
    int optional;               // the column has definition levels (max level 1)
    Chunk *chunks; int nchunks; // one per row group
    // the current column chunk
    int rg;                     // its row group (-1 before the first)
    int page;                   // the current page in it, from 0
    int64_t pos, end;           // file offsets: the next page header, the end of the chunk
    int64_t chunk_left;         // values of the chunk not yet returned
    int has_dict;
    uint8_t *dict; size_t dict_cap;          // the dictionary page, uncompressed
    Span *entries; size_t nentries, entries_cap;
    // the current data page
    uint8_t *hdr; size_t hdr_cap;            // page header bytes
    uint8_t *raw; size_t raw_cap;            // the page as stored
    uint8_t *buf; size_t buf_cap;            // the page decompressed
    int64_t page_left;                       // values (null or not) of the page not yet returned
    int encoding;
    Rle defs, idx;                           // definition levels, dictionary indices
    const uint8_t *vp, *vend;                // PLAIN values, or the string bytes of DELTA_*
    Delta lens, prefixes;                    // DELTA_LENGTH_BYTE_ARRAY lengths, DELTA_BYTE_ARRAY prefixes
    uint8_t *val; size_t val_cap, val_len;   // DELTA_BYTE_ARRAY: the value built last
    ZSTD_DCtx *zstd;
    int done, failed;
    char msg[512];                           // the last error, without the file / row group / page prefix
};

static int fail(ParquetReader *r, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    return -1;
}


static int reserve(ParquetReader *r, uint8_t **buf, size_t *cap, size_t n) {
    return grow_bytes(buf, cap, n) < 0 ? fail(r, "out of memory (%zu bytes)", n) : 0;
}

// Reads exactly n bytes at offset off.
static int read_at(ParquetReader *r, void *dst, size_t n, int64_t off) {
    int64_t at;
    int rc = pread_exact(r->fd, dst, n, off, &at);
    if (rc == -1) return fail(r, "read error at byte %lld: %s", (long long)at, strerror(errno));
    if (rc == -2) return fail(r, "file ends at byte %lld (cut short?)", (long long)at);
    return 0;
}

// ULEB128 from [*p, end): 1 and *p moved past it, or 0 when cut short or longer than 64 bits.
static int uvarint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *v = x; return 1; }
    }
    return 0;
}

static int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

// W bits (W <= 64) starting at bit POS of B, least significant bit first (Parquet's bit-packing order).
static uint64_t get_bits(const uint8_t *b, uint64_t pos, int w) {
    uint64_t v = 0;
    for (int got = 0; got < w;) {
        int off = (int)(pos & 7), take = 8 - off;
        if (take > w - got) take = w - got;
        v |= (uint64_t)((b[pos >> 3] >> off) & ((1u << take) - 1)) << got;
        got += take; pos += (uint64_t)take;
    }
    return v;
}

// ----------------------------------------------------------------------------------------------
// 2. the thrift compact protocol decoder
//
// A struct is a sequence of fields, each a header byte (field id delta << 4 | type; a delta of 0 is
// followed by the id as a zigzag varint), then the value; type 0 ends the struct. Integers are zigzag
// varints, binary is a varint length then the bytes, a list is a byte (size << 4 | element type; size
// 15: the size follows as a varint) then the elements. Booleans in a field live in the type nibble.
// The first error is kept; every read after it returns zeros, so loops end and callers check t->err.

enum { CT_STOP, CT_TRUE, CT_FALSE, CT_BYTE, CT_I16, CT_I32, CT_I64, CT_DOUBLE, CT_BINARY, CT_LIST, CT_SET,
       CT_MAP, CT_STRUCT };

typedef struct {
    const uint8_t *start, *p, *end;
    const char *err;    // the first error
    long err_at;        // its byte offset
    int truncated;      // that error was running out of bytes (more bytes might fix it)
    int depth;
} Thrift;

static void th_fail(Thrift *t, const char *msg, int truncated) {
    if (!t->err) { t->err = msg; t->err_at = (long)(t->p - t->start); t->truncated = truncated; }
    t->p = t->end;
}

static uint8_t th_byte(Thrift *t) {
    if (t->p >= t->end) { th_fail(t, "cut short", 1); return 0; }
    return *t->p++;
}

static uint64_t th_varint(Thrift *t) {
    uint64_t v = 0;
    if (t->err) return 0;
    if (!uvarint(&t->p, t->end, &v)) th_fail(t, t->p >= t->end ? "cut short" : "varint longer than 64 bits", t->p >= t->end);
    return v;
}

// An integer field of any width (i8, i16, i32, i64).
static int64_t th_int(Thrift *t, int type) {
    if (type == CT_BYTE) return (int8_t)th_byte(t);
    if (type == CT_I16 || type == CT_I32 || type == CT_I64) return unzigzag(th_varint(t));
    th_fail(t, "a field has the wrong type (expected an integer)", 0);
    return 0;
}

static int32_t th_i32(Thrift *t, int type) {
    int64_t v = th_int(t, type);
    if (v < INT32_MIN || v > INT32_MAX) { th_fail(t, "an i32 field is out of range", 0); return 0; }
    return (int32_t)v;
}

static int th_bool(Thrift *t, int type) {
    if (type != CT_TRUE && type != CT_FALSE) th_fail(t, "a field has the wrong type (expected a bool)", 0);
    return type == CT_TRUE;
}

static const uint8_t *th_binary(Thrift *t, int type, uint32_t *len) {
    *len = 0;
    if (type != CT_BINARY) { th_fail(t, "a field has the wrong type (expected binary)", 0); return NULL; }
    uint64_t n = th_varint(t);
    if (t->err) return NULL;
    if (n > (uint64_t)(t->end - t->p)) { th_fail(t, "cut short", 1); return NULL; }
    const uint8_t *s = t->p;
    t->p += n; *len = (uint32_t)n;
    return s;
}

// The next field of a struct: 1 with *type and *id, 0 at the end of the struct or on an error.
static int th_field(Thrift *t, int *last, int *type, int *id) {
    uint8_t b = th_byte(t);
    if (t->err || b == CT_STOP) return 0;
    *type = b & 15;
    if (b >> 4) *id = *last + (b >> 4);
    else {
        int64_t v = unzigzag(th_varint(t));
        if (v < INT16_MIN || v > INT16_MAX) { th_fail(t, "field id out of range", 0); return 0; }
        *id = (int)v;
    }
    *last = *id;
    if (*type > CT_STRUCT) { th_fail(t, "unknown field type", 0); return 0; }
    return !t->err;
}

// A list header: the element count (each element takes at least a byte, so it is at most the bytes left).
static uint64_t th_list(Thrift *t, int type, int *elem) {
    *elem = 0;
    if (type != CT_LIST && type != CT_SET) { th_fail(t, "a field has the wrong type (expected a list)", 0); return 0; }
    uint8_t b = th_byte(t);
    uint64_t n = b >> 4;
    if (n == 15) n = th_varint(t);
    *elem = b & 15;
    if (t->err) return 0;
    if (n > (uint64_t)(t->end - t->p)) { th_fail(t, "cut short", 1); return 0; }
    return n;
}

static void th_skip(Thrift *t, int type);

static void th_skip_elem(Thrift *t, int type) {   // booleans inside lists and maps take a byte
    if (type == CT_TRUE || type == CT_FALSE) th_byte(t); else th_skip(t, type);
}

static void th_skip(Thrift *t, int type) {
    if (t->err) return;
    if (++t->depth > 64) { th_fail(t, "nested too deeply", 0); return; }
    uint32_t len; int elem, last = 0, ft, id;
    switch (type) {
    case CT_TRUE: case CT_FALSE: break;
    case CT_BYTE: th_byte(t); break;
    case CT_I16: case CT_I32: case CT_I64: th_varint(t); break;
    case CT_DOUBLE: if (t->end - t->p < 8) th_fail(t, "cut short", 1); else t->p += 8; break;
    case CT_BINARY: th_binary(t, type, &len); break;
    case CT_LIST: case CT_SET: {
        uint64_t n = th_list(t, type, &elem);
        for (uint64_t i = 0; i < n && !t->err; i++) th_skip_elem(t, elem);
        break;
    }
    case CT_MAP: {
        uint64_t n = th_varint(t);
        if (n > (uint64_t)(t->end - t->p)) { th_fail(t, "cut short", 1); break; }
        if (n == 0) break;
        uint8_t kv = th_byte(t);
        for (uint64_t i = 0; i < n && !t->err; i++) { th_skip_elem(t, kv >> 4); th_skip_elem(t, kv & 15); }
        break;
    }
    case CT_STRUCT: while (th_field(t, &last, &ft, &id)) th_skip(t, ft); break;
    default: th_fail(t, "unknown field type", 0);
    }
    t->depth--;
}

// ----------------------------------------------------------------------------------------------
// 3. the footer
//
// FileMetaData: 2 schema (list<SchemaElement>), 3 num_rows, 4 row_groups (list<RowGroup>).
// The schema is the tree flattened depth first; the root's children are the top-level columns and
// a column chunk of a row group exists for every leaf, in the same order.

typedef struct {
    const uint8_t *name; uint32_t name_len;
    int type;                   // physical type, -1 for a group
    int repetition;             // -1 when unset (the root)
    int num_children;           // -1 when unset (a leaf)
} SchemaElement;

static void parse_schema_element(Thrift *t, SchemaElement *e) {
    *e = (SchemaElement){.type = -1, .repetition = -1, .num_children = -1};
    int last = 0, type, id;
    while (th_field(t, &last, &type, &id)) {
        if (id == 1) e->type = th_i32(t, type);
        else if (id == 3) e->repetition = th_i32(t, type);
        else if (id == 4) e->name = th_binary(t, type, &e->name_len);
        else if (id == 5) e->num_children = th_i32(t, type);
        else th_skip(t, type);
    }
}

// The number of leaves in the subtree at s[*i] (moving *i past it), or -1 if the tree is malformed.
static int64_t count_leaves(const SchemaElement *s, int64_t n, int64_t *i, int depth) {
    if (*i >= n || depth > 100) return -1;
    const SchemaElement *e = &s[(*i)++];
    if (e->num_children < 0) return e->type >= 0 ? 1 : -1;
    int64_t leaves = 0;
    for (int c = 0; c < e->num_children; c++) {
        int64_t k = count_leaves(s, n, i, depth + 1);
        if (k < 0) return -1;
        leaves += k;
    }
    return leaves;
}

static int name_is(const SchemaElement *e, const char *name) {
    return e->name && e->name_len == strlen(name) && !memcmp(e->name, name, e->name_len);
}

// ColumnMetaData: 1 type, 3 path_in_schema, 4 codec, 5 num_values, 7 total_compressed_size,
// 9 data_page_offset, 11 dictionary_page_offset.
static void parse_column_meta(Thrift *t, Chunk *c, int *type, int *path_ok, const char *column) {
    int last = 0, ft, id, elem;
    int64_t data_off = -1, dict_off = -1;
    while (th_field(t, &last, &ft, &id)) {
        if (id == 1) *type = th_i32(t, ft);
        else if (id == 3) {
            uint64_t n = th_list(t, ft, &elem);
            *path_ok = n == 1;
            for (uint64_t i = 0; i < n && !t->err; i++) {
                uint32_t len; const uint8_t *s = th_binary(t, elem, &len);
                if (s && (len != strlen(column) || memcmp(s, column, len))) *path_ok = 0;
            }
        }
        else if (id == 4) c->codec = th_i32(t, ft);
        else if (id == 5) c->num_values = th_int(t, ft);
        else if (id == 7) c->size = th_int(t, ft);
        else if (id == 9) data_off = th_int(t, ft);
        else if (id == 11) dict_off = th_int(t, ft);
        else th_skip(t, ft);
    }
    // the chunk starts at its dictionary page, if any (some writers leave dictionary_page_offset 0)
    c->start = dict_off > 0 && (dict_off < data_off || data_off <= 0) ? dict_off : data_off;
}

// Reads the footer, finds the column and fills r->chunks. Errors go to r->msg.
static int parse_footer(ParquetReader *r, const uint8_t *footer, size_t n, const char *column, int64_t data_end) {
    Thrift t = {.start = footer, .p = footer, .end = footer + n};
    SchemaElement *schema = NULL;
    int64_t nschema = 0, num_rows = -1, leaf = -1, nleaves = 0, total = 0;
    int last = 0, type, id, elem, rc = -1, found = 0;
    while (th_field(&t, &last, &type, &id)) {
        if (id == 2 && !schema) {
            nschema = (int64_t)th_list(&t, type, &elem);
            if (!t.err && elem != CT_STRUCT) th_fail(&t, "the schema is not a list of structs", 0);
            schema = calloc((size_t)nschema + 1, sizeof *schema);
            if (!schema) { fail(r, "out of memory reading the footer"); goto done; }
            for (int64_t i = 0; i < nschema && !t.err; i++) parse_schema_element(&t, &schema[i]);
            if (t.err) break;
            // the selected column: a child of the root
            if (nschema < 1 || schema[0].num_children < 0) { fail(r, "footer: the schema has no root group"); goto done; }
            int64_t i = 1;
            for (int c = 0; c < schema[0].num_children; c++) {
                int64_t at = i, k = count_leaves(schema, nschema, &i, 0);
                if (k < 0) { fail(r, "footer: the schema tree is malformed"); goto done; }
                if (!found && name_is(&schema[at], column)) {
                    const SchemaElement *e = &schema[at];
                    found = 1;
                    if (e->num_children >= 0) { fail(r, "column \"%s\" is a group (struct, list or map), not a string column", column); goto done; }
                    if (e->repetition != REP_REQUIRED && e->repetition != REP_OPTIONAL) { fail(r, "column \"%s\" is repeated, not a plain string column", column); goto done; }
                    if (e->type != T_BYTE_ARRAY) {
                        fail(r, "column \"%s\" has type %s, not a string (BYTE_ARRAY)", column,
                             e->type >= 0 && e->type <= T_FIXED_LEN_BYTE_ARRAY ? TYPE_NAMES[e->type] : "unknown");
                        goto done;
                    }
                    r->optional = e->repetition == REP_OPTIONAL;
                    leaf = nleaves;
                }
                nleaves += k;
            }
            if (!found) {
                char names[300]; size_t len = 0;   // the top-level names, cut with "..." when too many
                names[0] = 0;
                for (int64_t c = 0, j = 1; c < schema[0].num_children; c++) {
                    const SchemaElement *e = &schema[j];
                    if (len + e->name_len + 8 > sizeof names) { strcpy(names + len, c ? ", ..." : "..."); break; }
                    if (c) { memcpy(names + len, ", ", 2); len += 2; }
                    for (uint32_t k = 0; k < e->name_len; k++)   // the message stays one printable line
                        names[len++] = e->name[k] < 32 || e->name[k] == 127 ? '?' : (char)e->name[k];
                    names[len] = 0;
                    count_leaves(schema, nschema, &j, 0);
                }
                fail(r, "no column \"%s\" (columns: %s)", column, schema[0].num_children ? names : "none");
                goto done;
            }
        } else if (id == 3) num_rows = th_int(&t, type);
        else if (id == 4 && schema && !r->chunks) {
            uint64_t ngroups = th_list(&t, type, &elem);
            if (!t.err && elem != CT_STRUCT) th_fail(&t, "row_groups is not a list of structs", 0);
            if (ngroups > INT32_MAX) { fail(r, "footer: %llu row groups", (unsigned long long)ngroups); goto done; }
            r->chunks = calloc(ngroups + 1, sizeof *r->chunks);
            if (!r->chunks) { fail(r, "out of memory reading the footer"); goto done; }
            for (uint64_t g = 0; g < ngroups && !t.err; g++) {
                // RowGroup: 1 columns (list<ColumnChunk>), 3 num_rows
                Chunk *c = &r->chunks[r->nchunks++];
                *c = (Chunk){.start = -1, .size = -1, .num_values = -1, .codec = -1};
                int64_t rg_rows = -1, ncols = -1;
                int ctype = -1, path_ok = 0, has_meta = 0, external = 0, glast = 0, gtype, gid;
                while (th_field(&t, &glast, &gtype, &gid)) {
                    if (gid == 1) {
                        ncols = (int64_t)th_list(&t, gtype, &elem);
                        for (int64_t j = 0; j < ncols && !t.err; j++) {
                            if (j != leaf) { th_skip(&t, elem); continue; }
                            // ColumnChunk: 1 file_path, 3 meta_data
                            if (elem != CT_STRUCT) { th_fail(&t, "columns is not a list of structs", 0); break; }
                            int clast = 0, cft, cid;
                            while (th_field(&t, &clast, &cft, &cid)) {
                                if (cid == 1) { uint32_t len; th_binary(&t, cft, &len); external = 1; }
                                else if (cid == 3 && cft == CT_STRUCT) { has_meta = 1; parse_column_meta(&t, c, &ctype, &path_ok, column); }
                                else th_skip(&t, cft);
                            }
                        }
                    } else if (gid == 3) rg_rows = th_int(&t, gtype);
                    else th_skip(&t, gtype);
                }
                if (t.err) break;
                int64_t k = r->nchunks - 1;
                if (ncols != nleaves) { fail(r, "footer: row group %lld has %lld columns, the schema %lld", (long long)k, (long long)ncols, (long long)nleaves); goto done; }
                if (external) { fail(r, "row group %lld: the column is in another file (file_path), which is not supported", (long long)k); goto done; }
                if (!has_meta) { fail(r, "row group %lld: the column has no metadata (encrypted files are not supported)", (long long)k); goto done; }
                if (ctype != T_BYTE_ARRAY || !path_ok) { fail(r, "footer: row group %lld: the column chunk does not match the schema", (long long)k); goto done; }
                if (c->codec < 0 || c->codec > CODEC_LZ4_RAW || c->codec == CODEC_LZO || c->codec == CODEC_BROTLI ||
                    c->codec == CODEC_LZ4 || c->codec == CODEC_LZ4_RAW) {
                    fail(r, "row group %lld: compression codec %s is not supported (UNCOMPRESSED, SNAPPY, GZIP and ZSTD are)",
                         (long long)k, c->codec >= 0 && c->codec <= CODEC_LZ4_RAW ? CODEC_NAMES[c->codec] : "unknown");
                    goto done;
                }
                if (c->num_values != rg_rows || rg_rows < 0 || rg_rows > INT64_MAX - total) { fail(r, "footer: row group %lld has %lld rows but the column %lld values", (long long)k, (long long)rg_rows, (long long)c->num_values); goto done; }
                if (c->num_values > 0 && (c->start < 4 || c->size < 0 || c->start > data_end || c->size > data_end - c->start)) {
                    fail(r, "footer: row group %lld: the column chunk (%lld bytes at byte %lld) lies outside the data (bytes 4..%lld); the file is cut short or corrupt",
                         (long long)k, (long long)c->size, (long long)c->start, (long long)data_end);
                    goto done;
                }
                total += rg_rows;
            }
        } else th_skip(&t, type);
    }
    if (t.err) { fail(r, "corrupt footer (thrift FileMetaData, byte %ld of %zu): %s", t.err_at, n, t.err); goto done; }
    if (!schema) { fail(r, "corrupt footer: no schema"); goto done; }
    if (!r->chunks) { fail(r, "corrupt footer: no row groups"); goto done; }
    if (num_rows != total) { fail(r, "footer: num_rows is %lld but the row groups hold %lld", (long long)num_rows, (long long)total); goto done; }
    r->num_rows = num_rows;
    rc = 0;
done:
    free(schema);
    return rc;
}

// ----------------------------------------------------------------------------------------------
// 4. value decoders

// RLE / bit-packed hybrid: runs, each a varint header; header & 1: (header >> 1) groups of 8 values
// bit-packed, else (header >> 1) repeats of one value stored in ceil(width / 8) bytes.
static void rle_init(Rle *d, const uint8_t *p, const uint8_t *end, int width) {
    *d = (Rle){.p = p, .end = end, .width = width};
}

// 1 with *v, or 0 when the data ends (or is corrupt) before the value.
static int rle_next(Rle *d, uint32_t *v) {
    while (d->left == 0) {
        uint64_t h;
        if (d->p >= d->end || !uvarint(&d->p, d->end, &h)) return 0;
        if (h & 1) {
            uint64_t groups = h >> 1;
            if (groups > ((uint64_t)1 << 40)) return 0;
            uint64_t bytes = groups * (uint64_t)d->width;
            d->packed = 1; d->left = groups * 8;
            d->bits = d->p; d->bit = 0;
            d->p = bytes > (uint64_t)(d->end - d->p) ? d->end : d->p + bytes;   // a last run may be cut short
            d->bits_end = d->p;
        } else {
            int nb = (d->width + 7) / 8;
            if (d->end - d->p < nb) return 0;
            d->value = 0;
            for (int i = 0; i < nb; i++) d->value |= (uint32_t)d->p[i] << (8 * i);
            d->p += nb;
            d->packed = 0; d->left = h >> 1;
        }
    }
    if (d->packed) {
        if (d->bit + (uint64_t)d->width > (uint64_t)(d->bits_end - d->bits) * 8) return 0;
        *v = (uint32_t)get_bits(d->bits, d->bit, d->width);
        d->bit += (uint64_t)d->width;
    } else *v = d->value;
    d->left--;
    return 1;
}

// DELTA_BINARY_PACKED: header <block size> <miniblocks per block> <total count> <first value (zigzag)>,
// then blocks: <min delta (zigzag)> <one bit-width byte per miniblock> <miniblocks, bit-packed>.
// Each value is the previous one + min delta + its packed number. Returns 0 or -1 (message in r).
static int delta_init(ParquetReader *r, Delta *d, const uint8_t *p, const uint8_t *end) {
    uint64_t first;
    *d = (Delta){.p = p, .end = end};
    if (!uvarint(&d->p, end, &d->per_block) || !uvarint(&d->p, end, &d->nminis) || !uvarint(&d->p, end, &d->left) ||
        !uvarint(&d->p, end, &first))
        return fail(r, "DELTA_BINARY_PACKED header is cut short");
    if (d->per_block == 0 || d->per_block > (1u << 20) || d->nminis == 0 || d->per_block % d->nminis ||
        (d->per_block / d->nminis) % 8)
        return fail(r, "DELTA_BINARY_PACKED header is corrupt (block size %llu, %llu miniblocks)",
                    (unsigned long long)d->per_block, (unsigned long long)d->nminis);
    d->per_mini = d->per_block / d->nminis;
    d->last = (uint64_t)unzigzag(first);
    d->mini = d->nminis;           // no block read yet
    d->mi = d->per_mini;           // no miniblock read yet
    return 0;
}

// The next value: 1, or -1 (message in r) when the data is cut short or corrupt.
static int delta_next(ParquetReader *r, Delta *d, int64_t *v) {
    if (d->left == 0) return fail(r, "DELTA_BINARY_PACKED data has fewer values than the page");
    d->left--;
    if (!d->started) { d->started = 1; *v = (int64_t)d->last; return 1; }
    if (d->mi == d->per_mini) {                         // the next miniblock
        if (d->mini == d->nminis) {                     // the next block
            uint64_t md;
            if (!uvarint(&d->p, d->end, &md)) return fail(r, "DELTA_BINARY_PACKED block is cut short");
            d->min_delta = (uint64_t)unzigzag(md);
            if ((uint64_t)(d->end - d->p) < d->nminis) return fail(r, "DELTA_BINARY_PACKED block is cut short");
            d->widths = d->p; d->p += d->nminis; d->mini = 0;
        }
        d->mw = d->widths[d->mini++];
        if (d->mw > 64) return fail(r, "DELTA_BINARY_PACKED bit width %d is over 64", d->mw);
        uint64_t bytes = d->per_mini * (uint64_t)d->mw / 8;
        if ((uint64_t)(d->end - d->p) < bytes) return fail(r, "DELTA_BINARY_PACKED miniblock is cut short");
        d->mp = d->p; d->p += bytes; d->mi = 0;
    }
    d->last += d->min_delta + get_bits(d->mp, d->mi * (uint64_t)d->mw, d->mw);
    d->mi++;
    *v = (int64_t)d->last;
    return 1;
}

// Where the encoded values end (the next stream starts): walks the block headers without decoding.
static const uint8_t *delta_end(ParquetReader *r, const Delta *d) {
    const uint8_t *p = d->p, *end = d->end;
    uint64_t rest = d->left ? d->left - 1 : 0, md;     // values after the first are in blocks
    while (rest > 0) {
        if (!uvarint(&p, end, &md) || (uint64_t)(end - p) < d->nminis) { fail(r, "DELTA_BINARY_PACKED block is cut short"); return NULL; }
        const uint8_t *widths = p;
        p += d->nminis;
        for (uint64_t m = 0; m < d->nminis && rest > 0; m++) {
            if (widths[m] > 64) { fail(r, "DELTA_BINARY_PACKED bit width %d is over 64", widths[m]); return NULL; }
            uint64_t bytes = d->per_mini * widths[m] / 8;
            if ((uint64_t)(end - p) < bytes) { fail(r, "DELTA_BINARY_PACKED miniblock is cut short"); return NULL; }
            p += bytes;
            rest -= rest < d->per_mini ? rest : d->per_mini;
        }
    }
    return p;
}

// A length from a delta stream: a non-negative int32.
static int delta_len(ParquetReader *r, Delta *d, const char *what, size_t *len) {
    int64_t v = 0;
    if (delta_next(r, d, &v) < 0) return -1;
    int32_t x = (int32_t)(uint32_t)v;
    if (x < 0) return fail(r, "negative %s %d", what, x);
    *len = (size_t)x;
    return 0;
}

// ----------------------------------------------------------------------------------------------
// 5. pages
//
// PageHeader: 1 type, 2 uncompressed_page_size, 3 compressed_page_size, 5 DataPageHeader,
// 7 DictionaryPageHeader, 8 DataPageHeaderV2.

typedef struct {
    int type;
    int32_t usize, csize;
    int has_crc; uint32_t crc;                       // CRC-32 of the page as stored
    int32_t num_values, encoding, def_encoding;      // data page v1 / dictionary page
    int32_t num_nulls, def_len, rep_len, compressed; // data page v2
} PageHeader;

static void parse_page_header(Thrift *t, PageHeader *h) {
    *h = (PageHeader){.type = -1, .usize = -1, .csize = -1, .num_values = -1, .encoding = -1, .def_encoding = -1,
                      .def_len = -1, .rep_len = -1, .compressed = 1};
    int last = 0, type, id;
    while (th_field(t, &last, &type, &id)) {
        if (id == 1) h->type = th_i32(t, type);
        else if (id == 2) h->usize = th_i32(t, type);
        else if (id == 3) h->csize = th_i32(t, type);
        else if (id == 4) { h->crc = (uint32_t)th_i32(t, type); h->has_crc = 1; }
        else if ((id == 5 || id == 7 || id == 8) && type == CT_STRUCT) {
            int slast = 0, st, sid;
            while (th_field(t, &slast, &st, &sid)) {
                if (sid == 1) h->num_values = th_i32(t, st);
                else if (id == 5 && sid == 2) h->encoding = th_i32(t, st);
                else if (id == 5 && sid == 3) h->def_encoding = th_i32(t, st);
                else if (id == 7 && sid == 2) h->encoding = th_i32(t, st);
                else if (id == 8 && sid == 2) h->num_nulls = th_i32(t, st);
                else if (id == 8 && sid == 4) h->encoding = th_i32(t, st);
                else if (id == 8 && sid == 5) h->def_len = th_i32(t, st);
                else if (id == 8 && sid == 6) h->rep_len = th_i32(t, st);
                else if (id == 8 && sid == 7) h->compressed = th_bool(t, st);
                else th_skip(t, st);
            }
        } else th_skip(t, type);
    }
}

// Reads the header of the page at r->pos (reading more while the thrift decoder runs out of bytes).
static int read_page_header(ParquetReader *r, PageHeader *h, int64_t *hlen) {
    int64_t avail = r->end - r->pos;
    size_t want = 1024;
    for (;;) {
        size_t n = (int64_t)want < avail ? want : (size_t)avail;
        if (reserve(r, &r->hdr, &r->hdr_cap, n) < 0 || read_at(r, r->hdr, n, r->pos) < 0) return -1;
        Thrift t = {.start = r->hdr, .p = r->hdr, .end = r->hdr + n};
        parse_page_header(&t, h);
        if (!t.err) { *hlen = t.p - t.start; break; }
        if (!t.truncated || (int64_t)n >= avail)
            return fail(r, "corrupt page header (byte %lld of the file): %s%s", (long long)r->pos, t.err,
                        t.truncated ? " (at the end of the column chunk)" : "");
        want *= 4;
    }
    if (h->type < 0 || h->usize < 0 || h->csize < 0)
        return fail(r, "corrupt page header (byte %lld of the file): a size or the type is missing or negative", (long long)r->pos);
    if (h->csize > r->end - r->pos - *hlen)
        return fail(r, "page of %d bytes runs past the end of the column chunk (the file is cut short or corrupt)", h->csize);
    return 0;
}

// Decompresses n bytes at src into usize bytes; *out is src itself when nothing was to be done.
static int decompress(ParquetReader *r, int codec, const uint8_t *src, size_t n, size_t usize, uint8_t **dst,
                      size_t *dst_cap, const uint8_t **out) {
    if (codec == CODEC_UNCOMPRESSED) {
        if (n != usize) return fail(r, "uncompressed page has %zu bytes, the header says %zu", n, usize);
        *out = src;
        return 0;
    }
    // where the data says its size, it must agree with the header before that much is allocated
    if (codec == CODEC_SNAPPY) {
        size_t len;
        if (snappy_uncompressed_length((const char *)src, n, &len) != SNAPPY_OK || len != usize)
            return fail(r, "SNAPPY data is corrupt (or its size disagrees with the page header)");
    } else if (codec == CODEC_ZSTD) {
        unsigned long long len = ZSTD_getFrameContentSize(src, n);
        if (len == ZSTD_CONTENTSIZE_ERROR) return fail(r, "ZSTD data is corrupt (no frame header)");
        if (len != ZSTD_CONTENTSIZE_UNKNOWN && len > usize) return fail(r, "ZSTD frame holds %llu bytes, the page header says %zu", len, usize);
    } else if (codec == CODEC_GZIP && n >= 18 && src[0] == 0x1f && src[1] == 0x8b && le32(src + n - 4) > usize)
        return fail(r, "GZIP data holds %u bytes, the page header says %zu", le32(src + n - 4), usize);
    if (reserve(r, dst, dst_cap, usize ? usize : 1) < 0) return -1;
    if (codec == CODEC_SNAPPY) {
        size_t len = usize;
        if (snappy_uncompress((const char *)src, n, (char *)*dst, &len) != SNAPPY_OK || len != usize)
            return fail(r, "SNAPPY data is corrupt");
    } else if (codec == CODEC_ZSTD) {
        if (!r->zstd && !(r->zstd = ZSTD_createDCtx())) return fail(r, "out of memory (zstd)");
        size_t k = ZSTD_decompressDCtx(r->zstd, *dst, usize, src, n);
        if (ZSTD_isError(k)) return fail(r, "ZSTD data is corrupt: %s", ZSTD_getErrorName(k));
        if (k != usize) return fail(r, "ZSTD data has %zu bytes, the page header says %zu", k, usize);
    } else if (codec == CODEC_GZIP) {
        z_stream z = {0};
        if (n > UINT32_MAX || usize > UINT32_MAX) return fail(r, "GZIP page too large");
        if (inflateInit2(&z, 15 + 32) != Z_OK) return fail(r, "out of memory (zlib)");
        z.next_in = (Bytef *)src; z.avail_in = (uInt)n;
        z.next_out = *dst; z.avail_out = (uInt)usize;
        int zr = inflate(&z, Z_FINISH);
        size_t k = usize - z.avail_out;
        if (zr != Z_STREAM_END) fail(r, "GZIP data is corrupt or has more than %zu bytes%s%s", usize, z.msg ? ": " : "", z.msg ? z.msg : "");
        inflateEnd(&z);
        if (zr != Z_STREAM_END) return -1;
        if (k != usize) return fail(r, "GZIP data has %zu bytes, the page header says %zu", k, usize);
    } else return fail(r, "compression codec %d is not supported", codec);
    *out = *dst;
    return 0;
}

// The dictionary page: num_values PLAIN byte arrays. Kept in r->dict for the rest of the chunk.
static int load_dictionary(ParquetReader *r, const PageHeader *h) {
    if (h->encoding != ENC_PLAIN && h->encoding != ENC_PLAIN_DICTIONARY)
        return fail(r, "dictionary page encoding %s is not supported", encoding_name(h->encoding));
    const uint8_t *data;
    if (decompress(r, r->chunks[r->rg].codec, r->raw, (size_t)h->csize, (size_t)h->usize, &r->buf, &r->buf_cap, &data) < 0) return -1;
    // keep the bytes: swap the buffer that holds them with the dictionary's
    uint8_t **holder = data == r->raw ? &r->raw : &r->buf;
    size_t *holder_cap = data == r->raw ? &r->raw_cap : &r->buf_cap;
    uint8_t *tb = r->dict; size_t tc = r->dict_cap;
    r->dict = *holder; r->dict_cap = *holder_cap; *holder = tb; *holder_cap = tc;
    size_t n = (size_t)h->usize;
    if (h->num_values < 0 || (size_t)h->num_values > n / 4)
        return fail(r, "dictionary page has %d values in %zu bytes", h->num_values, n);
    if ((size_t)h->num_values > r->entries_cap) {
        Span *e = realloc(r->entries, (size_t)h->num_values * sizeof *e);
        if (!e) return fail(r, "out of memory (dictionary of %d values)", h->num_values);
        r->entries = e; r->entries_cap = (size_t)h->num_values;
    }
    size_t off = 0;
    for (int32_t i = 0; i < h->num_values; i++) {
        if (n - off < 4) return fail(r, "dictionary page is cut short at value %d", i);
        uint32_t len = le32(r->dict + off);
        off += 4;
        if (len > n - off) return fail(r, "dictionary value %d (%u bytes) runs past the end of the page", i, len);
        r->entries[i] = (Span){(uint32_t)off, len};
        off += len;
    }
    r->nentries = (size_t)h->num_values;
    r->has_dict = 1;
    return 0;
}

// Sets up the decoders for a data page's values in [p, end).
static int start_values(ParquetReader *r, int encoding, const uint8_t *p, const uint8_t *end) {
    r->encoding = encoding;
    r->vp = p; r->vend = end;
    switch (encoding) {
    case ENC_PLAIN: return 0;
    case ENC_PLAIN_DICTIONARY: case ENC_RLE_DICTIONARY: {
        if (!r->has_dict) return fail(r, "dictionary-encoded page, but the column chunk has no dictionary page");
        int width = 0;
        if (p < end) { width = *p++; if (width > 32) return fail(r, "dictionary index bit width %d is over 32", width); }
        rle_init(&r->idx, p, end, width);
        return 0;
    }
    case ENC_DELTA_LENGTH_BYTE_ARRAY:
        if (delta_init(r, &r->lens, p, end) < 0 || !(r->vp = delta_end(r, &r->lens))) return -1;
        return 0;
    case ENC_DELTA_BYTE_ARRAY: {
        const uint8_t *q;
        if (delta_init(r, &r->prefixes, p, end) < 0 || !(q = delta_end(r, &r->prefixes))) return -1;
        if (delta_init(r, &r->lens, q, end) < 0 || !(r->vp = delta_end(r, &r->lens))) return -1;
        r->val_len = 0;
        return 0;
    }
    default: return fail(r, "encoding %s is not supported for strings", encoding_name(encoding));
    }
}

// Reads pages of the current chunk until a data page with values is ready: 1, 0 at the end of the
// chunk, -1 on an error.
static int next_page(ParquetReader *r) {
    while (r->chunk_left > 0) {
        if (r->pos >= r->end)
            return fail(r, "the column chunk ends after %lld of %lld values",
                        (long long)(r->chunks[r->rg].num_values - r->chunk_left), (long long)r->chunks[r->rg].num_values);
        PageHeader h;
        int64_t hlen = 0;
        if (read_page_header(r, &h, &hlen) < 0) return -1;
        if (reserve(r, &r->raw, &r->raw_cap, (size_t)h.csize + 1) < 0 || read_at(r, r->raw, (size_t)h.csize, r->pos + hlen) < 0) return -1;
        r->pos += hlen + h.csize;
        if (h.has_crc && (uint32_t)crc32(0, r->raw, (uInt)h.csize) != h.crc)
            return fail(r, "page checksum mismatch (CRC-32 %08x, the header says %08x): the page is corrupt",
                        (unsigned)crc32(0, r->raw, (uInt)h.csize), h.crc);
        int codec = r->chunks[r->rg].codec;
        if (h.type == PAGE_DICTIONARY) {
            if (h.num_values < 0 || h.encoding < 0) return fail(r, "dictionary page header is incomplete");
            if (load_dictionary(r, &h) < 0) return -1;
            r->page++;
            continue;
        }
        if (h.type != PAGE_DATA && h.type != PAGE_DATA_V2) { r->page++; continue; }   // index pages and the like
        if (h.num_values < 0 || h.encoding < 0) return fail(r, "data page header is incomplete");
        if (h.num_values > r->chunk_left)
            return fail(r, "data page has %d values, more than the %lld left in the column chunk", h.num_values, (long long)r->chunk_left);
        const uint8_t *data, *levels = NULL, *levels_end = NULL;
        size_t n = 0;
        if (h.type == PAGE_DATA) {
            if (decompress(r, codec, r->raw, (size_t)h.csize, (size_t)h.usize, &r->buf, &r->buf_cap, &data) < 0) return -1;
            n = (size_t)h.usize;
            if (r->optional) {        // definition levels: a 4-byte length, then RLE
                if (h.def_encoding != ENC_RLE) return fail(r, "definition level encoding %s is not supported", encoding_name(h.def_encoding));
                if (n < 4 || le32(data) > n - 4) return fail(r, "definition levels run past the end of the page");
                levels = data + 4; levels_end = levels + le32(data);
                n -= 4 + le32(data); data = levels_end;
            }
        } else {
            if (h.def_len < 0 || h.rep_len < 0 || (int64_t)h.def_len + h.rep_len > h.csize || (int64_t)h.def_len + h.rep_len > h.usize)
                return fail(r, "data page v2 level lengths (%d, %d) do not fit the page", h.rep_len, h.def_len);
            size_t lv = (size_t)h.rep_len + (size_t)h.def_len;   // levels are stored uncompressed
            levels = r->raw + h.rep_len; levels_end = levels + h.def_len;
            n = (size_t)h.usize - lv;
            if (h.compressed) {
                if (decompress(r, codec, r->raw + lv, (size_t)h.csize - lv, n, &r->buf, &r->buf_cap, &data) < 0) return -1;
            } else {
                data = r->raw + lv;
                n = (size_t)h.csize - lv;
            }
        }
        if (r->optional) rle_init(&r->defs, levels, levels_end, 1);
        if (start_values(r, h.encoding, data, data + n) < 0) return -1;
        r->page_left = h.num_values;
        if (h.num_values > 0) return 1;
        r->page++;
    }
    return 0;
}

// ----------------------------------------------------------------------------------------------
// 6. parquet_next

// The next non-null value of the current page.
static int next_value(ParquetReader *r, const char **s, size_t *len) {
    switch (r->encoding) {
    case ENC_PLAIN: {
        if (r->vend - r->vp < 4) return fail(r, "PLAIN values end before the page's last value");
        uint32_t n = le32(r->vp);
        if (n > (size_t)(r->vend - r->vp) - 4) return fail(r, "PLAIN value of %u bytes runs past the end of the page", n);
        *s = (const char *)r->vp + 4; *len = n;
        r->vp += 4 + (size_t)n;
        return 0;
    }
    case ENC_PLAIN_DICTIONARY: case ENC_RLE_DICTIONARY: {
        uint32_t i;
        if (!rle_next(&r->idx, &i)) return fail(r, "dictionary indices are cut short or corrupt");
        if (i >= r->nentries) return fail(r, "dictionary index %u out of range (the dictionary has %zu values)", i, r->nentries);
        *s = (const char *)r->dict + r->entries[i].off; *len = r->entries[i].len;
        return 0;
    }
    case ENC_DELTA_LENGTH_BYTE_ARRAY: {
        size_t n = 0;
        if (delta_len(r, &r->lens, "length", &n) < 0) return -1;
        if (n > (size_t)(r->vend - r->vp)) return fail(r, "DELTA_LENGTH_BYTE_ARRAY value of %zu bytes runs past the end of the page", n);
        *s = (const char *)r->vp; *len = n;
        r->vp += n;
        return 0;
    }
    default: {   // DELTA_BYTE_ARRAY: the previous value's first `prefix` bytes, then the suffix
        size_t prefix = 0, n = 0;
        if (delta_len(r, &r->prefixes, "prefix length", &prefix) < 0 || delta_len(r, &r->lens, "suffix length", &n) < 0) return -1;
        if (prefix > r->val_len) return fail(r, "DELTA_BYTE_ARRAY prefix of %zu bytes is longer than the previous value (%zu)", prefix, r->val_len);
        if (n > (size_t)(r->vend - r->vp)) return fail(r, "DELTA_BYTE_ARRAY suffix of %zu bytes runs past the end of the page", n);
        if (reserve(r, &r->val, &r->val_cap, prefix + n + 1) < 0) return -1;
        memcpy(r->val + prefix, r->vp, n);
        r->vp += n;
        r->val_len = prefix + n;
        *s = (const char *)r->val; *len = r->val_len;
        return 0;
    }
    }
}

static int next(ParquetReader *r, const char **s, size_t *len) {
    for (;;) {
        if (r->page_left > 0) {
            r->page_left--; r->chunk_left--;
            if (r->optional) {
                uint32_t d;
                if (!rle_next(&r->defs, &d)) return fail(r, "definition levels are cut short or corrupt");
                if (d > 1) return fail(r, "definition level %u is over the column's maximum of 1", d);
                if (d == 0) { *s = NULL; *len = 0; return 1; }
            }
            return next_value(r, s, len) < 0 ? -1 : 1;
        }
        if (r->rg >= 0 && r->chunk_left > 0) {
            if (r->encoding >= 0) r->page++;   // past the data page just finished
            r->encoding = -1;
            int rc = next_page(r);
            if (rc != 0) { if (rc < 0) return -1; continue; }
        }
        // the next row group
        if (r->rg + 1 >= r->nchunks) return 0;
        Chunk *c = &r->chunks[++r->rg];
        r->page = 0; r->page_left = 0; r->encoding = -1;
        r->pos = c->start; r->end = c->start + c->size;
        r->chunk_left = c->num_values;
        r->has_dict = 0; r->nentries = 0;
    }
}

int parquet_next(ParquetReader *r, const char **s, size_t *len, char *err, size_t errlen) {
    *s = NULL; *len = 0;
    if (r->done) return 0;
    if (!r->failed) {
        int rc = next(r, s, len);
        if (rc >= 0) { if (rc == 0) r->done = 1; return rc; }
        r->failed = 1;
        *s = NULL; *len = 0;
    }
    put_err(err, errlen, "%s: row group %d, page %d: %s", r->path, r->rg, r->page, r->msg);
    return -1;
}

int64_t parquet_num_rows(const ParquetReader *r) { return r->num_rows; }

// ----------------------------------------------------------------------------------------------
// 7. parquet_open / parquet_close

void parquet_close(ParquetReader *r) {
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    ZSTD_freeDCtx(r->zstd);
    free(r->path); free(r->chunks); free(r->dict); free(r->entries);
    free(r->hdr); free(r->raw); free(r->buf); free(r->val);
    free(r);
}

ParquetReader *parquet_open(const char *path, const char *column, char *err, size_t errlen) {
    ParquetReader *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path))) { put_err(err, errlen, "%s: out of memory", path); free(r); return NULL; }
    r->fd = -1; r->rg = -1; r->encoding = -1;
    uint8_t *footer = NULL;
    uint8_t tail[8];
    struct stat st;
    if ((r->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) { fail(r, "cannot open: %s", strerror(errno)); goto fail; }
    if (fstat(r->fd, &st) < 0) { fail(r, "cannot stat: %s", strerror(errno)); goto fail; }
    int64_t size = (int64_t)st.st_size;
    if (size < 12) { fail(r, "not a Parquet file (%lld bytes; cut short?)", (long long)size); goto fail; }
    if (read_at(r, tail, 4, 0) < 0) goto fail;
    if (memcmp(tail, "PAR1", 4)) { fail(r, "not a Parquet file (it does not start with PAR1)"); goto fail; }
    if (read_at(r, tail, 8, size - 8) < 0) goto fail;
    if (!memcmp(tail + 4, "PARE", 4)) { fail(r, "encrypted Parquet files are not supported"); goto fail; }
    if (memcmp(tail + 4, "PAR1", 4)) { fail(r, "no PAR1 at the end of the file (cut short or not a Parquet file)"); goto fail; }
    uint32_t flen = le32(tail);
    if ((int64_t)flen > size - 12) { fail(r, "footer length %u is larger than the file (%lld bytes): cut short or corrupt", flen, (long long)size); goto fail; }
    if (!(footer = malloc(flen ? flen : 1))) { fail(r, "out of memory (footer of %u bytes)", flen); goto fail; }
    if (read_at(r, footer, flen, size - 8 - flen) < 0) goto fail;
    if (parse_footer(r, footer, flen, column, size - 8 - flen) < 0) goto fail;
    free(footer);
    return r;
fail:
    put_err(err, errlen, "%s: %s", path, r->msg);
    free(footer);
    parquet_close(r);
    return NULL;
}
