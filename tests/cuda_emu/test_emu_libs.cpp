/* test_emu_libs: the cuBLASLt and NCCL emulations (emu_cublaslt.cpp, emu_nccl.cpp) against references written
   here from the libraries' documentation: a naive triple loop with the documented epilogues, and the collectives'
   documented results computed from every rank's known inputs. NCCL runs as forked processes (the collectives, the
   splits, and sends and receives alone, grouped both ways and in a ring), including a peer
   that dies and one that hangs, which the survivors must report as errors in seconds.

   g++ -O2 -std=c++17 -DEMU_LIBS_STANDALONE -Itests/cuda_emu -o test_emu_libs tests/cuda_emu/test_emu_libs.cpp \
       tests/cuda_emu/emu_cublaslt.cpp tests/cuda_emu/emu_nccl.cpp -lpthread -lrt
   (EMU_LIBS_STANDALONE: the emulation core's access checks are replaced by a recorder, and the reported accesses
   are checked too) */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <vector>
#include "cublasLt.h"
#include "nccl.h"

static int g_checks = 0, g_failed = 0;

static void expect(int ok, const char *fmt, ...) {
    g_checks++;
    if (ok) return;
    g_failed++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL [pid %d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------------------ */
/* the emulation core's access reporting: recorded here when the core is not linked */

struct Access { const char *p; size_t bytes; int write; };
static std::vector<Access> g_accesses;
static int g_in_op = 0, g_outside_op = 0;

#ifdef EMU_LIBS_STANDALONE
void emu_op_begin(cudaStream_t s, const char *what) { (void)s; (void)what; g_in_op = 1; g_accesses.clear(); }
void emu_op_end(void) { g_in_op = 0; }
void emu_access(const void *p, size_t bytes, int write) {
    if (!g_in_op) g_outside_op++;
    g_accesses.push_back({(const char *)p, bytes, write});
}
#endif

/* bytes of [p, p + bytes) covered by the last operation's reads (write 0) or writes (write 1), each access counted */
static size_t accessed(const void *p, size_t bytes, int write) {
    size_t n = 0;
    const char *b = (const char *)p, *e = b + bytes;
    for (const Access &a : g_accesses) {
        if (a.write != write) continue;
        const char *lo = a.p > b ? a.p : b, *hi = a.p + a.bytes < e ? a.p + a.bytes : e;
        if (hi > lo) n += (size_t)(hi - lo);
    }
    return n;
}

/* bf16 of the test, written from the format: keep the top 16 bits, round the dropped half to nearest even */
static uint16_t ref_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (f != f) return (uint16_t)((u >> 16) | 0x40);
    uint32_t hi = u >> 16, lo = u & 0xffff;
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1))) hi++;
    return (uint16_t)hi;
}
static float ref_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ================================================================================================ */
/* cuBLASLt */

/* a column-major matrix buffer of rows x cols with leading dimension ld, fp32 or bf16 */
struct Mat {
    cudaDataType type;
    int rows, cols, ld;
    std::vector<char> buf;
    size_t es() const { return type == CUDA_R_32F ? 4 : 2; }
    void *ptr() { return buf.data(); }
    float get(int i, int j) const {
        size_t at = (size_t)i + (size_t)j * ld;
        if (type == CUDA_R_32F) { float f; memcpy(&f, &buf[at * 4], 4); return f; }
        uint16_t h; memcpy(&h, &buf[at * 2], 2); return ref_float(h);
    }
    void set(int i, int j, float v) {
        size_t at = (size_t)i + (size_t)j * ld;
        if (type == CUDA_R_32F) memcpy(&buf[at * 4], &v, 4);
        else { uint16_t h = ref_bf16(v); memcpy(&buf[at * 2], &h, 2); }
    }
};

static Mat make_mat(cudaDataType t, int rows, int cols, int ld, unsigned *seed, float fill_pad) {
    Mat m;
    m.type = t; m.rows = rows; m.cols = cols; m.ld = ld;
    m.buf.resize((size_t)ld * cols * m.es() + 64);
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < ld; i++) {
            *seed = *seed * 1103515245u + 12345u;
            float v = ((int)((*seed >> 8) % 2001) - 1000) / 700.0f;
            m.set(i, j, i < rows ? v : fill_pad);
        }
    return m;
}

static double ref_gelu(double x) { return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
static double ref_gelu_grad(double x) {
    double s = sqrt(2.0 / M_PI), u = s * (x + 0.044715 * x * x * x), t = tanh(u);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * s * (1.0 + 3.0 * 0.044715 * x * x);
}

struct LtCase { int ta, tb; cudaDataType ab, d; cublasLtEpilogue_t epi; float beta; };

static const char *epi_name(cublasLtEpilogue_t e) {
    switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT: return "DEFAULT";
    case CUBLASLT_EPILOGUE_RELU: return "RELU";
    case CUBLASLT_EPILOGUE_BIAS: return "BIAS";
    case CUBLASLT_EPILOGUE_GELU: return "GELU";
    case CUBLASLT_EPILOGUE_GELU_BIAS: return "GELU_BIAS";
    case CUBLASLT_EPILOGUE_GELU_AUX: return "GELU_AUX";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: return "GELU_AUX_BIAS";
    case CUBLASLT_EPILOGUE_DGELU: return "DGELU";
    case CUBLASLT_EPILOGUE_DGELU_BGRAD: return "DGELU_BGRAD";
    case CUBLASLT_EPILOGUE_BGRADA: return "BGRADA";
    case CUBLASLT_EPILOGUE_BGRADB: return "BGRADB";
    default: return "?";
    }
}

/* the descriptor, layouts and heuristic as train_gpu's matmul_lt makes them; D is also C (in place) */
struct LtCall {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatmulAlgo_t algo;
};

