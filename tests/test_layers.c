/*
 Per-layer checks of llmtrain.h against an independent double-precision implementation written here
 from the math (nothing in this file calls a header forward to build its references).

 For every layer:
   fwd        the header's fp32 forward against the double forward
   d<x>       the header's backward against central finite differences, in double, of
              L = sum(out * dout) for a random upstream gradient dout, for every input and parameter
   accumulate a second backward into the same buffers gives 2x the first (backward adds, never overwrites)
 and, for the backwards that reduce over rows (matmul, layernorm, rmsnorm, embedding, attention), the
 gradients are bit-identical with 1, 2, 3 and 4 OpenMP threads (2 twice).

 Every check prints: name, max abs err, max rel err, tolerance, ok/FAIL. The relative error of an
 element is |got - ref| / max(1, |ref|); inputs are O(1) so that almost every reference is O(1) too.
 Exit status 0 when every check passes.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ */
/* rng (splitmix64), reporting, buffers */

static uint64_t rng_s = 0x9E3779B97F4A7C15ull;
static uint64_t rnd_u64(void) {
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd_unif(void) { return (double)(rnd_u64() >> 11) * 0x1.0p-53; }
static int rnd_int(int n) { return (int)(rnd_u64() % (uint64_t)n); }
static double rnd_gauss(void) {
    double u1 = rnd_unif(), u2 = rnd_unif();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static float *fnew(size_t n) { float *p = (float *)calloc(n ? n : 1, sizeof(float)); if (!p) exit(2); return p; }
static double *dnew(size_t n) { double *p = (double *)calloc(n ? n : 1, sizeof(double)); if (!p) exit(2); return p; }
static float *frand_gauss(size_t n, double mean, double std) {
    float *p = fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = (float)(mean + std * rnd_gauss());
    return p;
}
static float *frand_unif(size_t n, double lo, double hi) {
    float *p = fnew(n);
    for (size_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * rnd_unif());
    return p;
}
static double *to_double(const float *x, size_t n) {
    double *p = dnew(n);
    for (size_t i = 0; i < n; i++) p[i] = x[i];
    return p;
}
static float *fcopy(const float *x, size_t n) { float *p = fnew(n); memcpy(p, x, n * sizeof(float)); return p; }
static double ddot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static int n_checks = 0, n_failed = 0;
static double worst_ratio = 0.0;        /* largest (max rel err / tol) over all tolerance checks */
static char worst_name[96] = "";

static void report(const char *name, double max_abs, double max_rel, double tol, int ok) {
    n_checks++;
    if (!ok) n_failed++;
    if (tol > 0 && max_rel / tol > worst_ratio) {
        worst_ratio = max_rel / tol;
        snprintf(worst_name, sizeof(worst_name), "%s", name);
    }
    printf("%-58s max_abs %.3e  max_rel %.3e  tol %.0e  %s\n", name, max_abs, max_rel, tol, ok ? "ok" : "FAIL");
}

/* got (fp32) against ref (double): ok when every |got - ref| <= tol * max(1, |ref|) */
static void check(const char *name, const float *got, const double *ref, size_t n, double tol) {
    double ma = 0.0, mr = 0.0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e == e) || isinf(e)) { ok = 0; ma = mr = INFINITY; continue; }
        double r = e / fmax(1.0, fabs(ref[i]));
        if (e > ma) ma = e;
        if (r > mr) mr = r;
        if (r > tol) ok = 0;
    }
    report(name, ma, mr, tol, ok);
}

/* after a second backward into the same buffer: g2 must be 2 * g1 up to fp32 rounding */
static void check_twice(const char *name, const float *g2, const float *g1, size_t n, double tol) {
    double *ref = dnew(n);
    for (size_t i = 0; i < n; i++) ref[i] = 2.0 * (double)g1[i];
    check(name, g2, ref, n, tol);
    free(ref);
}

/* every element exactly equal to v */
static void check_exact(const char *name, const float *got, size_t n, float v) {
    double ma = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - v);
        if (!(e <= ma)) ma = e;
    }
    report(name, ma, ma, 0.0, ma == 0.0);
}

static void check_bits(const char *name, const float *a, const float *b, size_t n) {
    size_t diff = 0;
    double ma = 0.0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float))) { diff++; double e = fabs((double)a[i] - b[i]); if (!(e <= ma)) ma = e; }
    report(name, ma, ma, 0.0, diff == 0);
}

/* central differences of f around x (in place, restored) */
#define FD_EPS 1e-6
typedef double (*LossFn)(void *ctx);
static double *fd_grad(LossFn f, void *ctx, double *x, size_t n) {
    double *g = dnew(n);
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_EPS; double lp = f(ctx);
        x[i] = x0 - FD_EPS; double lm = f(ctx);
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * FD_EPS);
    }
    return g;
}

static char nm_buf[128];
static const char *nm(const char *prefix, const char *what) {
    snprintf(nm_buf, sizeof(nm_buf), "%s %s", prefix, what);
    return nm_buf;
}

/* tolerances (relative, see the top comment) */
#define TOL_FWD   1e-5
#define TOL_GRAD  2e-5
#define TOL_TWICE 1e-5

/* ------------------------------------------------------------------------------------------------ */
/* embedding */

typedef struct { int B, T, C; const int *tok; double *wte, *wpe, *dout, *out; const int *pos; } EmbCtx;

static void emb_fwd_d(EmbCtx *c) {
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int ch = 0; ch < c->C; ch++) {
                size_t o = ((size_t)b * c->T + t) * c->C + ch;
                int p = c->pos ? c->pos[b * c->T + t] : t;
                c->out[o] = c->wte[(size_t)c->tok[b * c->T + t] * c->C + ch] + (c->wpe ? c->wpe[(size_t)p * c->C + ch] : 0.0);
            }
}
static double emb_loss(void *p) { EmbCtx *c = (EmbCtx *)p; emb_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->B * c->T * c->C); }

