/*
 libFuzzer target: prepro/tokenizer.c encoding arbitrary bytes with real tokenizers.

 Loaded once: data/gpt2_tokenizer.json, and when present the shared Qwen2 and Mistral tokenizer.json files
 (shared/data/tokenizers/...; see fuzz_shared_path). The input is the text; its first byte also picks the
 encode flags (TOK_ADD_SPECIAL, TOK_SPECIAL_AS_TEXT) so both paths are reached.

 Invariants checked:
   - invalid UTF-8 is refused (NULL, *n_out = offset of the first bad byte, as an independent validator says);
   - valid UTF-8 encodes (no error), every id is in [0, vocab size) and names a token;
   - encoding the same text again (through the pre-token cache) gives the same ids;
   - GPT-2 (byte-level, no normalizer): decode(encode(x)) == x, byte for byte;
   - Qwen2 (byte-level after NFC): decode(encode(x)) == x when x is ASCII (NFC changes no ASCII text);
   - Mistral (Metaspace "first", byte_fallback; decoder Replace/ByteFallback/Fuse/Strip): decode(encode(x))
     == x when x holds no U+2581 and does not start with a space (HF tokenizers 0.23 holds this too).
*/
#include "fuzz_common.h"
#include "prepro/tokenizer.h"

enum { RT_NONE, RT_ALWAYS, RT_ASCII, RT_METASPACE };

typedef struct {
    const char *name;
    Tokenizer *tok;
    TokenizerState *st;
    int roundtrip;
} Loaded;

static Loaded toks[3];
static int ntoks;
static int32_t *ids_copy;
static size_t ids_cap;

static void load_one(const char *name, const char *path, int roundtrip) {
    char err[1024];
    Tokenizer *t = tokenizer_load(path, err, sizeof(err));
    if (!t) { fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, err); abort(); }
    TokenizerState *st = tokenizer_state_new(t);
    if (!st) abort();
    toks[ntoks++] = (Loaded){name, t, st, roundtrip};
    fprintf(stderr, "fuzz_tokenizer: %s: %s\n", name, tokenizer_describe(t));
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    char path[2048];
    snprintf(path, sizeof(path), "%s/data/gpt2_tokenizer.json", fuzz_root());
    load_one("gpt2", path, RT_ALWAYS);
    if (fuzz_shared_path("data/tokenizers/qwen2/tokenizer.json", path, sizeof(path))) load_one("qwen2", path, RT_ASCII);
    else fprintf(stderr, "fuzz_tokenizer: no qwen2 tokenizer.json: skipped\n");
    if (fuzz_shared_path("data/tokenizers/llama2/mistral-7b-v0.1/tokenizer.json", path, sizeof(path))) load_one("mistral", path, RT_METASPACE);
    else fprintf(stderr, "fuzz_tokenizer: no mistral tokenizer.json: skipped\n");
    return 0;
}

/* the Metaspace round trip holds for texts without U+2581 that do not start with a space */
static int metaspace_roundtrips(const uint8_t *data, size_t size) {
    if (size > 0 && data[0] == ' ') return 0;
    for (size_t i = 0; i + 3 <= size; i++)
        if (data[i] == 0xE2 && data[i + 1] == 0x96 && data[i + 2] == 0x81) return 0;
    return 1;
}

static void check_one(Loaded *L, const uint8_t *data, size_t size, int flags, size_t valid, int ascii) {
    size_t n = 0;
    const int32_t *ids = tokenizer_encode(L->tok, L->st, (const char *)data, size, flags, &n);
    if (valid != size) {
        FUZZ_CHECK(ids == NULL, "%s: invalid UTF-8 at byte %zu was encoded", L->name, valid);
        FUZZ_CHECK(n == valid, "%s: invalid UTF-8 at byte %zu reported at %zu", L->name, valid, n);
        return;
    }
    FUZZ_CHECK(ids != NULL, "%s: valid UTF-8 (%zu bytes) failed to encode (n_out %zu)", L->name, size, n);
    int V = tokenizer_vocab_size(L->tok);
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < V, "%s: id %d at %zu outside [0, %d)", L->name, ids[i], i, V);
        FUZZ_CHECK(tokenizer_id_to_token(L->tok, ids[i]) != NULL, "%s: id %d at %zu names no token", L->name, ids[i], i);
    }
    if (n > ids_cap) { ids_cap = n * 2; ids_copy = realloc(ids_copy, ids_cap * sizeof(int32_t)); if (!ids_copy) abort(); }
    if (n) memcpy(ids_copy, ids, n * sizeof(int32_t));
    size_t n2 = 0;
    const int32_t *again = tokenizer_encode(L->tok, L->st, (const char *)data, size, flags, &n2);
    FUZZ_CHECK(again && n2 == n && (n == 0 || memcmp(again, ids_copy, n * sizeof(int32_t)) == 0),
               "%s: a second encode of the same text gave %zu ids, the first %zu", L->name, n2, n);
    int rt = L->roundtrip == RT_ALWAYS || (L->roundtrip == RT_ASCII && ascii) ||
             (L->roundtrip == RT_METASPACE && metaspace_roundtrips(data, size));
    if (rt && !(flags & TOK_ADD_SPECIAL)) {
        size_t len = 0;
        char *text = tokenizer_decode_len(L->tok, ids_copy, n, &len);
        FUZZ_CHECK(text != NULL, "%s: decode failed", L->name);
        FUZZ_CHECK(len == size && memcmp(text, data, size) == 0,
                   "%s: decode(encode(x)) != x: %zu bytes in, %zu bytes back (\"%.*s\")", L->name, size, len,
                   (int)(len < 200 ? len : 200), text);
        free(text);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a copy of exactly `size` bytes: a read past the end of the text is caught by ASan */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    size_t valid = fuzz_utf8_prefix(buf, size);
    FUZZ_CHECK(utf8_valid_prefix((const char *)buf, size) == valid, "utf8_valid_prefix says %zu, expected %zu",
               utf8_valid_prefix((const char *)buf, size), valid);
    int ascii = 1;
    for (size_t i = 0; i < size && ascii; i++) ascii = buf[i] < 0x80;
    int flags = size ? (buf[0] & (TOK_ADD_SPECIAL | TOK_SPECIAL_AS_TEXT)) : 0;
    for (int k = 0; k < ntoks; k++) {
        check_one(&toks[k], buf, size, flags, valid, ascii);
        /* the round trip is checked on the flag-free encode too */
        if (flags & TOK_ADD_SPECIAL) check_one(&toks[k], buf, size, flags & ~TOK_ADD_SPECIAL, valid, ascii);
    }
    free(buf);
    return 0;
}
