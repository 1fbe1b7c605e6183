/*
 * arrow — one string column of an Arrow IPC stream or file (arrow.h). Reading order:
 *   1. the reader, errors, file reads
 *   2. a bounds-checked flatbuffer reader (tables, scalars, vectors, strings)
 *   3. messages: 0xFFFFFFFF, int32 metadata length, a flatbuffer Message, the body
 *   4. the schema: the selected column's first field node and buffer in every record batch
 *   5. record batches: the column's validity bitmap, offsets and bytes; values
 *
 * The IPC format (arrow.apache.org/docs/format/Columnar.html, "Serialization and Interprocess
 * Communication"): a stream is a Schema message, then DictionaryBatch and RecordBatch messages, then
 * the end-of-stream marker 0xFFFFFFFF 0x00000000. A file is "ARROW1" + 2 bytes of padding, that
 * stream, a footer (an index of the blocks) and "ARROW1"; it is read here as the stream. A record
 * batch's metadata lists one field node (length, null count) per field and the buffers (offset and
 * length inside the body) of every field, depth first in schema order; a utf8 column has 3 buffers:
 * the validity bitmap (bit i set: value i is not null; may be empty when there are no nulls), n + 1
 * int32 offsets (int64 for large_utf8), and the bytes; value i is bytes[offsets[i] .. offsets[i+1]).
 * In a compressed record batch each buffer is an int64 uncompressed length (-1: not compressed) and
 * the compressed bytes.
 */
#include "arrow.h"
#include "file_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

// ----------------------------------------------------------------------------------------------
// 1. the reader, errors, file reads

enum { MSG_SCHEMA = 1, MSG_DICTIONARY_BATCH = 2, MSG_RECORD_BATCH = 3 };
enum { T_BINARY = 4, T_UTF8 = 5, T_LARGE_BINARY = 19, T_LARGE_UTF8 = 20 };

static const char *TYPE_NAMES[] = {"NONE", "Null", "Int", "FloatingPoint", "Binary", "Utf8", "Bool", "Decimal",
    "Date", "Time", "Timestamp", "Interval", "List", "Struct", "Union", "FixedSizeBinary", "FixedSizeList", "Map",
    "Duration", "LargeBinary", "LargeUtf8", "LargeList", "RunEndEncoded", "BinaryView", "Utf8View", "ListView",
    "LargeListView"};
static const char *MESSAGE_NAMES[] = {"NONE", "Schema", "DictionaryBatch", "RecordBatch", "Tensor", "SparseTensor"};

static const char *type_name(int t) { return t >= 0 && t < (int)(sizeof TYPE_NAMES / sizeof *TYPE_NAMES) ? TYPE_NAMES[t] : "unknown type"; }
static const char *message_name(int t) { return t >= 0 && t < (int)(sizeof MESSAGE_NAMES / sizeof *MESSAGE_NAMES) ? MESSAGE_NAMES[t] : "unknown message"; }

struct ArrowReader {
    char *path;
    int fd;
    int64_t size;               // of the file
    int64_t pos;                // the next message
    int wide;                   // large_utf8 / large_binary: int64 offsets
    int64_t node, buffer;       // the column's field node and first buffer in a record batch
    uint8_t *meta; size_t meta_cap;   // the current message's flatbuffer
    uint8_t *buf; size_t buf_cap;     // the column's buffers of the current record batch
    uint8_t *z[3]; size_t z_cap[3];   // the same decompressed (ZSTD record batches)
    // the current record batch
    int64_t batch;              // counted from 0 (-1 before the first)
    int64_t err_batch;          // the record batch the last error belongs to
    int64_t rows, row;          // its length, the next value
    const uint8_t *validity;    // NULL: no nulls
    const uint8_t *offsets;
    const uint8_t *data; int64_t data_len;
    int done, failed;
    char msg[512];              // the last error, without the file / record batch prefix
};