/* with_pos: positions restart inside rows (--reset-position-ids), some positions shared, the last never used */
static void test_embedding(int with_wpe, int with_pos) {
    const char *pre = with_pos ? "embedding(wte+wpe, reset positions)" : with_wpe ? "embedding(wte+wpe)" : "embedding(wte)";
    int B = 3, T = 5, C = 40, V = 7;
    size_t nout = (size_t)B * T * C;
    int *tok = (int *)malloc(sizeof(int) * B * T), pos[15] = {0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 0, 0, 1, 2, 0};
    for (int i = 0; i < B * T; i++) tok[i] = rnd_int(V - 1);   /* token V-1 never used: its grad row stays 0 */
    tok[1] = tok[0]; tok[T + 3] = tok[0]; tok[2 * T] = tok[2];  /* repeats, within and across rows */
    float *wte = frand_gauss((size_t)V * C, 0, 1), *wpe = with_wpe ? frand_gauss((size_t)T * C, 0, 1) : NULL;
    float *out = fnew(nout), *dout = frand_gauss(nout, 0, 1);
    embedding_forward(out, tok, wte, wpe, B, T, C, with_pos ? pos : NULL);

    EmbCtx c = { B, T, C, tok, to_double(wte, (size_t)V * C), wpe ? to_double(wpe, (size_t)T * C) : NULL,
                 to_double(dout, nout), dnew(nout), with_pos ? pos : NULL };
    emb_fwd_d(&c);
    check(nm(pre, "fwd"), out, c.out, nout, TOL_FWD);

    float *dwte = fnew((size_t)V * C), *dwpe = with_wpe ? fnew((size_t)T * C) : NULL;
    embedding_backward(dwte, dwpe, dout, tok, B, T, C, V, with_pos ? pos : NULL);
    double *gwte = fd_grad(emb_loss, &c, c.wte, (size_t)V * C);
    check(nm(pre, "dwte"), dwte, gwte, (size_t)V * C, TOL_GRAD);
    if (with_wpe) {
        double *gwpe = fd_grad(emb_loss, &c, c.wpe, (size_t)T * C);
        check(nm(pre, "dwpe"), dwpe, gwpe, (size_t)T * C, TOL_GRAD);
        free(gwpe);
    }
    float *g1te = fcopy(dwte, (size_t)V * C), *g1pe = with_wpe ? fcopy(dwpe, (size_t)T * C) : NULL;
    embedding_backward(dwte, dwpe, dout, tok, B, T, C, V, with_pos ? pos : NULL);
    check_twice(nm(pre, "accumulate dwte"), dwte, g1te, (size_t)V * C, TOL_TWICE);
    if (with_wpe) check_twice(nm(pre, "accumulate dwpe"), dwpe, g1pe, (size_t)T * C, TOL_TWICE);

    free(tok); free(wte); free(wpe); free(out); free(dout); free(c.wte); free(c.wpe); free(c.dout); free(c.out);
    free(dwte); free(dwpe); free(gwte); free(g1te); free(g1pe);
}

/* ------------------------------------------------------------------------------------------------ */
/* layernorm */

typedef struct { int N, C; double eps; double *x, *w, *b, *dout, *out, *mean, *rstd; } LnCtx;

static void ln_fwd_d(LnCtx *c) {
    for (int n = 0; n < c->N; n++) {
        const double *x = c->x + (size_t)n * c->C;
        double m = 0.0, v = 0.0;
        for (int i = 0; i < c->C; i++) m += x[i];
        m /= c->C;
        for (int i = 0; i < c->C; i++) v += (x[i] - m) * (x[i] - m);
        v /= c->C;
        double s = 1.0 / sqrt(v + c->eps);
        for (int i = 0; i < c->C; i++) c->out[(size_t)n * c->C + i] = (x[i] - m) * s * c->w[i] + c->b[i];
        c->mean[n] = m; c->rstd[n] = s;
    }
}
static double ln_loss(void *p) { LnCtx *c = (LnCtx *)p; ln_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->N * c->C); }

static void test_layernorm(void) {
    const char *pre = "layernorm";
    int N = 6, C = 45;                     /* C spans two 32-wide channel blocks of the weight reduction */
    size_t nx = (size_t)N * C;
    float eps = 1e-5f;
    float *x = frand_gauss(nx, 0, 1);
    for (int n = 0; n < N; n++) for (int i = 0; i < C; i++) x[(size_t)n * C + i] += 0.7f * n - 1.5f;  /* row offsets */
    float *w = frand_gauss(C, 1, 0.5), *b = frand_gauss(C, 0, 0.5), *dout = frand_gauss(nx, 0, 1);
    float *out = fnew(nx), *mean = fnew(N), *rstd = fnew(N);
    layernorm_forward(out, mean, rstd, x, w, b, N, C, eps);

    LnCtx c = { N, C, eps, to_double(x, nx), to_double(w, C), to_double(b, C), to_double(dout, nx), dnew(nx), dnew(N), dnew(N) };
    ln_fwd_d(&c);
    check(nm(pre, "fwd out"), out, c.out, nx, TOL_FWD);
    check(nm(pre, "fwd mean"), mean, c.mean, N, TOL_FWD);
    check(nm(pre, "fwd rstd"), rstd, c.rstd, N, TOL_FWD);

    float *dx = fnew(nx), *dw = fnew(C), *db = fnew(C);
    layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
    double *gx = fd_grad(ln_loss, &c, c.x, nx), *gw = fd_grad(ln_loss, &c, c.w, C), *gb = fd_grad(ln_loss, &c, c.b, C);
    check(nm(pre, "dinp"), dx, gx, nx, TOL_GRAD);
    check(nm(pre, "dweight"), dw, gw, C, TOL_GRAD);
    check(nm(pre, "dbias"), db, gb, C, TOL_GRAD);

    float *g1x = fcopy(dx, nx), *g1w = fcopy(dw, C), *g1b = fcopy(db, C);
    layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
    check_twice(nm(pre, "accumulate dinp"), dx, g1x, nx, TOL_TWICE);
    check_twice(nm(pre, "accumulate dweight"), dw, g1w, C, TOL_TWICE);
    check_twice(nm(pre, "accumulate dbias"), db, g1b, C, TOL_TWICE);

    free(x); free(w); free(b); free(dout); free(out); free(mean); free(rstd);
    free(c.x); free(c.w); free(c.b); free(c.dout); free(c.out); free(c.mean); free(c.rstd);
    free(dx); free(dw); free(db); free(gx); free(gw); free(gb); free(g1x); free(g1w); free(g1b);
}

/* ------------------------------------------------------------------------------------------------ */
/* rmsnorm */

typedef struct { int N, C; double eps; double *x, *w, *dout, *out, *rstd; } RmsCtx;

static void rms_fwd_d(RmsCtx *c) {
    for (int n = 0; n < c->N; n++) {
        const double *x = c->x + (size_t)n * c->C;
        double ss = 0.0;
        for (int i = 0; i < c->C; i++) ss += x[i] * x[i];
        double s = 1.0 / sqrt(ss / c->C + c->eps);
        for (int i = 0; i < c->C; i++) c->out[(size_t)n * c->C + i] = x[i] * s * c->w[i];
        c->rstd[n] = s;
    }
}
static double rms_loss(void *p) { RmsCtx *c = (RmsCtx *)p; rms_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->N * c->C); }

static void test_rmsnorm(const char *pre, int N, int C, float eps) {
    size_t nx = (size_t)N * C;
    float *x = frand_gauss(nx, 0.3, 1), *w = frand_gauss(C, 1, 0.5), *dout = frand_gauss(nx, 0, 1);
    float *out = fnew(nx), *rstd = fnew(N);
    rmsnorm_forward(out, rstd, x, w, N, C, eps);

    RmsCtx c = { N, C, eps, to_double(x, nx), to_double(w, C), to_double(dout, nx), dnew(nx), dnew(N) };
    rms_fwd_d(&c);
    check(nm(pre, "fwd out"), out, c.out, nx, TOL_FWD);
    check(nm(pre, "fwd rstd"), rstd, c.rstd, N, TOL_FWD);

    float *dx = fnew(nx), *dw = fnew(C);
    rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
    double *gx = fd_grad(rms_loss, &c, c.x, nx), *gw = fd_grad(rms_loss, &c, c.w, C);
    check(nm(pre, "dinp"), dx, gx, nx, TOL_GRAD);
    check(nm(pre, "dweight"), dw, gw, C, TOL_GRAD);

    float *g1x = fcopy(dx, nx), *g1w = fcopy(dw, C);
    rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
    check_twice(nm(pre, "accumulate dinp"), dx, g1x, nx, TOL_TWICE);
    check_twice(nm(pre, "accumulate dweight"), dw, g1w, C, TOL_TWICE);

    free(x); free(w); free(dout); free(out); free(rstd); free(c.x); free(c.w); free(c.dout); free(c.out); free(c.rstd);
    free(dx); free(dw); free(gx); free(gw); free(g1x); free(g1w);
}

