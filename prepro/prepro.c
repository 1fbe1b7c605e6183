/*
 * prepro — text files -> tokens -> Megatron MMIDIDX .bin/.idx (docs/formats.md sec. 1).
 *
 *   prepro --input FILE|DIR [...] --tokenizer tokenizer.json --output-prefix P [options]
 *
 * Reading order:
 *   1. options
 *   2. errors and temp files (every failure: one line "prepro: FILE:LINE: message", temps removed)
 *   3. input sources (buffered reads, lines)
 *   4. readers: .txt (file / line / paragraph), .jsonl, .json arrays, .csv -> documents
 *   5. batches and the worker pool: the main thread reads and writes, N threads tokenize;
 *      batches are written in input order, so the output is the same for every N
 *   6. the writer: .bin, then .idx from the sequence lengths, then a .json sidecar; renamed at the end
 *   7. sha256 (for the sidecar), main
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "../flags.h"
#include "tokenizer.h"
#include "parquet.h"
#include "arrow.h"

// ----------------------------------------------------------------------------------------------
// 1. options

#define MAX_KEYS 16
#define MAX_INPUTS 256

enum { FMT_AUTO, FMT_TXT, FMT_JSONL, FMT_JSON, FMT_CSV, FMT_PARQUET, FMT_ARROW };
enum { TXT_FILE, TXT_LINE, TXT_PARAGRAPH };

typedef struct {
    const char *inputs[MAX_INPUTS]; int ninputs;
    const char *tokenizer;
    const char *prefix;
    const char *keys[MAX_KEYS]; int nkeys;
    int append_eod;
    int txt_mode;
    int workers;
    int format;
    const char *csv_column;
    const char *eod_token;
    int no_bos;
    int special_as_text;
    int skip_errors;
    double log_interval;
    long max_docs;
    int allow_empty;        // write a dataset of 0 documents instead of stopping with an error
    int pack;               // also write P_packed_KEY_document: the token stream cut into seq_len-token sequences
    long seq_len;
} Options;

static const char *USAGE =
    "usage: prepro --input FILE|DIR [FILE|DIR ...] --tokenizer tokenizer.json --output-prefix P [options]\n"
    "\n"
    "Tokenizes text into Megatron MMIDIDX files P_KEY_document.bin/.idx (+ P_KEY_document.json metadata).\n"
    "Inputs: .txt, .jsonl, .json (array of objects), .csv, each optionally .gz or .zst, and .parquet and\n"
    ".arrow (Arrow IPC stream or file, as Hugging Face datasets saves; string columns named by --json-keys);\n"
    "a directory is searched recursively for those (sorted by path; formats may be mixed; hidden files,\n"
    "*_document.json sidecars and the datasets metadata files beside .arrow files are left out).\n"
    "\n"
    "  --input PATH ...           input files or directories (the flag may repeat)\n"
    "  --tokenizer FILE           Hugging Face tokenizer.json\n"
    "  --output-prefix P          output path prefix\n"
    "  --json-keys K ...          JSON keys to tokenize, one output per key (default: text); .txt and\n"
    "                             .csv inputs need exactly one key, which names their output\n"
    "  --append-eod               append the end-of-document token to every document\n"
    "  --eod-token STR            the end-of-document token (default: <|endoftext|>, <|end_of_text|>,\n"
    "                             </s>, ... whichever the tokenizer has)\n"
    "  --txt-mode file|line|paragraph  .txt documents: the whole file, each non-blank line, or blocks\n"
    "                             separated by blank lines (default: paragraph)\n"
    "  --csv-column NAME          .csv column holding the text (default: the key)\n"
    "  --format txt|jsonl|json|csv|parquet|arrow  read every input as this format instead of by extension\n"
    "  --no-bos                   do not add the tokens the tokenizer's post-processor adds (BOS)\n"
    "  --special-as-text          tokenize special-token strings in the text (\"<|endoftext|>\") as text\n"
    "  --workers N                tokenizing threads (default: number of CPUs); output is identical for any N\n"
    "  --on-error fail|skip       on a bad document: stop (default) or skip it and count it\n"
    "  --max-docs N               stop after N documents\n"
    "  --allow-empty              write a dataset even when no input has a non-empty document (default: error)\n"
    "  --pack --seq-len T         also write P_packed_KEY_document.bin/.idx: all documents' tokens (with their\n"
    "                             EOD) concatenated and cut into sequences of exactly T tokens, one per\n"
    "                             document; the last partial sequence is dropped\n"
    "  --log-interval SECONDS     progress line interval (default 10)\n"
    "  -h, --help                 this text\n";

static void usage_error(const char *fmt, ...) {
    char msg[512];
    va_list ap; va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
    fprintf(stderr, "prepro: %s (see prepro --help)\n", msg);
    exit(2);
}

/* Every flag but the two that take a list (--input, --json-keys) is an entry of a table (../flags.h) with its
   type and valid range. A value may not start with "--" (that is the next flag). */
static void parse_args(int argc, char **argv, Options *o) {
    memset(o, 0, sizeof *o);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o->workers = ncpu > 0 ? (int)ncpu : 1;
    o->log_interval = 10;
    const char *txt_mode = "paragraph", *format = NULL, *on_error = "fail";
    const Flag flags[] = {
        {"--tokenizer", FLAG_STRING, &o->tokenizer, 0, 0, 0, NULL},
        {"--output-prefix", FLAG_STRING, &o->prefix, 0, 0, 0, NULL},
        {"--eod-token", FLAG_STRING, &o->eod_token, 0, 0, 0, NULL},
        {"--csv-column", FLAG_STRING, &o->csv_column, 0, 0, 0, NULL},
        {"--txt-mode", FLAG_CHOICE, &txt_mode, 0, 0, 0, "file|line|paragraph"},
        {"--format", FLAG_CHOICE, &format, 0, 0, 0, "txt|jsonl|json|csv|parquet|arrow"},
        {"--on-error", FLAG_CHOICE, &on_error, 0, 0, 0, "fail|skip"},
        {"--append-eod", FLAG_SWITCH, &o->append_eod, 0, 0, 0, NULL},
        {"--no-bos", FLAG_SWITCH, &o->no_bos, 0, 0, 0, NULL},
        {"--special-as-text", FLAG_SWITCH, &o->special_as_text, 0, 0, 0, NULL},
        {"--pack", FLAG_SWITCH, &o->pack, 0, 0, 0, NULL},
        {"--allow-empty", FLAG_SWITCH, &o->allow_empty, 0, 0, 0, NULL},
        {"--workers", FLAG_INT, &o->workers, 1, 1024, 0, NULL},
        {"--seq-len", FLAG_LONG, &o->seq_len, 1, 1 << 30, 0, NULL},
        {"--max-docs", FLAG_LONG, &o->max_docs, 1, 9007199254740992.0, 0, NULL},
        {"--log-interval", FLAG_DOUBLE, &o->log_interval, 0, INFINITY, FLAG_OPEN_MIN, NULL},
    };
    char err[512];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(USAGE, stdout); exit(0); }
        if (!strcmp(a, "--input") || !strcmp(a, "--json-keys")) {
            int keys = a[2] == 'j', n = 0;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
                if (keys) { if (o->nkeys == MAX_KEYS) usage_error("too many --json-keys (at most %d)", MAX_KEYS); o->keys[o->nkeys++] = argv[++i]; }
                else { if (o->ninputs == MAX_INPUTS) usage_error("too many --input paths (at most %d)", MAX_INPUTS); o->inputs[o->ninputs++] = argv[++i]; }
                n++;
            }
            if (n == 0) usage_error("%s needs a value", a);
            continue;
        }
        const Flag *f = flag_find(flags, (int)(sizeof flags / sizeof flags[0]), a);
        if (!f) usage_error(strncmp(a, "--", 2) ? "unexpected argument %s" : "unknown flag %s", a);
        const char *v = NULL;
        if (f->type != FLAG_SWITCH) {
            if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)) usage_error("%s needs a value", a);
            v = argv[++i];
        }
        if (flag_set(f, v, err, sizeof err) != 0) usage_error("%s", err);
    }
    o->txt_mode = !strcmp(txt_mode, "file") ? TXT_FILE : !strcmp(txt_mode, "line") ? TXT_LINE : TXT_PARAGRAPH;
    o->format = !format ? FMT_AUTO : !strcmp(format, "txt") ? FMT_TXT : !strcmp(format, "jsonl") ? FMT_JSONL
              : !strcmp(format, "json") ? FMT_JSON : !strcmp(format, "csv") ? FMT_CSV : !strcmp(format, "parquet") ? FMT_PARQUET : FMT_ARROW;
    o->skip_errors = !strcmp(on_error, "skip");
    if (o->ninputs == 0) usage_error("--input is required");
    if (!o->tokenizer) usage_error("--tokenizer is required");
    if (!o->prefix) usage_error("--output-prefix is required");
    if (o->nkeys == 0) o->keys[o->nkeys++] = "text";
    if (o->pack && o->seq_len == 0) usage_error("--pack needs --seq-len T");
    if (o->seq_len && !o->pack) usage_error("--seq-len is used with --pack");
}

// ----------------------------------------------------------------------------------------------
// 2. errors and temp files

static char *g_temps[MAX_KEYS * 10];   // five per output, two outputs per key with --pack
static int g_ntemps;
static volatile sig_atomic_t g_interrupted;
static int g_progress_open;   // a '\r' progress line is on the terminal