static int fail(ArrowReader *r, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

static int reserve(ArrowReader *r, uint8_t **buf, size_t *cap, size_t n) {
    return grow_bytes(buf, cap, n) < 0 ? fail(r, "out of memory (%zu bytes)", n) : 0;
}

// Reads exactly n bytes at offset off.
static int read_at(ArrowReader *r, void *dst, size_t n, int64_t off) {
    int64_t at;
    int rc = pread_exact(r->fd, dst, n, off, &at);
    if (rc == -1) return fail(r, "read error at byte %lld: %s", (long long)at, strerror(errno));
    if (rc == -2) return fail(r, "cut short at byte %lld", (long long)at);
    return 0;
}

// ----------------------------------------------------------------------------------------------
// 2. flatbuffers (flatbuffers.dev/internals): a table starts with an int32 pointing back to its vtable:
// uint16 vtable size, uint16 table size, one uint16 per field (its offset in the table, 0: absent).
// Tables, vectors and strings are reached through a uint32 offset from where it is stored; a vector is
// a uint32 count and its elements, a string a vector of bytes. Every position is checked against the
// buffer; the first bad one sets bad, and every later read returns "absent".

typedef struct { const uint8_t *b; size_t n; int bad; } Fb;
typedef struct { size_t pos, vt, vtsize, tsize; } FbTable;

static int fb_bad(Fb *f) { f->bad = 1; return 0; }

// The table at pos: 1, or 0 when it does not fit in the buffer.
static int fb_table(Fb *f, size_t pos, FbTable *t) {
    if (f->bad || pos > f->n || f->n - pos < 4) return fb_bad(f);
    int64_t vt = (int64_t)pos - (int32_t)le32(f->b + pos);
    if (vt < 0 || vt > (int64_t)f->n - 4) return fb_bad(f);
    t->pos = pos; t->vt = (size_t)vt;
    t->vtsize = le16(f->b + vt); t->tsize = le16(f->b + vt + 2);
    if (t->vtsize < 4 || t->vtsize & 1 || t->vtsize > f->n - t->vt || t->tsize < 4 || t->tsize > f->n - pos) return fb_bad(f);
    return 1;
}

// The position of field ID (WIDTH bytes wide), 0 when absent.
static size_t fb_field(Fb *f, const FbTable *t, int id, size_t width) {
    size_t e = 4 + 2 * (size_t)id;
    if (f->bad || e + 2 > t->vtsize) return 0;
    size_t off = le16(f->b + t->vt + e);
    if (!off) return 0;
    if (off < 4 || off + width > t->tsize) return fb_bad(f);
    return t->pos + off;
}

// A scalar field (1, 2, 4 or 8 bytes, signed except for 1), DFLT when absent.
static int64_t fb_int(Fb *f, const FbTable *t, int id, size_t width, int64_t dflt) {
    size_t p = fb_field(f, t, id, width);
    if (!p) return dflt;
    const uint8_t *b = f->b + p;
    return width == 1 ? b[0] : width == 2 ? (int16_t)le16(b) : width == 4 ? (int32_t)le32(b) : (int64_t)le64(b);
}

// Where the uint32 offset at p points (at least 4 bytes must be there), 0 when it points outside.
static size_t fb_follow(Fb *f, size_t p) {
    uint32_t off = le32(f->b + p);
    if (off == 0 || off > f->n - p || f->n - p - off < 4) return fb_bad(f);
    return p + off;
}

// A table field: 1 with *out, 0 when absent (or bad).
static int fb_subtable(Fb *f, const FbTable *t, int id, FbTable *out) {
    size_t p = fb_field(f, t, id, 4);
    return p && (p = fb_follow(f, p)) && fb_table(f, p, out);
}

// A vector field of ELEM-byte elements: the position of the first, with *count (0 when absent).
static size_t fb_vector(Fb *f, const FbTable *t, int id, size_t elem, uint32_t *count) {
    *count = 0;
    size_t p = fb_field(f, t, id, 4);
    if (!p || !(p = fb_follow(f, p))) return 0;
    uint32_t c = le32(f->b + p);
    if ((uint64_t)c * elem > f->n - p - 4) return fb_bad(f);
    *count = c;
    return p + 4;
}

// Element I of a vector of tables (starting at START, I below its count).
static int fb_vector_table(Fb *f, size_t start, uint32_t i, FbTable *out) {
    size_t p = fb_follow(f, start + 4 * (size_t)i);
    return p && fb_table(f, p, out);
}

// ----------------------------------------------------------------------------------------------
// 3. messages. Message table: version (int16), header_type (uint8: MessageHeader union), header
// (table), bodyLength (int64). Returns 1 with the message's type, header and body position and
// length (r->pos moves past the body), 0 at the end-of-stream marker, -1 on error.

static int read_message(ArrowReader *r, Fb *f, int *type, FbTable *header, int64_t *body, int64_t *body_len) {
    uint8_t head[8];
    int64_t left = r->size - r->pos;
    if (left < 4) return left == 0 ? fail(r, "ends at byte %lld without the end-of-stream marker (cut short?)", (long long)r->pos)
                                   : fail(r, "cut short at byte %lld (a message header)", (long long)r->pos);
    if (read_at(r, head, 4, r->pos) < 0) return -1;
    if (le32(head) != 0xFFFFFFFFu)
        return fail(r, "no message at byte %lld (expected the continuation marker 0xFFFFFFFF, found 0x%08X)", (long long)r->pos, le32(head));
    if (left < 8) return fail(r, "cut short at byte %lld (a message header)", (long long)r->pos);
    if (read_at(r, head + 4, 4, r->pos + 4) < 0) return -1;
    int32_t mlen = (int32_t)le32(head + 4);
    if (mlen == 0) { r->pos += 8; return 0; }
    if (mlen < 0 || mlen > left - 8)
        return fail(r, "message at byte %lld: metadata length %d outside the file (%lld bytes left)", (long long)r->pos, mlen, (long long)(left - 8));
    if (reserve(r, &r->meta, &r->meta_cap, (size_t)mlen) < 0 || read_at(r, r->meta, (size_t)mlen, r->pos + 8) < 0) return -1;
    int64_t at = r->pos;
    *f = (Fb){r->meta, (size_t)mlen, 0};
    FbTable m;
    if (mlen < 4 || !(fb_table(f, le32(r->meta), &m)))
        return fail(r, "message at byte %lld: damaged metadata (a flatbuffer that does not fit its %d bytes)", (long long)at, mlen);
    *type = (int)fb_int(f, &m, 1, 1, 0);
    int has_header = fb_subtable(f, &m, 2, header);
    *body_len = fb_int(f, &m, 3, 8, 0);
    *body = r->pos + 8 + mlen;
    if (f->bad || !has_header)
        return fail(r, "message at byte %lld: damaged metadata (%s)", (long long)at, f->bad ? "offsets outside its bytes" : "no header");
    if (*body_len < 0 || *body_len > r->size - *body)
        return fail(r, "message at byte %lld: body of %lld bytes outside the file (%lld bytes left)", (long long)at,
                    (long long)*body_len, (long long)(r->size - *body));
    r->pos = *body + *body_len;
    return 1;
}

// ----------------------------------------------------------------------------------------------
// 4. the schema. Schema table: endianness (int16, 0 little), fields ([Field]). Field table: name
// (string), nullable, type_type (uint8: the Type union), type (table), dictionary (table: the field
// holds dictionary indices), children ([Field]).

// Adds the field nodes and buffers FIELD and its children take in a record batch; -1 for a type
// whose layout is not known here (its buffers could not be passed over).
static int field_layout(ArrowReader *r, Fb *f, const FbTable *field, int depth, int64_t *nodes, int64_t *buffers) {
    if (depth > 64) return fail(r, "schema nested more than 64 levels deep");
    int type = (int)fb_int(f, field, 2, 1, 0);
    FbTable tt, dict;
    *nodes += 1;
    if (fb_subtable(f, field, 4, &dict)) { *buffers += 2; return 0; }   // dictionary indices: validity, ints
    int own;
    switch (type) {
    case 1: case 22: own = 0; break;                                  // Null, RunEndEncoded (children only)
    case 13: case 16: own = 1; break;                                 // Struct, FixedSizeList: validity
    case 2: case 3: case 6: case 7: case 8: case 9: case 10: case 11: case 15: case 18:
    case 12: case 17: case 21: own = 2; break;                        // fixed width; List, Map, LargeList
    case 4: case 5: case 19: case 20: case 25: case 26: own = 3; break;   // (Large)Binary/Utf8, ListViews
    case 14: own = fb_subtable(f, field, 3, &tt) && fb_int(f, &tt, 0, 2, 0) == 1 ? 2 : 1; break;   // Union: dense / sparse
    default: return fail(r, "a column of type %s (%d), which this reader cannot pass over", type_name(type), type);
    }
    *buffers += own;
    uint32_t nchild;
    size_t children = fb_vector(f, field, 5, 4, &nchild);
    for (uint32_t i = 0; i < nchild; i++) {
        FbTable c;
        if (!fb_vector_table(f, children, i, &c)) break;
        if (field_layout(r, f, &c, depth + 1, nodes, buffers) < 0) return -1;
    }
    return f->bad ? fail(r, "damaged schema") : 0;
}

static int name_is(const Fb *f, size_t s, uint32_t len, const char *name) {
    return s && strlen(name) == len && !memcmp(f->b + s, name, len);
}

// Reads the Schema message and finds COLUMN; -1 with r->msg.
static int read_schema(ArrowReader *r, const char *column) {
    Fb f; FbTable schema; int type; int64_t body, body_len;
    int rc = read_message(r, &f, &type, &schema, &body, &body_len);
    if (rc == 0) return fail(r, "no schema (the stream ends at once)");
    if (rc < 0) return -1;
    if (type != MSG_SCHEMA) return fail(r, "the first message is a %s, not a Schema", message_name(type));
    if (fb_int(&f, &schema, 0, 2, 0) != 0) return fail(r, "big-endian data is not supported");
    uint32_t nfields;
    size_t fields = fb_vector(&f, &schema, 1, 4, &nfields);
    int64_t nodes = 0, buffers = 0;
    for (uint32_t i = 0; i < nfields; i++) {
        FbTable field;
        uint32_t len;
        if (!fb_vector_table(&f, fields, i, &field)) break;
        size_t name = fb_vector(&f, &field, 0, 1, &len);
        if (name_is(&f, name, len, column)) {
            int t = (int)fb_int(&f, &field, 2, 1, 0);
            FbTable dict;
            if (fb_subtable(&f, &field, 4, &dict)) return fail(r, "column \"%s\" is dictionary-encoded, which is not supported", column);
            if (t != T_UTF8 && t != T_LARGE_UTF8 && t != T_BINARY && t != T_LARGE_BINARY)
                return fail(r, "column \"%s\" has type %s, not a string (Utf8, LargeUtf8, Binary or LargeBinary)", column, type_name(t));
            if (f.bad) break;
            r->wide = t == T_LARGE_UTF8 || t == T_LARGE_BINARY;
            r->node = nodes; r->buffer = buffers;
            return 0;
        }
        if (field_layout(r, &f, &field, 0, &nodes, &buffers) < 0) return -1;
    }
    if (f.bad) return fail(r, "damaged schema (offsets outside its bytes)");
    // not found: name the columns present
    char names[400] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < nfields && used + 1 < sizeof names; i++) {
        FbTable field;
        uint32_t len;
        if (!fb_vector_table(&f, fields, i, &field)) break;
        size_t name = fb_vector(&f, &field, 0, 1, &len);
        int k = snprintf(names + used, sizeof names - used, "%s\"%.*s\"", i ? ", " : "", (int)(len < 64 ? len : 64), name ? (const char *)f.b + name : "");
        if (k < 0) break;
        used += (size_t)k;
    }
    return fail(r, "no column \"%s\" (columns: %s)", column, nfields ? names : "none");
}

