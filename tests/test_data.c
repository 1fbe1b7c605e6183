/*
 The data side of llmtrain.h: the Megatron MMIDIDX reader on a file built byte by byte from the format
 (docs/formats.md sec. 1), the window sampler of docs/design.md sec. 4, the rank-strided data loader, the document
 split, and the errors for broken files.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); failures++; } } while (0)

static void put_u64(FILE *f, uint64_t v) { fwrite(&v, 8, 1, f); }

/* Writes PREFIX.idx/.bin by hand: docs[d] has lens[d] tokens; each document is one sequence unless
   split2 is set, in which case documents are stored as two sequences (Megatron's sentence mode). */
static void write_dataset(const char *prefix, int ndocs, const int *lens, const int *tokens, int dtype_code, int split2) {
    char p[256];
    int itemsize = dtype_code == 8 ? 2 : 4;
    snprintf(p, sizeof(p), "%s.bin", prefix);
    FILE *f = fopen(p, "wb");
    int total = 0;
    for (int d = 0; d < ndocs; d++) total += lens[d];
    for (int i = 0; i < total; i++) {
        if (itemsize == 2) { uint16_t v = (uint16_t)tokens[i]; fwrite(&v, 2, 1, f); }
        else { int32_t v = tokens[i]; fwrite(&v, 4, 1, f); }
    }
    fclose(f);
    /* sequences */
    int seq_len[64], nseq = 0, doc_idx[65], nd = 0;
    doc_idx[nd++] = 0;
    for (int d = 0; d < ndocs; d++) {
        if (split2 && lens[d] >= 2) { seq_len[nseq++] = lens[d] / 2; seq_len[nseq++] = lens[d] - lens[d] / 2; }
        else seq_len[nseq++] = lens[d];
        doc_idx[nd++] = nseq;
    }
    snprintf(p, sizeof(p), "%s.idx", prefix);
    f = fopen(p, "wb");
    fwrite("MMIDIDX\0\0", 1, 9, f);
    put_u64(f, 1);
    unsigned char code = (unsigned char)dtype_code;
    fwrite(&code, 1, 1, f);
    put_u64(f, (uint64_t)nseq);
    put_u64(f, (uint64_t)nd);
    for (int i = 0; i < nseq; i++) { int32_t l = seq_len[i]; fwrite(&l, 4, 1, f); }
    int64_t ptr = 0;
    for (int i = 0; i < nseq; i++) { fwrite(&ptr, 8, 1, f); ptr += (int64_t)seq_len[i] * itemsize; }
    for (int i = 0; i < nd; i++) { int64_t v = doc_idx[i]; fwrite(&v, 8, 1, f); }
    fclose(f);
}

static void test_reader(int dtype_code, int split2) {
    int lens[5] = {5, 0, 7, 1, 12};
    int tokens[25];
    for (int i = 0; i < 25; i++) tokens[i] = dtype_code == 8 ? 60000 + i : 100000 + i;
    write_dataset("tests/tmp/ds", 5, lens, tokens, dtype_code, split2);
    IndexedDataset ds;
    char err[512];
    int rc = indexed_dataset_open(&ds, "tests/tmp/ds", err, sizeof(err));
    CHECK(rc == 0, "open: %s", err);
    if (rc) return;
    CHECK(ds.num_docs == 5, "num_docs %llu", (unsigned long long)ds.num_docs);
    CHECK(ds.itemsize == (dtype_code == 8 ? 2 : 4), "itemsize %d", ds.itemsize);
    int start = 0;
    for (int d = 0; d < 5; d++) {
        CHECK(ds.doc_len[d] == lens[d] && ds.doc_start[d] == start, "doc %d: start %lld len %lld", d,
              (long long)ds.doc_start[d], (long long)ds.doc_len[d]);
        start += lens[d];
    }
    for (int i = 0; i < 25; i++) CHECK(indexed_dataset_token(&ds, i) == tokens[i], "token %d", i);
    /* sequences: documents of >= 2 tokens are two sequences with split2 (8 in all), else one each */
    uint64_t S = split2 ? 8 : 5;
    CHECK(ds.num_seqs == S && ds.seq_start[0] == 0 && ds.seq_start[S] == 25, "%llu sequences over %lld..%lld",
          (unsigned long long)ds.num_seqs, (long long)ds.seq_start[0], (long long)ds.seq_start[ds.num_seqs]);
    /* every id (the largest is the last) fits a vocabulary one larger than it, and not one equal to it; the
       place is named by sequence (the last one: 12 tokens, or the second half of 6) */
    CHECK(indexed_dataset_check_ids(&ds, 0, S, tokens[24] + 1, err, sizeof(err)) == 0, "check ids: %s", err);
    CHECK(indexed_dataset_check_ids(&ds, 0, S, tokens[24], err, sizeof(err)) != 0 &&
          strstr(err, split2 ? "sequence 7, token 5: id" : "sequence 4, token 11: id") != NULL, "check ids with the largest id out: \"%s\"", err);
    indexed_dataset_close(&ds);
    printf("reader (dtype %d, %s): ok\n", dtype_code, split2 ? "two sequences per document" : "one sequence per document");
}

