/*
 * tokenizer.h — Hugging Face tokenizer.json (BPE models) in plain C11.
 *
 * Encoding follows the tokenizers library step by step, so ids match HF exactly:
 *   added tokens (matched on the raw text, leftmost-longest)
 *   -> normalizer (NFC, Prepend, Replace, Strip, Sequence)
 *   -> pre-tokenizer (ByteLevel, Split, Metaspace, Digits, Sequence)
 *   -> BPE model (merges by rank, byte-level vocab, byte_fallback, unk, ignore_merges)
 *   -> post-processor (TemplateProcessing / Roberta / Bert: the BOS/EOS it adds)
 * Decoding runs the decoder chain (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip).
 *
 * Threads: a loaded Tokenizer is read-only and may be shared. Each encoding thread owns one
 * TokenizerState (regex match data, merge scratch, pre-token cache, output buffer).
 * Text must be valid UTF-8; tokenizer_encode checks and fails otherwise (unless told it was checked).
 */
#ifndef LLMTRAIN_TOKENIZER_H
#define LLMTRAIN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;
typedef struct TokenizerState TokenizerState;

// Loads tokenizer.json. On failure returns NULL and writes one line naming the file and the place
// (JSON line:column for syntax errors, the key path for unsupported or missing parts) into err.
Tokenizer *tokenizer_load(const char *path, char *err, size_t errlen);
void tokenizer_free(Tokenizer *tok);

int tokenizer_vocab_size(const Tokenizer *tok); // max id + 1, counting added tokens
int tokenizer_eos_id(const Tokenizer *tok);     // the end-of-document token, -1 if none
int tokenizer_bos_id(const Tokenizer *tok);     // first token the post-processor prepends, -1 if none
// Overrides the end-of-document token (e.g. "<|im_end|>"); returns its id or -1 if unknown.
int tokenizer_set_eos(Tokenizer *tok, const char *token);
// Id of a token string as written in tokenizer.json (added tokens first), -1 if absent.
int tokenizer_token_id(const Tokenizer *tok, const char *token);
// The token string of an id as written in tokenizer.json, NULL if the id is unused.
const char *tokenizer_id_to_token(const Tokenizer *tok, int id);
// Short description of the pipeline, e.g. "BPE byte-level, NFC, Split+ByteLevel, template [128000]".
const char *tokenizer_describe(const Tokenizer *tok);

// Encoding flags.
enum {
    TOK_ADD_SPECIAL = 1,      // apply the post-processor: add BOS/EOS as HF encode(add_special_tokens=True)
    TOK_SPECIAL_AS_TEXT = 2,  // do not match special added tokens in the text: "<|endoftext|>" is plain text
    TOK_VALID_UTF8 = 4,       // the caller has checked that the text is valid UTF-8: it is not checked again
                              // (invalid UTF-8 passed with this flag may be read past its end)
};

TokenizerState *tokenizer_state_new(const Tokenizer *tok);
void tokenizer_state_free(TokenizerState *st);

// Encodes text[0..len) and returns the ids (owned by st, valid until the next call with st);
// *n_out gets the count. Returns NULL on invalid UTF-8 (*n_out = byte offset of the error) or on
// out-of-memory / regex failure (*n_out = (size_t)-1).
const int32_t *tokenizer_encode(const Tokenizer *tok, TokenizerState *st, const char *text, size_t len,
                                int flags, size_t *n_out);

// Runs tokenizer_encode's steps before the BPE model (added tokens taken out, normalizers,
// pre-tokenizers) and returns the byte length of each pre-token, in order (owned by st, valid until the
// next call with st); added tokens are left out. NULL as tokenizer_encode.
const int32_t *tokenizer_pretokenize(const Tokenizer *tok, TokenizerState *st, const char *text, size_t len,
                                     size_t *n_out);

// Decodes ids to UTF-8 as HF decode(ids, skip_special_tokens=False). Unknown ids are skipped.
// Returns a malloc'ed NUL-terminated string (NULL only when out of memory).
char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, size_t n);
// The same, with the byte length (the text may contain NUL characters).
char *tokenizer_decode_len(const Tokenizer *tok, const int32_t *ids, size_t n, size_t *len);

// UTF-8 helpers shared with prepro.
// Length of the longest valid UTF-8 prefix of s[0..n) (== n when all of it is valid).
size_t utf8_valid_prefix(const char *s, size_t n);

#endif
