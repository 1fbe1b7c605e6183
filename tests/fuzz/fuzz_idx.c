/*
 libFuzzer target: the Megatron MMIDIDX reader (indexed_dataset_open) and the window sampler of llmtrain.h.

 Input layout: u8 flags, u8 T, u8 a, u8 b, u16 n (little-endian), n bytes of .idx, then the .bin bytes.
   flags bit 0: the .bin is cut or padded to the size the .idx describes (a matching pair);
   flags bit 1: the sequence pointers are rewritten back to back first (reach the document checks);
   flags bit 2: the sampler shuffles; T = 1 + T % 64; the sampler covers documents [a % (D+1), ..).
 Without bits 0/1 the pair is used as given (a mismatching .bin, broken pointers).

 When the pair opens: documents tile the tokens, every token of every document is read, the id check
 finds exactly the ids outside the vocabulary, and the sampler's windows (every window of epoch 0 and the
 first of epoch 1) are the T+1-token cuts at stride T of the documents concatenated in the epoch's order.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "fuzz_common.h"

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char prefix[512], ipath[600], bpath[600];
    if (!prefix[0]) {
        snprintf(prefix, sizeof(prefix), "%s/ds", fuzz_tmpdir());
        snprintf(ipath, sizeof(ipath), "%s.idx", prefix);
        snprintf(bpath, sizeof(bpath), "%s.bin", prefix);
    }
    if (size < 6) return 0;
    int flags = data[0], T = 1 + data[1] % 64, ra = data[2], rb = data[3];
    size_t ilen = (size_t)data[4] | (size_t)data[5] << 8;
    if (ilen > size - 6) ilen = size - 6;
    uint8_t *idx = malloc(ilen + 1);
    if (!idx) return 0;
    memcpy(idx, data + 6, ilen);
    const uint8_t *bin = data + 6 + ilen;
    size_t blen = size - 6 - ilen;
    uint8_t *binbuf = NULL;

    /* what the index describes, read the way the format says (docs/formats.md sec. 1.2) */
    int item = ilen >= 18 ? (idx[17] == 8 ? 2 : idx[17] == 4 ? 4 : 0) : 0;
    uint64_t S = ilen >= 34 ? rd64(idx + 18) : 0;
    int sane = item && ilen >= 34 && S <= (ilen - 34) / 12;
    if (sane && (flags & 2)) {
        int64_t p = 0;
        for (uint64_t i = 0; i < S; i++) {
            int32_t len; memcpy(&len, idx + 34 + 4 * i, 4);
            memcpy(idx + 34 + 4 * S + 8 * i, &p, 8);
            p += (int64_t)len * item;
        }
    }
    if (sane && (flags & 1)) {
        int64_t want = 0;
        for (uint64_t i = 0; i < S; i++) { int32_t len; memcpy(&len, idx + 34 + 4 * i, 4); if (len > 0) want += (int64_t)len * item; }
        if (want <= (1 << 20)) {
            binbuf = calloc((size_t)want + 1, 1);
            if (!binbuf) { free(idx); return 0; }
            for (int64_t i = 0; i < want; i++) binbuf[i] = blen ? bin[i % blen] : (uint8_t)(i * 131 + 7);
            bin = binbuf; blen = (size_t)want;
        }
    }
    fuzz_write_file(ipath, idx, ilen);
    fuzz_write_file(bpath, bin, blen);

    IndexedDataset ds;
    char err[1024]; err[0] = 0;
    int rc = indexed_dataset_open(&ds, prefix, err, sizeof(err));
    if (rc != 0) {
        FUZZ_CHECK(err[0] != 0, "open failed without a message");
        goto done;
    }
    FUZZ_CHECK(ds.itemsize == 2 || ds.itemsize == 4, "itemsize %d", ds.itemsize);
    FUZZ_CHECK(ds.bin_size == blen, "bin_size %zu, file %zu", ds.bin_size, blen);
    int64_t ntok = (int64_t)(ds.bin_size / (size_t)ds.itemsize), pos = 0, mx = -1, mn = 0;
    for (uint64_t d = 0; d < ds.num_docs; d++) {
        FUZZ_CHECK(ds.doc_len[d] >= 0 && ds.doc_start[d] == pos, "document %llu starts at %lld (expected %lld), %lld tokens",
                   (unsigned long long)d, (long long)ds.doc_start[d], (long long)pos, (long long)ds.doc_len[d]);
        pos += ds.doc_len[d];
        FUZZ_CHECK(pos <= ntok, "document %llu ends at token %lld of %lld", (unsigned long long)d, (long long)pos, (long long)ntok);
    }
    FUZZ_CHECK(pos == ntok, "documents hold %lld tokens, the .bin %lld", (long long)pos, (long long)ntok);
    for (uint64_t q = 0; q < ds.num_seqs; q++)
        FUZZ_CHECK(ds.seq_start[q] <= ds.seq_start[q + 1], "sequence %llu starts at %lld, the next at %lld", (unsigned long long)q,
                   (long long)ds.seq_start[q], (long long)ds.seq_start[q + 1]);
    FUZZ_CHECK(ds.seq_start[0] == 0 && ds.seq_start[ds.num_seqs] == ntok, "sequences span %lld..%lld of %lld tokens",
               (long long)ds.seq_start[0], (long long)ds.seq_start[ds.num_seqs], (long long)ntok);
    for (int64_t i = 0; i < ntok; i++) {
        int64_t t = ds.itemsize == 2 ? (int64_t)(bin[2 * i] | bin[2 * i + 1] << 8) : (int64_t)(int32_t)((uint32_t)bin[4 * i] |
                    (uint32_t)bin[4 * i + 1] << 8 | (uint32_t)bin[4 * i + 2] << 16 | (uint32_t)bin[4 * i + 3] << 24);
        FUZZ_CHECK(indexed_dataset_token(&ds, i) == t, "token %lld", (long long)i);
        if (t > mx) mx = t;
        if (t < mn) mn = t;
    }
    /* the id check over all documents: passes a vocabulary of max + 1 ids exactly when no id is negative, and
       never passes one of max ids */
    if (ntok > 0 && mx >= 0 && mx < INT32_MAX) {
        int ok = indexed_dataset_check_ids(&ds, 0, ds.num_seqs, (int)mx + 1, err, sizeof(err)) == 0;
        FUZZ_CHECK(ok == (mn >= 0), "check_ids with vocabulary %lld: %d, smallest id %lld", (long long)mx + 1, ok, (long long)mn);
        FUZZ_CHECK(indexed_dataset_check_ids(&ds, 0, ds.num_seqs, (int)mx, err, sizeof(err)) != 0, "check_ids passed id %lld", (long long)mx);
    }

    /* the sampler over sequences [db, de) */
    uint64_t D = ds.num_seqs, db = ra % (D + 1), de = db + rb % (D - db + 1);
    if (rb == 255) de = D;
    Sampler s;
    int shuffle = (flags >> 2) & 1;
    uint64_t ntoks = 0;
    for (uint64_t d = db; d < de; d++) ntoks += (uint64_t)(ds.seq_start[d + 1] - ds.seq_start[d]);
    rc = sampler_init(&s, &ds, db, de, T, 1234 + flags, shuffle, err, sizeof(err));
    if (rc != 0) {
        FUZZ_CHECK(ntoks < (uint64_t)T + 1, "sampler_init refused %llu tokens for T=%d: %s", (unsigned long long)ntoks, T, err);
        sampler_free(&s);
        goto close;
    }
    FUZZ_CHECK(s.tokens_per_epoch == ntoks, "tokens_per_epoch %llu, expected %llu", (unsigned long long)s.tokens_per_epoch,
               (unsigned long long)ntoks);
    uint64_t W = s.windows_per_epoch;
    FUZZ_CHECK(W == (ntoks - 1) / (uint64_t)T, "windows_per_epoch %llu", (unsigned long long)W);
    if (W * (uint64_t)(T + 1) <= 2000000) {
        int *win = malloc(sizeof(int) * (size_t)(T + 1));
        int64_t *stream = malloc(sizeof(int64_t) * (size_t)(ntoks ? ntoks : 1));
        uint8_t *seen = calloc(W ? W : 1, 1);
        if (!win || !stream || !seen) abort();
        for (uint64_t k = 0; k <= W; k++) {
            sampler_window(&s, k, win);
            if (k == 0 || k == W) {
                /* the epoch's stream: sequences in s.seq_order (identity without shuffling) */
                uint64_t nd = de - db, p = 0;
                uint8_t *used = calloc(nd ? nd : 1, 1);
                if (!used) abort();
                for (uint64_t i = 0; i < nd; i++) {
                    uint64_t o = s.seq_order[i];
                    FUZZ_CHECK(o < nd && !used[o] && (shuffle || o == i), "seq_order[%llu] = %llu", (unsigned long long)i, (unsigned long long)o);
                    used[o] = 1;
                    for (int64_t j = ds.seq_start[db + o]; j < ds.seq_start[db + o + 1]; j++) stream[p++] = indexed_dataset_token(&ds, j);
                }
                free(used);
            }
            uint64_t w = s.win_order[k % W];
            FUZZ_CHECK(w < W && (shuffle || w == k % W), "win_order[%llu] = %llu", (unsigned long long)(k % W), (unsigned long long)w);
            if (k < W) { FUZZ_CHECK(!seen[w], "window %llu served twice in an epoch", (unsigned long long)w); seen[w] = 1; }
            for (int t = 0; t <= T; t++)
                FUZZ_CHECK(win[t] == (int)stream[w * (uint64_t)T + (uint64_t)t], "window %llu (cut %llu) token %d: %d, expected %d",
                           (unsigned long long)k, (unsigned long long)w, t, win[t], (int)stream[w * (uint64_t)T + (uint64_t)t]);
        }
        free(win); free(stream); free(seen);
    } else {
        int *win = malloc(sizeof(int) * (size_t)(T + 1));
        if (!win) abort();
        sampler_window(&s, 0, win); sampler_window(&s, W - 1, win); sampler_window(&s, W, win);
        free(win);
    }
    sampler_free(&s);
close:
    indexed_dataset_close(&ds);
done:
    free(idx); free(binbuf);
    return 0;
}