/* Every window of an epoch is T+1 consecutive tokens of the documents concatenated in that epoch's order;
   the epoch's windows are exactly the stride-T cuts, each once. */
static void test_sampler(void) {
    enum { ND = 9, T = 4 };
    int lens[ND] = {3, 6, 1, 9, 4, 0, 5, 2, 8};
    int tokens[64], n = 0;
    for (int d = 0; d < ND; d++) for (int i = 0; i < lens[d]; i++) tokens[n++] = 1000 * (d + 1) + i;
    write_dataset("tests/tmp/sm", ND, lens, tokens, 8, 0);
    IndexedDataset ds;
    char err[512];
    CHECK(indexed_dataset_open(&ds, "tests/tmp/sm", err, sizeof(err)) == 0, "%s", err);
    Sampler s;
    CHECK(sampler_init(&s, &ds, 0, ND, T, 42, 1, err, sizeof(err)) == 0, "%s", err);
    CHECK(s.tokens_per_epoch == (uint64_t)n, "tokens %llu", (unsigned long long)s.tokens_per_epoch);
    uint64_t W = s.windows_per_epoch;
    CHECK(W == (uint64_t)(n - 1) / T, "windows %llu", (unsigned long long)W);
    for (int epoch = 0; epoch < 3; epoch++) {
        sampler_window(&s, (uint64_t)epoch * W, (int[T + 1]){0});  /* load the epoch's orders */
        int stream[64], k = 0;
        for (uint64_t i = 0; i < ND; i++) {
            uint64_t d = s.seq_order[i];
            for (int j = 0; j < lens[d]; j++) stream[k++] = 1000 * ((int)d + 1) + j;
        }
        int seen[64] = {0};
        for (uint64_t w = 0; w < W; w++) {
            int win[T + 1];
            sampler_window(&s, (uint64_t)epoch * W + w, win);
            uint64_t cut = s.win_order[w];
            CHECK(cut < W && !seen[cut], "window order is not a permutation");
            seen[cut] = 1;
            for (int t = 0; t <= T; t++) CHECK(win[t] == stream[cut * T + t], "epoch %d window %llu token %d", epoch, (unsigned long long)w, t);
        }
    }
    /* the same seed gives the same stream; another seed another one; epochs differ */
    Sampler s2, s3;
    sampler_init(&s2, &ds, 0, ND, T, 42, 1, err, sizeof(err));
    sampler_init(&s3, &ds, 0, ND, T, 43, 1, err, sizeof(err));
    int same = 1, other = 1, epochs_differ = 0;
    for (uint64_t k = 0; k < 2 * W; k++) {
        int a[T + 1], b[T + 1], c[T + 1];
        sampler_window(&s, k, a); sampler_window(&s2, k, b); sampler_window(&s3, k, c);
        same &= !memcmp(a, b, sizeof(a));
        other &= !memcmp(a, c, sizeof(a));
        if (k < W) { int d[T + 1]; sampler_window(&s, k + W, d); sampler_window(&s, k, a); epochs_differ |= memcmp(a, d, sizeof(a)) != 0; }
    }
    CHECK(same, "the same seed gave different windows");
    CHECK(!other, "seeds 42 and 43 gave the same windows");
    CHECK(epochs_differ, "epochs 0 and 1 have the same order");
    /* unshuffled (validation): file order */
    Sampler v;
    sampler_init(&v, &ds, 2, 5, T, 42, 0, err, sizeof(err));
    int win[T + 1];
    sampler_window(&v, 0, win);
    int expect[T + 1] = {3000, 4000, 4001, 4002, 4003};
    CHECK(!memcmp(win, expect, sizeof(win)), "unshuffled window 0 starts %d %d", win[0], win[1]);
    /* too little data for one window */
    Sampler tiny;
    CHECK(sampler_init(&tiny, &ds, 2, 3, T, 1, 1, err, sizeof(err)) != 0, "a 1-token split should not make a window");
    printf("too-small split error: %s\n", err);

    /* data loader: rank r of W takes windows cursor + r + W*b, so ranks together read the world-1 batch */
    DataLoader one, r0, r1;
    Blend b_one, b_r0, b_r1;
    double w1 = 1.0;
    Sampler *ps = &s, *ps2 = &s2;
    blend_init(&b_one, 1, &w1, &ps);
    blend_init(&b_r0, 1, &w1, &ps2);
    blend_init(&b_r1, 1, &w1, &ps2);
    dataloader_init(&one, &b_one, 4, 0, 1);
    dataloader_init(&r0, &b_r0, 2, 0, 2);
    dataloader_init(&r1, &b_r1, 2, 1, 2);
    for (int step = 0; step < 5; step++) {
        dataloader_next(&one); dataloader_next(&r0); dataloader_next(&r1);
        for (int b = 0; b < 4; b++) {
            const int *rows = (b % 2 == 0 ? r0.inputs : r1.inputs) + (b / 2) * T;
            const int *trg = (b % 2 == 0 ? r0.targets : r1.targets) + (b / 2) * T;
            CHECK(!memcmp(one.inputs + b * T, rows, T * sizeof(int)), "step %d row %d inputs differ across world sizes", step, b);
            CHECK(!memcmp(one.targets + b * T, trg, T * sizeof(int)), "step %d row %d targets differ", step, b);
            CHECK(one.targets[b * T] == one.inputs[b * T + 1], "targets are not inputs shifted by one");
        }
    }
    CHECK(one.cursor == 20 && r0.cursor == 20, "cursor %llu", (unsigned long long)one.cursor);
    /* EOD masking: no loss where the input is the EOD id */
    DataLoader em;
    dataloader_init(&em, &b_one, 4, 0, 1);
    em.eod = one.inputs[1];
    dataloader_next(&em);
    int masked = 0;
    for (int i = 0; i < 4 * T; i++) {
        masked += em.targets[i] == -1;
        CHECK((em.targets[i] == -1) == (em.inputs[i] == em.eod), "position %d: input %d, target %d", i, em.inputs[i], em.targets[i]);
    }
    CHECK(masked >= 1, "nothing masked");
    dataloader_free(&em);
    dataloader_free(&one); dataloader_free(&r0); dataloader_free(&r1);
    sampler_free(&s); sampler_free(&s2); sampler_free(&s3); sampler_free(&v);
    indexed_dataset_close(&ds);
    printf("sampler and loader: ok\n");
}