static void lt_setup(LtCall *c, const LtCase &tc, const Mat &A, const Mat &B, const Mat &D, const void *bias,
                     const void *aux, int64_t ldaux) {
    cublasLtMatmulDescCreate(&c->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t opa = tc.ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tc.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa));
    cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb));
    cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &tc.epi, sizeof(tc.epi));
    if (bias) cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    if (aux) {
        cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux));
        cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ldaux, sizeof(ldaux));
    }
    cublasLtMatrixLayoutCreate(&c->la, A.type, A.rows, A.cols, A.ld);
    cublasLtMatrixLayoutCreate(&c->lb, B.type, B.rows, B.cols, B.ld);
    cublasLtMatrixLayoutCreate(&c->lc, D.type, D.rows, D.cols, D.ld);
    cublasLtMatrixLayoutCreate(&c->ld, D.type, D.rows, D.cols, D.ld);
}

static void lt_teardown(LtCall *c) {
    cublasLtMatrixLayoutDestroy(c->la); cublasLtMatrixLayoutDestroy(c->lb);
    cublasLtMatrixLayoutDestroy(c->lc); cublasLtMatrixLayoutDestroy(c->ld);
    cublasLtMatmulDescDestroy(c->op);
}

static cublasStatus_t lt_heuristic(cublasLtHandle_t h, LtCall *c, uint32_t align_a) {
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    uint32_t al = 16;
    size_t ws = 1 << 20;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof(al));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof(al));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof(al));
    cublasLtMatmulHeuristicResult_t res;
    int found = -1;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, c->op, c->la, c->lb, c->lc, c->ld, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st == CUBLAS_STATUS_SUCCESS) {
        expect(found == 1 && res.state == CUBLAS_STATUS_SUCCESS && res.workspaceSize == 0, "heuristic: one algo, no workspace");
        c->algo = res.algo;
    } else {
        expect(found == 0, "heuristic: no algo on failure (found %d)", found);
    }
    return st;
}

/* one product against the reference; buffers 64-byte aligned (std::vector<char> from the heap: 16; realigned) */
static void lt_case(cublasLtHandle_t h, const LtCase &tc, unsigned seed) {
    const int m = 13, n = 7, k = 19;
    const float nan_pad = NAN;
    int has_bias_in = (tc.epi & CUBLASLT_EPILOGUE_BIAS) != 0;
    int bgrad = tc.epi == CUBLASLT_EPILOGUE_BGRADA || tc.epi == CUBLASLT_EPILOGUE_BGRADB || tc.epi == CUBLASLT_EPILOGUE_DGELU_BGRAD;
    int aux_out = tc.epi == CUBLASLT_EPILOGUE_GELU_AUX || tc.epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    int aux_in = tc.epi == CUBLASLT_EPILOGUE_DGELU || tc.epi == CUBLASLT_EPILOGUE_DGELU_BGRAD;
    int gelu = tc.epi == CUBLASLT_EPILOGUE_GELU || tc.epi == CUBLASLT_EPILOGUE_GELU_BIAS || aux_out;
    Mat A = make_mat(tc.ab, tc.ta ? k : m, tc.ta ? m : k, (tc.ta ? k : m) + 3, &seed, nan_pad);
    Mat B = make_mat(tc.ab, tc.tb ? n : k, tc.tb ? k : n, (tc.tb ? n : k) + 2, &seed, nan_pad);
    /* D starts as C for beta = 1, as NaN for beta = 0 (cuBLAS: C is not read then); its padding must stay */
    Mat D = make_mat(tc.d, m, n, m + 5, &seed, 12288.0f);
    if (tc.beta == 0.0f)
        for (int j = 0; j < n; j++) for (int i = 0; i < m; i++) D.set(i, j, NAN);
    Mat C0 = D;
    int bias_len = tc.epi == CUBLASLT_EPILOGUE_BGRADB ? n : m;
    Mat bias = make_mat(tc.d, bias_len, 1, bias_len, &seed, 0.0f);
    if (bgrad) for (int i = 0; i < bias_len; i++) bias.set(i, 0, NAN);
    int ldaux = 16;   /* >= m, a multiple of 8 */
    Mat aux = make_mat(tc.d, m, n, ldaux, &seed, 768.0f);
    if (aux_out) for (int j = 0; j < n; j++) for (int i = 0; i < m; i++) aux.set(i, j, NAN);
    Mat aux0 = aux;
    int use_bias = has_bias_in || bgrad, use_aux = aux_in || aux_out;

    LtCall c;
    lt_setup(&c, tc, A, B, D, use_bias ? bias.ptr() : NULL, use_aux ? aux.ptr() : NULL, ldaux);
    char what[160];
    snprintf(what, sizeof(what), "ta %d tb %d ab %s d %s %s beta %g", tc.ta, tc.tb, tc.ab == CUDA_R_32F ? "f32" : "bf16",
             tc.d == CUDA_R_32F ? "f32" : "bf16", epi_name(tc.epi), tc.beta);
    /* the vectors' data are 16-byte aligned at least (malloc), so the heuristic is asked for 16 */
    expect(lt_heuristic(h, &c, 16) == CUBLAS_STATUS_SUCCESS, "%s: heuristic", what);
    float alpha = 1.0f;
    cublasStatus_t st = cublasLtMatmul(h, c.op, &alpha, A.ptr(), c.la, B.ptr(), c.lb, &tc.beta, D.ptr(), c.lc, D.ptr(),
                                       c.ld, &c.algo, NULL, 0, (cudaStream_t)NULL);
    expect(st == CUBLAS_STATUS_SUCCESS, "%s: status %d", what, (int)st);

    /* the reference: fp32 sums over k in order (fmaf), and a double one for the sanity of both */
    int bad = 0;
    double worst = 0;
    std::vector<double> bsum(bias_len, 0.0);
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            double dacc = 0.0, mag = 0.0;
            for (int kk = 0; kk < k; kk++) {
                float a = tc.ta ? A.get(kk, i) : A.get(i, kk), b = tc.tb ? B.get(j, kk) : B.get(kk, j);
                acc = fmaf(a, b, acc);
                dacc += (double)a * b;
                mag += fabs((double)a * b);
            }
            float v = acc;
            double dv = dacc;
            if (tc.beta != 0.0f) { v = v + tc.beta * C0.get(i, j); dv += tc.beta * C0.get(i, j); mag += fabs(C0.get(i, j)); }
            if (has_bias_in) { v = v + bias.get(i, 0); dv += bias.get(i, 0); mag += fabs(bias.get(i, 0)); }
            if (aux_out) {
                float want = tc.d == CUDA_R_32F ? v : ref_float(ref_bf16(v));
                if (aux.get(i, j) != want) bad++;
            }
            if (gelu) dv = ref_gelu(dv);
            if (tc.epi == CUBLASLT_EPILOGUE_RELU) dv = dv > 0 ? dv : 0;
            if (aux_in) { dv *= ref_gelu_grad(aux0.get(i, j)); mag *= fabs(ref_gelu_grad(aux0.get(i, j))) + 1; }
            if (tc.epi == CUBLASLT_EPILOGUE_DGELU_BGRAD) bsum[i] += dv;
            double got = D.get(i, j);
            double tol = 1e-5 * (mag + 1) + (tc.d == CUDA_R_16BF ? fabs(dv) / 128.0 : 0.0);
            if (!(fabs(got - dv) <= tol)) bad++;
            if (fabs(got - dv) > worst) worst = fabs(got - dv);
            /* without a transcendental in the epilogue, the emulation is exactly the in-order fp32 sum */
            if (!gelu && !aux_in && tc.epi != CUBLASLT_EPILOGUE_RELU) {
                float want = tc.d == CUDA_R_32F ? v : ref_float(ref_bf16(v));
                if (D.get(i, j) != want) bad++;
            }
        }
    }
    expect(bad == 0, "%s: %d elements differ from the reference (worst %g)", what, bad, worst);
    /* the padding between columns is not written */
    int pad_ok = 1;
    for (int j = 0; j < n; j++) for (int i = m; i < D.ld; i++) pad_ok &= D.get(i, j) == 12288.0f;
    for (int j = 0; j < n; j++) for (int i = m; i < ldaux; i++) pad_ok &= aux.get(i, j) == 768.0f;
    expect(pad_ok, "%s: the padding rows of D / aux were written", what);
    /* docs: BGRADA sums op(A) over k (length m), BGRADB sums op(B) over k (length n); DGELU_BGRAD sums the
       gradient over the columns of D */
    if (bgrad) {
        int bbad = 0;
        for (int i = 0; i < bias_len; i++) {
            double want = 0, mag = 0;
            if (tc.epi == CUBLASLT_EPILOGUE_DGELU_BGRAD) { want = bsum[i]; mag = fabs(want) + 1; }
            for (int kk = 0; kk < k && tc.epi != CUBLASLT_EPILOGUE_DGELU_BGRAD; kk++) {
                double x = tc.epi == CUBLASLT_EPILOGUE_BGRADA ? (tc.ta ? A.get(kk, i) : A.get(i, kk))
                                                              : (tc.tb ? B.get(i, kk) : B.get(kk, i));
                want += x;
                mag += fabs(x);
            }
            double tol = 1e-5 * (mag + 1) + (tc.d == CUDA_R_16BF ? fabs(want) / 128.0 : 0.0);
            if (!(fabs(bias.get(i, 0) - want) <= tol)) bbad++;
        }
        expect(bbad == 0, "%s: %d bias gradient elements differ", what, bbad);
    }