ArrowReader *arrow_open(const char *path, const char *column, char *err, size_t errlen) {
    ArrowReader *r = calloc(1, sizeof *r);
    if (!r) { put_err(err, errlen, "%s: out of memory", path); return NULL; }
    r->path = strdup(path);
    r->batch = -1;
    r->fd = open(path, O_RDONLY);
    struct stat st;
    if (r->fd < 0 || fstat(r->fd, &st) != 0) {
        put_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        arrow_close(r);
        return NULL;
    }
    r->size = st.st_size;
    uint8_t magic[8];
    if (r->size >= 8 && read_at(r, magic, 8, 0) == 0 && !memcmp(magic, "ARROW1", 6)) r->pos = 8;   // the file format
    if (read_schema(r, column) < 0) {
        put_err(err, errlen, "%s: %s", path, r->msg);
        arrow_close(r);
        return NULL;
    }
    return r;
}

// ----------------------------------------------------------------------------------------------
// 5. record batches. RecordBatch table: length (int64), nodes ([FieldNode] structs: int64 length,
// int64 null_count), buffers ([Buffer] structs: int64 offset, int64 length, in the body),
// compression (table).

static int64_t offset_at(const ArrowReader *r, int64_t i) {
    return r->wide ? (int64_t)le64(r->offsets + 8 * i) : (int32_t)le32(r->offsets + 4 * i);
}

