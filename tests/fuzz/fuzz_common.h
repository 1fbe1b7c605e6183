/*
 Helpers shared by the libFuzzer targets in tests/fuzz/: a private scratch directory, writing the input
 to a file there, and FUZZ_CHECK, which reports a broken invariant and aborts (libFuzzer keeps the input).
*/
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The repository root: tokenizer.json and the other fixtures are found from there. dev/fuzz.sh defines it;
   the environment variable LLMTRAIN_ROOT wins when set. */
#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

#define FUZZ_CHECK(cond, ...)                                                        \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, "\n");                                                   \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static inline const char *fuzz_root(void) {
    const char *r = getenv("LLMTRAIN_ROOT");
    return r && *r ? r : FUZZ_ROOT;
}

/* A scratch directory made once per process (in /dev/shm when it exists: the files are rewritten on
   every input). */
static inline const char *fuzz_tmpdir(void) {
    static char dir[256];
    if (dir[0]) return dir;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof(dir), "%s/llmtrain_fuzz_XXXXXX", base);
    if (!mkdtemp(dir)) { perror("mkdtemp"); abort(); }
    return dir;
}

/* Writes data[0..size) to path; aborts when the file system refuses (that is not a finding). */
static inline void fuzz_write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); abort(); }
    if (size && fwrite(data, 1, size, f) != size) { perror(path); abort(); }
    if (fclose(f) != 0) { perror(path); abort(); }
}

/* Finds rel (e.g. "data/tokenizers/qwen2/tokenizer.json") in the shared data folder: $LLMTRAIN_SHARED,
   then ROOT/shared, ROOT/../shared and /work/shared. Returns 1 with the path in out, 0 when absent. */
static inline int fuzz_shared_path(const char *rel, char *out, size_t outlen) {
    const char *env = getenv("LLMTRAIN_SHARED");
    char cand[4][1024];
    int n = 0;
    if (env && *env) snprintf(cand[n++], sizeof(cand[0]), "%s/%s", env, rel);
    snprintf(cand[n++], sizeof(cand[0]), "%s/shared/%s", fuzz_root(), rel);
    snprintf(cand[n++], sizeof(cand[0]), "%s/../shared/%s", fuzz_root(), rel);
    snprintf(cand[n++], sizeof(cand[0]), "/work/shared/%s", rel);
    for (int i = 0; i < n; i++)
        if (access(cand[i], R_OK) == 0) { snprintf(out, outlen, "%s", cand[i]); return 1; }
    return 0;
}

/* Strict UTF-8 check written independently of the tokenizer's: returns the length of the longest valid
   prefix (no overlong forms, no surrogates, nothing above U+10FFFF). */
static inline size_t fuzz_utf8_prefix(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        int len; uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (i + (size_t)len > n) return i;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += (size_t)len;
    }
    return n;
}

#endif