/* ------------------------------------------------------------------------------------------------ */
/* matmul */

typedef struct { int N, IC, OC; double *x, *w, *b, *dout, *out; } MmCtx;

static void mm_fwd_d(MmCtx *c) {
    for (int n = 0; n < c->N; n++)
        for (int o = 0; o < c->OC; o++) {
            double s = c->b ? c->b[o] : 0.0;
            for (int i = 0; i < c->IC; i++) s += c->x[(size_t)n * c->IC + i] * c->w[(size_t)o * c->IC + i];
            c->out[(size_t)n * c->OC + o] = s;
        }
}
static double mm_loss(void *p) { MmCtx *c = (MmCtx *)p; mm_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->N * c->OC); }

static void test_matmul(int N, int IC, int OC, int with_bias) {
    char pre[64];
    snprintf(pre, sizeof(pre), "matmul(N=%d,IC=%d,OC=%d%s)", N, IC, OC, with_bias ? ",bias" : "");
    size_t nx = (size_t)N * IC, nw = (size_t)OC * IC, ny = (size_t)N * OC;
    float *x = frand_gauss(nx, 0, 1), *w = frand_gauss(nw, 0, 1.0 / sqrt(IC));
    float *b = with_bias ? frand_gauss(OC, 0, 0.5) : NULL, *dout = frand_gauss(ny, 0, 1), *out = fnew(ny);
    matmul_forward(out, x, w, b, N, IC, OC);

    MmCtx c = { N, IC, OC, to_double(x, nx), to_double(w, nw), b ? to_double(b, OC) : NULL, to_double(dout, ny), dnew(ny) };
    mm_fwd_d(&c);
    check(nm(pre, "fwd"), out, c.out, ny, TOL_FWD);

    float *dx = fnew(nx), *dw = fnew(nw), *db = with_bias ? fnew(OC) : NULL;
    matmul_backward(dx, dw, db, dout, x, w, N, IC, OC);
    double *gx = fd_grad(mm_loss, &c, c.x, nx), *gw = fd_grad(mm_loss, &c, c.w, nw);
    check(nm(pre, "dinp"), dx, gx, nx, TOL_GRAD);
    check(nm(pre, "dweight"), dw, gw, nw, TOL_GRAD);
    double *gb = NULL;
    if (with_bias) { gb = fd_grad(mm_loss, &c, c.b, OC); check(nm(pre, "dbias"), db, gb, OC, TOL_GRAD); }

    float *g1x = fcopy(dx, nx), *g1w = fcopy(dw, nw), *g1b = with_bias ? fcopy(db, OC) : NULL;
    matmul_backward(dx, dw, db, dout, x, w, N, IC, OC);
    check_twice(nm(pre, "accumulate dinp"), dx, g1x, nx, TOL_TWICE);
    check_twice(nm(pre, "accumulate dweight"), dw, g1w, nw, TOL_TWICE);
    if (with_bias) check_twice(nm(pre, "accumulate dbias"), db, g1b, OC, TOL_TWICE);

    /* dinp may be NULL (the first layer's input needs no gradient): the weight gradients are unchanged */
    float *dw2 = fnew(nw), *db2 = with_bias ? fnew(OC) : NULL;
    matmul_backward(NULL, dw2, db2, dout, x, w, N, IC, OC);
    check_twice(nm(pre, "dinp=NULL dweight"), dw, dw2, nw, TOL_TWICE);

    free(x); free(w); free(b); free(dout); free(out); free(c.x); free(c.w); free(c.b); free(c.dout); free(c.out);
    free(dx); free(dw); free(db); free(gx); free(gw); free(gb); free(g1x); free(g1w); free(g1b); free(dw2); free(db2);
}

/* ------------------------------------------------------------------------------------------------ */
/* rope */

/* The tables from the formula, in double, following the Hugging Face llama3 rule as written there
   (high-frequency band kept, low-frequency band divided by factor, the band between interpolated).
   counts[0..2] get how many frequencies fell in each band. */
static void rope_tables_d(double *cs, double *sn, const ModelConfig *cfg, int T, int counts[3]) {
    int HD = cfg->head_dim, half = HD / 2;
    if (counts) counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; i < half; i++) {
        double inv = pow((double)cfg->rope_theta, -(2.0 * i) / HD);
        if (cfg->rope_llama3) {
            double orig = cfg->rope_orig_max_pos, factor = cfg->rope_factor;
            double lo = cfg->rope_low_freq_factor, hi = cfg->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / inv;
            int band;
            if (wavelen < orig / hi) band = 0;
            else if (wavelen > orig / lo) { band = 2; inv = inv / factor; }
            else {
                band = 1;
                double smooth = (orig / wavelen - lo) / (hi - lo);
                inv = (1.0 - smooth) * inv / factor + smooth * inv;
            }
            if (counts) counts[band]++;
        }
        for (int t = 0; t < T; t++) {
            cs[(size_t)t * half + i] = cos(t * inv);
            sn[(size_t)t * half + i] = sin(t * inv);
        }
    }
}

static ModelConfig rope_config(int llama3, int HD, float theta) {
    ModelConfig cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.family = FAMILY_LLAMA;
    cfg.head_dim = HD; cfg.rope_theta = theta;
    cfg.rope_llama3 = llama3;
    if (llama3) { cfg.rope_factor = 8.0f; cfg.rope_low_freq_factor = 1.0f; cfg.rope_high_freq_factor = 4.0f; cfg.rope_orig_max_pos = 32; }
    return cfg;
}

static void test_rope_init(const char *pre, const ModelConfig *cfg, int T) {
    int half = cfg->head_dim / 2, counts[3];
    size_t n = (size_t)T * half;
    float *cs = fnew(n), *sn = fnew(n);
    double *rcs = dnew(n), *rsn = dnew(n);
    rope_init(cs, sn, cfg, T);
    rope_tables_d(rcs, rsn, cfg, T, counts);
    if (cfg->rope_llama3) {
        /* the config must exercise all three bands, else the check proves less than it claims */
        int ok = counts[0] > 0 && counts[1] > 0 && counts[2] > 0;
        printf("%-58s bands kept/interpolated/scaled = %d/%d/%d  %s\n", nm(pre, "bands"), counts[0], counts[1], counts[2], ok ? "ok" : "FAIL");
        n_checks++; if (!ok) n_failed++;
    }
    /* angles reach T-1 radians; fp32 rounding of t*inv_freq alone is ~T*6e-8 */
    check(nm(pre, "cos table"), cs, rcs, n, TOL_FWD);
    check(nm(pre, "sin table"), sn, rsn, n, TOL_FWD);
    free(cs); free(sn); free(rcs); free(rsn);
}