/* Blends follow Megatron's deterministic rule: dataset i serves window count_i when w_i*max(s,1) - count_i
   is largest; over a long stream each dataset's share is its weight. */
static void test_blend(void) {
    int lens[3] = {40, 30, 50}, tokens[120];
    for (int i = 0; i < 120; i++) tokens[i] = i;
    write_dataset("tests/tmp/bl", 3, lens, tokens, 8, 0);
    IndexedDataset ds;
    char err[512], buf[256];
    CHECK(indexed_dataset_open(&ds, "tests/tmp/bl", err, sizeof(err)) == 0, "%s", err);
    Sampler a, b;
    sampler_init(&a, &ds, 0, 2, 4, 1, 1, err, sizeof(err));
    sampler_init(&b, &ds, 2, 3, 4, 2, 1, err, sizeof(err));
    Sampler *ss[2] = {&a, &b};
    char *prefixes[4]; double weights[4];
    int n = parse_data_spec("0.7 tests/tmp/bl 0.3 tests/tmp/bl", buf, sizeof(buf), prefixes, weights, 4, err, sizeof(err));
    CHECK(n == 2 && weights[0] == 0.7 && weights[1] == 0.3 && !strcmp(prefixes[1], "tests/tmp/bl"), "weighted --data parse");
    CHECK(parse_data_spec("x y", buf, sizeof(buf), prefixes, weights, 4, err, sizeof(err)) == 2 && weights[0] < 0, "unweighted parse");
    CHECK(parse_data_spec("0.5 x -1 y", buf, sizeof(buf), prefixes, weights, 4, err, sizeof(err)) < 0, "negative weight accepted");
    Blend bl;
    blend_init(&bl, 2, (double[]){0.7, 0.3}, ss);
    int win[5], expect[5], from_a = 0;
    uint64_t ca = 0, cb = 0;
    for (uint64_t k = 0; k < 1000; k++) {
        blend_window(&bl, k, win);
        /* which dataset: documents 0-1 hold tokens 0..69, document 2 holds 70..119 */
        int is_a = win[0] < 70;
        from_a += is_a;
        sampler_window(is_a ? &a : &b, is_a ? ca++ : cb++, expect);
        CHECK(!memcmp(win, expect, sizeof(win)), "blend window %llu is not its dataset's next window", (unsigned long long)k);
    }
    CHECK(from_a >= 699 && from_a <= 701, "dataset a served %d of 1000", from_a);
    /* random access agrees with the sequential walk */
    int w2[5];
    blend_window(&bl, 500, w2);
    Blend fresh;
    blend_init(&fresh, 2, (double[]){0.7, 0.3}, ss);
    blend_window(&fresh, 500, win);
    CHECK(!memcmp(win, w2, sizeof(win)), "blend window 500 depends on the access order");
    sampler_free(&a); sampler_free(&b);
    indexed_dataset_close(&ds);
    printf("blend: ok (dataset a served %d of 1000 windows at weight 0.7)\n", from_a);
}