#ifdef EMU_LIBS_STANDALONE
    /* the reported accesses: A and B read column by column (not their padding), C only when beta != 0, D (and
       aux / bias gradient) written, all inside the operation */
    size_t abs = A.es(), ds = D.es();
    expect(g_outside_op == 0, "%s: an access outside emu_op_begin/end", what);
    expect(accessed(A.ptr(), A.buf.size(), 0) == (size_t)A.rows * A.cols * abs, "%s: A's reads", what);
    expect(accessed(B.ptr(), B.buf.size(), 0) == (size_t)B.rows * B.cols * abs, "%s: B's reads", what);
    expect(accessed(D.ptr(), D.buf.size(), 0) == (tc.beta != 0.0f ? (size_t)m * n * ds : 0), "%s: C's reads", what);
    expect(accessed(D.ptr(), D.buf.size(), 1) == (size_t)m * n * ds, "%s: D's writes", what);
    expect(accessed(aux.ptr(), aux.buf.size(), 1) == (aux_out ? (size_t)m * n * ds : 0), "%s: aux writes", what);
    expect(accessed(aux.ptr(), aux.buf.size(), 0) == (aux_in ? (size_t)m * n * ds : 0), "%s: aux reads", what);
    expect(accessed(bias.ptr(), bias.buf.size(), 0) == (has_bias_in ? (size_t)m * ds : 0), "%s: bias reads", what);
    expect(accessed(bias.ptr(), bias.buf.size(), 1) == (bgrad ? (size_t)bias_len * ds : 0), "%s: bias grad writes", what);
#endif
    lt_teardown(&c);
}

static void test_cublaslt_products(cublasLtHandle_t h) {
    const cublasLtEpilogue_t epis[] = {CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_RELU,
                                       CUBLASLT_EPILOGUE_GELU, CUBLASLT_EPILOGUE_GELU_BIAS, CUBLASLT_EPILOGUE_GELU_AUX,
                                       CUBLASLT_EPILOGUE_GELU_AUX_BIAS, CUBLASLT_EPILOGUE_DGELU,
                                       CUBLASLT_EPILOGUE_DGELU_BGRAD, CUBLASLT_EPILOGUE_BGRADA, CUBLASLT_EPILOGUE_BGRADB};
    const cudaDataType types[3][2] = {{CUDA_R_32F, CUDA_R_32F}, {CUDA_R_16BF, CUDA_R_32F}, {CUDA_R_16BF, CUDA_R_16BF}};
    unsigned seed = 1;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int t = 0; t < 3; t++)
                for (cublasLtEpilogue_t e : epis)
                    for (int b = 0; b < 2; b++) {
                        LtCase tc = {ta, tb, types[t][0], types[t][1], e, b ? 1.0f : 0.0f};
                        lt_case(h, tc, seed++);
                    }
}

/* the heuristic's status for one problem (no bias; aux as given) */
static cublasStatus_t heuristic_status(cublasLtHandle_t h, const LtCase &tc, const Mat &A, const Mat &B, const Mat &D,
                                       const void *aux, int64_t ldaux) {
    LtCall c;
    lt_setup(&c, tc, A, B, D, NULL, aux, ldaux);
    cublasStatus_t st = lt_heuristic(h, &c, 16);
    lt_teardown(&c);
    return st;
}

