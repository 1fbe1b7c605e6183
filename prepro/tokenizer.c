/*
 * tokenizer.c — see tokenizer.h. Reading order:
 *   1. small buffers, hashing, UTF-8, Unicode normalization (NFC/NFD)
 *   2. hash maps (string -> id, id pair -> merge)
 *   3. regexes: hand-written matchers for the standard pre-tokenizer patterns (GPT-2, cl100k/Llama-3,
 *      Qwen2; Unicode 16 classes), PCRE2 for any other (with \s spelled out as Oniguruma defines it)
 *   4. the Tokenizer: normalizers, pre-tokenizers, BPE model, added tokens, post-processor, decoders
 *   5. loading tokenizer.json
 *   6. encoding
 *   7. decoding
 */
#include "tokenizer.h"

#include <jansson.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode_props.h"
#include "unicode_tables.h"

// ----------------------------------------------------------------------------------------------
// 1. buffers, hashing, UTF-8

typedef struct { char *data; size_t len, cap; } Buf;
typedef struct { int32_t *data; size_t len, cap; } IdBuf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p; b->cap = cap;
    return 0;
}
static int buf_append(Buf *b, const void *s, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}
static int idbuf_push(IdBuf *b, int32_t v) {
    if (b->len == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        int32_t *p = realloc(b->data, cap * sizeof(int32_t));
        if (!p) return -1;
        b->data = p; b->cap = cap;
    }
    b->data[b->len++] = v;
    return 0;
}
static inline int idbuf_append(IdBuf *b, const int32_t *v, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n) cap *= 2;
        int32_t *p = realloc(b->data, cap * sizeof(int32_t));
        if (!p) return -1;
        b->data = p; b->cap = cap;
    }
    int32_t *d = b->data + b->len;
    if (n <= 4) { for (size_t i = 0; i < n; i++) d[i] = v[i]; }   // most appends are a few ids: no call
    else memcpy(d, v, n * sizeof(int32_t));
    b->len += n;
    return 0;
}

// The n <= 8 bytes at s as one word, different for different strings of one length: 4..8 bytes as
// two (maybe overlapping) 4-byte loads, 1..3 as their first, middle and last byte.
static inline uint64_t load_short(const unsigned char *s, size_t n) {
    uint32_t a, b;
    if (n >= 4) { memcpy(&a, s, 4); memcpy(&b, s + n - 4, 4); return (uint64_t)b << 32 | a; }
    return n == 0 ? 0 : (uint64_t)s[0] | (uint64_t)s[n / 2] << 8 | (uint64_t)s[n - 1] << 16;
}

// 64-bit hash of a byte string: 8 bytes at a time, multiply-xorshift mixing.
static inline uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t k; memcpy(&k, s, 8);
        h = (h ^ k) * 0xFF51AFD7ED558CCDull; h ^= h >> 32;
        s += 8; n -= 8;
    }
    h = (h ^ load_short(s, n)) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29; h *= 0xFF51AFD7ED558CCDull; h ^= h >> 32;
    return h;
}

// Decodes one code point from valid UTF-8; returns its byte length.
static int utf8_decode(const unsigned char *s, uint32_t *cp) {
    if (s[0] < 0x80) { *cp = s[0]; return 1; }
    if (s[0] < 0xE0) { *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (s[0] < 0xF0) { *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F); return 3; }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}
static int utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}
static int utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

// Checks the UTF-8 sequence at s[i..n): returns its length when valid, else the negated length of
// its maximal invalid subpart (the unit that one U+FFFD replaces, as Rust's from_utf8_lossy does).
static int utf8_step(const unsigned char *s, size_t i, size_t n) {
    unsigned char b = s[i];
    if (b < 0x80) return 1;
    int need; unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) { need = 2; lo = 0xA0; }
    else if (b >= 0xE1 && b <= 0xEC) need = 2;
    else if (b == 0xED) { need = 2; hi = 0x9F; }
    else if (b >= 0xEE && b <= 0xEF) need = 2;
    else if (b == 0xF0) { need = 3; lo = 0x90; }
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) { need = 3; hi = 0x8F; }
    else return -1;
    int k = 0;
    for (size_t j = i + 1; k < need && j < n; j++, k++) {
        unsigned char c = s[j];
        if (c < (k == 0 ? lo : 0x80) || c > (k == 0 ? hi : 0xBF)) break;
    }
    return k == need ? need + 1 : -(k + 1);
}

size_t utf8_valid_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        // ASCII runs 8 bytes at a time: most text is mostly ASCII
        while (i + 8 <= n) {
            uint64_t w; memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        // a 3-byte character (CJK) whose lead byte takes any two continuation bytes: E1..EC, EE, EF
        unsigned char b = s[i];
        if (b >= 0xE1 && b != 0xED && b <= 0xEF && i + 2 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
            i += 3;
            continue;
        }
        int k = utf8_step(s, i, n);
        if (k < 0) return i;
        i += (size_t)k;
    }
    return n;
}

// Appends bytes as UTF-8, each invalid subpart replaced by U+FFFD (Rust String::from_utf8_lossy).
static int buf_append_lossy(Buf *b, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        int k = utf8_step(s, i, n);
        if (k > 0) { if (buf_append(b, s + i, (size_t)k)) return -1; i += (size_t)k; }
        else { if (buf_append(b, "\xEF\xBF\xBD", 3)) return -1; i += (size_t)(-k); }
    }
    return 0;
}

// Unicode normalization forms C and D (UAX #15) over the tables in unicode_tables.h.
enum { HANGUL_S0 = 0xAC00, HANGUL_L0 = 0x1100, HANGUL_V0 = 0x1161, HANGUL_T0 = 0x11A7,
       HANGUL_LN = 19, HANGUL_VN = 21, HANGUL_TN = 28, HANGUL_SN = 19 * 21 * 28 };

static int uni_care(uint32_t cp) {
    return cp < 0x110000 && ((uni_care_bits[uni_care_block[cp >> 8]][(cp & 0xFF) >> 3] >> (cp & 7)) & 1);
}
static int uni_class(uint32_t cp) {
    size_t lo = 0, hi = sizeof uni_ccc / sizeof uni_ccc[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_ccc[mid].first) hi = mid;
        else if (cp > uni_ccc[mid].last) lo = mid + 1;
        else return uni_ccc[mid].ccc;
    }
    return 0;
}
static const UniDecomp *uni_find_decomp(uint32_t cp) {
    size_t lo = 0, hi = sizeof uni_decomp / sizeof uni_decomp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_decomp[mid].cp) hi = mid;
        else if (cp > uni_decomp[mid].cp) lo = mid + 1;
        else return &uni_decomp[mid];
    }
    return NULL;
}
static uint32_t uni_compose(uint32_t a, uint32_t b) {
    if (a >= HANGUL_L0 && a < HANGUL_L0 + HANGUL_LN && b >= HANGUL_V0 && b < HANGUL_V0 + HANGUL_VN)
        return HANGUL_S0 + ((a - HANGUL_L0) * HANGUL_VN + (b - HANGUL_V0)) * HANGUL_TN;
    if (a >= HANGUL_S0 && a < HANGUL_S0 + HANGUL_SN && (a - HANGUL_S0) % HANGUL_TN == 0 &&
        b > HANGUL_T0 && b < HANGUL_T0 + HANGUL_TN)
        return a + (b - HANGUL_T0);
    size_t lo = 0, hi = sizeof uni_comp / sizeof uni_comp[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const UniComp *c = &uni_comp[mid];
        if (a < c->first || (a == c->first && b < c->second)) hi = mid;
        else if (a > c->first || b > c->second) lo = mid + 1;
        else return c->composite;
    }
    return 0;
}

// May the character cp change under NFC (compose = 1) or NFD (compose = 0)? (It decomposes, has a
// nonzero combining class, or composes onto the character before it; for NFD also Hangul syllables.)
static int nf_care(uint32_t cp, int compose) {
    return uni_care(cp) || (!compose && cp >= HANGUL_S0 && cp < HANGUL_S0 + HANGUL_SN);
}

// Start of the first character of valid UTF-8 s[0..n) that may change (n when none). ASCII is read 8
// bytes at a time; a 3-byte character (CJK) in a block of 256 code points with none that can change is
// passed on its first two bytes.
static size_t nf_quick_check(const unsigned char *s, size_t n, int compose) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w; memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) { i += 8; continue; }
        }
        if (s[i] < 0x80) { i++; continue; }
        // a run of 3-byte characters, each in a block with none that can change
        size_t j = i;
        for (; j < n && s[j] >= 0xE0 && s[j] < 0xF0; j += 3) {
            unsigned block = ((s[j] & 0x0Fu) << 4) | ((s[j + 1] >> 2) & 0x0Fu);   // code point >> 8
            if (uni_care_block[block] != 0 || (!compose && block >= (HANGUL_S0 >> 8) && block <= ((HANGUL_S0 + HANGUL_SN) >> 8))) break;
        }
        if (j > i) { i = j; continue; }
        uint32_t cp; int k = utf8_decode(s + i, &cp);
        if (nf_care(cp, compose)) return i;
        i += (size_t)k;
    }
    return n;
}

// Appends NFC (compose = 1) or NFD (compose = 0) of valid UTF-8 s[0..n) to out, the whole way:
// decompose, put combining marks in canonical order, compose.
static int nf_span(const unsigned char *s, size_t n, Buf *out, int compose) {
    uint32_t cps_small[64]; uint8_t cls_small[64];
    int small = n * 4 + 4 <= 64;   // a few characters: no allocation
    uint32_t *cps = small ? cps_small : malloc((n * 4 + 4) * sizeof(uint32_t));
    uint8_t *cls = small ? cls_small : malloc(n * 4 + 4);
    if (!cps || !cls) { if (!small) { free(cps); free(cls); } return -1; }
    // decompose fully into code points
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp; i += (size_t)utf8_decode(s + i, &cp);
        const UniDecomp *d;
        if (cp >= HANGUL_S0 && cp < HANGUL_S0 + HANGUL_SN) {
            uint32_t si = cp - HANGUL_S0;
            cps[m++] = HANGUL_L0 + si / (HANGUL_VN * HANGUL_TN);
            cps[m++] = HANGUL_V0 + (si % (HANGUL_VN * HANGUL_TN)) / HANGUL_TN;
            if (si % HANGUL_TN) cps[m++] = HANGUL_T0 + si % HANGUL_TN;
        } else if (cp >= 0xC0 && (d = uni_find_decomp(cp)) != NULL) {
            for (int k = 0; k < d->len; k++) cps[m++] = uni_decomp_pool[d->off + k];
        } else cps[m++] = cp;
    }
    // canonical order: stable sort of each run of nonzero classes
    for (size_t i = 0; i < m; i++) cls[i] = (uint8_t)uni_class(cps[i]);
    for (size_t i = 1; i < m; i++) {
        if (cls[i] == 0) continue;
        for (size_t j = i; j > 0 && cls[j - 1] > cls[j]; j--) {
            uint32_t tc = cps[j]; cps[j] = cps[j - 1]; cps[j - 1] = tc;
            uint8_t tk = cls[j]; cls[j] = cls[j - 1]; cls[j - 1] = tk;
        }
    }
    // compose: each char joins the last starter unless blocked by a char of the same or higher class
    size_t w = m;
    if (compose && m > 0) {
        size_t starter = 0;
        int last = cls[0] ? 256 : 0;
        w = 1;
        for (size_t i = 1; i < m; i++) {
            int c = cls[i];
            uint32_t comp = uni_compose(cps[starter], cps[i]);
            if (comp && (last < c || last == 0)) { cps[starter] = comp; continue; }
            if (c == 0) starter = w;
            last = c;
            cps[w] = cps[i]; cls[w] = cls[i]; w++;
        }
    }
    int rc = buf_reserve(out, w * 4);
    for (size_t i = 0; i < w && rc == 0; i++) out->len += (size_t)utf8_encode(cps[i], out->data + out->len);
    if (rc == 0) out->data[out->len] = 0;
    if (!small) { free(cps); free(cls); }
    return rc;
}

// Writes NFC (compose = 1) or NFD (compose = 0) of valid UTF-8 s[0..n) to out.
// Only the spans around characters that may change are normalized; the text between is copied. A
// character that cannot change has combining class 0 and composes onto nothing, so the text may be
// cut before it: reordering and composing never reach across. A span starts one character before
// the first that may change (it may compose onto that one) and ends before the next that cannot.
static int unicode_nfc(const char *str, size_t n, Buf *out, int compose) {
    const unsigned char *s = (const unsigned char *)str;
    out->len = 0;
    size_t done = 0;
    for (;;) {
        size_t j = done + nf_quick_check(s + done, n - done, compose);
        if (j == n) return buf_append(out, s + done, n - done);
        size_t p = j;
        if (p > done) { p--; while (p > done && (s[p] & 0xC0) == 0x80) p--; }
        size_t q = j + (size_t)utf8_len(s[j]);
        for (uint32_t cp; q < n; q += (size_t)utf8_len(s[q])) {
            utf8_decode(s + q, &cp);
            if (!nf_care(cp, compose)) break;
        }
        if (buf_append(out, s + done, p - done) || nf_span(s + p, q - p, out, compose)) return -1;
        done = q;
    }
}

// Unicode White_Space (what Rust's char::is_whitespace and regex \s match).
static int is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}
#define WS_CLASS "\\t-\\r\\x20\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

// ----------------------------------------------------------------------------------------------
// 2. hash maps

// String -> int32 map. Keys live in one arena; slots hold entry index + 1 (0 = empty).
typedef struct {
    char *arena; size_t arena_len, arena_cap;
    uint64_t *hash; uint32_t *off, *klen; int32_t *val;
    size_t n, cap;          // entries
    uint32_t *slots; size_t mask;
} StrMap;

static void strmap_free(StrMap *m) {
    free(m->arena); free(m->hash); free(m->off); free(m->klen); free(m->val); free(m->slots);
    memset(m, 0, sizeof *m);
}
static int strmap_grow_slots(StrMap *m) {
    size_t nslots = m->mask ? (m->mask + 1) * 2 : 1024;
    uint32_t *s = calloc(nslots, sizeof(uint32_t));
    if (!s) return -1;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = m->hash[e] & (nslots - 1);
        while (s[i]) i = (i + 1) & (nslots - 1);
        s[i] = (uint32_t)(e + 1);
    }
    free(m->slots); m->slots = s; m->mask = nslots - 1;
    return 0;
}
static int32_t strmap_get_h(const StrMap *m, const char *k, size_t n, uint64_t h) {
    if (!m->slots) return -1;
    size_t i = h & m->mask;
    for (uint32_t e; (e = m->slots[i]) != 0; i = (i + 1) & m->mask) {
        e--;
        if (m->hash[e] == h && m->klen[e] == n && memcmp(m->arena + m->off[e], k, n) == 0) return m->val[e];
    }
    return -1;
}
static int32_t strmap_get(const StrMap *m, const char *k, size_t n) { return strmap_get_h(m, k, n, hash_bytes(k, n)); }

