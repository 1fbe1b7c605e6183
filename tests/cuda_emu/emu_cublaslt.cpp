/* emu_cublaslt.cpp: cuBLASLt's matmul on the host, written from NVIDIA's cuBLASLt API reference.

   cublasLtMatmul computes, column-major,  D = epilogue(alpha op(A) op(B) + beta C)  with op(A) m x k, op(B) k x n,
   C and D m x n. Every element is one fp32 sum over k in order (fmaf), then alpha, beta C, the epilogue, and one
   rounding to D's type (bf16: round to nearest even). A status other than success comes with a one-line reason on
   stderr. The operation's reads and writes are reported to the emulation core (emu_access) on its stream, so a
   matmul that reads memory nobody wrote, or memory another stream writes without an event between, is caught. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cublasLt.h"
#include "emu_core.h"

struct EmuLtContext { int unused; };

struct EmuLtMatmulDesc {
    int32_t compute, scale, transa, transb;
    uint32_t epilogue;
    const void *bias;           /* bias (input) or bias gradient (output) */
    void *aux;                  /* GELU input: written by GELU_AUX, read by DGELU */
    int64_t aux_ld;
    int32_t bias_type, aux_type;   /* -1: the type of D */
};

struct EmuLtMatrixLayout { int32_t type; uint64_t rows, cols; int64_t ld; };

struct EmuLtPreference { uint64_t max_workspace; uint32_t align[4]; };   /* align: A, B, C, D */

/* what an algo from the heuristic holds: a tag, then the alignments it was chosen for (A, B, C, D, bias, aux) */
static const uint64_t ALGO_TAG = 0x454d55414c474f31ull;   /* "EMUALGO1" */

static cublasStatus_t fail(cublasStatus_t st, const char *fn, const char *why) {
    fprintf(stderr, "cuda-emu: %s: %s\n", fn, why);
    return st;
}

static size_t type_size(int32_t t) { return t == CUDA_R_32F ? 4 : t == CUDA_R_16BF ? 2 : 0; }

/* the largest power of two (up to 256, cuBLASLt's default requirement) that divides the address */
static uint32_t ptr_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a % al)) al >>= 1;
    return al;
}

static float load(const void *p, int32_t type, size_t i) {
    if (type == CUDA_R_32F) return ((const float *)p)[i];
    return emu_bf16_to_float(((const uint16_t *)p)[i]);
}

static void store(void *p, int32_t type, size_t i, float v) {
    if (type == CUDA_R_32F) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = emu_bf16_from_float_rn(v);
}

/* ------------------------------------------------------------------------------------------------ */
/* handles, descriptors, layouts, preferences */

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) {
    if (!handle) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtCreate", "handle is NULL");
    *handle = (cublasLtHandle_t)calloc(1, sizeof(EmuLtContext));
    return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!handle) return fail(CUBLAS_STATUS_NOT_INITIALIZED, "cublasLtDestroy", "handle is NULL");
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute, cudaDataType_t scale) {
    if (!desc) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulDescCreate", "desc is NULL");
    EmuLtMatmulDesc *d = (EmuLtMatmulDesc *)calloc(1, sizeof(EmuLtMatmulDesc));
    if (!d) return CUBLAS_STATUS_ALLOC_FAILED;
    d->compute = compute; d->scale = scale;
    d->transa = CUBLAS_OP_N; d->transb = CUBLAS_OP_N;
    d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    d->bias_type = -1; d->aux_type = -1;
    *desc = d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    free(desc);
    return CUBLAS_STATUS_SUCCESS;
}

