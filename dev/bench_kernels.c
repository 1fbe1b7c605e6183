/* dev/bench_kernels.c: the CPU layers one by one, against what the machine can do.
   - peak: the FMA rate of one thread (a loop of independent vector FMAs, the vector width the matmul uses),
     times the thread count: the ceiling of any matmul;
   - matmul: forward, dinp and dweight at the shapes of a GPT-2 124M step (B*T = 256 rows), GFLOP/s and % of peak;
   - the memory-bound layers at the same shapes: GB/s of the bytes each must move, as a share of a plain copy's.
   Medians of REPEATS runs; MATMUL_ONLY=1 stops after the matmuls; TINY=1 times tiny-gpt2's matmuls (512 rows,
   C = 128) instead; CPU_TIME=1 times by CPU seconds (for
   one thread on a machine shared with other jobs). Build and run: make bench (dev/bench_cpu.sh), or
     gcc -O3 -march=native -fopenmp -std=c11 -D_GNU_SOURCE -I. dev/bench_kernels.c -o out/bench_kernels -lm -ljansson
     OMP_NUM_THREADS=1 out/bench_kernels                                                                        */
#include <time.h>
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"

static int REPEATS = 7;

static int cmp_double(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
static double median(double *t, int n) { qsort(t, n, sizeof(double), cmp_double); return t[n / 2]; }

/* the clock: wall time, or with CPU_TIME=1 the process's CPU time (all threads together: with one thread,
   the time it ran, left undisturbed by other processes that take the core away from it) */
static int CPU_TIME = 0;
static double now(void) {
    if (!CPU_TIME) return omp_get_wtime();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* seconds per call of f, median of REPEATS (one untimed call first) */
#define TIME(secs, call) do { double t_[64]; call; for (int r_ = 0; r_ < REPEATS; r_++) { double t0_ = now(); call; t_[r_] = now() - t0_; } secs = median(t_, REPEATS); } while (0)

/* one thread's FMA peak: 16 independent accumulators (enough to cover FMA latency x ports) */
MM_FMA_CONTRACT
static float fma_probe(long iters) {
    volatile float xs = 0.999999f, ys = 1e-7f;
    mm_vec acc[16], x = (mm_vec){ 0 } + xs, y = (mm_vec){ 0 } + ys;
    for (int i = 0; i < 16; i++) acc[i] = (mm_vec){ 0 } + (float)i;
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 16; i++) acc[i] = acc[i] * x + y;
    float s = 0.0f;
    for (int i = 0; i < 16; i++) for (int l = 0; l < MM_VLEN; l++) s += acc[i][l];
    return s;
}

static double peak_gflops(int threads) {
    long iters = 5000000;
    double t;
    volatile float sink = 0.0f;
    double best = 1e30;        /* the fastest of the repeats: load from other processes only slows it */
    for (int r = 0; r < REPEATS + 2; r++) {
        double t0 = now();
        #pragma omp parallel num_threads(threads)
        { float s = fma_probe(iters); sink += s; }
        t = now() - t0;
        if (CPU_TIME) t /= threads;   /* CPU seconds of all threads: per thread, as the wall time would be */
        if (t < best) best = t;
    }
    return (double)iters * 16 * MM_VLEN * 2 * threads / best / 1e9;
}

static float *frand(size_t n, float scale) {
    float *p = (float *)malloc(n * sizeof(float));
    uint64_t s = 0x9E3779B97F4A7C15ull ^ n;
    for (size_t i = 0; i < n; i++) { s = s * 6364136223846793005ull + 1442695040888963407ull; p[i] = scale * ((float)(s >> 40) / 16777216.0f - 0.5f); }
    return p;
}

int main(int argc, char **argv) {
    int threads = omp_get_max_threads();
    if (getenv("REPEATS")) REPEATS = atoi(getenv("REPEATS"));
    if (REPEATS < 1 || REPEATS > 64) REPEATS = 7;
    if (getenv("CPU_TIME")) CPU_TIME = atoi(getenv("CPU_TIME"));
    double peak1 = peak_gflops(1), peak = peak_gflops(threads);
    printf("threads %d, vector %d floats, tile %dx%d, KC %d\n", threads, MM_VLEN, MM_MR, MM_NR, MM_KC);
    printf("FMA peak: %.1f GFLOP/s on one thread, %.1f on %d\n", peak1, peak, threads);
    printf("| kernel | shape | ms | GFLOP/s or GB/s | %% of bound |\n|---|---|---|---|---|\n");
    int N = 256;                     /* B=4, T=64 */
    int shapes[][2] = { { 768, 2304 }, { 768, 768 }, { 768, 3072 }, { 3072, 768 }, { 768, 50257 } };
    if (getenv("TINY") && atoi(getenv("TINY"))) {   /* tiny-gpt2 at B=8, T=64 (the default run): C = 128 */
        int tiny[][2] = { { 128, 384 }, { 128, 128 }, { 128, 512 }, { 512, 128 }, { 128, 50257 } };
        N = 512;
        memcpy(shapes, tiny, sizeof(tiny));
    }
    double tot_flop = 0, tot_s = 0;
    for (int s = 0; s < 5; s++) {
        int IC = shapes[s][0], OC = shapes[s][1];
        float *x = frand((size_t)N * IC, 1), *w = frand((size_t)OC * IC, 0.1f), *b = frand(OC, 1);
        float *y = frand((size_t)N * OC, 1), *dx = frand((size_t)N * IC, 1), *dw = frand((size_t)OC * IC, 1);
        double fl = 2.0 * N * IC * OC, t;
        TIME(t, matmul_forward(y, x, w, b, N, IC, OC));
        printf("| matmul fwd | %d x %d x %d | %.2f | %.1f | %.0f%% |\n", N, IC, OC, t * 1e3, fl / t / 1e9, 100 * fl / t / 1e9 / peak);
        tot_flop += fl; tot_s += t;
        TIME(t, sgemm_acc(N, IC, OC, y, OC, 1, w, IC, 1, dx, IC));
        printf("| matmul dinp | %d x %d x %d | %.2f | %.1f | %.0f%% |\n", N, OC, IC, t * 1e3, fl / t / 1e9, 100 * fl / t / 1e9 / peak);
        tot_flop += fl; tot_s += t;
        TIME(t, sgemm_acc(OC, IC, N, y, 1, OC, x, IC, 1, dw, IC));
        printf("| matmul dweight | %d x %d x %d | %.2f | %.1f | %.0f%% |\n", OC, N, IC, t * 1e3, fl / t / 1e9, 100 * fl / t / 1e9 / peak);
        tot_flop += fl; tot_s += t;
        free(x); free(w); free(b); free(y); free(dx); free(dw);
    }
    printf("| matmul, all of the above | | %.1f | %.1f | %.0f%% |\n", tot_s * 1e3, tot_flop / tot_s / 1e9, 100 * tot_flop / tot_s / 1e9 / peak);
    if (getenv("MATMUL_ONLY") && atoi(getenv("MATMUL_ONLY"))) return 0;

    /* memory-bound layers: GB/s of their compulsory traffic against a copy of the same size */
    size_t P = 124475904;            /* GPT-2 124M parameters */
    {
        float *a = frand(P, 1), *bb = frand(P, 1), t;
        double tc;
        TIME(tc, { memcpy(bb, a, P * sizeof(float)); });
        double copy_gbs = 2.0 * P * 4 / tc / 1e9;
        printf("| copy (the bound) | %zu floats | %.1f | %.1f GB/s | 100%% |\n", P, tc * 1e3, copy_gbs);
        float *m = frand(P, 0.01f), *v = frand(P, 0.0f); (void)t;
        for (size_t i = 0; i < P; i++) v[i] = 1e-4f;
        double ta, tn;
        TIME(ta, adamw_update(a, bb, m, v, P, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 5));
        printf("| adamw_update | %zu params | %.1f | %.1f GB/s | %.0f%% |\n", P, ta * 1e3, 28.0 * P / ta / 1e9, 100 * 28.0 * P / ta / 1e9 / copy_gbs);
        TIME(tn, { volatile double s = grad_sumsq(bb, 0, P); (void)s; });
        printf("| grad_sumsq | %zu params | %.1f | %.1f GB/s | %.0f%% |\n", P, tn * 1e3, 4.0 * P / tn / 1e9, 100 * 4.0 * P / tn / 1e9 / copy_gbs);
        free(a); free(bb); free(m); free(v);

        int V = 50257, NV = N;
        float *logits = frand((size_t)NV * V, 4), *dl = frand((size_t)NV * V, 0), *lse = frand(NV, 0), *loss = frand(NV, 0);
        int *tg = (int *)malloc(NV * sizeof(int));
        for (int i = 0; i < NV; i++) tg[i] = (i * 7919) % V;
        double tf, tb;
        TIME(tf, crossentropy_forward(loss, lse, logits, tg, NV, V));
        TIME(tb, crossentropy_backward(dl, logits, lse, tg, 1.0f / NV, NV, V));
        double by = 4.0 * NV * V;
        printf("| crossentropy fwd | %d x %d | %.2f | %.1f GB/s | %.0f%% |\n", NV, V, tf * 1e3, by / tf / 1e9, 100 * by / tf / 1e9 / copy_gbs);
        printf("| crossentropy bwd | %d x %d | %.2f | %.1f GB/s | %.0f%% |\n", NV, V, tb * 1e3, 3 * by / tb / 1e9, 100 * 3 * by / tb / 1e9 / copy_gbs);
        free(logits); free(dl); free(lse); free(loss);

        int C = 768, F = 3072;
        size_t nf = (size_t)N * F;
        float *gi = frand(nf, 4), *go = frand(nf, 1), *gd = frand(nf, 1);
        TIME(tf, gelu_forward(go, gi, nf));
        TIME(tb, gelu_backward(gd, gi, go, nf));
        printf("| gelu fwd | %zu | %.3f | %.2f Gelem/s | |\n", nf, tf * 1e3, nf / tf / 1e9);
        printf("| gelu bwd | %zu | %.3f | %.2f Gelem/s | |\n", nf, tb * 1e3, nf / tb / 1e9);
        free(gi); free(go); free(gd);

        float *x = frand((size_t)N * C, 1), *y = frand((size_t)N * C, 1), *dy = frand((size_t)N * C, 1), *dx = frand((size_t)N * C, 1);
        float *w = frand(C, 1), *bi = frand(C, 1), *dw = frand(C, 0), *db = frand(C, 0), *mean = frand(N, 0), *rstd = frand(N, 0);
        TIME(tf, layernorm_forward(y, mean, rstd, x, w, bi, N, C, 1e-5f));
        TIME(tb, layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C));
        printf("| layernorm fwd | %d x %d | %.3f | %.1f GB/s | |\n", N, C, tf * 1e3, 8.0 * N * C / tf / 1e9);
        printf("| layernorm bwd | %d x %d | %.3f | %.1f GB/s | |\n", N, C, tb * 1e3, 16.0 * N * C / tb / 1e9);
        float *dwte = frand((size_t)V * C, 0), *dwpe = frand((size_t)1024 * C, 0);
        int *tok = (int *)malloc(N * sizeof(int));
        for (int i = 0; i < N; i++) tok[i] = (i * 7919) % V;
        TIME(tb, embedding_backward(dwte, dwpe, dy, tok, 4, 64, C, V, NULL));
        printf("| embedding bwd | %d x %d | %.3f | %.1f GB/s | |\n", N, C, tb * 1e3, 20.0 * N * C / tb / 1e9);
        free(x); free(y); free(dy); free(dx); free(w); free(bi); free(dw); free(db); free(mean); free(rstd); free(dwte); free(dwpe); free(tok); free(tg);
    }
    (void)argc; (void)argv;
    return 0;
}