// Inserts or overwrites; returns 0, or -1 when out of memory.
static int strmap_put(StrMap *m, const char *k, size_t n, int32_t v) {
    uint64_t h = hash_bytes(k, n);
    if (m->slots) {
        size_t i = h & m->mask;
        for (uint32_t e; (e = m->slots[i]) != 0; i = (i + 1) & m->mask) {
            e--;
            if (m->hash[e] == h && m->klen[e] == n && memcmp(m->arena + m->off[e], k, n) == 0) { m->val[e] = v; return 0; }
        }
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        uint64_t *hh = realloc(m->hash, cap * sizeof *hh); if (!hh) return -1; m->hash = hh;
        uint32_t *oo = realloc(m->off, cap * sizeof *oo); if (!oo) return -1; m->off = oo;
        uint32_t *ll = realloc(m->klen, cap * sizeof *ll); if (!ll) return -1; m->klen = ll;
        int32_t *vv = realloc(m->val, cap * sizeof *vv); if (!vv) return -1; m->val = vv;
        m->cap = cap;
    }
    if (m->arena_len + n + 1 > m->arena_cap) {
        size_t cap = m->arena_cap ? m->arena_cap : 4096;
        while (cap < m->arena_len + n + 1) cap *= 2;
        char *a = realloc(m->arena, cap); if (!a) return -1;
        m->arena = a; m->arena_cap = cap;
    }
    memcpy(m->arena + m->arena_len, k, n);
    m->arena[m->arena_len + n] = 0;
    m->hash[m->n] = h; m->off[m->n] = (uint32_t)m->arena_len; m->klen[m->n] = (uint32_t)n; m->val[m->n] = v;
    m->arena_len += n + 1;
    m->n++;
    if (!m->slots || m->n * 2 > m->mask + 1) return strmap_grow_slots(m);
    size_t i = h & m->mask;
    while (m->slots[i]) i = (i + 1) & m->mask;
    m->slots[i] = (uint32_t)m->n;
    return 0;
}

// (left id, right id) -> rank, with the merged token of each rank in id_of_rank. A slot is one 64-bit
// word, left id (21 bits) | right id (21 bits) | rank (22 bits): half the cache footprint of a slot
// that also holds the merged id. Open addressing; UINT64_MAX = empty. Where every merged id is its
// rank plus one offset (vocabularies trained by HF tokenizers: GPT-2, Qwen2), rank_offset_ok is set and
// the merged id is computed, not read from id_of_rank (a cache miss a merge on long texts).
typedef struct { uint64_t *slots; size_t mask, n; int32_t *id_of_rank; int32_t rank_offset; int rank_offset_ok; } PairMap;
#define PAIR_MAX_ID ((1 << 21) - 1)
#define PAIR_MAX_RANK ((1u << 22) - 2)
#define NO_MERGE UINT32_MAX

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 21) | (uint32_t)b; }
// Both ids must reach the slot bits (the low ones) and the filter bits (the top ones): one multiply
// spreads every key bit up, and folding the top half down brings them to the low bits.
static uint64_t pair_hash(uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}
// The pair's two bits in its Bloom filter word (see Tokenizer.pair_filter), and that word's index.
static uint64_t pair_filter_bits(uint64_t h) { return (1ull << (h >> 58)) | (1ull << ((h >> 52) & 63)); }
static size_t pair_filter_word(uint64_t h, size_t mask) { return (size_t)(h >> 8) & mask; }

static int pairmap_init(PairMap *m, size_t expected) {
    size_t cap = 1024;
    while (cap < expected + expected / 2) cap *= 2;
    m->slots = malloc(cap * sizeof(uint64_t));
    m->id_of_rank = malloc((expected + 1) * sizeof(int32_t));
    if (!m->slots || !m->id_of_rank) return -1;
    for (size_t i = 0; i < cap; i++) m->slots[i] = UINT64_MAX;
    m->mask = cap - 1; m->n = 0;
    return 0;
}
// A later merge of the same pair overwrites the earlier one, as HF's HashMap collect does.
static void pairmap_put(PairMap *m, int32_t a, int32_t b, uint32_t rank, int32_t id) {
    uint64_t k = pair_key(a, b);
    size_t i = (size_t)pair_hash(k) & m->mask;
    while (m->slots[i] != UINT64_MAX && m->slots[i] >> 22 != k) i = (i + 1) & m->mask;
    if (m->slots[i] == UINT64_MAX) m->n++;
    m->slots[i] = k << 22 | rank;
    m->id_of_rank[rank] = id;
}
static int32_t pairmap_merged_id(const PairMap *m, uint32_t rank) {
    return m->rank_offset_ok ? (int32_t)rank + m->rank_offset : m->id_of_rank[rank];
}
static uint32_t pairmap_rank(const PairMap *m, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    for (size_t i = (size_t)pair_hash(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->slots[i] >> 22 == k) return (uint32_t)(m->slots[i] & ((1u << 22) - 1));
        if (m->slots[i] == UINT64_MAX) return NO_MERGE;
    }
}

// ----------------------------------------------------------------------------------------------
// 3. regexes

// The three pre-tokenizer patterns of nearly every byte-level BPE tokenizer are matched by hand, on
// the Unicode 16 classes of unicode_props.h (the Unicode version of HF tokenizers' Oniguruma), so the
// ids do not depend on the system PCRE2's Unicode version; other patterns go to PCRE2.
enum { RE_PCRE, RE_GPT2, RE_CL100K, RE_QWEN2 };
typedef struct { pcre2_code *code; int jit; int kind; } Regex;

static const char *GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// cl100k as HF tokenizer.json files write it (Llama-3 uses it as is); Qwen2 differs in \p{N}{1,3} -> \p{N}
static const char *CL100K_PATTERN =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *QWEN2_PATTERN =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum { CC_OTHER, CC_LETTER, CC_NUMBER, CC_SPACE };

// Class of the code point cp.
static inline int cp_class(uint32_t cp) {
    return (uni_prop_bits[uni_prop_block[cp >> 8]][(cp & 0xFF) >> 2] >> ((cp & 3) * 2)) & 3;
}

// Class of the character at s[i] (valid UTF-8, i < n) and its byte length.
static inline int char_class(const unsigned char *s, size_t i, int *len) {
    if (s[i] < 0x80) { *len = 1; return cp_class(s[i]); }
    uint32_t cp;
    *len = utf8_decode(s + i, &cp);
    return cp_class(cp);
}