static void remove_temps(void) {
    for (int i = 0; i < g_ntemps; i++) if (g_temps[i]) unlink(g_temps[i]);
}

// The one error line, then exit: nothing half-written is left behind.
static void fatal(const char *fmt, ...) {
    char msg[1024];
    va_list ap; va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
    for (char *p = msg; *p; p++) if (*p == '\n' || *p == '\r') *p = ' ';   // keep it one line
    if (g_progress_open) fputc('\n', stderr);
    fprintf(stderr, "prepro: %s\n", msg);
    remove_temps();
    exit(1);
}

static void on_signal(int sig) { (void)sig; g_interrupted = 1; }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) fatal("out of memory (%zu bytes)", n);
    return p;
}
static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) fatal("out of memory (%zu bytes)", n);
    return p;
}
// Grows an array to hold at least need elements.
static void grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    *p = xrealloc(*p, c * elem);
    *cap = c;
}

typedef struct { char *data; size_t len, cap; } Bytes;
static void bytes_append(Bytes *b, const void *s, size_t n) {
    grow((void **)&b->data, &b->cap, b->len + n + 1, 1);
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

// ----------------------------------------------------------------------------------------------
// 3. input sources

typedef struct {
    const char *path;
    int fd;
    gzFile gz;             // .gz input (zlib reads it; several concatenated members are fine)
    ZSTD_DStream *zst;     // .zst input (libzstd streaming; several frames are fine)
    char *zin;             // compressed bytes read from fd, zi.pos of zi.size consumed
    ZSTD_inBuffer zi;
    size_t zst_left;       // 0 when the last frame decoded so far is complete
    char *buf; size_t cap, pos, end;
    int eof;
    long line;             // number of the line last returned by src_line
    uint64_t bytes;        // bytes read so far
} Source;

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void src_open(Source *s, const char *path) {
    memset(s, 0, sizeof *s);
    s->path = path;
    s->fd = open(path, O_RDONLY);
    if (s->fd < 0) fatal("%s: cannot open: %s", path, strerror(errno));
    if (has_suffix(path, ".gz")) {
        s->gz = gzdopen(s->fd, "rb");
        if (!s->gz) fatal("%s: cannot open: out of memory", path);
        s->fd = -1;   // gzclose closes it
        gzbuffer(s->gz, 1 << 18);
    } else if (has_suffix(path, ".zst")) {
        s->zst = ZSTD_createDStream();
        if (!s->zst) fatal("%s: cannot open: out of memory", path);
        ZSTD_initDStream(s->zst);
        s->zin = xmalloc(ZSTD_DStreamInSize());
    }
    s->cap = 1 << 20;
    s->buf = xmalloc(s->cap + 1);
}
static void src_close(Source *s) {
    if (s->fd >= 0) close(s->fd);
    if (s->gz) gzclose(s->gz);
    if (s->zst) ZSTD_freeDStream(s->zst);
    free(s->buf); free(s->zin);
    s->fd = -1; s->gz = NULL; s->zst = NULL; s->buf = NULL; s->zin = NULL;
}
// Reads more bytes after the unread ones, compacting or growing the buffer; 0 at end of file.
static size_t src_more(Source *s) {
    if (s->eof) return 0;
    if (s->pos > 0) {
        memmove(s->buf, s->buf + s->pos, s->end - s->pos);
        s->end -= s->pos; s->pos = 0;
    }
    if (s->end == s->cap) { s->cap *= 2; s->buf = xrealloc(s->buf, s->cap + 1); }
    ssize_t r;
    if (s->gz) {
        size_t want = s->cap - s->end < (1u << 30) ? s->cap - s->end : (1u << 30);
        r = gzread(s->gz, s->buf + s->end, (unsigned)want);
        int zerr = Z_OK;
        const char *msg = gzerror(s->gz, &zerr);
        if (r < 0 || (zerr != Z_OK && zerr != Z_STREAM_END)) {
            const char *colon = strstr(msg, ": ");   // zlib writes "<fd:N>: message"
            fatal("%s: gzip data is damaged or cut short (%s)", s->path, zerr == Z_ERRNO ? strerror(errno) : colon ? colon + 2 : msg);
        }
        if (r > 0 && gzdirect(s->gz)) fatal("%s: not gzip data (the name ends in .gz)", s->path);
    } else if (s->zst) {
        /* decompress until some output appears or the file ends (where the last frame must be complete) */
        ZSTD_outBuffer out = {s->buf + s->end, s->cap - s->end, 0};
        while (out.pos == 0) {
            if (s->zi.pos == s->zi.size) {
                ssize_t n;
                do n = read(s->fd, s->zin, ZSTD_DStreamInSize()); while (n < 0 && errno == EINTR);
                if (n < 0) fatal("%s: read error: %s", s->path, strerror(errno));
                if (n == 0) {
                    if (s->zst_left != 0) fatal("%s: zstd data is cut short", s->path);
                    break;
                }
                s->zi.src = s->zin; s->zi.size = (size_t)n; s->zi.pos = 0;
            }
            size_t rc = ZSTD_decompressStream(s->zst, &out, &s->zi);
            if (ZSTD_isError(rc)) fatal("%s: zstd data is damaged (%s)", s->path, ZSTD_getErrorName(rc));
            s->zst_left = rc;
        }
        r = (ssize_t)out.pos;
    } else {
        do r = read(s->fd, s->buf + s->end, s->cap - s->end); while (r < 0 && errno == EINTR);
        if (r < 0) fatal("%s: read error: %s", s->path, strerror(errno));
    }
    if (r == 0) { s->eof = 1; return 0; }
    s->end += (size_t)r;
    s->bytes += (uint64_t)r;
    return (size_t)r;
}
// Next line without its '\n' (a '\r' before it is kept); *nl says whether a '\n' ended it.
// The pointer is valid until the next call. Returns 0 at end of input.
static int src_line(Source *s, char **line, size_t *len, int *nl) {
    size_t scanned = 0;
    for (;;) {
        char *p = memchr(s->buf + s->pos + scanned, '\n', s->end - s->pos - scanned);
        if (p) {
            *line = s->buf + s->pos; *len = (size_t)(p - *line); *nl = 1;
            s->pos += *len + 1;
            s->line++;
            return 1;
        }
        scanned = s->end - s->pos;
        if (src_more(s) == 0) {
            if (s->end == s->pos) return 0;
            *line = s->buf + s->pos; *len = s->end - s->pos; *nl = 0;
            s->pos = s->end;
            s->line++;
            return 1;
        }
    }
}

// ----------------------------------------------------------------------------------------------
// 4. readers -> documents

// A batch holds documents: per key, a list of text segments (a JSON list value gives several,
// each becoming one sequence), and the results of tokenizing them.
typedef struct {
    size_t *seg_off, *seg_len; size_t nseg, cap_off, cap_len;
    uint32_t *doc_nseg; size_t cap_dnseg;
    // results
    int32_t *ids; size_t nids, cap_ids;
    int32_t *seq_len; size_t nseq, cap_seq;
    uint32_t *doc_nseq; size_t cap_dnseq;
} KeyPart;

typedef struct {
    Bytes text;
    size_t ndocs, cap_docs;
    long *doc_line; int *doc_file; size_t cap_line, cap_file;
    KeyPart key[MAX_KEYS];
    int state;             // slot state in the pipeline
    long long err_doc;     // tokenizer failure: document index in the batch, -1 if none
    size_t err_at;
} Batch;

typedef struct {
    const Options *o;
    char **files; int nfiles; int *formats;
    int cur;                 // index of the open file, -1 before the first
    Source src;
    int fmt;
    // csv
    int csv_col, csv_ncols;
    // json array
    int json_state;          // 0: before '[', 1: inside, 2: done
    int txt_file_done;       // --txt-mode file: the open file's document was read
    ParquetReader *pq[MAX_KEYS];   // .parquet: one reader per key (column), read row by row in step
    ArrowReader *ar[MAX_KEYS];     // .arrow: the same
    long pq_row;
    long json_line; long json_col;   // position of src.pos
    // counters
    long long docs_read, errors_skipped, errors_shown;
    long long *file_docs, *file_skipped;   // per input file: documents read, bad documents skipped
    uint64_t bytes_done;     // bytes of files already closed
    Bytes scratch;
} Reader;

static const char *fmt_name(int f) {
    return f == FMT_TXT ? "txt" : f == FMT_JSONL ? "jsonl" : f == FMT_JSON ? "json" : f == FMT_CSV ? "csv" : f == FMT_PARQUET ? "parquet" : "arrow";
}

// Format from the file name: .txt .jsonl .ndjson .json .csv (a trailing .gz or .zst is looked through).
static int format_of(const char *path) {
    size_t n = strlen(path);
    char name[4096];
    if (n >= sizeof name) return FMT_AUTO;
    strcpy(name, path);
    if (n > 3 && !strcmp(name + n - 3, ".gz")) name[n - 3] = 0;
    else if (n > 4 && !strcmp(name + n - 4, ".zst")) name[n - 4] = 0;
    const char *dot = strrchr(name, '.');
    if (!dot || strchr(dot, '/')) return FMT_AUTO;
    if (!strcasecmp(dot, ".txt") || !strcasecmp(dot, ".text")) return FMT_TXT;
    if (!strcasecmp(dot, ".jsonl") || !strcasecmp(dot, ".ndjson")) return FMT_JSONL;
    if (!strcasecmp(dot, ".json")) return FMT_JSON;
    if (!strcasecmp(dot, ".csv")) return FMT_CSV;
    if (!strcasecmp(dot, ".parquet") && strlen(name) == n) return FMT_PARQUET;   // (never compressed as a whole)
    if (!strcasecmp(dot, ".arrow") && strlen(name) == n) return FMT_ARROW;
    return FMT_AUTO;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void collect_dir(const char *dir, char ***files, int *n, int *cap) {
    DIR *d = opendir(dir);
    if (!d) fatal("%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL; size_t nn = 0, cn = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;   // hidden files, . and ..
        grow((void **)&names, &cn, nn + 1, sizeof(char *));
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        names[nn] = xmalloc(len);
        snprintf(names[nn], len, "%s/%s", dir, e->d_name);
        nn++;
    }
    closedir(d);
    if (nn > 1) qsort(names, nn, sizeof(char *), cmp_str);   // (an empty directory has no array at all)
    // a folder saved by Hugging Face datasets: its .json files describe the .arrow files beside them
    int arrow = 0;
    for (size_t i = 0; i < nn; i++) arrow |= format_of(names[i]) == FMT_ARROW;
    for (size_t i = 0; i < nn; i++) {
        struct stat st;
        if (stat(names[i], &st) != 0) { free(names[i]); continue; }
        if (S_ISDIR(st.st_mode)) { collect_dir(names[i], files, n, cap); free(names[i]); continue; }
        // unknown extensions, and the metadata sidecars of an earlier run, are not inputs
        size_t nl = strlen(names[i]);
        const char *base = names[i] + strlen(dir) + 1;
        if (format_of(names[i]) == FMT_AUTO || (nl > 14 && !strcmp(names[i] + nl - 14, "_document.json")) ||
            !strcmp(base, "dataset_dict.json") || (arrow && (!strcmp(base, "dataset_info.json") || !strcmp(base, "state.json")))) {
            free(names[i]);
            continue;
        }
        size_t c = (size_t)*cap;
        grow((void **)files, &c, (size_t)*n + 1, sizeof(char *));
        *cap = (int)c;
        (*files)[(*n)++] = names[i];
    }
    free(names);
}

static void reader_init(Reader *r, const Options *o) {
    memset(r, 0, sizeof *r);
    r->o = o;
    r->cur = -1;
    r->src.fd = -1;
    int cap = 0;
    for (int i = 0; i < o->ninputs; i++) {
        struct stat st;
        if (stat(o->inputs[i], &st) != 0) fatal("%s: cannot open: %s", o->inputs[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            int before = r->nfiles;
            collect_dir(o->inputs[i], &r->files, &r->nfiles, &cap);
            if (r->nfiles == before) fatal("%s: no .txt, .jsonl, .json, .csv, .parquet or .arrow files in this directory", o->inputs[i]);
        } else {
            size_t c = (size_t)cap;
            grow((void **)&r->files, &c, (size_t)r->nfiles + 1, sizeof(char *));
            cap = (int)c;
            r->files[r->nfiles++] = strdup(o->inputs[i]);
        }
    }
    r->formats = xmalloc(sizeof(int) * (size_t)r->nfiles);
    r->file_docs = calloc((size_t)r->nfiles + 1, sizeof(long long));
    r->file_skipped = calloc((size_t)r->nfiles + 1, sizeof(long long));
    if (!r->file_docs || !r->file_skipped) fatal("out of memory");
    for (int i = 0; i < r->nfiles; i++) {
        int f = o->format ? o->format : format_of(r->files[i]);
        if (f == FMT_AUTO) fatal("%s: unknown input format (use .txt, .jsonl, .json, .csv, .parquet, .arrow or --format)", r->files[i]);
        if ((f == FMT_TXT || f == FMT_CSV) && o->nkeys != 1)
            fatal("%s: .%s input has one text field, but %d --json-keys were given", r->files[i], fmt_name(f), o->nkeys);
        r->formats[i] = f;
    }
}

// A bad document: stop, or (--on-error skip) report the first few, count it and go on.
static void doc_error(Reader *r, const char *fmt, ...) {
    char msg[900];
    va_list ap; va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
    if (!r->o->skip_errors) fatal("%s", msg);
    r->errors_skipped++;
    r->file_skipped[r->cur]++;
    if (r->errors_shown < 10) {
        if (g_progress_open) { fputc('\n', stderr); g_progress_open = 0; }
        for (char *p = msg; *p; p++) if (*p == '\n' || *p == '\r') *p = ' ';
        fprintf(stderr, "prepro: %s (document skipped)\n", msg);
        if (++r->errors_shown == 10) fprintf(stderr, "prepro: further skipped documents are counted, not shown\n");
    }
}

// UTF-8 check of one input line: reports FILE:LINE:BYTE (1-based byte column) of the first bad byte.
static int line_utf8_ok(Reader *r, const char *s, size_t n, long line) {
    size_t ok = utf8_valid_prefix(s, n);
    if (ok == n) return 1;
    doc_error(r, "%s:%ld:%zu: invalid UTF-8 (byte 0x%02X)", r->src.path, line, ok + 1, (unsigned char)s[ok]);
    return 0;
}

static void batch_begin_doc(Batch *b, Reader *r, long line) {
    grow((void **)&b->doc_line, &b->cap_line, b->ndocs + 1, sizeof(long));
    grow((void **)&b->doc_file, &b->cap_file, b->ndocs + 1, sizeof(int));
    b->doc_line[b->ndocs] = line;
    b->doc_file[b->ndocs] = r->cur;
    for (int k = 0; k < r->o->nkeys; k++) {
        KeyPart *kp = &b->key[k];
        grow((void **)&kp->doc_nseg, &kp->cap_dnseg, b->ndocs + 1, sizeof(uint32_t));
        kp->doc_nseg[b->ndocs] = 0;
    }
}
static void batch_add_seg(Batch *b, int k, const char *s, size_t n) {
    KeyPart *kp = &b->key[k];
    grow((void **)&kp->seg_off, &kp->cap_off, kp->nseg + 1, sizeof(size_t));
    grow((void **)&kp->seg_len, &kp->cap_len, kp->nseg + 1, sizeof(size_t));
    kp->seg_off[kp->nseg] = b->text.len;
    kp->seg_len[kp->nseg] = n;
    kp->nseg++;
    kp->doc_nseg[b->ndocs]++;
    bytes_append(&b->text, s, n);
}
static void batch_end_doc(Batch *b, Reader *r) { b->ndocs++; r->docs_read++; r->file_docs[r->cur]++; }

// Undo a document begun but found bad (skip mode).
static void batch_drop_doc(Batch *b, Reader *r) {
    for (int k = 0; k < r->o->nkeys; k++) {
        KeyPart *kp = &b->key[k];
        kp->nseg -= kp->doc_nseg[b->ndocs];
        kp->doc_nseg[b->ndocs] = 0;
    }
}

static const char *json_type_name(json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: case JSON_REAL: return "a number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

// One JSON object -> one document (all keys). Returns 0 and reports when it is bad.
static int add_json_doc(Reader *r, Batch *b, json_t *obj, const char *where) {
    if (!json_is_object(obj)) { doc_error(r, "%s: expected a JSON object, found %s", where, json_type_name(obj)); return 0; }
    batch_begin_doc(b, r, r->src.line);
    for (int k = 0; k < r->o->nkeys; k++) {
        json_t *v = json_object_get(obj, r->o->keys[k]);
        if (!v) {
            Bytes *ks = &r->scratch; ks->len = 0;
            const char *key; json_t *val; int n = 0;
            json_object_foreach(obj, key, val) {
                if (n++ == 8) { bytes_append(ks, ", ...", 5); break; }
                if (n > 1) bytes_append(ks, ", ", 2);
                bytes_append(ks, "\"", 1); bytes_append(ks, key, strlen(key)); bytes_append(ks, "\"", 1);
            }
            batch_drop_doc(b, r);
            doc_error(r, "%s: key \"%s\" not found (keys present: %s)", where, r->o->keys[k], n ? ks->data : "none");
            return 0;
        }
        if (json_is_string(v)) batch_add_seg(b, k, json_string_value(v), json_string_length(v));
        else if (json_is_array(v)) {
            // a list of strings: already-split sentences, one sequence each (as Megatron)
            for (size_t i = 0; i < json_array_size(v); i++) {
                json_t *e = json_array_get(v, i);
                if (!json_is_string(e)) {
                    batch_drop_doc(b, r);
                    doc_error(r, "%s: key \"%s\"[%zu] is %s, expected a string", where, r->o->keys[k], i, json_type_name(e));
                    return 0;
                }
                batch_add_seg(b, k, json_string_value(e), json_string_length(e));
            }
        } else {
            batch_drop_doc(b, r);
            doc_error(r, "%s: key \"%s\" is %s, expected a string or a list of strings", where, r->o->keys[k], json_type_name(v));
            return 0;
        }
    }
    batch_end_doc(b, r);
    return 1;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return 0;
    return 1;
}

// .txt: returns 1 when a document was added, 0 at the end of the file.
//   line:      each non-blank line (without its line break) is a document
//   paragraph: runs of non-blank lines separated by blank lines (only spaces, tabs, CR);
//              the lines keep their bytes and the breaks between them
//   file:      the whole file, byte for byte (an empty file is an empty document)
static int next_txt(Reader *r, Batch *b) {
    char *line; size_t len; int nl;
    if (r->o->txt_mode == TXT_LINE) {
        while (src_line(&r->src, &line, &len, &nl)) {
            if (len > 0 && line[len - 1] == '\r') len--;
            if (!line_utf8_ok(r, line, len, r->src.line)) continue;
            if (is_blank(line, len)) continue;
            batch_begin_doc(b, r, r->src.line);
            batch_add_seg(b, 0, line, len);
            batch_end_doc(b, r);
            return 1;
        }
        return 0;
    }
    Bytes *doc = &r->scratch;
    for (;;) {
        if (r->o->txt_mode == TXT_FILE && r->txt_file_done) return 0;
        doc->len = 0;
        long first = 0;
        int bad = 0;
        while (src_line(&r->src, &line, &len, &nl)) {
            if (!line_utf8_ok(r, line, len, r->src.line)) bad = 1;   // (skip mode) drops the whole document
            if (r->o->txt_mode == TXT_FILE) {
                if (!first) first = r->src.line;
                bytes_append(doc, line, len);
                if (nl) bytes_append(doc, "\n", 1);
                continue;
            }
            if (is_blank(line, len)) {
                if (first) break;       // a blank line ends the paragraph
                continue;
            }
            if (first) bytes_append(doc, "\n", 1);
            else first = r->src.line;
            bytes_append(doc, line, len);
        }
        if (r->o->txt_mode == TXT_FILE) r->txt_file_done = 1;
        else if (!first) return 0;
        else if (doc->len > 0 && doc->data[doc->len - 1] == '\r') doc->len--;   // CRLF after the last line
        if (bad) continue;
        batch_begin_doc(b, r, first ? first : 1);
        batch_add_seg(b, 0, doc->data ? doc->data : "", doc->len);
        batch_end_doc(b, r);
        return 1;
    }
}

// A fast path for the common .jsonl line: one object whose selected keys hold plain strings. It parses
// the line without building a tree and hands the selected strings on (undecoded strings straight from
// the line). Anything it is not sure to read exactly as jansson does (escaped keys, a selected key twice
// or missing or not a string, long numbers, deep nesting, any error) makes it return 0, and the line
// goes through jansson, which gives the same result or the error message.
typedef struct { const char *s; size_t len; int esc, found; } JsonSpan;

static int jf_hex4(const char *s, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16) return 0;
        *v = *v * 16 + d;
    }
    return 1;
}
// s[*i] is the opening quote; on success *i is past the closing quote, *esc says if it held escapes.
static int jf_string(const char *s, size_t n, size_t *i, JsonSpan *span) {
    size_t p = *i + 1, start = p;
    int esc = 0;
    for (;;) {
        if (p >= n) return 0;
        unsigned char c = (unsigned char)s[p];
        if (c == '"') break;
        if (c < 0x20) return 0;
        if (c != '\\') { p++; continue; }
        esc = 1;
        if (p + 1 >= n) return 0;
        char e = s[p + 1];
        if (e != 'u') {
            if (!strchr("\"\\/bfnrt", e) || e == 0) return 0;
            p += 2; continue;
        }
        unsigned v, w;
        if (p + 6 > n || !jf_hex4(s + p + 2, &v)) return 0;
        p += 6;
        if (v >= 0xDC00 && v <= 0xDFFF) return 0;
        if (v >= 0xD800 && v <= 0xDBFF) {
            if (p + 6 > n || s[p] != '\\' || s[p + 1] != 'u' || !jf_hex4(s + p + 2, &w) || w < 0xDC00 || w > 0xDFFF) return 0;
            p += 6;
        }
    }
    if (span) { span->s = s + start; span->len = p - start; span->esc = esc; }
    *i = p + 1;
    return 1;
}
// Decodes a string jf_string accepted.
static void jf_decode(const char *s, size_t n, Bytes *out) {
    out->len = 0;
    for (size_t p = 0; p < n;) {
        size_t q = p;
        while (q < n && s[q] != '\\') q++;
        bytes_append(out, s + p, q - p);
        if (q == n) break;
        char e = s[q + 1], c;
        if (e != 'u') {
            c = e == 'b' ? '\b' : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r' : e == 't' ? '\t' : e;
            bytes_append(out, &c, 1);
            p = q + 2; continue;
        }
        unsigned v, w;
        jf_hex4(s + q + 2, &v);
        p = q + 6;
        if (v >= 0xD800 && v <= 0xDBFF) { jf_hex4(s + p + 2, &w); v = 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00); p += 6; }
        char u[4]; size_t k;
        if (v < 0x80) { u[0] = (char)v; k = 1; }
        else if (v < 0x800) { u[0] = (char)(0xC0 | v >> 6); u[1] = (char)(0x80 | (v & 63)); k = 2; }
        else if (v < 0x10000) { u[0] = (char)(0xE0 | v >> 12); u[1] = (char)(0x80 | (v >> 6 & 63)); u[2] = (char)(0x80 | (v & 63)); k = 3; }
        else { u[0] = (char)(0xF0 | v >> 18); u[1] = (char)(0x80 | (v >> 12 & 63)); u[2] = (char)(0x80 | (v >> 6 & 63)); u[3] = (char)(0x80 | (v & 63)); k = 4; }
        bytes_append(out, u, k);
    }
}
static void jf_ws(const char *s, size_t n, size_t *i) {
    while (*i < n && (s[*i] == ' ' || s[*i] == '\t' || s[*i] == '\n' || s[*i] == '\r')) (*i)++;
}
// Skips one value (not a selected one); 0 on anything unusual.
static int jf_value(const char *s, size_t n, size_t *i, int depth) {
    if (*i >= n || depth > 64) return 0;
    char c = s[*i];
    if (c == '"') return jf_string(s, n, i, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        (*i)++; jf_ws(s, n, i);
        if (*i < n && s[*i] == close) { (*i)++; return 1; }
        for (;;) {
            if (c == '{') {
                JsonSpan k;
                if (*i >= n || s[*i] != '"' || !jf_string(s, n, i, &k) || k.esc) return 0;   // jansson refuses a \u0000 key
                jf_ws(s, n, i);
                if (*i >= n || s[*i] != ':') return 0;
                (*i)++; jf_ws(s, n, i);
            }
            if (!jf_value(s, n, i, depth + 1)) return 0;
            jf_ws(s, n, i);
            if (*i >= n) return 0;
            if (s[*i] == close) { (*i)++; return 1; }
            if (s[*i] != ',') return 0;
            (*i)++; jf_ws(s, n, i);
        }
    }
    const char *lit[3] = {"true", "false", "null"};
    for (int l = 0; l < 3; l++) {
        size_t m = strlen(lit[l]);
        if (n - *i >= m && memcmp(s + *i, lit[l], m) == 0) { *i += m; return 1; }
    }
    size_t p = *i, digits = 0;
    if (p < n && s[p] == '-') p++;
    if (p < n && s[p] == '0') { p++; digits++; }
    else if (p < n && s[p] >= '1' && s[p] <= '9') while (p < n && s[p] >= '0' && s[p] <= '9') { p++; digits++; }
    else return 0;
    if (p < n && s[p] == '.') {
        p++;
        size_t f = 0;
        while (p < n && s[p] >= '0' && s[p] <= '9') { p++; f++; }
        if (f == 0) return 0;
        digits += f;
    }
    if (digits > 15 || (p < n && (s[p] == 'e' || s[p] == 'E'))) return 0;
    *i = p;
    return 1;
}
static int jsonl_fast(Reader *r, Batch *b, const char *s, size_t n) {
    JsonSpan span[MAX_KEYS];
    int nk = r->o->nkeys;
    for (int k = 0; k < nk; k++) span[k].found = 0;
    size_t i = 0;
    jf_ws(s, n, &i);
    if (i >= n || s[i] != '{') return 0;
    i++; jf_ws(s, n, &i);
    if (i < n && s[i] == '}') return 0;          // an empty object: jansson gives the error
    for (;;) {
        JsonSpan key;
        if (i >= n || s[i] != '"' || !jf_string(s, n, &i, &key) || key.esc) return 0;
        jf_ws(s, n, &i);
        if (i >= n || s[i] != ':') return 0;
        i++; jf_ws(s, n, &i);
        int sel = -1;
        for (int k = 0; k < nk; k++)
            if (strlen(r->o->keys[k]) == key.len && memcmp(r->o->keys[k], key.s, key.len) == 0) { sel = k; break; }
        if (sel >= 0) {
            if (span[sel].found || i >= n || s[i] != '"' || !jf_string(s, n, &i, &span[sel])) return 0;
            span[sel].found = 1;
        } else if (!jf_value(s, n, &i, 1)) return 0;
        jf_ws(s, n, &i);
        if (i >= n) return 0;
        if (s[i] == '}') { i++; break; }
        if (s[i] != ',') return 0;
        i++; jf_ws(s, n, &i);
    }
    jf_ws(s, n, &i);
    if (i != n) return 0;
    for (int k = 0; k < nk; k++) if (!span[k].found) return 0;
    batch_begin_doc(b, r, r->src.line);
    for (int k = 0; k < nk; k++) {
        if (!span[k].esc) { batch_add_seg(b, k, span[k].s, span[k].len); continue; }
        jf_decode(span[k].s, span[k].len, &r->scratch);
        batch_add_seg(b, k, r->scratch.data ? r->scratch.data : "", r->scratch.len);
    }
    batch_end_doc(b, r);
    return 1;
}

// .jsonl: one object per line; blank lines are skipped.
static int next_jsonl(Reader *r, Batch *b) {
    char *line; size_t len; int nl;
    while (src_line(&r->src, &line, &len, &nl)) {
        if (is_blank(line, len)) continue;
        if (!line_utf8_ok(r, line, len, r->src.line)) continue;
        if (jsonl_fast(r, b, line, len)) return 1;
        json_error_t e;
        json_t *j = json_loadb(line, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &e);
        if (!j) { doc_error(r, "%s:%ld:%d: malformed JSON: %s", r->src.path, r->src.line, e.column > 0 ? e.column : 1, e.text); continue; }
        char where[4200];
        snprintf(where, sizeof where, "%s:%ld", r->src.path, r->src.line);
        int ok = add_json_doc(r, b, j, where);
        json_decref(j);
        if (ok) return 1;
    }
    return 0;
}

// .json: a top-level array of objects, read one element at a time.
static void json_advance(Reader *r, size_t n) {
    const char *s = r->src.buf + r->src.pos;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') { r->json_line++; r->json_col = 1; }
        else if (((unsigned char)s[i] & 0xC0) != 0x80) r->json_col++;
    }
    r->src.pos += n;
}
// Skips whitespace and returns the next byte (not consumed), or -1 at end of file.
static int json_peek(Reader *r) {
    for (;;) {
        while (r->src.pos < r->src.end) {
            char c = r->src.buf[r->src.pos];
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return (unsigned char)c;
            json_advance(r, 1);
        }
        if (src_more(&r->src) == 0) return -1;
    }
}
static int next_json(Reader *r, Batch *b) {
    const char *path = r->src.path;
    for (;;) {
        if (r->json_state == 2) {
            int c = json_peek(r);
            if (c >= 0) fatal("%s:%ld:%ld: unexpected data after the top-level array", path, r->json_line, r->json_col);
            return 0;
        }
        int c = json_peek(r);
        if (r->json_state == 0) {
            if (c != '[') {
                if (c == '{') fatal("%s:%ld:%ld: expected a JSON array of objects; for one object per line use .jsonl", path, r->json_line, r->json_col);
                fatal("%s:%ld:%ld: expected a JSON array of objects", path, r->json_line, r->json_col);
            }
            json_advance(r, 1);
            r->json_state = 1;
            if (json_peek(r) == ']') { json_advance(r, 1); r->json_state = 2; }
            continue;
        }
        if (c < 0) fatal("%s:%ld:%ld: unexpected end of file inside the top-level array", path, r->json_line, r->json_col);
        // parse one element; more input is read while the element is incomplete
        json_error_t e;
        json_t *j;
        for (;;) {
            j = json_loadb(r->src.buf + r->src.pos, r->src.end - r->src.pos,
                           JSON_ALLOW_NUL | JSON_DECODE_ANY | JSON_DISABLE_EOF_CHECK, &e);
            if (j || json_error_code(&e) != json_error_premature_end_of_input || src_more(&r->src) == 0) break;
        }
        long line = r->json_line;
        if (!j) {
            const char *s = r->src.buf + r->src.pos;
            size_t avail = r->src.end - r->src.pos, bad = utf8_valid_prefix(s, avail);
            if (bad < avail && (e.position < 0 || bad <= (size_t)e.position + 4)) {
                json_advance(r, bad);
                fatal("%s:%ld:%ld: invalid UTF-8 (byte 0x%02X)", path, r->json_line, r->json_col, (unsigned char)s[bad]);
            }
            long col = e.line == 1 ? r->json_col + e.column - 1 : (long)e.column;
            fatal("%s:%ld:%ld: malformed JSON: %s", path, line + e.line - 1, col > 0 ? col : 1, e.text);
        }
        json_advance(r, (size_t)e.position);
        char where[4200];
        snprintf(where, sizeof where, "%s:%ld", path, line);
        int ok = add_json_doc(r, b, j, where);
        json_decref(j);
        c = json_peek(r);
        if (c == ',') json_advance(r, 1);
        else if (c == ']') { json_advance(r, 1); r->json_state = 2; }
        else fatal("%s:%ld:%ld: expected ',' or ']' after an array element", path, r->json_line, r->json_col);
        if (ok) return 1;
    }
}