/* the documented failures: each returns its status and computes nothing */
static void test_cublaslt_validation(cublasLtHandle_t h) {
    unsigned seed = 99;
    const int m = 8, n = 4, k = 5;
    Mat A = make_mat(CUDA_R_32F, m, k, m, &seed, 0), B = make_mat(CUDA_R_32F, k, n, k, &seed, 0);
    Mat D = make_mat(CUDA_R_32F, m, n, m, &seed, 0), Dh = make_mat(CUDA_R_16BF, m, n, m, &seed, 0);
    Mat aux = make_mat(CUDA_R_32F, m, n, 16, &seed, 0);
    float alpha = 1, beta = 0;
    LtCase tc = {0, 0, CUDA_R_32F, CUDA_R_32F, CUBLASLT_EPILOGUE_DEFAULT, 0};
    LtCall c;

    /* ld below the rows of the stored layout */
    Mat Abad = A;
    Abad.ld = m - 1;
    lt_setup(&c, tc, Abad, B, D, NULL, NULL, 0);
    expect(lt_heuristic(h, &c, 16) == CUBLAS_STATUS_INVALID_VALUE, "lda < rows: heuristic INVALID_VALUE");
    expect(cublasLtMatmul(h, c.op, &alpha, A.ptr(), c.la, B.ptr(), c.lb, &beta, D.ptr(), c.lc, D.ptr(), c.ld, NULL,
                          NULL, 0, NULL) == CUBLAS_STATUS_INVALID_VALUE, "lda < rows: matmul INVALID_VALUE");
    lt_teardown(&c);

    /* op(A) k != op(B) k */
    LtCase tt = tc;
    tt.tb = 1;
    expect(heuristic_status(h, tt, A, B, D, NULL, 0) == CUBLAS_STATUS_INVALID_VALUE, "shapes that do not match: INVALID_VALUE");
    /* fp32 A/B into a bf16 D is not a supported combination */
    expect(heuristic_status(h, tc, A, B, Dh, NULL, 0) == CUBLAS_STATUS_NOT_SUPPORTED, "fp32 A/B with bf16 D: NOT_SUPPORTED");
    /* GELU_AUX: aux ld must be a multiple of 8 and >= m; the aux pointer must be set; BIAS needs the bias */
    LtCase tg = tc;
    tg.epi = CUBLASLT_EPILOGUE_GELU_AUX;
    expect(heuristic_status(h, tg, A, B, D, aux.ptr(), 12) == CUBLAS_STATUS_INVALID_VALUE, "aux ld 12: INVALID_VALUE");
    Mat A3 = make_mat(CUDA_R_32F, 9, k, 9, &seed, 0);
    Mat D3 = make_mat(CUDA_R_32F, 9, n, 9, &seed, 0);
    expect(heuristic_status(h, tg, A3, B, D3, aux.ptr(), 8) == CUBLAS_STATUS_INVALID_VALUE, "aux ld 8 < m 9: INVALID_VALUE");
    expect(heuristic_status(h, tg, A, B, D, NULL, 0) == CUBLAS_STATUS_INVALID_VALUE, "GELU_AUX without aux: INVALID_VALUE");
    LtCase tb = tc;
    tb.epi = CUBLASLT_EPILOGUE_BIAS;
    expect(heuristic_status(h, tb, A, B, D, NULL, 0) == CUBLAS_STATUS_INVALID_VALUE, "BIAS without bias: INVALID_VALUE");

    /* alignment: a preference below the element size leaves no algorithm; an algo chosen for 16-byte aligned A
       refuses an A that is only 4-byte aligned; a pointer off its element size is invalid */
    lt_setup(&c, tc, A, B, D, NULL, NULL, 0);
    expect(lt_heuristic(h, &c, 2) == CUBLAS_STATUS_NOT_SUPPORTED, "MIN_ALIGNMENT_A 2 for fp32: NOT_SUPPORTED");
    expect(lt_heuristic(h, &c, 16) == CUBLAS_STATUS_SUCCESS, "MIN_ALIGNMENT_A 16: an algo");
    std::vector<float> big((size_t)m * k + 16);
    float *a16 = big.data() + (4 - ((uintptr_t)big.data() / 4) % 4) % 4;   /* 16-byte aligned */
    expect(cublasLtMatmul(h, c.op, &alpha, a16 + 1, c.la, B.ptr(), c.lb, &beta, D.ptr(), c.lc, D.ptr(), c.ld, &c.algo,
                          NULL, 0, NULL) == CUBLAS_STATUS_NOT_SUPPORTED, "A 4-byte aligned with a 16-byte algo: NOT_SUPPORTED");
    expect(cublasLtMatmul(h, c.op, &alpha, (char *)a16 + 2, c.la, B.ptr(), c.lb, &beta, D.ptr(), c.lc, D.ptr(), c.ld,
                          NULL, NULL, 0, NULL) == CUBLAS_STATUS_INVALID_VALUE, "fp32 A 2-byte aligned: INVALID_VALUE");
    expect(cublasLtMatmul(h, c.op, &alpha, a16 + 1, c.la, B.ptr(), c.lb, &beta, D.ptr(), c.lc, D.ptr(), c.ld, NULL,
                          NULL, 0, NULL) == CUBLAS_STATUS_SUCCESS, "A 4-byte aligned without an algo: SUCCESS");
    lt_teardown(&c);

    /* attribute sizes must match */
    cublasLtMatmulDesc_t op;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    int32_t ld32 = 16;
    expect(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld32, sizeof(ld32)) ==
           CUBLAS_STATUS_INVALID_VALUE, "AUX_LD given 4 bytes: INVALID_VALUE");
    cublasLtMatmulDescDestroy(op);
    /* a compute type the emulation does not have */
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_16F, CUDA_R_16F);
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, m, k, m);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, k, n, k);
    cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, m);
    expect(cublasLtMatmul(h, op, &alpha, A.ptr(), la, B.ptr(), lb, &beta, D.ptr(), ld, D.ptr(), ld, NULL, NULL, 0, NULL) ==
           CUBLAS_STATUS_NOT_SUPPORTED, "COMPUTE_16F: NOT_SUPPORTED");
    cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
}