/* cuBLASLt docs: INVALID_VALUE when buf is NULL or size does not match the attribute's storage. Attributes the
   emulation does not implement give NOT_SUPPORTED unless set to their default. */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    const char *fn = "cublasLtMatmulDescSetAttribute";
    if (!desc || !buf) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "desc or buf is NULL");
    size_t want = 4;
    if (attr == CUBLASLT_MATMUL_DESC_BIAS_POINTER || attr == CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER) want = sizeof(void *);
    if (attr == CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD || attr == CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE ||
        attr == CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE) want = 8;
    if (size != want) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "size does not match the attribute");
    int32_t i32 = 0;
    int64_t i64 = 0;
    memcpy(&i32, buf, 4);
    if (want == 8) memcpy(&i64, buf, 8);
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: desc->compute = i32; break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: desc->scale = i32; break;
    case CUBLASLT_MATMUL_DESC_TRANSA: desc->transa = i32; break;
    case CUBLASLT_MATMUL_DESC_TRANSB: desc->transb = i32; break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: desc->epilogue = (uint32_t)i32; break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: memcpy(&desc->bias, buf, sizeof(void *)); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: memcpy(&desc->aux, buf, sizeof(void *)); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: desc->aux_ld = i64; break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: desc->bias_type = i32; break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: desc->aux_type = i32; break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:   /* 0: alpha and beta are host pointers */
    case CUBLASLT_MATMUL_DESC_TRANSC:         /* docs: only CUBLAS_OP_N is supported */
        if (i32 != 0) return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "only the default pointer mode / TRANSC is emulated");
        break;
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE:
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE:
        if (i64 != 0) return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "batched matmuls are not emulated");
        break;
    default: return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "attribute not emulated");
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    if (!layout) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatrixLayoutCreate", "layout is NULL");
    EmuLtMatrixLayout *l = (EmuLtMatrixLayout *)calloc(1, sizeof(EmuLtMatrixLayout));
    if (!l) return CUBLAS_STATUS_ALLOC_FAILED;
    l->type = type; l->rows = rows; l->cols = cols; l->ld = ld;
    *layout = l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    free(layout);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return fail(CUBLAS_STATUS_INVALID_VALUE, "cublasLtMatmulPreferenceCreate", "pref is NULL");
    EmuLtPreference *p = (EmuLtPreference *)calloc(1, sizeof(EmuLtPreference));
    if (!p) return CUBLAS_STATUS_ALLOC_FAILED;
    for (int i = 0; i < 4; i++) p->align[i] = 256;   /* docs: MIN_ALIGNMENT_*_BYTES default 256 */
    *pref = p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    free(pref);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    const char *fn = "cublasLtMatmulPreferenceSetAttribute";
    if (!pref || !buf) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "pref or buf is NULL");
    size_t want = (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES || attr == CUBLASLT_MATMUL_PREF_IMPL_MASK) ? 8 : 4;
    if (size != want) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "size does not match the attribute");
    uint32_t u32;
    memcpy(&u32, buf, 4);
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: memcpy(&pref->max_workspace, buf, 8); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: pref->align[0] = u32; break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: pref->align[1] = u32; break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: pref->align[2] = u32; break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: pref->align[3] = u32; break;
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT:
    case CUBLASLT_MATMUL_PREF_IMPL_MASK: break;   /* they only steer the choice among algorithms: one here */
    default: return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "attribute not emulated");
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------ */
/* the problem: shapes, types and epilogue checked as cublasLtMatmul checks them */

struct Problem {
    int64_t m, n, k;
    int32_t ab_type, d_type, bias_type, aux_type;
    int has_bias, bias_in, bias_grad, aux_out, aux_in, gelu, dgelu, relu;
};

static int epilogue_known(uint32_t e) {
    switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT: case CUBLASLT_EPILOGUE_RELU: case CUBLASLT_EPILOGUE_BIAS:
    case CUBLASLT_EPILOGUE_RELU_BIAS: case CUBLASLT_EPILOGUE_GELU: case CUBLASLT_EPILOGUE_GELU_AUX:
    case CUBLASLT_EPILOGUE_GELU_BIAS: case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: case CUBLASLT_EPILOGUE_DGELU:
    case CUBLASLT_EPILOGUE_DGELU_BGRAD: case CUBLASLT_EPILOGUE_BGRADA: case CUBLASLT_EPILOGUE_BGRADB:
        return 1;
    default: return 0;   /* the ReLU bit-mask epilogues (RELU_AUX, DRELU) are not emulated */
    }
}