// End of the run of class c that starts at i (the character at i is of class c). ASCII (whose letters
// are A-Z and a-z) and 3-byte characters (CJK runs) are decoded in the loop.
static size_t class_run(const unsigned char *s, size_t n, size_t i, int c) {
    int len;
    // ASCII letters 8 at a time: per byte, the high bit of ok is set when it is below 0x80 and, lower-
    // cased by | 0x20, in 'a'..'z' (adding 0x1F reaches 0x80 from 'a' on, adding 0x05 from '{' on). A
    // byte of 0x80 or more may carry into the next, but only above the first byte that is not a letter.
    while (c == CC_LETTER && i + 8 <= n && s[i] < 0x80) {
        uint64_t w; memcpy(&w, s + i, 8);
        uint64_t x = w | 0x2020202020202020ull;
        uint64_t ok = (x + 0x1F1F1F1F1F1F1F1Full) & ~(x + 0x0505050505050505ull) & ~w & 0x8080808080808080ull;
        if (ok != 0x8080808080808080ull) { i += (size_t)__builtin_ctzll(~ok & 0x8080808080808080ull) / 8; break; }
        i += 8;
    }
    while (i < n) {
        if (s[i] < 0x80) {
            if (c == CC_LETTER ? (unsigned)((s[i] | 0x20) - 'a') >= 26u : cp_class(s[i]) != c) break;
            i++;
            continue;
        }
        if (s[i] >= 0xE0 && s[i] < 0xF0) {
            uint32_t cp = ((uint32_t)(s[i] & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
            if (((uni_prop_bits[uni_prop_block[cp >> 8]][(cp & 0xFF) >> 2] >> ((cp & 3) * 2)) & 3) != c) break;
            i += 3;
            continue;
        }
        if (char_class(s, i, &len) != c) break;
        i += (size_t)len;
    }
    return i;
}

// The contraction at s[i] == '\'': its end, or 0. icase: the letters match case-insensitively as
// Oniguruma's (?i) does (simple case folding: S, T, ... and U+017F LONG S, which folds to s).
static size_t contraction(const unsigned char *s, size_t n, size_t i, int icase) {
    if (i + 1 >= n) return 0;
    unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (icase) {
        if (a == 0xC5 && b == 0xBF) return i + 3;   // U+017F
        if (a >= 'A' && a <= 'Z') a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (unsigned char)(b + 32);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

// The white-space run at i (Oniguruma's \s+(?!\S)|\s+): to the end of the text when it reaches it,
// else all but its last character (which goes with what follows), else the one character.
static size_t space_run(const unsigned char *s, size_t n, size_t i) {
    size_t last = i, j = i;
    int len;
    while (j < n && char_class(s, j, &len) == CC_SPACE) { last = j; j += (size_t)len; }
    return j == n || last == i ? j : last;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Every position starts a match (each class has its alternative); returns the end of the one at i.
static size_t match_gpt2(const unsigned char *s, size_t n, size_t i) {
    size_t e;
    if (s[i] == '\'' && (e = contraction(s, n, i, 0)) != 0) return e;
    int len, c = char_class(s, i, &len);
    if (s[i] == ' ' && i + 1 < n) {   // a space joins the letters, digits or symbols after it
        int len2, c2 = char_class(s, i + 1, &len2);
        if (c2 != CC_SPACE) return class_run(s, n, i + 1, c2);
    }
    if (c != CC_SPACE) return class_run(s, n, i, c);
    return space_run(s, n, i);
}

// cl100k / Llama-3 (max_digits 3) and Qwen2 (max_digits 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
static size_t match_cl100k(const unsigned char *s, size_t n, size_t i, int max_digits) {
    size_t e;
    if (s[i] == '\'' && (e = contraction(s, n, i, 1)) != 0) return e;
    int len, c = char_class(s, i, &len);
    if (c == CC_LETTER) return class_run(s, n, i, CC_LETTER);
    if (c == CC_NUMBER) {
        e = i + (size_t)len;
        for (int k = 1; k < max_digits && e < n && char_class(s, e, &len) == CC_NUMBER; k++) e += (size_t)len;
        return e;
    }
    size_t next = i + (size_t)len;
    int len2, c2 = next < n ? char_class(s, next, &len2) : -1;
    // one character that is not \r, \n, a letter or a digit, then letters
    if (c2 == CC_LETTER && s[i] != '\r' && s[i] != '\n') return class_run(s, n, next, CC_LETTER);
    // symbols (after an optional space), then any \r \n
    if (c == CC_OTHER || (s[i] == ' ' && c2 == CC_OTHER)) {
        e = class_run(s, n, c == CC_OTHER ? i : next, CC_OTHER);
        while (e < n && (s[e] == '\r' || s[e] == '\n')) e++;
        return e;
    }
    // white space: up to its last \r or \n if it holds one (\s*[\r\n]+), else as GPT-2
    size_t j = i, nl = 0;
    while (j < n && char_class(s, j, &len) == CC_SPACE) {
        if (s[j] == '\r' || s[j] == '\n') nl = j + 1;
        j += (size_t)len;
    }
    return nl ? nl : space_run(s, n, i);
}

// HF's regex engines (Oniguruma, Rust regex) define \s as Unicode White_Space; PCRE2's UCP \s also
// matches U+180E. Spell \s and \S out so every engine version agrees.
static char *translate_regex(const char *pat) {
    size_t n = strlen(pat);
    Buf b = {0};
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[++i];
            if (d == 's') buf_append(&b, in_class ? WS_CLASS : "[" WS_CLASS "]", strlen(in_class ? WS_CLASS : "[" WS_CLASS "]"));
            else if (d == 'S' && !in_class) buf_append(&b, "[^" WS_CLASS "]", strlen("[^" WS_CLASS "]"));
            else { char e[2] = {c, d}; buf_append(&b, e, 2); }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            buf_append(&b, &c, 1);
            if (i + 1 < n && pat[i + 1] == '^') buf_append(&b, &pat[++i], 1);
            if (i + 1 < n && pat[i + 1] == ']') buf_append(&b, &pat[++i], 1); // literal ']' first in class
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        buf_append(&b, &c, 1);
    }
    if (!b.data) buf_append(&b, "", 0);
    return b.data;
}

// Compiles pat (an Oniguruma-style pattern, or a literal string when literal is set).
static int regex_compile(Regex *re, const char *pat, int literal, char *err, size_t errlen) {
    re->kind = RE_PCRE;
    if (!literal) {
        re->kind = !strcmp(pat, GPT2_PATTERN) ? RE_GPT2 : !strcmp(pat, CL100K_PATTERN) ? RE_CL100K :
                   !strcmp(pat, QWEN2_PATTERN) ? RE_QWEN2 : RE_PCRE;
        if (re->kind != RE_PCRE) { re->code = NULL; re->jit = 0; return 0; }
    }
    char *p = NULL;
    // \C (one byte) could cut a character in two: refused, so every piece stays valid UTF-8
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C;
    if (literal) { p = strdup(pat); opts = PCRE2_UTF | PCRE2_LITERAL; }   // LITERAL refuses UCP
    else p = translate_regex(pat);
    if (!p) { snprintf(err, errlen, "out of memory"); return -1; }
    int ec; PCRE2_SIZE eo;
    re->code = pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    free(p);
    if (!re->code) {
        char msg[256];
        pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
        snprintf(err, errlen, "regex does not compile at offset %zu: %s", (size_t)eo, msg);
        return -1;
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

// ----------------------------------------------------------------------------------------------
// 4. the Tokenizer

enum { NORM_NFC, NORM_NFD, NORM_PREPEND, NORM_REPLACE, NORM_STRIP };
typedef struct {
    int type;
    char *str;          // Prepend: the prefix; Replace: the content
    int re;             // Replace: regex index
    int left, right;    // Strip
} NormOp;

enum { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE };
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct {
    int type;
    int re;             // Split / ByteLevel(use_regex): regex index, -1 for none
    int behavior, invert;
    int add_prefix_space;                    // ByteLevel
    char repl[8]; int repl_len; int scheme;  // Metaspace
    int split;                               // Metaspace
} PreOp;

enum { DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP };
typedef struct {
    int type;
    char *pat, *content;   // Replace (string pattern)
    char repl[8]; int repl_len; int scheme;   // Metaspace
    uint32_t strip_char; int start, stop;     // Strip
} DecOp;

typedef struct {
    char *content; size_t len;   // as matched: normalized content for normalized tokens
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} AddedToken;

// Leftmost-longest matcher over a few added tokens: candidates bucketed by first byte,
// longest first within a bucket. The bytes all of a bucket's tokens begin with are checked once
// before its tokens one by one (Llama-3's 256 added tokens all begin "<|": text with "<" but not
// "<|" costs one compare, not 256).
typedef struct {
    int n;
    int *idx;            // indices into tok->added, sorted by (first byte, length desc)
    int start[257];      // bucket boundaries by first byte
    size_t common[256];  // length of the prefix common to a bucket's tokens
    int nfirst; unsigned char first;  // when every token starts with one byte: memchr scan
} Matcher;

#define MAX_REGEX 8
#define MAX_OPS 8

struct Tokenizer {
    char *path;
    char desc[256];
    // model
    StrMap vocab;        // token string as written in tokenizer.json -> id
    StrMap enc;          // token in the encoder's domain (raw bytes for byte-level) -> id
    PairMap merges;
    int byte_level;      // the pre-tokenizer ends with ByteLevel: pieces are raw bytes
    int32_t byte_id[256];       // byte-level: id of each single byte, -1 if absent
    int all_bytes;              // every byte has a token: byte-level pieces need no unit_lookup
    uint64_t cross[256][4];     // byte-level: bit b of row a set when some merge's left token ends with byte a
                                // and its right token starts with byte b (see byte_level_bpe)
    int cuts;                   // byte_level_bpe looks for places to cut (few bits of cross are set)
    int32_t *bmp_id;            // otherwise: id of each BMP code point as a token, -1 if absent
    uint32_t *char_start;       // byte-level: per BMP code point, (token id << 5) | CHAR_* flags where BPE may
                                // start from the character's token instead of its bytes ((offset in char_pool
                                // << 5) | CHAR_SPLIT | flags for several tokens); 0 where it may not
    int32_t *char_pool; size_t char_pool_n, char_pool_cap;
    uint64_t *pair_filter;      // a blocked Bloom filter of the merge pairs (two bits a pair in one word):
    size_t filter_mask;         // most pairs BPE looks up have no merge, and the filter fits in cache
    int32_t fallback_id[256];   // byte_fallback: id of "<0xNN>", -1 if absent
    int unk_id, fuse_unk, byte_fallback, ignore_merges;
    size_t max_token_len;       // the longest token in the encoder's domain, in bytes
    uint64_t *enc_filter;       // ignore_merges: one bit per token (by the top bits of its hash_bytes) in 8
    int enc_filter_shift;       // bits a token; most pieces of CJK text are not tokens, and their lookup in
                                // enc (2-3 cache misses) is skipped where the bit is clear
    int word_split;      // pieces may be cut before each word-initial U+2581 (see load_model)
    char *cont_prefix, *end_suffix;   // NULL when empty
    // pipeline
    Regex re[MAX_REGEX]; int nre;
    NormOp norm[MAX_OPS]; int nnorm;
    PreOp pre[MAX_OPS]; int npre;
    DecOp dec[MAX_OPS]; int ndec; int has_decoder;
    int word_re;          // regex for single_word boundaries, -1 if unused
    // added tokens
    AddedToken *added; int nadded;
    Matcher m_raw, m_norm;
    StrMap added_map;     // content -> id
    // post-processor
    int32_t prefix[8]; int nprefix;
    int32_t suffix[8]; int nsuffix;
    // ids
    int vocab_size;
    char **id_str;        // id -> token string (added tokens: their content), NULL if unused
    int eos_id, bos_id;
};

// A pre-token cache entry: key bytes and ids live in the state's arenas.
typedef struct { uint64_t hash, head; uint32_t koff, klen, ioff, nids; } CacheSlot;   // head: load_short of a key of <= 8 bytes
#define CACHE_SLOTS 65536      // power of two; the cache is reset when half full
#define CACHE_MAX_PIECE 48     // pieces this long or longer are not cached: long ones seldom recur
#define CACHE_MAX_WIDE 13      // the same for pieces that end in a multi-byte character: CJK runs of 5 characters
                               // or more recur seldom (9% of 15-byte pieces hit on Chinese, 2% of longer ones)

typedef struct { uint64_t key; int32_t id; } HeapItem;   // key = rank << 32 | position

typedef struct { size_t off, len; int is_match; } Seg;
typedef struct { Seg *data; size_t len, cap; } SegBuf;

struct TokenizerState {
    const Tokenizer *tok;
    pcre2_match_data *md[MAX_REGEX];
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    IdBuf out;
    Buf norm;               // normalized segment
    Buf arena;              // text made by pre-tokenizers
    const char *root;       // the segment being pre-tokenized
    SegBuf seg[MAX_OPS];    // per pre-tokenizer level
    Buf tmp, tmp2;          // scratch for normalizers / unit lookups
    // BPE scratch
    int32_t *sym_id, *sym_prev, *sym_next; size_t sym_cap;
    HeapItem *heap; size_t heap_cap, heap_n;
    // cache
    CacheSlot *cache; size_t cache_n;
    Buf cache_keys; IdBuf cache_ids;
    int error;              // set on regex failure / out of memory during an encode
    int flags;              // flags of the current encode call
    int pieces_only;        // tokenizer_pretokenize: out gets pre-token lengths, not ids
};

// bytes_to_unicode: the printable bytes map to themselves, the other 68 to U+0100.. in order.
static void byte_level_alphabet(uint32_t byte_to_cp[256], int16_t cp_to_byte[512]) {
    int n = 0;
    for (int i = 0; i < 512; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

// ----------------------------------------------------------------------------------------------
// 5. loading tokenizer.json

typedef struct { const char *path; char *err; size_t errlen; } LoadCtx;

static void fail(LoadCtx *c, const char *fmt, ...) {
    char msg[768];
    va_list ap; va_start(ap, fmt); vsnprintf(msg, sizeof msg, fmt, ap); va_end(ap);
    snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
}

static const char *jstr(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}
static int jbool(json_t *obj, const char *key, int dflt) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int add_regex(Tokenizer *t, LoadCtx *c, const char *where, const char *pat, int literal) {
    if (t->nre == MAX_REGEX) { fail(c, "%s: too many regexes", where); return -1; }
    char e[400];
    if (regex_compile(&t->re[t->nre], pat, literal, e, sizeof e)) { fail(c, "%s: %s", where, e); return -1; }
    return t->nre++;
}

static int load_normalizer(Tokenizer *t, LoadCtx *c, json_t *n, const char *where) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) { fail(c, "%s: missing \"type\"", where); return -1; }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        if (!json_is_array(arr)) { fail(c, "%s.normalizers: expected an array", where); return -1; }
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char w[128]; snprintf(w, sizeof w, "%s.normalizers[%zu]", where, i);
            if (load_normalizer(t, c, json_array_get(arr, i), w)) return -1;
        }
        return 0;
    }
    if (t->nnorm == MAX_OPS) { fail(c, "%s: too many normalizers", where); return -1; }
    NormOp *op = &t->norm[t->nnorm];
    memset(op, 0, sizeof *op);
    op->re = -1;
    if (!strcmp(type, "NFC")) op->type = NORM_NFC;
    else if (!strcmp(type, "NFD")) op->type = NORM_NFD;
    else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) { fail(c, "%s.prepend: expected a string", where); return -1; }
        op->type = NORM_PREPEND; op->str = strdup(p);
    } else if (!strcmp(type, "Replace")) {
        json_t *pat = json_object_get(n, "pattern");
        const char *content = jstr(n, "content");
        const char *s = jstr(pat, "String"), *r = jstr(pat, "Regex");
        if (!content || (!s && !r)) { fail(c, "%s: Replace needs pattern.String or pattern.Regex and content", where); return -1; }
        op->type = NORM_REPLACE; op->str = strdup(content);
        if ((op->re = add_regex(t, c, where, s ? s : r, s != NULL)) < 0) return -1;
    } else if (!strcmp(type, "Strip")) {
        op->type = NORM_STRIP; op->left = jbool(n, "strip_left", 1); op->right = jbool(n, "strip_right", 1);
    } else {
        fail(c, "%s: normalizer type \"%s\" is not supported (supported: NFC, NFD, Prepend, Replace, Strip, Sequence)", where, type);
        return -1;
    }
    t->nnorm++;
    return 0;
}

static int parse_behavior(const char *b) {
    if (!b) return -1;
    if (!strcmp(b, "Removed")) return SPLIT_REMOVED;
    if (!strcmp(b, "Isolated")) return SPLIT_ISOLATED;
    if (!strcmp(b, "MergedWithPrevious")) return SPLIT_MERGED_PREV;
    if (!strcmp(b, "MergedWithNext")) return SPLIT_MERGED_NEXT;
    if (!strcmp(b, "Contiguous")) return SPLIT_CONTIGUOUS;
    return -1;
}

static int parse_metaspace(LoadCtx *c, json_t *n, const char *where, char repl[8], int *repl_len, int *scheme) {
    const char *r = jstr(n, "replacement");
    if (!r || !*r || strlen(r) > 4 || (size_t)utf8_len((unsigned char)r[0]) != strlen(r)) {
        fail(c, "%s.replacement: expected one character", where); return -1;
    }
    strcpy(repl, r); *repl_len = (int)strlen(r);
    *scheme = PREPEND_ALWAYS;
    const char *ps = jstr(n, "prepend_scheme");
    if (ps) {
        if (!strcmp(ps, "always")) *scheme = PREPEND_ALWAYS;
        else if (!strcmp(ps, "first")) *scheme = PREPEND_FIRST;
        else if (!strcmp(ps, "never")) *scheme = PREPEND_NEVER;
        else { fail(c, "%s.prepend_scheme: unknown value \"%s\"", where, ps); return -1; }
    }
    json_t *aps = json_object_get(n, "add_prefix_space");
    if (json_is_false(aps)) *scheme = PREPEND_NEVER;   // old files: add_prefix_space=false means never
    return 0;
}

static int load_pretokenizer(Tokenizer *t, LoadCtx *c, json_t *n, const char *where) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) { fail(c, "%s: missing \"type\"", where); return -1; }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "pretokenizers");
        if (!json_is_array(arr)) { fail(c, "%s.pretokenizers: expected an array", where); return -1; }
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char w[128]; snprintf(w, sizeof w, "%s.pretokenizers[%zu]", where, i);
            if (load_pretokenizer(t, c, json_array_get(arr, i), w)) return -1;
        }
        return 0;
    }
    if (t->npre == MAX_OPS) { fail(c, "%s: too many pre-tokenizers", where); return -1; }
    if (t->byte_level) { fail(c, "%s: a pre-tokenizer after ByteLevel is not supported", where); return -1; }
    PreOp *op = &t->pre[t->npre];
    memset(op, 0, sizeof *op);
    op->re = -1;
    if (!strcmp(type, "ByteLevel")) {
        op->type = PRE_BYTELEVEL;
        op->add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1) && (op->re = add_regex(t, c, where, GPT2_PATTERN, 0)) < 0) return -1;
        op->behavior = SPLIT_ISOLATED;
        t->byte_level = 1;
    } else if (!strcmp(type, "Split")) {
        json_t *pat = json_object_get(n, "pattern");
        const char *s = jstr(pat, "String"), *r = jstr(pat, "Regex");
        if (!s && !r) { fail(c, "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", where); return -1; }
        op->type = PRE_SPLIT;
        if ((op->behavior = parse_behavior(jstr(n, "behavior"))) < 0) { fail(c, "%s.behavior: unknown or missing", where); return -1; }
        op->invert = jbool(n, "invert", 0);
        if ((op->re = add_regex(t, c, where, s ? s : r, s != NULL)) < 0) return -1;
    } else if (!strcmp(type, "Digits")) {
        // Digits = split on numeric chars (Rust char::is_numeric = \p{N}), one by one or in runs
        op->type = PRE_SPLIT; op->behavior = SPLIT_ISOLATED;
        if ((op->re = add_regex(t, c, where, jbool(n, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", 0)) < 0) return -1;
    } else if (!strcmp(type, "Metaspace")) {
        op->type = PRE_METASPACE;
        if (parse_metaspace(c, n, where, op->repl, &op->repl_len, &op->scheme)) return -1;
        op->split = jbool(n, "split", 1);
    } else {
        fail(c, "%s: pre-tokenizer type \"%s\" is not supported (supported: ByteLevel, Split, Metaspace, Digits, Sequence)", where, type);
        return -1;
    }
    t->npre++;
    return 0;
}

static int load_decoder(Tokenizer *t, LoadCtx *c, json_t *n, const char *where) {
    if (json_is_null(n) || !n) return 0;
    t->has_decoder = 1;
    const char *type = jstr(n, "type");
    if (!type) { fail(c, "%s: missing \"type\"", where); return -1; }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "decoders");
        if (!json_is_array(arr)) { fail(c, "%s.decoders: expected an array", where); return -1; }
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char w[128]; snprintf(w, sizeof w, "%s.decoders[%zu]", where, i);
            if (load_decoder(t, c, json_array_get(arr, i), w)) return -1;
        }
        return 0;
    }
    if (t->ndec == MAX_OPS) { fail(c, "%s: too many decoders", where); return -1; }
    DecOp *op = &t->dec[t->ndec];
    memset(op, 0, sizeof *op);
    if (!strcmp(type, "ByteLevel")) op->type = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) op->type = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) op->type = DEC_FUSE;
    else if (!strcmp(type, "Metaspace")) {
        op->type = DEC_METASPACE;
        if (parse_metaspace(c, n, where, op->repl, &op->repl_len, &op->scheme)) return -1;
    } else if (!strcmp(type, "Replace")) {
        json_t *pat = json_object_get(n, "pattern");
        const char *s = jstr(pat, "String"), *content = jstr(n, "content");
        if (!s || !content) { fail(c, "%s: only Replace with pattern.String is supported in decoders", where); return -1; }
        op->type = DEC_REPLACE; op->pat = strdup(s); op->content = strdup(content);
    } else if (!strcmp(type, "Strip")) {
        const char *s = jstr(n, "content");
        if (!s || !*s) { fail(c, "%s.content: expected one character", where); return -1; }
        op->type = DEC_STRIP;
        utf8_decode((const unsigned char *)s, &op->strip_char);
        op->start = (int)json_integer_value(json_object_get(n, "start"));
        op->stop = (int)json_integer_value(json_object_get(n, "stop"));
    } else {
        fail(c, "%s: decoder type \"%s\" is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)", where, type);
        return -1;
    }
    t->ndec++;
    return 0;
}