/* The split ranges of Megatron's GPT dataset (tests/fixtures/megatron/split.txt, from megatron-core by
   dev/gen_megatron_data_fixtures.py): "SPEC N b0 e0 b1 e1 b2 e2" for 10 specs x 20 sizes, ties rounded to even. */
static void test_split(void) {
    uint64_t b[3], e[3];
    char err[256], spec[64];
    FILE *f = fopen("tests/fixtures/megatron/split.txt", "r");
    CHECK(f != NULL, "tests/fixtures/megatron/split.txt: cannot open");
    int rows = 0;
    unsigned long long n, w[6];
    while (f && fscanf(f, "%63s %llu %llu %llu %llu %llu %llu %llu", spec, &n, &w[0], &w[1], &w[2], &w[3], &w[4], &w[5]) == 8) {
        CHECK(split_sequences(spec, n, b, e, err, sizeof(err)) == 0, "%s", err);
        for (int i = 0; i < 3; i++)
            if (w[2 * i] != w[2 * i + 1] || b[i] != e[i])   /* an empty split: any empty range */
                CHECK(b[i] == w[2 * i] && e[i] == w[2 * i + 1], "--split %s of %llu: split %d is [%llu, %llu), Megatron's [%llu, %llu)",
                      spec, n, i, (unsigned long long)b[i], (unsigned long long)e[i], w[2 * i], w[2 * i + 1]);
        rows++;
    }
    if (f) fclose(f);
    CHECK(rows == 200, "%d split rows read", rows);
    CHECK(split_sequences("a,b", 10, b, e, err, sizeof(err)) != 0, "bad split accepted");
    CHECK(split_sequences("0,0,0", 10, b, e, err, sizeof(err)) != 0, "zero split accepted");
    printf("split: ok (%d ranges as megatron-core's)\n", rows);
}

/* --eod-mask-loss as Megatron's _get_ltor_masks_and_position_ids (tests/fixtures/megatron/masks.txt): no loss
   where the input token is the EOD (0 here); on 5 6 7 0 8 9 0 10 11 that is positions 3 and 6. Its position ids
   (--reset-position-ids) and the first key each row's attention mask allows (--reset-attention-mask) are
   document_starts' pos and doc_start. */