static cublasStatus_t check_layout(const EmuLtMatrixLayout *l, const char *name, const char *fn) {
    char why[128];
    if (!type_size(l->type)) {
        snprintf(why, sizeof(why), "matrix %s: type %d (only CUDA_R_32F and CUDA_R_16BF are emulated)", name, (int)l->type);
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, why);
    }
    /* column-major: ld >= rows */
    if (l->ld < 1 || (uint64_t)l->ld < l->rows) {
        snprintf(why, sizeof(why), "matrix %s: ld %lld < rows %llu", name, (long long)l->ld, (unsigned long long)l->rows);
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, why);
    }
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t check_problem(const EmuLtMatmulDesc *op, const EmuLtMatrixLayout *a, const EmuLtMatrixLayout *b,
                                    const EmuLtMatrixLayout *c, const EmuLtMatrixLayout *d, Problem *p, const char *fn) {
    char why[160];
    if (!op || !a || !b || !c || !d) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "a descriptor is NULL");
    if ((op->compute != CUBLAS_COMPUTE_32F && op->compute != CUBLAS_COMPUTE_32F_PEDANTIC) || op->scale != CUDA_R_32F)
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "only CUBLAS_COMPUTE_32F with CUDA_R_32F scale is emulated");
    if ((op->transa != CUBLAS_OP_N && op->transa != CUBLAS_OP_T) || (op->transb != CUBLAS_OP_N && op->transb != CUBLAS_OP_T))
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "TRANSA / TRANSB must be CUBLAS_OP_N or CUBLAS_OP_T");
    cublasStatus_t st;
    if ((st = check_layout(a, "A", fn)) || (st = check_layout(b, "B", fn)) || (st = check_layout(c, "C", fn)) ||
        (st = check_layout(d, "D", fn)))
        return st;
    /* cuBLASLt docs, the supported type combinations with CUBLAS_COMPUTE_32F: A = B type; C = D type;
       fp32 A/B with fp32 C/D, bf16 A/B with bf16 or fp32 C/D */
    if (a->type != b->type || c->type != d->type || (a->type == CUDA_R_32F && d->type != CUDA_R_32F))
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "unsupported combination of A/B/C/D types");
    int64_t am = op->transa == CUBLAS_OP_N ? a->rows : a->cols, ak = op->transa == CUBLAS_OP_N ? a->cols : a->rows;
    int64_t bk = op->transb == CUBLAS_OP_N ? b->rows : b->cols, bn = op->transb == CUBLAS_OP_N ? b->cols : b->rows;
    if (ak != bk || (int64_t)d->rows != am || (int64_t)d->cols != bn || c->rows != d->rows || c->cols != d->cols) {
        snprintf(why, sizeof(why), "shapes do not match: op(A) %lldx%lld, op(B) %lldx%lld, C %llux%llu, D %llux%llu",
                 (long long)am, (long long)ak, (long long)bk, (long long)bn, (unsigned long long)c->rows,
                 (unsigned long long)c->cols, (unsigned long long)d->rows, (unsigned long long)d->cols);
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, why);
    }
    memset(p, 0, sizeof(*p));
    p->m = am; p->n = bn; p->k = ak;
    p->ab_type = a->type; p->d_type = d->type;
    uint32_t e = op->epilogue;
    if (!epilogue_known(e)) {
        snprintf(why, sizeof(why), "epilogue %u is not emulated", e);
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, why);
    }
    p->bias_in = (e & CUBLASLT_EPILOGUE_BIAS) != 0;
    p->bias_grad = (e & 16) || e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB;
    p->has_bias = p->bias_in || p->bias_grad;
    p->gelu = (e & CUBLASLT_EPILOGUE_GELU) != 0;
    p->relu = (e & CUBLASLT_EPILOGUE_RELU) != 0;
    p->dgelu = (e & 64) != 0;
    p->aux_out = p->gelu && (e & 128);
    p->aux_in = p->dgelu;
    /* docs, BIAS_DATA_TYPE: default (-1) the type of D; bf16 D may take an fp32 bias */
    p->bias_type = op->bias_type == -1 ? d->type : op->bias_type;
    p->aux_type = op->aux_type == -1 ? d->type : op->aux_type;
    if (p->has_bias) {
        if (!op->bias) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "the epilogue needs CUBLASLT_MATMUL_DESC_BIAS_POINTER");
        if (p->bias_type != d->type && p->bias_type != CUDA_R_32F)
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "bias type must be D's type or CUDA_R_32F");
        if ((uintptr_t)op->bias % type_size(p->bias_type))
            return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "bias pointer not aligned to its element size");
    }
    if (p->aux_out || p->aux_in) {
        if (!op->aux) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "the epilogue needs CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER");
        if (p->aux_type != d->type) return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "aux type must be D's type");
        /* docs, EPILOGUE_AUX_LD: for GELU, divisible by 8 and no less than the rows of D */
        if (op->aux_ld < p->m || op->aux_ld % 8) {
            snprintf(why, sizeof(why), "EPILOGUE_AUX_LD %lld: must be a multiple of 8 and >= m = %lld",
                     (long long)op->aux_ld, (long long)p->m);
            return fail(CUBLAS_STATUS_INVALID_VALUE, fn, why);
        }
        if ((uintptr_t)op->aux % type_size(p->aux_type))
            return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "aux pointer not aligned to its element size");
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* one algorithm, good for any shape; docs: NOT_SUPPORTED with no result when no algorithm fits. It cannot work
   on a buffer less aligned than its elements, so a MIN_ALIGNMENT below the element size leaves none. */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t op,
                                              cublasLtMatrixLayout_t adesc, cublasLtMatrixLayout_t bdesc,
                                              cublasLtMatrixLayout_t cdesc, cublasLtMatrixLayout_t ddesc,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned) {
    const char *fn = "cublasLtMatmulAlgoGetHeuristic";
    if (!handle) return fail(CUBLAS_STATUS_NOT_INITIALIZED, fn, "handle is NULL");
    if (!pref || !results || !returned || requested < 1) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "bad arguments");
    *returned = 0;
    Problem p;
    cublasStatus_t st = check_problem(op, adesc, bdesc, cdesc, ddesc, &p, fn);
    if (st) return st;
    const EmuLtMatrixLayout *lay[4] = {adesc, bdesc, cdesc, ddesc};
    for (int i = 0; i < 4; i++) {
        uint32_t al = pref->align[i];
        if (al == 0 || (al & (al - 1)) || al < type_size(lay[i]->type)) {
            char why[128];
            snprintf(why, sizeof(why), "MIN_ALIGNMENT_%c_BYTES %u: no algorithm for a matrix of %zu-byte elements",
                     "ABCD"[i], al, type_size(lay[i]->type));
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, why);
        }
    }
    memset(&results[0], 0, sizeof(results[0]));
    results[0].algo.data[0] = ALGO_TAG;
    for (int i = 0; i < 4; i++) results[0].algo.data[1 + i] = pref->align[i] < 256 ? pref->align[i] : 256;
    /* docs: the heuristic reads the bias and aux pointers' values for their alignment */
    results[0].algo.data[5] = p.has_bias ? ptr_alignment(op->bias) : 0;
    results[0].algo.data[6] = (p.aux_in || p.aux_out) ? ptr_alignment(op->aux) : 0;
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------ */
/* the emulation proper: plain loops */

