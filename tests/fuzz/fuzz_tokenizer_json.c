/*
 libFuzzer target: tokenizer_load on a mutated tokenizer.json, then encoding and decoding with it.

 Input: the tokenizer.json bytes, optionally followed by a NUL byte and a text to encode. Without a text a
 few fixed strings are encoded (ASCII, spaces, digits, accents, CJK, an emoji, "<|endoftext|>", "<s>").
 Seeds: tests/fuzz/corpus/fuzz_tokenizer_json (small tokenizer.json files of each pipeline shape, made
 from tests/fixtures/prepro/tiny_tokenizer.json and cut-down GPT-2 / Qwen2 / Mistral files).

 Invariants checked: a file either loads or fails with a message; a loaded tokenizer encodes valid UTF-8
 without error, refuses invalid UTF-8, returns ids in [0, vocab size) (without TOK_ADD_SPECIAL), encodes
 the same text twice the same way, and decodes what it encoded to valid UTF-8.
 With FUZZ_STRICT=1 in the environment the ids the post-processor adds (BOS/EOS of TemplateProcessing,
 Roberta, Bert) and the BOS/EOS ids must be inside [0, vocab size) too (the loader checks the
 post-processor ids; see tests/fuzz/crashes/README.md).
*/
#include "fuzz_common.h"
#include "prepro/tokenizer.h"

static const char *fixed_texts[] = {
    "Hello world", "  leading and trailing  ", "a\n\nb\t\tc", "1234567 89", "caf\xC3\xA9 e\xCC\x81", "\xE4\xBD\xA0\xE5\xA5\xBD",
    "\xF0\x9F\x98\x80!", "<|endoftext|>x<|endoftext|>", "<s>a</s>", "abcabc ab c", "",
};

static int strict;

static void encode_check(Tokenizer *t, TokenizerState *st, const char *src, size_t len, int flags) {
    char *text = malloc(len ? len : 1);   /* exactly len bytes: reads past the end are caught */
    if (!text) return;
    memcpy(text, src, len);
    size_t valid = fuzz_utf8_prefix((const unsigned char *)text, len), n = 0;
    const int32_t *ids = tokenizer_encode(t, st, text, len, flags, &n);
    if (valid != len) {
        FUZZ_CHECK(ids == NULL && n == valid, "invalid UTF-8 at %zu: encode gave %p, n %zu", valid, (const void *)ids, n);
        free(text);
        return;
    }
    /* an error (n == -1) is allowed only for regex limits on valid text: PCRE2 match or depth limits */
    if (!ids) {
        FUZZ_CHECK(n == (size_t)-1, "valid UTF-8 refused at byte %zu", n);
        free(text);
        return;
    }
    int V = tokenizer_vocab_size(t);
    int32_t *copy = malloc((n ? n : 1) * sizeof(int32_t));
    if (!copy) abort();
    for (size_t i = 0; i < n; i++) {
        if (strict || !(flags & TOK_ADD_SPECIAL))
            FUZZ_CHECK(ids[i] >= 0 && ids[i] < V, "id %d at position %zu outside [0, %d) (flags %d; %s)", ids[i], i, V, flags,
                       tokenizer_describe(t));
        copy[i] = ids[i];
    }
    size_t n2 = 0;
    const int32_t *again = tokenizer_encode(t, st, text, len, flags, &n2);
    FUZZ_CHECK(again && n2 == n && (n == 0 || memcmp(again, copy, n * sizeof(int32_t)) == 0),
               "second encode differs: %zu ids, then %zu", n, n2);
    size_t dl = 0;
    char *dec = tokenizer_decode_len(t, copy, n, &dl);
    FUZZ_CHECK(dec != NULL, "decode returned NULL");
    FUZZ_CHECK(fuzz_utf8_prefix((const unsigned char *)dec, dl) == dl, "decode produced invalid UTF-8 (%zu bytes)", dl);
    free(dec);
    free(copy);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[512];
    if (!path[0]) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", fuzz_tmpdir());
        strict = getenv("FUZZ_STRICT") && atoi(getenv("FUZZ_STRICT")) > 0;
    }
    const uint8_t *nul = memchr(data, 0, size);
    size_t jlen = nul ? (size_t)(nul - data) : size;
    fuzz_write_file(path, data, jlen);
    char err[1024];
    err[0] = 1; err[1] = 0;
    Tokenizer *t = tokenizer_load(path, err, sizeof(err));
    if (!t) {
        FUZZ_CHECK(err[0] != 0 && err[0] != 1 && strlen(err) < sizeof(err), "load failed without a message");
        return 0;
    }
    FUZZ_CHECK(tokenizer_vocab_size(t) >= 0, "negative vocab size %d", tokenizer_vocab_size(t));
    int eos = tokenizer_eos_id(t), bos = tokenizer_bos_id(t);
    FUZZ_CHECK(eos >= -1 && eos < tokenizer_vocab_size(t), "eos id %d outside the vocab (%d)", eos, tokenizer_vocab_size(t));
    if (strict) FUZZ_CHECK(bos >= -1 && bos < tokenizer_vocab_size(t), "bos id %d outside the vocab (%d)", bos, tokenizer_vocab_size(t));
    TokenizerState *st = tokenizer_state_new(t);
    if (!st) { tokenizer_free(t); return 0; }
    if (nul) {
        const char *text = (const char *)nul + 1;
        size_t tlen = size - jlen - 1;
        encode_check(t, st, text, tlen, 0);
        encode_check(t, st, text, tlen, TOK_ADD_SPECIAL);
        encode_check(t, st, text, tlen, TOK_SPECIAL_AS_TEXT);
    } else {
        for (size_t i = 0; i < sizeof(fixed_texts) / sizeof(fixed_texts[0]); i++)
            encode_check(t, st, fixed_texts[i], strlen(fixed_texts[i]), i % 2 ? TOK_ADD_SPECIAL : 0);
    }
    /* every id decodes alone (unknown ids are skipped) */
    int V = tokenizer_vocab_size(t);
    for (int id = -1; id <= V && id < 4096; id++) {
        int32_t one = id;
        size_t dl;
        char *d = tokenizer_decode_len(t, &one, 1, &dl);
        FUZZ_CHECK(d != NULL, "decode of id %d returned NULL", id);
        free(d);
    }
    tokenizer_state_free(st);
    tokenizer_free(t);
    return 0;
}