static void test_eod_mask(void) {
    FILE *f = fopen("tests/fixtures/megatron/masks.txt", "r");
    CHECK(f != NULL, "tests/fixtures/megatron/masks.txt: cannot open");
    char line[4096];
    int win[256], n = 0, windows = 0;
    while (f && fgets(line, sizeof(line), f)) {
        char *p = strchr(line, ' ');
        if (!p) continue;
        *p++ = 0;
        int v[256], k = 0, used;
        while (k < 255 && sscanf(p, "%d%n", &v[k], &used) == 1) { p += used; k++; }
        if (!strcmp(line, "tokens")) { memcpy(win, v, k * sizeof(int)); win[k] = 1; n = k; }
        if (!strcmp(line, "loss")) {
            int tg[256];
            window_targets(tg, win, n, 0);
            for (int t = 0; t < n; t++)
                CHECK((tg[t] >= 0) == v[t] && (tg[t] < 0 || tg[t] == win[t + 1]), "window %d position %d: target %d, Megatron's loss mask %d", windows, t, tg[t], v[t]);
            windows++;
        }
        if (!strcmp(line, "pos") || !strcmp(line, "start")) {   /* --reset-position-ids, --reset-attention-mask */
            int st[256], ps[256], *got = !strcmp(line, "pos") ? ps : st;
            document_starts(st, ps, win, 1, n, 0);
            for (int t = 0; t < n; t++)
                CHECK(got[t] == v[t], "window %d position %d: %s %d, Megatron's %d", windows - 1, t, line, got[t], v[t]);
        }
    }
    if (f) fclose(f);
    int ex[10] = {5, 6, 7, 0, 8, 9, 0, 10, 11, 12}, tg[9];
    window_targets(tg, ex, 9, 0);
    CHECK(tg[3] == -1 && tg[6] == -1 && tg[2] == 0 && tg[5] == 0, "the README's window: targets %d %d %d %d", tg[2], tg[3], tg[5], tg[6]);
    window_targets(tg, ex, 9, -1);
    CHECK(tg[3] == 8 && tg[6] == 10, "no EOD mask: every target kept");
    CHECK(windows == 11, "%d mask windows read", windows);
    printf("EOD loss mask, reset positions and attention starts: ok (%d windows as megatron-core's)\n", windows);
}

/* numpy.random.RandomState reimplemented (tests/fixtures/megatron/numpy.txt, from numpy): the raw 32-bit
   words, shuffle of arange(n), permutation(n), and bounded draws above 2^32 (two words each). */
static void test_numpy_random(void) {
    FILE *f = fopen("tests/fixtures/megatron/numpy.txt", "r");
    CHECK(f != NULL, "tests/fixtures/megatron/numpy.txt: cannot open");
    char kind[32];
    unsigned long long seed;
    int rows = 0;
    while (f && fscanf(f, "%31s %llu", kind, &seed) == 2) {
        NumpyRandom r;
        numpy_random_seed(&r, (uint32_t)seed);
        long long n = 8, v, max = 0;
        if (strcmp(kind, "raw")) CHECK(fscanf(f, "%lld", strcmp(kind, "bounded64") ? &n : &max) == 1, "numpy.txt: %s", kind);
        if (!strcmp(kind, "bounded64")) n = 6;
        int64_t *x = malloc(n * sizeof(int64_t));
        for (long long i = 0; i < n; i++) x[i] = i;
        if (!strcmp(kind, "shuffle") || !strcmp(kind, "permutation")) numpy_random_shuffle(&r, x, n);
        for (long long i = 0; i < n; i++) {
            if (!strcmp(kind, "raw")) x[i] = numpy_random_u32(&r);
            if (!strcmp(kind, "bounded64")) x[i] = (int64_t)numpy_random_interval(&r, (uint64_t)max);
            CHECK(fscanf(f, "%lld", &v) == 1 && v == x[i], "numpy %s seed %llu n %lld: item %lld is %lld, numpy's %lld", kind, seed, n, i, (long long)x[i], v);
        }
        free(x);
        rows++;
    }
    if (f) fclose(f);
    CHECK(rows == 28, "%d numpy rows read", rows);
    printf("numpy RandomState: ok (%d draws as numpy's)\n", rows);
}

/* --data-order megatron: the first 1,000 training samples of megatron-core's GPTDataset / BlendedDataset
   (tests/fixtures/megatron/windows_NAME.txt): the dataset, its sample index, the shuffle index entry and the
   T+1 tokens of each. */
