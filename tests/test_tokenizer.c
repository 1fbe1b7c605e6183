// Tokenizer vs fixtures from HF tokenizers (dev/gen_tokenizer_fixtures.py): encode ids, decode text,
// whole-corpus hashes, thread safety, load errors. Run from the repository root.
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "prepro/tokenizer.h"

#include "test_util.h"

static char *unhex(const char *h, size_t *n) {
    size_t len = strlen(h) / 2;
    char *s = malloc(len + 1);
    for (size_t i = 0; i < len; i++) { unsigned v; sscanf(h + 2 * i, "%2x", &v); s[i] = (char)v; }
    s[len] = 0;
    *n = len;
    return s;
}

static int32_t *parse_ids(const char *s, size_t *n) {
    size_t cap = 16; int32_t *v = malloc(cap * sizeof *v);
    *n = 0;
    while (*s) {
        char *end; long x = strtol(s, &end, 10);
        if (end == s) break;
        if (*n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[(*n)++] = (int32_t)x;
        s = end;
    }
    return v;
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static void check_ids(const char *file, const char *name, const char *what, const int32_t *got, size_t ngot,
                      const int32_t *want, size_t nwant) {
    checks++;
    if (got && ngot == nwant && memcmp(got, want, nwant * sizeof *want) == 0) return;
    failf("%s: case %s: %s differ", file, name, what);
    size_t i = 0;
    while (got && i < ngot && i < nwant && got[i] == want[i]) i++;
    fprintf(stderr, "    first difference at index %zu\n", i);
    print_ids("want", want, nwant);
    if (got) print_ids("got ", got, ngot); else fprintf(stderr, "    got NULL\n");
}

static void check_decode(const Tokenizer *tok, const char *file, const char *name, const int32_t *ids, size_t n,
                         const char *want, size_t wantn) {
    checks++;
    size_t gotn = 0;
    char *got = tokenizer_decode_len(tok, ids, n, &gotn);
    if (!got || gotn != wantn || memcmp(got, want, wantn)) {
        failf("%s: case %s: decode differs", file, name);
        fprintf(stderr, "    want (%zu bytes): %.*s\n    got  (%zu bytes): %.*s\n", wantn, (int)wantn, want, gotn, (int)gotn, got ? got : "");
    }
    free(got);
}

static uint64_t fnv1a64(const int32_t *ids, size_t n, uint64_t h) {
    const unsigned char *b = (const unsigned char *)ids;   // little-endian hosts only (x86, arm64)
    for (size_t i = 0; i < n * 4; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

// Splits a corpus into documents as the generator does.
static char **load_docs(const char *path, const char *fmt, int maxdocs, int *ndocs) {
    size_t n;
    char *text = read_file(path, &n);
    if (!text) return NULL;
    char **docs = malloc(sizeof(char *) * (size_t)(maxdocs > 0 ? maxdocs : 1));
    int nd = 0;
    if (!strcmp(fmt, "jsonl")) {
        char *line = text;
        while (line && *line && nd < maxdocs) {
            char *nl = strchr(line, '\n');
            size_t len = nl ? (size_t)(nl - line) : strlen(line);
            json_error_t e;
            json_t *j = json_loadb(line, len, JSON_ALLOW_NUL, &e);
            json_t *t = json_object_get(j, "text");
            if (t) {
                size_t tl = json_string_length(t);
                docs[nd] = malloc(tl + 1);
                memcpy(docs[nd], json_string_value(t), tl + 1);
                nd++;
            }
            json_decref(j);
            line = nl ? nl + 1 : NULL;
        }
    } else {
        const char *sep = !strcmp(fmt, "lines") ? "\n" : "\n\n";
        size_t seplen = strlen(sep);
        char *p = text;
        while (nd < maxdocs) {
            char *q = strstr(p, sep);
            size_t len = q ? (size_t)(q - p) : strlen(p);
            if (len > 0) { docs[nd] = strndup(p, len); nd++; }
            if (!q) break;
            p = q + seplen;
        }
    }
    free(text);
    *ndocs = nd;
    return docs;
}

typedef struct {
    const Tokenizer *tok;
    char **docs; int first, count;
    size_t nids; uint64_t hash; int error;
} Job;

static void *run_job(void *arg) {
    Job *j = arg;
    TokenizerState *st = tokenizer_state_new(j->tok);
    j->hash = 0xCBF29CE484222325ull; j->nids = 0; j->error = 0;
    for (int d = j->first; d < j->first + j->count; d++) {
        size_t n;
        const int32_t *ids = tokenizer_encode(j->tok, st, j->docs[d], strlen(j->docs[d]), 0, &n);
        if (!ids) { j->error = 1; break; }
        j->hash = fnv1a64(ids, n, j->hash);
        j->nids += n;
    }
    tokenizer_state_free(st);
    return NULL;
}

// Every group of a bulk corpus: first on this thread, then again on two threads at once.
static void check_bulk(const Tokenizer *tok, const char *file, char *spec, FILE *f) {
    char name[128], path[512], fmt[32]; int maxdocs;
    if (sscanf(spec, "%127s %511s %31s %d", name, path, fmt, &maxdocs) != 4) { failf("%s: bad bulk line", file); return; }
    int ndocs = 0;
    char **docs = access(path, R_OK) == 0 ? load_docs(path, fmt, maxdocs, &ndocs) : NULL;
    if (!docs) printf("  skip bulk %s: %s absent\n", name, path);
    // read the group lines that follow
    Job jobs[4096]; int nj = 0;
    uint64_t want_hash[4096]; size_t want_n[4096];
    long pos = ftell(f);
    char line[256];
    while (fgets(line, sizeof line, f)) {
        int first, count; size_t nids; unsigned long long h;
        if (sscanf(line, "group %d %d %zu %llx", &first, &count, &nids, &h) != 4) { fseek(f, pos, SEEK_SET); break; }
        pos = ftell(f);
        if (!docs || nj == 4096) continue;
        jobs[nj] = (Job){tok, docs, first, count, 0, 0, 0};
        want_hash[nj] = h; want_n[nj] = nids;
        nj++;
    }
    if (!docs) return;
    size_t total = 0;
    for (int i = 0; i < nj; i++) {
        if (jobs[i].first + jobs[i].count > ndocs) { failf("%s: bulk %s: corpus has %d documents, fixture wants more", file, name, ndocs); break; }
        run_job(&jobs[i]);
        checks++;
        total += jobs[i].nids;
        if (jobs[i].error || jobs[i].nids != want_n[i] || jobs[i].hash != want_hash[i]) {
            failf("%s: bulk %s: documents %d..%d: %zu ids (hash %016llx), want %zu (hash %016llx)", file, name,
                  jobs[i].first, jobs[i].first + jobs[i].count - 1, jobs[i].nids, (unsigned long long)jobs[i].hash,
                  want_n[i], (unsigned long long)want_hash[i]);
            // show the first differing document's text to make the failure easy to reproduce
            break;
        }
    }
    // two threads, each with its own state, over the same groups: same results
    pthread_t th[2]; Job tj[2];
    for (int k = 0; k < 2 && nj > 0; k++) {
        tj[k] = (Job){tok, docs, 0, 0, 0, 0, 0};
        tj[k].count = jobs[nj - 1].first + jobs[nj - 1].count;
        pthread_create(&th[k], NULL, run_job, &tj[k]);
    }
    for (int k = 0; k < 2 && nj > 0; k++) pthread_join(th[k], NULL);
    if (nj > 0) {
        checks++;
        if (tj[0].hash != tj[1].hash || tj[0].nids != tj[1].nids || tj[0].nids != total)
            failf("%s: bulk %s: two threads disagree (%zu vs %zu ids)", file, name, tj[0].nids, tj[1].nids);
    }
    printf("  bulk %s: %d documents, %zu ids\n", name, ndocs, total);
    for (int i = 0; i < ndocs; i++) free(docs[i]);
    free(docs);
}

// Applies a fixture's JSON patch to a tokenizer.json and writes the result to a temp file:
// each key replaces the top-level key, a key ending in "+" appends to that array.
static int patch_tokenizer(const char *path, const char *patch_json, char *out, size_t outlen) {
    json_error_t e;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &e), *patch = json_loads(patch_json, 0, &e);
    if (!root || !patch) { json_decref(root); json_decref(patch); return -1; }
    const char *key; json_t *v;
    json_object_foreach(patch, key, v) {
        size_t n = strlen(key);
        if (n > 0 && key[n - 1] == '+') {
            char base[256]; snprintf(base, sizeof base, "%.*s", (int)(n - 1), key);
            json_t *arr = json_object_get(root, base);
            if (!json_is_array(arr)) { arr = json_array(); json_object_set_new(root, base, arr); }
            json_array_extend(arr, v);
        } else json_object_set(root, key, v);
    }
    snprintf(out, outlen, "/tmp/test_tokenizer_patched_XXXXXX");
    int fd = mkstemp(out);
    if (fd < 0) { json_decref(root); json_decref(patch); return -1; }
    close(fd);
    int rc = json_dump_file(root, out, 0);
    json_decref(root); json_decref(patch);
    return rc;
}

static void run_fixture(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) { failf("cannot open %s", file); return; }
    static char line[1 << 20];
    char tokpath[512] = "", name[256] = "", patched[64] = "";
    char *patch = NULL; size_t patchn = 0;
    int optional = 0, is_decode_case = 0;
    Tokenizer *tok = NULL;
    TokenizerState *st = NULL;
    char *text = NULL; size_t textn = 0;
    int32_t *want[3] = {0}; size_t wantn[3] = {0};
    int have[3] = {0}, have_dec = 0;
    char *dec = NULL; size_t decn = 0;
    int ncases = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *arg = strchr(line, ' ');
        arg = arg ? arg + 1 : line + strlen(line);
        if (line[0] == '#' || line[0] == 0) continue;
        if (!strncmp(line, "tokenizer ", 10)) { snprintf(tokpath, sizeof tokpath, "%s", arg); continue; }
        if (!strncmp(line, "patch ", 6)) { free(patch); patch = unhex(arg, &patchn); continue; }
        if (!strncmp(line, "optional ", 9)) {
            optional = atoi(arg);
            if (access(tokpath, R_OK) != 0) {
                if (optional) printf("skip %s: %s absent\n", file, tokpath);
                else failf("%s: tokenizer %s absent", file, tokpath);
                break;
            }
            char err[1024];
            if (patch && patch_tokenizer(tokpath, patch, patched, sizeof patched)) { failf("%s: cannot patch %s", file, tokpath); break; }
            tok = tokenizer_load(patch ? patched : tokpath, err, sizeof err);
            if (patch) unlink(patched);
            if (!tok) { failf("%s: %s", file, err); break; }
            st = tokenizer_state_new(tok);
            printf("%s: %s\n", tokpath, tokenizer_describe(tok));
            continue;
        }
        if (!tok) { failf("%s: no tokenizer line before cases", file); break; }
        if (!strncmp(line, "case ", 5) || !strncmp(line, "decode_case ", 12)) {
            snprintf(name, sizeof name, "%s", arg);
            is_decode_case = line[0] == 'd';
            memset(have, 0, sizeof have);
            have_dec = 0;
            continue;
        }
        if (!strncmp(line, "text ", 5) || !strcmp(line, "text")) { free(text); text = unhex(arg, &textn); continue; }
        if (!strncmp(line, "ids_special", 11)) { free(want[1]); want[1] = parse_ids(arg, &wantn[1]); have[1] = 1; continue; }
        if (!strncmp(line, "ids_plain", 9)) { free(want[2]); want[2] = parse_ids(arg, &wantn[2]); have[2] = 1; continue; }
        if (!strncmp(line, "ids", 3)) { free(want[0]); want[0] = parse_ids(arg, &wantn[0]); have[0] = 1; continue; }
        if (!strncmp(line, "decode ", 7) || !strcmp(line, "decode")) { free(dec); dec = unhex(arg, &decn); have_dec = 1; continue; }
        if (!strcmp(line, "end")) {
            ncases++;
            if (!is_decode_case) {
                static const int flags[3] = {0, TOK_ADD_SPECIAL, TOK_SPECIAL_AS_TEXT};
                static const char *what[3] = {"ids", "ids (add special tokens)", "ids (special tokens as text)"};
                // a missing ids_special / ids_plain line means: the same as ids
                for (int k = 0; k < 3; k++) {
                    size_t n;
                    const int32_t *got = tokenizer_encode(tok, st, text, textn, flags[k], &n);
                    int w = have[k] ? k : 0;
                    check_ids(file, name, what[k], got, got ? n : 0, want[w], wantn[w]);
                }
            }
            // a missing decode line means: decoding gives the text back
            if (have_dec) check_decode(tok, file, name, want[0], wantn[0], dec, decn);
            else check_decode(tok, file, name, want[0], wantn[0], text, textn);
            continue;
        }
        if (!strncmp(line, "bulk ", 5)) { check_bulk(tok, file, arg, f); continue; }
        failf("%s: unknown line: %.60s", file, line);
    }
    if (tok) printf("  %d cases\n", ncases);
    free(patch); free(text); free(dec);
    for (int k = 0; k < 3; k++) free(want[k]);
    tokenizer_state_free(st);
    tokenizer_free(tok);
    fclose(f);
}

// The ids train.c and prepro rely on.
static void check_special_ids(const char *path, int vocab, int eos, int bos) {
    if (access(path, R_OK) != 0) { printf("skip special ids: %s absent\n", path); return; }
    char err[1024];
    Tokenizer *tok = tokenizer_load(path, err, sizeof err);
    checks++;
    if (!tok) { failf("%s", err); return; }
    if (tokenizer_vocab_size(tok) != vocab || tokenizer_eos_id(tok) != eos || tokenizer_bos_id(tok) != bos)
        failf("%s: vocab %d eos %d bos %d, want %d %d %d", path, tokenizer_vocab_size(tok), tokenizer_eos_id(tok),
              tokenizer_bos_id(tok), vocab, eos, bos);
    tokenizer_free(tok);
}

// ignore_merges (Llama-3): a pre-token that is a token of the vocabulary is that one token, whatever BPE of
// its bytes would give (HF BPE::tokenize_with_cache). Every vocabulary token whose text is one pre-token
// must encode to its own id; BPE alone gives other ids for some of them, so the check can fail.
static void check_ignore_merges(const char *path) {
    if (access(path, R_OK) != 0) { printf("skip ignore_merges: %s absent\n", path); return; }
    char err[1024];
    Tokenizer *tok = tokenizer_load(path, err, sizeof err);
    if (!tok) { checks++; failf("%s", err); return; }
    TokenizerState *st = tokenizer_state_new(tok);
    int n = tokenizer_vocab_size(tok), tested = 0, bad = 0, first_bad = -1;
    for (int id = 0; id < n; id++) {
        const char *name = tokenizer_id_to_token(tok, id);
        if (!name || tokenizer_token_id(tok, name) != id) continue;
        size_t len;
        char *text = tokenizer_decode_len(tok, &id, 1, &len);
        if (!text) continue;
        size_t npieces, nids;
        const int32_t *pieces = tokenizer_pretokenize(tok, st, text, len, &npieces);
        // whole pre-tokens only (not added tokens; valid UTF-8, so no U+FFFD stands in for a partial character)
        if (pieces && npieces == 1 && (size_t)pieces[0] == len && !strstr(text, "\xEF\xBF\xBD")) {
            const int32_t *ids = tokenizer_encode(tok, st, text, len, TOK_SPECIAL_AS_TEXT, &nids);
            tested++;
            if (!ids || nids != 1 || ids[0] != id) { bad++; if (first_bad < 0) first_bad = id; }
        }
        free(text);
    }
    checks++;
    if (bad || tested < 1000) failf("%s: ignore_merges: %d of %d whole-token pre-tokens do not encode to their id (first %d)", path, bad, tested, first_bad);
    tokenizer_state_free(st);
    tokenizer_free(tok);
}

// Bad tokenizer files: each gives NULL and one line naming the file and the place.
static void check_load_error(const char *json, const char *want1, const char *want2) {
    char path[] = "/tmp/test_tokenizer_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, json, strlen(json)) != (ssize_t)strlen(json)) { failf("cannot write temp file"); return; }
    close(fd);
    char err[1024];
    Tokenizer *tok = tokenizer_load(path, err, sizeof err);
    checks++;
    if (tok) { failf("bad tokenizer loaded: %s", json); tokenizer_free(tok); }
    else if (!strstr(err, path) || !strstr(err, want1) || (want2 && !strstr(err, want2)) || strchr(err, '\n'))
        failf("load error \"%s\" should name the file and contain \"%s\"%s%s", err, want1, want2 ? " and " : "", want2 ? want2 : "");
    unlink(path);
}

static void check_load_errors(void) {
    char err[1024];
    checks++;
    if (tokenizer_load("/nonexistent/tokenizer.json", err, sizeof err) || !strstr(err, "/nonexistent/tokenizer.json"))
        failf("missing file: \"%s\"", err);
    check_load_error("{\"model\": {\"vocab\": {\"a\": 0,}}}", ":1:", NULL);   // syntax error: line:column
    check_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "model.type", "Unigram");
    check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}}", "model.merges[0]", "\"c\"");
    check_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}", "model.merges[0]", NULL);
    check_load_error("{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "pre_tokenizer", "Whitespace");
    check_load_error("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}, \"model\": {\"vocab\": {}, \"merges\": []}}", "pre_tokenizer", "regex");
    check_load_error("{\"model\": {\"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "model.vocab", NULL);
    check_load_error("[1, 2]", "top level", NULL);
    // post-processor special ids outside the vocabulary
    check_load_error("{\"post_processor\": {\"type\": \"RobertaProcessing\", \"cls\": [\"<s>\", 0], \"sep\": [\"</s>\", 128001]},"
                     " \"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": []}}", "post_processor.sep", "[0, 2)");
    check_load_error("{\"post_processor\": {\"type\": \"BertProcessing\", \"cls\": [\"[CLS]\", \"x\"], \"sep\": [\"[SEP]\", 1]},"
                     " \"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": []}}", "post_processor.cls", NULL);
}