typedef struct { int B, T, NH, HD; const double *cs, *sn; double *x, *dout, *out; const int *pos; } RopeCtx;

static void rope_fwd_d(RopeCtx *c) {
    int half = c->HD / 2;
    for (int b = 0; b < c->B; b++)
        for (int t = 0; t < c->T; t++)
            for (int h = 0; h < c->NH; h++) {
                size_t base = (((size_t)b * c->T + t) * c->NH + h) * c->HD;
                for (int i = 0; i < half; i++) {
                    size_t p = (size_t)(c->pos ? c->pos[b * c->T + t] : t);
                    double co = c->cs[p * half + i], si = c->sn[p * half + i];
                    double x1 = c->x[base + i], x2 = c->x[base + i + half];
                    c->out[base + i] = x1 * co - x2 * si;
                    c->out[base + i + half] = x2 * co + x1 * si;
                }
            }
}
static double rope_loss(void *p) { RopeCtx *c = (RopeCtx *)p; rope_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->B * c->T * c->NH * c->HD); }

/* with_pos: the positions of rows holding several documents (--reset-position-ids) */
static void test_rope(const char *pre, const ModelConfig *cfg, int with_pos) {
    int B = 2, T = 9, NH = 3, HD = cfg->head_dim, half = HD / 2;
    int pos[18] = {0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 0, 1, 2, 3, 4, 5, 0, 1}, *pp = with_pos ? pos : NULL;
    size_t nx = (size_t)B * T * NH * HD, nt = (size_t)T * half;
    float *cs = fnew(nt), *sn = fnew(nt);
    rope_init(cs, sn, cfg, T);
    double *rcs = dnew(nt), *rsn = dnew(nt);
    rope_tables_d(rcs, rsn, cfg, T, NULL);
    float *x = frand_gauss(nx, 0, 1), *dout = frand_gauss(nx, 0, 1), *out = fnew(nx);
    rope_forward(out, x, cs, sn, B, T, NH, HD, pp);

    RopeCtx c = { B, T, NH, HD, rcs, rsn, to_double(x, nx), to_double(dout, nx), dnew(nx), pp };
    rope_fwd_d(&c);                                       /* with the independently computed tables */
    check(nm(pre, "fwd"), out, c.out, nx, TOL_FWD);

    float *dx = fnew(nx);
    rope_backward(dx, dout, cs, sn, B, T, NH, HD, pp);
    double *gx = fd_grad(rope_loss, &c, c.x, nx);
    check(nm(pre, "dinp"), dx, gx, nx, TOL_GRAD);
    float *g1 = fcopy(dx, nx);
    rope_backward(dx, dout, cs, sn, B, T, NH, HD, pp);
    check_twice(nm(pre, "accumulate dinp"), dx, g1, nx, TOL_TWICE);

    free(cs); free(sn); free(rcs); free(rsn); free(x); free(dout); free(out); free(c.x); free(c.dout); free(c.out);
    free(dx); free(gx); free(g1);
}

/* ------------------------------------------------------------------------------------------------ */
/* attention */

typedef struct { int B, T, NH, NKV, HD; double scale; int window; double *q, *k, *v, *dout, *out, *att; const int *doc; } AttCtx;

/* whether position t sees position s: causal, and with a window W > 0 only the W latest (t - s < W), as
   transformers' sliding_window_overlay (kv_idx > q_idx - sliding_window); with documents (doc: the document
   number of each position of the row, NULL: one document) only positions of t's document */
static int att_sees(int t, int s, int window, const int *doc) {
    return s <= t && (window <= 0 || t - s < window) && (!doc || doc[s] == doc[t]);
}

static void att_fwd_d(AttCtx *c) {
    int B = c->B, T = c->T, NH = c->NH, NKV = c->NKV, HD = c->HD, G = NH / NKV;
    double scale = c->scale;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int kh = h / G;                               /* HF repeat_kv: query heads [kh*G, kh*G+G) share kv head kh */
            for (int t = 0; t < T; t++) {
                const double *qt = c->q + (((size_t)b * T + t) * NH + h) * HD;
                double *a = c->att + (((size_t)b * NH + h) * T + t) * T;
                double mx = -INFINITY;
                for (int s = 0; s < T; s++) {
                    if (!att_sees(t, s, c->window, c->doc ? c->doc + b * T : NULL)) { a[s] = 0.0; continue; }
                    const double *ks = c->k + (((size_t)b * T + s) * NKV + kh) * HD;
                    double d = 0.0;
                    for (int i = 0; i < HD; i++) d += qt[i] * ks[i];
                    a[s] = d * scale;
                    if (a[s] > mx) mx = a[s];
                }
                double sum = 0.0;
                for (int s = 0; s <= t; s++) if (att_sees(t, s, c->window, c->doc ? c->doc + b * T : NULL)) { a[s] = exp(a[s] - mx); sum += a[s]; }
                for (int s = 0; s <= t; s++) a[s] /= sum;
                double *o = c->out + (((size_t)b * T + t) * NH + h) * HD;
                for (int i = 0; i < HD; i++) {
                    double acc = 0.0;
                    for (int s = 0; s <= t; s++) acc += a[s] * c->v[(((size_t)b * T + s) * NKV + kh) * HD + i];
                    o[i] = acc;
                }
            }
        }
}
static double att_loss(void *p) { AttCtx *c = (AttCtx *)p; att_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->B * c->T * c->NH * c->HD); }

/* scale 0: the usual 1/sqrt(HD); window 0: full causal attention; docs: rows of several documents
   (--reset-attention-mask): an EOD (id 0) at every docs-th position or so, the doc_start rows of document_starts
   against a reference that numbers the documents */