static void test_megatron_order(const char *name) {
    char path[256], line[8192], err[512];
    snprintf(path, sizeof(path), "tests/fixtures/megatron/windows_%s.txt", name);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s: cannot open", path);
    if (!f) return;
    /* # data A B C weights 0.5 0.3 0.2 seed S seq_len T split SPEC samples N */
    CHECK(fgets(line, sizeof(line), f) != NULL, "%s: empty", path);
    char *words[64];
    int nw = 0;
    for (char *w = strtok(line, " \n"); w && nw < 64; w = strtok(NULL, " \n")) words[nw++] = w;
    int i = 2, n = 0, T = 0;
    unsigned long long seed = 0;
    long long target = 0;
    const char *spec = NULL;
    IndexedDataset ds[MAX_BLEND];
    double weights[MAX_BLEND];
    uint64_t begin[MAX_BLEND], end[MAX_BLEND], b3[3], e3[3];
    for (; i < nw && strcmp(words[i], "weights"); i++, n++) {
        snprintf(path, sizeof(path), "tests/fixtures/megatron/%s", words[i]);
        CHECK(indexed_dataset_open(&ds[n], path, err, sizeof(err)) == 0, "%s", err);
        weights[n] = -1;
    }
    for (int k = 0, j = i + 1; k < n && strcmp(words[j], "-"); k++, j++) weights[k] = atof(words[j]);
    for (; i + 1 < nw; i++) {
        if (!strcmp(words[i], "seed")) seed = strtoull(words[i + 1], NULL, 10);
        if (!strcmp(words[i], "seq_len")) T = atoi(words[i + 1]);
        if (!strcmp(words[i], "split")) spec = words[i + 1];
        if (!strcmp(words[i], "samples")) target = atoll(words[i + 1]);
    }
    for (int k = 0; k < n; k++) {
        CHECK(split_sequences(spec, ds[k].num_seqs, b3, e3, err, sizeof(err)) == 0, "%s", err);
        begin[k] = b3[0]; end[k] = e3[0];
    }
    Blend b;
    MegatronGPT g[MAX_BLEND];
    CHECK(megatron_blend_init(&b, g, n, weights, ds, begin, end, T, (uint32_t)seed, target, err, sizeof(err)) == 0, "%s", err);
    int *win = malloc((T + 1) * sizeof(int)), rows = 0, bad = 0, separate = 0;
    long long k, d, j, sh, v;
    while (fscanf(f, "%lld %lld %lld %lld", &k, &d, &j, &sh) == 4) {
        uint64_t sample;
        int src = blend_source(&b, (uint64_t)k, &sample);
        int ok = src == d && (long long)sample == j && g[src].shuffle[sample] == sh;
        blend_window(&b, (uint64_t)k, win);
        for (int t = 0; t <= T; t++) { CHECK(fscanf(f, "%lld", &v) == 1, "%s: short line %lld", name, k); ok &= win[t] == v; }
        if (!ok && bad++ < 3) CHECK(0, "%s window %lld: dataset %d sample %llu (shuffled %lld), Megatron's %lld %lld (%lld), or tokens differ",
                                    name, k, src, (unsigned long long)sample, (long long)g[src].shuffle[sample], d, j, sh);
        rows++;
    }
    fclose(f);
    CHECK(rows == 1000 && bad == 0, "%s: %d windows, %d differ", name, rows, bad);
    for (int q = 0; q < n; q++) { separate += g[q].separate_last; megatron_gpt_free(&g[q]); indexed_dataset_close(&ds[q]); }
    free(win);
    printf("megatron order %s: ok (%d windows as megatron-core's; %d dataset(s), %d with a separate last epoch)\n", name, rows, n, separate);
}

/* Broken files give one clear error naming the file. */
static void expect_open_error(const char *what, const char *needle) {
    IndexedDataset ds;
    char err[512] = "";
    int rc = indexed_dataset_open(&ds, "tests/tmp/bad", err, sizeof(err));
    CHECK(rc != 0, "%s: opened without error", what);
    CHECK(strstr(err, "tests/tmp/bad") && strstr(err, needle), "%s: error \"%s\" lacks \"%s\"", what, err, needle);
    printf("%-28s -> %s\n", what, err);
}

static void test_errors(void) {
    int lens[2] = {3, 4}, tokens[7] = {1, 2, 3, 4, 5, 6, 7};
    unlink("tests/tmp/bad.idx"); unlink("tests/tmp/bad.bin");
    expect_open_error("missing files", "cannot open");
    write_dataset("tests/tmp/bad", 2, lens, tokens, 8, 0);
    FILE *f = fopen("tests/tmp/bad.idx", "r+b"); fwrite("X", 1, 1, f); fclose(f);
    expect_open_error("bad magic", "magic");
    write_dataset("tests/tmp/bad", 2, lens, tokens, 8, 0);
    truncate("tests/tmp/bad.idx", 40);
    expect_open_error("truncated index", "truncated");
    write_dataset("tests/tmp/bad", 2, lens, tokens, 8, 0);
    truncate("tests/tmp/bad.bin", 10);
    expect_open_error("short .bin", "bytes");
    write_dataset("tests/tmp/bad", 2, lens, tokens, 7, 0);
    expect_open_error("float32 tokens", "dtype");
}