// A tiny hand-written tokenizer: byte_fallback, unk fusing, Metaspace, template BOS.
static void check_tiny(void) {
    const char *json =
        "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
        "  {\"id\": 1, \"content\": \"<s>\", \"special\": true}, {\"id\": 2, \"content\": \"</s>\", \"special\": true}],"
        " \"normalizer\": null,"
        " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": false},"
        " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
        "   {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
        " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
        "   {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
        " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": true,"
        "   \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"<0xC3>\": 3, \"<0xA9>\": 4, \"\\u2581\": 5, \"a\": 6, \"b\": 7, \"\\u2581a\": 8, \"ab\": 9, \"\\u2581ab\": 10},"
        "   \"merges\": [[\"a\", \"b\"], \"\\u2581 ab\", \"\\u2581 a\"]}}";
    char path[] = "/tmp/test_tokenizer_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, json, strlen(json)) != (ssize_t)strlen(json)) { failf("cannot write temp file"); return; }
    close(fd);
    char err[1024];
    Tokenizer *tok = tokenizer_load(path, err, sizeof err);
    unlink(path);
    if (!tok) { failf("tiny tokenizer: %s", err); return; }
    TokenizerState *st = tokenizer_state_new(tok);
    // "ab é xyz": ▁ab ▁ <0xC3> <0xA9> ▁ <unk> (x, y, z fused)
    const char *text = "ab \xC3\xA9 xyz";
    size_t n;
    const int32_t *ids = tokenizer_encode(tok, st, text, strlen(text), TOK_ADD_SPECIAL, &n);
    int32_t want[] = {1, 10, 5, 3, 4, 5, 0};
    check_ids("tiny", "byte_fallback+unk", "ids", ids, ids ? n : 0, want, sizeof want / sizeof want[0]);
    char *d = tokenizer_decode(tok, want + 1, 5);
    checks++;
    if (!d || strcmp(d, "ab \xC3\xA9 ")) failf("tiny decode: got \"%s\"", d ? d : "(null)");
    free(d);
    // invalid UTF-8 is refused with its offset
    ids = tokenizer_encode(tok, st, "ab\xC3(", 4, 0, &n);
    checks++;
    if (ids || n != 2) failf("invalid UTF-8: want NULL and offset 2, got %p %zu", (const void *)ids, n);
    tokenizer_state_free(st);
    tokenizer_free(tok);
}