/* cuBLASLt's GELU is the tanh approximation: gelu(x) = 0.5 x (1 + tanh(s (x + 0.044715 x^3))), s = sqrt(2/pi) */
static float gelu(float x) {
    const float s = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(s * (x + 0.044715f * x * x * x)));
}
/* its derivative: 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 0.044715 x^2), t = tanh(s (x + 0.044715 x^3)) */
static float gelu_grad(float x) {
    const float s = 0.7978845608028654f;
    float t = tanhf(s * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * s * (1.0f + 3.0f * 0.044715f * x * x);
}

/* element (i, j) of op(X) for a stored column-major X with leading dimension ld */
static float op_elem(const void *x, int32_t type, int64_t ld, int trans, int64_t i, int64_t j) {
    return trans ? load(x, type, (size_t)(j + i * ld)) : load(x, type, (size_t)(i + j * ld));
}

/* report the columns of a stored rows x cols matrix (leading dimension ld) as read or written */
static void access_matrix(const void *x, size_t esize, int64_t rows, int64_t cols, int64_t ld, int write) {
    if (rows <= 0) return;
    for (int64_t j = 0; j < cols; j++) emu_access((const char *)x + (size_t)(j * ld) * esize, (size_t)rows * esize, write);
}

/* D = epilogue(alpha op(A) op(B) + beta C); see the top of the file */
static void emu_matmul(const EmuLtMatmulDesc *op, const Problem *p, float alpha, const void *A, int64_t lda,
                       const void *B, int64_t ldb, float beta, const void *C, int64_t ldc, void *D, int64_t ldd) {
    int ta = op->transa == CUBLAS_OP_T, tb = op->transb == CUBLAS_OP_T;
    float *bgrad = NULL;
    if (p->bias_grad) bgrad = (float *)calloc((size_t)(op->epilogue == CUBLASLT_EPILOGUE_BGRADB ? p->n : p->m) + 1, 4);
    /* BGRADA / BGRADB: the bias gradient of A (length m) or of B (length n), summed over k */
    if (op->epilogue == CUBLASLT_EPILOGUE_BGRADA)
        for (int64_t i = 0; i < p->m; i++)
            for (int64_t kk = 0; kk < p->k; kk++) bgrad[i] += op_elem(A, p->ab_type, lda, ta, i, kk);
    if (op->epilogue == CUBLASLT_EPILOGUE_BGRADB)
        for (int64_t j = 0; j < p->n; j++)
            for (int64_t kk = 0; kk < p->k; kk++) bgrad[j] += op_elem(B, p->ab_type, ldb, tb, kk, j);
    /* op(A) as m rows of k and op(B) as n columns of k, in fp32, so the dot products read memory in order */
    float *Af = (float *)malloc((size_t)(p->m * p->k + 1) * sizeof(float));
    float *Bf = (float *)malloc((size_t)(p->n * p->k + 1) * sizeof(float));
    for (int64_t i = 0; i < p->m; i++)
        for (int64_t kk = 0; kk < p->k; kk++) Af[i * p->k + kk] = op_elem(A, p->ab_type, lda, ta, i, kk);
    for (int64_t j = 0; j < p->n; j++)
        for (int64_t kk = 0; kk < p->k; kk++) Bf[j * p->k + kk] = op_elem(B, p->ab_type, ldb, tb, kk, j);
    /* each element of D is one thread's: the same result for any number of threads (a DGELU_BGRAD bias
       gradient sums over the columns: serial) */
    int col_sum = p->bias_grad && op->epilogue != CUBLASLT_EPILOGUE_BGRADA && op->epilogue != CUBLASLT_EPILOGUE_BGRADB;
    #pragma omp parallel for schedule(static) if (!col_sum && p->m * p->n * p->k > (1 << 20))
    for (int64_t j = 0; j < p->n; j++) {
        for (int64_t i = 0; i < p->m; i++) {
            const float *ar = Af + i * p->k, *bc = Bf + j * p->k;
            float acc = 0.0f;
            for (int64_t kk = 0; kk < p->k; kk++) acc = fmaf(ar[kk], bc[kk], acc);
            float v = alpha * acc;
            /* cuBLAS: with beta == 0, C is not read (it may hold anything, NaN included) */
            if (beta != 0.0f) v += beta * load(C, p->d_type, (size_t)(i + j * ldc));
            /* docs: BIAS is broadcast over the columns and added before the final transform */
            if (p->bias_in) v += load(op->bias, p->bias_type, (size_t)i);
            size_t ai = (size_t)(i + j * op->aux_ld);
            if (p->aux_out) store(op->aux, p->aux_type, ai, v);   /* GELU_AUX: the GELU input */
            if (p->gelu) v = gelu(v);
            if (p->relu) v = v > 0.0f ? v : 0.0f;
            if (p->dgelu) v *= gelu_grad(load(op->aux, p->aux_type, ai));
            /* DGELU_BGRAD: the bias gradient is the sum over the columns of the gradient stored in D */
            if (col_sum) bgrad[i] += v;
            store(D, p->d_type, (size_t)(i + j * ldd), v);
        }
    }
    free(Af);
    free(Bf);
    if (bgrad) {
        int64_t len = op->epilogue == CUBLASLT_EPILOGUE_BGRADB ? p->n : p->m;
        for (int64_t i = 0; i < len; i++) store((void *)op->bias, p->bias_type, (size_t)i, bgrad[i]);
        free(bgrad);
    }
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t op, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t adesc, const void *B, cublasLtMatrixLayout_t bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t cdesc, void *D,
                              cublasLtMatrixLayout_t ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSize, cudaStream_t stream) {
    const char *fn = "cublasLtMatmul";
    (void)workspace; (void)workspaceSize;   /* the heuristic's algorithm needs no workspace */
    if (!handle) return fail(CUBLAS_STATUS_NOT_INITIALIZED, fn, "handle is NULL");
    Problem p;
    cublasStatus_t st = check_problem(op, adesc, bdesc, cdesc, ddesc, &p, fn);
    if (st) return st;
    if (!alpha || !beta) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "alpha or beta is NULL");
    float a = *(const float *)alpha, b = *(const float *)beta;
    if ((p.m > 0 && p.n > 0 && !D) || (p.k > 0 && p.m > 0 && p.n > 0 && (!A || !B)) || (b != 0.0f && !C))
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "a matrix pointer is NULL");
    /* docs: in-place (C == D) needs C's layout to be D's */
    if (C == D && (cdesc->ld != ddesc->ld || cdesc->type != ddesc->type))
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "C == D with different layouts");
    const void *ptr[4] = {A, B, C, D};
    const EmuLtMatrixLayout *lay[4] = {adesc, bdesc, cdesc, ddesc};
    for (int i = 0; i < 4; i++) {
        if ((uintptr_t)ptr[i] % type_size(lay[i]->type)) {
            char why[96];
            snprintf(why, sizeof(why), "matrix %c pointer %p not aligned to its element size", "ABCD"[i], ptr[i]);
            return fail(CUBLAS_STATUS_INVALID_VALUE, fn, why);
        }
    }
    if (algo) {
        /* an algo from the heuristic works only on buffers as aligned as the preference said they would be */
        if (algo->data[0] != ALGO_TAG) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "algo is not from cublasLtMatmulAlgoGetHeuristic");
        const void *all[6] = {A, B, C, D, p.has_bias ? op->bias : NULL, (p.aux_in || p.aux_out) ? op->aux : NULL};
        for (int i = 0; i < 6; i++) {
            if (!all[i] || algo->data[1 + i] == 0) continue;
            if (ptr_alignment(all[i]) < algo->data[1 + i]) {
                static const char *names[6] = {"A", "B", "C", "D", "bias", "aux"};
                char why[160];
                snprintf(why, sizeof(why), "%s pointer %p is %u-byte aligned but the algo was chosen for %llu-byte alignment",
                         names[i], all[i], ptr_alignment(all[i]), (unsigned long long)algo->data[1 + i]);
                return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, why);
            }
        }
    }

    /* the operation's memory traffic, in stream order: reads, then writes */
    emu_op_begin(stream, fn);
    size_t abs = type_size(p.ab_type), ds = type_size(p.d_type);
    if (p.m > 0 && p.n > 0 && p.k > 0) {
        access_matrix(A, abs, adesc->rows, adesc->cols, adesc->ld, 0);
        access_matrix(B, abs, bdesc->rows, bdesc->cols, bdesc->ld, 0);
    }
    if (b != 0.0f) access_matrix(C, ds, cdesc->rows, cdesc->cols, cdesc->ld, 0);
    if (p.bias_in) emu_access(op->bias, (size_t)p.m * type_size(p.bias_type), 0);
    if (p.aux_in) access_matrix(op->aux, type_size(p.aux_type), p.m, p.n, op->aux_ld, 0);
    access_matrix(D, ds, ddesc->rows, ddesc->cols, ddesc->ld, 1);
    if (p.aux_out) access_matrix(op->aux, type_size(p.aux_type), p.m, p.n, op->aux_ld, 1);
    if (p.bias_grad) {
        int64_t len = op->epilogue == CUBLASLT_EPILOGUE_BGRADB ? p.n : p.m;
        emu_access(op->bias, (size_t)len * type_size(p.bias_type), 1);
    }
    emu_matmul(op, &p, a, A, adesc->ld, B, bdesc->ld, b, C, cdesc->ld, D, ddesc->ld);
    emu_op_end();
    return CUBLAS_STATUS_SUCCESS;
}