/* ================================================================================================ */
/* NCCL: every rank a forked process */

/* rank r's element i: values of many magnitudes, so the order of the sum shows */
static float rank_value(int r, size_t i) {
    unsigned s = (unsigned)r * 7919u + (unsigned)i * 104729u + 17u;
    s = s * 1103515245u + 12345u;
    float mant = ((int)((s >> 8) % 2001) - 1000) / 997.0f;
    return ldexpf(mant, (int)((s >> 20) % 24) - 12);
}

/* the documented sum: over ranks 0..n-1 in order, in the element type (bf16: fp32, rounded once) */
static float want_sum_f(int n, size_t i) {
    float acc = rank_value(0, i);
    for (int r = 1; r < n; r++) acc += rank_value(r, i);
    return acc;
}
static uint16_t want_sum_bf16(int n, size_t i) {
    float acc = ref_float(ref_bf16(rank_value(0, i)));
    for (int r = 1; r < n; r++) acc += ref_float(ref_bf16(rank_value(r, i)));
    return ref_bf16(acc);
}

static int g_watch_stop = 0;
static void *watch_thread(void *arg) {
    ncclComm_t comm = (ncclComm_t)arg;
    while (!__atomic_load_n(&g_watch_stop, __ATOMIC_ACQUIRE)) {
        ncclResult_t st = ncclInProgress;
        ncclResult_t r = ncclCommGetAsyncError(comm, &st);
        if (r != ncclSuccess || st != ncclSuccess) { __atomic_store_n(&g_watch_stop, 2, __ATOMIC_RELEASE); break; }
    }
    return NULL;
}

/* every collective and datatype, in and out of place, sizes above one staging chunk */
static void rank_collectives(ncclComm_t comm, int rank, int n) {
    pthread_t watch;   /* the watchdog's concurrent ncclCommGetAsyncError */
    pthread_create(&watch, NULL, watch_thread, comm);
    const size_t big = 300007;   /* floats: more than one 1 MiB chunk per rank with the n blocks of ReduceScatter */
    std::vector<float> send(big * n), recv(big * n, -1.0f);
    std::vector<uint16_t> sendh(big * n), recvh(big * n);
    for (size_t i = 0; i < big * n; i++) { send[i] = rank_value(rank, i); sendh[i] = ref_bf16(send[i]); }

    /* AllReduce float, out of place and in place */
    expect(ncclAllReduce(send.data(), recv.data(), big, ncclFloat, ncclSum, comm, NULL) == ncclSuccess, "allreduce");
    int bad = 0;
    for (size_t i = 0; i < big; i++) bad += recv[i] != want_sum_f(n, i);
    expect(bad == 0, "rank %d: allreduce float: %d wrong", rank, bad);
    std::vector<float> inpl(send.begin(), send.begin() + big);
    expect(ncclAllReduce(inpl.data(), inpl.data(), big, ncclFloat, ncclSum, comm, NULL) == ncclSuccess, "allreduce in place");
    bad = 0;
    for (size_t i = 0; i < big; i++) bad += inpl[i] != want_sum_f(n, i);
    expect(bad == 0, "rank %d: allreduce float in place: %d wrong", rank, bad);

    /* AllReduce double in place (train_gpu's three norms) */
    double d3[3];
    for (int i = 0; i < 3; i++) d3[i] = rank_value(rank, i) * 1e-3 + rank;
    expect(ncclAllReduce(d3, d3, 3, ncclDouble, ncclSum, comm, NULL) == ncclSuccess, "allreduce double");
    for (int i = 0; i < 3; i++) {
        double w = rank_value(0, i) * 1e-3 + 0;
        for (int r = 1; r < n; r++) w += rank_value(r, i) * 1e-3 + r;
        expect(d3[i] == w, "rank %d: allreduce double [%d]: %.17g vs %.17g", rank, i, d3[i], w);
    }

    /* AllReduce bf16 */
    expect(ncclAllReduce(sendh.data(), recvh.data(), big, ncclBfloat16, ncclSum, comm, NULL) == ncclSuccess, "allreduce bf16");
    bad = 0;
    for (size_t i = 0; i < big; i++) bad += recvh[i] != want_sum_bf16(n, i);
    expect(bad == 0, "rank %d: allreduce bf16: %d wrong", rank, bad);

    /* Reduce to every root in one group: only the root's recvbuff is written */
    const size_t cnt = 1001;
    std::vector<std::vector<float>> rd(n, std::vector<float>(cnt, -7.0f));
    expect(ncclGroupStart() == ncclSuccess, "group start");
    for (int root = 0; root < n; root++)
        expect(ncclReduce(send.data(), rd[root].data(), cnt, ncclFloat, ncclSum, root, comm, NULL) == ncclSuccess, "reduce");
    expect(ncclGroupEnd() == ncclSuccess, "group end");
    /* NCCL docs: recvbuff is used only on the root, so the others may pass NULL */
    float *rroot = rank == 0 ? rd[0].data() : NULL;
    expect(ncclReduce(send.data(), rroot, cnt, ncclFloat, ncclSum, 0, comm, NULL) == ncclSuccess, "reduce, NULL recv off root");
    for (int root = 0; root < n; root++) {
        bad = 0;
        for (size_t i = 0; i < cnt; i++) bad += rd[root][i] != (root == rank ? want_sum_f(n, i) : -7.0f);
        expect(bad == 0, "rank %d: reduce to root %d: %d wrong", rank, root, bad);
    }

    /* ReduceScatter float out of place, then in place (recvbuff = sendbuff + rank * recvcount) */
    std::fill(recv.begin(), recv.end(), -1.0f);
    expect(ncclReduceScatter(send.data(), recv.data(), big, ncclFloat, ncclSum, comm, NULL) == ncclSuccess, "reduce-scatter");
    bad = 0;
    for (size_t i = 0; i < big; i++) bad += recv[i] != want_sum_f(n, rank * big + i);
    for (size_t i = big; i < big * n; i++) bad += recv[i] != -1.0f;
    expect(bad == 0, "rank %d: reduce-scatter float: %d wrong", rank, bad);
    std::vector<float> rs(send);
    expect(ncclReduceScatter(rs.data(), rs.data() + rank * big, big, ncclFloat, ncclSum, comm, NULL) == ncclSuccess,
           "reduce-scatter in place");
    bad = 0;
    for (size_t i = 0; i < big; i++) bad += rs[rank * big + i] != want_sum_f(n, rank * big + i);
    expect(bad == 0, "rank %d: reduce-scatter in place: %d wrong", rank, bad);
    /* bf16 */
    expect(ncclReduceScatter(sendh.data(), recvh.data(), big, ncclBfloat16, ncclSum, comm, NULL) == ncclSuccess, "rs bf16");
    bad = 0;
    for (size_t i = 0; i < big; i++) bad += recvh[i] != want_sum_bf16(n, rank * big + i);
    expect(bad == 0, "rank %d: reduce-scatter bf16: %d wrong", rank, bad);

    /* AllGather float in place (sendbuff = recvbuff + rank * sendcount), bf16 out of place */
    std::vector<float> ag(big * n, -3.0f);
    for (size_t i = 0; i < big; i++) ag[rank * big + i] = rank_value(rank, i);
    expect(ncclAllGather(ag.data() + rank * big, ag.data(), big, ncclFloat, comm, NULL) == ncclSuccess, "allgather in place");
    bad = 0;
    for (int q = 0; q < n; q++) for (size_t i = 0; i < big; i++) bad += ag[q * big + i] != rank_value(q, i);
    expect(bad == 0, "rank %d: allgather float in place: %d wrong", rank, bad);
    expect(ncclAllGather(sendh.data(), recvh.data(), big, ncclBfloat16, comm, NULL) == ncclSuccess, "allgather bf16");
    bad = 0;
    for (int q = 0; q < n; q++) for (size_t i = 0; i < big; i++) bad += recvh[q * big + i] != ref_bf16(rank_value(q, i));
    expect(bad == 0, "rank %d: allgather bf16: %d wrong", rank, bad);

    /* NCCL's argument checks: the call fails, the communicator goes on */
    expect(ncclAllReduce(send.data(), recv.data(), 4, ncclFloat, ncclSum, NULL, NULL) == ncclInvalidArgument, "NULL comm");
    expect(ncclAllReduce(send.data(), recv.data(), 4, ncclNumTypes, ncclSum, comm, NULL) == ncclInvalidArgument, "bad type");
    expect(ncclReduce(send.data(), recv.data(), 4, ncclFloat, ncclSum, n, comm, NULL) == ncclInvalidArgument, "root n");
    expect(ncclReduce(send.data(), recv.data(), 4, ncclFloat, ncclSum, -1, comm, NULL) == ncclInvalidArgument, "root -1");
    expect(ncclAllReduce(NULL, recv.data(), 4, ncclFloat, ncclSum, comm, NULL) == ncclInvalidArgument, "NULL sendbuff");
    expect(ncclReduceScatter(send.data(), send.data() + 1, 4, ncclFloat, ncclSum, comm, NULL) == ncclInvalidArgument,
           "partly overlapping buffers");
    float one = (float)rank, sum = -1;
    expect(ncclAllReduce(&one, &sum, 1, ncclFloat, ncclSum, comm, NULL) == ncclSuccess && sum == n * (n - 1) / 2.0f,
           "rank %d: allreduce after the failed calls: %g", rank, sum);
    __atomic_store_n(&g_watch_stop, 1, __ATOMIC_RELEASE);
    pthread_join(watch, NULL);
    expect(g_watch_stop == 1, "rank %d: ncclCommGetAsyncError reported an error during the collectives", rank);
#ifdef EMU_LIBS_STANDALONE
    expect(g_outside_op == 0, "rank %d: an access outside emu_op_begin/end", rank);
#endif
}