// .csv (RFC 4180): fields split by ',', records by LF or CRLF; quoted fields may hold commas,
// newlines and "" for a quote. The first record is the header.
typedef struct { Bytes buf; size_t *off; size_t *len; size_t n, cap_off, cap_len; } Fields;

// Reads one record into f. Returns 0 at end of file. *first gets the record's first line.
static int csv_record(Reader *r, Fields *f, long *first) {
    char *line; size_t len; int nl;
    f->buf.len = 0; f->n = 0;
    if (!src_line(&r->src, &line, &len, &nl)) return 0;
    *first = r->src.line;
    int quoted = 0, in_field = 0, bad = 0;
    size_t field_start = 0;
    for (;;) {
        if (!line_utf8_ok(r, line, len, r->src.line)) bad = 1;   // (skip mode) the record is dropped
        for (size_t i = 0; i < len; i++) {
            char c = line[i];
            if (quoted) {
                if (c == '"') {
                    if (i + 1 < len && line[i + 1] == '"') { bytes_append(&f->buf, "\"", 1); i++; }
                    else quoted = 0;
                } else bytes_append(&f->buf, &c, 1);
                continue;
            }
            if (c == ',') {
                grow((void **)&f->off, &f->cap_off, f->n + 1, sizeof(size_t));
                grow((void **)&f->len, &f->cap_len, f->n + 1, sizeof(size_t));
                f->off[f->n] = field_start; f->len[f->n] = f->buf.len - field_start; f->n++;
                field_start = f->buf.len; in_field = 0;
                continue;
            }
            if (c == '"' && !in_field) { quoted = 1; in_field = 1; continue; }
            if (c == '\r' && i + 1 == len) continue;   // CRLF record end
            in_field = 1;
            bytes_append(&f->buf, &c, 1);
        }
        if (!quoted) break;
        // a quoted field goes on over the line break
        bytes_append(&f->buf, "\n", 1);
        if (!src_line(&r->src, &line, &len, &nl))
            fatal("%s:%ld: unterminated quoted field (the file ends inside it)", r->src.path, *first);
    }
    grow((void **)&f->off, &f->cap_off, f->n + 1, sizeof(size_t));
    grow((void **)&f->len, &f->cap_len, f->n + 1, sizeof(size_t));
    f->off[f->n] = field_start; f->len[f->n] = f->buf.len - field_start; f->n++;
    if (!f->buf.data) bytes_append(&f->buf, "", 0);
    if (bad) f->n = (size_t)-1;
    return 1;
}