// Finds the id of a post-processor special token: the template's special_tokens map, else the vocab.
static int template_ids(Tokenizer *t, json_t *special, const char *name, int32_t *out, int *nout, int max) {
    json_t *st = json_object_get(special, name);
    json_t *ids = json_object_get(st, "ids");
    if (json_is_array(ids)) {
        for (size_t i = 0; i < json_array_size(ids); i++) {
            json_int_t v = json_integer_value(json_array_get(ids, i));
            if (*nout == max || !json_is_integer(json_array_get(ids, i)) || v < 0 || v >= tokenizer_vocab_size(t)) return -1;
            out[(*nout)++] = (int32_t)v;
        }
        return 0;
    }
    int id = tokenizer_token_id(t, name);
    if (id < 0 || *nout == max) return -1;
    out[(*nout)++] = id;
    return 0;
}

static int load_postprocessor(Tokenizer *t, LoadCtx *c, json_t *n, const char *where) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) { fail(c, "%s: missing \"type\"", where); return -1; }
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "processors");
        for (size_t i = 0; i < json_array_size(arr); i++) {
            char w[128]; snprintf(w, sizeof w, "%s.processors[%zu]", where, i);
            if (load_postprocessor(t, c, json_array_get(arr, i), w)) return -1;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0;   // only trims offsets
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(n, "single"), *special = json_object_get(n, "special_tokens");
        if (!json_is_array(single)) { fail(c, "%s.single: expected an array", where); return -1; }
        int seen_a = 0;
        t->nprefix = t->nsuffix = 0;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *item = json_array_get(single, i);
            json_t *sp = json_object_get(item, "SpecialToken");
            if (json_object_get(item, "Sequence")) { seen_a = 1; continue; }
            const char *name = jstr(sp, "id");
            if (!name) { fail(c, "%s.single[%zu]: expected SpecialToken or Sequence", where, i); return -1; }
            int r = seen_a ? template_ids(t, special, name, t->suffix, &t->nsuffix, 8)
                           : template_ids(t, special, name, t->prefix, &t->nprefix, 8);
            if (r) { fail(c, "%s.single[%zu]: unknown special token \"%s\"", where, i, name); return -1; }
        }
        return 0;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        json_t *cls = json_object_get(n, "cls"), *sep = json_object_get(n, "sep");
        if (!json_is_array(cls) || !json_is_array(sep)) { fail(c, "%s: expected cls and sep", where); return -1; }
        json_t *pair[2] = {cls, sep};
        for (int i = 0; i < 2; i++) {
            json_t *id = json_array_get(pair[i], 1);
            json_int_t v = json_integer_value(id);
            if (!json_is_integer(id) || v < 0 || v >= tokenizer_vocab_size(t)) {
                fail(c, "%s.%s: id must be an integer in [0, %d)", where, i ? "sep" : "cls", tokenizer_vocab_size(t));
                return -1;
            }
        }
        t->nprefix = t->nsuffix = 1;
        t->prefix[0] = (int32_t)json_integer_value(json_array_get(cls, 1));
        t->suffix[0] = (int32_t)json_integer_value(json_array_get(sep, 1));
        return 0;
    }
    fail(c, "%s: post-processor type \"%s\" is not supported (supported: TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence)", where, type);
    return -1;
}

typedef struct { unsigned char first; size_t len; int idx; } MatchKey;
static int cmp_matchkey(const void *pa, const void *pb) {
    const MatchKey *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->idx - b->idx;
}

static int build_matcher(Tokenizer *t, Matcher *m, int normalized) {
    m->idx = malloc((size_t)(t->nadded + 1) * sizeof(int));
    MatchKey *keys = malloc((size_t)(t->nadded + 1) * sizeof(MatchKey));
    if (!m->idx || !keys) { free(keys); return -1; }
    m->n = 0;
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].normalized == normalized && t->added[i].len > 0)
            keys[m->n++] = (MatchKey){(unsigned char)t->added[i].content[0], t->added[i].len, i};
    qsort(keys, (size_t)m->n, sizeof(MatchKey), cmp_matchkey);
    for (int i = 0; i < m->n; i++) m->idx[i] = keys[i].idx;
    free(keys);
    int j = 0;
    m->nfirst = 0;
    for (int b = 0; b < 256; b++) {
        m->start[b] = j;
        int before = j;
        while (j < m->n && (unsigned char)t->added[m->idx[j]].content[0] == b) j++;
        if (j > before) { m->nfirst++; m->first = (unsigned char)b; }
        m->common[b] = 0;
        if (j == before) continue;
        const AddedToken *a0 = &t->added[m->idx[before]];
        m->common[b] = a0->len;
        for (int q = before + 1; q < j; q++) {
            const AddedToken *a = &t->added[m->idx[q]];
            size_t c = 0;
            while (c < m->common[b] && c < a->len && a->content[c] == a0->content[c]) c++;
            m->common[b] = c;
        }
    }
    m->start[256] = j;
    return 0;
}

// The Bloom filter of the merge pairs: one 64-bit word per pair hash bucket, about 16-32 bits a pair.
static int build_pair_filter(Tokenizer *t) {
    size_t words = 1024;
    while (words * 4 < t->merges.n) words *= 2;
    t->pair_filter = calloc(words, sizeof(uint64_t));
    if (!t->pair_filter) return -1;
    t->filter_mask = words - 1;
    for (size_t i = 0; i <= t->merges.mask; i++) {
        if (t->merges.slots[i] == UINT64_MAX) continue;
        uint64_t h = pair_hash(t->merges.slots[i] >> 22);
        t->pair_filter[pair_filter_word(h, t->filter_mask)] |= pair_filter_bits(h);
    }
    return 0;
}

// BPE of a few symbols on their own, the plain way: returns the count left; *max_rank gets the
// highest rank applied (0 when none).
static int bpe_small(const Tokenizer *t, int32_t *ids, int n, uint32_t *max_rank) {
    *max_rank = 0;
    for (;;) {
        int best = -1; uint32_t best_rank = UINT32_MAX; int32_t best_id = -1;
        for (int i = 0; i + 1 < n; i++) {
            uint32_t r = pairmap_rank(&t->merges, ids[i], ids[i + 1]);
            if (r < best_rank) { best = i; best_rank = r; best_id = pairmap_merged_id(&t->merges, r); }
        }
        if (best < 0) return n;
        if (best_rank > *max_rank) *max_rank = best_rank;
        ids[best] = best_id;
        for (int i = best + 1; i + 1 < n; i++) ids[i] = ids[i + 1];
        n--;
    }
}

// Where byte-level BPE may start a multi-byte character from its own token instead of its bytes.
//
// Let character c (bytes b1..bk) become one token t_c when BPE runs on its bytes alone, with R_c the
// highest rank that takes. Inside a longer piece, c's bytes merge exactly as alone, and the pairs
// across its edges only start to merge once t_c is complete, when every merge that could join part
// of c to a neighbour ranks above R_c: then some merge inside c (rank <= R_c) always goes first.
// Those are: (x, t_c) and (t_c, y) for any x, y (BPE files list a token's merges after the merge that
// makes it, so this nearly always holds); (s, y) with s a proper suffix of c (continuation bytes) and
// y after it; (x, p) with p a proper prefix of c and x before it. The last two are told apart by
// what the neighbour is (ASCII byte or part of another multi-byte character) since " " + lead byte
// merges are common: each character gets four flags, one per side and kind of neighbour. When they
// hold, merging the piece from t_c gives the same ids as from c's bytes. A character whose bytes end as
// several tokens f1..fm (not in the vocabulary) starts from those: f1 and fm are then a proper prefix
// and suffix of c, and the same edge conditions cover the pairs they make with the neighbours.
enum { CHAR_LEFT_ASCII = 1, CHAR_LEFT_MULTI = 2, CHAR_RIGHT_ASCII = 4, CHAR_RIGHT_MULTI = 8, CHAR_SPLIT = 16 };

// Can a merge join byte a (ending a token) to byte b (starting the next)? See byte_level_bpe.
static int crossable(const Tokenizer *t, unsigned a, unsigned b) { return (int)(t->cross[a][b >> 6] >> (b & 63)) & 1; }

static int build_char_start(Tokenizer *t) {
    size_t nv = (size_t)t->vocab_size + 1;
    // per token: bytes in the encoder's domain, and the lowest rank of each kind of merge it is part of
    const char **tb = calloc(nv, sizeof *tb);
    uint32_t *tl = calloc(nv, sizeof *tl);
    uint32_t *lo[6];   // as left, as right, suffix before ASCII, suffix before lead, prefix after ASCII, after continuation
    for (int k = 0; k < 6; k++) lo[k] = malloc(nv * sizeof(uint32_t));
    t->char_start = calloc(0x10000, sizeof(uint32_t));
    int ok = tb && tl && t->char_start;
    for (int k = 0; k < 6; k++) ok = ok && lo[k];
    if (ok) {
        for (int k = 0; k < 6; k++) for (size_t i = 0; i < nv; i++) lo[k][i] = UINT32_MAX;
        for (size_t e = 0; e < t->enc.n; e++) {
            int32_t id = t->enc.val[e];
            if (id >= 0 && (size_t)id < nv) { tb[id] = t->enc.arena + t->enc.off[e]; tl[id] = t->enc.klen[e]; }
        }
        for (size_t i = 0; i <= t->merges.mask; i++) {
            uint64_t m = t->merges.slots[i];
            if (m == UINT64_MAX) continue;
            uint32_t a = (uint32_t)(m >> 43), b = (uint32_t)(m >> 22) & PAIR_MAX_ID, r = (uint32_t)m & ((1u << 22) - 1);
            if (lo[0][a] > r) lo[0][a] = r;
            if (lo[1][b] > r) lo[1][b] = r;
            if (!tb[a] || !tb[b] || !tl[a] || !tl[b]) continue;
            const unsigned char *x = (const unsigned char *)tb[a], *y = (const unsigned char *)tb[b];
            t->cross[x[tl[a] - 1]][y[0] >> 6] |= 1ull << (y[0] & 63);
            int x_cont = 1;   // x all continuation bytes: a proper suffix of a character
            for (uint32_t j = 0; j < tl[a]; j++) if ((x[j] & 0xC0) != 0x80) x_cont = 0;
            int y_prefix = y[0] >= 0xC0 && (int)tl[b] < utf8_len(y[0]);   // a lead byte and not all of the character
            for (uint32_t j = 1; j < tl[b]; j++) if ((y[j] & 0xC0) != 0x80) y_prefix = 0;
            if (x_cont && y[0] < 0x80 && lo[2][a] > r) lo[2][a] = r;
            if (x_cont && y[0] >= 0xC0 && lo[3][a] > r) lo[3][a] = r;
            unsigned char xl = x[tl[a] - 1];
            if (y_prefix && xl < 0x80 && lo[4][b] > r) lo[4][b] = r;
            if (y_prefix && (xl & 0xC0) == 0x80 && lo[5][b] > r) lo[5][b] = r;
        }
        for (uint32_t cp = 0x80; cp < 0x10000; cp++) {
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            char u[4]; int k = utf8_encode(cp, u);
            int32_t sym[4]; uint32_t r;
            int all = 1;
            for (int j = 0; j < k; j++) { sym[j] = t->byte_id[(unsigned char)u[j]]; if (sym[j] < 0) all = 0; }
            if (!all) continue;
            int m = bpe_small(t, sym, k, &r);
            if (m == k) continue;   // nothing merges inside: the bytes are where BPE starts anyway
            if (m == 1 && (lo[0][sym[0]] <= r || lo[1][sym[0]] <= r)) continue;
            uint32_t flags = CHAR_LEFT_ASCII | CHAR_LEFT_MULTI | CHAR_RIGHT_ASCII | CHAR_RIGHT_MULTI;
            for (int j = 1; j < k; j++) {
                int32_t p = strmap_get(&t->enc, u, (size_t)j), q = strmap_get(&t->enc, u + j, (size_t)(k - j));
                if (p >= 0 && lo[4][p] <= r) flags &= ~(uint32_t)CHAR_LEFT_ASCII;
                if (p >= 0 && lo[5][p] <= r) flags &= ~(uint32_t)CHAR_LEFT_MULTI;
                if (q >= 0 && lo[2][q] <= r) flags &= ~(uint32_t)CHAR_RIGHT_ASCII;
                if (q >= 0 && lo[3][q] <= r) flags &= ~(uint32_t)CHAR_RIGHT_MULTI;
            }
            if (m == 1) { t->char_start[cp] = ((uint32_t)sym[0] << 5) | flags; continue; }
            // several tokens (a character not in the vocabulary): count, then (id, byte length) each
            if (t->char_pool_n + 1 + 2 * (size_t)m > t->char_pool_cap) {
                size_t cap = t->char_pool_cap ? t->char_pool_cap * 2 : 4096;
                int32_t *q = realloc(t->char_pool, cap * sizeof(int32_t));
                if (!q) { ok = 0; break; }
                t->char_pool = q; t->char_pool_cap = cap;
            }
            t->char_start[cp] = ((uint32_t)t->char_pool_n << 5) | CHAR_SPLIT | flags;
            t->char_pool[t->char_pool_n++] = m;
            for (int j = 0; j < m; j++) { t->char_pool[t->char_pool_n++] = sym[j]; t->char_pool[t->char_pool_n++] = (int32_t)tl[sym[j]]; }
        }
    }
    free(tb); free(tl);
    for (int k = 0; k < 6; k++) free(lo[k]);
    return ok ? 0 : -1;
}