/* ncclCommSplit: groups by color, ordered by key (ties by rank), NCCL_SPLIT_NOCOLOR out; each group's collectives
   see only its members; a split of a split */
static void rank_splits(ncclComm_t comm, int rank, int n) {
    ncclComm_t pair = NULL, parity = NULL, rest = NULL, again = NULL;
    expect(ncclCommSplit(comm, rank / 2, rank, &pair, NULL) == ncclSuccess && pair, "rank %d: split by rank / 2", rank);
    expect(ncclCommSplit(comm, rank % 2, -rank, &parity, NULL) == ncclSuccess && parity, "rank %d: split by rank %% 2", rank);
    expect(ncclCommSplit(comm, rank == 0 ? NCCL_SPLIT_NOCOLOR : 7, 0, &rest, NULL) == ncclSuccess, "rank %d: split without rank 0", rank);
    if (!pair || !parity) return;
    int cnt = -1, ur = -1;
    int pair_n = n - rank / 2 * 2 < 2 ? n - rank / 2 * 2 : 2;
    expect(ncclCommCount(pair, &cnt) == ncclSuccess && cnt == pair_n && ncclCommUserRank(pair, &ur) == ncclSuccess &&
           ur == rank % 2, "rank %d: pair count %d rank %d", rank, cnt, ur);
    float x = (float)rank, want = 0;
    for (int q = rank / 2 * 2; q < rank / 2 * 2 + pair_n; q++) want += (float)q;
    expect(ncclAllReduce(&x, &x, 1, ncclFloat, ncclSum, pair, NULL) == ncclSuccess && x == want,
           "rank %d: allreduce in its pair: %g, want %g", rank, x, want);
    /* key -rank: the highest rank of each parity class comes first */
    int par_n = (n - rank % 2 + 1) / 2, above = (n - 1 - rank) / 2;
    expect(ncclCommCount(parity, &cnt) == ncclSuccess && cnt == par_n && ncclCommUserRank(parity, &ur) == ncclSuccess &&
           ur == above, "rank %d: parity count %d rank %d, want %d %d", rank, cnt, ur, par_n, above);
    float g[4] = {-1, -1, -1, -1}, mine = (float)rank;
    expect(ncclAllGather(&mine, g, 1, ncclFloat, parity, NULL) == ncclSuccess, "rank %d: allgather in its class", rank);
    for (int i = 0; i < par_n; i++) expect(g[i] == (float)(n - 1 - (n - 1 - rank % 2) % 2 - 2 * i),
                                           "rank %d: class member %d is %g", rank, i, g[i]);
    if (rank == 0) expect(rest == NULL, "NCCL_SPLIT_NOCOLOR gives NULL");
    else expect(rest && ncclCommCount(rest, &cnt) == ncclSuccess && cnt == n - 1 && ncclCommUserRank(rest, &ur) == ncclSuccess &&
                ur == rank - 1, "rank %d: the ranks without 0: count %d rank %d", rank, cnt, ur);
    expect(ncclCommSplit(pair, 0, 0, &again, NULL) == ncclSuccess && again, "rank %d: split of a split", rank);
    x = 1.0f;
    expect(again && ncclAllReduce(&x, &x, 1, ncclFloat, ncclSum, again, NULL) == ncclSuccess && x == (float)pair_n,
           "rank %d: allreduce in the split of its pair: %g", rank, x);
    ncclCommDestroy(again); ncclCommDestroy(rest); ncclCommDestroy(parity); ncclCommDestroy(pair);
}