static Fields g_fields;

static int next_csv(Reader *r, Batch *b) {
    Fields *f = &g_fields;
    long first;
    const char *col = r->o->csv_column ? r->o->csv_column : r->o->keys[0];
    if (r->csv_col < 0) {
        if (!csv_record(r, f, &first)) fatal("%s: empty CSV file (no header row)", r->src.path);
        if (f->n == (size_t)-1) fatal("%s:%ld: invalid UTF-8 in the header row", r->src.path, first);
        for (size_t i = 0; i < f->n; i++)
            if (f->len[i] == strlen(col) && !memcmp(f->buf.data + f->off[i], col, f->len[i])) { r->csv_col = (int)i; break; }
        if (r->csv_col < 0) {
            Bytes *s = &r->scratch; s->len = 0;
            for (size_t i = 0; i < f->n && i < 12; i++) {
                if (i) bytes_append(s, ", ", 2);
                bytes_append(s, "\"", 1); bytes_append(s, f->buf.data + f->off[i], f->len[i]); bytes_append(s, "\"", 1);
            }
            fatal("%s:%ld: column \"%s\" not found (columns: %s)", r->src.path, first, col, s->data ? s->data : "none");
        }
        r->csv_ncols = (int)f->n;
    }
    while (csv_record(r, f, &first)) {
        if (f->n == (size_t)-1) continue;                          // bad UTF-8, skipped
        if (f->n == 1 && f->len[0] == 0) continue;                 // blank line
        if ((int)f->n != r->csv_ncols) {
            doc_error(r, "%s:%ld: record has %zu fields, the header has %d", r->src.path, first, f->n, r->csv_ncols);
            continue;
        }
        batch_begin_doc(b, r, first);
        batch_add_seg(b, 0, f->buf.data + f->off[r->csv_col], f->len[r->csv_col]);
        batch_end_doc(b, r);
        return 1;
    }
    return 0;
}