static int load_model(Tokenizer *t, LoadCtx *c, json_t *model) {
    if (!json_is_object(model)) { fail(c, "model: missing or not an object"); return -1; }
    const char *type = jstr(model, "type");
    if (type && strcmp(type, "BPE")) { fail(c, "model.type: \"%s\" is not supported (supported: BPE)", type); return -1; }
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) { fail(c, "model.vocab: missing or not an object"); return -1; }
    if (!json_is_array(merges)) { fail(c, "model.merges: missing or not an array"); return -1; }
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) != 0.0) { fail(c, "model.dropout: BPE dropout is not supported"); return -1; }
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *cp = jstr(model, "continuing_subword_prefix"), *es = jstr(model, "end_of_word_suffix");
    if (cp && *cp) t->cont_prefix = strdup(cp);
    if (es && *es) t->end_suffix = strdup(es);

    uint32_t b2c[256]; int16_t c2b[512];
    byte_level_alphabet(b2c, c2b);

    const char *key; json_t *val;
    int max_id = -1;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > 0x7FFFFFF) {
            fail(c, "model.vocab[\"%s\"]: expected a non-negative integer id", key); return -1;
        }
        int id = (int)json_integer_value(val);
        size_t klen = strlen(key);   // keys with NUL can't be tokens of UTF-8 text anyway
        if (strmap_put(&t->vocab, key, klen, id)) { fail(c, "out of memory"); return -1; }
        if (id > max_id) max_id = id;
        if (t->byte_level) {
            // the encoder works on raw bytes: map each alphabet char back; tokens with other
            // characters can never be produced from bytes, so they stay out of the encoder map
            char raw[1024]; size_t rn = 0; int ok = klen < sizeof raw;
            for (size_t i = 0; ok && i < klen;) {
                uint32_t ch; i += (size_t)utf8_decode((const unsigned char *)key + i, &ch);
                if (ch >= 512 || c2b[ch] < 0) ok = 0; else raw[rn++] = (char)c2b[ch];
            }
            if (ok && strmap_put(&t->enc, raw, rn, id)) { fail(c, "out of memory"); return -1; }
        } else if (strmap_put(&t->enc, key, klen, id)) { fail(c, "out of memory"); return -1; }
    }
    t->vocab_size = max_id + 1;
    for (size_t e = 0; e < t->enc.n; e++) if (t->enc.klen[e] > t->max_token_len) t->max_token_len = t->enc.klen[e];
    if (t->ignore_merges) {
        int bits = 10;
        while (((size_t)1 << bits) < t->enc.n * 8) bits++;
        t->enc_filter = calloc(((size_t)1 << bits) / 64, sizeof(uint64_t));
        if (!t->enc_filter) { fail(c, "out of memory"); return -1; }
        t->enc_filter_shift = 64 - bits;
        for (size_t e = 0; e < t->enc.n; e++) {
            uint64_t b = t->enc.hash[e] >> t->enc_filter_shift;
            t->enc_filter[b >> 6] |= 1ull << (b & 63);
        }
    }

    const char *unk = jstr(model, "unk_token");
    t->unk_id = -1;
    if (unk) {
        t->unk_id = strmap_get(&t->vocab, unk, strlen(unk));
        if (t->unk_id < 0) { fail(c, "model.unk_token: \"%s\" is not in the vocab", unk); return -1; }
    }

    // merges: "a b" strings (legacy) or ["a", "b"] pairs; rank = position
    size_t nm = json_array_size(merges);
    if (pairmap_init(&t->merges, nm)) { fail(c, "out of memory"); return -1; }
    size_t plen = t->cont_prefix ? strlen(t->cont_prefix) : 0;
    int joins_space = 0;
    Buf tmp = {0};
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b; size_t alen, blen;
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) { fail(c, "model.merges[%zu]: \"%s\" is not two tokens separated by one space", i, s); free(tmp.data); return -1; }
            a = s; alen = (size_t)(sp - s); b = sp + 1; blen = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0)); alen = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1)); blen = json_string_length(json_array_get(m, 1));
        } else { fail(c, "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i); free(tmp.data); return -1; }
        int32_t ia = strmap_get(&t->vocab, a, alen), ib = strmap_get(&t->vocab, b, blen);
        tmp.len = 0;
        buf_append(&tmp, a, alen);
        if (blen >= plen) buf_append(&tmp, b + plen, blen - plen);
        int32_t inew = strmap_get(&t->vocab, tmp.data, tmp.len);
        if (ia < 0 || ib < 0 || inew < 0) {
            fail(c, "model.merges[%zu]: token \"%.*s\" is not in the vocab", i,
                 (int)(ia < 0 ? alen : ib < 0 ? blen : tmp.len), ia < 0 ? a : ib < 0 ? b : tmp.data);
            free(tmp.data); return -1;
        }
        if (ia > PAIR_MAX_ID || ib > PAIR_MAX_ID || inew > PAIR_MAX_ID || i > PAIR_MAX_RANK) {
            fail(c, "model.merges[%zu]: ids above %d or more than %u merges are not supported", i, PAIR_MAX_ID, PAIR_MAX_RANK + 1);
            free(tmp.data); return -1;
        }
        pairmap_put(&t->merges, ia, ib, (uint32_t)i, inew);
        // a merge joining something that holds a non-U+2581 char with something starting with U+2581?
        if (blen >= 3 && !memcmp(b, "\xE2\x96\x81", 3)) {
            int all_space = alen % 3 == 0;
            for (size_t k = 0; all_space && k < alen; k += 3) if (memcmp(a + k, "\xE2\x96\x81", 3)) all_space = 0;
            if (!all_space) joins_space = 1;
        }
    }
    free(tmp.data);
    t->merges.rank_offset = nm > 0 ? t->merges.id_of_rank[0] : 0;
    t->merges.rank_offset_ok = 1;
    for (size_t i = 0; i < nm; i++)
        if (t->merges.id_of_rank[i] != (int32_t)i + t->merges.rank_offset) t->merges.rank_offset_ok = 0;
    // SentencePiece-style vocabularies (Metaspace, or Prepend+Replace) make the whole text one BPE
    // word. When no merge joins a symbol holding a non-U+2581 char with one starting with U+2581, no
    // symbol ever spans such a boundary, and merges on either side never interact: cutting the word
    // there gives the same ids, and the pieces (words) hit the cache.
    t->word_split = !t->byte_level && !t->ignore_merges && !t->cont_prefix && !t->end_suffix && !joins_space &&
                    strmap_get(&t->vocab, "\xE2\x96\x81", 3) >= 0;

    // fast tables for single units
    for (int b = 0; b < 256; b++) {
        char name[8]; snprintf(name, sizeof name, "<0x%02X>", b);
        t->fallback_id[b] = strmap_get(&t->vocab, name, strlen(name));
        char u[4]; int n = utf8_encode(b2c[b], u);
        t->byte_id[b] = strmap_get(&t->vocab, u, (size_t)n);
    }
    t->all_bytes = 1;
    for (int b = 0; b < 256; b++) if (t->byte_id[b] < 0) t->all_bytes = 0;
    if (!t->byte_level) {
        t->bmp_id = malloc(0x10000 * sizeof(int32_t));
        if (!t->bmp_id) { fail(c, "out of memory"); return -1; }
        for (uint32_t ch = 0; ch < 0x10000; ch++) t->bmp_id[ch] = -1;
        for (size_t e = 0; e < t->vocab.n; e++) {
            const unsigned char *s = (const unsigned char *)t->vocab.arena + t->vocab.off[e];
            uint32_t ch;
            if (t->vocab.klen[e] > 0 && (size_t)utf8_len(s[0]) == t->vocab.klen[e] && utf8_decode(s, &ch) <= 3)
                t->bmp_id[ch] = t->vocab.val[e];
        }
    }
    if (build_pair_filter(t)) { fail(c, "out of memory"); return -1; }
    if (t->byte_level && !t->cont_prefix && !t->end_suffix && build_char_start(t)) { fail(c, "out of memory"); return -1; }
    int crossing = 0;   // (continuation byte, lead byte of a 3-byte character) pairs some merge joins
    for (int a = 0x80; a < 0xC0; a++)
        for (int b = 0xE0; b < 0xF0; b++) crossing += crossable(t, (unsigned)a, (unsigned)b);
    t->cuts = crossing < 64 * 16 / 4;   // see byte_level_bpe
    return 0;
}

static void normalize_string(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, Buf *out);

static int load_added_tokens(Tokenizer *t, LoadCtx *c, json_t *arr) {
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) { fail(c, "added_tokens: expected an array"); return -1; }
    size_t n = json_array_size(arr);
    t->added = calloc(n + 1, sizeof(AddedToken));
    if (!t->added) { fail(c, "out of memory"); return -1; }
    // HF ignores the ids written here: a token already known keeps its id, a new one gets the next
    // id after the model vocab (counted in entries) or after the highest added id above it
    int32_t next_id = (int32_t)t->vocab.n;
    t->nadded = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(arr, i);
        json_t *content = json_object_get(a, "content");
        if (!json_is_object(a) || !json_is_string(content)) {
            fail(c, "added_tokens[%zu]: expected an object with a string \"content\"", i); return -1;
        }
        const char *text = json_string_value(content);
        if (!*text) continue;   // HF skips empty tokens
        int32_t id = tokenizer_token_id(t, text);
        int slot = t->nadded;
        if (id >= 0) {
            for (int k = 0; k < t->nadded; k++) if (t->added[k].id == id) { slot = k; break; }   // redefined
        } else id = next_id++;
        AddedToken *at = &t->added[slot];
        if (slot == t->nadded) t->nadded++; else free(at->content);
        at->id = id;
        at->content = strdup(text);
        at->len = strlen(at->content);
        at->special = jbool(a, "special", 0);
        at->lstrip = jbool(a, "lstrip", 0);
        at->rstrip = jbool(a, "rstrip", 0);
        at->single_word = jbool(a, "single_word", 0);
        at->normalized = jbool(a, "normalized", !at->special);
        if (at->id + 1 > t->vocab_size) t->vocab_size = at->id + 1;
        if (strmap_put(&t->added_map, at->content, at->len, at->id)) { fail(c, "out of memory"); return -1; }
        if (at->single_word && t->word_re < 0) {
            // Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation, joiners
            t->word_re = add_regex(t, c, "added_tokens", "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}]", 0);
            if (t->word_re < 0) return -1;
        }
    }
    return 0;
}

// The end-of-document token: the usual names in order of preference.
static int default_eos(const Tokenizer *t) {
    static const char *names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>", "<|eot_id|>", "[SEP]"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int id = tokenizer_token_id(t, names[i]);
        if (id >= 0) return id;
    }
    return -1;
}

Tokenizer *tokenizer_load(const char *path, char *err, size_t errlen) {
    LoadCtx c = {path, err, errlen};
    if (errlen) err[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    json_error_t je;
    json_t *root = json_loadf(f, JSON_ALLOW_NUL, &je);
    fclose(f);
    if (!root) {
        if (je.line > 0) snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column > 0 ? je.column : 1, je.text);
        else snprintf(err, errlen, "%s: %s", path, je.text);
        return NULL;
    }
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) { json_decref(root); snprintf(err, errlen, "%s: out of memory", path); return NULL; }
    t->path = strdup(path);
    t->word_re = -1;
    int ok = json_is_object(root);
    if (!ok) fail(&c, "expected a JSON object at the top level");
    // the pre-tokenizer decides the encoder's alphabet, so it loads before the model
    if (ok) ok = load_pretokenizer(t, &c, json_object_get(root, "pre_tokenizer"), "pre_tokenizer") == 0;
    if (ok) ok = load_normalizer(t, &c, json_object_get(root, "normalizer"), "normalizer") == 0;
    if (ok) ok = load_model(t, &c, json_object_get(root, "model")) == 0;
    if (ok) ok = load_added_tokens(t, &c, json_object_get(root, "added_tokens")) == 0;
    if (ok) ok = load_postprocessor(t, &c, json_object_get(root, "post_processor"), "post_processor") == 0;
    if (ok) ok = load_decoder(t, &c, json_object_get(root, "decoder"), "decoder") == 0;
    json_t *trunc = ok ? json_object_get(root, "truncation") : NULL;
    if (ok && trunc && !json_is_null(trunc)) { fail(&c, "truncation: only null is supported"); ok = 0; }
    json_decref(root);
    if (!ok) { tokenizer_free(t); return NULL; }

    // normalized added tokens are matched in normalized text, so match their normalized form
    if (t->nnorm > 0) {
        TokenizerState *st = tokenizer_state_new(t);
        if (!st) { fail(&c, "out of memory"); tokenizer_free(t); return NULL; }
        for (int i = 0; i < t->nadded; i++) {
            AddedToken *a = &t->added[i];
            if (!a->normalized) continue;
            Buf nb = {0};
            normalize_string(t, st, a->content, a->len, &nb);
            if (nb.data && (nb.len != a->len || memcmp(nb.data, a->content, a->len))) {
                free(a->content); a->content = nb.data; a->len = nb.len;
            } else free(nb.data);
        }
        tokenizer_state_free(st);
    }
    if (build_matcher(t, &t->m_raw, 0) || build_matcher(t, &t->m_norm, 1)) { fail(&c, "out of memory"); tokenizer_free(t); return NULL; }

    t->id_str = calloc((size_t)t->vocab_size + 1, sizeof(char *));
    if (!t->id_str) { fail(&c, "out of memory"); tokenizer_free(t); return NULL; }
    for (size_t e = 0; e < t->vocab.n; e++) t->id_str[t->vocab.val[e]] = t->vocab.arena + t->vocab.off[e];
    for (int i = 0; i < t->nadded; i++) t->id_str[t->added[i].id] = t->added[i].content;

    t->eos_id = default_eos(t);
    t->bos_id = t->nprefix > 0 ? t->prefix[0] : -1;
    snprintf(t->desc, sizeof t->desc, "BPE%s, %d ids, %zu merges, %d added, %d normalizer op(s), %d pre-tokenizer op(s)%s%s",
             t->byte_level ? " byte-level" : "", t->vocab_size, t->merges.n, t->nadded, t->nnorm, t->npre,
             t->byte_fallback ? ", byte_fallback" : "", t->ignore_merges ? ", ignore_merges" : "");
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->path);
    strmap_free(&t->vocab); strmap_free(&t->enc); strmap_free(&t->added_map);
    free(t->merges.slots); free(t->merges.id_of_rank); free(t->bmp_id); free(t->char_start); free(t->char_pool); free(t->pair_filter); free(t->enc_filter);
    free(t->cont_prefix); free(t->end_suffix);
    for (int i = 0; i < t->nre; i++) pcre2_code_free(t->re[i].code);
    for (int i = 0; i < t->nnorm; i++) free(t->norm[i].str);
    for (int i = 0; i < t->ndec; i++) { free(t->dec[i].pat); free(t->dec[i].content); }
    for (int i = 0; i < t->nadded; i++) free(t->added[i].content);
    free(t->added); free(t->m_raw.idx); free(t->m_norm.idx); free(t->id_str);
    free(t);
}