/* one group: `mine` to rank `to`, and from rank `from` into `got` (filled with -1 first), which must then hold
   rank_value(from, i) */
static void grouped_exchange(ncclComm_t comm, int rank, const std::vector<float> &mine, std::vector<float> &got, int to,
                             int from, const char *what) {
    std::fill(got.begin(), got.end(), -1.0f);
    expect(ncclGroupStart() == ncclSuccess, "group start");
    expect(ncclSend(mine.data(), mine.size(), ncclFloat, to, comm, NULL) == ncclSuccess, "rank %d: %s send", rank, what);
    expect(ncclRecv(got.data(), got.size(), ncclFloat, from, comm, NULL) == ncclSuccess, "rank %d: %s recv", rank, what);
    expect(ncclGroupEnd() == ncclSuccess, "rank %d: group end of the %s", rank, what);
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); i++) bad += got[i] != rank_value(from, i);
    expect(bad == 0, "rank %d: %s: %zu values wrong", rank, what, bad);
}

/* ncclSend / ncclRecv: standalone one way, then back; in one group both ways at once (each message several
   mailbox chunks, so a send that waited for its receive outside the group would deadlock); two messages to one
   peer in one group, received in order; bf16; a ring over every rank in one group */
static void rank_p2p(ncclComm_t comm, int rank, int n) {
    size_t big = 700001;   /* floats: over 2 MiB, several chunks of any pair's mailbox */
    std::vector<float> mine(big), got(big);
    for (size_t i = 0; i < big; i++) mine[i] = rank_value(rank, i);
    if (n == 2) {
        int peer = 1 - rank;
        for (int from = 0; from < 2; from++) {   /* standalone: rank `from` sends, the other receives */
            std::fill(got.begin(), got.end(), -1.0f);
            if (rank == from) expect(ncclSend(mine.data(), big, ncclFloat, peer, comm, NULL) == ncclSuccess, "rank %d: send", rank);
            else {
                expect(ncclRecv(got.data(), big, ncclFloat, peer, comm, NULL) == ncclSuccess, "rank %d: recv", rank);
                size_t bad = 0;
                for (size_t i = 0; i < big; i++) bad += got[i] != rank_value(peer, i);
                expect(bad == 0, "rank %d: standalone recv from %d: %zu values wrong", rank, peer, bad);
            }
        }
        grouped_exchange(comm, rank, mine, got, peer, peer, "grouped send/recv both ways");
        /* two messages of different sizes to the same peer in one group: matched in call order */
        float a[3] = {1, 2, 3}, b[5] = {4, 5, 6, 7, 8}, ra[3] = {0}, rb[5] = {0};
        expect(ncclGroupStart() == ncclSuccess, "group start");
        if (rank == 0) { ncclSend(a, 3, ncclFloat, 1, comm, NULL); ncclSend(b, 5, ncclFloat, 1, comm, NULL); }
        else { ncclRecv(ra, 3, ncclFloat, 0, comm, NULL); ncclRecv(rb, 5, ncclFloat, 0, comm, NULL); }
        expect(ncclGroupEnd() == ncclSuccess, "rank %d: group end of two messages", rank);
        if (rank == 1) expect(!memcmp(a, ra, sizeof(a)) && !memcmp(b, rb, sizeof(b)), "two messages in call order");
        /* bf16 */
        std::vector<uint16_t> h(1000), hr(1000, 0);
        for (size_t i = 0; i < h.size(); i++) h[i] = ref_bf16(rank_value(rank, i));
        expect(ncclGroupStart() == ncclSuccess, "group start");
        ncclRecv(hr.data(), h.size(), ncclBfloat16, peer, comm, NULL);
        ncclSend(h.data(), h.size(), ncclBfloat16, peer, comm, NULL);
        expect(ncclGroupEnd() == ncclSuccess, "rank %d: group end, bf16", rank);
        size_t bad = 0;
        for (size_t i = 0; i < h.size(); i++) bad += hr[i] != ref_bf16(rank_value(peer, i));
        expect(bad == 0, "rank %d: bf16 send/recv: %zu values wrong", rank, bad);
    }
    /* a ring: every rank sends to the next and receives from the one before, in one group */
    grouped_exchange(comm, rank, mine, got, (rank + 1) % n, (rank + n - 1) % n, "ring");
    expect(ncclSend(mine.data(), 4, ncclFloat, n, comm, NULL) == ncclInvalidArgument, "send to peer n: ncclInvalidArgument");
}

/* modes of a rank in the failure tests */
enum { RANK_OK, RANK_DIES, RANK_HANGS, RANK_DIES_P2P, RANK_MISMATCH };