// Adds the next document to b; 0 when every input is done.
// .parquet and .arrow: row i of the file is a document; key k's text is column keys[k] (--csv-column for
// a single key). A null value is an empty text. Rows are reported as "FILE:ROW" (counted from 1).
static int next_parquet(Reader *r, Batch *b) {
    const char *path = r->files[r->cur];
    char err[600];
    int arrow = r->fmt == FMT_ARROW;
    if (!r->pq[0] && !r->ar[0]) {
        for (int k = 0; k < r->o->nkeys; k++) {
            const char *col = r->o->nkeys == 1 && r->o->csv_column ? r->o->csv_column : r->o->keys[k];
            if (arrow) r->ar[k] = arrow_open(path, col, err, sizeof err);
            else r->pq[k] = parquet_open(path, col, err, sizeof err);
            if (!r->pq[k] && !r->ar[k]) fatal("%s", err);
        }
        r->pq_row = 0;
    }
    const char *s[MAX_KEYS];
    size_t len[MAX_KEYS];
    long row;
    for (int bad = 1; bad;) {   // (with --on-error skip, rows with invalid UTF-8 are passed over)
        for (int k = 0; k < r->o->nkeys; k++) {
            int rc = arrow ? arrow_next(r->ar[k], &s[k], &len[k], err, sizeof err)
                           : parquet_next(r->pq[k], &s[k], &len[k], err, sizeof err);
            if (rc < 0) fatal("%s", err);
            if (rc == 0) return 0;
        }
        row = ++r->pq_row;
        bad = 0;
        for (int k = 0; k < r->o->nkeys && !bad; k++) {
            size_t ok = s[k] ? utf8_valid_prefix(s[k], len[k]) : 0;
            if (s[k] && ok != len[k]) {
                doc_error(r, "%s:%ld: column \"%s\": invalid UTF-8 at byte %zu (0x%02X)", path, row, r->o->keys[k], ok + 1, (unsigned char)s[k][ok]);
                bad = 1;
            }
        }
    }
    batch_begin_doc(b, r, row);
    for (int k = 0; k < r->o->nkeys; k++) if (s[k]) batch_add_seg(b, k, s[k], len[k]);
    batch_end_doc(b, r);
    return 1;
}