int tokenizer_vocab_size(const Tokenizer *t) { return t->vocab_size; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
int tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
const char *tokenizer_describe(const Tokenizer *t) { return t->desc; }

int tokenizer_token_id(const Tokenizer *t, const char *token) {
    size_t n = strlen(token);
    int id = strmap_get(&t->added_map, token, n);
    return id >= 0 ? id : strmap_get(&t->vocab, token, n);
}
int tokenizer_set_eos(Tokenizer *t, const char *token) {
    int id = tokenizer_token_id(t, token);
    if (id >= 0) t->eos_id = id;
    return id;
}
const char *tokenizer_id_to_token(const Tokenizer *t, int id) {
    return id >= 0 && id < t->vocab_size ? t->id_str[id] : NULL;
}

TokenizerState *tokenizer_state_new(const Tokenizer *t) {
    TokenizerState *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->tok = t;
    for (int i = 0; i < t->nre; i++) {
        if (t->re[i].kind != RE_PCRE) continue;
        st->md[i] = pcre2_match_data_create_from_pattern(t->re[i].code, NULL);
        if (!st->md[i]) { tokenizer_state_free(st); return NULL; }
    }
    st->mctx = pcre2_match_context_create(NULL);
    st->jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, NULL);
    if (!st->mctx || !st->jit_stack) { tokenizer_state_free(st); return NULL; }
    pcre2_jit_stack_assign(st->mctx, NULL, st->jit_stack);
    st->cache = calloc(CACHE_SLOTS, sizeof(CacheSlot));
    if (!st->cache) { tokenizer_state_free(st); return NULL; }
    return st;
}

void tokenizer_state_free(TokenizerState *st) {
    if (!st) return;
    for (int i = 0; i < MAX_REGEX; i++) if (st->md[i]) pcre2_match_data_free(st->md[i]);
    if (st->mctx) pcre2_match_context_free(st->mctx);
    if (st->jit_stack) pcre2_jit_stack_free(st->jit_stack);
    free(st->out.data); free(st->norm.data); free(st->arena.data);
    for (int i = 0; i < MAX_OPS; i++) free(st->seg[i].data);
    free(st->tmp.data); free(st->tmp2.data);
    free(st->sym_id); free(st->sym_prev); free(st->sym_next); free(st->heap);
    free(st->cache); free(st->cache_keys.data); free(st->cache_ids.data);
    free(st);
}

// ----------------------------------------------------------------------------------------------
// 6. encoding

// Finds regex matches in s[0..n) from start; returns 1 and the span, 0 when none, -1 on error.
static int regex_find(TokenizerState *st, int ri, const char *s, size_t n, size_t start, size_t *ms, size_t *me) {
    const Regex *re = &st->tok->re[ri];
    if (re->kind != RE_PCRE) {   // these patterns match at every position
        if (start >= n) return 0;
        const unsigned char *u = (const unsigned char *)s;
        *ms = start;
        *me = re->kind == RE_GPT2 ? match_gpt2(u, n, start) : match_cl100k(u, n, start, re->kind == RE_CL100K ? 3 : 1);
        return 1;
    }
    int rc = re->jit ? pcre2_jit_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, st->md[ri], st->mctx)
                     : pcre2_match(re->code, (PCRE2_SPTR)s, n, start, PCRE2_NO_UTF_CHECK, st->md[ri], st->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) { st->error = 1; return -1; }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md[ri]);
    *ms = ov[0]; *me = ov[1];
    return 1;
}

// --- normalizers (each reads in, writes out) ---

static void replace_all(TokenizerState *st, int ri, const char *content, const char *s, size_t n, Buf *out) {
    size_t pos = 0, ms, me, clen = strlen(content);
    out->len = 0;
    buf_reserve(out, n);
    while (pos <= n && regex_find(st, ri, s, n, pos, &ms, &me) == 1) {
        buf_append(out, s + pos, ms - pos);
        buf_append(out, content, clen);
        if (me == ms) {   // empty match: keep one char and move on
            if (ms >= n) { pos = n + 1; break; }
            int k = utf8_len((unsigned char)s[ms]);
            buf_append(out, s + ms, (size_t)k);
            pos = ms + (size_t)k;
        } else pos = me;
    }
    if (pos < n) buf_append(out, s + pos, n - pos);
    if (!out->data) buf_append(out, "", 0);
}

static void normalize_string(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, Buf *out) {
    // each op reads the text so far (the input, then the op before's output) and writes one of out and
    // st->tmp2, by turns, so that the last op writes out
    const char *src = s;
    size_t len = n;
    out->len = 0;
    if (t->nnorm == 0) buf_append(out, s, n);
    for (int i = 0; i < t->nnorm; i++) {
        const NormOp *op = &t->norm[i];
        Buf *dst = (t->nnorm - 1 - i) % 2 == 0 ? out : &st->tmp2;
        dst->len = 0;
        switch (op->type) {
        case NORM_NFC: if (unicode_nfc(src, len, dst, 1)) st->error = 1; break;
        case NORM_NFD: if (unicode_nfc(src, len, dst, 0)) st->error = 1; break;
        case NORM_PREPEND:
            if (len > 0) buf_append(dst, op->str, strlen(op->str));
            buf_append(dst, src, len);
            break;
        case NORM_REPLACE: replace_all(st, op->re, op->str, src, len, dst); break;
        case NORM_STRIP: {
            size_t a = 0, b = len;
            const unsigned char *u = (const unsigned char *)src;
            uint32_t ch;
            while (op->left && a < b && (utf8_decode(u + a, &ch), is_white_space(ch))) a += (size_t)utf8_len(u[a]);
            while (op->right && b > a) {
                size_t p = b - 1;
                while (p > a && (u[p] & 0xC0) == 0x80) p--;
                utf8_decode(u + p, &ch);
                if (!is_white_space(ch)) break;
                b = p;
            }
            buf_append(dst, src + a, b - a);
            break;
        }
        }
        if (!dst->data) buf_append(dst, "", 0);
        src = dst->data; len = dst->len;
    }
}

// --- the BPE model ---

static int ensure_sym(TokenizerState *st, size_t n) {
    if (n <= st->sym_cap) return 0;
    size_t cap = st->sym_cap ? st->sym_cap : 256;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(st->sym_id, cap * 4); if (!a) return -1; st->sym_id = a;
    a = realloc(st->sym_prev, cap * 4); if (!a) return -1; st->sym_prev = a;
    a = realloc(st->sym_next, cap * 4); if (!a) return -1; st->sym_next = a;
    HeapItem *h = realloc(st->heap, cap * 2 * sizeof(HeapItem)); if (!h) return -1; st->heap = h;
    st->sym_cap = cap; st->heap_cap = cap * 2;
    return 0;
}

static int heap_push(TokenizerState *st, uint64_t key, int32_t id) {
    if (st->heap_n == st->heap_cap) {
        HeapItem *h = realloc(st->heap, st->heap_cap * 2 * sizeof(HeapItem));
        if (!h) return -1;
        st->heap = h; st->heap_cap *= 2;
    }
    HeapItem *h = st->heap;
    size_t i = st->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].key <= key) break;
        h[i] = h[p]; i = p;
    }
    h[i].key = key; h[i].id = id;
    return 0;
}
static HeapItem heap_pop(TokenizerState *st) {
    HeapItem *h = st->heap, top = h[0], last = h[--st->heap_n];
    size_t i = 0, n = st->heap_n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        if (l + 1 < n && h[l + 1].key < h[l].key) l++;
        if (last.key <= h[l].key) break;
        h[i] = h[l]; i = l;
    }
    if (n > 0) h[i] = last;
    return top;
}

// Adds one symbol (as HF's Word::add; the byte length it covers matters only to fuse unknowns).
static void sym_add(TokenizerState *st, int *n, int32_t id) { st->sym_id[(*n)++] = id; }

// The slow path for one unit (byte or char) that has no direct id: look up with prefix/suffix,
// then byte_fallback, then unk (HF BPE::merge_word). unk_pending carries a fusable unk.
static void unit_lookup(const Tokenizer *t, TokenizerState *st, const char *u, int ulen, int first, int last,
                        int *n, int *unk_len) {
    Buf *s = &st->tmp;
    s->len = 0;
    if (!first && t->cont_prefix) buf_append(s, t->cont_prefix, strlen(t->cont_prefix));
    if (t->byte_level) {
        uint32_t b2c[256]; int16_t c2b[512];
        byte_level_alphabet(b2c, c2b);
        char e[4]; int k = utf8_encode(b2c[(unsigned char)u[0]], e);
        buf_append(s, e, (size_t)k);
    } else buf_append(s, u, (size_t)ulen);
    if (last && t->end_suffix) buf_append(s, t->end_suffix, strlen(t->end_suffix));
    int32_t id = strmap_get(&t->vocab, s->data, s->len);
    if (id >= 0) {
        if (*unk_len) { sym_add(st, n, t->unk_id); *unk_len = 0; }
        sym_add(st, n, id);
        return;
    }
    if (t->byte_fallback) {
        int all = 1;
        for (size_t i = 0; i < s->len; i++) if (t->fallback_id[(unsigned char)s->data[i]] < 0) all = 0;
        if (all) {
            // HF does not flush a pending unk here: it stays pending until the next known char
            for (size_t i = 0; i < s->len; i++) sym_add(st, n, t->fallback_id[(unsigned char)s->data[i]]);
            return;
        }
    }
    if (t->unk_id >= 0) {
        if (*unk_len && t->fuse_unk) *unk_len += ulen;
        else {
            if (*unk_len) sym_add(st, n, t->unk_id);
            *unk_len = ulen;
        }
    }
}

// The rank of the merge of (a, b), or NO_MERGE: the pair's Bloom filter word first (it fits in cache,
// and most pairs BPE looks up have no merge), the table only when the pair may be there.
static uint32_t merge_find(const Tokenizer *t, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b), h = pair_hash(k), bits = pair_filter_bits(h);
    if ((t->pair_filter[pair_filter_word(h, t->filter_mask)] & bits) != bits) return NO_MERGE;
    const uint64_t *slots = t->merges.slots;
    for (size_t i = (size_t)h & t->merges.mask;; i = (i + 1) & t->merges.mask) {
        if (slots[i] >> 22 == k) return (uint32_t)(slots[i] & ((1u << 22) - 1));
        if (slots[i] == UINT64_MAX) return NO_MERGE;
    }
}

// BPE over the n symbols id[0..n), merging the lowest-ranked adjacent pair first (the leftmost of
// equal ones), as HF's Word::merge_all; returns the count left, the result in id[0..count).
//
// Short words (nearly all pieces: a CJK run starts from its characters' tokens) keep, per symbol, a key
// for the pair it starts: rank * 64 + position, so the lowest key is the lowest rank and, of equal
// ranks, the leftmost. Each step takes the lowest key (a scan over a few vectors of keys, which the
// compiler turns into vector instructions), writes the merged token in place of the pair's left
// symbol, marks the right one merged away (its key none, unlinked from prev / next), and
// looks up the two pairs the new symbol makes. O(n^2) at worst, but n is small and all of it is in a
// few cache lines. Long words (over BPE_SCAN_MAX symbols) use a heap of (rank, position) with the
// symbols linked by sym_prev / sym_next: O(n log n).
#define BPE_SCAN_MAX 64
#define SCAN_NONE 0xFFFFFFFFu   // key of a pair with no merge

// merge_find for the n - 1 adjacent pairs of id[0..n) at once (n <= BPE_SCAN_MAX). The filter words of
// all pairs are loaded in one loop, then the table slots of those that pass in another, with no branch
// between the loads: their cache misses overlap instead of each waiting for the one before.
static void pair_ranks(const Tokenizer *t, const int32_t *id, int n, uint32_t *rank) {
    uint64_t h[BPE_SCAN_MAX], w[BPE_SCAN_MAX];
    const uint64_t *slots = t->merges.slots;
    for (int i = 0; i + 1 < n; i++) {
        h[i] = pair_hash(pair_key(id[i], id[i + 1]));
        w[i] = t->pair_filter[pair_filter_word(h[i], t->filter_mask)];
    }
    for (int i = 0; i + 1 < n; i++) {
        uint64_t bits = pair_filter_bits(h[i]);
        int pass = (w[i] & bits) == bits;
        uint64_t slot = slots[pass ? (size_t)h[i] & t->merges.mask : 0];
        w[i] = pass ? slot : UINT64_MAX;   // UINT64_MAX: an empty slot, no merge
    }
    for (int i = 0; i + 1 < n; i++) {
        if (w[i] >> 22 == pair_key(id[i], id[i + 1])) rank[i] = (uint32_t)(w[i] & ((1u << 22) - 1));
        else if (w[i] == UINT64_MAX) rank[i] = NO_MERGE;
        else rank[i] = merge_find(t, id[i], id[i + 1]);   // the pair's first slot holds another: probe on
    }
}

// The scan key of the pair at position i with merge rank r (PAIR_MAX_RANK * 64 < SCAN_NONE).
static uint32_t scan_key(uint32_t r, int i) { return r == NO_MERGE ? SCAN_NONE : r << 6 | (uint32_t)i; }

static int bpe_merge_scan(const Tokenizer *t, int32_t *id, int n) {
    uint32_t key[BPE_SCAN_MAX + 16];   // key[i]: of the pair symbol i starts; SCAN_NONE from the last symbol on
    int8_t prev[BPE_SCAN_MAX], next[BPE_SCAN_MAX];   // the symbols not merged away, linked; next = n at the end
    pair_ranks(t, id, n, key);
    int m = (n + 15) & ~15;            // the scan runs over whole vectors: the keys past the end are SCAN_NONE
    for (int i = 0; i < m; i++) key[i] = i + 1 < n ? scan_key(key[i], i) : SCAN_NONE;
    for (int i = 0; i < BPE_SCAN_MAX; i++) { prev[i] = (int8_t)(i - 1); next[i] = (int8_t)(i + 1); }
    for (;;) {
        uint32_t lo = SCAN_NONE;
        for (int i = 0; i < m; i++) lo = key[i] < lo ? key[i] : lo;
        if (lo == SCAN_NONE) break;
        int best = (int)(lo & 63), r = next[best], p = prev[best];
        id[best] = pairmap_merged_id(&t->merges, lo >> 6);
        key[r] = SCAN_NONE;
        next[best] = next[r];
        if (next[r] < n) prev[next[r]] = (int8_t)best;
        key[best] = next[best] < n ? scan_key(merge_find(t, id[best], id[next[best]]), best) : SCAN_NONE;
        if (p >= 0) key[p] = scan_key(merge_find(t, id[p], id[best]), p);
    }
    int w = 0;   // the symbols left, moved to the front (positions only grow along the links)
    for (int i = 0; i < n; i = next[i]) id[w++] = id[i];
    return w;
}