// Buffer K of a ZSTD record batch: *p and *len from the stored bytes to the uncompressed ones.
static int unzstd(ArrowReader *r, int k, const uint8_t **p, int64_t *len) {
    if (*len < 8) return fail(r, "compressed buffer of %lld bytes, shorter than its length field", (long long)*len);
    int64_t ulen = (int64_t)le64(*p);
    if (ulen == -1) { *p += 8; *len -= 8; return 0; }   // stored uncompressed
    if (ulen < 0 || ulen > ((int64_t)1 << 36)) return fail(r, "compressed buffer: uncompressed length %lld", (long long)ulen);
    if (reserve(r, &r->z[k], &r->z_cap[k], (size_t)ulen + 1) < 0) return -1;
    size_t got = ZSTD_decompress(r->z[k], (size_t)ulen, *p + 8, (size_t)(*len - 8));
    if (ZSTD_isError(got) || got != (size_t)ulen)
        return fail(r, "zstd buffer damaged (%s)", ZSTD_isError(got) ? ZSTD_getErrorName(got) : "not the length it gives");
    *p = r->z[k];
    *len = ulen;
    return 0;
}

// Reads the column of the next record batch (passing over dictionary batches): 1, 0 at the end, -1.
static int next_batch(ArrowReader *r) {
    Fb f; FbTable rb; int type; int64_t body, body_len;
    r->err_batch = r->batch + 1;
    for (;;) {
        int rc = read_message(r, &f, &type, &rb, &body, &body_len);
        if (rc <= 0) return rc;
        if (type == MSG_RECORD_BATCH) break;
        if (type != MSG_DICTIONARY_BATCH) return fail(r, "a %s message after the schema", message_name(type));
    }
    int64_t rows = fb_int(&f, &rb, 0, 8, 0);
    uint32_t nnodes, nbufs;
    size_t nodes = fb_vector(&f, &rb, 1, 16, &nnodes), bufs = fb_vector(&f, &rb, 2, 16, &nbufs);
    FbTable comp;
    int compressed = fb_subtable(&f, &rb, 3, &comp);
    if (f.bad) return fail(r, "damaged metadata (offsets outside its bytes)");
    int codec = compressed ? (int)fb_int(&f, &comp, 0, 1, 0) : -1;   // 0: LZ4_FRAME, 1: ZSTD
    if (compressed && codec != 1)
        return fail(r, "compressed (%s) record batches are not supported; write the file uncompressed or with zstd",
                    codec == 0 ? "LZ4_FRAME" : "unknown codec");
    if (r->node >= nnodes || r->buffer + 3 > nbufs)
        return fail(r, "%u field nodes and %u buffers, too few for the schema", nnodes, nbufs);
    const uint8_t *node = f.b + nodes + 16 * r->node;
    int64_t length = (int64_t)le64(node), nulls = (int64_t)le64(node + 8);
    if (length != rows || rows < 0 || nulls < 0 || nulls > length)
        return fail(r, "column of %lld values with %lld nulls in a batch of %lld rows", (long long)length, (long long)nulls, (long long)rows);
    // the validity, offsets and data buffers, and the span of the body holding them
    int64_t off[3], len[3], lo = body_len, hi = 0;
    for (int k = 0; k < 3; k++) {
        const uint8_t *b = f.b + bufs + 16 * (r->buffer + k);
        off[k] = (int64_t)le64(b); len[k] = (int64_t)le64(b + 8);
        if (off[k] < 0 || len[k] < 0 || off[k] > body_len || len[k] > body_len - off[k])
            return fail(r, "buffer %lld (offset %lld, length %lld) outside the body of %lld bytes", (long long)(r->buffer + k),
                        (long long)off[k], (long long)len[k], (long long)body_len);
        if (len[k] == 0) continue;
        if (off[k] < lo) lo = off[k];
        if (off[k] + len[k] > hi) hi = off[k] + len[k];
    }
    if (hi > lo && (reserve(r, &r->buf, &r->buf_cap, (size_t)(hi - lo)) < 0 || read_at(r, r->buf, (size_t)(hi - lo), body + lo) < 0))
        return -1;
    const uint8_t *p[3];
    for (int k = 0; k < 3; k++) {
        p[k] = len[k] ? r->buf + (off[k] - lo) : r->buf;
        if (compressed && len[k] && unzstd(r, k, &p[k], &len[k]) < 0) return -1;
    }
    int w = r->wide ? 8 : 4;
    if (rows > 0 && (len[1] / w - 1 < rows))   // (so rows is below the buffer's length)
        return fail(r, "offsets buffer of %lld bytes for %lld values", (long long)len[1], (long long)rows);
    if (nulls > 0 && len[0] < (rows + 7) / 8)
        return fail(r, "validity bitmap of %lld bytes for %lld values", (long long)len[0], (long long)rows);
    r->validity = nulls > 0 ? p[0] : NULL;
    r->offsets = p[1];
    r->data = p[2];
    r->data_len = len[2];
    r->rows = rows;
    r->row = 0;
    r->batch++;
    return 1;
}