static void parquet_done(Reader *r) {
    struct stat st;
    if (stat(r->files[r->cur], &st) == 0) r->bytes_done += (uint64_t)st.st_size;   // for the progress line
    for (int k = 0; k < MAX_KEYS; k++) if (r->pq[k]) { parquet_close(r->pq[k]); r->pq[k] = NULL; }
    for (int k = 0; k < MAX_KEYS; k++) if (r->ar[k]) { arrow_close(r->ar[k]); r->ar[k] = NULL; }
}

// Closes the file being read (the reader may stop before the end, as with --max-docs) and frees the reader.
static void reader_free(Reader *r) {
    if (r->cur >= 0 && r->cur < r->nfiles && (r->fmt == FMT_PARQUET || r->fmt == FMT_ARROW)) parquet_done(r);
    src_close(&r->src);
    for (int i = 0; i < r->nfiles; i++) free(r->files[i]);
    free(r->files); free(r->formats); free(r->file_docs); free(r->file_skipped); free(r->scratch.data);
}

static int reader_next(Reader *r, Batch *b) {
    for (;;) {
        if (r->cur >= 0) {
            int got = 0;
            switch (r->fmt) {
            case FMT_TXT: got = next_txt(r, b); break;
            case FMT_JSONL: got = next_jsonl(r, b); break;
            case FMT_JSON: got = next_json(r, b); break;
            case FMT_CSV: got = next_csv(r, b); break;
            case FMT_PARQUET: case FMT_ARROW: got = next_parquet(r, b); break;
            }
            if (got) return 1;
            if (r->fmt == FMT_PARQUET || r->fmt == FMT_ARROW) parquet_done(r);
            r->bytes_done += r->src.bytes;
            r->src.bytes = 0;
            src_close(&r->src);
        }
        if (r->cur + 1 >= r->nfiles) return 0;
        r->cur++;
        r->fmt = r->formats[r->cur];
        if (r->fmt != FMT_PARQUET && r->fmt != FMT_ARROW) src_open(&r->src, r->files[r->cur]);
        r->csv_col = -1;
        r->json_state = 0; r->json_line = 1; r->json_col = 1;
        r->txt_file_done = 0;
    }
}

// ----------------------------------------------------------------------------------------------
// 5. batches and workers

#define BATCH_BYTES (256 << 10)  // a batch is about this much text (more when one document is larger)
#define BATCH_DOCS 8192

enum { SLOT_FREE, SLOT_READY, SLOT_BUSY, SLOT_DONE };

typedef struct {
    const Options *o;
    const Tokenizer *tok;
    int flags, eod;
    Batch *slots; int nslots;
    long long next_submit, next_take, next_write;   // batch sequence numbers; slot = n % nslots
    int quit;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
} Pool;

static void tokenize_batch(Pool *p, TokenizerState *st, Batch *b) {
    b->err_doc = -1;
    for (int k = 0; k < p->o->nkeys; k++) {
        KeyPart *kp = &b->key[k];
        kp->nids = 0; kp->nseq = 0;
        grow((void **)&kp->doc_nseq, &kp->cap_dnseq, b->ndocs + 1, sizeof(uint32_t));
        size_t seg = 0;
        for (size_t d = 0; d < b->ndocs; d++) {
            uint32_t nseq = 0;
            for (uint32_t s = 0; s < kp->doc_nseg[d]; s++, seg++) {
                size_t len = kp->seg_len[seg], n;
                if (len == 0) continue;    // empty sentences are dropped, as Megatron does
                const int32_t *ids = tokenizer_encode(p->tok, st, b->text.data + kp->seg_off[seg], len, p->flags, &n);
                if (!ids) { b->err_doc = (long long)d; b->err_at = n; return; }
                if (n == 0) continue;
                grow((void **)&kp->ids, &kp->cap_ids, kp->nids + n + 1, sizeof(int32_t));
                memcpy(kp->ids + kp->nids, ids, n * sizeof(int32_t));
                kp->nids += n;
                grow((void **)&kp->seq_len, &kp->cap_seq, kp->nseq + 1, sizeof(int32_t));
                if (n > INT32_MAX) { b->err_doc = (long long)d; b->err_at = (size_t)-2; return; }
                kp->seq_len[kp->nseq++] = (int32_t)n;
                nseq++;
            }
            if (nseq > 0 && p->o->append_eod) {
                kp->ids[kp->nids++] = p->eod;   // room was grown above
                kp->seq_len[kp->nseq - 1]++;
            }
            kp->doc_nseq[d] = nseq;
        }
    }
}

static void *worker_main(void *arg) {
    Pool *p = arg;
    TokenizerState *st = tokenizer_state_new(p->tok);
    if (!st) fatal("out of memory creating a tokenizer state");
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->next_take == p->next_submit) pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->quit) break;
        Batch *b = &p->slots[p->next_take % p->nslots];
        p->next_take++;
        b->state = SLOT_BUSY;
        pthread_mutex_unlock(&p->mu);
        tokenize_batch(p, st, b);
        pthread_mutex_lock(&p->mu);
        b->state = SLOT_DONE;
        pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    tokenizer_state_free(st);
    return NULL;
}

static void batch_free(Batch *b) {
    free(b->text.data); free(b->doc_line); free(b->doc_file);
    for (int k = 0; k < MAX_KEYS; k++) {
        KeyPart *kp = &b->key[k];
        free(kp->seg_off); free(kp->seg_len); free(kp->doc_nseg); free(kp->ids); free(kp->seq_len); free(kp->doc_nseq);
    }
}

static void batch_reset(Batch *b, int nkeys) {
    b->text.len = 0;
    b->ndocs = 0;
    for (int k = 0; k < nkeys; k++) { b->key[k].nseg = 0; b->key[k].nids = 0; b->key[k].nseq = 0; }
}

// ----------------------------------------------------------------------------------------------
// 6. the writer

typedef struct {
    char final_bin[4200], final_idx[4200], final_json[4200];
    char tmp_bin[4200], tmp_idx[4200], tmp_json[4200], tmp_lens[4200], tmp_docs[4200];
    FILE *bin, *lens, *docs;
    int itemsize;                       // 2 (uint16) or 4 (int32)
    long long nseq, ndocs, ntokens, nempty;
    void *conv; size_t cap_conv;
} Builder;

static void add_temp(char *path) { g_temps[g_ntemps++] = path; }

static FILE *open_temp(char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) fatal("%s: cannot create: %s", path, strerror(errno));
    add_temp(path);
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    return f;
}

static void builder_open(Builder *bd, const char *prefix, const char *key, int itemsize) {
    memset(bd, 0, sizeof *bd);
    bd->itemsize = itemsize;
    char base[4096];
    if ((size_t)snprintf(base, sizeof base, "%s_%s_document", prefix, key) >= sizeof base) fatal("output prefix too long");
    snprintf(bd->final_bin, sizeof bd->final_bin, "%s.bin", base);
    snprintf(bd->final_idx, sizeof bd->final_idx, "%s.idx", base);
    snprintf(bd->final_json, sizeof bd->final_json, "%s.json", base);
    snprintf(bd->tmp_bin, sizeof bd->tmp_bin, "%s.bin.tmp", base);
    snprintf(bd->tmp_idx, sizeof bd->tmp_idx, "%s.idx.tmp", base);
    snprintf(bd->tmp_json, sizeof bd->tmp_json, "%s.json.tmp", base);
    snprintf(bd->tmp_lens, sizeof bd->tmp_lens, "%s.lens.tmp", base);
    snprintf(bd->tmp_docs, sizeof bd->tmp_docs, "%s.docs.tmp", base);
    bd->bin = open_temp(bd->tmp_bin);
    bd->lens = open_temp(bd->tmp_lens);
    bd->docs = open_temp(bd->tmp_docs);
}

static void xfwrite(const void *p, size_t size, size_t n, FILE *f, const char *path) {
    if (n && fwrite(p, size, n, f) != n) fatal("%s: write error: %s", path, strerror(errno));
}