/* a survivor: the collective (or a receive from the victim) fails with the documented kind of error in bounded time, and stays failed */
static void rank_survivor(ncclComm_t comm, int rank, ncclResult_t want, double max_s, int p2p, int victim) {
    float x[4] = {1, 2, 3, 4};
    double t0 = now_s();
    ncclResult_t r = p2p ? ncclRecv(x, 4, ncclFloat, victim, comm, NULL) : ncclAllReduce(x, x, 4, ncclFloat, ncclSum, comm, NULL);
    double dt = now_s() - t0;
    expect(r == want || (want == ncclSystemError && r == ncclRemoteError), "rank %d: got %s, want %s", rank,
           ncclGetErrorString(r), ncclGetErrorString(want));
    expect(dt < max_s, "rank %d: the error took %.1f s", rank, dt);
    ncclResult_t st = ncclSuccess;
    expect(ncclCommGetAsyncError(comm, &st) == ncclSuccess && st != ncclSuccess, "rank %d: async error reported", rank);
    expect(ncclAllGather(x, x, 1, ncclFloat, comm, NULL) != ncclSuccess, "rank %d: later calls fail too", rank);
}

static int run_rank(ncclUniqueId id, int rank, int n, int mode, int victim) {
    ncclComm_t comm;
    ncclResult_t r = ncclCommInitRank(&comm, n, id, rank);
    expect(r == ncclSuccess, "rank %d: init: %s", rank, ncclGetErrorString(r));
    if (r != ncclSuccess) return 1;
    int c = 0, ur = -1;
    expect(ncclCommCount(comm, &c) == ncclSuccess && c == n && ncclCommUserRank(comm, &ur) == ncclSuccess && ur == rank,
           "rank %d: count / user rank", rank);
    if (mode == RANK_OK) { rank_collectives(comm, rank, n); rank_splits(comm, rank, n); rank_p2p(comm, rank, n); }
    else if (rank == victim && (mode == RANK_DIES || mode == RANK_DIES_P2P)) _exit(0);
    else if (rank == victim && mode == RANK_HANGS) pause();
    else if (mode == RANK_MISMATCH) {   /* NCCL's rule: the same count on every rank; here rank r passes 4 + r */
        float x[8] = {0};
        ncclResult_t m = ncclAllReduce(x, x, 4 + rank, ncclFloat, ncclSum, comm, NULL);
        expect(m == ncclInvalidUsage, "rank %d: an all-reduce of another count than its peer's: %s", rank, ncclGetErrorString(m));
    }
    else rank_survivor(comm, rank, mode == RANK_HANGS ? ncclSystemError : ncclRemoteError, 8.0, mode == RANK_DIES_P2P, victim);
    ncclCommDestroy(comm);
    return g_failed ? 1 : 0;
}

/* fork n ranks; the survivors are reaped first, so a dead victim stays a zombie while they wait for it */
static void fork_ranks(int n, int mode, const char *label) {
    ncclUniqueId id;
    expect(ncclGetUniqueId(&id) == ncclSuccess, "unique id");
    std::vector<pid_t> pids(n);
    int victim = n - 1, victim_mode = mode == RANK_DIES || mode == RANK_HANGS || mode == RANK_DIES_P2P;
    double t0 = now_s();
    for (int r = 0; r < n; r++) {
        pids[r] = fork();
        if (pids[r] == 0) { g_checks = 0; g_failed = 0; _exit(run_rank(id, r, n, mode, victim)); }
    }
    int failed = 0;
    for (int r = 0; r < n; r++) {
        if (victim_mode && r == victim) continue;
        int status = 0;
        waitpid(pids[r], &status, 0);
        failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    if (mode == RANK_HANGS) kill(pids[victim], SIGKILL);
    if (victim_mode) waitpid(pids[victim], NULL, 0);
    expect(failed == 0, "%s: %d rank(s) failed", label, failed);
    printf("  nccl %-34s %d ranks: %s (%.1f s)\n", label, n, failed ? "FAIL" : "ok", now_s() - t0);
}

static void test_nccl(void) {
    setenv("NCCL_EMU_TIMEOUT", "60", 1);
    fork_ranks(1, RANK_OK, "collectives");
    fork_ranks(2, RANK_OK, "collectives");
    fork_ranks(4, RANK_OK, "collectives");
    fork_ranks(3, RANK_DIES, "a peer exits after init");
    fork_ranks(2, RANK_DIES_P2P, "a recv from a peer that exits");
    fork_ranks(2, RANK_MISMATCH, "ranks passing different counts");
    setenv("NCCL_EMU_TIMEOUT", "2", 1);
    fork_ranks(4, RANK_HANGS, "a peer hangs (NCCL_EMU_TIMEOUT=2)");

    /* init: a rank that never comes makes the others fail after the timeout, not hang */
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    ncclComm_t comm = (ncclComm_t)&id;
    double t0 = now_s();
    ncclResult_t r = ncclCommInitRank(&comm, 2, id, 0);
    expect(r == ncclSystemError && comm == NULL, "init without the peer: %s", ncclGetErrorString(r));
    expect(now_s() - t0 < 6, "init without the peer gave up after %.1f s", now_s() - t0);
    expect(ncclCommInitRank(&comm, 2, id, 2) == ncclInvalidArgument, "init with rank == nranks: ncclInvalidArgument");
    expect(ncclGroupEnd() == ncclInvalidUsage, "ncclGroupEnd without start: ncclInvalidUsage");
    expect(!strcmp(ncclGetErrorString(ncclRemoteError), "remote process exited or there was a network error"),
           "error string");

    /* no segment is left behind */
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "ls /dev/shm 2>/dev/null | grep -c '^llmtrain-nccl-%d-'", (int)getpid());
    FILE *p = popen(cmd, "r");
    int left = -1;
    if (p) { if (fscanf(p, "%d", &left) != 1) left = -1; pclose(p); }
    expect(left == 0, "%d shared memory segments left in /dev/shm", left);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    cublasLtHandle_t h;
    expect(cublasLtCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublasLtCreate");
    test_cublaslt_products(h);
    printf("  cublasLt products (2 x 2 transposes x 3 type sets x 11 epilogues x beta 0/1): %d checks, %d failed\n",
           g_checks, g_failed);
    int before = g_checks, fb = g_failed;
    test_cublaslt_validation(h);
    printf("  cublasLt validation: %d checks, %d failed\n", g_checks - before, g_failed - fb);
    cublasLtDestroy(h);
    test_nccl();
    printf("test_emu_libs: %d checks, %d failed\n", g_checks, g_failed);
    return g_failed ? 1 : 0;
}