static void test_attention(int B, int T, int NH, int NKV, int HD, float scale, int window, int docs) {
    char pre[96];
    if (scale == 0.0f) scale = 1.0f / sqrtf((float)HD);
    snprintf(pre, sizeof(pre), "attention(B=%d,T=%d,NH=%d,NKV=%d,HD=%d,scale=%.3g,W=%d%s)", B, T, NH, NKV, HD, scale, window,
             docs ? ",docs" : "");
    int *tok = (int *)malloc(sizeof(int) * B * T), *doc_start = (int *)malloc(sizeof(int) * B * T), *doc = (int *)malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) tok[i] = docs && rnd_int(docs) == 0 ? 0 : 1 + rnd_int(5);
    if (docs) tok[2] = 0;   /* a boundary in the first row for sure */
    for (int b = 0; b < B; b++)
        for (int t = 0, d = 0; t < T; t++) { doc[b * T + t] = d; d += tok[b * T + t] == 0; }
    document_starts(doc_start, NULL, tok, B, T, 0);
    const int *ds = docs ? doc_start : NULL;
    size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, na = (size_t)B * NH * T * T;
    float *q = frand_gauss(nq, 0, 1), *k = frand_gauss(nkv, 0, 1), *v = frand_gauss(nkv, 0, 1);
    float *dout = frand_gauss(nq, 0, 1), *out = fnew(nq), *att = fnew(na);
    for (size_t i = 0; i < na; i++) att[i] = NAN;       /* the forward must write every entry, masked ones too */
    attention_forward(out, att, q, k, v, B, T, NH, NKV, HD, scale, window, ds);

    AttCtx c = { B, T, NH, NKV, HD, scale, window, to_double(q, nq), to_double(k, nkv), to_double(v, nkv), to_double(dout, nq), dnew(nq), dnew(na),
                 docs ? doc : NULL };
    att_fwd_d(&c);
    check(nm(pre, "fwd out"), out, c.out, nq, TOL_FWD);
    check(nm(pre, "fwd att"), att, c.att, na, TOL_FWD);

    float *dq = fnew(nq), *dk = fnew(nkv), *dv = fnew(nkv);
    attention_backward(dq, dk, dv, dout, q, k, v, att, B, T, NH, NKV, HD, scale, window, ds);
    double *gq = fd_grad(att_loss, &c, c.q, nq), *gk = fd_grad(att_loss, &c, c.k, nkv), *gv = fd_grad(att_loss, &c, c.v, nkv);
    check(nm(pre, "dq"), dq, gq, nq, TOL_GRAD);
    check(nm(pre, "dk"), dk, gk, nkv, TOL_GRAD);
    check(nm(pre, "dv"), dv, gv, nkv, TOL_GRAD);

    float *g1q = fcopy(dq, nq), *g1k = fcopy(dk, nkv), *g1v = fcopy(dv, nkv);
    attention_backward(dq, dk, dv, dout, q, k, v, att, B, T, NH, NKV, HD, scale, window, ds);
    check_twice(nm(pre, "accumulate dq"), dq, g1q, nq, TOL_TWICE);
    check_twice(nm(pre, "accumulate dk"), dk, g1k, nkv, TOL_TWICE);
    check_twice(nm(pre, "accumulate dv"), dv, g1v, nkv, TOL_TWICE);

    free(q); free(k); free(v); free(dout); free(out); free(att);
    free(c.q); free(c.k); free(c.v); free(c.dout); free(c.out); free(c.att);
    free(dq); free(dk); free(dv); free(gq); free(gk); free(gv); free(g1q); free(g1k); free(g1v);
    free(tok); free(doc_start); free(doc);
}

/* ------------------------------------------------------------------------------------------------ */
/* gelu, swiglu, residual */

typedef struct { size_t N; double *x, *dout, *out; } GeluCtx;
static void gelu_fwd_d(GeluCtx *c) {
    for (size_t i = 0; i < c->N; i++) {
        double x = c->x[i];
        c->out[i] = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    }
}
static double gelu_loss(void *p) { GeluCtx *c = (GeluCtx *)p; gelu_fwd_d(c); return ddot(c->out, c->dout, c->N); }

static void test_gelu(void) {
    const char *pre = "gelu";
    size_t N = 301;
    float *x = frand_unif(N, -6, 6), *dout = frand_gauss(N, 0, 1), *out = fnew(N);
    x[0] = 0.0f; x[1] = -1e-3f; x[2] = 12.0f; x[3] = -12.0f;
    gelu_forward(out, x, N);
    GeluCtx c = { N, to_double(x, N), to_double(dout, N), dnew(N) };
    gelu_fwd_d(&c);
    check(nm(pre, "fwd"), out, c.out, N, TOL_FWD);
    float *dx = fnew(N);
    gelu_backward(dx, x, dout, N);
    double *gx = fd_grad(gelu_loss, &c, c.x, N);
    check(nm(pre, "dinp"), dx, gx, N, TOL_GRAD);
    float *g1 = fcopy(dx, N);
    gelu_backward(dx, x, dout, N);
    check_twice(nm(pre, "accumulate dinp"), dx, g1, N, TOL_TWICE);
    free(x); free(dout); free(out); free(c.x); free(c.dout); free(c.out); free(dx); free(gx); free(g1);
}

typedef struct { int N, F; double *x, *dout, *out; } SwiCtx;
static void swiglu_fwd_d(SwiCtx *c) {
    for (int n = 0; n < c->N; n++)
        for (int f = 0; f < c->F; f++) {
            double g = c->x[(size_t)n * 2 * c->F + f], u = c->x[(size_t)n * 2 * c->F + c->F + f];
            c->out[(size_t)n * c->F + f] = g / (1.0 + exp(-g)) * u;
        }
}
static double swiglu_loss(void *p) { SwiCtx *c = (SwiCtx *)p; swiglu_fwd_d(c); return ddot(c->out, c->dout, (size_t)c->N * c->F); }

static void test_swiglu(void) {
    const char *pre = "swiglu";
    int N = 6, F = 13;
    size_t nx = (size_t)N * 2 * F, ny = (size_t)N * F;
    float *x = fnew(nx);
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            x[(size_t)n * 2 * F + f] = (float)(-8.0 + 16.0 * rnd_unif());   /* gate: through both tails of the sigmoid */
            x[(size_t)n * 2 * F + F + f] = (float)rnd_gauss();             /* up */
        }
    float *dout = frand_gauss(ny, 0, 1), *out = fnew(ny);
    swiglu_forward(out, x, N, F);
    SwiCtx c = { N, F, to_double(x, nx), to_double(dout, ny), dnew(ny) };
    swiglu_fwd_d(&c);
    check(nm(pre, "fwd"), out, c.out, ny, TOL_FWD);
    float *dx = fnew(nx);
    swiglu_backward(dx, dout, x, N, F);
    double *gx = fd_grad(swiglu_loss, &c, c.x, nx);
    check(nm(pre, "dinp (gate|up)"), dx, gx, nx, TOL_GRAD);
    float *g1 = fcopy(dx, nx);
    swiglu_backward(dx, dout, x, N, F);
    check_twice(nm(pre, "accumulate dinp"), dx, g1, nx, TOL_TWICE);
    free(x); free(dout); free(out); free(c.x); free(c.dout); free(c.out); free(dx); free(gx); free(g1);
}

typedef struct { size_t N; double *a, *b, *dout, *out; } ResCtx;
static void res_fwd_d(ResCtx *c) { for (size_t i = 0; i < c->N; i++) c->out[i] = c->a[i] + c->b[i]; }
static double res_loss(void *p) { ResCtx *c = (ResCtx *)p; res_fwd_d(c); return ddot(c->out, c->dout, c->N); }

static void test_residual(void) {
    const char *pre = "residual";
    size_t N = 157;
    float *a = frand_gauss(N, 0, 1), *b = frand_gauss(N, 0, 1), *dout = frand_gauss(N, 0, 1), *out = fnew(N);
    residual_forward(out, a, b, N);
    ResCtx c = { N, to_double(a, N), to_double(b, N), to_double(dout, N), dnew(N) };
    res_fwd_d(&c);
    check(nm(pre, "fwd"), out, c.out, N, TOL_FWD);
    float *da = fnew(N), *db = fnew(N);
    residual_backward(da, db, dout, N);
    double *ga = fd_grad(res_loss, &c, c.a, N), *gb = fd_grad(res_loss, &c, c.b, N);
    check(nm(pre, "dinp1"), da, ga, N, TOL_GRAD);
    check(nm(pre, "dinp2"), db, gb, N, TOL_GRAD);
    float *g1a = fcopy(da, N), *g1b = fcopy(db, N);
    residual_backward(da, db, dout, N);
    check_twice(nm(pre, "accumulate dinp1"), da, g1a, N, TOL_TWICE);
    check_twice(nm(pre, "accumulate dinp2"), db, g1b, N, TOL_TWICE);
    free(a); free(b); free(dout); free(out); free(c.a); free(c.b); free(c.dout); free(c.out);
    free(da); free(db); free(ga); free(gb); free(g1a); free(g1b);
}