static int bpe_merge_heap(const Tokenizer *t, TokenizerState *st, int32_t *id, int n) {
    int32_t *prev = st->sym_prev, *next = st->sym_next;
    st->heap_n = 0;
    for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
    for (int i = 0; i + 1 < n; i++) {
        uint32_t r = merge_find(t, id[i], id[i + 1]);
        if (r != NO_MERGE && heap_push(st, ((uint64_t)r << 32) | (uint32_t)i, pairmap_merged_id(&t->merges, r))) { st->error = 1; return 0; }
    }
    while (st->heap_n > 0) {
        HeapItem top = heap_pop(st);
        int pos = (int)(uint32_t)top.key;
        if (id[pos] < 0) continue;   // merged away
        int r = next[pos];
        if (r < 0) continue;
        // stale entry: the pair here no longer merges into this id
        if (merge_find(t, id[pos], id[r]) != (uint32_t)(top.key >> 32)) continue;
        id[pos] = top.id;
        id[r] = -1;
        next[pos] = next[r];
        if (next[r] >= 0) prev[next[r]] = pos;
        uint32_t rk;
        if (prev[pos] >= 0 && (rk = merge_find(t, id[prev[pos]], id[pos])) != NO_MERGE &&
            heap_push(st, ((uint64_t)rk << 32) | (uint32_t)prev[pos], pairmap_merged_id(&t->merges, rk))) { st->error = 1; return 0; }
        if (next[pos] >= 0 && (rk = merge_find(t, id[pos], id[next[pos]])) != NO_MERGE &&
            heap_push(st, ((uint64_t)rk << 32) | (uint32_t)pos, pairmap_merged_id(&t->merges, rk))) { st->error = 1; return 0; }
    }
    int m = 0;   // the symbols left, in order (positions only grow along the list)
    for (int i = 0; i >= 0; i = next[i]) id[m++] = id[i];
    return m;
}

// BPE of the n symbols id[0..n) (id within st->sym_id); returns the count left, in id[0..count).
static inline int bpe_merge(const Tokenizer *t, TokenizerState *st, int32_t *id, int n) {
    if (n < 2) return n;
    if (n == 2) {
        uint32_t r = merge_find(t, id[0], id[1]);
        if (r == NO_MERGE) return 2;
        id[0] = pairmap_merged_id(&t->merges, r);
        return 1;
    }
    return n <= BPE_SCAN_MAX ? bpe_merge_scan(t, id, n) : bpe_merge_heap(t, st, id, n);
}

static void cache_reset(TokenizerState *st) {
    memset(st->cache, 0, CACHE_SLOTS * sizeof(CacheSlot));
    st->cache_n = 0; st->cache_keys.len = 0; st->cache_ids.len = 0;
}

// Remembers the ids st->out got from out0 on as those of piece s[0..n) (hash h).
static void cache_put(TokenizerState *st, const char *s, size_t n, uint64_t h, size_t out0) {
    if (st->cache_n * 2 >= CACHE_SLOTS) cache_reset(st);
    size_t nids = st->out.len - out0;
    if (nids == 0) return;
    size_t i = h & (CACHE_SLOTS - 1);
    while (st->cache[i].nids) i = (i + 1) & (CACHE_SLOTS - 1);
    size_t koff = st->cache_keys.len, ioff = st->cache_ids.len;
    if (buf_append(&st->cache_keys, s, n) || idbuf_append(&st->cache_ids, st->out.data + out0, nids)) { st->error = 1; return; }
    CacheSlot *c = &st->cache[i];
    c->hash = h; c->head = n <= 8 ? load_short((const unsigned char *)s, n) : 0; c->koff = (uint32_t)koff; c->klen = (uint32_t)n; c->ioff = (uint32_t)ioff; c->nids = (uint32_t)nids;
    st->cache_n++;
}

// BPE of a byte-level piece u[0..n) whose bytes all have tokens; returns the count of ids, in st->sym_id.
// The piece is cut between two bytes where no merge's left token ends with the first and right token
// starts with the second (GPT-2 has almost none between two CJK characters): no symbol ever spans such
// a place, so the parts merge on their own, each as soon as it is complete. A part starts from each BMP
// character's own tokens where char_start says the result is the same (see build_char_start; a cut
// counts as the end of the piece), else from its bytes. The cuts are looked for only where they are
// common: when merges join under a quarter of the (continuation byte, lead byte of a 3-byte character)
// pairs (GPT-2: 45 of 1024; Qwen2 and Llama-3, whose vocabularies hold many CJK words: 667 and 663).
static int byte_level_bpe(const Tokenizer *t, TokenizerState *st, const unsigned char *u, size_t n) {
    int32_t *id = st->sym_id;
    int ns = 0, part = 0;   // symbols so far; the first of the part being built
    int one_char = 0;       // the part is one character's own tokens: they are its BPE already
    int cut = 0;            // the piece is cut before byte i
    uint32_t left = 0;      // what the byte before i is (CHAR_LEFT_ASCII or _MULTI); 0 at a cut
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (cut) {
            if (!one_char) ns = part + bpe_merge(t, st, id + part, ns - part);
            part = ns;
            left = 0;
        }
        if (c >= 0xC0 && c < 0xF0) {
            size_t k = c >= 0xE0 ? 3 : 2;
            uint32_t ch = k == 3 ? ((c & 0x0Fu) << 12) | ((u[i + 1] & 0x3Fu) << 6) | (u[i + 2] & 0x3Fu)
                                 : ((c & 0x1Fu) << 6) | (u[i + 1] & 0x3Fu);
            uint32_t v = t->char_start[ch];
            cut = t->cuts && i + k < n && !crossable(t, u[i + k - 1], u[i + k]);
            uint32_t need = left | (i + k < n && !cut ? (uint32_t)CHAR_RIGHT_ASCII << (u[i + k] >> 7) : 0);
            if (v && (v & need) == need) {
                if (v & CHAR_SPLIT) {
                    const int32_t *q = t->char_pool + (v >> 5);
                    for (int j = 0; j < q[0]; j++) id[ns++] = q[1 + 2 * j];
                } else id[ns++] = (int32_t)(v >> 5);
                one_char = need == 0;   // a cut (or an end) on both sides
                i += k;
                left = CHAR_LEFT_MULTI;
                continue;
            }
        }
        id[ns++] = t->byte_id[c];
        one_char = 0;
        cut = t->cuts && i + 1 < n && !crossable(t, c, u[i + 1]);
        i++;
        left = (uint32_t)CHAR_LEFT_ASCII << (c >> 7);
    }
    return one_char ? ns : part + bpe_merge(t, st, id + part, ns - part);
}

// The symbols BPE starts from in general: each unit (byte for byte-level, else character) as a token,
// else through unit_lookup (prefix / suffix, byte_fallback, unk). Returns the count (at most n).
static int unit_symbols(const Tokenizer *t, TokenizerState *st, const char *s, size_t n) {
    int ns = 0, unk_len = 0;
    const unsigned char *u = (const unsigned char *)s;
    int simple = !t->cont_prefix && !t->end_suffix;
    for (size_t i = 0; i < n;) {
        int ulen = t->byte_level ? 1 : utf8_len(u[i]);
        int32_t id = -1;
        if (simple) {
            if (t->byte_level) id = t->byte_id[u[i]];
            else {
                uint32_t ch; utf8_decode(u + i, &ch);
                id = ch < 0x10000 ? t->bmp_id[ch] : strmap_get(&t->enc, s + i, (size_t)ulen);
            }
        }
        if (id >= 0) {
            if (unk_len) { sym_add(st, &ns, t->unk_id); unk_len = 0; }
            sym_add(st, &ns, id);
        } else unit_lookup(t, st, s + i, ulen, i == 0, i + (size_t)ulen == n, &ns, &unk_len);
        i += (size_t)ulen;
    }
    if (unk_len) sym_add(st, &ns, t->unk_id);
    return ns;
}

// Encodes one pre-token (in the encoder's domain) and appends its ids to st->out.
static void bpe_piece(const Tokenizer *t, TokenizerState *st, const char *s, size_t n) {
    if (n == 0) return;
    uint64_t h = 0;
    int cached = n < ((unsigned char)s[n - 1] < 0x80 ? CACHE_MAX_PIECE : CACHE_MAX_WIDE);
    if (cached) {
        h = hash_bytes(s, n);
        size_t i = h & (CACHE_SLOTS - 1);
        for (; st->cache[i].nids; i = (i + 1) & (CACHE_SLOTS - 1)) {
            CacheSlot *c = &st->cache[i];
            if (c->hash == h && c->klen == n &&
                (n <= 8 ? c->head == load_short((const unsigned char *)s, n) : memcmp(st->cache_keys.data + c->koff, s, n) == 0)) {
                if (idbuf_append(&st->out, st->cache_ids.data + c->ioff, c->nids)) st->error = 1;
                return;
            }
        }
    }
    size_t out0 = st->out.len;
    int32_t whole;
    if (t->ignore_merges && n <= t->max_token_len) {   // a piece that is a token stays whole
        if (!cached) h = hash_bytes(s, n);
        uint64_t b = h >> t->enc_filter_shift;
        whole = (t->enc_filter[b >> 6] >> (b & 63)) & 1 ? strmap_get_h(&t->enc, s, n, h) : -1;
    } else whole = -1;
    if (whole >= 0) {
        if (idbuf_push(&st->out, whole)) { st->error = 1; return; }
        if (cached) cache_put(st, s, n, h, out0);
        return;
    }
    if (ensure_sym(st, n + 1)) { st->error = 1; return; }
    int ns = t->char_start && t->all_bytes ? byte_level_bpe(t, st, (const unsigned char *)s, n)
                                           : bpe_merge(t, st, st->sym_id, unit_symbols(t, st, s, n));
    if (idbuf_append(&st->out, st->sym_id, (size_t)ns)) { st->error = 1; return; }
    if (cached) cache_put(st, s, n, h, out0);
}

// --- pre-tokenizers: depth-first, each op turns one piece into pieces for the next op ---

typedef struct { int in_arena; size_t off, len; int first; } Piece;

static const char *piece_ptr(TokenizerState *st, Piece p) {
    return (p.in_arena ? st->arena.data : st->root) + p.off;
}

static void pretok_apply(const Tokenizer *t, TokenizerState *st, int level, Piece p);

static void emit_segs(const Tokenizer *t, TokenizerState *st, int level, Piece p, SegBuf *sb, int behavior) {
    // combine the (match / non-match) segments as the split behavior says, then recurse
    Seg *sg = sb->data;
    size_t n = sb->len, w = 0;
    if (behavior == SPLIT_MERGED_NEXT) {
        // walk backwards: a match joins the segment after it
        size_t out = n;
        int prev_match = 0;
        for (size_t i = n; i-- > 0;) {
            if (sg[i].is_match && !prev_match && out < n) {
                sg[out].off = sg[i].off; sg[out].len += sg[i].len;
            } else { sg[--out] = sg[i]; sg[out].is_match = 0; }
            prev_match = sg[i].is_match;
        }
        memmove(sg, sg + out, (n - out) * sizeof(Seg));
        n = n - out;
    } else if (behavior != SPLIT_ISOLATED) {
        int prev_match = 0;
        for (size_t i = 0; i < n; i++) {
            int m = sg[i].is_match;
            int merge = (behavior == SPLIT_MERGED_PREV && m && !prev_match) ||
                        (behavior == SPLIT_CONTIGUOUS && m == prev_match);
            if (behavior == SPLIT_REMOVED) { if (!m) sg[w++] = sg[i]; }
            else if (merge && w > 0) sg[w - 1].len += sg[i].len;
            else sg[w++] = sg[i];
            prev_match = m;
        }
        n = w;
    }
    sb->len = n;
    for (size_t i = 0; i < n && !st->error; i++) {
        Seg s = st->seg[level].data[i];
        if (s.len == 0) continue;
        Piece q = {p.in_arena, p.off + s.off, s.len, p.first && s.off == 0};
        pretok_apply(t, st, level + 1, q);
    }
}

static int seg_push(SegBuf *sb, size_t off, size_t len, int is_match) {
    if (sb->len == sb->cap) {
        size_t cap = sb->cap ? sb->cap * 2 : 256;
        Seg *d = realloc(sb->data, cap * sizeof(Seg));
        if (!d) return -1;
        sb->data = d; sb->cap = cap;
    }
    sb->data[sb->len++] = (Seg){off, len, is_match};
    return 0;
}

static void split_regex(const Tokenizer *t, TokenizerState *st, int level, Piece p, int ri, int behavior, int invert) {
    SegBuf *sb = &st->seg[level];
    sb->len = 0;
    const char *s = piece_ptr(st, p);
    // The usual case (GPT-2, Qwen2, Llama-3): a hand-written pattern, each match its own piece (Isolated),
    // and nothing after this op but ByteLevel steps that pass pieces on unchanged: each match goes straight
    // to BPE, without the segment list and a call per level.
    int direct = t->re[ri].kind != RE_PCRE && behavior == SPLIT_ISOLATED && !invert && !t->word_split;
    for (int l = level + 1; direct && l < t->npre; l++)
        direct = t->pre[l].type == PRE_BYTELEVEL && t->pre[l].re < 0 && !t->pre[l].add_prefix_space;
    if (direct) {
        const unsigned char *u = (const unsigned char *)s;
        int kind = t->re[ri].kind, max_digits = kind == RE_CL100K ? 3 : 1;
        for (size_t pos = 0, e; pos < p.len && !st->error; pos = e) {
            e = kind == RE_GPT2 ? match_gpt2(u, p.len, pos) : match_cl100k(u, p.len, pos, max_digits);
            if (st->pieces_only) { if (idbuf_push(&st->out, (int32_t)(e - pos))) st->error = 1; }
            else bpe_piece(t, st, s + pos, e - pos);
        }
        return;
    }
    size_t pos = 0, prev = 0, ms, me;
    // Isolated and Removed segments do not interact, so a long piece is passed on in runs of segments and
    // memory stays bounded however long the document; the other behaviors merge neighbours, so they wait.
    int streaming = behavior == SPLIT_ISOLATED || behavior == SPLIT_REMOVED;
    while (pos < p.len) {
        int r = regex_find(st, ri, s, p.len, pos, &ms, &me);
        if (r < 0) return;
        if (r == 0) break;
        if (ms > prev && seg_push(sb, prev, ms - prev, invert)) { st->error = 1; return; }
        if (seg_push(sb, ms, me - ms, !invert)) { st->error = 1; return; }
        prev = me;
        // an empty match steps over one character (none is left after an empty match at the end)
        pos = me > ms ? me : ms < p.len ? ms + (size_t)utf8_len((unsigned char)s[ms]) : p.len + 1;
        if (streaming && sb->len >= 4096) {
            emit_segs(t, st, level, p, sb, behavior);
            if (st->error) return;
            sb->len = 0;
            s = piece_ptr(st, p);   // the arena may have moved while the segments were processed
        }
    }
    if (prev < p.len && seg_push(sb, prev, p.len - prev, invert)) { st->error = 1; return; }
    emit_segs(t, st, level, p, sb, behavior);
}

