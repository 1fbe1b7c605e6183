/* test_sample: drawing a sample token (train_common.h's sample_token, used by both trainers) against a
   reference that sorts the whole vocabulary: with top-k, the tokens ranked by falling logit (ties: the lower
   id first), the first k kept, p = exp((l - l_top) / t) normalised, and the token whose cumulative p first
   exceeds the coin; with top-k 0 (or >= V) the same over all tokens in id order. Logits with many ties,
   several temperatures (0 included) and every k from 1 to V + 1. Then the cost: a draw over GPT-2's 50257
   tokens stays within milliseconds with top-k 0 as with top-k 40 (no sort of the vocabulary per token). */
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"
#include "train_common.h"
#include "test_util.h"

static const float *ref_logits;

/* falling logit, then rising id */
static int cmp_rank(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    if (ref_logits[x] != ref_logits[y]) return ref_logits[x] > ref_logits[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

/* the token for `coin` among tokens order[0..n) (the cumulative p in that order) */
static int ref_pick(const float *logits, const int *order, int n, int top, float t, float coin) {
    double sum = 0.0, acc = 0.0;
    for (int i = 0; i < n; i++) sum += exp((logits[order[i]] - logits[top]) / t);
    for (int i = 0; i < n; i++) {
        acc += exp((logits[order[i]] - logits[top]) / t);
        if (coin * sum < acc) return order[i];
    }
    return order[n - 1];
}

static int ref_sample(const float *logits, int V, float temperature, int top_k, float coin) {
    float t = temperature > 0 ? temperature : 1e-6f;
    int *order = (int *)malloc(V * sizeof(int));
    for (int v = 0; v < V; v++) order[v] = v;
    int pick;
    if (top_k <= 0 || top_k >= V) {
        int top = 0;
        for (int v = 1; v < V; v++) if (logits[v] > logits[top]) top = v;
        pick = ref_pick(logits, order, V, top, t, coin);
    } else {
        ref_logits = logits;
        qsort(order, V, sizeof(int), cmp_rank);
        pick = ref_pick(logits, order, top_k, order[0], t, coin);
    }
    free(order);
    return pick;
}

static void test_against_reference(void) {
    enum { V = 97, COINS = 64 };
    float logits[V];
    float temps[] = {1.0f, 0.7f, 2.5f, 0.0f};
    int mismatches = 0;
    for (int trial = 0; trial < 4; trial++) {
        /* trial 0..1: logits on a coarse grid (many ties); 2..3: spread normals */
        for (int v = 0; v < V; v++) {
            float z = rng_normal(77 + trial, (uint64_t)v);
            logits[v] = trial < 2 ? roundf(2.0f * z) : 3.0f * z;
        }
        for (size_t ti = 0; ti < sizeof(temps) / sizeof(temps[0]); ti++)
            for (int k = 0; k <= V + 1; k++)
                for (int c = 0; c < COINS; c++) {
                    float coin = c == COINS - 1 ? 0.99999994f : rng_uniform(991 + trial, (uint64_t)(k * COINS + c));
                    int got = sample_token(logits, V, temps[ti], k, coin), want = ref_sample(logits, V, temps[ti], k, coin);
                    checks++;
                    if (got != want && mismatches++ < 5)
                        failf("trial %d, temperature %g, top-k %d, coin %.7f: token %d, reference %d", trial, temps[ti], k, coin, got, want);
                }
    }
    if (mismatches) failf("%d draws differ from the reference", mismatches);
    else printf("sample_token = sorted reference: ok (%d draws)\n", checks);
}

/* a draw's cost over 50257 tokens, top-k 0 and 40: both within milliseconds (a sort per token costs seconds) */
static void test_cost(void) {
    enum { V = 50257, DRAWS = 32 };
    float *logits = (float *)malloc(V * sizeof(float));
    for (int v = 0; v < V; v++) logits[v] = 4.0f * rng_normal(5, (uint64_t)v);
    int ks[2] = {0, 40};
    for (int i = 0; i < 2; i++) {
        double t0 = now_ms();
        long sum = 0;
        for (int d = 0; d < DRAWS; d++) sum += sample_token(logits, V, 1.0f, ks[i], rng_uniform(9, (uint64_t)d));
        double ms = (now_ms() - t0) / DRAWS;
        checks++;
        /* a draw takes a few ms; the bound leaves a wide margin for a busy machine (a sort took 300-800 ms) */
        if (ms > 50.0) failf("top-k %d: %.1f ms per draw over %d tokens (bound 50 ms)", ks[i], ms, V);
        else printf("top-k %d: %.2f ms per draw over %d tokens (token sum %ld)\n", ks[i], ms, V, sum);
    }
    free(logits);
}

int main(void) {
    test_against_reference();
    test_cost();
    if (failures) { printf("%d of %d checks failed\n", failures, checks); return 1; }
    printf("all %d sampling checks passed\n", checks);
    return 0;
}