// Every code point in a few contexts through each family's pre-tokenizer and encoder, against
// tests/fixtures/tokenizer/unicode_sweep.txt (dev/gen_unicode_fixtures.py, HF tokenizers): the
// pre-token byte lengths of each code point and context, and a CRC-32 of the ids per 4096 code points.
#define SWEEP_FAM 4
#define SWEEP_CTX 16
// TEST_SHORT=1 (make test-sanitize, ~10x slower programs): the pre-tokens of every 61st code point only.
static void unicode_sweep(const char *path) {
    int stride = getenv("TEST_SHORT") ? 61 : 1;
    size_t size;
    char *text = read_file(path, &size);
    if (!text) { failf("%s: cannot read", path); return; }
    char *fam_name[SWEEP_FAM], *fam_path[SWEEP_FAM];
    int nfam = 0, nctx = 0, nsig = 0, nruns = 0;
    char ctx[SWEEP_CTX][32]; size_t ctx_len[SWEEP_CTX];
    size_t nlines = 1;
    for (size_t i = 0; i < size; i++) nlines += text[i] == '\n';
    int maxruns = (int)nlines * 12;   // at most 12 runs a line
    char **sig = calloc(nlines, sizeof(char *));
    int *run_len = calloc((size_t)maxruns + 1, sizeof(int)), *run_sig = calloc((size_t)maxruns + 1, sizeof(int));
    uint32_t *crc[SWEEP_FAM] = {0};
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "family ", 7) && nfam < SWEEP_FAM) {
            char *sp = strchr(line + 7, ' ');
            *sp = 0;
            fam_name[nfam] = line + 7; fam_path[nfam] = sp + 1;
            crc[nfam] = calloc(272, sizeof(uint32_t));
            nfam++;
        } else if (!strncmp(line, "context ", 8) && nctx < SWEEP_CTX) {
            size_t n; char *c = unhex(line + 8, &n);
            memcpy(ctx[nctx], c, n); ctx_len[nctx++] = n;
            free(c);
        } else if (!strncmp(line, "sig ", 4)) {
            int id = atoi(line + 4);
            if (id >= 0 && (size_t)id < nlines) { sig[id] = strchr(line + 4, ' ') + 1; if (id >= nsig) nsig = id + 1; }
        } else if (!strncmp(line, "runs ", 5)) {
            for (char *p = line + 5; *p && nruns < maxruns;) {
                char *end;
                run_len[nruns] = (int)strtol(p, &end, 10);
                run_sig[nruns++] = (int)strtol(end + 1, &end, 10);
                p = end;
            }
        } else if (!strncmp(line, "ids ", 4)) {
            char name[32]; int first, k;
            if (sscanf(line + 4, "%31s %d%n", name, &first, &k) != 2) continue;
            for (int f = 0; f < nfam; f++) {
                if (strcmp(name, fam_name[f])) continue;
                char *p = line + 4 + k;
                for (int b = first; b < 272 && *p; b++) { crc[f][b] = (uint32_t)strtoul(p, &p, 16); }
            }
        }
    }
    for (int f = 0; f < nfam; f++) {
        char err[1024];
        if (access(fam_path[f], R_OK) != 0) { printf("  unicode sweep: %s absent, skipped\n", fam_path[f]); continue; }
        Tokenizer *tok = tokenizer_load(fam_path[f], err, sizeof err);
        if (!tok) { failf("%s: %s", path, err); continue; }
        TokenizerState *st = tokenizer_state_new(tok);
        int run = 0, left = run_len[0], bad = 0, badblocks = 0;
        uLong block_crc = crc32(0, NULL, 0);
        char want[1024], got[1024], textbuf[64];
        int32_t *ids_all = malloc(1 << 20); size_t nall = 0;
        for (uint32_t cp = 0; cp < 0x110000; cp++) {
            if (cp >= 0xD800 && cp <= 0xDFFF) goto block_end;   // no surrogates in UTF-8
            while (left == 0 && run + 1 < nruns) left = run_len[++run];
            left--;
            // this family's part of the signature: the f-th of the " | "-separated groups
            const char *sg = run_sig[run] < nsig && sig[run_sig[run]] ? sig[run_sig[run]] : "";
            for (int k = 0; k < f && sg; k++) { sg = strstr(sg, " | "); if (sg) sg += 3; }
            size_t wl = sg ? strcspn(sg, " ") : 0;
            memcpy(want, sg ? sg : "", wl); want[wl] = 0;
            if (stride > 1 && cp % stride) goto block_end;
            char u[4]; int ul = 0;
            if (cp < 0x80) u[ul++] = (char)cp;
            else if (cp < 0x800) { u[ul++] = (char)(0xC0 | (cp >> 6)); u[ul++] = (char)(0x80 | (cp & 0x3F)); }
            else if (cp < 0x10000) { u[ul++] = (char)(0xE0 | (cp >> 12)); u[ul++] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[ul++] = (char)(0x80 | (cp & 0x3F)); }
            else { u[ul++] = (char)(0xF0 | (cp >> 18)); u[ul++] = (char)(0x80 | ((cp >> 12) & 0x3F)); u[ul++] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[ul++] = (char)(0x80 | (cp & 0x3F)); }
            size_t gl = 0;
            for (int c = 0; c < nctx; c++) {
                size_t tl = 0;
                for (size_t i = 0; i < ctx_len[c]; i++) {
                    if (ctx[c][i] == 1) { memcpy(textbuf + tl, u, (size_t)ul); tl += (size_t)ul; }
                    else textbuf[tl++] = ctx[c][i];
                }
                size_t n;
                const int32_t *pl = tokenizer_pretokenize(tok, st, textbuf, tl, &n);
                if (c) got[gl++] = '|';
                for (size_t i = 0; pl && i < n; i++) gl += (size_t)sprintf(got + gl, i ? ",%d" : "%d", pl[i]);
                const int32_t *ids = tokenizer_encode(tok, st, textbuf, tl, 0, &n);
                for (size_t i = 0; ids && i < n; i++) ids_all[nall++] = ids[i];
                ids_all[nall++] = -1;
            }
            got[gl] = 0;
            checks++;
            if (strcmp(got, want) && bad++ < 10) {
                failf("%s: %s: U+%04X: pre-token byte lengths per context differ", path, fam_name[f], cp);
                fprintf(stderr, "    want %s\n    got  %s\n", want, got);
            }
            block_crc = crc32(block_crc, (const Bytef *)ids_all, (uInt)(nall * sizeof(int32_t)));
            nall = 0;
        block_end:
            if ((cp & 4095) == 4095 && stride == 1) {
                checks++;
                if ((uint32_t)block_crc != crc[f][cp >> 12] && badblocks++ < 10)
                    failf("%s: %s: the ids of U+%04X..U+%04X differ (CRC-32 %08x, want %08x)", path, fam_name[f],
                          cp - 4095, cp, (unsigned)block_crc, crc[f][cp >> 12]);
                block_crc = crc32(0, NULL, 0);
            }
        }
        if (bad || badblocks) failf("%s: %s: %d code points with other pre-tokens, %d blocks with other ids", path, fam_name[f], bad, badblocks);
        if (stride > 1) printf("  unicode sweep %s: %d contexts x one code point in %d, pre-tokens only (TEST_SHORT)\n", fam_name[f], nctx, stride);
        else printf("  unicode sweep %s: %d contexts x 1112064 code points\n", fam_name[f], nctx);
        free(ids_all);
        tokenizer_state_free(st);
        tokenizer_free(tok);
    }
    for (int f = 0; f < nfam; f++) free(crc[f]);
    free(sig); free(run_len); free(run_sig); free(text);
}