/* The id check on an int32 .bin: a negative id or one past the vocabulary is found wherever it is in the
   sequences checked (the first token, the last: a token that is only ever a target), named by sequence and
   place; sequences outside the range checked are not read. Odd cases store each document as two sequences
   (lengths 1,2 | 0 | 2,3 | 2,2), so token 6 is token 1 of sequence 4. */
static void test_check_ids(void) {
    enum { ND = 4, V = 100 };
    int lens[ND] = {3, 0, 5, 4}, good[12] = {0, 5, 99, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    struct { int at, id, doc, pos; } cases[] = {{0, -1, 0, 0}, {6, -2147483647 - 1, 4, 1}, {11, -5, 3, 3}, {4, V, 3, 1}};
    char err[2048], want[128];
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int tokens[12];
        memcpy(tokens, good, sizeof(tokens));
        tokens[cases[c].at] = cases[c].id;
        write_dataset("tests/tmp/ids", ND, lens, tokens, 4, c % 2);
        IndexedDataset ds;
        int rc = indexed_dataset_open(&ds, "tests/tmp/ids", err, sizeof(err));
        CHECK(rc == 0, "open: %s", err);   /* opening does not judge the ids: the vocabulary is the model's */
        if (rc) continue;
        snprintf(want, sizeof(want), "tests/tmp/ids.bin: sequence %d, token %d: id %d is outside the model's vocabulary [0, %d)",
                 cases[c].doc, cases[c].pos, cases[c].id, V);
        err[0] = 0;
        CHECK(indexed_dataset_check_ids(&ds, 0, ds.num_seqs, V, err, sizeof(err)) != 0 && !strcmp(err, want),
              "id %d at %d: \"%s\", want \"%s\"", cases[c].id, cases[c].at, err, want);
        /* the sequences before the bad one pass */
        CHECK(indexed_dataset_check_ids(&ds, 0, (uint64_t)cases[c].doc, V, err, sizeof(err)) == 0, "sequences before: %s", err);
        indexed_dataset_close(&ds);
    }
    /* uint16 ids are never negative; one at the vocabulary size is caught */
    int t16[12];
    memcpy(t16, good, sizeof(t16));
    t16[2] = V;
    write_dataset("tests/tmp/ids", ND, lens, t16, 8, 0);
    IndexedDataset ds;
    CHECK(indexed_dataset_open(&ds, "tests/tmp/ids", err, sizeof(err)) == 0, "open: %s", err);
    CHECK(indexed_dataset_check_ids(&ds, 0, ND, V, err, sizeof(err)) != 0 && strstr(err, "sequence 0, token 2: id 100"),
          "uint16 id %d: \"%s\"", V, err);
    CHECK(indexed_dataset_check_ids(&ds, 0, ND, V + 1, err, sizeof(err)) == 0, "uint16 vocab %d: %s", V + 1, err);
    indexed_dataset_close(&ds);
    printf("id check: ok\n");
}

/* Runs prepro (BIN_DIR/prepro/prepro, BIN_DIR from tests/run.sh, default .) on tests/tmp/rb.jsonl into
   tests/tmp/rb with --append-eod and the extra flags; its exit status as system() gives it. */
static int run_prepro(const char *flags) {
    const char *bin = getenv("BIN_DIR");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/prepro/prepro --input tests/tmp/rb.jsonl --tokenizer data/gpt2_tokenizer.json "
             "--output-prefix tests/tmp/rb --append-eod %s 2> /dev/null", bin && *bin ? bin : ".", flags);
    return system(cmd);
}

/* prepro's output read back by the header's reader: each document is the tokenizer's ids for its text
   followed by the EOD id, in input order, and the dtype follows the vocabulary size. */