static int next(ArrowReader *r, const char **s, size_t *len) {
    while (r->row >= r->rows) {
        int rc = next_batch(r);
        if (rc <= 0) return rc;
    }
    int64_t i = r->row++;
    r->err_batch = r->batch;
    if (r->validity && !(r->validity[i >> 3] >> (i & 7) & 1)) { *s = NULL; *len = 0; return 1; }
    int64_t a = offset_at(r, i), b = offset_at(r, i + 1);
    if (a < 0 || b < a || b > r->data_len)
        return fail(r, "value %lld: offsets %lld..%lld outside the %lld bytes of data", (long long)i, (long long)a, (long long)b, (long long)r->data_len);
    *s = (const char *)r->data + a;
    *len = (size_t)(b - a);
    return 1;
}

int arrow_next(ArrowReader *r, const char **s, size_t *len, char *err, size_t errlen) {
    *s = NULL; *len = 0;
    if (!r->failed && !r->done) {
        int rc = next(r, s, len);
        if (rc == 0) r->done = 1;
        if (rc >= 0) return rc;
        r->failed = 1;
    }
    if (r->done) return 0;
    put_err(err, errlen, "%s: record batch %lld: %s", r->path, (long long)r->err_batch, r->msg);
    return -1;
}

void arrow_close(ArrowReader *r) {
    if (!r) return;
    if (r->fd >= 0) close(r->fd);
    free(r->path); free(r->meta); free(r->buf);
    for (int k = 0; k < 3; k++) free(r->z[k]);
    free(r);
}