int main(void) {
    check_load_errors();
    check_tiny();
    check_special_ids("data/gpt2_tokenizer.json", 50257, 50256, -1);
    check_special_ids("../shared/data/tokenizers/qwen2/tokenizer.json", 151646, 151643, -1);
    check_special_ids("../shared/data/tokenizers/llama3/tokenizer.json", 128256, 128001, 128000);
    check_special_ids("../shared/data/tokenizers/llama2/mistral-7b-v0.1/tokenizer.json", 32000, 2, 1);
    check_ignore_merges("../shared/data/tokenizers/llama3/tokenizer.json");
    const char *files[] = {"tests/fixtures/tokenizer/gpt2_cases.txt", "tests/fixtures/tokenizer/qwen2_cases.txt",
                           "tests/fixtures/tokenizer/llama3_cases.txt", "tests/fixtures/tokenizer/mistral_cases.txt",
                           "tests/fixtures/tokenizer/gpt2_added_cases.txt", "tests/fixtures/tokenizer/qwen2_added_cases.txt",
                           "tests/fixtures/tokenizer/llama2_legacy_cases.txt", "tests/fixtures/tokenizer/gpt2_nfc_cases.txt",
                           "tests/fixtures/tokenizer/gpt2_nfd_cases.txt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) run_fixture(files[i]);
    unicode_sweep("tests/fixtures/tokenizer/unicode_sweep.txt");
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