/* ------------------------------------------------------------------------------------------------ */
/* crossentropy: L = dloss * sum_n losses[n] (the backward takes one scalar upstream gradient) */

typedef struct { int N, V; const int *tgt; double dloss; double *x, *losses, *lse; } CeCtx;
static void ce_fwd_d(CeCtx *c) {
    for (int n = 0; n < c->N; n++) {
        const double *x = c->x + (size_t)n * c->V;
        double mx = -INFINITY, s = 0.0;
        for (int v = 0; v < c->V; v++) if (x[v] > mx) mx = x[v];
        for (int v = 0; v < c->V; v++) s += exp(x[v] - mx);
        c->lse[n] = mx + log(s);
        c->losses[n] = c->tgt[n] >= 0 ? c->lse[n] - x[c->tgt[n]] : 0.0;
    }
}
static double ce_loss(void *p) {
    CeCtx *c = (CeCtx *)p; ce_fwd_d(c);
    double s = 0.0;
    for (int n = 0; n < c->N; n++) s += c->losses[n];
    return c->dloss * s;
}

static void test_crossentropy(void) {
    const char *pre = "crossentropy";
    int N = 6, V = 23, ign = 3;
    size_t nx = (size_t)N * V;
    int tgt[6];
    for (int n = 0; n < N; n++) tgt[n] = rnd_int(V);
    tgt[ign] = -1;                                        /* ignored row */
    tgt[N - 1] = V - 1;                                   /* last column */
    float *x = frand_gauss(nx, 0, 2);
    x[(size_t)(N - 2) * V + 5] = 30.0f;                   /* one row dominated by a single large logit */
    float *losses = fnew(N), *lse = fnew(N);
    float dloss = 0.37f;
    crossentropy_forward(losses, lse, x, tgt, N, V);
    CeCtx c = { N, V, tgt, dloss, to_double(x, nx), dnew(N), dnew(N) };
    ce_fwd_d(&c);
    check(nm(pre, "fwd losses"), losses, c.losses, N, TOL_FWD);
    check(nm(pre, "fwd lse"), lse, c.lse, N, TOL_FWD);
    check_exact(nm(pre, "target -1 loss == 0"), losses + ign, 1, 0.0f);

    float *dx = fnew(nx);
    crossentropy_backward(dx, x, lse, tgt, dloss, N, V);
    double *gx = fd_grad(ce_loss, &c, c.x, nx);
    check(nm(pre, "dlogits"), dx, gx, nx, TOL_GRAD);
    check_exact(nm(pre, "target -1 dlogits == 0"), dx + (size_t)ign * V, V, 0.0f);
    float *g1 = fcopy(dx, nx);
    crossentropy_backward(dx, x, lse, tgt, dloss, N, V);
    check_twice(nm(pre, "accumulate dlogits"), dx, g1, nx, TOL_TWICE);

    /* a prefilled gradient row of an ignored target is left as it was */
    float *dx2 = frand_gauss(nx, 0, 1), *pre_row = fcopy(dx2 + (size_t)ign * V, V);
    crossentropy_backward(dx2, x, lse, tgt, dloss, N, V);
    check_bits(nm(pre, "target -1 row untouched"), dx2 + (size_t)ign * V, pre_row, V);

    /* init (the model's backward): stored, not added, so a prefilled buffer gets the bits that accumulating into
       zeros gave (g1), the ignored row zeroed */
    float *dx3 = frand_gauss(nx, 0, 1);
    crossentropy_backward_shard(dx3, x, lse, tgt, dloss, N, V, 0, 1);
    check_bits(nm(pre, "init stores dlogits"), dx3, g1, nx);
    free(dx3);

    free(x); free(losses); free(lse); free(c.x); free(c.losses); free(c.lse); free(dx); free(gx); free(g1);
    free(dx2); free(pre_row);
}

/* ------------------------------------------------------------------------------------------------ */
static const int THREADS[] = { 1, 2, 3, 2, 4 };
#define NTHREADS_TRIED 5

/* the fast (packed, blocked) matmul against the plain loops matmul_*_ref, at shapes that are not multiples of
   its tiles: K = 1, K across a KC slice (300, 600), one row, more columns than one thread's chunk (1601), C
   shared out by rows (3 column tiles), and bit for bit equal with 1, 2, 3 and 4 threads */
static void test_matmul_fast(int N, int IC, int OC) {
    char pre[64];
    snprintf(pre, sizeof(pre), "fast matmul(N=%d,IC=%d,OC=%d)", N, IC, OC);
    size_t nx = (size_t)N * IC, nw = (size_t)OC * IC, ny = (size_t)N * OC;
    float *x = frand_gauss(nx, 0, 1), *w = frand_gauss(nw, 0, 1.0 / sqrt(IC)), *b = frand_gauss(OC, 0, 0.5);
    float *dout = frand_gauss(ny, 0, 1.0 / sqrt(OC > N ? OC : N));
    float *px = frand_gauss(nx, 0, 1), *pw = frand_gauss(nw, 0, 1), *pb = frand_gauss(OC, 0, 1);
    float *ry = fnew(ny), *rx = fcopy(px, nx), *rw = fcopy(pw, nw), *rb = fcopy(pb, OC);
    matmul_forward_ref(ry, x, w, b, N, IC, OC);
    matmul_backward_ref(rx, rw, rb, dout, x, w, N, IC, OC);
    double *dry = to_double(ry, ny), *drx = to_double(rx, nx), *drw = to_double(rw, nw), *drb = to_double(rb, OC);
    int saved = omp_get_max_threads();
    float *y[NTHREADS_TRIED], *gx[NTHREADS_TRIED], *gw[NTHREADS_TRIED], *gb[NTHREADS_TRIED];
    for (int i = 0; i < NTHREADS_TRIED; i++) {
        omp_set_num_threads(THREADS[i]);
        y[i] = fnew(ny); gx[i] = fcopy(px, nx); gw[i] = fcopy(pw, nw); gb[i] = fcopy(pb, OC);
        matmul_forward(y[i], x, w, b, N, IC, OC);
        matmul_backward(gx[i], gw[i], gb[i], dout, x, w, N, IC, OC);
    }
    omp_set_num_threads(saved);
    check(nm(pre, "fwd vs ref"), y[0], dry, ny, TOL_FWD);
    check(nm(pre, "dinp vs ref"), gx[0], drx, nx, TOL_FWD);
    check(nm(pre, "dweight vs ref"), gw[0], drw, nw, TOL_FWD);
    check(nm(pre, "dbias vs ref"), gb[0], drb, OC, TOL_FWD);
    for (int i = 1; i < NTHREADS_TRIED; i++) {
        char s[160];
        snprintf(s, sizeof(s), "%s fwd 1 vs %d threads", pre, THREADS[i]);     check_bits(s, y[i], y[0], ny);
        snprintf(s, sizeof(s), "%s dinp 1 vs %d threads", pre, THREADS[i]);    check_bits(s, gx[i], gx[0], nx);
        snprintf(s, sizeof(s), "%s dweight 1 vs %d threads", pre, THREADS[i]); check_bits(s, gw[i], gw[0], nw);
    }
    for (int i = 0; i < NTHREADS_TRIED; i++) { free(y[i]); free(gx[i]); free(gw[i]); free(gb[i]); }
    free(x); free(w); free(b); free(dout); free(px); free(pw); free(pb); free(ry); free(rx); free(rw); free(rb);
    free(dry); free(drx); free(drw); free(drb);
}