static void builder_add(Builder *bd, const KeyPart *kp, size_t ndocs) {
    if (bd->itemsize == 2) {
        grow(&bd->conv, &bd->cap_conv, kp->nids, 2);
        uint16_t *u = bd->conv;
        for (size_t i = 0; i < kp->nids; i++) u[i] = (uint16_t)kp->ids[i];
        xfwrite(u, 2, kp->nids, bd->bin, bd->tmp_bin);
    } else xfwrite(kp->ids, 4, kp->nids, bd->bin, bd->tmp_bin);
    xfwrite(kp->seq_len, 4, kp->nseq, bd->lens, bd->tmp_lens);
    // document boundaries: the running sequence count after each non-empty document
    int64_t s = bd->nseq;
    for (size_t d = 0; d < ndocs; d++) {
        if (kp->doc_nseq[d] == 0) { bd->nempty++; continue; }
        s += kp->doc_nseq[d];
        xfwrite(&s, 8, 1, bd->docs, bd->tmp_docs);
        bd->ndocs++;
    }
    bd->nseq = s;
    bd->ntokens += (long long)kp->nids;
}

// One sequence that is a whole document.
static void builder_add_seq(Builder *bd, const int32_t *ids, size_t n) {
    if (bd->itemsize == 2) {
        grow(&bd->conv, &bd->cap_conv, n, 2);
        uint16_t *u = bd->conv;
        for (size_t i = 0; i < n; i++) u[i] = (uint16_t)ids[i];
        xfwrite(u, 2, n, bd->bin, bd->tmp_bin);
    } else xfwrite(ids, 4, n, bd->bin, bd->tmp_bin);
    int32_t len = (int32_t)n;
    xfwrite(&len, 4, 1, bd->lens, bd->tmp_lens);
    int64_t s = ++bd->nseq;
    xfwrite(&s, 8, 1, bd->docs, bd->tmp_docs);
    bd->ndocs++;
    bd->ntokens += (long long)n;
}

// --pack: the tokens of all documents in order, cut into sequences of exactly T; `carry` holds the
// tokens not yet written (fewer than T between batches).
typedef struct { Builder bd; int32_t *carry; size_t n, cap; } Packer;

static void packer_add(Packer *pk, const KeyPart *kp, size_t T) {
    grow((void **)&pk->carry, &pk->cap, pk->n + kp->nids, 4);
    memcpy(pk->carry + pk->n, kp->ids, kp->nids * 4);
    pk->n += kp->nids;
    size_t at = 0;
    for (; pk->n - at >= T; at += T) builder_add_seq(&pk->bd, pk->carry + at, T);
    memmove(pk->carry, pk->carry + at, (pk->n - at) * 4);
    pk->n -= at;
}

static void write_u64(FILE *f, uint64_t v, const char *path) { xfwrite(&v, 8, 1, f, path); }

// The .idx: header, int32 lengths, int64 byte pointers, int64 document indices (docs/formats.md sec. 1.2).
static void builder_finish(Builder *bd) {
    if (fclose(bd->bin)) fatal("%s: write error: %s", bd->tmp_bin, strerror(errno));
    if (fclose(bd->lens) || fclose(bd->docs)) fatal("%s: write error: %s", bd->tmp_lens, strerror(errno));
    bd->bin = bd->lens = bd->docs = NULL;
    FILE *idx = open_temp(bd->tmp_idx);
    xfwrite("MMIDIDX\0\0", 1, 9, idx, bd->tmp_idx);
    write_u64(idx, 1, bd->tmp_idx);
    uint8_t code = bd->itemsize == 2 ? 8 : 4;
    xfwrite(&code, 1, 1, idx, bd->tmp_idx);
    write_u64(idx, (uint64_t)bd->nseq, bd->tmp_idx);
    write_u64(idx, (uint64_t)bd->ndocs + 1, bd->tmp_idx);
    enum { CHUNK = 1 << 16 };
    int32_t *lens = xmalloc(CHUNK * sizeof(int32_t));
    int64_t *ptrs = xmalloc(CHUNK * sizeof(int64_t));
    for (int pass = 0; pass < 2; pass++) {
        FILE *lf = fopen(bd->tmp_lens, "rb");
        if (!lf) fatal("%s: cannot reopen: %s", bd->tmp_lens, strerror(errno));
        int64_t ptr = 0;
        size_t n;
        while ((n = fread(lens, 4, CHUNK, lf)) > 0) {
            if (pass == 0) xfwrite(lens, 4, n, idx, bd->tmp_idx);
            else {
                for (size_t i = 0; i < n; i++) { ptrs[i] = ptr; ptr += (int64_t)lens[i] * bd->itemsize; }
                xfwrite(ptrs, 8, n, idx, bd->tmp_idx);
            }
        }
        fclose(lf);
    }
    write_u64(idx, 0, bd->tmp_idx);
    FILE *df = fopen(bd->tmp_docs, "rb");
    if (!df) fatal("%s: cannot reopen: %s", bd->tmp_docs, strerror(errno));
    size_t n;
    while ((n = fread(ptrs, 8, CHUNK, df)) > 0) xfwrite(ptrs, 8, n, idx, bd->tmp_idx);
    fclose(df);
    free(lens); free(ptrs);
    if (fclose(idx)) fatal("%s: write error: %s", bd->tmp_idx, strerror(errno));
    unlink(bd->tmp_lens);
    unlink(bd->tmp_docs);
}

// ----------------------------------------------------------------------------------------------
// 7. sha256 (FIPS 180-4), the metadata sidecar, main

typedef struct { uint32_t h[8]; uint8_t block[64]; size_t nblock; uint64_t total; } Sha256;

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(Sha256 *s, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) + SHA_K[i] + w[i];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}
static void sha256_init(Sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0); s->nblock = 0; s->total = 0;
}
static void sha256_update(Sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->total += n;
    while (n > 0) {
        size_t k = 64 - s->nblock < n ? 64 - s->nblock : n;
        memcpy(s->block + s->nblock, p, k);
        s->nblock += k; p += k; n -= k;
        if (s->nblock == 64) { sha256_block(s, s->block); s->nblock = 0; }
    }
}
static void sha256_hex(Sha256 *s, char out[65]) {
    uint64_t bits = s->total * 8;
    uint8_t pad = 0x80, zero = 0;
    sha256_update(s, &pad, 1);
    while (s->nblock != 56) sha256_update(s, &zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}
static void sha256_file(const char *path, char out[65]) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open: %s", path, strerror(errno));
    Sha256 s; sha256_init(&s);
    char buf[1 << 16]; size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) sha256_update(&s, buf, n);
    fclose(f);
    sha256_hex(&s, out);
}

static void write_metadata(Builder *bd, const Options *o, const Reader *r, const Tokenizer *tok, int key,
                           const char *tok_sha, int argc, char **argv) {
    json_t *inputs = json_array();
    for (int i = 0; i < r->nfiles; i++) {
        struct stat st;
        json_int_t size = stat(r->files[i], &st) == 0 ? (json_int_t)st.st_size : -1;
        json_array_append_new(inputs, json_pack("{s:s, s:s, s:I, s:I, s:I}", "path", r->files[i], "format", fmt_name(r->formats[i]),
            "bytes", size, "documents_read", (json_int_t)r->file_docs[i], "bad_documents_skipped", (json_int_t)r->file_skipped[i]));
    }
    Bytes cmd = {0};
    for (int i = 0; i < argc; i++) { if (i) bytes_append(&cmd, " ", 1); bytes_append(&cmd, argv[i], strlen(argv[i])); }
    int bos = o->no_bos ? -1 : tokenizer_bos_id(tok);
    json_t *meta = json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:i, s:i, s:i, s:b, s:b}, s:s, s:i, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:o, s:s}",
        "format", "MMIDIDX", "prefix", bd->final_bin, "key", o->keys[key],
        "tokenizer", "path", o->tokenizer, "sha256", tok_sha, "vocab_size", tokenizer_vocab_size(tok),
        "eod_id", tokenizer_eos_id(tok), "bos_id", bos, "add_special_tokens", !o->no_bos, "special_tokens_as_text", o->special_as_text,
        "dtype", bd->itemsize == 2 ? "uint16" : "int32", "dtype_code", bd->itemsize == 2 ? 8 : 4,
        "append_eod", o->append_eod,
        "txt_mode", o->txt_mode == TXT_FILE ? "file" : o->txt_mode == TXT_LINE ? "line" : "paragraph",
        "documents", (json_int_t)bd->ndocs, "sequences", (json_int_t)bd->nseq, "tokens", (json_int_t)bd->ntokens,
        "empty_documents_skipped", (json_int_t)bd->nempty, "bad_documents_skipped", (json_int_t)r->errors_skipped,
        "inputs", inputs, "command", cmd.data ? cmd.data : "");
    free(cmd.data);
    // the prefix field holds the dataset prefix, without .bin
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "%s", bd->final_bin);
    prefix[strlen(prefix) - 4] = 0;
    json_object_set_new(meta, "prefix", json_string(prefix));
    FILE *f = open_temp(bd->tmp_json);
    if (!meta || json_dumpf(meta, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 || fputc('\n', f) == EOF || fclose(f))
        fatal("%s: write error", bd->tmp_json);
    json_decref(meta);
}

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
// CPU time of the whole process (all threads): on a shared machine, the measure of its own work.
static double cpu_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void human_count(double v, char *out, size_t n) {
    if (v >= 1e9) snprintf(out, n, "%.2fG", v / 1e9);
    else if (v >= 1e6) snprintf(out, n, "%.2fM", v / 1e6);
    else if (v >= 1e4) snprintf(out, n, "%.1fK", v / 1e3);
    else snprintf(out, n, "%.0f", v);
}