static void test_prepro_readback(void) {
    const char *docs[] = {"Hello world, this is a test.", "Second document\nwith two lines.", "",
                          "<|endoftext|> inside text", "naïve café 你好 🙂 1234567"};
    int ndocs = 5;
    FILE *f = fopen("tests/tmp/rb.jsonl", "w");
    for (int i = 0; i < ndocs; i++) {
        json_t *o = json_pack("{s:s}", "text", docs[i]);
        char *line = json_dumps(o, JSON_COMPACT);
        fprintf(f, "%s\n", line);
        free(line); json_decref(o);
    }
    fclose(f);
    int rc = run_prepro("--workers 2");
    CHECK(rc == 0, "prepro exit %d", rc);
    char err[512];
    Tokenizer *tok = tokenizer_load("data/gpt2_tokenizer.json", err, sizeof(err));
    CHECK(tok != NULL, "%s", err);
    if (!tok || rc != 0) return;
    TokenizerState *st = tokenizer_state_new(tok);
    IndexedDataset ds;
    CHECK(indexed_dataset_open(&ds, "tests/tmp/rb_text_document", err, sizeof(err)) == 0, "%s", err);
    CHECK(ds.dtype_code == 8, "GPT-2's 50257 ids need uint16 (code 8), got %d", ds.dtype_code);
    int eod = tokenizer_eos_id(tok), d = 0;
    for (int i = 0; i < ndocs; i++) {
        if (!docs[i][0]) continue;   /* empty documents are skipped */
        size_t n;
        const int32_t *ids = tokenizer_encode(tok, st, docs[i], strlen(docs[i]), 0, &n);
        CHECK(ds.doc_len[d] == (int64_t)n + 1, "document %d: %lld tokens, expected %zu + EOD", i, (long long)ds.doc_len[d], n);
        for (size_t j = 0; j < n && (int64_t)j < ds.doc_len[d]; j++)
            CHECK(indexed_dataset_token(&ds, ds.doc_start[d] + j) == ids[j], "document %d token %zu", i, j);
        CHECK(indexed_dataset_token(&ds, ds.doc_start[d] + ds.doc_len[d] - 1) == eod, "document %d does not end in EOD", i);
        d++;
    }
    CHECK(ds.num_docs == (uint64_t)d, "%llu documents, expected %d", (unsigned long long)ds.num_docs, d);
    indexed_dataset_close(&ds);
    tokenizer_state_free(st);
    tokenizer_free(tok);
    printf("prepro output read back: ok (%d documents)\n", d);

    /* --pack --seq-len 7: the same token stream cut into 7-token documents, the tail dropped */
    rc = run_prepro("--pack --seq-len 7");
    CHECK(rc == 0, "prepro --pack exit %d", rc);
    IndexedDataset doc, pk;
    CHECK(indexed_dataset_open(&doc, "tests/tmp/rb_text_document", err, sizeof(err)) == 0, "%s", err);
    CHECK(indexed_dataset_open(&pk, "tests/tmp/rb_packed_text_document", err, sizeof(err)) == 0, "%s", err);
    int64_t total = (int64_t)(doc.bin_size / doc.itemsize);
    CHECK((int64_t)pk.num_docs == total / 7, "%llu packed sequences for %lld tokens", (unsigned long long)pk.num_docs, (long long)total);
    for (uint64_t i = 0; i < pk.num_docs; i++) CHECK(pk.doc_len[i] == 7, "packed sequence %llu has %lld tokens", (unsigned long long)i, (long long)pk.doc_len[i]);
    for (int64_t i = 0; i < total / 7 * 7; i++) CHECK(indexed_dataset_token(&pk, i) == indexed_dataset_token(&doc, i), "packed token %lld", (long long)i);
    indexed_dataset_close(&doc); indexed_dataset_close(&pk);
    printf("prepro --pack: ok (%lld tokens -> %lld sequences of 7)\n", (long long)total, (long long)(total / 7));
}

int main(void) {
    mkdir("tests/tmp", 0755);
    test_reader(8, 0);
    test_reader(4, 0);
    test_reader(8, 1);
    test_sampler();
    test_blend();
    test_split();
    test_eod_mask();
    test_numpy_random();
    test_megatron_order("single");
    test_megatron_order("multi");
    test_megatron_order("blend");
    test_errors();
    test_check_ids();
    test_prepro_readback();
    printf("%s\n", failures ? "FAILED" : "all data checks passed");
    return failures ? 1 : 0;
}