/* clipping fused into AdamW (adamw_update_scaled with grad_clip_scale) leaves params and moments bit for bit
   as grad_clip followed by adamw_update, clipped (norm 5 > 1) or not (norm 0.5) */
static void test_adamw_fused_clip(void) {
    size_t n = 1037;
    float *p = frand_gauss(n, 0, 1), *g = frand_gauss(n, 0, 1), *m = frand_gauss(n, 0, 0.1), *v = fnew(n);
    for (size_t i = 0; i < n; i++) v[i] = 0.01f * (float)(i % 7 + 1);
    double norms[2] = { 5.0, 0.5 };
    for (int c = 0; c < 2; c++) {
        float *p1 = fcopy(p, n), *g1 = fcopy(g, n), *m1 = fcopy(m, n), *v1 = fcopy(v, n);
        float *p2 = fcopy(p, n), *m2 = fcopy(m, n), *v2 = fcopy(v, n);
        grad_clip(g1, n, norms[c], 1.0f);
        adamw_update(p1, g1, m1, v1, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
        adamw_update_scaled(p2, g, m2, v2, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, grad_clip_scale(norms[c], 1.0f));
        char s[96];
        snprintf(s, sizeof(s), "adamw fused clip (norm %.1f) params", norms[c]); check_bits(s, p2, p1, n);
        snprintf(s, sizeof(s), "adamw fused clip (norm %.1f) m", norms[c]);      check_bits(s, m2, m1, n);
        snprintf(s, sizeof(s), "adamw fused clip (norm %.1f) v", norms[c]);      check_bits(s, v2, v1, n);
        free(p1); free(g1); free(m1); free(v1); free(p2); free(m2); free(v2);
    }
    free(p); free(g); free(m); free(v);
}

/* determinism: the same gradients, bit for bit, with 1, 2, 3 and 4 threads (prefilled buffers, so the
   accumulation path is the one compared) */


static void test_determinism(void) {
    int saved = omp_get_max_threads();
    {   /* matmul: OC spans several 16-row blocks, N several 32-row blocks */
        int N = 130, IC = 41, OC = 83;
        size_t nx = (size_t)N * IC, nw = (size_t)OC * IC, ny = (size_t)N * OC;
        float *x = frand_gauss(nx, 0, 1), *w = frand_gauss(nw, 0, 0.2), *dout = frand_gauss(ny, 0, 1);
        float *px = frand_gauss(nx, 0, 1), *pw = frand_gauss(nw, 0, 1), *pb = frand_gauss(OC, 0, 1);
        float *r[NTHREADS_TRIED][3];
        for (int i = 0; i < NTHREADS_TRIED; i++) {
            omp_set_num_threads(THREADS[i]);
            r[i][0] = fcopy(px, nx); r[i][1] = fcopy(pw, nw); r[i][2] = fcopy(pb, OC);
            matmul_backward(r[i][0], r[i][1], r[i][2], dout, x, w, N, IC, OC);
        }
        for (int i = 1; i < NTHREADS_TRIED; i++) {
            char s[96];
            snprintf(s, sizeof(s), "determinism matmul dweight 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][1], r[0][1], nw);
            snprintf(s, sizeof(s), "determinism matmul dbias 1 vs %d threads (run %d)", THREADS[i], i);   check_bits(s, r[i][2], r[0][2], OC);
            snprintf(s, sizeof(s), "determinism matmul dinp 1 vs %d threads (run %d)", THREADS[i], i);    check_bits(s, r[i][0], r[0][0], nx);
        }
        for (int i = 0; i < NTHREADS_TRIED; i++) for (int j = 0; j < 3; j++) free(r[i][j]);
        free(x); free(w); free(dout); free(px); free(pw); free(pb);
    }
    {   /* layernorm: C spans three 32-channel blocks */
        int N = 300, C = 77;
        size_t nx = (size_t)N * C;
        float *x = frand_gauss(nx, 0, 1), *w = frand_gauss(C, 1, 0.3), *b = frand_gauss(C, 0, 0.3), *dout = frand_gauss(nx, 0, 1);
        float *y = fnew(nx), *mean = fnew(N), *rstd = fnew(N);
        layernorm_forward(y, mean, rstd, x, w, b, N, C, 1e-5f);
        float *px = frand_gauss(nx, 0, 1), *pw = frand_gauss(C, 0, 1), *pb = frand_gauss(C, 0, 1);
        float *r[NTHREADS_TRIED][3];
        for (int i = 0; i < NTHREADS_TRIED; i++) {
            omp_set_num_threads(THREADS[i]);
            r[i][0] = fcopy(px, nx); r[i][1] = fcopy(pw, C); r[i][2] = fcopy(pb, C);
            layernorm_backward(r[i][0], r[i][1], r[i][2], dout, x, w, mean, rstd, N, C);
        }
        for (int i = 1; i < NTHREADS_TRIED; i++) {
            char s[96];
            snprintf(s, sizeof(s), "determinism layernorm dweight 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][1], r[0][1], C);
            snprintf(s, sizeof(s), "determinism layernorm dbias 1 vs %d threads (run %d)", THREADS[i], i);   check_bits(s, r[i][2], r[0][2], C);
            snprintf(s, sizeof(s), "determinism layernorm dinp 1 vs %d threads (run %d)", THREADS[i], i);    check_bits(s, r[i][0], r[0][0], nx);
        }
        for (int i = 0; i < NTHREADS_TRIED; i++) for (int j = 0; j < 3; j++) free(r[i][j]);
        free(x); free(w); free(b); free(dout); free(y); free(mean); free(rstd); free(px); free(pw); free(pb);
    }
    {   /* rmsnorm */
        int N = 300, C = 77;
        size_t nx = (size_t)N * C;
        float *x = frand_gauss(nx, 0, 1), *w = frand_gauss(C, 1, 0.3), *dout = frand_gauss(nx, 0, 1);
        float *y = fnew(nx), *rstd = fnew(N);
        rmsnorm_forward(y, rstd, x, w, N, C, 1e-6f);
        float *px = frand_gauss(nx, 0, 1), *pw = frand_gauss(C, 0, 1);
        float *r[NTHREADS_TRIED][2];
        for (int i = 0; i < NTHREADS_TRIED; i++) {
            omp_set_num_threads(THREADS[i]);
            r[i][0] = fcopy(px, nx); r[i][1] = fcopy(pw, C);
            rmsnorm_backward(r[i][0], r[i][1], dout, x, w, rstd, N, C);
        }
        for (int i = 1; i < NTHREADS_TRIED; i++) {
            char s[96];
            snprintf(s, sizeof(s), "determinism rmsnorm dweight 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][1], r[0][1], C);
            snprintf(s, sizeof(s), "determinism rmsnorm dinp 1 vs %d threads (run %d)", THREADS[i], i);    check_bits(s, r[i][0], r[0][0], nx);
        }
        for (int i = 0; i < NTHREADS_TRIED; i++) for (int j = 0; j < 2; j++) free(r[i][j]);
        free(x); free(w); free(dout); free(y); free(rstd); free(px); free(pw);
    }
    {   /* embedding: many repeats of few tokens, C spans several 32-channel blocks */
        int B = 8, T = 64, C = 100, V = 9;
        size_t ny = (size_t)B * T * C;
        int *tok = (int *)malloc(sizeof(int) * B * T);
        for (int i = 0; i < B * T; i++) tok[i] = rnd_int(V);
        float *dout = frand_gauss(ny, 0, 1), *pte = frand_gauss((size_t)V * C, 0, 1), *ppe = frand_gauss((size_t)T * C, 0, 1);
        float *r[NTHREADS_TRIED][2];
        for (int i = 0; i < NTHREADS_TRIED; i++) {
            omp_set_num_threads(THREADS[i]);
            r[i][0] = fcopy(pte, (size_t)V * C); r[i][1] = fcopy(ppe, (size_t)T * C);
            embedding_backward(r[i][0], r[i][1], dout, tok, B, T, C, V, NULL);
        }
        for (int i = 1; i < NTHREADS_TRIED; i++) {
            char s[96];
            snprintf(s, sizeof(s), "determinism embedding dwte 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][0], r[0][0], (size_t)V * C);
            snprintf(s, sizeof(s), "determinism embedding dwpe 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][1], r[0][1], (size_t)T * C);
        }
        for (int i = 0; i < NTHREADS_TRIED; i++) for (int j = 0; j < 2; j++) free(r[i][j]);
        free(tok); free(dout); free(pte); free(ppe);
    }
    {   /* attention (GQA): one task per (b, kv head) owns its dk/dv rows */
        int B = 2, T = 11, NH = 6, NKV = 3, HD = 8;
        size_t nq = (size_t)B * T * NH * HD, nkv = (size_t)B * T * NKV * HD, na = (size_t)B * NH * T * T;
        float *q = frand_gauss(nq, 0, 1), *k = frand_gauss(nkv, 0, 1), *v = frand_gauss(nkv, 0, 1), *dout = frand_gauss(nq, 0, 1);
        float *out = fnew(nq), *att = fnew(na);
        attention_forward(out, att, q, k, v, B, T, NH, NKV, HD, 1.0f / sqrtf((float)HD), 0, NULL);
        float *r[NTHREADS_TRIED][3];
        for (int i = 0; i < NTHREADS_TRIED; i++) {
            omp_set_num_threads(THREADS[i]);
            r[i][0] = fnew(nq); r[i][1] = fnew(nkv); r[i][2] = fnew(nkv);
            attention_backward(r[i][0], r[i][1], r[i][2], dout, q, k, v, att, B, T, NH, NKV, HD, 1.0f / sqrtf((float)HD), 0, NULL);
        }
        for (int i = 1; i < NTHREADS_TRIED; i++) {
            char s[96];
            snprintf(s, sizeof(s), "determinism attention dq 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][0], r[0][0], nq);
            snprintf(s, sizeof(s), "determinism attention dk 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][1], r[0][1], nkv);
            snprintf(s, sizeof(s), "determinism attention dv 1 vs %d threads (run %d)", THREADS[i], i); check_bits(s, r[i][2], r[0][2], nkv);
        }
        for (int i = 0; i < NTHREADS_TRIED; i++) for (int j = 0; j < 3; j++) free(r[i][j]);
        free(q); free(k); free(v); free(dout); free(out); free(att);
    }
    omp_set_num_threads(saved);
}

/* ------------------------------------------------------------------------------------------------ */

int main(void) {
    double t0 = omp_get_wtime();
    test_embedding(1, 0);
    test_embedding(0, 0);
    test_embedding(1, 1);
    test_layernorm();
    test_rmsnorm("rmsnorm(N=6,C=45)", 6, 45, 1e-5f);
    test_rmsnorm("rmsnorm(qk per-head B2 T3 NH4 HD8)", 2 * 3 * 4, 8, 1e-6f);
    test_matmul(7, 37, 19, 1);
    test_matmul(7, 37, 19, 0);
    test_matmul(5, 33, 70, 1);
    test_matmul(37, 11, 67, 1);
    test_matmul_fast(1, 1, 1);
    test_matmul_fast(7, 1, 19);
    test_matmul_fast(1, 37, 5);
    test_matmul_fast(13, 300, 53);
    test_matmul_fast(29, 600, 1601);
    test_matmul_fast(261, 19, 83);
    test_matmul_fast(300, 128, 140);   /* 3 column tiles: 2 and 3 threads split the rows too */
    {
        ModelConfig l3 = rope_config(1, 16, 10000.0f), plain = rope_config(0, 16, 10000.0f), big = rope_config(0, 32, 1000000.0f);
        test_rope_init("rope_init(llama3 HD16 T32)", &l3, 32);
        test_rope_init("rope_init(plain HD16 T32)", &plain, 32);
        test_rope_init("rope_init(plain theta1e6 HD32 T32)", &big, 32);
        test_rope("rope(llama3 HD16)", &l3, 0);
        test_rope("rope(plain HD16)", &plain, 0);
        test_rope("rope(llama3 HD16, reset positions)", &l3, 1);
    }
    test_attention(2, 7, 3, 3, 8, 0.0f, 0, 0);   /* MHA */
    test_attention(2, 9, 4, 2, 8, 0.0f, 0, 0);   /* GQA */
    test_attention(1, 5, 4, 1, 8, 0.0f, 0, 0);   /* one kv head */
    test_attention(2, 9, 4, 2, 8, 0.0f, 3, 0);   /* GQA, sliding window of 3 */
    test_attention(1, 6, 2, 2, 8, 0.0f, 1, 0);   /* window of 1: each position sees only itself */
    test_attention(2, 7, 3, 3, 8, 0.25f, 0, 0);  /* GPT-2 scale_attn_by_inverse_layer_idx: 1/(sqrt(HD) (l + 1)) */
    test_attention(1, 7, 3, 3, 8, 1.0f, 4, 0);
    test_attention(2, 11, 4, 2, 8, 0.0f, 0, 4);  /* GQA, rows of several documents (--reset-attention-mask) */
    test_attention(2, 11, 4, 2, 8, 0.0f, 3, 3);  /* documents and a sliding window of 3 */   /* unscaled (scale_attn_weights false), window 4 */
    test_gelu();
    test_swiglu();
    test_residual();
    test_crossentropy();
    test_adamw_fused_clip();
    test_determinism();
    printf("%d checks, %d failed; worst error/tolerance %.3f (%s); %.2fs\n", n_checks, n_failed, worst_ratio,
           worst_name, omp_get_wtime() - t0);
    return n_failed ? 1 : 0;
}