int main(int argc, char **argv) {
    Options o;
    parse_args(argc, argv, &o);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    double t0 = now_sec();

    char err[1024];
    Tokenizer *tok = tokenizer_load(o.tokenizer, err, sizeof err);
    if (!tok) fatal("%s", err);
    if (o.eod_token && tokenizer_set_eos(tok, o.eod_token) < 0)
        fatal("%s: --eod-token \"%s\" is not a token of this tokenizer", o.tokenizer, o.eod_token);
    if (o.append_eod && tokenizer_eos_id(tok) < 0)
        fatal("%s: no end-of-document token found; name one with --eod-token", o.tokenizer);
    char tok_sha[65];
    sha256_file(o.tokenizer, tok_sha);
    double t_load = now_sec() - t0;
    t0 = now_sec();   // throughput is measured from here: reading, tokenizing and writing
    double cpu0 = cpu_sec();
    int vocab = tokenizer_vocab_size(tok);
    int itemsize = vocab < 65500 ? 2 : 4;   // Megatron's DType.optimal_dtype

    Reader r;
    reader_init(&r, &o);

    Builder bd[MAX_KEYS];
    for (int k = 0; k < o.nkeys; k++) builder_open(&bd[k], o.prefix, o.keys[k], itemsize);
    Packer pk[MAX_KEYS];
    memset(pk, 0, sizeof pk);
    char packed_prefix[4200];
    snprintf(packed_prefix, sizeof packed_prefix, "%s_packed", o.prefix);
    for (int k = 0; o.pack && k < o.nkeys; k++) builder_open(&pk[k].bd, packed_prefix, o.keys[k], itemsize);

    Pool p;
    memset(&p, 0, sizeof p);
    p.o = &o; p.tok = tok;
    // every reader checks its text's UTF-8 (to name the file and place of an error): the tokenizer need not
    p.flags = (o.no_bos ? 0 : TOK_ADD_SPECIAL) | (o.special_as_text ? TOK_SPECIAL_AS_TEXT : 0) | TOK_VALID_UTF8;
    p.eod = tokenizer_eos_id(tok);
    p.nslots = 2 * o.workers + 2;
    p.slots = calloc((size_t)p.nslots, sizeof(Batch));
    if (!p.slots) fatal("out of memory");
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.work_cv, NULL);
    pthread_cond_init(&p.done_cv, NULL);
    pthread_t *threads = xmalloc(sizeof(pthread_t) * (size_t)o.workers);
    for (int i = 0; i < o.workers; i++)
        if (pthread_create(&threads[i], NULL, worker_main, &p)) fatal("cannot start worker thread %d", i);

    int tty = isatty(2);
    double last_log = t0;
    // the input size, for an ETA (unknown when an input is compressed: progress counts decompressed bytes)
    double total_bytes = 0;
    for (int i = 0; i < r.nfiles && total_bytes >= 0; i++) {
        struct stat st;
        if (has_suffix(r.files[i], ".gz") || has_suffix(r.files[i], ".zst") || stat(r.files[i], &st) != 0) total_bytes = -1;
        else total_bytes += (double)st.st_size;
    }
    int input_done = 0;
    long long docs_limit = o.max_docs > 0 ? o.max_docs : -1;
    pthread_mutex_lock(&p.mu);
    for (;;) {
        // write finished batches in order
        while (p.next_write < p.next_submit && p.slots[p.next_write % p.nslots].state == SLOT_DONE) {
            Batch *b = &p.slots[p.next_write % p.nslots];
            pthread_mutex_unlock(&p.mu);
            if (b->err_doc >= 0) {
                size_t d = (size_t)b->err_doc;
                fatal("%s:%ld: tokenizer failed on this document (%s)", r.files[b->doc_file[d]], b->doc_line[d],
                      b->err_at == (size_t)-2 ? "more than 2^31 tokens" : "out of memory or a regex limit");
            }
            for (int k = 0; k < o.nkeys; k++) builder_add(&bd[k], &b->key[k], b->ndocs);
            for (int k = 0; o.pack && k < o.nkeys; k++) packer_add(&pk[k], &b->key[k], (size_t)o.seq_len);
            pthread_mutex_lock(&p.mu);
            b->state = SLOT_FREE;
            p.next_write++;
        }
        if (input_done && p.next_write == p.next_submit) break;
        if (!input_done && p.next_submit - p.next_write < p.nslots) {
            Batch *b = &p.slots[p.next_submit % p.nslots];
            pthread_mutex_unlock(&p.mu);
            batch_reset(b, o.nkeys);
            while (b->text.len < BATCH_BYTES && b->ndocs < BATCH_DOCS) {
                if (g_interrupted) fatal("interrupted; no output written");
                if (docs_limit >= 0 && r.docs_read >= docs_limit) { input_done = 1; break; }
                if (!reader_next(&r, b)) { input_done = 1; break; }
            }
            double t = now_sec();
            if (t - last_log >= (tty ? 0.5 : o.log_interval)) {
                uint64_t bytes = r.bytes_done + r.src.bytes;
                char dd[32], tt[32];
                human_count((double)r.docs_read, dd, sizeof dd);
                human_count((double)bd[0].ntokens, tt, sizeof tt);
                double rate = bytes / (t - t0);
                char eta[48] = "";
                if (total_bytes > 0 && rate > 0 && bytes <= total_bytes)
                    snprintf(eta, sizeof eta, ", %.0f%%, ETA %.0f s", 100.0 * bytes / total_bytes, (total_bytes - bytes) / rate);
                fprintf(stderr, "%sprepro: %.1f MB read, %s documents, %s tokens, %.1f MB/s%s%s", tty ? "\r" : "",
                        bytes / 1e6, dd, tt, rate / 1e6, eta, tty ? "   " : "\n");
                g_progress_open = tty;
                last_log = t;
            }
            pthread_mutex_lock(&p.mu);
            if (b->ndocs > 0) {
                b->state = SLOT_READY;
                p.next_submit++;
                pthread_cond_signal(&p.work_cv);
            }
            continue;
        }
        pthread_cond_wait(&p.done_cv, &p.mu);
    }
    p.quit = 1;
    pthread_cond_broadcast(&p.work_cv);
    pthread_mutex_unlock(&p.mu);
    for (int i = 0; i < o.workers; i++) pthread_join(threads[i], NULL);
    if (g_interrupted) fatal("interrupted; no output written");
    // a dataset of no documents trains nothing: an error, unless asked for
    for (int k = 0; k < o.nkeys && !o.allow_empty; k++) {
        if (bd[k].ndocs > 0) continue;
        char key[300] = "";
        if (o.nkeys > 1) snprintf(key, sizeof key, " for key \"%s\"", o.keys[k]);
        fatal("%s%s: no documents%s (%lld empty, %lld bad skipped); --allow-empty writes an empty dataset",
              r.files[0], r.nfiles > 1 ? " and the other inputs" : "", key, bd[k].nempty, r.errors_skipped);
    }

    for (int k = 0; k < o.nkeys; k++) {
        builder_finish(&bd[k]);
        write_metadata(&bd[k], &o, &r, tok, k, tok_sha, argc, argv);
        if (!o.pack) continue;
        builder_finish(&pk[k].bd);
        write_metadata(&pk[k].bd, &o, &r, tok, k, tok_sha, argc, argv);
    }
    // everything is complete: move the files into place
    for (int k = 0; k < o.nkeys * (o.pack ? 2 : 1); k++) {
        Builder *b = k < o.nkeys ? &bd[k] : &pk[k - o.nkeys].bd;
        if (rename(b->tmp_bin, b->final_bin) || rename(b->tmp_idx, b->final_idx) || rename(b->tmp_json, b->final_json))
            fatal("%s: cannot rename the finished output into place: %s", b->final_bin, strerror(errno));
    }
    g_ntemps = 0;
    for (int k = 0; o.pack && k < o.nkeys; k++)
        fprintf(stderr, "prepro: --pack: %lld sequences of %ld tokens -> %s; the last %zu tokens (less than --seq-len) were dropped\n",
                pk[k].bd.nseq, o.seq_len, pk[k].bd.final_bin, pk[k].n);

    double secs = now_sec() - t0;
    uint64_t bytes = r.bytes_done + r.src.bytes;
    long long tokens = 0, empty = 0;
    for (int k = 0; k < o.nkeys; k++) { tokens += bd[k].ntokens; empty += bd[k].nempty; }
    if (g_progress_open) fputc('\n', stderr);
    fprintf(stderr, "prepro: done: %lld documents, %lld tokens (%s), %lld empty skipped, %lld bad skipped, "
            "%.2f MB in %.2f s (%.1f MB/s, %d workers, %.3f CPU s; tokenizer load %.2f s) -> %s_%s_document.{bin,idx}%s\n",
            bd[0].ndocs, tokens, itemsize == 2 ? "uint16" : "int32", empty, r.errors_skipped,
            bytes / 1e6, secs, bytes / 1e6 / (secs > 0 ? secs : 1e-9), o.workers, cpu_sec() - cpu0, t_load, o.prefix, o.keys[0],
            o.nkeys > 1 ? " (and the other keys)" : "");
    for (int i = 0; i < p.nslots; i++) batch_free(&p.slots[i]);
    free(p.slots); free(threads);
    for (int k = 0; k < o.nkeys; k++) {
        free(bd[k].conv);
        free(pk[k].bd.conv); free(pk[k].carry);
    }
    reader_free(&r);
    free(g_fields.buf.data); free(g_fields.off); free(g_fields.len);
    tokenizer_free(tok);
    return 0;
}