static void pretok_apply(const Tokenizer *t, TokenizerState *st, int level, Piece p) {
    if (st->error) return;
    if (level == t->npre) {
        if (st->pieces_only) { if (idbuf_push(&st->out, (int32_t)p.len)) st->error = 1; return; }
        const char *s = piece_ptr(st, p);
        if (!t->word_split) { bpe_piece(t, st, s, p.len); return; }
        // cut before each U+2581 that follows another char (see word_split)
        size_t start = 0;
        for (size_t i = 1; i + 3 <= p.len; i++) {
            if (memcmp(s + i, "\xE2\x96\x81", 3) != 0) continue;
            if (i >= 3 && memcmp(s + i - 3, "\xE2\x96\x81", 3) == 0) continue;   // inside a run of U+2581
            bpe_piece(t, st, s + start, i - start);
            start = i;
        }
        bpe_piece(t, st, s + start, p.len - start);
        return;
    }
    const PreOp *op = &t->pre[level];
    if (op->type == PRE_BYTELEVEL) {
        if (op->add_prefix_space && piece_ptr(st, p)[0] != ' ') {
            size_t off = st->arena.len;
            if (buf_append(&st->arena, " ", 1) || buf_append(&st->arena, piece_ptr(st, p), p.len)) { st->error = 1; return; }
            p = (Piece){1, off, p.len + 1, p.first};
        }
        if (op->re >= 0) split_regex(t, st, level, p, op->re, SPLIT_ISOLATED, 0);
        else pretok_apply(t, st, level + 1, p);
    } else if (op->type == PRE_SPLIT) {
        split_regex(t, st, level, p, op->re, op->behavior, op->invert);
    } else {   // Metaspace: spaces become the replacement, maybe prepend one, maybe split before each
        size_t off = st->arena.len;
        const char *s = piece_ptr(st, p);
        // HF checks after the replacement: a leading space counts as a leading replacement char
        int starts = (p.len > 0 && s[0] == ' ') || (p.len >= (size_t)op->repl_len && memcmp(s, op->repl, (size_t)op->repl_len) == 0);
        int prepend = (op->scheme == PREPEND_ALWAYS || (op->scheme == PREPEND_FIRST && p.first)) && !starts;
        if (buf_reserve(&st->arena, p.len * (size_t)op->repl_len + 8)) { st->error = 1; return; }
        s = piece_ptr(st, p);   // the arena may have moved
        if (prepend) buf_append(&st->arena, op->repl, (size_t)op->repl_len);
        for (size_t i = 0; i < p.len; i++) {
            if (s[i] == ' ') buf_append(&st->arena, op->repl, (size_t)op->repl_len);
            else buf_append(&st->arena, s + i, 1);
        }
        Piece q = {1, off, st->arena.len - off, p.first};
        if (!op->split) { pretok_apply(t, st, level + 1, q); return; }
        SegBuf *sb = &st->seg[level];
        sb->len = 0;
        const char *a = st->arena.data + off;
        size_t prev = 0;
        for (size_t i = 0; i + (size_t)op->repl_len <= q.len;) {
            if (memcmp(a + i, op->repl, (size_t)op->repl_len) == 0) {
                if (i > prev) seg_push(sb, prev, i - prev, 0);
                seg_push(sb, i, (size_t)op->repl_len, 1);
                i += (size_t)op->repl_len; prev = i;
            } else i += (size_t)utf8_len((unsigned char)a[i]);
        }
        if (prev < q.len) seg_push(sb, prev, q.len - prev, 0);
        emit_segs(t, st, level, q, sb, SPLIT_MERGED_NEXT);
    }
}

static void pretokenize(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, int first) {
    if (n == 0) return;
    st->root = s;
    st->arena.len = 0;
    pretok_apply(t, st, 0, (Piece){0, 0, n, first});
}

// --- added tokens ---

static int is_word_char_at(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, size_t pos) {
    size_t ms, me;
    return regex_find(st, t->word_re, s, n, pos, &ms, &me) == 1 && ms == pos;
}

// Finds the next added-token match at or after pos: leftmost, then longest. Returns the token index or -1.
static int matcher_find(const Tokenizer *t, const Matcher *m, const char *s, size_t n, size_t pos, size_t *ms) {
    if (m->n == 0) return -1;
    for (size_t i = pos; i < n; i++) {
        if (m->nfirst == 1) {
            const char *q = memchr(s + i, m->first, n - i);
            if (!q) return -1;
            i = (size_t)(q - s);
        }
        unsigned char b = (unsigned char)s[i];
        if (m->start[b] == m->start[b + 1]) continue;
        const AddedToken *a0 = &t->added[m->idx[m->start[b]]];
        if (m->common[b] > n - i || memcmp(s + i, a0->content, m->common[b]) != 0) continue;
        for (int j = m->start[b]; j < m->start[b + 1]; j++) {
            const AddedToken *a = &t->added[m->idx[j]];
            if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) { *ms = i; return m->idx[j]; }
        }
    }
    return -1;
}

typedef void (*SegmentFn)(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, int first);

// Splits s by the added tokens of matcher m (HF AddedVocabulary::find_matches): matched tokens are
// emitted as ids, the text between goes to fn.
static void split_added(const Tokenizer *t, TokenizerState *st, const Matcher *m, const char *s, size_t n,
                        int first, int flags, SegmentFn fn) {
    size_t pos = 0, done = 0, ms;
    int ai;
    while (!st->error && (ai = matcher_find(t, m, s, n, pos, &ms)) >= 0) {
        const AddedToken *a = &t->added[ai];
        size_t start = ms, stop = ms + a->len;
        pos = stop;
        if ((flags & TOK_SPECIAL_AS_TEXT) && a->special) continue;
        if (a->single_word) {
            int before = 0, after = 0;
            if (start > 0) {
                size_t p = start - 1;
                while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
                before = is_word_char_at(t, st, s, n, p);
            }
            if (stop < n) after = is_word_char_at(t, st, s, n, stop);
            if (before || after) continue;
        }
        if (a->lstrip) {
            size_t p = start;
            while (p > done) {
                size_t q = p - 1;
                while (q > done && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
                uint32_t ch; utf8_decode((const unsigned char *)s + q, &ch);
                if (!is_white_space(ch)) break;
                p = q;
            }
            start = p;
        }
        if (a->rstrip) {
            uint32_t ch;
            while (stop < n && (utf8_decode((const unsigned char *)s + stop, &ch), is_white_space(ch)))
                stop += (size_t)utf8_len((unsigned char)s[stop]);
        }
        if (start > done) fn(t, st, s + done, start - done, first && done == 0);
        if (!st->pieces_only && idbuf_push(&st->out, a->id)) st->error = 1;
        done = stop;
    }
    if (done < n && !st->error) fn(t, st, s + done, n - done, first && done == 0);
}

static void normalized_segment(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, int first) {
    pretokenize(t, st, s, n, first);
}

static void raw_segment(const Tokenizer *t, TokenizerState *st, const char *s, size_t n, int first) {
    if (t->nnorm == 0) {
        split_added(t, st, &t->m_norm, s, n, first, st->flags, normalized_segment);
        return;
    }
    normalize_string(t, st, s, n, &st->norm);
    // the normalized text stays in st->norm while its pieces are encoded: nothing below touches it
    split_added(t, st, &t->m_norm, st->norm.data, st->norm.len, first, st->flags, normalized_segment);
}

const int32_t *tokenizer_encode(const Tokenizer *t, TokenizerState *st, const char *text, size_t len,
                                int flags, size_t *n_out) {
    if (!(flags & TOK_VALID_UTF8)) {
        size_t bad = utf8_valid_prefix(text, len);
        if (bad != len) { *n_out = bad; return NULL; }
    }
    st->out.len = 0;
    st->error = 0;
    st->flags = flags;
    if (flags & TOK_ADD_SPECIAL) idbuf_append(&st->out, t->prefix, (size_t)t->nprefix);
    split_added(t, st, &t->m_raw, text, len, 1, flags, raw_segment);
    if (flags & TOK_ADD_SPECIAL) idbuf_append(&st->out, t->suffix, (size_t)t->nsuffix);
    if (st->error) { *n_out = (size_t)-1; return NULL; }
    *n_out = st->out.len;
    return st->out.data ? st->out.data : (const int32_t *)"";
}

const int32_t *tokenizer_pretokenize(const Tokenizer *t, TokenizerState *st, const char *text, size_t len,
                                     size_t *n_out) {
    st->pieces_only = 1;
    const int32_t *r = tokenizer_encode(t, st, text, len, 0, n_out);
    st->pieces_only = 0;
    return r;
}

// ----------------------------------------------------------------------------------------------
// 7. decoding: the decoder chain over a list of token strings (HF Decoder::decode_chain)

typedef struct { Buf text; size_t *off, *len; size_t n, cap; } StrList;

static int sl_push(StrList *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *o = realloc(l->off, cap * sizeof *o); if (!o) return -1; l->off = o;
        size_t *q = realloc(l->len, cap * sizeof *q); if (!q) return -1; l->len = q;
        l->cap = cap;
    }
    size_t off = l->text.len;
    if (buf_append(&l->text, s, n)) return -1;
    l->off[l->n] = off; l->len[l->n] = n; l->n++;
    return 0;
}
static void sl_clear(StrList *l) { l->n = 0; l->text.len = 0; }
static void sl_free(StrList *l) { free(l->text.data); free(l->off); free(l->len); }
static const char *sl_at(const StrList *l, size_t i) { return l->text.data + l->off[i]; }

static int byte_fallback_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static void flush_bytes(StrList *out, Buf *bytes) {
    if (bytes->len == 0) return;
    if (utf8_valid_prefix(bytes->data, bytes->len) == bytes->len) sl_push(out, bytes->data, bytes->len);
    else for (size_t i = 0; i < bytes->len; i++) sl_push(out, "\xEF\xBF\xBD", 3);
    bytes->len = 0;
}

static void decode_step(const DecOp *op, const StrList *in, StrList *out) {
    sl_clear(out);
    Buf b = {0};
    switch (op->type) {
    case DEC_BYTELEVEL: {
        uint32_t b2c[256]; int16_t c2b[512];
        byte_level_alphabet(b2c, c2b);
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)sl_at(in, i);
            size_t n = in->len[i], start = b.len;
            int ok = 1;
            for (size_t j = 0; j < n && ok;) {
                uint32_t ch; j += (size_t)utf8_decode(s + j, &ch);
                if (ch < 512 && c2b[ch] >= 0) { char c = (char)c2b[ch]; buf_append(&b, &c, 1); }
                else ok = 0;
            }
            if (!ok) { b.len = start; buf_append(&b, s, n); }   // not all in the alphabet: keep as is
        }
        Buf lossy = {0};
        buf_append_lossy(&lossy, b.data ? b.data : "", b.len);
        sl_push(out, lossy.data ? lossy.data : "", lossy.len);
        free(lossy.data);
        break;
    }
    case DEC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = sl_at(in, i);
            b.len = 0;
            for (size_t j = 0; j < in->len[i];) {
                if (j + (size_t)op->repl_len <= in->len[i] && !memcmp(s + j, op->repl, (size_t)op->repl_len)) {
                    if (!(i == 0 && op->scheme != PREPEND_NEVER)) buf_append(&b, " ", 1);
                    j += (size_t)op->repl_len;
                } else { int k = utf8_len((unsigned char)s[j]); buf_append(&b, s + j, (size_t)k); j += (size_t)k; }
            }
            sl_push(out, b.data ? b.data : "", b.len);
        }
        break;
    case DEC_REPLACE: {
        size_t pl = strlen(op->pat), cl = strlen(op->content);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = sl_at(in, i);
            b.len = 0;
            for (size_t j = 0; j < in->len[i];) {
                if (pl && j + pl <= in->len[i] && !memcmp(s + j, op->pat, pl)) { buf_append(&b, op->content, cl); j += pl; }
                else buf_append(&b, s + j++, 1);
            }
            sl_push(out, b.data ? b.data : "", b.len);
        }
        break;
    }
    case DEC_BYTEFALLBACK:
        for (size_t i = 0; i < in->n; i++) {
            int v = byte_fallback_value(sl_at(in, i), in->len[i]);
            if (v >= 0) { char c = (char)v; buf_append(&b, &c, 1); continue; }
            flush_bytes(out, &b);
            sl_push(out, sl_at(in, i), in->len[i]);
        }
        flush_bytes(out, &b);
        break;
    case DEC_FUSE:
        for (size_t i = 0; i < in->n; i++) buf_append(&b, sl_at(in, i), in->len[i]);
        sl_push(out, b.data ? b.data : "", b.len);
        break;
    case DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)sl_at(in, i);
            size_t n = in->len[i], a = 0, e = n;
            for (int k = 0; k < op->start && a < n; k++) {
                uint32_t ch; int l = utf8_decode(s + a, &ch);
                if (ch != op->strip_char) break;
                a += (size_t)l;
            }
            for (int k = 0; k < op->stop && e > a; k++) {
                size_t p = e - 1;
                while (p > a && (s[p] & 0xC0) == 0x80) p--;
                uint32_t ch; utf8_decode(s + p, &ch);
                if (ch != op->strip_char) break;
                e = p;
            }
            sl_push(out, (const char *)s + a, e - a);
        }
        break;
    }
    free(b.data);
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n) {
    size_t len;
    return tokenizer_decode_len(t, ids, n, &len);
}

char *tokenizer_decode_len(const Tokenizer *t, const int32_t *ids, size_t n, size_t *len) {
    StrList a = {0}, b = {0};
    for (size_t i = 0; i < n; i++) {
        const char *s = tokenizer_id_to_token(t, ids[i]);
        if (s) sl_push(&a, s, strlen(s));
    }
    for (int i = 0; i < t->ndec; i++) {
        decode_step(&t->dec[i], &a, &b);
        StrList tmp = a; a = b; b = tmp;
    }
    Buf out = {0};
    for (size_t i = 0; i < a.n; i++) {
        if (i > 0 && !t->has_decoder) buf_append(&out, " ", 1);   // no decoder: HF joins with spaces
        buf_append(&out, sl_at(&a, i), a.len[i]);
    }
    if (!out.data) buf_append(&out, "", 0);
    sl_free(&a); sl_free(&b);
    *len = out.len;
    return out.data;
}
