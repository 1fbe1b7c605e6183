/*
 train_gpu.cu — the GPU trainer: the same flags, data, log and files as train.c, with the layers of
 llmtrain.h as CUDA kernels (and cuBLASLt for the matmuls), data parallel over NCCL with ZeRO-1, with --tp
 tensor (and --sp sequence) parallel and with --pp pipeline parallel (1F1B, ncclSend / ncclRecv between the
 stages) as train.c (docs/design.md sec. 7).

   ./train_gpu --data out/tinyshakespeare_text_document --model gpt2-124m --batch-size 16 --seq-len 1024
   ./train_gpu --nproc-per-node 8 ...             (forks one process per GPU; or run it under torchrun)

 Build (see also `make train_gpu`):
   nvcc -O3 -arch=sm_90 -std=c++17 -D_GNU_SOURCE -Xcompiler -fopenmp -o train_gpu train_gpu.cu \
        prepro/tokenizer.c -lcublas -lcublasLt -lnccl -ljansson -lpcre2-8 -lm

 Reading order: numerics helpers; the kernels in the order of llmtrain.h's layers, each named after the header
 function it mirrors (<name>_kernel, or a name that says what it fuses, e.g. residual_norm_forward_kernel), with
 cuBLASLt for the matmuls; then the optimizer's kernels and small utilities; the wrappers inside namespace gpu
 (gpu::layernorm_forward mirrors layernorm_forward); the model on the device (forward, backward, AdamW on the
 ZeRO-1 shard); the distributed start-up (dist.h); the backend of the training loop both trainers share
 (train_loop.h); main. Everywhere, as in the header, T is the sequence length (floatX the element type),
 and the backward kernels add (+=) into the gradients they write unless their comment says otherwise.

 Numerics (docs/design.md sec. 5): params and activations in floatX (bf16, or fp32 with --dtype fp32); fp32 master
 weights and AdamW moments, sharded over ranks; gradients of the weights in fp32; the residual-stream
 gradient in fp32; norms, softmax, losses and reductions in fp32. The bf16 copy of the weights is made
 from the fp32 masters by stochastic rounding with the header's counter-based RNG (rng_mix ported below).
 Every reduction runs in a fixed order: a run repeats bit for bit on the same GPU and the same world size.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
extern "C" {
#include "prepro/tokenizer.h"
#include "train_common.h"
#include "train_loop.h"
}

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <nccl.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>
#include <jansson.h>

typedef __nv_bfloat16 bf16;

/* ------------------------------------------------------------------------------------------------ */
/* errors */


#define CUDA_CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) \
    die("%s:%d: CUDA: %s (%s)", __FILE__, __LINE__, cudaGetErrorString(e_), #x); } while (0)
#define CUBLAS_CHECK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) \
    die("%s:%d: cuBLASLt status %d (%s)", __FILE__, __LINE__, (int)s_, #x); } while (0)
#define NCCL_CHECK(x) do { ncclResult_t r_ = (x); if (r_ != ncclSuccess) \
    die("%s:%d: NCCL: %s (%s)", __FILE__, __LINE__, ncclGetErrorString(r_), #x); } while (0)
#define KERNEL_CHECK() CUDA_CHECK(cudaGetLastError())

static inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

/* The GPUs of this machine. A machine without one (no NVIDIA driver library at all, which the runtime reports
   as an insufficient driver, or a driver that sees no device) has 0; any other failure, such as a driver older
   than the CUDA runtime this program was built with, stops with the runtime's message. */
static int gpu_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaSuccess) return n;
    if (e == cudaErrorNoDevice) return 0;
    if (e == cudaErrorInsufficientDriver) {
        void *lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
        if (!lib) return 0;
        dlclose(lib);
        die("CUDA initialisation failed: %s: the NVIDIA driver is older than the CUDA runtime this program was "
            "built with (update the driver)", cudaGetErrorString(e));
    }
    die("CUDA initialisation failed: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* numerics helpers */

/* floatX (the type of params and activations) is float or bf16; arithmetic is always in float */
__host__ __device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename floatX> __device__ __forceinline__ floatX from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

/* host-side bf16 <-> float (round to nearest even), for uploads and tests */
[[maybe_unused]] static inline uint16_t host_f32_to_bf16_bits(float f) {
    uint32_t b; memcpy(&b, &f, 4);
    if ((b & 0x7f800000u) == 0x7f800000u) return (uint16_t)((b >> 16) | ((b & 0xffff) ? 0x40 : 0));  /* inf / nan */
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}
static inline float host_bf16_bits_to_f32(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }

/* 16 bytes of floatX: 8 bf16 or 4 float. Tensors are laid out so rows start on 16-byte boundaries
   (C, F, HD multiples of 8; checked at startup). */
template <typename floatX> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(floatX);
    floatX v[N];
};
template <typename floatX>
__device__ __forceinline__ Pack<floatX> ld_pack(const floatX *p) { return *reinterpret_cast<const Pack<floatX> *>(p); }
template <typename floatX>
__device__ __forceinline__ void st_pack(floatX *p, const Pack<floatX> &x) { *reinterpret_cast<Pack<floatX> *>(p) = x; }

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* rng: the header's counter-based generator, the same bits on the device (llmtrain.h, section rng) */
__host__ __device__ __forceinline__ uint64_t rng_mix_dev(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
__host__ __device__ __forceinline__ uint64_t rng_u64_dev(uint64_t seed, uint64_t counter) { return rng_mix_dev(rng_mix_dev(seed) ^ counter); }

/* stochastic rounding of x to bf16: add 16 random bits below the bf16 mantissa, then truncate. The result is
   one of the two bf16 neighbours of x (in magnitude: the sign bit is apart), the one further from zero with
   probability (|x| - lower) / (upper - lower), so E[result] = x. As bits, for host tests too. */
__host__ __device__ __forceinline__ uint16_t stochastic_round_bf16_bits(float x, uint64_t r) {
    uint32_t b;
    memcpy(&b, &x, 4);
    if ((b & 0x7f800000u) != 0x7f800000u) b += (uint32_t)(r & 0xffffu);   /* inf and nan stay as they are */
    return (uint16_t)(b >> 16);
}
__device__ __forceinline__ bf16 stochastic_round_bf16(float x, uint64_t r) {
    __nv_bfloat16_raw raw;
    raw.x = stochastic_round_bf16_bits(x, r);
    return bf16(raw);
}
template <typename floatX> __device__ __forceinline__ floatX round_param(float x, uint64_t r);
template <> __device__ __forceinline__ float round_param<float>(float x, uint64_t r) { return x; }
template <> __device__ __forceinline__ bf16 round_param<bf16>(float x, uint64_t r) { return stochastic_round_bf16(x, r); }

/* ------------------------------------------------------------------------------------------------ */
/* device memory: every allocation goes through here, so the peak is known */

static size_t g_dev_bytes = 0, g_dev_peak = 0;

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) return NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        die("out of GPU memory allocating %.2f GiB (%.2f GiB allocated so far, %.2f GiB free of %.2f): "
                "lower --batch-size, raise --recompute, or use more GPUs", bytes / 1073741824.0,
                g_dev_bytes / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0);
    }
    g_dev_bytes += bytes;
    if (g_dev_bytes > g_dev_peak) g_dev_peak = g_dev_bytes;
    return p;
}

static void dev_free(void *p, size_t bytes) {
    if (!p) return;
    CUDA_CHECK(cudaFree(p));
    g_dev_bytes -= bytes;
}

/* ================================================================================================ */
/* layers: the kernels of llmtrain.h's layers, in its order. Shapes as in the header: B sequences of T positions,
   N = B*T rows, C channels, NH / NKV query / key-value heads of HD, F hidden, V vocabulary. Tensors are floatX,
   gradients of the weights and of the residual stream fp32. */

/* ------------------------------------------------------------------------------------------------ */
/* embedding */

/* embedding_forward: out[b,t,:] = wte[tok[b,t],:] + wpe[p,:], p = pos[b*T+t] (or t when pos is NULL).
   embedding_forward_shard (tensor parallel): wte holds the rows [v0, v0 + V) of the vocabulary; a token outside
   them reads a zero row (the rank holding it adds its row). */
template <typename floatX>
__global__ void embedding_forward_kernel(floatX *out, const int *tokens, const floatX *wte, int v0, int V, const floatX *wpe,
                                         const int *pos, int N, int T, int C) {
    constexpr int VW = Pack<floatX>::N;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VW;
    if (i >= (size_t)N * C) return;
    int n = (int)(i / C), c = (int)(i % C), row = tokens[n] - v0;
    Pack<floatX> e;
    if (row >= 0 && row < V) e = ld_pack(wte + (size_t)row * C + c);
    else for (int k = 0; k < VW; k++) e.v[k] = from_f<floatX>(0.0f);
    if (wpe) {
        Pack<floatX> p = ld_pack(wpe + (size_t)(pos ? pos[n] : n % T) * C + c);
        #pragma unroll
        for (int k = 0; k < VW; k++) e.v[k] = from_f<floatX>(to_f(e.v[k]) + to_f(p.v[k]));
    }
    st_pack(out + i, e);
}

/* embedding_backward (dwte += the dout rows of each token), deterministic and without atomics. The host sorts the positions by token (counting sort,
   stable) and cuts each token's run of positions into chunks of at most EMB_CHUNK, in order (emb_plan_build), so a
   frequent token is summed by many blocks, not serially by one:
     pass 1, block (chunk c, 256 columns): acc = sum of dout[pos[j], :] over the chunk's positions, in order; a
             token of one chunk adds acc to its dwte row, a longer run's chunk stores it in its partial slot;
     pass 2, block (long token u, 256 columns): dwte[tok, :] += its partials summed in chunk order.
   No two blocks write one row, and every sum has a fixed order: the same bits on every run. With
   --reset-position-ids the same two passes make dwpe from the rows bucketed by position instead of by token. */
#define EMB_CHUNK 32
__global__ void embedding_backward_chunks_kernel(float *dwte, float *part, const float *dout, const int *pos,
                                                 const int *cbeg, const int *cdst, int C) {
    int ch = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int j = cbeg[ch]; j < cbeg[ch + 1]; j++) acc += dout[(size_t)pos[j] * C + c];
    int dst = cdst[ch];
    if (dst >= 0) dwte[(size_t)dst * C + c] += acc;
    else part[(size_t)(-1 - dst) * C + c] = acc;
}

__global__ void embedding_backward_partials_kernel(float *dwte, const float *part, const int *ltok, const int *lfirst, int C) {
    int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int p = lfirst[u]; p < lfirst[u + 1]; p++) acc += part[(size_t)p * C + c];
    dwte[(size_t)ltok[u] * C + c] += acc;
}

/* embedding_backward's dwpe when row b*T+t is at position t: dwpe[t,c] += sum_b dout[b,t,c] */
__global__ void embedding_backward_wpe_kernel(float *dwpe, const float *dout, int B, int T, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * C) return;
    int t = (int)(i / C), c = (int)(i % C);
    float acc = 0.0f;
    for (int b = 0; b < B; b++) acc += dout[((size_t)b * T + t) * C + c];
    dwpe[i] += acc;
}

/* ------------------------------------------------------------------------------------------------ */
/* layernorm, rmsnorm (with the residual add of the stream fused in) */

/* residual_forward + layernorm_forward / rmsnorm_forward, one warp per row:
     x = inp1 + inp2 (when inp2; rounded to floatX, stored in resid_out), else x = inp1
     layernorm: mean = sum(x)/C, rstd = 1/sqrt(sum((x-mean)^2)/C + eps), y = (x-mean)*rstd*w + b
     rmsnorm:   rstd = 1/sqrt(sum(x^2)/C + eps),                         y = x*rstd*w
   Row r of the input starts at inp1 + (r / heads) * ld + (r % heads) * C (heads = 1, ld = C for the usual
   [N, C] rows; heads = NH, ld = row width for Qwen3's per-head q/k norm on a [N, ld] buffer). The output is
   [rows, C] contiguous. mean may be NULL (rmsnorm). */
template <typename floatX>
__global__ void residual_norm_forward_kernel(floatX *resid_out, floatX *out, float *mean, float *rstd, const floatX *inp1,
                                             const floatX *inp2, int heads, int ld, const floatX *w, const floatX *b,
                                             int rows, int C, float eps, int layernorm) {
    constexpr int VW = Pack<floatX>::N;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const floatX *x = inp1 + (size_t)(row / heads) * ld + (size_t)(row % heads) * C;
    float sum = 0.0f;
    if (inp2) {
        const floatX *x2 = inp2 + (size_t)row * C;
        floatX *r = resid_out + (size_t)row * C;
        for (int c = lane * VW; c < C; c += 32 * VW) {
            Pack<floatX> a = ld_pack(x + c), bb = ld_pack(x2 + c);
            #pragma unroll
            for (int k = 0; k < VW; k++) { a.v[k] = from_f<floatX>(to_f(a.v[k]) + to_f(bb.v[k])); sum += to_f(a.v[k]); }
            st_pack(r + c, a);
        }
        x = r;   /* the rounded sum, as the backward will read it */
    } else {
        for (int c = lane * VW; c < C; c += 32 * VW) {
            Pack<floatX> a = ld_pack(x + c);
            #pragma unroll
            for (int k = 0; k < VW; k++) sum += to_f(a.v[k]);
        }
    }
    float m = layernorm ? warp_sum(sum) / C : 0.0f;
    float ss = 0.0f;
    for (int c = lane * VW; c < C; c += 32 * VW) {
        Pack<floatX> a = ld_pack(x + c);
        #pragma unroll
        for (int k = 0; k < VW; k++) { float d = to_f(a.v[k]) - m; ss += d * d; }
    }
    float s = 1.0f / sqrtf(warp_sum(ss) / C + eps);
    floatX *y = out + (size_t)row * C;
    for (int c = lane * VW; c < C; c += 32 * VW) {
        Pack<floatX> a = ld_pack(x + c), wv = ld_pack(w + c), o;
        #pragma unroll
        for (int k = 0; k < VW; k++) {
            float v = (to_f(a.v[k]) - m) * s * to_f(wv.v[k]);
            if (b) v += to_f(b[c + k]);
            o.v[k] = from_f<floatX>(v);
        }
        st_pack(y + c, o);
    }
    if (lane == 0) { if (mean) mean[row] = m; rstd[row] = s; }
}

/* layernorm_forward / rmsnorm_forward again, from the mean/rstd the forward saved (--recompute 2):
   y = (x - mean) * rstd * w + b (mean NULL: 0; b NULL: none), the same arithmetic, so the same values as the
   forward wrote */
template <typename floatX>
__global__ void norm_forward_recompute_kernel(floatX *out, const floatX *inp, const float *mean, const float *rstd,
                                              const floatX *w, const floatX *b, int rows, int C) {
    constexpr int VW = Pack<floatX>::N;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VW;
    if (i >= (size_t)rows * C) return;
    int row = (int)(i / C), c = (int)(i % C);
    float m = mean ? mean[row] : 0.0f, s = rstd[row];
    Pack<floatX> a = ld_pack(inp + i), wv = ld_pack(w + c), o;
    #pragma unroll
    for (int k = 0; k < VW; k++) {
        float v = (to_f(a.v[k]) - m) * s * to_f(wv.v[k]);
        if (b) v += to_f(b[c + k]);
        o.v[k] = from_f<floatX>(v);
    }
    st_pack(out + i, o);
}

/* layernorm_backward / rmsnorm_backward for the input (+ residual_backward), one warp per row:
     dn = dy*w, n = (x-mean)*rstd
     layernorm: dx = rstd * (dn - mean(dn) - n*mean(dn*n));   rmsnorm: dx = rstd * (dn - n*mean(dn*n))
   Residual-stream form (dres != NULL): dres = (accumulate ? dres : 0) + dx in fp32 (residual_backward: the
   stream's gradient is the sum of what its branches send back), and dres_t = floatX(dres) for the next matmul;
   accumulate 0 starts the stream (the final norm). Otherwise dinp += dx in floatX, at the input's row addressing
   (heads, ld). The weight and bias gradients are the column sums below. */
template <typename floatX>
__global__ void residual_norm_backward_kernel(float *dres, floatX *dres_t, floatX *dinp, const floatX *dout,
                                              const floatX *inp, int heads, int ld, const floatX *w, const float *mean,
                                              const float *rstd, int rows, int C, int accumulate) {
    constexpr int VW = Pack<floatX>::N;
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t xoff = (size_t)(row / heads) * ld + (size_t)(row % heads) * C;
    const floatX *x = inp + xoff, *dy = dout + (size_t)row * C;
    float m = mean ? mean[row] : 0.0f, s = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane * VW; c < C; c += 32 * VW) {
        Pack<floatX> a = ld_pack(x + c), g = ld_pack(dy + c), wv = ld_pack(w + c);
        #pragma unroll
        for (int k = 0; k < VW; k++) {
            float dn = to_f(g.v[k]) * to_f(wv.v[k]);
            s1 += dn;
            s2 += dn * (to_f(a.v[k]) - m) * s;
        }
    }
    float dn_mean = mean ? warp_sum(s1) / C : 0.0f, dnn_mean = warp_sum(s2) / C;
    for (int c = lane * VW; c < C; c += 32 * VW) {
        Pack<floatX> a = ld_pack(x + c), g = ld_pack(dy + c), wv = ld_pack(w + c), o;
        float dx[VW];
        #pragma unroll
        for (int k = 0; k < VW; k++) {
            float nrm = (to_f(a.v[k]) - m) * s;
            dx[k] = s * (to_f(g.v[k]) * to_f(wv.v[k]) - dn_mean - nrm * dnn_mean);
        }
        if (dres) {
            float *r = dres + (size_t)row * C + c;
            #pragma unroll
            for (int k = 0; k < VW; k++) { float v = (accumulate ? r[k] : 0.0f) + dx[k]; r[k] = v; o.v[k] = from_f<floatX>(v); }
            st_pack(dres_t + (size_t)row * C + c, o);
        } else {
            Pack<floatX> d = ld_pack(dinp + xoff + c);
            #pragma unroll
            for (int k = 0; k < VW; k++) o.v[k] = from_f<floatX>(to_f(d.v[k]) + dx[k]);
            st_pack(dinp + xoff + c, o);
        }
    }
}

/* The weight and bias gradients of layernorm_backward / rmsnorm_backward, and the bias gradient of
   matmul_backward: column sums over rows, deterministic in two stages (no atomics):
     dw[c] += sum_r dy[r,c] * (x[r,c] - mean[r]) * rstd[r]   (when x; norm weights)
     db[c] += sum_r dy[r,c]                                   (when db; norm and matmul biases)
   Stage 1: block (chunk of 64 columns, row block rb) sums its rows in a fixed order into part[rb][c];
   stage 2 adds the row blocks in order. dy is [rows, C] with row stride lddy; x uses the (heads, ld) row addressing. */
#define COLSUM_COLS 64
#define COLSUM_WARPS 8
template <typename floatX>
__global__ void column_sums_stage1_kernel(float *part_w, float *part_b, const floatX *dy, int lddy, const floatX *x,
                                          int heads, int ld, const float *mean, const float *rstd, int rows, int C,
                                          int rows_per_block) {
    __shared__ float sw[COLSUM_WARPS][COLSUM_COLS], sb[COLSUM_WARPS][COLSUM_COLS];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int c0 = blockIdx.x * COLSUM_COLS + 2 * lane;
    int r0 = blockIdx.y * rows_per_block, r1 = min(rows, r0 + rows_per_block);
    float aw[2] = {0.0f, 0.0f}, ab[2] = {0.0f, 0.0f};
    for (int r = r0 + warp; r < r1; r += COLSUM_WARPS) {
        float m = (x && mean) ? mean[r] : 0.0f, s = x ? rstd[r] : 0.0f;
        const floatX *xr = x ? x + (size_t)(r / heads) * ld + (size_t)(r % heads) * C : NULL;
        #pragma unroll
        for (int k = 0; k < 2; k++) {
            int c = c0 + k;
            if (c < C) {
                float g = to_f(dy[(size_t)r * lddy + c]);
                ab[k] += g;
                if (x) aw[k] += g * (to_f(xr[c]) - m) * s;
            }
        }
    }
    #pragma unroll
    for (int k = 0; k < 2; k++) { sw[warp][2 * lane + k] = aw[k]; sb[warp][2 * lane + k] = ab[k]; }
    __syncthreads();
    if (threadIdx.x < COLSUM_COLS) {
        int c = blockIdx.x * COLSUM_COLS + threadIdx.x;
        float tw = 0.0f, tb = 0.0f;
        for (int w = 0; w < COLSUM_WARPS; w++) { tw += sw[w][threadIdx.x]; tb += sb[w][threadIdx.x]; }
        if (c < C) {
            if (part_w) part_w[(size_t)blockIdx.y * C + c] = tw;
            if (part_b) part_b[(size_t)blockIdx.y * C + c] = tb;
        }
    }
}

__global__ void column_sums_stage2_kernel(float *dw, float *db, const float *part_w, const float *part_b, int nblocks,
                                          int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float tw = 0.0f, tb = 0.0f;
    for (int i = 0; i < nblocks; i++) {
        if (dw) tw += part_w[(size_t)i * C + c];
        if (db) tb += part_b[(size_t)i * C + c];
    }
    if (dw) dw[c] += tw;
    if (db) db[c] += tb;
}

/* ------------------------------------------------------------------------------------------------ */
/* matmul: matmul_forward and matmul_backward are cuBLASLt calls (matmul_lt, made by gpu::matmul_forward and
   gpu::matmul_backward), with the bias, GELU and bias-gradient epilogues; here the plans they reuse.
   Our matrices are row-major (x [N, IC], w [OC, IC] as torch Linear, y [N, OC]); cuBLAS is
   column-major, where a row-major [R, C] matrix is a [C, R] one. So y^T = w x^T is  D[OC, N] = op(A) B with
   A = w (col-major [IC, OC], transposed), B = x (col-major [IC, N]). */

static cublasLtHandle_t g_lt;
static void *g_lt_ws;
static const size_t g_lt_ws_size = 32u << 20;   /* what cuBLASLt asks for on Hopper */

/* A plan: the descriptors, layouts and algorithm of one distinct matmul (shape, transposes, types, leading
   dimensions, epilogue, the pointers' alignments), built once with the heuristic and reused by every later call of
   the same kind (a step makes ~150 calls of a few dozen kinds). The bias and aux pointers change from call to call
   and are set on the plan's descriptor each time (cublasLtMatmul reads the descriptor when it is called). A kind
   for which the heuristic found nothing is kept too (found = 0), so it is not asked again. */
typedef struct {
    int m, n, k, lda, ldb, ldd, ta, tb, ab_type, d_type, epi, has_bias, has_aux, ldaux, al_a, al_b, al_d, al_bias, al_aux;
    int found;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
} LtPlan;
/* the key: the ints before `found` (no padding among them) */
#define LT_KEY_BYTES offsetof(LtPlan, found)
#define LT_PLANS 256
static LtPlan g_lt_plans[LT_PLANS];
static int g_lt_nplans = 0, g_lt_next = 0;   /* when full, plans are replaced round robin */

static int ptr_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 1 && (a % al)) al >>= 1;
    return al;
}

static void lt_plan_destroy(LtPlan *p) {
    cublasLtMatrixLayoutDestroy(p->la); cublasLtMatrixLayoutDestroy(p->lb); cublasLtMatrixLayoutDestroy(p->ld);
    cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof(*p));
}

/* every plan freed (at exit, or to start again with a fresh table) */
static void matmul_lt_free_plans(void) {
    for (int i = 0; i < g_lt_nplans; i++) lt_plan_destroy(&g_lt_plans[i]);
    g_lt_nplans = 0; g_lt_next = 0;
}

/* the plan of this kind of matmul: found in the table, or built (descriptors, layouts, heuristic) into it */
static LtPlan *lt_plan(const LtPlan *key, const void *bias, void *aux) {
    for (int i = 0; i < g_lt_nplans; i++)
        if (!memcmp(&g_lt_plans[i], key, LT_KEY_BYTES)) return &g_lt_plans[i];
    int slot = g_lt_nplans < LT_PLANS ? g_lt_nplans++ : g_lt_next++ % LT_PLANS;
    LtPlan *p = &g_lt_plans[slot];
    if (p->op) lt_plan_destroy(p);
    *p = *key;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)p->epi;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    /* the heuristic reads the pointers (for their alignment): this call's, set again on every later call */
    if (bias) CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    if (aux) {
        int64_t ld64 = p->ldaux;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld64, sizeof(ld64)));
    }
    int m = p->m, n = p->n, k = p->k;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, (cudaDataType)p->ab_type, p->ta ? k : m, p->ta ? m : k, p->lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, (cudaDataType)p->ab_type, p->tb ? n : k, p->tb ? k : n, p->ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->ld, (cudaDataType)p->d_type, m, n, p->ldd));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = g_lt_ws_size;
    uint32_t a32 = p->al_a, b32 = p->al_b, d32 = p->al_d;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a32, sizeof(a32)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b32, sizeof(b32)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &d32, sizeof(d32)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d32, sizeof(d32)));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->la, p->lb, p->ld, p->ld, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p->found = st == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p->found) p->algo = res.algo;
    return p;
}

/* D[m, n] (col-major, ld ldd) = alpha op(A) op(B) + beta D, with an optional epilogue:
   bias (length m), GELU with its input kept in aux, D times GELU'(aux), or a bias gradient written to bias
   (BGRADA: length m, BGRADB: length n). Returns 0 without running when cuBLASLt has no algorithm for it and
   may_fail; otherwise stops with an error then. */
static int matmul_lt(void *D, cudaDataType d_type, const void *A, const void *B, cudaDataType ab_type, const void *bias,
                     int m, int n, int k, int lda, int ldb, int ldd, int ta, int tb, float beta,
                     cublasLtEpilogue_t epi, void *aux, int ldaux, cudaStream_t stream, int may_fail = 0) {
    LtPlan key;
    memset(&key, 0, sizeof(key));
    key.m = m; key.n = n; key.k = k; key.lda = lda; key.ldb = ldb; key.ldd = ldd; key.ta = ta; key.tb = tb;
    key.ab_type = (int)ab_type; key.d_type = (int)d_type; key.epi = (int)epi; key.has_bias = bias != NULL;
    key.has_aux = aux != NULL; key.ldaux = aux ? ldaux : 0;
    key.al_a = ptr_alignment(A); key.al_b = ptr_alignment(B); key.al_d = ptr_alignment(D);
    key.al_bias = bias ? ptr_alignment(bias) : 0; key.al_aux = aux ? ptr_alignment(aux) : 0;
    LtPlan *p = lt_plan(&key, bias, aux);
    if (!p->found) {
        if (may_fail) return 0;
        die("cuBLASLt has no algorithm for m=%d n=%d k=%d (transa %d transb %d, epilogue %d, alignments %d/%d/%d)",
            m, n, k, ta, tb, (int)epi, key.al_a, key.al_b, key.al_d);
    }
    if (bias) CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    if (aux) CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(g_lt, p->op, &alpha, A, p->la, B, p->lb, &beta, D, p->ld, D, p->ld, &p->algo, g_lt_ws,
                                g_lt_ws_size, stream));
    return 1;
}

template <typename floatX> static cudaDataType cuda_type();
template <> cudaDataType cuda_type<float>() { return CUDA_R_32F; }
template <> cudaDataType cuda_type<bf16>() { return CUDA_R_16BF; }

/* ------------------------------------------------------------------------------------------------ */
/* rope, attention. The attention kernels take q and k before RoPE and rotate them as they read them (rope_forward
   fused in), except the tensor-core ones, which read a copy rotated once per call by rope_forward_kernel; all the
   backward kernels rotate dq and dk back as they store them (rope_backward fused in). Their arguments: */

template <typename floatX>
struct AttnArgs {
    const floatX *q, *k, *v;     /* forward inputs (q, k before RoPE) */
    int ldq, ldk, ldv;
    floatX *out; int ldo;        /* forward output */
    float *lse;                  /* [B, NH, T] */
    const floatX *dout; int lddo;     /* backward */
    floatX *dq, *dk, *dv; int lddq, lddk, lddv;   /* the backward adds (+=) into them */
    float *delta;                /* [B, NH, T] scratch: D = dout . out */
    const float *cos, *sin;      /* [T, HD/2] or NULL (no RoPE) */
    const int *doc_start;        /* [B*T] or NULL: row t of batch b sees keys doc_start[b*T+t] <= s <= t (packed
                                    documents; doc_start[b*T+t] <= t) */
    const int *pos;              /* [B*T] or NULL (= t): the RoPE position of row t of q and k, e.g. t - its doc start */
    int B, T, NH, NKV, HD;
};

/* the RoPE table rows of row t of batch b (NULL without RoPE) */
template <typename floatX>
__device__ __forceinline__ const float *rope_row(const AttnArgs<floatX> &a, const float *tab, int b, int t) {
    if (!tab) return NULL;
    return tab + (size_t)(a.pos ? a.pos[(size_t)b * a.T + t] : t) * (a.HD / 2);
}

/* rope_forward (HF rotate-half) of element d of row x: with i < HD/2 and the angles of the row's position,
     out[i] = x[i] cos[i] - x[i+HD/2] sin[i],   out[i+HD/2] = x[i+HD/2] cos[i] + x[i] sin[i]
   cs/sn point at the table row of that position, or are NULL (no RoPE: x[d]) */
template <typename floatX>
__device__ __forceinline__ float rope_load(const floatX *x, int d, int HD, const float *cs, const float *sn) {
    if (!cs) return to_f(x[d]);
    int half = HD / 2;
    if (d < half) return to_f(x[d]) * cs[d] - to_f(x[d + half]) * sn[d];
    int i = d - half;
    return to_f(x[d]) * cs[i] + to_f(x[i]) * sn[i];
}
/* rope_backward of element d: the gradient w.r.t. the unrotated row from the gradient g w.r.t. the rotated one,
     dx[i] = g[i] cos[i] + g[i+HD/2] sin[i],   dx[i+HD/2] = g[i+HD/2] cos[i] - g[i] sin[i]
   (returned: the callers add it into their gradient) */
__device__ __forceinline__ float rope_back(const float *g, int d, int HD, const float *cs, const float *sn) {
    if (!cs) return g[d];
    int half = HD / 2;
    if (d < half) return g[d] * cs[d] + g[d + half] * sn[d];
    int i = d - half;
    return g[d] * cs[i] - g[i] * sn[i];
}

/* rope_forward on whole rows, once per call for the tensor-core kernels: dst [B*T, heads*HD] (rows contiguous) =
   src rows (stride ld) rotated at their position; a plain copy without cos/sin. One thread per 8 rotation pairs.
   The tiles of the kernels are then straight copies of these rows. The position of row b*T + t is a.pos[b*T + t]
   or t. */
__global__ void rope_forward_kernel(bf16 *dst, const bf16 *src, int ld, int heads, AttnArgs<bf16> a) {
    int HD = a.HD, half = HD / 2, H8 = half / 8;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)a.B * a.T * heads * H8) return;
    int c = (int)(i % H8) * 8, h = (int)(i / H8 % heads);
    size_t row = i / H8 / heads;
    const bf16 *x = src + row * ld + (size_t)h * HD;
    bf16 *y = dst + row * heads * HD + (size_t)h * HD;
    Pack<bf16> x1 = ld_pack(x + c), x2 = ld_pack(x + c + half);
    if (a.cos) {
        int pos = a.pos ? a.pos[row] : (int)(row % a.T);
        const float *cr = a.cos + (size_t)pos * half + c, *sr = a.sin + (size_t)pos * half + c;
        #pragma unroll
        for (int k = 0; k < 8; k++) {
            float a1 = to_f(x1.v[k]), a2 = to_f(x2.v[k]);
            x1.v[k] = from_f<bf16>(a1 * cr[k] - a2 * sr[k]);
            x2.v[k] = from_f<bf16>(a2 * cr[k] + a1 * sr[k]);
        }
    }
    st_pack(y + c, x1);
    st_pack(y + c + half, x2);
}

/* attention (causal, grouped-query heads: query head h reads key/value head h / (NH/NKV)). q, k, v are rows of a
   wider buffer (row strides ldq, ldk, ldv), e.g. the fused qkv matmul output [N, (NH + 2 NKV) HD]. Forward writes
   out [N, NH*HD] (row stride ldo) and the log-sum-exp of each query row lse [B, NH, T] (fp32), which is all the
   backward needs to rebuild the probabilities. With q' = rope(q), k' = rope(k):
     a[t,s] = q'[t].k'[s] / sqrt(HD) (lo(t) <= s <= t);  p = softmax_s(a);  out[t] = sum_s p[t,s] v[s]
     backward: D[t] = dout[t].out[t];  dp[t,s] = dout[t].v[s];  da = p (dp - D[t])
               dq'[t] = sum_s da k'[s] / sqrt(HD);  dk'[s] = sum_t da q'[t] / sqrt(HD);  dv[s] += sum_t p dout[t]
               dq += rope^T(dq');  dk += rope^T(dk')
   The backward adds into dq, dk, dv as the header's attention_backward does: each row of them belongs to one warp
   (plain) or one block (tensor cores), which reads it, adds its sum and writes it back once, at the end. */

/* lo(t): the first key row t of batch b may see (its document's start with doc_start, else 0) */
template <typename floatX>
__device__ __forceinline__ int attn_lo(const AttnArgs<floatX> &a, int b, int t) {
    return a.doc_start ? a.doc_start[(size_t)b * a.T + t] : 0;
}

/* --- the plain kernels: any HD <= 256, float or bf16; one warp per output row, fp32 arithmetic. They are the
   reference for the tensor-core kernels below and the path for --dtype fp32. */
#define ATT_MAXHD 256
#define ATT_WARPS 4

/* rope_forward + attention_forward: one warp per query row (b, h, t); q and k rotated as they are read */
template <typename floatX>
__global__ void rope_attention_forward_plain_kernel(AttnArgs<floatX> a) {
    __shared__ float qs_all[ATT_WARPS][ATT_MAXHD];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * ATT_WARPS + warp;
    if (row >= a.B * a.NH * a.T) return;
    int T = a.T, HD = a.HD;
    int t = row % T, h = (row / T) % a.NH, b = row / (T * a.NH), kh = h / (a.NH / a.NKV);
    float scale = 1.0f / sqrtf((float)HD);
    float *qs = qs_all[warp];
    const floatX *qrow = a.q + ((size_t)b * T + t) * a.ldq + (size_t)h * HD;
    const float *cq = rope_row(a, a.cos, b, t), *sq = rope_row(a, a.sin, b, t);
    int lo = attn_lo(a, b, t);
    for (int d = lane; d < HD; d += 32) qs[d] = rope_load(qrow, d, HD, cq, sq);
    __syncwarp();
    /* pass 1: max and sum of exp over the keys lo <= s <= t (lane-strided), then combined over the warp */
    float m = -INFINITY, l = 0.0f;
    for (int s = lo + lane; s <= t; s += 32) {
        const floatX *krow = a.k + ((size_t)b * T + s) * a.ldk + (size_t)kh * HD;
        const float *ck = rope_row(a, a.cos, b, s), *sk = rope_row(a, a.sin, b, s);
        float x = 0.0f;
        for (int d = 0; d < HD; d++) x += qs[d] * rope_load(krow, d, HD, ck, sk);
        x *= scale;
        if (x > m) { l = l * expf(m - x) + 1.0f; m = x; } else l += expf(x - m);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, m, o), ol = __shfl_xor_sync(0xffffffffu, l, o);
        float M = fmaxf(m, om);
        l = (M == -INFINITY) ? 0.0f : l * expf(m - M) + ol * expf(om - M);
        m = M;
    }
    float lse = m + logf(l);
    /* pass 2: out = sum_s p v[s]; lane owns dims lane + 32 i */
    float acc[ATT_MAXHD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) acc[i] = 0.0f;
    for (int s0 = lo; s0 <= t; s0 += 32) {
        int s = s0 + lane;
        float p = 0.0f;
        if (s <= t) {
            const floatX *krow = a.k + ((size_t)b * T + s) * a.ldk + (size_t)kh * HD;
            const float *ck = rope_row(a, a.cos, b, s), *sk = rope_row(a, a.sin, b, s);
            float x = 0.0f;
            for (int d = 0; d < HD; d++) x += qs[d] * rope_load(krow, d, HD, ck, sk);
            p = expf(x * scale - lse);
        }
        int n = min(32, t - s0 + 1);
        for (int j = 0; j < n; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            const floatX *vrow = a.v + ((size_t)b * T + s0 + j) * a.ldv + (size_t)kh * HD;
            #pragma unroll
            for (int i = 0; i < ATT_MAXHD / 32; i++) {
                int d = lane + 32 * i;
                if (d < HD) acc[i] += pj * to_f(vrow[d]);
            }
        }
    }
    floatX *orow = a.out + ((size_t)b * T + t) * a.ldo + (size_t)h * HD;
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) {
        int d = lane + 32 * i;
        if (d < HD) orow[d] = from_f<floatX>(acc[i]);
    }
    if (lane == 0) a.lse[row] = lse;
}

/* attention_backward's first step, for the plain and the tensor-core kernels: D[b,h,t] = sum_d dout[t,d] out[t,d];
   one warp per row */
template <typename floatX>
__global__ void attention_backward_delta_kernel(AttnArgs<floatX> a) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= a.B * a.NH * a.T) return;
    int t = row % a.T, h = (row / a.T) % a.NH, b = row / (a.T * a.NH);
    const floatX *o = a.out + ((size_t)b * a.T + t) * a.ldo + (size_t)h * a.HD;
    const floatX *g = a.dout + ((size_t)b * a.T + t) * a.lddo + (size_t)h * a.HD;
    float s = 0.0f;
    for (int d = lane; d < a.HD; d += 32) s += to_f(o[d]) * to_f(g[d]);
    s = warp_sum(s);
    if (lane == 0) a.delta[row] = s;
}

/* attention_backward + rope_backward for dq: one warp per query row (b, h, t); dq[t] += rope^T(dq'[t]) */
template <typename floatX>
__global__ void attention_rope_backward_dq_plain_kernel(AttnArgs<floatX> a) {
    __shared__ float qs_all[ATT_WARPS][ATT_MAXHD], gs_all[ATT_WARPS][ATT_MAXHD];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * ATT_WARPS + warp;
    if (row >= a.B * a.NH * a.T) return;
    int T = a.T, HD = a.HD;
    int t = row % T, h = (row / T) % a.NH, b = row / (T * a.NH), kh = h / (a.NH / a.NKV);
    float scale = 1.0f / sqrtf((float)HD);
    float *qs = qs_all[warp], *gs = gs_all[warp];
    const floatX *qrow = a.q + ((size_t)b * T + t) * a.ldq + (size_t)h * HD;
    const floatX *grow = a.dout + ((size_t)b * T + t) * a.lddo + (size_t)h * HD;
    const float *cq = rope_row(a, a.cos, b, t), *sq = rope_row(a, a.sin, b, t);
    int lo = attn_lo(a, b, t);
    for (int d = lane; d < HD; d += 32) { qs[d] = rope_load(qrow, d, HD, cq, sq); gs[d] = to_f(grow[d]); }
    __syncwarp();
    float lse = a.lse[row], D = a.delta[row];
    float acc[ATT_MAXHD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) acc[i] = 0.0f;
    for (int s0 = lo; s0 <= t; s0 += 32) {
        int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            const floatX *krow = a.k + ((size_t)b * T + s) * a.ldk + (size_t)kh * HD;
            const floatX *vrow = a.v + ((size_t)b * T + s) * a.ldv + (size_t)kh * HD;
            const float *ck = rope_row(a, a.cos, b, s), *sk = rope_row(a, a.sin, b, s);
            float x = 0.0f, dp = 0.0f;
            for (int d = 0; d < HD; d++) { x += qs[d] * rope_load(krow, d, HD, ck, sk); dp += gs[d] * to_f(vrow[d]); }
            float p = expf(x * scale - lse);
            ds = p * (dp - D);
        }
        int n = min(32, t - s0 + 1);
        for (int j = 0; j < n; j++) {
            float dsj = __shfl_sync(0xffffffffu, ds, j);
            int sj = s0 + j;
            const floatX *krow = a.k + ((size_t)b * T + sj) * a.ldk + (size_t)kh * HD;
            const float *ck = rope_row(a, a.cos, b, sj), *sk = rope_row(a, a.sin, b, sj);
            #pragma unroll
            for (int i = 0; i < ATT_MAXHD / 32; i++) {
                int d = lane + 32 * i;
                if (d < HD) acc[i] += dsj * rope_load(krow, d, HD, ck, sk);
            }
        }
    }
    __syncwarp();
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) { int d = lane + 32 * i; if (d < HD) gs[d] = acc[i] * scale; }
    __syncwarp();
    floatX *dqrow = a.dq + ((size_t)b * T + t) * a.lddq + (size_t)h * HD;
    for (int d = lane; d < HD; d += 32) dqrow[d] = from_f<floatX>(to_f(dqrow[d]) + rope_back(gs, d, HD, cq, sq));
}

/* attention_backward + rope_backward for dk, dv: one warp per key row (b, kv head, s), summing over the query heads
   of its group; dk[s] += rope^T(dk'[s]), dv[s] += its sum */
template <typename floatX>
__global__ void attention_rope_backward_dkdv_plain_kernel(AttnArgs<floatX> a) {
    __shared__ float ks_all[ATT_WARPS][ATT_MAXHD], vs_all[ATT_WARPS][ATT_MAXHD];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row = blockIdx.x * ATT_WARPS + warp;
    if (row >= a.B * a.NKV * a.T) return;
    int T = a.T, HD = a.HD, G = a.NH / a.NKV;
    int s = row % T, kh = (row / T) % a.NKV, b = row / (T * a.NKV);
    float scale = 1.0f / sqrtf((float)HD);
    float *ks = ks_all[warp], *vs = vs_all[warp];
    const floatX *krow = a.k + ((size_t)b * T + s) * a.ldk + (size_t)kh * HD;
    const floatX *vrow = a.v + ((size_t)b * T + s) * a.ldv + (size_t)kh * HD;
    const float *ck = rope_row(a, a.cos, b, s), *sk = rope_row(a, a.sin, b, s);
    for (int d = lane; d < HD; d += 32) { ks[d] = rope_load(krow, d, HD, ck, sk); vs[d] = to_f(vrow[d]); }
    __syncwarp();
    float dk[ATT_MAXHD / 32], dv[ATT_MAXHD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) { dk[i] = 0.0f; dv[i] = 0.0f; }
    for (int h = kh * G; h < (kh + 1) * G; h++) {
        for (int t0 = s; t0 < T; t0 += 32) {
            int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t < T && attn_lo(a, b, t) <= s) {   /* query t sees key s */
                const floatX *qrow = a.q + ((size_t)b * T + t) * a.ldq + (size_t)h * HD;
                const floatX *grow = a.dout + ((size_t)b * T + t) * a.lddo + (size_t)h * HD;
                const float *cq = rope_row(a, a.cos, b, t), *sq = rope_row(a, a.sin, b, t);
                float x = 0.0f, dp = 0.0f;
                for (int d = 0; d < HD; d++) { x += rope_load(qrow, d, HD, cq, sq) * ks[d]; dp += to_f(grow[d]) * vs[d]; }
                size_t r = ((size_t)b * a.NH + h) * T + t;
                p = expf(x * scale - a.lse[r]);
                ds = p * (dp - a.delta[r]);
            }
            int n = min(32, T - t0);
            for (int j = 0; j < n; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j), dsj = __shfl_sync(0xffffffffu, ds, j);
                int tj = t0 + j;
                const floatX *qrow = a.q + ((size_t)b * T + tj) * a.ldq + (size_t)h * HD;
                const floatX *grow = a.dout + ((size_t)b * T + tj) * a.lddo + (size_t)h * HD;
                const float *cq = rope_row(a, a.cos, b, tj), *sq = rope_row(a, a.sin, b, tj);
                #pragma unroll
                for (int i = 0; i < ATT_MAXHD / 32; i++) {
                    int d = lane + 32 * i;
                    if (d < HD) { dv[i] += pj * to_f(grow[d]); dk[i] += dsj * rope_load(qrow, d, HD, cq, sq); }
                }
            }
        }
    }
    __syncwarp();
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) { int d = lane + 32 * i; if (d < HD) ks[d] = dk[i] * scale; }
    __syncwarp();
    floatX *dkrow = a.dk + ((size_t)b * T + s) * a.lddk + (size_t)kh * HD;
    floatX *dvrow = a.dv + ((size_t)b * T + s) * a.lddv + (size_t)kh * HD;
    for (int d = lane; d < HD; d += 32) dkrow[d] = from_f<floatX>(to_f(dkrow[d]) + rope_back(ks, d, HD, ck, sk));
    #pragma unroll
    for (int i = 0; i < ATT_MAXHD / 32; i++) {
        int d = lane + 32 * i;
        if (d < HD) dvrow[d] = from_f<floatX>(to_f(dvrow[d]) + dv[i]);
    }
}

/* --- the tensor-core kernels: bf16, HD in {32, 64, 128}, flash-style (the T x T probabilities are never
   stored). Each warp owns 16 rows of a tile and multiplies with mma.sync m16n8k16 (bf16 in, fp32 accumulate).
   Fragment layout (PTX ISA, m16n8k16 .bf16), with g = lane / 4 and q = lane % 4:
     A 16x16 (row-major): a[0] = A[g][2q..2q+1], a[1] = A[g+8][2q..], a[2] = A[g][2q+8..], a[3] = A[g+8][2q+8..]
     B 16x8  (k x n):     b[0] = B[2q..2q+1][g],  b[1] = B[2q+8..2q+9][g]
     C 16x8  (fp32):      c[0..1] = C[g][2q..2q+1], c[2..3] = C[g+8][2q..2q+1]
   Two C tiles side by side (16x16) are exactly the A fragment of the next product (P of QK^T feeds PV), so the
   probabilities go from one mma to the next in registers. Tiles sit in shared memory with rows padded to
   HD+8 elements, which spreads a fragment's 32 loads over distinct banks. */

#define TC_PAD 8
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
/* ldmatrix.x4 (.trans): four 8x8 bf16 matrices from shared memory in one instruction; lane l gives the 16-byte
   address of row l % 8 of matrix l / 8 and receives in r[i] the elements (row l / 4, columns 2(l % 4), +1) of
   matrix i, or with .trans of its transpose (rows 2(l % 4), +1, column l / 4) */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16 *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const bf16 *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(row)));
}
/* A fragment of rows r0.. and columns k0.. of a row-major smem tile with pitch P: matrices (r0, k0), (r0+8, k0),
   (r0, k0+8), (r0+8, k0+8) are a[0..3] */
__device__ __forceinline__ void frag_a(uint32_t a[4], const bf16 *M, int P, int r0, int k0, int lane) {
    ldmatrix_x4(a, M + (r0 + (lane & 7) + (lane >> 3 & 1) * 8) * P + k0 + (lane >> 4) * 8);
}
/* B fragments of two adjacent n tiles, b[0..1] for n0.. and b[2..3] for n0+8.., where B[k][n] = M[n0+n][k0+k]
   (M row-major, rows indexed by n, e.g. K in Q K^T): matrices (n0, k0), (n0, k0+8), (n0+8, k0), (n0+8, k0+8) */
__device__ __forceinline__ void frag_b_rows2(uint32_t b[4], const bf16 *M, int P, int n0, int k0, int lane) {
    ldmatrix_x4(b, M + (n0 + (lane & 7) + (lane >> 4) * 8) * P + k0 + (lane >> 3 & 1) * 8);
}
/* the same for B[k][n] = M[k0+k][n0+n] (M row-major, rows indexed by k, e.g. V in P V): the transposed matrices
   (k0, n0), (k0+8, n0), (k0, n0+8), (k0+8, n0+8) */
__device__ __forceinline__ void frag_b_cols2(uint32_t b[4], const bf16 *M, int P, int k0, int n0, int lane) {
    ldmatrix_x4_trans(b, M + (k0 + (lane & 7) + (lane >> 3 & 1) * 8) * P + n0 + (lane >> 4) * 8);
}
/* the A fragment of a 16x16 block made of C tiles c0 (columns 0..7) and c1 (columns 8..15) */
__device__ __forceinline__ void frag_a_from_c(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

/* cp.async.cg: 16 bytes from global to shared memory without passing through registers (cached in L2 only);
   commit_group closes this thread's batch of copies; wait_all returns when all of them have landed (in this
   thread's view: other threads see them after a __syncthreads) */
__device__ __forceinline__ void cp_async_16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}
__device__ __forceinline__ int ceil_div_dev(int a, int b) { return (a + b - 1) / b; }

/* with doc_start: tile_lo[b, i] = the smallest first key of query rows [64 i, 64 i + 64) of batch b, so that the
   kernels skip the key tiles before it (forward, dq) and the query tiles that see none of a key tile (dk/dv) */
__global__ void attention_tile_lo_kernel(int *tile_lo, AttnArgs<bf16> a) {
    int nt = (a.T + 63) / 64, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= a.B * nt) return;
    int b = i / nt, t0 = (i % nt) * 64, lo = t0;
    for (int t = t0; t < t0 + 64 && t < a.T; t++) lo = min(lo, attn_lo(a, b, t));
    tile_lo[i] = lo;
}

/* starts copying rows [pos0, pos0+rows) of one head into a smem tile (pitch HD+8) with cp.async (zeros past T,
   stored at once); the caller commits and waits. base points at position 0 of the (batch, head), row p at base + p*ld. */
template <int HD>
__device__ __forceinline__ void load_tile_async(bf16 *dst, const bf16 *base, int ld, int pos0, int rows, int T) {
    constexpr int P = HD + TC_PAD, H8 = HD / 8;
    for (int i = threadIdx.x; i < rows * H8; i += blockDim.x) {
        int r = i / H8, c = (i % H8) * 8, pos = pos0 + r;
        if (pos < T) cp_async_16(dst + r * P + c, base + (size_t)pos * ld + c);
        else {
            Pack<bf16> z;
            #pragma unroll
            for (int k = 0; k < 8; k++) z.v[k] = from_f<bf16>(0.0f);
            st_pack(dst + r * P + c, z);
        }
    }
}

/* one stage of the dk/dv kernel: the Q and dO tiles of query head h, rows t0.., at st and st + BQ*P (cp.async),
   and their lse * log2(e), D and first key (attn_lo) at fst, fst + BQ and ilo (plain loads) */
template <int HD, int BQ>
__device__ __forceinline__ void dkdv_stage(bf16 *st, float *fst, int *ilo, const AttnArgs<bf16> &a, int b, int h, int t0) {
    int T = a.T;
    load_tile_async<HD>(st, a.q + (size_t)b * T * a.ldq + (size_t)h * HD, a.ldq, t0, BQ, T);
    load_tile_async<HD>(st + BQ * (HD + TC_PAD), a.dout + (size_t)b * T * a.lddo + (size_t)h * HD, a.lddo, t0, BQ, T);
    if (threadIdx.x < BQ) {
        int t = t0 + threadIdx.x;
        size_t r = ((size_t)b * a.NH + h) * T + t;
        fst[threadIdx.x] = t < T ? a.lse[r] * LOG2E : INFINITY;
        fst[BQ + threadIdx.x] = t < T ? a.delta[r] : 0.0f;
        ilo[threadIdx.x] = t < T ? attn_lo(a, b, t) : 0;
    }
}

/* Stores a warp's 16 x HD fp32 accumulator (rows row0 + g, row0 + g + 8) as bf16, scaled, rotated back by RoPE
   (rope_backward; element d and d + HD/2 sit in the same thread: tiles n and n + HD/16) when cs != NULL, row p at
   position rp[p] (rp: the batch's a.pos row, or NULL for p): row = (add ? row : 0) + that, rounded once. */
template <int HD>
__device__ __forceinline__ void store_rows(bf16 *base, int ld, int row0, int T, float acc[HD / 8][4], float scale,
                                           const float *cs, const float *sn, const int *rp, int g, int q, int add) {
    constexpr int half = HD / 2;
    #pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        int pos = row0 + g + 8 * hr;
        if (pos >= T) continue;
        bf16 *dst = base + (size_t)pos * ld;
        #pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            #pragma unroll
            for (int e = 0; e < 2; e++) acc[n][2 * hr + e] *= scale;
        }
        if (cs) {
            int rpos = rp ? rp[pos] : pos;
            const float *cr = cs + (size_t)rpos * half, *sr = sn + (size_t)rpos * half;
            #pragma unroll
            for (int n = 0; n < HD / 16; n++) {
                #pragma unroll
                for (int e = 0; e < 2; e++) {
                    int d = n * 8 + 2 * q + e;
                    float g1 = acc[n][2 * hr + e], g2 = acc[n + HD / 16][2 * hr + e];
                    acc[n][2 * hr + e] = g1 * cr[d] + g2 * sr[d];
                    acc[n + HD / 16][2 * hr + e] = g2 * cr[d] - g1 * sr[d];
                }
            }
        }
        #pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            bf16 *p = dst + n * 8 + 2 * q;
            float v0 = acc[n][2 * hr], v1 = acc[n][2 * hr + 1];
            if (add) { v0 += to_f(p[0]); v1 += to_f(p[1]); }
            *reinterpret_cast<uint32_t *>(p) = pack_bf16x2(v0, v1);
        }
    }
}

/* Two products of one warp's 16 rows at once, over the head dim (both backward kernels recompute their score
   tiles this way): c1 = A1[r0..r0+16) B1^T and c2 = A2[r0..r0+16) B2^T, with B1, B2 tiles of NJ * 8 rows. */
template <int HD, int NJ>
__device__ __forceinline__ void mma_tile_pair(float (&c1)[NJ][4], float (&c2)[NJ][4], const bf16 *A1, const bf16 *B1,
                                              const bf16 *A2, const bf16 *B2, int P, int r0, int lane) {
    #pragma unroll
    for (int j = 0; j < NJ; j++)
        #pragma unroll
        for (int e = 0; e < 4; e++) { c1[j][e] = 0.0f; c2[j][e] = 0.0f; }
    #pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
        uint32_t a1[4], a2[4];
        frag_a(a1, A1, P, r0, kk * 16, lane);
        frag_a(a2, A2, P, r0, kk * 16, lane);
        #pragma unroll
        for (int j = 0; j < NJ; j += 2) {
            uint32_t b1[4], b2[4];
            frag_b_rows2(b1, B1, P, j * 8, kk * 16, lane);
            frag_b_rows2(b2, B2, P, j * 8, kk * 16, lane);
            mma_16816(c1[j], a1, b1);
            mma_16816(c1[j + 1], a1, b1 + 2);
            mma_16816(c2[j], a2, b2);
            mma_16816(c2[j + 1], a2, b2 + 2);
        }
    }
}


/* blocks of 128 threads per SM that each tensor-core kernel (0 forward, 1 dq, 2 dk/dv) is compiled for: registers
   capped at 64K / (128 blocks). Chosen as the most that the shared memory allows on sm_90 (227 KB for forward 4
   tiles, dq 6, dk/dv 6 of 64 x (HD + 8) bf16) and that ptxas fits without spilling (checked with -Xptxas -v):
   at head dim 128, 12 warps per SM forward, 8 backward; at 64, 12. */
__host__ __device__ constexpr int tc_min_blocks(int HD, int kernel) {
    return kernel == 0 ? (HD == 32 ? 4 : 3) : HD == 128 ? 2 : 3;
}

/* attention_forward on the rotated q, k: block = 4 warps = 64 query rows of one (b, h); key tiles of 64 up to the
   diagonal.
   Pipeline: the K and V tiles sit in two stages; while the warps work on tile j (S = Q K^T, online softmax,
   O += P V) the cp.asyncs of tile j+1 fill the other stage, and one __syncthreads per tile separates the two.
   The Q tile is staged once (in stage 1's K slot, free until tile 1) and then held as A fragments in registers.
   With doc_start, the key tiles wholly before the query tile's first start (tile_lo) are not visited. */
template <int HD>
__global__ void __launch_bounds__(128, tc_min_blocks(HD, 0))
attention_forward_tc_kernel(AttnArgs<bf16> a, const int *tile_lo) {
    constexpr int P = HD + TC_PAD, BR = 64, BC = 64, TILE = 64 * P;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *st = reinterpret_cast<bf16 *>(smem_raw);   /* stage i: K tile at st + 2i TILE, V tile after it */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, T = a.T;
    int kh = h / (a.NH / a.NKV), q0 = qt * BR;
    const bf16 *qbase = a.q + (size_t)b * T * a.ldq + (size_t)h * HD;
    const bf16 *kbase = a.k + (size_t)b * T * a.ldk + (size_t)kh * HD;
    const bf16 *vbase = a.v + (size_t)b * T * a.ldv + (size_t)kh * HD;
    int kt0 = tile_lo ? tile_lo[b * gridDim.x + qt] / BC : 0, kt1 = qt;   /* key tiles before the documents' starts skipped */
    load_tile_async<HD>(st + 2 * TILE, qbase, a.ldq, q0, BR, T);
    load_tile_async<HD>(st, kbase, a.ldk, kt0 * BC, BC, T);
    load_tile_async<HD>(st + TILE, vbase, a.ldv, kt0 * BC, BC, T);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    uint32_t qf[HD / 16][4];
    #pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) frag_a(qf[kk], st + 2 * TILE, P, warp * 16, kk * 16, lane);
    float o[HD / 8][4];
    #pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float sl2 = LOG2E / sqrtf((float)HD);
    int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    int lo[2] = {row[0] < T ? attn_lo(a, b, row[0]) : 0, row[1] < T ? attn_lo(a, b, row[1]) : 0};
    for (int kt = kt0; kt <= kt1; kt++) {
        int k0 = kt * BC, stage = (kt - kt0) & 1;
        cp_async_wait_all();   /* this thread's copies of tile kt have landed */
        __syncthreads();       /* everyone's have; everyone is done with the other stage (tile kt-1, or Q) */
        if (kt < kt1) {
            bf16 *nx = st + 2 * (stage ^ 1) * TILE;
            load_tile_async<HD>(nx, kbase, a.ldk, k0 + BC, BC, T);
            load_tile_async<HD>(nx + TILE, vbase, a.ldv, k0 + BC, BC, T);
            cp_async_commit();
        }
        const bf16 *Ks = st + 2 * stage * TILE, *Vs = Ks + TILE;
        float s[BC / 8][4];
        #pragma unroll
        for (int j = 0; j < BC / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            #pragma unroll
            for (int j = 0; j < BC / 8; j += 2) {
                uint32_t bf[4];
                frag_b_rows2(bf, Ks, P, j * 8, kk * 16, lane);
                mma_16816(s[j], qf[kk], bf);
                mma_16816(s[j + 1], qf[kk], bf + 2);
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
        #pragma unroll
        for (int j = 0; j < BC / 8; j++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int col = k0 + j * 8 + 2 * q + (e & 1), hr = e >> 1;
                float x = s[j][e] * sl2;
                if (col > row[hr] || col < lo[hr] || col >= T) x = -INFINITY;
                s[j][e] = x;
                mx[hr] = fmaxf(mx[hr], x);
            }
        }
        float corr[2], ref[2];
        #pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 1));
            mx[hr] = fmaxf(mx[hr], __shfl_xor_sync(0xffffffffu, mx[hr], 2));
            float mn = fmaxf(m[hr], mx[hr]);
            ref[hr] = mn == -INFINITY ? 0.0f : mn;
            corr[hr] = exp2f(m[hr] - ref[hr]);
            m[hr] = mn;
        }
        float rs[2] = {0.0f, 0.0f};
        #pragma unroll
        for (int j = 0; j < BC / 8; j++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) { float p = exp2f(s[j][e] - ref[e >> 1]); s[j][e] = p; rs[e >> 1] += p; }
        }
        #pragma unroll
        for (int hr = 0; hr < 2; hr++) l[hr] = l[hr] * corr[hr] + rs[hr];
        #pragma unroll
        for (int n = 0; n < HD / 8; n++) { o[n][0] *= corr[0]; o[n][1] *= corr[0]; o[n][2] *= corr[1]; o[n][3] *= corr[1]; }
        #pragma unroll
        for (int kc = 0; kc < BC / 16; kc++) {
            uint32_t pa[4];
            frag_a_from_c(pa, s[2 * kc], s[2 * kc + 1]);
            #pragma unroll
            for (int n = 0; n < HD / 8; n += 2) {
                uint32_t bf[4];
                frag_b_cols2(bf, Vs, P, kc * 16, n * 8, lane);
                mma_16816(o[n], pa, bf);
                mma_16816(o[n + 1], pa, bf + 2);
            }
        }
    }
    #pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
        l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
    }
    bf16 *obase = a.out + (size_t)b * T * a.ldo + (size_t)h * HD;
    #pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        float inv = 1.0f / l[hr];
        #pragma unroll
        for (int n = 0; n < HD / 8; n++) { o[n][2 * hr] *= inv; o[n][2 * hr + 1] *= inv; }
        if (q == 0 && row[hr] < T) a.lse[((size_t)b * a.NH + h) * T + row[hr]] = (m[hr] + log2f(l[hr])) / LOG2E;
    }
    store_rows<HD>(obase, a.ldo, q0 + warp * 16, T, o, 1.0f, NULL, NULL, NULL, g, q, 0);
}

/* attention_backward + rope_backward for dq: block = 64 query rows of one (b, h); key tiles up to the diagonal.
     S = Q K^T, P = exp(S/sqrt(HD) - lse), dP = dO V^T, dS = P (dP - D), dq += rope^T(dS K / sqrt(HD))
   Pipeline: Q and dO staged once; K and V tiles in two stages, tile j+1 copied (cp.async) while tile j is used,
   one __syncthreads per tile. */
template <int HD>
__global__ void __launch_bounds__(128, tc_min_blocks(HD, 1))
attention_rope_backward_dq_tc_kernel(AttnArgs<bf16> a, const int *tile_lo) {
    constexpr int P = HD + TC_PAD, BR = 64, BC = 64, TILE = 64 * P;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem_raw), *Gs = Qs + TILE, *st = Gs + TILE;   /* stage i: K, V at st + 2i TILE */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, T = a.T;
    int kh = h / (a.NH / a.NKV), q0 = qt * BR;
    const bf16 *kbase = a.k + (size_t)b * T * a.ldk + (size_t)kh * HD;
    const bf16 *vbase = a.v + (size_t)b * T * a.ldv + (size_t)kh * HD;
    int kt0 = tile_lo ? tile_lo[b * gridDim.x + qt] / BC : 0, kt1 = qt;   /* key tiles before the documents' starts skipped */
    load_tile_async<HD>(Qs, a.q + (size_t)b * T * a.ldq + (size_t)h * HD, a.ldq, q0, BR, T);
    load_tile_async<HD>(Gs, a.dout + (size_t)b * T * a.lddo + (size_t)h * HD, a.lddo, q0, BR, T);
    load_tile_async<HD>(st, kbase, a.ldk, kt0 * BC, BC, T);
    load_tile_async<HD>(st + TILE, vbase, a.ldv, kt0 * BC, BC, T);
    cp_async_commit();
    const float sl2 = LOG2E / sqrtf((float)HD);
    int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    int lo[2] = {row[0] < T ? attn_lo(a, b, row[0]) : 0, row[1] < T ? attn_lo(a, b, row[1]) : 0};
    float lse2[2], D[2];
    #pragma unroll
    for (int hr = 0; hr < 2; hr++) {
        size_t r = ((size_t)b * a.NH + h) * T + row[hr];
        lse2[hr] = row[hr] < T ? a.lse[r] * LOG2E : INFINITY;
        D[hr] = row[hr] < T ? a.delta[r] : 0.0f;
    }
    float dq[HD / 8][4];
    #pragma unroll
    for (int n = 0; n < HD / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    for (int kt = kt0; kt <= kt1; kt++) {
        int k0 = kt * BC, stage = (kt - kt0) & 1;
        cp_async_wait_all();
        __syncthreads();
        if (kt < kt1) {
            bf16 *nx = st + 2 * (stage ^ 1) * TILE;
            load_tile_async<HD>(nx, kbase, a.ldk, k0 + BC, BC, T);
            load_tile_async<HD>(nx + TILE, vbase, a.ldv, k0 + BC, BC, T);
            cp_async_commit();
        }
        const bf16 *Ks = st + 2 * stage * TILE, *Vs = Ks + TILE;
        float s[BC / 8][4], dp[BC / 8][4];
        mma_tile_pair<HD, BC / 8>(s, dp, Qs, Ks, Gs, Vs, P, warp * 16, lane);   /* S = Q K^T, dP = dO V^T */
        #pragma unroll
        for (int j = 0; j < BC / 8; j++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int col = k0 + j * 8 + 2 * q + (e & 1), hr = e >> 1;
                float p = (col > row[hr] || col < lo[hr] || col >= T) ? 0.0f : exp2f(s[j][e] * sl2 - lse2[hr]);
                s[j][e] = p * (dp[j][e] - D[hr]);   /* dS */
            }
        }
        #pragma unroll
        for (int kc = 0; kc < BC / 16; kc++) {
            uint32_t da[4];
            frag_a_from_c(da, s[2 * kc], s[2 * kc + 1]);
            #pragma unroll
            for (int n = 0; n < HD / 8; n += 2) {
                uint32_t bf[4];
                frag_b_cols2(bf, Ks, P, kc * 16, n * 8, lane);
                mma_16816(dq[n], da, bf);
                mma_16816(dq[n + 1], da, bf + 2);
            }
        }
    }
    store_rows<HD>(a.dq + (size_t)b * T * a.lddq + (size_t)h * HD, a.lddq, q0 + warp * 16, T, dq,
                   1.0f / sqrtf((float)HD), a.cos, a.sin, a.pos ? a.pos + (size_t)b * T : NULL, g, q, 1);
}

/* attention_backward + rope_backward for dk, dv: block = 64 key rows of one (b, kv head); query tiles of 64 rows
   from the diagonal to T, for each query head of the group, computed in column chunks of BQC query rows (32 at head
   dim 64 and 128, which keeps the S, dP chunks and the dK, dV accumulators in registers without spilling; 64 at
   head dim 32). Computed transposed (rows = keys), summed over the group's heads and tiles, then added to dk, dv:
     S^T = K Q^T, P^T = exp(S^T/sqrt(HD) - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - D),
     dK += dS^T Q / sqrt(HD);  dk += rope^T(dK), dv += dV
   Pipeline: K and V staged once; the (Q, dO, lse, D) tiles of the (head, query tile) sequence in two stages,
   the next one copied (cp.async) while the warps work on the current one, one __syncthreads per tile. */
#define TC_BQ 64
template <int HD>
__global__ void __launch_bounds__(128, tc_min_blocks(HD, 2))
attention_rope_backward_dkdv_tc_kernel(AttnArgs<bf16> a, const int *tile_lo) {
    constexpr int P = HD + TC_PAD, BK = 64, BQ = TC_BQ, BQC = HD >= 64 ? 32 : 64, QTILE = BQ * P;
    static_assert(BQ == 64, "tile_lo holds the first keys of 64-row query tiles");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *Ks = reinterpret_cast<bf16 *>(smem_raw), *Vs = Ks + BK * P, *st = Vs + BK * P;   /* stage i: Q, dO at st + 2i QTILE */
    float *fst = reinterpret_cast<float *>(st + 4 * QTILE);                               /* stage i: lse2, D at fst + 2i BQ */
    int *ilo = reinterpret_cast<int *>(fst + 4 * BQ);                                     /* stage i: first keys at ilo + i BQ */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
    int kt = blockIdx.x, kh = blockIdx.y, b = blockIdx.z, T = a.T, G = a.NH / a.NKV;
    int k0 = kt * BK;
    /* iteration i: head kh G + i / nq, query tile tq0 + i % nq; with doc_start, the tiles whose rows all start after
       this key tile's last key are skipped (next_it) */
    int tq0 = k0 / BQ, nq = ceil_div_dev(T, BQ) - tq0, nit = G * nq, ntq = ceil_div_dev(T, BQ);
    auto next_it = [&](int i) {
        while (tile_lo && i < nit && tile_lo[b * ntq + tq0 + i % nq] > k0 + BK - 1) i++;
        return i;
    };
    load_tile_async<HD>(Ks, a.k + (size_t)b * T * a.ldk + (size_t)kh * HD, a.ldk, k0, BK, T);
    load_tile_async<HD>(Vs, a.v + (size_t)b * T * a.ldv + (size_t)kh * HD, a.ldv, k0, BK, T);
    int it = next_it(0);
    if (it < nit) dkdv_stage<HD, BQ>(st, fst, ilo, a, b, kh * G + it / nq, (tq0 + it % nq) * BQ);
    cp_async_commit();
    const float sl2 = LOG2E / sqrtf((float)HD);
    int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
    float dk[HD / 8][4], dv[HD / 8][4];
    #pragma unroll
    for (int n = 0; n < HD / 8; n++)
        #pragma unroll
        for (int e = 0; e < 4; e++) { dk[n][e] = 0.0f; dv[n][e] = 0.0f; }
    for (int n = 0, nx; it < nit; n++, it = nx) {
        int t0 = (tq0 + it % nq) * BQ, stage = n & 1;
        nx = next_it(it + 1);
        cp_async_wait_all();
        __syncthreads();
        if (nx < nit)
            dkdv_stage<HD, BQ>(st + 2 * (stage ^ 1) * QTILE, fst + 2 * (stage ^ 1) * BQ, ilo + (stage ^ 1) * BQ, a, b,
                               kh * G + nx / nq, (tq0 + nx % nq) * BQ);
        cp_async_commit();
        #pragma unroll 1
        for (int c0 = 0; c0 < BQ && t0 + c0 < T; c0 += BQC) {
            const bf16 *Qs = st + 2 * stage * QTILE + c0 * P, *Gs = Qs + QTILE;
            const float *lse2s = fst + 2 * stage * BQ + c0, *Ds = lse2s + BQ;
            const int *los = ilo + stage * BQ + c0;
            float s[BQC / 8][4], dp[BQC / 8][4];
            mma_tile_pair<HD, BQC / 8>(s, dp, Ks, Qs, Vs, Gs, P, warp * 16, lane);   /* S^T = K Q^T, dP^T = V dO^T */
            #pragma unroll
            for (int j = 0; j < BQC / 8; j++) {
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    int ci = j * 8 + 2 * q + (e & 1), t = t0 + c0 + ci, hr = e >> 1;
                    float p = (key[hr] > t || key[hr] < los[ci] || t >= T) ? 0.0f : exp2f(s[j][e] * sl2 - lse2s[ci]);
                    s[j][e] = p;                               /* P^T */
                    dp[j][e] = p * (dp[j][e] - Ds[ci]);        /* dS^T */
                }
            }
            #pragma unroll
            for (int kc = 0; kc < BQC / 16; kc++) {
                uint32_t pa[4], da[4];
                frag_a_from_c(pa, s[2 * kc], s[2 * kc + 1]);
                frag_a_from_c(da, dp[2 * kc], dp[2 * kc + 1]);
                #pragma unroll
                for (int n = 0; n < HD / 8; n += 2) {
                    uint32_t bg[4], bq[4];
                    frag_b_cols2(bg, Gs, P, kc * 16, n * 8, lane);
                    frag_b_cols2(bq, Qs, P, kc * 16, n * 8, lane);
                    mma_16816(dv[n], pa, bg);
                    mma_16816(dv[n + 1], pa, bg + 2);
                    mma_16816(dk[n], da, bq);
                    mma_16816(dk[n + 1], da, bq + 2);
                }
            }
        }
    }
    store_rows<HD>(a.dk + (size_t)b * T * a.lddk + (size_t)kh * HD, a.lddk, k0 + warp * 16, T, dk,
                   1.0f / sqrtf((float)HD), a.cos, a.sin, a.pos ? a.pos + (size_t)b * T : NULL, g, q, 1);
    store_rows<HD>(a.dv + (size_t)b * T * a.lddv + (size_t)kh * HD, a.lddv, k0 + warp * 16, T, dv, 1.0f, NULL, NULL,
                   NULL, g, q, 1);
}

/* ------------------------------------------------------------------------------------------------ */
/* gelu */

/* gelu_forward (tanh form): y = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi) */
#define GELU_KF 0.7978845608028654f
template <typename floatX>
__global__ void gelu_forward_kernel(floatX *out, const floatX *inp, size_t n) {
    constexpr int VW = Pack<floatX>::N;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VW;
    if (i >= n) return;
    Pack<floatX> a = ld_pack(inp + i), o;
    #pragma unroll
    for (int k = 0; k < VW; k++) {
        float x = to_f(a.v[k]);
        o.v[k] = from_f<floatX>(0.5f * x * (1.0f + tanhf(GELU_KF * (x + 0.044715f * x * x * x))));
    }
    st_pack(out + i, o);
}

/* gelu_backward: dx = dy * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3*0.044715 x^2)), u = k (x + 0.044715 x^3).
   Writes dinp (does not add): the caller's buffer is scratch, read by the matmul backward that follows. */
template <typename floatX>
__global__ void gelu_backward_kernel(floatX *dinp, const floatX *inp, const floatX *dout, size_t n) {
    constexpr int VW = Pack<floatX>::N;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VW;
    if (i >= n) return;
    Pack<floatX> a = ld_pack(inp + i), g = ld_pack(dout + i), o;
    #pragma unroll
    for (int k = 0; k < VW; k++) {
        float x = to_f(a.v[k]);
        float th = tanhf(GELU_KF * (x + 0.044715f * x * x * x));
        float du = GELU_KF * (1.0f + 3.0f * 0.044715f * x * x);
        o.v[k] = from_f<floatX>(to_f(g.v[k]) * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du));
    }
    st_pack(dinp + i, o);
}

/* ------------------------------------------------------------------------------------------------ */
/* swiglu */

/* swiglu_forward: rows of inp are [gate (F) | up (F)]; y = silu(g) * u, silu(g) = g sig(g) */
template <typename floatX>
__global__ void swiglu_forward_kernel(floatX *out, const floatX *inp, int N, int F) {
    constexpr int VW = Pack<floatX>::N;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VW;
    if (i >= (size_t)N * F) return;
    size_t n = i / F, f = i % F;
    Pack<floatX> g = ld_pack(inp + n * 2 * F + f), u = ld_pack(inp + n * 2 * F + F + f), o;
    #pragma unroll
    for (int k = 0; k < VW; k++) {
        float x = to_f(g.v[k]);
        o.v[k] = from_f<floatX>(x / (1.0f + expf(-x)) * to_f(u.v[k]));
    }
    st_pack(out + i, o);
}

/* swiglu_backward: dg = dy * u * sig(g) * (1 + g (1 - sig(g)));  du = dy * silu(g).
   Writes dinp (does not add): the caller's buffer is scratch, read by the matmul backward that follows. */
template <typename floatX>
__global__ void swiglu_backward_kernel(floatX *dinp, const floatX *dout, const floatX *inp, int N, int F) {
    constexpr int VW = Pack<floatX>::N;
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * VW;
    if (i >= (size_t)N * F) return;
    size_t n = i / F, f = i % F;
    Pack<floatX> g = ld_pack(inp + n * 2 * F + f), u = ld_pack(inp + n * 2 * F + F + f), dy = ld_pack(dout + i), dg, du;
    #pragma unroll
    for (int k = 0; k < VW; k++) {
        float x = to_f(g.v[k]), sg = 1.0f / (1.0f + expf(-x)), d = to_f(dy.v[k]);
        dg.v[k] = from_f<floatX>(d * to_f(u.v[k]) * sg * (1.0f + x * (1.0f - sg)));
        du.v[k] = from_f<floatX>(d * x * sg);
    }
    st_pack(dinp + n * 2 * F + f, dg);
    st_pack(dinp + n * 2 * F + F + f, du);
}

/* ------------------------------------------------------------------------------------------------ */
/* residual */

/* residual_forward and residual_backward have no kernels of their own: the add x = inp1 + inp2 is made by
   residual_norm_forward_kernel before the norm that reads x, and the backward's copy of dout into both inputs is
   the fp32 residual-stream gradient dres, which the branches' residual_norm_backward_kernel adds into. */

/* ------------------------------------------------------------------------------------------------ */
/* crossentropy */

/* crossentropy_forward + crossentropy_backward, fused: one block per row of logits (row stride ldl >= V, a
   multiple of 16 bytes):
     lse = log sum_v exp(x_v);  loss = lse - x[target]   (0 when target < 0)
     with backward: the row is overwritten in place by dlogits = dloss * (softmax(x) - onehot(target)) (written,
     not added: the logits are its input), and the padded columns [V, ldl) by zeros
   so the logits of a chunk of rows live only in floatX, and only until the head's backward reads them.
   Two passes over the row, each with 16-byte loads (Pack: 8 bf16 or 4 float), the block's threads striding by
   packs: pass 1 (block_row_lse) keeps a running max m and sum s of exp(x - m) per thread (online softmax: a pack's
   max first, then one rescale of s), combined over the warp and the block into lse; pass 2 (row_softmax_grad)
   writes the gradient pack by pack. */
template <typename floatX>
__device__ float block_row_lse(const floatX *x, int V) {
    constexpr int VW = Pack<floatX>::N;
    __shared__ float sm_m[32], sm_s[32];
    float m = -INFINITY, s = 0.0f;
    for (int v0 = threadIdx.x * VW; v0 < V; v0 += blockDim.x * VW) {
        Pack<floatX> a = ld_pack(x + v0);
        int n = V - v0 < VW ? V - v0 : VW;   /* the last pack may reach into the padding */
        float pm = -INFINITY;
        for (int k = 0; k < n; k++) pm = fmaxf(pm, to_f(a.v[k]));
        float M = fmaxf(m, pm), ps = 0.0f;
        for (int k = 0; k < n; k++) ps += expf(to_f(a.v[k]) - M);
        s = (m == -INFINITY ? 0.0f : s * expf(m - M)) + ps;
        m = M;
    }
    /* combine (m, s) pairs: warp, then block */
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, m, o), os = __shfl_xor_sync(0xffffffffu, s, o);
        float M = fmaxf(m, om);
        s = (M == -INFINITY) ? 0.0f : s * expf(m - M) + os * expf(om - M);
        m = M;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }
    __syncthreads();
    float M = -INFINITY, S = 0.0f;
    for (int w = 0; w < nw; w++) M = fmaxf(M, sm_m[w]);
    for (int w = 0; w < nw; w++) S += sm_m[w] == -INFINITY ? 0.0f : sm_s[w] * expf(sm_m[w] - M);
    return M + logf(S);
}

/* x[v] = d * (exp(x[v] - lse) - [v == k]) for v < V (k < 0: no one-hot column here), 0 in the padding [V, ldl) */
template <typename floatX>
__device__ void row_softmax_grad(floatX *x, int V, int ldl, float lse, int k, float d) {
    constexpr int VW = Pack<floatX>::N;
    for (int v0 = threadIdx.x * VW; v0 < ldl; v0 += blockDim.x * VW) {
        Pack<floatX> a = ld_pack(x + v0), o;
        #pragma unroll
        for (int j = 0; j < VW; j++) {
            int v = v0 + j;
            o.v[j] = from_f<floatX>(v < V ? d * (expf(to_f(a.v[j]) - lse) - (v == k ? 1.0f : 0.0f)) : 0.0f);
        }
        st_pack(x + v0, o);
    }
}

template <typename floatX>
__global__ void crossentropy_forward_backward_kernel(floatX *logits, float *losses, const int *targets, int V, int ldl,
                                                     float dloss, int backward) {
    int row = blockIdx.x;
    floatX *x = logits + (size_t)row * ldl;
    float lse = block_row_lse(x, V);
    int tgt = targets ? targets[row] : -1;
    if (threadIdx.x == 0) losses[row] = tgt >= 0 ? lse - to_f(x[tgt]) : 0.0f;
    if (!backward) return;
    __syncthreads();   /* every thread has read x[tgt] (thread 0) before the row is overwritten */
    row_softmax_grad(x, V, ldl, lse, tgt, tgt >= 0 ? dloss : 0.0f);
}

/* The vocabulary-parallel cross-entropy (crossentropy_forward_shard / _combine / _backward_shard of the header): a
   rank's logits are its columns [v0, v0 + V) of the vocabulary.
   forward_shard, one block per row: part[row] = lse of its columns, part[N + row] = the target's logit when it is
   one of them, else 0. */
template <typename floatX>
__global__ void crossentropy_forward_shard_kernel(float *part, const floatX *logits, const int *targets, int N, int V,
                                                  int ldl, int v0) {
    int row = blockIdx.x;
    const floatX *x = logits + (size_t)row * ldl;
    float lse = block_row_lse(x, V);
    int k = targets && targets[row] >= 0 ? targets[row] - v0 : -1;
    if (threadIdx.x == 0) { part[row] = lse; part[N + row] = k >= 0 && k < V ? to_f(x[k]) : 0.0f; }
}

/* combine, one thread per row, from every rank's parts [ranks][2][N]: lse = log sum_r exp(lse_r) (the largest taken
   out, in double), loss = lse - sum_r target_logit_r (0 when target < 0) */
__global__ void crossentropy_combine_kernel(float *losses, float *lse, const float *parts, const int *targets, int N, int ranks) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float maxl = -INFINITY, tl = 0.0f;
    for (int r = 0; r < ranks; r++) maxl = fmaxf(maxl, parts[(size_t)r * 2 * N + n]);
    double sum = 0.0;
    for (int r = 0; r < ranks; r++) {
        sum += exp((double)parts[(size_t)r * 2 * N + n] - maxl);
        tl += parts[(size_t)r * 2 * N + N + n];
    }
    lse[n] = maxl + (float)log(sum);
    losses[n] = targets && targets[n] >= 0 ? lse[n] - tl : 0.0f;
}

/* backward_shard, one block per row: the row overwritten by dloss * (softmax - onehot) on its columns, with the
   whole row's lse (rows with target < 0: zeros) */
template <typename floatX>
__global__ void crossentropy_backward_shard_kernel(floatX *logits, const float *lse, const int *targets, int V, int ldl, int v0,
                                                   float dloss) {
    int row = blockIdx.x, tgt = targets[row];
    row_softmax_grad(logits + (size_t)row * ldl, V, ldl, lse[row], tgt >= 0 ? tgt - v0 : -1, tgt >= 0 ? dloss : 0.0f);
}

/* ------------------------------------------------------------------------------------------------ */
/* optimizer */

/* What one optimizer step's AdamW reads from the device: the step's decisions, made on the device by
   step_decide_kernel from the reduced loss and grad norm, so the host never waits for them. */
struct AdamCtl {
    float step_size;             /* lr / (1 - beta1^t), t = the number of updates so far, this one included */
    float bc2_sqrt;              /* sqrt(1 - beta2^t) */
    float grad_scale;            /* the clip coefficient */
    int apply;                   /* 0: the step is skipped (non-finite loss or norm, or no update asked for) */
    uint64_t sr_seed;            /* the stochastic rounding's seed of update t */
};

/* adamw_update_scaled (adamw_update on grad * grad_scale, the clip coefficient) on a slice of the flat vector
   (torch.optim.AdamW):
     p = p (1 - lr wd);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
   g = grad * grad_scale. The fp32 master is updated and the floatX copy of the weight is
   rounded from it, stochastically for bf16 with rng_u64(seed, global index): the same bits whatever the sharding.
   step_size, bc2_sqrt, grad_scale and the seed come from the device (ctl); nothing is written when !ctl->apply. */
template <typename floatX>
__global__ void adamw_update_scaled_kernel(floatX *params, float *master, const float *grads, float *m, float *v,
                                           size_t n, float lr, float beta1, float beta2, float eps, float wd,
                                           const AdamCtl *ctl, uint64_t global_offset) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !ctl->apply) return;
    float g = grads[i] * ctl->grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi; v[i] = vi;
    float p = master[i] * (1.0f - lr * wd);
    p = p - ctl->step_size * mi / (sqrtf(vi) / ctl->bc2_sqrt + eps);
    master[i] = p;
    params[i] = round_param<floatX>(p, rng_u64_dev(ctl->sr_seed, global_offset + i));
}

/* grad_sumsq: the sum of squares of x in a fixed order: block b sums its chunk (double per thread, tree in shared
   memory) into part[b]; sum_in_order_kernel then adds the parts in order. */
#define SUMSQ_BLOCKS 512
__global__ void grad_sumsq_kernel(double *part, const float *x, size_t n) {
    __shared__ double sh[256];
    size_t chunk = (n + gridDim.x - 1) / gridDim.x;
    size_t b = (size_t)blockIdx.x * chunk, e = b + chunk < n ? b + chunk : n;
    double s = 0.0;
    for (size_t i = b + threadIdx.x; i < e; i += blockDim.x) s += (double)x[i] * x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

/* One optimizer step's outcome, written on the device and copied to pinned host memory for the log */
struct StepOut {
    double loss, norm;           /* the mean loss over ranks, the global grad norm */
    double stop;                 /* > 0: some rank asked to stop */
    int skip;                    /* the loss or the norm is not finite: no update */
    int pad;
};

/* The decisions of an optimizer step (the trainer's non-finite check, grad_clip_scale, AdamW's bias corrections),
   on one thread, from red = [sum of squares of the gradient, loss summed over
   ranks, stop flags] (all-reduced): the numbers the host used to compute, with the same arithmetic (double, then
   float as grad_clip and adamw_update have it). A finite step with do_update counts one more update t and fills
   ctl for AdamW: bc1[t], bc2[t] are the host's 1 - beta^t tables (as powf gave them before). */
__global__ void step_decide_kernel(StepOut *out, AdamCtl *ctl, int *updates, const double *red, int world, float clip,
                                   int do_update, float lr, const float *bc1, const float *bc2, uint64_t seed) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double loss = red[1] / world, norm = sqrt(red[0]);
    int skip = !isfinite(loss) || !isfinite(norm);
    out->loss = loss; out->norm = norm; out->stop = red[2]; out->skip = skip; out->pad = 0;
    ctl->apply = do_update && !skip;
    if (!ctl->apply) return;
    int t = ++*updates;
    float coef = (float)(clip / (norm + 1e-6));
    ctl->grad_scale = (clip <= 0 || coef >= 1.0f) ? 1.0f : coef;    /* grad_clip's rule */
    ctl->step_size = lr / bc1[t];
    ctl->bc2_sqrt = sqrtf(bc2[t]);
    ctl->sr_seed = rng_u64_dev(seed ^ 0x5EEDB16ULL, (uint64_t)t);   /* sr_seed_of(seed, t) */
}

/* red[2] = v: this rank's stop flag, set in stream order (no host buffer an asynchronous copy would read) */
__global__ void set_double_kernel(double *x, double v) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *x = v;
}

/* ------------------------------------------------------------------------------------------------ */
/* utilities */

/* fp32 -> floatX, round to nearest (the first copy of the weights, and uploads) */
template <typename floatX>
__global__ void convert_kernel(floatX *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<floatX>(in[i]);
}

/* fp32 -> floatX with the AdamW step's stochastic rounding (index = flat position): rebuilds, on resume, the exact
   floatX copy that the step which produced these masters made */
template <typename floatX>
__global__ void sr_convert_kernel(floatX *out, const float *in, size_t n, uint64_t seed, uint64_t global_offset = 0) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = round_param<floatX>(in[i], rng_u64_dev(seed, global_offset + i));
}

/* residual_forward: out = inp1 + inp2 rounded to floatX, as residual_norm_forward_kernel stores it (a pipeline
   stage's last layer when no norm follows it on the stage) */
template <typename floatX>
__global__ void residual_forward_kernel(floatX *out, const floatX *inp1, const floatX *inp2, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<floatX>(to_f(inp1[i]) + to_f(inp2[i]));
}

/* x[i] += y[i] */
__global__ void add_kernel(float *x, const float *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

/* floatX -> fp32 */
template <typename floatX>
__global__ void to_float_kernel(float *out, const floatX *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = to_f(in[i]);
}

/* out[0] (+)= sum of x[0..n) in order; one thread: n is small (parts, or the losses of one micro-batch) */
template <typename S>
__global__ void sum_in_order_kernel(double *out, const S *x, int n, int accumulate) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)x[i];
    out[0] = accumulate ? out[0] + s : s;
}

/* out[0] = (accumulate ? out[0] : 0) + scale * sum of losses[0..N), in a fixed order */
__global__ void sum_losses_kernel(double *out, const float *losses, int N, double scale, int accumulate) {
    __shared__ double sh[256];
    double s = 0.0;
    /* fixed assignment: thread i adds rows i, i+256, ...; then a fixed tree */
    for (int i = threadIdx.x; i < N; i += blockDim.x) s += (double)losses[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = (accumulate ? out[0] : 0.0) + scale * sh[0];
}

/* x[i] = v */
__global__ void fill_kernel(float *x, float v, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

/* ------------------------------------------------------------------------------------------------ */
/* the layers as the model calls them: gpu::<name> mirrors <name> of llmtrain.h */

namespace gpu {

static int g_num_sms = 132;

/* pos [B*T]: the learned position of each row (NULL: t); wte: the rows [v0, v0 + V) of the vocabulary */
template <typename floatX>
void embedding_forward_shard(floatX *out, const int *tokens, const floatX *wte, int v0, int V, const floatX *wpe, int B, int T,
                             int C, cudaStream_t s, const int *pos = NULL) {
    size_t packs = (size_t)B * T * C / Pack<floatX>::N;
    embedding_forward_kernel<floatX><<<ceil_div(packs, 256), 256, 0, s>>>(out, tokens, wte, v0, V, wpe, pos, B * T, T, C);
    KERNEL_CHECK();
}
template <typename floatX>
void embedding_forward(floatX *out, const int *tokens, const floatX *wte, const floatX *wpe, int B, int T, int C, cudaStream_t s,
                       const int *pos = NULL) {
    embedding_forward_shard<floatX>(out, tokens, wte, 0, INT_MAX, wpe, B, T, C, s, pos);
}

/* the embedding backward's plan (emb_plan_build): one int array of emb_plan_ints(N) holding, at fixed places,
   pos [N] (the positions sorted by token), cbeg [nchunks + 1] (chunk c covers pos[cbeg[c] .. cbeg[c+1])), cdst
   [nchunks] (>= 0: the token row it adds to; < 0: partial slot -1 - cdst), ltok [nlong] and lfirst [nlong + 1] (long
   token u's partial slots lfirst[u] .. lfirst[u+1]). The pointers point into the device copy; part is the partials'
   scratch, emb_plan_partials(N) rows of C. */
struct EmbBuckets { int *pos, *cbeg, *cdst, *ltok, *lfirst; int nchunks, nlong; float *part; };

/* dw[row] += the dout rows of each bucket of the plan, in order (the two passes of the chunked kernels) */
static void embedding_backward_rows(float *dw, const float *dout, const EmbBuckets &bk, int C, cudaStream_t s) {
    if (bk.nchunks > 0) {
        embedding_backward_chunks_kernel<<<dim3(bk.nchunks, ceil_div(C, 256)), 256, 0, s>>>(dw, bk.part, dout, bk.pos,
                                                                                          bk.cbeg, bk.cdst, C);
        KERNEL_CHECK();
    }
    if (bk.nlong > 0) {
        embedding_backward_partials_kernel<<<dim3(bk.nlong, ceil_div(C, 256)), 256, 0, s>>>(dw, bk.part, bk.ltok, bk.lfirst, C);
        KERNEL_CHECK();
    }
}

/* dwte from bk (the rows bucketed by token); dwpe from pbk (the rows bucketed by their position, with
   --reset-position-ids), or, pbk NULL, row b*T+t at position t */
void embedding_backward(float *dwte, float *dwpe, const float *dout, const EmbBuckets &bk, int B, int T, int C, cudaStream_t s,
                        const EmbBuckets *pbk = NULL) {
    embedding_backward_rows(dwte, dout, bk, C, s);
    if (dwpe && pbk) {
        embedding_backward_rows(dwpe, dout, *pbk, C, s);
    } else if (dwpe) {
        embedding_backward_wpe_kernel<<<ceil_div((size_t)T * C, 256), 256, 0, s>>>(dwpe, dout, B, T, C);
        KERNEL_CHECK();
    }
}

/* layernorm_forward / rmsnorm_forward, with the residual add before it when inp2 != NULL */
template <typename floatX>
void residual_norm_forward(floatX *resid_out, floatX *out, float *mean, float *rstd, const floatX *inp1, const floatX *inp2, int heads, int ld,
                  const floatX *w, const floatX *b, int rows, int C, float eps, int layernorm, cudaStream_t s) {
    residual_norm_forward_kernel<floatX><<<ceil_div(rows, 8), 256, 0, s>>>(resid_out, out, mean, rstd, inp1, inp2, heads, ld, w, b,
                                                             rows, C, eps, layernorm);
    KERNEL_CHECK();
}

template <typename floatX>
void norm_forward_recompute(floatX *out, const floatX *inp, const float *mean, const float *rstd, const floatX *w, const floatX *b, int rows, int C, cudaStream_t s) {
    norm_forward_recompute_kernel<floatX><<<ceil_div((size_t)rows * C / Pack<floatX>::N, 256), 256, 0, s>>>(out, inp, mean, rstd, w, b, rows, C);
    KERNEL_CHECK();
}

/* scratch for the column sums: part_w and part_b, each COLSUM_MAX_RB x (widest row) floats */
#define COLSUM_MAX_RB 128

/* dw[c] += sum_r dy[r,c] n[r,c] (when x), db[c] += sum_r dy[r,c] (when db); dy has row stride lddy */
template <typename floatX>
void column_sums(float *dw, float *db, const floatX *dy, int lddy, const floatX *x, int heads, int ld, const float *mean,
                 const float *rstd, int rows, int C, float *scratch, cudaStream_t s) {
    int chunks = ceil_div(C, COLSUM_COLS);
    int rb = 2 * g_num_sms / chunks;
    if (rb < 1) rb = 1;
    if (rb > COLSUM_MAX_RB) rb = COLSUM_MAX_RB;
    if (rb > ceil_div(rows, 32)) rb = ceil_div(rows, 32);
    int rpb = ceil_div(rows, rb);
    rb = ceil_div(rows, rpb);
    float *pw = scratch, *pb = scratch + (size_t)COLSUM_MAX_RB * C;
    column_sums_stage1_kernel<floatX><<<dim3(chunks, rb), 32 * COLSUM_WARPS, 0, s>>>(x ? pw : NULL, db ? pb : NULL, dy, lddy, x, heads, ld,
                                                                           mean, rstd, rows, C, rpb);
    KERNEL_CHECK();
    column_sums_stage2_kernel<<<ceil_div(C, 256), 256, 0, s>>>(x ? dw : NULL, db, pw, pb, rb, C);
    KERNEL_CHECK();
}

/* layernorm_backward / rmsnorm_backward (see residual_norm_backward_kernel for the two output forms) */
template <typename floatX>
void residual_norm_backward(float *dres, floatX *dres_t, floatX *dinp, float *dw, float *db, const floatX *dout, const floatX *inp, int heads, int ld,
                   const floatX *w, const float *mean, const float *rstd, int rows, int C, int accumulate, float *scratch,
                   cudaStream_t s) {
    residual_norm_backward_kernel<floatX><<<ceil_div(rows, 8), 256, 0, s>>>(dres, dres_t, dinp, dout, inp, heads, ld, w, mean, rstd,
                                                              rows, C, accumulate);
    KERNEL_CHECK();
    column_sums<floatX>(dw, db, dout, C, inp, heads, ld, mean, rstd, rows, C, scratch, s);
}

/* matmul_forward: out[N, OC] (row stride ldo) = inp[N, IC] w[OC, IC]^T + bias.
   gelu_aux != NULL: out = gelu(inp w^T + bias) and gelu_aux = inp w^T + bias (cuBLASLt's GELU epilogue) */
template <typename floatX>
void matmul_forward(floatX *out, const floatX *inp, const floatX *w, const floatX *bias, int N, int IC, int OC, int ldo, floatX *gelu_aux, cudaStream_t s) {
    cublasLtEpilogue_t epi = gelu_aux ? (bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                                      : (bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
    matmul_lt(out, cuda_type<floatX>(), w, inp, cuda_type<floatX>(), bias, OC, N, IC, IC, IC, ldo, 1, 0, 0.0f, epi, gelu_aux, OC, s);
}

/* matmul_backward: dinp[N, IC] (=, or += with accumulate) = dout w;  dw[OC, IC] += dout^T inp (fp32);
   dbias[OC] += column sums of dout. dout has row stride lddo. dgelu_aux != NULL: dinp = (dout w) * gelu'(aux).
   The bias gradient comes out of the weight-gradient matmul itself: its B is dout^T (k = N rows), and cuBLASLt's
   BGRADB epilogue sums op(B) over k, i.e. dout over the rows, as it reads it for the product. The epilogue writes
   (does not add), so it goes to scratch and is added to dbias. Where cuBLASLt has no algorithm with that epilogue,
   the column-sum kernels do it. */
template <typename floatX>
void matmul_backward(floatX *dinp, float *dw, float *dbias, const floatX *dout, const floatX *inp, const floatX *w, int N, int IC, int OC,
                     int lddo, int accumulate, const floatX *dgelu_aux, float *scratch, cudaStream_t s) {
    /* the epilogue would apply GELU' to the sum with the old dinp, not to the new product alone */
    if (accumulate && dgelu_aux) die("matmul_backward: the DGELU epilogue cannot accumulate into dinp");
    if (dinp)
        matmul_lt(dinp, cuda_type<floatX>(), w, dout, cuda_type<floatX>(), NULL, IC, N, OC, IC, lddo, IC, 0, 0,
                  accumulate ? 1.0f : 0.0f, dgelu_aux ? CUBLASLT_EPILOGUE_DGELU : CUBLASLT_EPILOGUE_DEFAULT,
                  (void *)dgelu_aux, IC, s);
    int fused = 0;
    if (dw && dbias) {
        fused = matmul_lt(dw, CUDA_R_32F, inp, dout, cuda_type<floatX>(), scratch, IC, OC, N, IC, lddo, IC, 0, 1, 1.0f,
                          CUBLASLT_EPILOGUE_BGRADB, NULL, 0, s, 1);
        if (fused) {
            add_kernel<<<ceil_div(OC, 256), 256, 0, s>>>(dbias, scratch, OC);
            KERNEL_CHECK();
        }
    }
    if (dw && !fused)
        matmul_lt(dw, CUDA_R_32F, inp, dout, cuda_type<floatX>(), NULL, IC, OC, N, IC, lddo, IC, 0, 1, 1.0f,
                  CUBLASLT_EPILOGUE_DEFAULT, NULL, 0, s);
    if (dbias && !fused) column_sums<floatX>(NULL, dbias, dout, lddo, (const floatX *)NULL, 1, OC, NULL, NULL, N, OC, scratch, s);
}

/* which attention kernels run: the tensor-core ones for bf16 and HD 32/64/128 unless plain is asked for */
template <typename floatX> static int attention_uses_tc(int HD, int force_plain) {
    if (force_plain) return 0;
    if constexpr (std::is_same<floatX, bf16>::value) return HD == 32 || HD == 64 || HD == 128;
    return 0;
}

/* shared memory: forward 2 stages of K, V; dq Q, dO + 2 stages of K, V; dkdv K, V + 2 stages of Q, dO, lse, D */
template <int HD> static size_t tc_smem_forward() { return (size_t)4 * 64 * (HD + TC_PAD) * sizeof(bf16); }
template <int HD> static size_t tc_smem_dq() { return (size_t)6 * 64 * (HD + TC_PAD) * sizeof(bf16); }
template <int HD> static size_t tc_smem_dkdv() { return (size_t)(2 * 64 + 4 * TC_BQ) * (HD + TC_PAD) * sizeof(bf16) + 6 * TC_BQ * sizeof(float); }

/* q and k rotated once by rope_forward_kernel into a scratch buffer ([N, NH*HD] then [N, NKV*HD]), which the
   tensor-core kernels read in place of a.q and a.k (cos/sin stay: the backward rotates dq, dk back as it stores);
   with doc_start, also each 64-row tile's first key (attention_tile_lo_kernel) after them */
static bf16 *g_att_rot = NULL;
static int *g_att_tile_lo = NULL;
static size_t g_att_rot_bytes = 0;
static AttnArgs<bf16> attention_rotated(const AttnArgs<bf16> &a, cudaStream_t s) {
    size_t N = (size_t)a.B * a.T, QD = (size_t)a.NH * a.HD, KD = (size_t)a.NKV * a.HD, nlo = (size_t)a.B * ceil_div(a.T, 64);
    size_t bytes = N * (QD + KD) * sizeof(bf16) + nlo * sizeof(int);
    if (bytes > g_att_rot_bytes) {
        dev_free(g_att_rot, g_att_rot_bytes);
        g_att_rot = (bf16 *)dev_alloc(bytes);
        g_att_rot_bytes = bytes;
    }
    g_att_tile_lo = reinterpret_cast<int *>(g_att_rot + N * (QD + KD));
    if (a.doc_start) {
        attention_tile_lo_kernel<<<ceil_div(nlo, 128), 128, 0, s>>>(g_att_tile_lo, a);
        KERNEL_CHECK();
    }
    AttnArgs<bf16> r = a;
    bf16 *qr = g_att_rot, *kr = g_att_rot + N * QD;
    size_t nq = N * a.NH * (a.HD / 16), nk = N * a.NKV * (a.HD / 16);
    rope_forward_kernel<<<ceil_div(nq, 256), 256, 0, s>>>(qr, a.q, a.ldq, a.NH, a);
    KERNEL_CHECK();
    rope_forward_kernel<<<ceil_div(nk, 256), 256, 0, s>>>(kr, a.k, a.ldk, a.NKV, a);
    KERNEL_CHECK();
    r.q = qr; r.ldq = (int)QD; r.k = kr; r.ldk = (int)KD;
    return r;
}

template <int HD> static void attention_forward_tc(AttnArgs<bf16> &a, const int *tile_lo, cudaStream_t s) {
    static int init = 0;
    size_t sm = tc_smem_forward<HD>();
    if (!init) { CUDA_CHECK(cudaFuncSetAttribute(attention_forward_tc_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm)); init = 1; }
    attention_forward_tc_kernel<HD><<<dim3(ceil_div(a.T, 64), a.NH, a.B), 128, sm, s>>>(a, tile_lo);
    KERNEL_CHECK();
}
template <int HD> static void attention_backward_tc(AttnArgs<bf16> &a, const int *tile_lo, cudaStream_t s) {
    static int init = 0;
    size_t sq = tc_smem_dq<HD>(), sk = tc_smem_dkdv<HD>();
    if (!init) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_rope_backward_dq_tc_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sq));
        CUDA_CHECK(cudaFuncSetAttribute(attention_rope_backward_dkdv_tc_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sk));
        init = 1;
    }
    attention_rope_backward_dq_tc_kernel<HD><<<dim3(ceil_div(a.T, 64), a.NH, a.B), 128, sq, s>>>(a, tile_lo);
    KERNEL_CHECK();
    attention_rope_backward_dkdv_tc_kernel<HD><<<dim3(ceil_div(a.T, 64), a.NKV, a.B), 128, sk, s>>>(a, tile_lo);
    KERNEL_CHECK();
}

/* the tensor-core kernels (forward or backward) for head dim 32, 64 or 128; 0 where they do not apply */
template <typename floatX>
static int attention_tc(AttnArgs<floatX> &a, int force_plain, int backward, cudaStream_t s) {
    if constexpr (std::is_same<floatX, bf16>::value) {
        if (!attention_uses_tc<floatX>(a.HD, force_plain)) return 0;
        AttnArgs<bf16> r = attention_rotated(a, s);
        const int *lo = a.doc_start ? g_att_tile_lo : NULL;
        if (a.HD == 32) { if (backward) attention_backward_tc<32>(r, lo, s); else attention_forward_tc<32>(r, lo, s); }
        else if (a.HD == 64) { if (backward) attention_backward_tc<64>(r, lo, s); else attention_forward_tc<64>(r, lo, s); }
        else { if (backward) attention_backward_tc<128>(r, lo, s); else attention_forward_tc<128>(r, lo, s); }
        return 1;
    }
    return 0;
}

/* rope_forward + attention_forward */
template <typename floatX>
void attention_forward(AttnArgs<floatX> &a, int force_plain, cudaStream_t s) {
    if (a.HD > ATT_MAXHD) die("head_dim %d: the attention kernels support up to %d", a.HD, ATT_MAXHD);
    if (attention_tc(a, force_plain, 0, s)) return;
    rope_attention_forward_plain_kernel<floatX><<<ceil_div((size_t)a.B * a.NH * a.T, ATT_WARPS), 32 * ATT_WARPS, 0, s>>>(a);
    KERNEL_CHECK();
}

/* attention_backward + rope_backward: adds (+=) into dq, dk, dv */
template <typename floatX>
void attention_backward(AttnArgs<floatX> &a, int force_plain, cudaStream_t s) {
    attention_backward_delta_kernel<floatX><<<ceil_div((size_t)a.B * a.NH * a.T, 8), 256, 0, s>>>(a);
    KERNEL_CHECK();
    if (attention_tc(a, force_plain, 1, s)) return;
    attention_rope_backward_dq_plain_kernel<floatX><<<ceil_div((size_t)a.B * a.NH * a.T, ATT_WARPS), 32 * ATT_WARPS, 0, s>>>(a);
    KERNEL_CHECK();
    attention_rope_backward_dkdv_plain_kernel<floatX><<<ceil_div((size_t)a.B * a.NKV * a.T, ATT_WARPS), 32 * ATT_WARPS, 0, s>>>(a);
    KERNEL_CHECK();
}

template <typename floatX>
void residual_forward(floatX *out, const floatX *inp1, const floatX *inp2, size_t n, cudaStream_t s) {
    residual_forward_kernel<floatX><<<ceil_div(n, 256), 256, 0, s>>>(out, inp1, inp2, n);
    KERNEL_CHECK();
}

template <typename floatX>
void gelu_forward(floatX *out, const floatX *inp, size_t n, cudaStream_t s) {
    gelu_forward_kernel<floatX><<<ceil_div(n / Pack<floatX>::N, 256), 256, 0, s>>>(out, inp, n);
    KERNEL_CHECK();
}
template <typename floatX>
void gelu_backward(floatX *dinp, const floatX *inp, const floatX *dout, size_t n, cudaStream_t s) {
    gelu_backward_kernel<floatX><<<ceil_div(n / Pack<floatX>::N, 256), 256, 0, s>>>(dinp, inp, dout, n);
    KERNEL_CHECK();
}
template <typename floatX>
void swiglu_forward(floatX *out, const floatX *inp, int N, int F, cudaStream_t s) {
    swiglu_forward_kernel<floatX><<<ceil_div((size_t)N * F / Pack<floatX>::N, 256), 256, 0, s>>>(out, inp, N, F);
    KERNEL_CHECK();
}
template <typename floatX>
void swiglu_backward(floatX *dinp, const floatX *dout, const floatX *inp, int N, int F, cudaStream_t s) {
    swiglu_backward_kernel<floatX><<<ceil_div((size_t)N * F / Pack<floatX>::N, 256), 256, 0, s>>>(dinp, dout, inp, N, F);
    KERNEL_CHECK();
}

/* crossentropy_forward (+ crossentropy_backward in place when backward) on rows of logits */
template <typename floatX>
void crossentropy_forward_backward(floatX *logits, float *losses, const int *targets, int N, int V, int ldl, float dloss, int backward, cudaStream_t s) {
    if (ldl % Pack<floatX>::N || ldl < V) die("crossentropy_forward_backward: row stride %d must be >= V = %d and hold whole 16-byte packs", ldl, V);
    crossentropy_forward_backward_kernel<floatX><<<N, 512, 0, s>>>(logits, losses, targets, V, ldl, dloss, backward);
    KERNEL_CHECK();
}

/* the three steps of the vocabulary-parallel cross-entropy on N rows of logits (row stride ldl), this rank's columns
   [v0, v0 + V): its parts into part [2][N]; every rank's parts [ranks][2][N] into losses and lse; the rows in place
   into their gradient */
template <typename floatX>
void crossentropy_forward_shard(float *part, const floatX *logits, const int *targets, int N, int V, int ldl, int v0, cudaStream_t s) {
    if (ldl % Pack<floatX>::N || ldl < V) die("crossentropy_forward_shard: row stride %d must be >= V = %d and hold whole 16-byte packs", ldl, V);
    crossentropy_forward_shard_kernel<floatX><<<N, 512, 0, s>>>(part, logits, targets, N, V, ldl, v0);
    KERNEL_CHECK();
}
void crossentropy_combine(float *losses, float *lse, const float *parts, const int *targets, int N, int ranks, cudaStream_t s) {
    crossentropy_combine_kernel<<<ceil_div(N, 128), 128, 0, s>>>(losses, lse, parts, targets, N, ranks);
    KERNEL_CHECK();
}
template <typename floatX>
void crossentropy_backward_shard(floatX *logits, const float *lse, const int *targets, int N, int V, int ldl, int v0, float dloss,
                                 cudaStream_t s) {
    crossentropy_backward_shard_kernel<floatX><<<N, 512, 0, s>>>(logits, lse, targets, V, ldl, v0, dloss);
    KERNEL_CHECK();
}

/* adamw_update on master[0..n) = flat elements [global_offset, global_offset + n), with the step's device
   decisions ctl (see AdamCtl) */
template <typename floatX>
void adamw_update(floatX *params, float *master, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, const AdamCtl *ctl, uint64_t global_offset, cudaStream_t s) {
    if (n == 0) return;
    adamw_update_scaled_kernel<floatX><<<ceil_div(n, 256), 256, 0, s>>>(params, master, grads, m, v, n, lr, beta1, beta2, eps, wd, ctl,
                                                     global_offset);
    KERNEL_CHECK();
}

/* grad_sumsq: sum of squares of x[0..n) into out[0] (double; added to it with accumulate), in a fixed order */
void grad_sumsq(double *out, double *parts, const float *x, size_t n, cudaStream_t s, int accumulate = 0) {
    grad_sumsq_kernel<<<SUMSQ_BLOCKS, 256, 0, s>>>(parts, x, n);
    KERNEL_CHECK();
    sum_in_order_kernel<double><<<1, 1, 0, s>>>(out, parts, SUMSQ_BLOCKS, accumulate);
    KERNEL_CHECK();
}

} /* namespace gpu */

/* ================================================================================================ */
/* the model on the device: the header's flat layout (Model.param_offsets) for the floatX weights and the fp32
   gradients, so the host Model (fp32) can be uploaded and downloaded as one buffer; the fp32 masters and AdamW
   moments hold only this rank's ZeRO-1 shard. */

typedef struct {
    int rank, world, local_rank; /* in the data-parallel group (ZeRO's ranks): every rank without --tp / --pp */
    ncclComm_t comm;             /* the data-parallel group's; NULL when world == 1 (unless NCCL is asked for with one
                                    rank) */
    int grank, gworld;           /* in the whole run: rank = (pp_rank * world + rank) * tp + tp_rank (train.c's layout) */
    ncclComm_t gcomm;            /* every rank's (the step's loss, norm and stop flags; the watchdog) */
    int tp, tp_rank;             /* tensor parallelism: the group's size (1: none) and this rank's place in it */
    ncclComm_t tp_comm, kv_comm; /* the group's; the ranks of the group that share a k/v head (kv_share > 1) */
    int pp, pp_rank;             /* pipeline parallelism: the stages (1: none) and this rank's stage */
    ncclComm_t pp_comm, emb_comm;   /* the pipeline's ranks (rank = stage); with tied embeddings its first and last
                                       stage (NULL elsewhere) */
    ncclComm_t mp_comm;          /* the tp x pp ranks that hold one whole model (tp_comm itself without --pp) */
} Dist;

template <typename floatX> static ncclDataType_t nccl_type();
template <> ncclDataType_t nccl_type<float>() { return ncclFloat; }
template <> ncclDataType_t nccl_type<bf16>() { return ncclBfloat16; }

template <typename floatX>
struct GModel {
    ModelConfig cfg;
    Model *host;                 /* the fp32 weights (and moments) for init, load and save: the real vocabulary */
    Model lay;                   /* the device's layout (sizes and offsets only, no memory): host's with the
                                    vocabulary padded to Vp rows in wte and lm_head. The padded rows are zero, their
                                    gradient is zero and AdamW never touches them; nothing padded leaves the device */
    int Bmax, Tmax;              /* the activations are allocated for this shape */
    int C, NH, NKV, HD, F, QD, KD, QKV, FC, V, Vp, L;
    int layernorm, gelu, rope, wpe;   /* the config's features: LayerNorm (else RMSNorm), GELU (else SwiGLU), RoPE,
                                         a learned position table */
    int recompute, plain_attn, fuse_gelu, chunk_rows;
    int rank, world;
    size_t nparams, shard, padded, shard_begin;  /* ZeRO: shard = ceil(n / world), padded = shard * world */
    floatX *params;                   /* [padded] */
    float *grads;                /* ZeRO-1: [padded] fp32; ZeRO-2: NULL */
    float *gshard;               /* this rank's shard of the summed gradients: grads + shard_begin, or [shard] */
    float *master, *mom, *vel;   /* [shard] fp32 */
    /* ZeRO-2 (zero2): no full gradient buffer. A layer's gradients go to layer buffer l % 2 ([layer_floats]; tensor
       t at lbuf_off[t]), are reduced into their owners' gshard after the layer's backward, every micro-step, and
       the buffer is reused two layers later; the tensors outside the layers keep whole gradients in outer. */
    int zero2;
    float *lbuf[2], *outer;
    size_t lbuf_off[NUM_PARAM_TENSORS], layer_floats, outer_floats;
    cudaEvent_t lbuf_free[2];    /* recorded on comm_stream when the reduction reading lbuf[i] is over */
    float *stage;                /* fp32 staging for uploads and downloads: [stage_floats] (ZeRO-1: the grads) */
    size_t stage_floats;
    floatX *pt[NUM_PARAM_TENSORS];
    float *gt[NUM_PARAM_TENSORS];
    /* activations; a per-layer buffer kept only once (recompute) has layer stride 0 */
    floatX *encoded, *ln1, *qkv, *qn, *kn, *atty, *resid2, *ln2, *fch, *fch_act, *resid3, *lnf, *proj, *logits;
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *qn_rstd, *kn_rstd, *lse, *lnf_mean, *lnf_rstd, *losses;
    int ln_layers, act_layers;   /* L or 1 */
    /* backward scratch */
    float *dres, *delta, *scratch;
    floatX *dres_t, *dfch_act, *dfch, *dln, *datty, *dqkv, *dqn, *dkn, *dlnf;
    float *rope_cos, *rope_sin;
    /* inputs */
    int *inputs, *targets;
    gpu::EmbBuckets bk;
    int *h_in, *h_tg, *h_uniq, *h_offs, *h_plan, *h_count, *d_plan;
    /* packed documents (host->reset_attention / reset_positions): document_starts of the batch, and for
       GPT-2's dwpe the rows' plan by position (pbk, like bk by token); NULL when both are off */
    int *doc_start, *tok_pos;
    gpu::EmbBuckets pbk;
    int *h_doc, *h_tpos, *h_pplan, *d_pplan;
    cudaEvent_t upload_done;
    int cur_B, cur_T, num_valid, has_targets;
    int logits_r0;               /* first row of the chunk of logits in g.logits */
    double *red;                 /* [4] device: [0] grad sumsq, [1] loss accumulator, [2] stop flag */
    double *norm_parts;
    /* the optimizer step's decisions, made on the device (step_decide_kernel), and its outcome for the host */
    AdamCtl *ctl;                /* device: what AdamW reads */
    int *updates;                /* device: the AdamW updates made so far (t of the last one) */
    float *bc1, *bc2;            /* device [bc_cap]: 1 - beta1^t, 1 - beta2^t (host powf), for bc_beta1/2 */
    int bc_cap; float bc_beta1, bc_beta2;
    StepOut *step_out, *h_step_out;   /* device [2], pinned host [2]: step s in slot s % 2 */
    cudaEvent_t step_done[2];    /* recorded after step s's last operation, in slot s % 2 */
    cudaStream_t stream;
    /* ZeRO-1 over NCCL: the reduction of layer l's gradient pieces (zero_grad_pieces; l == L: the rest) goes on
       comm_stream as soon as the backward has passed layer l; comm_done tells the compute stream it is over */
    ncclComm_t comm;             /* NULL: one rank, no NCCL */
    /* tensor parallelism (host->tp: host is this rank's slice of the model; tp 1: none). Megatron's layout
       (llmtrain.h, tp_config): V and the kernels' sizes are this rank's; vocab_begin its first vocabulary row. With
       sequence parallelism (cur_sp, set by each forward) the norms and residuals run on the rows [r0, r0 + R). */
    int tp, tp_rank, sp, cur_sp, R, r0, vocab_begin, Vfull;
    ncclComm_t tp_comm, kv_comm, world_comm;
    /* pipeline parallelism (host->pp): this stage's layers only; embed: the embedding is here (else the forward
       starts from the stage input received into encoded, and the backward leaves its gradient in dres); head: the
       final norm, the lm_head and the loss are here (else the backward starts from the gradient received into
       dres). With tied embeddings the last stage holds a copy of wte whose gradient is summed over emb_comm. */
    int pp, embed, head;
    ncclComm_t emb_comm;
    size_t *norm_ranges;         /* [2 * n_norm_ranges]: the device layout's [begin, end) this rank counts in the grad
                                    norm (tp_grad_sumsq's owned runs) */
    int n_norm_ranges;
    float *ce_part, *ce_parts, *ce_lse;   /* the vocabulary-parallel cross-entropy of a chunk: [2][rows], [tp][2][rows],
                                             [rows] */
    int overlap, reduced;        /* reduced: this step's gradients are already in their shards */
    ShardPiece *pieces;          /* layer l's pieces are pieces[piece_start[l] .. piece_start[l + 1]) */
    int *piece_start;
    cudaStream_t comm_stream;
    cudaEvent_t *layer_done, comm_done;
    void *allocs[96]; size_t alloc_sizes[96]; int nallocs;
};

template <typename floatX> static void *gm_alloc(GModel<floatX> &g, size_t bytes) {
    if (bytes == 0) return NULL;
    if (g.nallocs >= 96) die("too many device buffers");
    void *p = dev_alloc(bytes);
    g.allocs[g.nallocs] = p; g.alloc_sizes[g.nallocs++] = bytes;
    return p;
}
#define GM_ALLOC(g, type, n) ((type *)gm_alloc(g, (size_t)(n) * sizeof(type)))

typedef struct {
    int recompute;       /* 0: keep every activation; 1: recompute GELU/SwiGLU outputs; 2: also the norms' outputs */
    int plain_attn;      /* 1: the plain attention kernels even where tensor-core ones exist */
    int fuse_gelu;       /* 1: GELU in cuBLASLt's epilogue (GELU models) */
    size_t logits_bytes; /* bound on the classifier's chunk of logits (0: 512 MiB) */
    int overlap;         /* with NCCL: reduce each layer's gradients while the backward goes on (else one
                            reduce-scatter after it) */
    int zero;            /* 1 or 2 (2 needs NCCL: keeps only this rank's shard of the summed gradients) */
} GOptions;

/* ZeRO-1 layout of n values over world ranks: the header's zero_shard (ceil(n / world) each, the last one shorter)
   with every shard padded to that size, so the NCCL collectives see equal counts: rank r owns
   [begin, begin + shard) of a buffer of padded = shard * world values, whose tail past n stays zero (AdamW never
   touches it: the tensors end at n). */
static void zero_layout(size_t n, int world, int rank, size_t *shard, size_t *padded, size_t *begin) {
    size_t zb, ze;
    zero_shard(n, world, rank, &zb, &ze);
    *shard = (n + world - 1) / world;
    *padded = *shard * world;
    *begin = *shard * rank;
    if (ze > zb && zb != *begin) die("shard layout disagrees with zero_shard");
}

/* ZeRO-2's gradient buffers: a per-layer tensor's slice of one layer sits at off[t] in a layer buffer of
   *layer_floats; a tensor outside the layers at off[t] in the outer buffer of *outer_floats. */
static void zero2_layout(const Model *m, size_t *off, size_t *layer_floats, size_t *outer_floats) {
    int L = m->cfg.n_layer;
    *layer_floats = 0; *outer_floats = 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        off[t] = 0;
        if (!m->param_sizes[t]) continue;
        if (param_is_per_layer(t)) { off[t] = *layer_floats; *layer_floats += m->param_sizes[t] / L; }
        else { off[t] = *outer_floats; *outer_floats += m->param_sizes[t]; }
    }
}

/* where piece p of layer l (l == L: outside the layers) sits in its ZeRO-2 buffer */
static size_t zero2_piece_offset(const Model *m, const size_t *off, const ShardPiece *p, int l) {
    size_t in_tensor = p->begin - m->param_offsets[p->tensor];
    if (l == m->cfg.n_layer) return off[p->tensor] + in_tensor;
    return off[p->tensor] + in_tensor - (size_t)l * (m->param_sizes[p->tensor] / m->cfg.n_layer);
}

/* The embedding backward's buckets: a stable counting sort of the positions n of tokens[0..N) by token id, the
   tokens in [v0, v0 + V) only (the others are left out). uniq[u] is the u-th distinct token (in order of first
   appearance), its positions are pos[offs[u]..offs[u+1]) in increasing order. count[0..v0 + V) must be zero on
   entry and is zero again on return. Returns the number of distinct tokens. */
static int emb_buckets_build(const int *tokens, int N, int *count, int *uniq, int *offs, int *pos, int v0, int V) {
    int nu = 0;
    for (int n = 0; n < N; n++)
        if (tokens[n] - v0 >= 0 && tokens[n] - v0 < V && count[tokens[n]]++ == 0) uniq[nu++] = tokens[n];
    offs[0] = 0;
    for (int u = 0; u < nu; u++) { offs[u + 1] = offs[u] + count[uniq[u]]; count[uniq[u]] = offs[u]; }
    for (int n = 0; n < N; n++) if (tokens[n] - v0 >= 0 && tokens[n] - v0 < V) pos[count[tokens[n]]++] = n;
    for (int u = 0; u < nu; u++) count[uniq[u]] = 0;
    return nu;
}

/* The embedding backward's plan (see gpu::EmbBuckets) in h[0 .. emb_plan_ints(N)): the buckets of the tokens, each
   run of positions cut into chunks of EMB_CHUNK in order; a run of one chunk adds straight to its row, a longer
   one goes through partial slots. uniq, offs: scratch of N and N + 1; count as for emb_buckets_build. The pointers of
   *bk are set to dev (the device copy of h, which the caller makes). Tensor parallel: only the tokens of the rows
   [v0, v0 + V) this rank holds get chunks, which add to row token - v0 (embedding_backward_shard). */
static size_t emb_plan_cap(int N) { return (size_t)N + 2 * ((size_t)N / EMB_CHUNK) + 2; }
static size_t emb_plan_ints(int N) { return (size_t)N + 4 * emb_plan_cap(N); }
static size_t emb_plan_partials(int N) { return 2 * ((size_t)N / EMB_CHUNK) + 1; }
static void emb_plan_build(const int *tokens, int N, int *count, int *uniq, int *offs, int *h, int *dev, gpu::EmbBuckets *bk,
                           int v0 = 0, int V = INT_MAX) {
    size_t cap = emb_plan_cap(N);
    int *pos = h, *cbeg = h + N, *cdst = cbeg + cap, *ltok = cdst + cap, *lfirst = ltok + cap;
    for (size_t i = 0; i < N + 4 * cap; i++) h[i] = 0;   /* copied whole: no entry left unset */
    int nu = emb_buckets_build(tokens, N, count, uniq, offs, pos, v0, V);
    int nc = 0, nl = 0, slots = 0;
    lfirst[0] = 0;
    for (int u = 0; u < nu; u++) {
        int len = offs[u + 1] - offs[u];
        if (len <= EMB_CHUNK) { cbeg[nc] = offs[u]; cdst[nc++] = uniq[u] - v0; continue; }
        for (int j = offs[u]; j < offs[u + 1]; j += EMB_CHUNK) { cbeg[nc] = j; cdst[nc++] = -1 - slots++; }
        ltok[nl] = uniq[u] - v0;
        lfirst[++nl] = slots;
    }
    cbeg[nc] = offs[nu];
    bk->nchunks = nc; bk->nlong = nl;
    bk->pos = dev; bk->cbeg = dev + N; bk->cdst = bk->cbeg + cap; bk->ltok = bk->cdst + cap; bk->lfirst = bk->ltok + cap;
}

/* tp_grad_sumsq's owned runs of the host slice (merged where they touch) in the device layout: a run lies in one
   tensor, at the same place in it in both layouts */
template <typename floatX>
static void tp_norm_ranges(GModel<floatX> &g, const Model *host) {
    size_t n = tp_runs(host, NULL);
    TPRun *runs = (TPRun *)malloc(n * sizeof(TPRun));
    g.norm_ranges = (size_t *)malloc(2 * n * sizeof(size_t));
    if (!runs || !g.norm_ranges) die("out of memory for the tensor-parallel layout");
    tp_runs(host, runs);
    g.n_norm_ranges = 0;
    for (size_t i = 0; i < n; i++) {
        if (!runs[i].owner) continue;
        int t = 0;
        while (runs[i].local >= host->param_offsets[t] + host->param_sizes[t]) t++;
        size_t b = g.lay.param_offsets[t] + (runs[i].local - host->param_offsets[t]), e = b + runs[i].len;
        if (g.n_norm_ranges > 0 && g.norm_ranges[2 * g.n_norm_ranges - 1] == b) g.norm_ranges[2 * g.n_norm_ranges - 1] = e;
        else { g.norm_ranges[2 * g.n_norm_ranges] = b; g.norm_ranges[2 * g.n_norm_ranges + 1] = e; g.n_norm_ranges++; }
    }
    free(runs);
}

/* The activations of one forward of up to N = B x T rows, and what its backward reads of them (a per-layer buffer
   kept only once under --recompute has layer stride 0); the batch's tokens, targets and embedding-backward plans.
   gmodel_build makes one set; a pipeline stage one more per micro-batch it keeps alive (gmodel_view). */
template <typename floatX>
static void gmodel_alloc_acts(GModel<floatX> &g, size_t N) {
    size_t C = g.C, L = g.L;
    const ModelConfig *c = &g.cfg;
    g.encoded = GM_ALLOC(g, floatX, N * C);
    g.ln1 = GM_ALLOC(g, floatX, g.ln_layers * N * C);
    g.ln1_mean = g.layernorm ? GM_ALLOC(g, float, L * N) : NULL;
    g.ln1_rstd = GM_ALLOC(g, float, L * N);
    g.qkv = GM_ALLOC(g, floatX, L * N * g.QKV);
    if (c->qk_norm) {
        g.qn = GM_ALLOC(g, floatX, L * N * g.QD); g.kn = GM_ALLOC(g, floatX, L * N * g.KD);
        g.qn_rstd = GM_ALLOC(g, float, L * N * g.NH); g.kn_rstd = GM_ALLOC(g, float, L * N * g.NKV);
    }
    g.atty = GM_ALLOC(g, floatX, L * N * g.QD);
    g.lse = GM_ALLOC(g, float, L * N * g.NH);
    g.resid2 = GM_ALLOC(g, floatX, L * N * C);
    g.ln2 = GM_ALLOC(g, floatX, g.ln_layers * N * C);
    g.ln2_mean = g.layernorm ? GM_ALLOC(g, float, L * N) : NULL;
    g.ln2_rstd = GM_ALLOC(g, float, L * N);
    g.fch = GM_ALLOC(g, floatX, L * N * g.FC);
    g.fch_act = GM_ALLOC(g, floatX, g.act_layers * N * g.F);
    g.resid3 = GM_ALLOC(g, floatX, L * N * C);
    g.lnf = g.dlnf = NULL; g.lnf_mean = g.lnf_rstd = NULL;
    if (g.head) {   /* the final norm, and its gradient from the classifier (which runs in the forward) */
        g.lnf = GM_ALLOC(g, floatX, N * C);
        g.lnf_mean = g.layernorm ? GM_ALLOC(g, float, N) : NULL;
        g.lnf_rstd = GM_ALLOC(g, float, N);
        g.dlnf = GM_ALLOC(g, floatX, N * C);
    }
    g.inputs = GM_ALLOC(g, int, N);
    g.targets = GM_ALLOC(g, int, N);
    g.d_plan = GM_ALLOC(g, int, emb_plan_ints(N));
    g.bk.part = GM_ALLOC(g, float, emb_plan_partials(N) * C);
    g.doc_start = g.tok_pos = g.d_pplan = NULL;
    memset(&g.pbk, 0, sizeof(g.pbk));
    if (g.host->reset_attention || g.host->reset_positions) {
        g.doc_start = GM_ALLOC(g, int, N);
        g.tok_pos = GM_ALLOC(g, int, N);
        if (g.host->reset_positions && g.wpe) {
            g.d_pplan = GM_ALLOC(g, int, emb_plan_ints(N));
            g.pbk.part = GM_ALLOC(g, float, emb_plan_partials(N) * C);
        }
    }
}

/* Builds the device model for host (whose weights need not be set yet) and batches up to B x T. */
template <typename floatX>
void gmodel_build(GModel<floatX> &g, Model *host, int B, int T, const GOptions &o, const Dist &d, cudaStream_t stream) {
    memset(&g, 0, sizeof(g));
    const ModelConfig *c = &host->cfg;
    g.cfg = *c; g.host = host; g.Bmax = B; g.Tmax = T; g.stream = stream;
    g.C = c->n_embd; g.NH = c->n_head; g.NKV = c->n_kv_head; g.HD = c->head_dim; g.F = c->d_ff; g.L = c->n_layer;
    g.QD = g.NH * g.HD; g.KD = g.NKV * g.HD; g.QKV = g.QD + 2 * g.KD;
    g.layernorm = c->norm == NORM_LAYERNORM; g.gelu = c->act == ACT_GELU_TANH;
    g.rope = c->positions == POS_ROPE; g.wpe = c->positions == POS_LEARNED;
    g.FC = g.gelu ? g.F : 2 * g.F; g.V = c->vocab_size; g.Vp = (g.V + 127) / 128 * 128;
    g.recompute = o.recompute; g.plain_attn = o.plain_attn; g.fuse_gelu = o.fuse_gelu && g.gelu;
    g.rank = d.rank; g.world = d.world;
    const TensorParallel *tp = &host->tp;
    g.tp = tp->size > 1 ? tp->size : 1; g.tp_rank = g.tp > 1 ? tp->rank : 0; g.sp = g.tp > 1 && tp->sp;
    g.vocab_begin = g.tp > 1 ? tp->vocab_begin : 0; g.Vfull = g.tp > 1 ? tp->full.vocab_size : g.V;
    g.tp_comm = d.tp_comm; g.kv_comm = tp->kv_share > 1 ? d.kv_comm : NULL; g.world_comm = d.gcomm;
    if (g.tp > 1 && (!g.tp_comm || !g.world_comm || (tp->kv_share > 1 && !g.kv_comm)))
        die("tensor parallelism needs its communicators (dist_split)");
    g.pp = host->pp.size > 1 ? host->pp.size : 1; g.embed = host->pp.embed; g.head = host->pp.head;
    g.emb_comm = g.pp > 1 && c->tie_embeddings ? d.emb_comm : NULL;
    if (g.pp > 1 && (!g.world_comm || ((g.embed || g.head) && c->tie_embeddings && !g.emb_comm)))
        die("pipeline parallelism needs its communicators (dist_split)");
    if (g.C % 8 || g.F % 8 || g.HD % 8)
        die("the GPU kernels need hidden size, MLP width and head dim divisible by 8 (got %d, %d, %d%s)", g.C, g.F, g.HD,
            g.tp > 1 ? "; the MLP width is this rank's share with --tp" : "");
    /* parameters: the header's layout with the vocabulary padded to Vp (the lm_head matmul's M a multiple of 128),
       padded to world equal shards */
    ModelConfig pc = *c;
    pc.vocab_size = g.Vp;
    g.lay.cfg = pc;
    g.lay.pp = host->pp;
    param_sizes(&pc, &host->pp, g.lay.param_sizes);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) { g.lay.param_offsets[t] = g.lay.num_params; g.lay.num_params += g.lay.param_sizes[t]; }
    g.nparams = g.lay.num_params;
    zero_layout(g.nparams, d.world, d.rank, &g.shard, &g.padded, &g.shard_begin);
    g.zero2 = o.zero == 2;
    if (g.zero2 && !d.comm) die("ZeRO-2 reduces through NCCL: it needs a communicator (with one rank, --nccl 1)");
    g.params = GM_ALLOC(g, floatX, g.padded);
    g.master = GM_ALLOC(g, float, g.shard);
    g.mom = GM_ALLOC(g, float, g.shard);
    g.vel = GM_ALLOC(g, float, g.shard);
    /* Every copy and memset below goes on `stream`: the trainer's stream is non-blocking, so work on the legacy
       default stream (plain cudaMemset / cudaMemcpy) would not be ordered before the kernels that read it. */
    CUDA_CHECK(cudaMemsetAsync(g.params, 0, g.padded * sizeof(floatX), stream));
    CUDA_CHECK(cudaMemsetAsync(g.mom, 0, g.shard * sizeof(float), stream));
    CUDA_CHECK(cudaMemsetAsync(g.vel, 0, g.shard * sizeof(float), stream));
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) g.pt[t] = g.lay.param_sizes[t] ? g.params + g.lay.param_offsets[t] : NULL;
    if (!g.zero2) {
        g.grads = GM_ALLOC(g, float, g.padded);
        CUDA_CHECK(cudaMemsetAsync(g.grads, 0, g.padded * sizeof(float), stream));
        g.gshard = g.grads + g.shard_begin;
        for (int t = 0; t < NUM_PARAM_TENSORS; t++) g.gt[t] = g.lay.param_sizes[t] ? g.grads + g.lay.param_offsets[t] : NULL;
        g.stage = g.grads; g.stage_floats = g.padded;   /* free between steps */
    } else {
        zero2_layout(&g.lay, g.lbuf_off, &g.layer_floats, &g.outer_floats);
        g.gshard = GM_ALLOC(g, float, g.shard);
        g.outer = GM_ALLOC(g, float, g.outer_floats);
        for (int i = 0; i < 2; i++) g.lbuf[i] = GM_ALLOC(g, float, g.layer_floats);
        for (int t = 0; t < NUM_PARAM_TENSORS; t++)
            g.gt[t] = g.lay.param_sizes[t] && !param_is_per_layer(t) ? g.outer + g.lbuf_off[t] : NULL;
        CUDA_CHECK(cudaMemsetAsync(g.gshard, 0, g.shard * sizeof(float), stream));
        CUDA_CHECK(cudaMemsetAsync(g.outer, 0, g.outer_floats * sizeof(float), stream));
        for (int i = 0; i < 2; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g.lbuf_free[i], cudaEventDisableTiming));
        /* staging in pieces of at most 64 MiB, a whole number of per-rank parts for the gathers */
        size_t want = (size_t)16 << 20, per = want / d.world > 0 ? want / d.world : 1;
        g.stage_floats = per * d.world < g.padded ? per * d.world : g.padded;
        g.stage = GM_ALLOC(g, float, g.stage_floats);
    }
    /* activations (gmodel_alloc_acts), and the buffers a forward or backward uses only while it runs */
    size_t N = (size_t)B * T, C = g.C;
    g.ln_layers = o.recompute >= 2 ? 1 : g.L;
    g.act_layers = o.recompute >= 1 ? 1 : g.L;
    gmodel_alloc_acts(g, N);
    if (c->qk_norm) { g.dqn = GM_ALLOC(g, floatX, N * g.QD); g.dkn = GM_ALLOC(g, floatX, N * g.KD); }
    g.proj = GM_ALLOC(g, floatX, N * C);
    size_t lb = o.logits_bytes ? o.logits_bytes : ((size_t)512 << 20);
    /* tensor parallel: the chunks of every rank of the group the same (their collectives meet), sized by the first
       rank's vocabulary rows, the most */
    size_t vrows = g.tp > 1 ? ((size_t)(g.Vfull + g.tp - 1) / g.tp + 127) / 128 * 128 : (size_t)g.Vp;
    size_t rows = lb / (vrows * sizeof(floatX));
    if (rows < 1) rows = 1;
    if (rows > N) rows = N;
    g.chunk_rows = (int)rows;
    g.logits = g.head ? GM_ALLOC(g, floatX, rows * g.Vp) : NULL;   /* a pipeline's last stage only */
    g.losses = GM_ALLOC(g, float, N);
    if (g.tp > 1) {
        g.ce_part = GM_ALLOC(g, float, 2 * rows);
        g.ce_parts = GM_ALLOC(g, float, (size_t)g.tp * 2 * rows);
        g.ce_lse = GM_ALLOC(g, float, rows);
    }
    if (g.tp > 1 || g.pp > 1) tp_norm_ranges(g, host);
    g.dres = GM_ALLOC(g, float, N * C);
    g.dres_t = GM_ALLOC(g, floatX, N * C);
    g.dfch_act = GM_ALLOC(g, floatX, N * g.F);
    g.dfch = GM_ALLOC(g, floatX, N * g.FC);
    g.dln = GM_ALLOC(g, floatX, N * C);
    g.datty = GM_ALLOC(g, floatX, N * g.QD);
    g.dqkv = GM_ALLOC(g, floatX, N * g.QKV);
    g.delta = GM_ALLOC(g, float, N * g.NH);
    size_t widest = C > (size_t)g.QKV ? C : (size_t)g.QKV;
    if ((size_t)g.FC > widest) widest = g.FC;
    g.scratch = GM_ALLOC(g, float, 2 * (size_t)COLSUM_MAX_RB * widest);
    if (g.rope) {
        size_t half = g.HD / 2;
        float *cs = (float *)malloc(T * half * sizeof(float)), *sn = (float *)malloc(T * half * sizeof(float));
        rope_init(cs, sn, c, T);
        g.rope_cos = GM_ALLOC(g, float, T * half);
        g.rope_sin = GM_ALLOC(g, float, T * half);
        CUDA_CHECK(cudaMemcpyAsync(g.rope_cos, cs, T * half * sizeof(float), cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaMemcpyAsync(g.rope_sin, sn, T * half * sizeof(float), cudaMemcpyHostToDevice, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));   /* before cs, sn are freed */
        free(cs); free(sn);
    }
    CUDA_CHECK(cudaMallocHost(&g.h_in, N * sizeof(int)));
    CUDA_CHECK(cudaMallocHost(&g.h_tg, N * sizeof(int)));
    g.h_uniq = (int *)malloc(N * sizeof(int));
    g.h_offs = (int *)malloc((N + 1) * sizeof(int));
    CUDA_CHECK(cudaMallocHost(&g.h_plan, emb_plan_ints(N) * sizeof(int)));
    g.h_count = (int *)calloc(g.Vfull > T ? g.Vfull : T, sizeof(int));   /* counts tokens, or positions (pbk) */
    g.h_doc = g.h_tpos = g.h_pplan = NULL;
    if (host->reset_attention || host->reset_positions) {
        CUDA_CHECK(cudaMallocHost(&g.h_doc, N * sizeof(int)));
        CUDA_CHECK(cudaMallocHost(&g.h_tpos, N * sizeof(int)));
        if (g.d_pplan) CUDA_CHECK(cudaMallocHost(&g.h_pplan, emb_plan_ints(N) * sizeof(int)));
    }
    CUDA_CHECK(cudaEventCreateWithFlags(&g.upload_done, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(g.upload_done, stream));
    g.red = GM_ALLOC(g, double, 4);
    g.norm_parts = GM_ALLOC(g, double, SUMSQ_BLOCKS);
    CUDA_CHECK(cudaMemsetAsync(g.red, 0, 4 * sizeof(double), stream));
    g.ctl = GM_ALLOC(g, AdamCtl, 1);
    g.updates = GM_ALLOC(g, int, 1);
    g.step_out = GM_ALLOC(g, StepOut, 2);
    CUDA_CHECK(cudaMemsetAsync(g.ctl, 0, sizeof(AdamCtl), stream));
    CUDA_CHECK(cudaMemsetAsync(g.updates, 0, sizeof(int), stream));
    CUDA_CHECK(cudaMemsetAsync(g.step_out, 0, 2 * sizeof(StepOut), stream));
    CUDA_CHECK(cudaMallocHost(&g.h_step_out, 2 * sizeof(StepOut)));
    for (int i = 0; i < 2; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g.step_done[i], cudaEventDisableTiming));
    /* the gradient pieces of each layer, and the stream that reduces them */
    g.comm = d.comm;
    g.overlap = (o.overlap || g.zero2) && d.comm;   /* ZeRO-2 reduces layer by layer always */
    if (g.overlap) {
        g.piece_start = (int *)malloc((g.L + 2) * sizeof(int));
        int total = 0;
        for (int l = 0; l <= g.L; l++) { g.piece_start[l] = total; total += zero_grad_pieces(&g.lay, l, d.world, NULL, 0); }
        g.piece_start[g.L + 1] = total;
        g.pieces = (ShardPiece *)malloc((size_t)total * sizeof(ShardPiece));
        for (int l = 0; l <= g.L; l++)
            zero_grad_pieces(&g.lay, l, d.world, g.pieces + g.piece_start[l], g.piece_start[l + 1] - g.piece_start[l]);
        int lo, hi;
        CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
        CUDA_CHECK(cudaStreamCreateWithPriority(&g.comm_stream, cudaStreamNonBlocking, hi));   /* ahead of the compute */
        g.layer_done = (cudaEvent_t *)malloc((g.L + 1) * sizeof(cudaEvent_t));
        for (int l = 0; l <= g.L; l++) CUDA_CHECK(cudaEventCreateWithFlags(&g.layer_done[l], cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&g.comm_done, cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <typename floatX>
void gmodel_free(GModel<floatX> &g) {
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
    for (int i = 0; i < g.nallocs; i++) dev_free(g.allocs[i], g.alloc_sizes[i]);
    cudaFreeHost(g.h_in); cudaFreeHost(g.h_tg); free(g.h_uniq); free(g.h_offs); cudaFreeHost(g.h_plan);
    cudaFreeHost(g.h_doc); cudaFreeHost(g.h_tpos); cudaFreeHost(g.h_pplan);
    free(g.h_count);
    cudaEventDestroy(g.upload_done);
    cudaFreeHost(g.h_step_out);
    for (int i = 0; i < 2; i++) cudaEventDestroy(g.step_done[i]);
    dev_free(g.bc1, (size_t)g.bc_cap * sizeof(float)); dev_free(g.bc2, (size_t)g.bc_cap * sizeof(float));
    if (g.overlap) {
        CUDA_CHECK(cudaStreamSynchronize(g.comm_stream));
        for (int l = 0; l <= g.L; l++) cudaEventDestroy(g.layer_done[l]);
        cudaEventDestroy(g.comm_done);
        if (g.zero2) for (int i = 0; i < 2; i++) cudaEventDestroy(g.lbuf_free[i]);
        cudaStreamDestroy(g.comm_stream);
        free(g.layer_done); free(g.pieces); free(g.piece_start);
    }
    free(g.norm_ranges);
    memset(&g, 0, sizeof(g));
}

/* Another micro-batch alive on a pipeline stage (1F1B keeps up to warm + 1; train.c's model_view): v has its own
   activations (gmodel_alloc_acts) and shares everything else with g, its weights, gradients, optimizer state,
   scratch, streams and events. */
template <typename floatX>
static void gmodel_view(GModel<floatX> &v, const GModel<floatX> &g) {
    v = g;
    v.nallocs = 0;   /* gmodel_view_free frees only what is its own */
    gmodel_alloc_acts(v, (size_t)g.Bmax * g.Tmax);
}

template <typename floatX>
static void gmodel_view_free(GModel<floatX> &v) {
    CUDA_CHECK(cudaStreamSynchronize(v.stream));
    for (int i = 0; i < v.nallocs; i++) dev_free(v.allocs[i], v.alloc_sizes[i]);
    memset(&v, 0, sizeof(v));
}

/* the seed of the stochastic rounding of AdamW step `step` (1-based count of updates) */
static uint64_t sr_seed_of(uint64_t seed, int step) { return rng_u64(seed ^ 0x5EEDB16ULL, (uint64_t)step); }

/* host values src[0..nparams) (zero past them) staged onto the device a piece of at most stage_floats at a time:
   the floatX weights (when params_out: rounded to nearest, or stochastically with sr_seed) and this rank's shard into
   shard_out. Stream-ordered on g.stream. */
template <typename floatX>
static void upload_staged(GModel<floatX> &g, const float *src, floatX *params_out, int sr, uint64_t sr_seed, float *shard_out) {
    cudaStream_t s = g.stream;
    size_t sb = g.shard_begin, se = g.shard_begin + g.shard;
    for (size_t c0 = 0; c0 < g.padded; c0 += g.stage_floats) {
        size_t len = g.padded - c0 < g.stage_floats ? g.padded - c0 : g.stage_floats;
        size_t have = c0 >= g.nparams ? 0 : (g.nparams - c0 < len ? g.nparams - c0 : len);
        if (have < len) CUDA_CHECK(cudaMemsetAsync(g.stage + have, 0, (len - have) * sizeof(float), s));
        if (have) CUDA_CHECK(cudaMemcpyAsync(g.stage, src + c0, have * sizeof(float), cudaMemcpyHostToDevice, s));
        if (params_out) {
            if (sr) sr_convert_kernel<floatX><<<ceil_div(len, 256), 256, 0, s>>>(params_out + c0, g.stage, len, sr_seed, c0);
            else convert_kernel<floatX><<<ceil_div(len, 256), 256, 0, s>>>(params_out + c0, g.stage, len);
            KERNEL_CHECK();
        }
        size_t lo = c0 > sb ? c0 : sb, hi = c0 + len < se ? c0 + len : se;
        if (lo < hi) CUDA_CHECK(cudaMemcpyAsync(shard_out + (lo - sb), g.stage + (lo - c0), (hi - lo) * sizeof(float),
                                                cudaMemcpyDeviceToDevice, s));
    }
}

/* host fp32 weights (g.host->params_memory) -> T weights everywhere (rounded to nearest, or with the stochastic
   rounding of AdamW step sr_step when > 0) and this rank's fp32 masters; the AdamW moments from
   g.host->m_memory / v_memory when present (a resumed run), else zero. Under ZeRO-1 the staging buffer is the
   fp32 grads (free between steps). */
/* host values in the host's layout <-> the device's (g.lay: the vocabulary rows padded with zeros). Returns src
   itself when the layouts are the same (the vocabulary a multiple of 128), else a new buffer (free it). */
template <typename floatX>
static float *to_device_layout(GModel<floatX> &g, float *src) {
    if (g.lay.num_params == g.host->num_params) return src;
    float *dst = (float *)calloc(g.lay.num_params, sizeof(float));
    if (!dst) die("out of host memory for the device layout of the weights");
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        memcpy(dst + g.lay.param_offsets[t], src + g.host->param_offsets[t], g.host->param_sizes[t] * sizeof(float));
    return dst;
}
template <typename floatX>
static void from_device_layout(GModel<floatX> &g, const float *src, float *dst) {
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)   /* the real rows only: the first param_sizes[t] of each tensor */
        memcpy(dst + g.host->param_offsets[t], src + g.lay.param_offsets[t], g.host->param_sizes[t] * sizeof(float));
}

template <typename floatX>
void gmodel_upload(GModel<floatX> &g, int sr_step = 0, uint64_t seed = 0) {
    /* all on g.stream (see gmodel_build), then one synchronize */
    cudaStream_t s = g.stream;
    float *src = to_device_layout(g, g.host->params_memory);
    upload_staged(g, src, g.params, sr_step > 0, sr_step > 0 ? sr_seed_of(seed, sr_step) : 0, g.master);
    CUDA_CHECK(cudaStreamSynchronize(s));   /* before src is freed */
    if (src != g.host->params_memory) free(src);
    float *hm[2] = {g.host->m_memory, g.host->v_memory}, *dm[2] = {g.mom, g.vel};
    for (int i = 0; i < 2; i++) {
        if (hm[i]) {
            src = to_device_layout(g, hm[i]);
            upload_staged<floatX>(g, src, NULL, 0, 0, dm[i]);
            CUDA_CHECK(cudaStreamSynchronize(s));
            if (src != hm[i]) free(src);
        } else CUDA_CHECK(cudaMemsetAsync(dm[i], 0, g.shard * sizeof(float), s));
    }
    if (g.stage == g.grads) CUDA_CHECK(cudaMemsetAsync(g.grads, 0, g.padded * sizeof(float), s));
    int updates = sr_step;   /* the AdamW updates the weights have had: the next one is update sr_step + 1 */
    CUDA_CHECK(cudaMemcpyAsync(g.updates, &updates, sizeof(int), cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
}

/* the shards of src (fp32 [shard] on every rank) gathered into dst[0..nparams) on the host, through the staging
   buffer: part k of every rank's shard at a time. Collective; a rank with dst NULL only contributes. */
template <typename floatX>
static void gather_shards(GModel<floatX> &g, const Dist &d, const float *src, float *dst) {
    cudaStream_t s = g.stream;
    size_t part = g.stage_floats / d.world;
    for (size_t k0 = 0; k0 < g.shard; k0 += part) {
        size_t cnt = g.shard - k0 < part ? g.shard - k0 : part;
        if (d.comm) NCCL_CHECK(ncclAllGather(src + k0, g.stage, cnt, ncclFloat, d.comm, s));
        else CUDA_CHECK(cudaMemcpyAsync(g.stage, src + k0, cnt * sizeof(float), cudaMemcpyDeviceToDevice, s));
        for (int r = 0; dst && r < d.world; r++) {   /* rank r's part lands at r * shard + k0 in the flat order */
            size_t at = (size_t)r * g.shard + k0;
            if (at >= g.nparams) break;
            size_t n = g.nparams - at < cnt ? g.nparams - at : cnt;
            CUDA_CHECK(cudaMemcpyAsync(dst + at, g.stage + (size_t)r * cnt, n * sizeof(float), cudaMemcpyDeviceToHost, s));
        }
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
}

/* gather_shards into dst in the host's layout on rank 0: through buf (the device's layout) when they differ */
template <typename floatX>
static void gather_to_host(GModel<floatX> &g, const Dist &d, const float *src, float *dst, float *buf) {
    int here = d.rank == 0;
    gather_shards(g, d, src, !here ? NULL : buf ? buf : dst);
    if (here && buf) from_device_layout(g, buf, dst);
}

/* device -> host on rank 0 (the one that writes checkpoints): the fp32 masters into g.host->params_memory, and
   with moments also m and v (allocated when absent). Collective: every rank calls it. Clobbers the grads under
   ZeRO-1 (call between steps). */
template <typename floatX>
void gmodel_download(GModel<floatX> &g, const Dist &d, int moments) {
    int here = d.rank == 0, same = g.lay.num_params == g.host->num_params;
    float *buf = here && !same ? (float *)malloc(g.lay.num_params * sizeof(float)) : NULL;
    if (here && !same && !buf) die("out of host memory for the device layout of the weights");
    gather_to_host(g, d, g.master, g.host->params_memory, buf);
    if (moments) {
        if (here && model_alloc_moments(g.host) != 0) die("out of host memory for the AdamW moments");
        gather_to_host(g, d, g.mom, g.host->m_memory, buf);
        gather_to_host(g, d, g.vel, g.host->v_memory, buf);
    }
    free(buf);
    if (g.stage == g.grads)   /* on the stream: ordered before the next step */
        CUDA_CHECK(cudaMemsetAsync(g.grads, 0, g.padded * sizeof(float), g.stream));
}

/* per-layer slices (stride 0 for a buffer kept once) */
template <typename P> static inline P *lay(P *base, int l, size_t per) { return base ? base + (size_t)l * per : NULL; }

/* Uploads a batch. With targets, also the embedding-backward buckets: a stable counting sort of the positions
   by token id. With packed documents (--reset-attention-mask, --reset-position-ids) also each row's document
   start and position (document_starts, EOD = the config's eos_token_id), and for GPT-2's learned positions the
   rows sorted by position. The pinned buffers are reused only after the previous upload has run. */
template <typename floatX>
static void gmodel_upload_batch(GModel<floatX> &g, const int *inputs, const int *targets, int B, int T) {
    if (B > g.Bmax || T > g.Tmax) die("batch %d x %d exceeds the allocated %d x %d", B, T, g.Bmax, g.Tmax);
    int N = B * T;
    for (int i = 0; i < N; i++)
        if (inputs[i] < 0 || inputs[i] >= g.Vfull) die("token id %d out of range for vocab size %d", inputs[i], g.Vfull);
    CUDA_CHECK(cudaEventSynchronize(g.upload_done));
    cudaStream_t s = g.stream;
    memcpy(g.h_in, inputs, N * sizeof(int));
    CUDA_CHECK(cudaMemcpyAsync(g.inputs, g.h_in, N * sizeof(int), cudaMemcpyHostToDevice, s));
    g.has_targets = targets != NULL;
    g.num_valid = 0;
    if (targets) {
        memcpy(g.h_tg, targets, N * sizeof(int));
        for (int i = 0; i < N; i++) g.num_valid += targets[i] >= 0;
        CUDA_CHECK(cudaMemcpyAsync(g.targets, g.h_tg, N * sizeof(int), cudaMemcpyHostToDevice, s));
        emb_plan_build(inputs, N, g.h_count, g.h_uniq, g.h_offs, g.h_plan, g.d_plan, &g.bk, g.vocab_begin, g.V);
        CUDA_CHECK(cudaMemcpyAsync(g.d_plan, g.h_plan, emb_plan_ints(N) * sizeof(int), cudaMemcpyHostToDevice, s));
    }
    if (g.doc_start) {
        document_starts(g.h_doc, g.h_tpos, inputs, B, T, g.host->eod);
        CUDA_CHECK(cudaMemcpyAsync(g.doc_start, g.h_doc, N * sizeof(int), cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaMemcpyAsync(g.tok_pos, g.h_tpos, N * sizeof(int), cudaMemcpyHostToDevice, s));
        if (targets && g.d_pplan) {   /* the rows bucketed by position, as bk buckets them by token */
            emb_plan_build(g.h_tpos, N, g.h_count, g.h_uniq, g.h_offs, g.h_pplan, g.d_pplan, &g.pbk);
            CUDA_CHECK(cudaMemcpyAsync(g.d_pplan, g.h_pplan, emb_plan_ints(N) * sizeof(int), cudaMemcpyHostToDevice, s));
        }
    }
    CUDA_CHECK(cudaEventRecord(g.upload_done, s));
    g.cur_B = B; g.cur_T = T;
}

template <typename floatX> static AttnArgs<floatX> attn_args(GModel<floatX> &g, int l) {
    size_t N = (size_t)g.cur_B * g.cur_T;
    AttnArgs<floatX> a;
    memset(&a, 0, sizeof(a));
    floatX *qkv = g.qkv + (size_t)l * N * g.QKV;
    if (g.cfg.qk_norm) { a.q = g.qn + (size_t)l * N * g.QD; a.ldq = g.QD; a.k = g.kn + (size_t)l * N * g.KD; a.ldk = g.KD; }
    else { a.q = qkv; a.ldq = g.QKV; a.k = qkv + g.QD; a.ldk = g.QKV; }
    a.v = qkv + g.QD + g.KD; a.ldv = g.QKV;
    a.out = g.atty + (size_t)l * N * g.QD; a.ldo = g.QD;
    a.lse = g.lse + (size_t)l * N * g.NH;
    a.cos = g.rope_cos; a.sin = g.rope_sin;
    a.B = g.cur_B; a.T = g.cur_T; a.NH = g.NH; a.NKV = g.NKV; a.HD = g.HD;
    a.dout = g.datty; a.lddo = g.QD;
    if (g.cfg.qk_norm) { a.dq = g.dqn; a.lddq = g.QD; a.dk = g.dkn; a.lddk = g.KD; }
    else { a.dq = g.dqkv; a.lddq = g.QKV; a.dk = g.dqkv + g.QD; a.lddk = g.QKV; }
    a.dv = g.dqkv + g.QD + g.KD; a.lddv = g.QKV;
    a.delta = g.delta;
    a.doc_start = g.host->reset_attention ? g.doc_start : NULL;   /* the batch's, as model_forward's */
    a.pos = g.host->reset_positions && g.rope ? g.tok_pos : NULL;   /* RoPE; a position table adds wpe[pos] instead */
    return a;
}

/* p + k, or NULL for NULL (a norm's mean, which RMSNorm has not) */
template <typename P> static inline P *rows_at(P *p, size_t k) { return p ? p + k : NULL; }

/* Tensor parallelism's f and g (llmtrain.h, tp_enter / tp_leave) on a [B*T, C] buffer of the current batch, in
   place over the group on the compute stream:
     tp_sum_rows     (tp_leave forward, tp_enter backward): the all-reduce of the ranks' partial sums; sequence
                     parallel: the reduce-scatter that leaves this rank the sums of its rows [r0, r0 + R)
     tp_gather_rows  (tp_enter forward, tp_leave backward): sequence parallel only, the all-gather of the ranks' rows
   One rank: nothing. */
template <typename floatX>
static void tp_sum_rows(GModel<floatX> &g, floatX *y) {
    if (g.tp == 1) return;
    size_t n = (size_t)g.cur_B * g.cur_T * g.C;
    if (g.cur_sp) NCCL_CHECK(ncclReduceScatter(y, y + (size_t)g.r0 * g.C, n / g.tp, nccl_type<floatX>(), ncclSum, g.tp_comm, g.stream));
    else NCCL_CHECK(ncclAllReduce(y, y, n, nccl_type<floatX>(), ncclSum, g.tp_comm, g.stream));
}
template <typename floatX, typename T>
static void tp_gather_rows(GModel<floatX> &g, T *x) {
    if (!g.cur_sp) return;
    NCCL_CHECK(ncclAllGather(x + (size_t)g.r0 * g.C, x, (size_t)g.R * g.C, nccl_type<T>(), g.tp_comm, g.stream));
}

/* the rows of the residual stream this rank keeps of a batch of N rows: all of them, or with sequence parallelism,
   when N splits into tp blocks, its block [r0, r0 + R); returns whether it is sequence-parallel */
template <typename floatX>
static int gmodel_rows(const GModel<floatX> &g, int N, int *R, int *r0) {
    int sp = g.sp && N % g.tp == 0;
    *R = sp ? N / g.tp : N;
    *r0 = sp ? g.tp_rank * *R : 0;
    return sp;
}

/* model_forward on the uploaded batch. With targets the per-row losses are summed into red[1] scaled by
   loss_acc_scale / num_valid (the mean loss of the batch, times the caller's scale). With backward_head the
   classifier also runs its backward, chunk by chunk (dloss = loss_scale / num_valid): the logits of a chunk are
   overwritten by their gradient, which gives dlnf and the lm_head gradient at once.
   Tensor parallel (as model_forward): the embedding of this rank's vocabulary rows summed over the group, the
   replicated biases of wo / wproj and wpe added on rank 0 only, the outputs of wo and wproj summed over the group,
   the vocabulary-parallel cross-entropy per chunk (each rank's lse and target logit all-gathered, then combined);
   with sequence parallelism the norms and residual adds on this rank's R rows from r0, their outputs all-gathered
   before the matmuls that read them. A pipeline stage (model_forward): without the embedding it starts from the
   input received into encoded; without the head it ends at its last layer's resid3, for the next stage. */
template <typename floatX>
void gmodel_forward(GModel<floatX> &g, int backward_head, float loss_scale, double loss_acc_scale, int accumulate_loss) {
    cudaStream_t s = g.stream;
    const ModelConfig *c = &g.cfg;
    int B = g.cur_B, T = g.cur_T, N = B * T, C = g.C;
    size_t NC = (size_t)N * C;
    int ln = g.layernorm, first = g.tp_rank == 0;   /* first: adds the replicated biases */
    g.cur_sp = gmodel_rows(g, N, &g.R, &g.r0);
    int R = g.R;
    size_t r0 = g.r0, o = r0 * C;
    if (g.embed) {
        gpu::embedding_forward_shard<floatX>(g.encoded, g.inputs, g.pt[P_WTE], g.vocab_begin, g.V, first ? g.pt[P_WPE] : NULL, B,
                                             T, C, s, g.host->reset_positions ? g.tok_pos : NULL);
        tp_sum_rows(g, g.encoded);
    }
    gpu::residual_norm_forward<floatX>(NULL, g.ln1 + o, rows_at(g.ln1_mean, r0), g.ln1_rstd + r0, g.encoded + o, NULL, 1, C,
                                       g.pt[P_LN1W], g.pt[P_LN1B], R, C, c->norm_eps, ln, s);
    for (int l = 0; l < g.L; l++) {
        const floatX *x = l == 0 ? g.encoded : g.resid3 + (l - 1) * NC;
        floatX *ln1 = lay(g.ln1, l, g.ln_layers > 1 ? NC : 0), *ln2 = lay(g.ln2, l, g.ln_layers > 1 ? NC : 0);
        floatX *qkv = g.qkv + (size_t)l * N * g.QKV;
        floatX *fch = g.fch + (size_t)l * N * g.FC, *fch_act = lay(g.fch_act, l, g.act_layers > 1 ? (size_t)N * g.F : 0);
        floatX *resid2 = g.resid2 + l * NC, *resid3 = g.resid3 + l * NC;
        tp_gather_rows(g, ln1);
        gpu::matmul_forward<floatX>(qkv, ln1, g.pt[P_WQKV] + (size_t)l * g.QKV * C, lay(g.pt[P_BQKV], l, g.QKV), N, C, g.QKV,
                               g.QKV, NULL, s);
        if (c->qk_norm) {
            gpu::residual_norm_forward<floatX>(NULL, g.qn + (size_t)l * N * g.QD, NULL, g.qn_rstd + (size_t)l * N * g.NH, qkv, NULL,
                                 g.NH, g.QKV, g.pt[P_QNW] + l * g.HD, NULL, N * g.NH, g.HD, c->norm_eps, 0, s);
            gpu::residual_norm_forward<floatX>(NULL, g.kn + (size_t)l * N * g.KD, NULL, g.kn_rstd + (size_t)l * N * g.NKV, qkv + g.QD,
                                 NULL, g.NKV, g.QKV, g.pt[P_KNW] + l * g.HD, NULL, N * g.NKV, g.HD, c->norm_eps, 0, s);
        }
        AttnArgs<floatX> a = attn_args(g, l);
        gpu::attention_forward<floatX>(a, g.plain_attn, s);
        gpu::matmul_forward<floatX>(g.proj, a.out, g.pt[P_WO] + (size_t)l * C * g.QD, first ? lay(g.pt[P_BO], l, C) : NULL, N,
                                    g.QD, C, C, NULL, s);
        tp_sum_rows(g, g.proj);
        gpu::residual_norm_forward<floatX>(resid2 + o, ln2 + o, rows_at(lay(g.ln2_mean, l, N), r0), g.ln2_rstd + (size_t)l * N + r0,
                                           x + o, g.proj + o, 1, C, g.pt[P_LN2W] + l * C, lay(g.pt[P_LN2B], l, C), R, C,
                                           c->norm_eps, ln, s);
        tp_gather_rows(g, ln2);
        const floatX *wfc = g.pt[P_WFC] + (size_t)l * g.FC * C, *bfc = lay(g.pt[P_BFC], l, g.FC);
        if (g.fuse_gelu) {
            gpu::matmul_forward<floatX>(fch_act, ln2, wfc, bfc, N, C, g.FC, g.FC, fch, s);
        } else {
            gpu::matmul_forward<floatX>(fch, ln2, wfc, bfc, N, C, g.FC, g.FC, NULL, s);
            if (g.gelu) gpu::gelu_forward<floatX>(fch_act, fch, (size_t)N * g.F, s);
            else gpu::swiglu_forward<floatX>(fch_act, fch, N, g.F, s);
        }
        gpu::matmul_forward<floatX>(g.proj, fch_act, g.pt[P_WPROJ] + (size_t)l * C * g.F, first ? lay(g.pt[P_BPROJ], l, C) : NULL,
                                    N, g.F, C, C, NULL, s);
        tp_sum_rows(g, g.proj);
        /* resid3 = resid2 + proj, then the next layer's first norm (or the final norm; none on a stage before the
           last) */
        int last = l == g.L - 1;
        if (last && !g.head) { gpu::residual_forward<floatX>(resid3 + o, resid2 + o, g.proj + o, (size_t)R * C, s); break; }
        floatX *next_ln = last ? g.lnf : lay(g.ln1, l + 1, g.ln_layers > 1 ? NC : 0);
        float *nm = last ? g.lnf_mean : lay(g.ln1_mean, l + 1, N), *nr = last ? g.lnf_rstd : g.ln1_rstd + (size_t)(l + 1) * N;
        const floatX *nw = last ? g.pt[P_LNFW] : g.pt[P_LN1W] + (l + 1) * C;
        const floatX *nb = last ? g.pt[P_LNFB] : lay(g.pt[P_LN1B], l + 1, C);
        gpu::residual_norm_forward<floatX>(resid3 + o, next_ln + o, rows_at(nm, r0), nr + r0, resid2 + o, g.proj + o, 1, C, nw, nb,
                                           R, C, c->norm_eps, ln, s);
    }
    if (!g.head) return;
    tp_gather_rows(g, g.lnf);
    /* the classifier, in chunks of rows */
    const floatX *wlm = g.pt[P_LMHEAD] ? g.pt[P_LMHEAD] : g.pt[P_WTE];
    float *dwlm = g.gt[P_LMHEAD] ? g.gt[P_LMHEAD] : g.gt[P_WTE];
    float dloss = g.num_valid ? loss_scale / g.num_valid : 0.0f;
    for (int c0 = 0; c0 < N; c0 += g.chunk_rows) {
        int n = N - c0 < g.chunk_rows ? N - c0 : g.chunk_rows;
        gpu::matmul_forward<floatX>(g.logits, g.lnf + (size_t)c0 * C, wlm, (const floatX *)NULL, n, C, g.Vp, g.Vp, NULL, s);
        g.logits_r0 = c0;
        if (!g.has_targets) continue;   /* sampling: the last chunk stays in g.logits */
        if (g.tp == 1) {
            gpu::crossentropy_forward_backward<floatX>(g.logits, g.losses + c0, g.targets + c0, n, g.V, g.Vp, dloss, backward_head, s);
        } else {
            gpu::crossentropy_forward_shard<floatX>(g.ce_part, g.logits, g.targets + c0, n, g.V, g.Vp, g.vocab_begin, s);
            NCCL_CHECK(ncclAllGather(g.ce_part, g.ce_parts, 2 * (size_t)n, ncclFloat, g.tp_comm, s));
            gpu::crossentropy_combine(g.losses + c0, g.ce_lse, g.ce_parts, g.targets + c0, n, g.tp, s);
            if (backward_head)
                gpu::crossentropy_backward_shard<floatX>(g.logits, g.ce_lse, g.targets + c0, n, g.V, g.Vp, g.vocab_begin, dloss, s);
        }
        if (backward_head)
            gpu::matmul_backward<floatX>(g.dlnf + (size_t)c0 * C, dwlm, NULL, g.logits, g.lnf + (size_t)c0 * C, wlm, n, C, g.Vp,
                                    g.Vp, 0, NULL, g.scratch, s);
    }
    if (g.has_targets) {
        double sc = g.num_valid ? loss_acc_scale / g.num_valid : 0.0;
        sum_losses_kernel<<<1, 256, 0, s>>>(g.red + 1, g.losses, N, sc, accumulate_loss);
        KERNEL_CHECK();
    }
}

/* the gradient of layer l's slice of per-layer tensor t: in the flat buffer (ZeRO-1), or in layer buffer l % 2
   (ZeRO-2); NULL when the family has no such tensor */
template <typename floatX> static inline float *lgrad(GModel<floatX> &g, int t, int l) {
    if (!g.lay.param_sizes[t]) return NULL;
    if (g.zero2) return g.lbuf[l & 1] + g.lbuf_off[t];
    return g.gt[t] + (size_t)l * (g.lay.param_sizes[t] / g.L);
}

/* where the gradient values of a piece are on this rank (ZeRO-2: in the layer buffer, or in outer) */
template <typename floatX> static float *piece_grads(GModel<floatX> &g, const ShardPiece *p, int l) {
    if (!g.zero2) return g.grads + p->begin;
    return (l == g.L ? g.outer : g.lbuf[l & 1]) + zero2_piece_offset(&g.lay, g.lbuf_off, p, l);
}

/* ZeRO overlapped with the backward: once the backward has passed layer l (l == L: the whole backward, for the
   embeddings, final norm and lm_head), that layer's gradients are final, and NCCL reduces each of its pieces into
   its owner's shard on comm_stream while the compute stream goes on with layer l - 1. Every rank issues the same
   reduces in the same order (the pieces are the same everywhere).
   ZeRO-1: in place in the flat buffer, after the last micro-step. ZeRO-2: after every micro-step, from the layer
   buffer into gshard; the owner first adds what gshard holds from the earlier micro-steps to its own piece, so
   the reduce leaves the running sum there. */
template <typename floatX>
static void gmodel_reduce_layer(GModel<floatX> &g, int l) {
    CUDA_CHECK(cudaEventRecord(g.layer_done[l], g.stream));
    CUDA_CHECK(cudaStreamWaitEvent(g.comm_stream, g.layer_done[l], 0));
    int a = g.piece_start[l], b = g.piece_start[l + 1];
    if (g.zero2) {
        for (int i = a; i < b; i++) {
            const ShardPiece *p = &g.pieces[i];
            if (p->owner != g.rank) continue;
            size_t n = p->end - p->begin;
            add_kernel<<<ceil_div(n, 256), 256, 0, g.comm_stream>>>(piece_grads(g, p, l), g.gshard + (p->begin - g.shard_begin), n);
            KERNEL_CHECK();
        }
    }
    NCCL_CHECK(ncclGroupStart());
    for (int i = a; i < b; i++) {
        const ShardPiece *p = &g.pieces[i];
        float *src = piece_grads(g, p, l);
        float *dst = !g.zero2 ? src : p->owner == g.rank ? g.gshard + (p->begin - g.shard_begin) : src;   /* root only */
        NCCL_CHECK(ncclReduce(src, dst, p->end - p->begin, ncclFloat, ncclSum, p->owner, g.comm, g.comm_stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    if (g.zero2 && l < g.L) CUDA_CHECK(cudaEventRecord(g.lbuf_free[l & 1], g.comm_stream));
    if (l == g.L) {   /* the last: the compute stream (the optimizer step) waits for all of them */
        CUDA_CHECK(cudaEventRecord(g.comm_done, g.comm_stream));
        CUDA_CHECK(cudaStreamWaitEvent(g.stream, g.comm_done, 0));
        g.reduced = 1;
    }
}

/* model_tp_reduce_grads for layer l's slice (l == L: the tensors outside the layers), in place over the group on
   the compute stream, before the data-parallel reduction reads them: the gradients of replicated weights that each
   rank saw only part of. Qwen3's q/k norms (its heads); the k/v rows of wqkv and bqkv over the ranks that share the
   k/v head (kv_comm); with sequence parallelism the norms (its rows). */
template <typename floatX>
static void gmodel_tp_reduce_layer(GModel<floatX> &g, int l) {
    if (g.tp == 1) return;
    cudaStream_t s = g.stream;
    size_t C = g.C, HD = g.HD;
    /* over the group: (q/k norms,) with sequence parallelism the norms; NULL: the family has no such tensor */
    float *sums[6] = {NULL};
    size_t counts[6] = {HD, HD, C, C, C, C};
    if (l < g.L) {
        sums[0] = lgrad(g, P_QNW, l); sums[1] = lgrad(g, P_KNW, l);
        if (g.cur_sp) { sums[2] = lgrad(g, P_LN1W, l); sums[3] = lgrad(g, P_LN1B, l); sums[4] = lgrad(g, P_LN2W, l); sums[5] = lgrad(g, P_LN2B, l); }
    } else if (g.cur_sp) {
        sums[2] = g.gt[P_LNFW]; sums[3] = g.gt[P_LNFB];
    }
    for (int i = 0; i < 6; i++)
        if (sums[i]) NCCL_CHECK(ncclAllReduce(sums[i], sums[i], counts[i], ncclFloat, ncclSum, g.tp_comm, s));
    /* over the ranks that share this rank's k/v head: its k and v rows (2 HD of them, one after the other) */
    if (l < g.L && g.kv_comm) {
        float *w = lgrad(g, P_WQKV, l) + (size_t)g.QD * C, *b = lgrad(g, P_BQKV, l);
        NCCL_CHECK(ncclAllReduce(w, w, 2 * HD * C, ncclFloat, ncclSum, g.kv_comm, s));
        if (b) NCCL_CHECK(ncclAllReduce(b + g.QD, b + g.QD, 2 * HD, ncclFloat, ncclSum, g.kv_comm, s));
    }
}

/* With --pp and tied embeddings: the gradients of the first stage's wte and of the last stage's copy summed over the
   two (train.c's emb_comm all-reduce), before the data-parallel reduction reads them; both copies then take the same
   AdamW step. Elsewhere nothing. */
template <typename floatX>
static void gmodel_emb_reduce(GModel<floatX> &g) {
    if (!g.emb_comm) return;
    NCCL_CHECK(ncclAllReduce(g.gt[P_WTE], g.gt[P_WTE], g.lay.param_sizes[P_WTE], ncclFloat, ncclSum, g.emb_comm, g.stream));
}

/* the reduction of the tensors outside the layers (the embeddings, the final norm, the lm_head) once the backward
   is over: after the last micro-step's backward, or with --pp after the pipeline's schedule (pp_step), since the
   tied embeddings' all-reduce joins the first and the last stage, which must not wait for each other inside it */
template <typename floatX>
static void gmodel_reduce_rest(GModel<floatX> &g) {
    gmodel_tp_reduce_layer(g, g.L);
    gmodel_emb_reduce(g);
    gmodel_reduce_layer(g, g.L);
}

/* model_backward of the last forward (which ran with backward_head): grads += d(loss * loss_scale)/dparams.
   reduce: the last micro-step before an optimizer step; with NCCL and overlap the reduction goes along.
   Tensor parallel: the forward's collectives in reverse (model_backward): the input gradients of the lm_head, fc
   and qkv summed over the group (sequence parallel: reduce-scattered into the norms' rows), and with sequence
   parallelism the residual stream's gradient all-gathered before the matmuls and the embedding read it.
   A pipeline stage (model_backward_stage): without the head it starts from its output's gradient received into
   dres; without the embedding it ends with its input's gradient in dres, for the stage before. */
template <typename floatX>
void gmodel_backward(GModel<floatX> &g, int last = 0) {
    int reduce_layers = g.zero2 || (last && g.overlap), reduce_rest = last && g.overlap && g.pp == 1;
    cudaStream_t s = g.stream;
    const ModelConfig *c = &g.cfg;
    int B = g.cur_B, T = g.cur_T, N = B * T, C = g.C, R = g.R;
    size_t NC = (size_t)N * C, r0 = g.r0, o = r0 * C;
    float *sc = g.scratch;
    /* final norm: dres = d(resid3 of the last layer); a stage before the last has it from the next stage */
    if (g.head) {
        tp_sum_rows(g, g.dlnf);
        gpu::residual_norm_backward<floatX>(g.dres + o, g.dres_t + o, NULL, g.gt[P_LNFW], g.gt[P_LNFB], g.dlnf + o,
                                            g.resid3 + (g.L - 1) * NC + o, 1, C, g.pt[P_LNFW], rows_at(g.lnf_mean, r0),
                                            g.lnf_rstd + r0, R, C, 0, sc, s);
    } else {
        convert_kernel<floatX><<<ceil_div((size_t)R * C, 256), 256, 0, s>>>(g.dres_t + o, g.dres + o, (size_t)R * C);
        KERNEL_CHECK();
    }
    for (int l = g.L - 1; l >= 0; l--) {
        if (g.zero2) {   /* layer buffer l % 2, once the reduction of the layer that used it last has read it */
            CUDA_CHECK(cudaStreamWaitEvent(s, g.lbuf_free[l & 1], 0));
            CUDA_CHECK(cudaMemsetAsync(g.lbuf[l & 1], 0, g.layer_floats * sizeof(float), s));
        }
        const floatX *x = l == 0 ? g.encoded : g.resid3 + (l - 1) * NC;
        floatX *ln1 = lay(g.ln1, l, g.ln_layers > 1 ? NC : 0), *ln2 = lay(g.ln2, l, g.ln_layers > 1 ? NC : 0);
        floatX *qkv = g.qkv + (size_t)l * N * g.QKV, *fch = g.fch + (size_t)l * N * g.FC;
        floatX *fch_act = lay(g.fch_act, l, g.act_layers > 1 ? (size_t)N * g.F : 0);
        floatX *resid2 = g.resid2 + l * NC;
        float *ln1_mean = lay(g.ln1_mean, l, N), *ln1_rstd = g.ln1_rstd + (size_t)l * N;
        float *ln2_mean = lay(g.ln2_mean, l, N), *ln2_rstd = g.ln2_rstd + (size_t)l * N;

        /* MLP: resid3 = resid2 + proj(act(fc(norm2(resid2)))); dres_t = d(proj output) */
        tp_gather_rows(g, g.dres_t);
        if (g.recompute >= 1) {
            if (g.gelu) gpu::gelu_forward<floatX>(fch_act, fch, (size_t)N * g.F, s);
            else gpu::swiglu_forward<floatX>(fch_act, fch, N, g.F, s);
        }
        if (g.fuse_gelu) {
            gpu::matmul_backward<floatX>(g.dfch, lgrad(g, P_WPROJ, l), lgrad(g, P_BPROJ, l), g.dres_t, fch_act,
                                    g.pt[P_WPROJ] + (size_t)l * C * g.F, N, g.F, C, C, 0, fch, sc, s);
        } else {
            gpu::matmul_backward<floatX>(g.dfch_act, lgrad(g, P_WPROJ, l), lgrad(g, P_BPROJ, l), g.dres_t,
                                    fch_act, g.pt[P_WPROJ] + (size_t)l * C * g.F, N, g.F, C, C, 0, NULL, sc, s);
            if (g.gelu) gpu::gelu_backward<floatX>(g.dfch, fch, g.dfch_act, (size_t)N * g.F, s);
            else gpu::swiglu_backward<floatX>(g.dfch, g.dfch_act, fch, N, g.F, s);
        }
        if (g.recompute >= 2)
            gpu::norm_forward_recompute<floatX>(ln2, resid2, ln2_mean, ln2_rstd, g.pt[P_LN2W] + l * C, lay(g.pt[P_LN2B], l, C), N, C, s);
        gpu::matmul_backward<floatX>(g.dln, lgrad(g, P_WFC, l), lgrad(g, P_BFC, l), g.dfch, ln2,
                                g.pt[P_WFC] + (size_t)l * g.FC * C, N, C, g.FC, g.FC, 0, NULL, sc, s);
        tp_sum_rows(g, g.dln);
        gpu::residual_norm_backward<floatX>(g.dres + o, g.dres_t + o, NULL, lgrad(g, P_LN2W, l), lgrad(g, P_LN2B, l), g.dln + o,
                                            resid2 + o, 1, C, g.pt[P_LN2W] + l * C, rows_at(ln2_mean, r0), ln2_rstd + r0, R, C, 1,
                                            sc, s);

        /* attention: resid2 = x + o(attention(rope(qknorm(q)), rope(qknorm(k)), v)); dres_t = d(o output) */
        tp_gather_rows(g, g.dres_t);
        AttnArgs<floatX> a = attn_args(g, l);
        gpu::matmul_backward<floatX>(g.datty, lgrad(g, P_WO, l), lgrad(g, P_BO, l), g.dres_t, a.out,
                                g.pt[P_WO] + (size_t)l * C * g.QD, N, g.QD, C, C, 0, NULL, sc, s);
        CUDA_CHECK(cudaMemsetAsync(g.dqkv, 0, (size_t)N * g.QKV * sizeof(floatX), s));   /* the backwards below add (+=) */
        if (c->qk_norm) CUDA_CHECK(cudaMemsetAsync(g.dqn, 0, (size_t)N * g.QD * sizeof(floatX), s));
        if (c->qk_norm) CUDA_CHECK(cudaMemsetAsync(g.dkn, 0, (size_t)N * g.KD * sizeof(floatX), s));
        gpu::attention_backward<floatX>(a, g.plain_attn, s);
        if (c->qk_norm) {
            gpu::residual_norm_backward<floatX>(NULL, NULL, g.dqkv, lgrad(g, P_QNW, l), NULL, g.dqn, qkv, g.NH, g.QKV,
                                  g.pt[P_QNW] + l * g.HD, NULL, g.qn_rstd + (size_t)l * N * g.NH, N * g.NH, g.HD, 0, sc, s);
            gpu::residual_norm_backward<floatX>(NULL, NULL, g.dqkv + g.QD, lgrad(g, P_KNW, l), NULL, g.dkn, qkv + g.QD, g.NKV, g.QKV,
                                  g.pt[P_KNW] + l * g.HD, NULL, g.kn_rstd + (size_t)l * N * g.NKV, N * g.NKV, g.HD, 0, sc, s);
        }
        if (g.recompute >= 2)
            gpu::norm_forward_recompute<floatX>(ln1, x, ln1_mean, ln1_rstd, g.pt[P_LN1W] + l * C, lay(g.pt[P_LN1B], l, C), N, C, s);
        gpu::matmul_backward<floatX>(g.dln, lgrad(g, P_WQKV, l), lgrad(g, P_BQKV, l), g.dqkv, ln1,
                                g.pt[P_WQKV] + (size_t)l * g.QKV * C, N, C, g.QKV, g.QKV, 0, NULL, sc, s);
        tp_sum_rows(g, g.dln);
        gpu::residual_norm_backward<floatX>(g.dres + o, g.dres_t + o, NULL, lgrad(g, P_LN1W, l), lgrad(g, P_LN1B, l), g.dln + o,
                                            x + o, 1, C, g.pt[P_LN1W] + l * C, rows_at(ln1_mean, r0), ln1_rstd + r0, R, C, 1, sc, s);
        if (reduce_layers) { gmodel_tp_reduce_layer(g, l); gmodel_reduce_layer(g, l); }
    }
    if (g.embed) {
        tp_gather_rows(g, g.dres);
        gpu::embedding_backward(g.gt[P_WTE], g.gt[P_WPE], g.dres, g.bk, B, T, C, s, g.d_pplan ? &g.pbk : NULL);
    }
    if (reduce_rest) gmodel_reduce_rest(g);
}

template <typename floatX> void gmodel_zero_grad(GModel<floatX> &g) {
    if (!g.zero2) { CUDA_CHECK(cudaMemsetAsync(g.grads, 0, g.padded * sizeof(float), g.stream)); return; }
    CUDA_CHECK(cudaMemsetAsync(g.gshard, 0, g.shard * sizeof(float), g.stream));
    CUDA_CHECK(cudaMemsetAsync(g.outer, 0, g.outer_floats * sizeof(float), g.stream));
}

/* reads red[1] (the accumulated loss), waiting for the stream */
template <typename floatX> double gmodel_read_loss(GModel<floatX> &g) {
    double v;
    CUDA_CHECK(cudaMemcpyAsync(&v, g.red + 1, sizeof(double), cudaMemcpyDeviceToHost, g.stream));
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
    return v;
}

/* the tables 1 - beta^t for t < bc_cap (step_decide_kernel indexes them with the update count, which never
   exceeds the step number), rebuilt when a step reaches bc_cap or the betas change: rare, and synchronous */
template <typename floatX>
static void bias_correction_tables(GModel<floatX> &g, const AdamWConfig *opt, int step) {
    if (step < g.bc_cap && opt->beta1 == g.bc_beta1 && opt->beta2 == g.bc_beta2) return;
    CUDA_CHECK(cudaStreamSynchronize(g.stream));   /* earlier steps may still read the old tables */
    dev_free(g.bc1, (size_t)g.bc_cap * sizeof(float)); dev_free(g.bc2, (size_t)g.bc_cap * sizeof(float));
    int cap = 1024;
    while (cap <= step) cap *= 2;
    float *h = (float *)malloc(2 * (size_t)cap * sizeof(float));
    for (int t = 0; t < cap; t++) {   /* what adamw_update computed on the host */
        h[t] = 1.0f - powf(opt->beta1, (float)t);
        h[cap + t] = 1.0f - powf(opt->beta2, (float)t);
    }
    g.bc1 = (float *)dev_alloc((size_t)cap * sizeof(float));
    g.bc2 = (float *)dev_alloc((size_t)cap * sizeof(float));
    CUDA_CHECK(cudaMemcpyAsync(g.bc1, h, (size_t)cap * sizeof(float), cudaMemcpyHostToDevice, g.stream));
    CUDA_CHECK(cudaMemcpyAsync(g.bc2, h + cap, (size_t)cap * sizeof(float), cudaMemcpyHostToDevice, g.stream));
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
    free(h);
    g.bc_cap = cap; g.bc_beta1 = opt->beta1; g.bc_beta2 = opt->beta2;
}

/* One optimizer step after the micro-steps (docs/design.md sec. 7), queued without waiting for the device:
   reduce-scatter the grads into the shards (unless the backward did it, overlapped) -> global grad norm (sum of
   the shards' squares, all-reduced with the loss and the stop flags) -> step_decide_kernel: skip (non-finite loss
   or norm), clip coefficient, update count -> AdamW on the own shard (which reads those decisions) -> all-gather
   the floatX weights. The outcome (loss, norm, stop, skip) is copied into pinned slot step % 2 and step_done[step % 2]
   recorded after the step; gmodel_step_outcome reads it. `step` is the optimizer step (1-based; it bounds the
   update count, which the device keeps: skipped steps do not count); stop is this rank's stop request. */
template <typename floatX>
void gmodel_step_queue(GModel<floatX> &g, const Dist &d, const AdamWConfig *opt, int step, float clip, uint64_t seed,
                       int do_update, int stop) {
    cudaStream_t s = g.stream;
    float *gshard = g.gshard;
    bias_correction_tables(g, opt, step);
    set_double_kernel<<<1, 1, 0, s>>>(g.red + 2, stop ? 1.0 : 0.0);
    KERNEL_CHECK();
    if (g.zero2 && !g.reduced) die("ZeRO-2: an optimizer step without the last micro-step's reduction (gmodel_backward(g, 1))");
    if (!g.reduced) { for (int l = 0; l <= g.L; l++) gmodel_tp_reduce_layer(g, l); gmodel_emb_reduce(g); }
    if (d.comm && !g.reduced && !g.zero2) NCCL_CHECK(ncclReduceScatter(g.grads, gshard, g.shard, ncclFloat, ncclSum, d.comm, s));
    g.reduced = 0;
    if (g.tp == 1 && g.pp == 1) gpu::grad_sumsq(g.red, g.norm_parts, gshard, g.shard, s);
    else {   /* tp_grad_sumsq: the runs this rank owns (not the last stage's copy of wte), in its shard; the loss once
                per model (its last stage's first tensor-parallel rank's) */
        set_double_kernel<<<1, 1, 0, s>>>(g.red, 0.0);
        KERNEL_CHECK();
        for (int i = 0; i < g.n_norm_ranges; i++) {
            size_t b = g.norm_ranges[2 * i], e = g.norm_ranges[2 * i + 1];
            if (b < g.shard_begin) b = g.shard_begin;
            if (e > g.shard_begin + g.shard) e = g.shard_begin + g.shard;
            if (b < e) gpu::grad_sumsq(g.red, g.norm_parts, gshard + (b - g.shard_begin), e - b, s, 1);
        }
        if (g.tp_rank != 0 || !g.head) { set_double_kernel<<<1, 1, 0, s>>>(g.red + 1, 0.0); KERNEL_CHECK(); }
    }
    ncclComm_t all = g.tp > 1 || g.pp > 1 ? g.world_comm : d.comm;   /* with --tp / --pp every rank holds a part of the norm */
    if (all) NCCL_CHECK(ncclAllReduce(g.red, g.red, 3, ncclDouble, ncclSum, all, s));
    int slot = step & 1;
    step_decide_kernel<<<1, 1, 0, s>>>(g.step_out + slot, g.ctl, g.updates, g.red, d.world, clip, do_update, opt->lr,
                                       g.bc1, g.bc2, seed);
    KERNEL_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(g.h_step_out + slot, g.step_out + slot, sizeof(StepOut), cudaMemcpyDeviceToHost, s));
    size_t sb = g.shard_begin, se = g.shard_begin + g.shard;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {   /* the real rows of each tensor: the padded ones stay zero */
        size_t b = g.lay.param_offsets[t], e = b + g.host->param_sizes[t];
        if (b < sb) b = sb;
        if (e > se) e = se;
        if (b >= e) continue;
        gpu::adamw_update<floatX>(g.params + b, g.master + (b - sb), gshard + (b - sb), g.mom + (b - sb), g.vel + (b - sb), e - b,
                             opt->lr, opt->beta1, opt->beta2, opt->eps, param_has_decay(t) ? opt->weight_decay : 0.0f,
                             g.ctl, b, s);
    }
    if (d.comm) NCCL_CHECK(ncclAllGather(g.params + g.shard_begin, g.params, g.shard, nccl_type<floatX>(), d.comm, s));
    CUDA_CHECK(cudaEventRecord(g.step_done[slot], s));
}

/* waits for step `step` (queued by gmodel_step_queue, and not yet overwritten by step + 2) and reads its outcome:
   the mean loss over ranks, the grad norm, whether any rank asked to stop; returns 1 when it was skipped */
template <typename floatX>
int gmodel_step_outcome(GModel<floatX> &g, int step, double *loss_out, double *norm_out, int *stop_out) {
    int slot = step & 1;
    CUDA_CHECK(cudaEventSynchronize(g.step_done[slot]));
    const StepOut *o = g.h_step_out + slot;
    *loss_out = o->loss; *norm_out = o->norm;
    if (stop_out) *stop_out = o->stop > 0;
    return o->skip;
}

/* the step queued and its outcome read at once (tests): *stop_inout in, any rank's stop request out */
template <typename floatX>
void gmodel_step(GModel<floatX> &g, const Dist &d, const AdamWConfig *opt, int step, float clip, uint64_t seed, int do_update,
                 double *loss_out, double *norm_out, int *stop_inout) {
    gmodel_step_queue(g, d, opt, step, clip, seed, do_update, *stop_inout);
    gmodel_step_outcome(g, step, loss_out, norm_out, stop_inout);
}

/* ================================================================================================ */
/* the distributed start-up: our launcher, the TCP handshake, NCCL, the watchdog */

#include "dist.h"
static_assert(sizeof(ncclUniqueId) == BOOT_ID_BYTES, "the handshake hands out an ncclUniqueId");

/* the process-wide GPU state: SM count and the cuBLASLt handle and workspace (after cudaSetDevice) */
static void gpu_setup(void) {
    int dev;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&gpu::g_num_sms, cudaDevAttrMultiProcessorCount, dev));
    CUBLAS_CHECK(cublasLtCreate(&g_lt));
    g_lt_ws = dev_alloc(g_lt_ws_size);
}

/* gpu_setup undone: the matmul plans, the workspace and the cuBLASLt handle (the device idle) */
static void gpu_teardown(void) {
    CUDA_CHECK(cudaDeviceSynchronize());
    matmul_lt_free_plans();
    dev_free(g_lt_ws, g_lt_ws_size);
    g_lt_ws = NULL;
    cublasLtDestroy(g_lt);
    g_lt = NULL;
}

/* ================================================================================================ */
/* the trainer: the shared loop (train_loop.h) over the device model (left out when a test includes this file) */

#ifndef TRAIN_GPU_NO_MAIN

static double peak_bf16_flops(const char *name) {
    static const struct { const char *key; double tflops; } table[] = {
        {"H100 PCIe", 756}, {"H100 NVL", 835}, {"H100", 989}, {"H200", 989}, {"GH200", 989}, {"H800", 989},
        {"B200", 2250}, {"B100", 1750}, {"A100", 312}, {"A800", 312}, {"L40S", 362}, {"L40", 181}, {"A10G", 70},
        {"A10", 125}, {"L4", 121}, {"RTX 4090", 165}, {"RTX 3090", 71}, {"A6000", 155},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strstr(name, table[i].key)) return table[i].tflops * 1e12;
    return 0.0;
}

/* Model FLOPs of one token of training (forward + backward = 3 x forward; a multiply-add counts 2):
     matmuls:   6 * (L * (QKV*C + C*QD + FC*C + C*F) + V*C)        (the lm_head included, the lookup not)
     attention: 6 * L * T * QD     (QK^T and PV: 2 * 2 * QD flops per (query, key) pair, T/2 keys per query
                                    on average under the causal mask, times 3)
   MFU = this * tokens/s / the device's peak dense bf16 FLOP/s. Recomputation is not counted (it is overhead). */
static double flops_per_token(const ModelConfig *c, int floatX) {
    double C = c->n_embd, L = c->n_layer, QD = (double)c->n_head * c->head_dim, KD = (double)c->n_kv_head * c->head_dim;
    double F = c->d_ff, FC = c->act == ACT_SWIGLU ? 2 * F : F, QKV = QD + 2 * KD, V = c->vocab_size;
    return 6.0 * (L * (QKV * C + C * QD + FC * C + C * F) + V * C) + 6.0 * L * floatX * QD;
}

/* the backend of the shared loop (train_loop.h): the device model, the ranks, and a sample's logits on the host */
template <typename floatX>
struct GpuRun {
    GModel<floatX> g;
    Dist *d;
    const Args *a;
    AdamWConfig opt;
    cudaDeviceProp prop;
    double flops_per_token, peak_flops;
    floatX *row_t;      /* [V] the logits of a sample's last position, as the device holds them */
    float *row;    /* [V] the same as floats */
    const ModelConfig *cfg;   /* the whole model's */
    floatX *row_part, *row_all;   /* tensor parallel, on the device: this rank's vocabulary rows of that row padded to
                                     the first rank's count Vr, and every rank's [tp][Vr] */
    int Vr;
    /* pipeline parallel: the model of each micro-batch alive on this stage (views[0] is g, the others gmodel_view's
       in extra), the step's micro-batches [grad_accum][B*T], the sample's row on the device [V], --pp-trace */
    GModel<floatX> **views, *extra;
    int nviews;
    int *mb_inputs, *mb_targets;
    floatX *row_pp;
    FILE *trace;
    const TrainState *ts;   /* the step (--pp-trace's events name theirs) */
};

/* ---- pipeline parallelism (--pp): train.c's 1F1B over the step's micro-batches. Neighbouring stages exchange
   [B*T, C] rows on the pipeline communicator, on the compute stream: the activations forward (floatX, into the next
   stage's encoded), their gradients backward (fp32, into the previous stage's dres). NCCL's send may wait for its
   receive, so two neighbours that both sent first would wait for each other: each send goes in one group with the
   receive that follows it in the schedule (Megatron's send_forward_recv_backward and send_backward_recv_forward). */

template <typename floatX> static GModel<floatX> &pp_view(GpuRun<floatX> *c, int i) { return *c->views[i % c->nviews]; }

/* a stage's input and output of a B x T batch on this rank: the residual stream's rows, all N = B*T of them, or
   with --sp its block [r0, r0 + R) (gmodel_rows, as gmodel_forward chooses them); as floats, from r0 * C, R * C of
   them (model_stage_floats) */
template <typename floatX>
static void stage_rows(const GModel<floatX> &g, int B, int T, size_t *from, size_t *count) {
    int R, r0;
    gmodel_rows(g, B * T, &R, &r0);
    *from = (size_t)r0 * g.C; *count = (size_t)R * g.C;
}

/* --pp-trace: one Chrome trace event per forward, backward and exchange (train.c's format), timed on the host after
   a synchronisation of the stream, so a traced run is slower than an untraced one */
template <typename floatX>
static void pp_trace(GpuRun<floatX> *c, const char *what, int micro, double start_ms) {
    if (!c->trace) return;
    CUDA_CHECK(cudaStreamSynchronize(c->g.stream));
    double end = now_ms();
    fprintf(c->trace, "{\"name\":\"%s%d\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.1f,\"dur\":%.1f,\"pid\":0,\"tid\":%d,"
            "\"args\":{\"step\":%lld,\"micro\":%d}}\n", what, micro, what, start_ms * 1000.0, (end - start_ms) * 1000.0, c->d->grank,
            (long long)c->ts->step + 1, micro);
}

/* one group with the next stage: micro-batch `out`'s output to it and the gradient of micro-batch `grad`'s output
   from it (-1: none); nothing on the last stage */
template <typename floatX>
static void pp_with_next(GpuRun<floatX> *c, int out, int grad) {
    GModel<floatX> &g = c->g;
    if (g.head || (out < 0 && grad < 0)) return;
    size_t NC = (size_t)c->a->batch_size * c->a->seq_len * g.C, o, n;
    stage_rows(g, c->a->batch_size, c->a->seq_len, &o, &n);
    double t = now_ms();
    NCCL_CHECK(ncclGroupStart());
    if (out >= 0) NCCL_CHECK(ncclSend(pp_view(c, out).resid3 + (g.L - 1) * NC + o, n, nccl_type<floatX>(), c->d->pp_rank + 1,
                                      c->d->pp_comm, g.stream));
    if (grad >= 0) NCCL_CHECK(ncclRecv(g.dres + o, n, ncclFloat, c->d->pp_rank + 1, c->d->pp_comm, g.stream));
    NCCL_CHECK(ncclGroupEnd());
    pp_trace(c, "next", out >= 0 ? out : grad, t);
}

/* one group with the previous stage: the gradient of micro-batch `grad`'s input to it and micro-batch `in`'s input
   from it (-1: none); nothing on the first stage */
template <typename floatX>
static void pp_with_prev(GpuRun<floatX> *c, int grad, int in) {
    GModel<floatX> &g = c->g;
    if (g.embed || (grad < 0 && in < 0)) return;
    size_t o, n;
    stage_rows(g, c->a->batch_size, c->a->seq_len, &o, &n);
    double t = now_ms();
    NCCL_CHECK(ncclGroupStart());
    if (grad >= 0) NCCL_CHECK(ncclSend(g.dres + o, n, ncclFloat, c->d->pp_rank - 1, c->d->pp_comm, g.stream));
    if (in >= 0) NCCL_CHECK(ncclRecv(pp_view(c, in).encoded + o, n, nccl_type<floatX>(), c->d->pp_rank - 1, c->d->pp_comm, g.stream));
    NCCL_CHECK(ncclGroupEnd());
    pp_trace(c, "prev", grad >= 0 ? grad : in, t);
}

/* micro-batch i's forward on this stage (its input already received on a stage after the first); the last stage
   runs the classifier's backward with it, and adds the micro-batch's loss */
template <typename floatX>
static void pp_forward(GpuRun<floatX> *c, int i) {
    const Args *a = c->a;
    GModel<floatX> &v = pp_view(c, i);
    size_t BT = (size_t)a->batch_size * a->seq_len;
    double t = now_ms();
    gmodel_upload_batch(v, c->mb_inputs + i * BT, c->mb_targets + i * BT, a->batch_size, a->seq_len);
    gmodel_forward(v, 1, 1.0f / (a->grad_accum * c->d->world), 1.0 / a->grad_accum, i > 0);
    pp_trace(c, "F", i, t);
}

/* its backward (its output's gradient already received on a stage before the last); the step's last one reduces
   each layer's gradients as gmodel_backward does (the rest after the schedule) */
template <typename floatX>
static void pp_backward(GpuRun<floatX> *c, int i) {
    double t = now_ms();
    gmodel_backward(pp_view(c, i), i == c->a->grad_accum - 1);
    pp_trace(c, "B", i, t);
}

/* One step's M micro-batches through the P stages (train.c's pp_step, Narayanan et al. 2021 sec. 2.2): stage s
   runs warm = min(P - s - 1, M) forwards, then one forward and one backward at a time, then the backwards left;
   between them the exchanges with the neighbours, each receive in the group of the send before it. Then, with the
   reduction overlapped, that of the tensors outside the layers. */
template <typename floatX>
static void pp_step(GpuRun<floatX> *c) {
    int P = c->d->pp, s = c->d->pp_rank, M = c->a->grad_accum, warm = P - s - 1 < M ? P - s - 1 : M, rest = M - warm;
    for (int i = 0; i < warm; i++) { pp_with_prev(c, -1, i); pp_forward(c, i); pp_with_next(c, i, -1); }
    if (rest > 0) pp_with_prev(c, -1, warm);
    for (int i = 0; i < rest; i++) {
        pp_forward(c, warm + i);
        pp_with_next(c, warm + i, i);
        pp_backward(c, i);
        pp_with_prev(c, i, i + 1 < rest ? warm + i + 1 : -1);
    }
    for (int i = rest; i < M; i++) { pp_with_next(c, -1, i); pp_backward(c, i); pp_with_prev(c, i, -1); }
    if (c->g.overlap) gmodel_reduce_rest(c->g);
}

/* a forward of B x T without a backward (an evaluation's, a sample's): through the stages with --pp, the input from
   the stage before and the output to the stage after; its loss on the last stage */
template <typename floatX>
static void forward_only(GpuRun<floatX> *c, const int *ids, const int *targets, int B, int T, int accumulate) {
    GModel<floatX> &g = c->g;
    size_t NC = (size_t)B * T * g.C, o, n;
    stage_rows(g, B, T, &o, &n);
    gmodel_upload_batch(g, ids, targets, B, T);
    if (c->d->pp > 1 && !g.embed) NCCL_CHECK(ncclRecv(g.encoded + o, n, nccl_type<floatX>(), c->d->pp_rank - 1, c->d->pp_comm, g.stream));
    gmodel_forward(g, 0, 0.0f, 1.0, accumulate);
    if (c->d->pp > 1 && !g.head)
        NCCL_CHECK(ncclSend(g.resid3 + (g.L - 1) * NC + o, n, nccl_type<floatX>(), c->d->pp_rank + 1, c->d->pp_comm, g.stream));
}

template <typename floatX>
static void gpu_forward_backward(void *ctx, const DataLoader *dl, int micro) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    const Args *a = c->a;
    if (micro == 0) gmodel_zero_grad(c->g);
    if (c->d->pp > 1) {   /* the pipeline runs when it has the step's micro-batches */
        size_t BT = (size_t)a->batch_size * a->seq_len;
        memcpy(c->mb_inputs + micro * BT, dl->inputs, BT * sizeof(int));
        memcpy(c->mb_targets + micro * BT, dl->targets, BT * sizeof(int));
        if (micro == a->grad_accum - 1) pp_step(c);
        progress_mark();
        return;
    }
    gmodel_upload_batch(c->g, dl->inputs, dl->targets, a->batch_size, a->seq_len);
    gmodel_forward(c->g, 1, 1.0f / (a->grad_accum * c->d->world), 1.0 / a->grad_accum, micro > 0);
    gmodel_backward(c->g, micro == a->grad_accum - 1);
    progress_mark();   /* the upload of the next micro-step waits for this one: the GPU moves */
}

/* queued on the device, not waited for (gmodel_step_queue): the loop reads the outcome one step later */
template <typename floatX>
static void gpu_step_queue(void *ctx, int step, float lr, int stop) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    c->opt.lr = lr;
    gmodel_step_queue(c->g, *c->d, &c->opt, step, c->a->clip, c->a->seed, 1, stop);
}

template <typename floatX>
static int gpu_step_outcome(void *ctx, int step, double *loss, double *norm, int *stop) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    int skip = gmodel_step_outcome(c->g, step, loss, norm, stop);
    progress_mark();
    return skip;
}

/* the batches' losses summed on the device, read once at the end */
template <typename floatX>
static void gpu_eval_batch(void *ctx, const DataLoader *dl, int i) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    forward_only(c, dl->inputs, dl->targets, dl->B, dl->T, i > 0);
}

template <typename floatX>
static double gpu_eval_sum(void *ctx) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    GModel<floatX> &g = c->g;
    if (c->d->pp > 1) {   /* the last stage's sum, to every stage (the others add zero) */
        if (!g.head) { set_double_kernel<<<1, 1, 0, g.stream>>>(g.red + 1, 0.0); KERNEL_CHECK(); }
        NCCL_CHECK(ncclAllReduce(g.red + 1, g.red + 1, 1, ncclDouble, ncclSum, c->d->pp_comm, g.stream));
    }
    double sum = gmodel_read_loss(g);
    progress_mark();   /* an evaluation is not a hang */
    return sum;
}

template <typename floatX>
static const float *gpu_forward_logits(void *ctx, const int *ids, int n) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    GModel<floatX> &g = c->g;
    int V = g.Vfull;
    forward_only(c, ids, NULL, 1, n, 0);
    const floatX *last = g.head ? g.logits + (size_t)(n - 1 - g.logits_r0) * g.Vp : NULL;
    if (g.tp > 1 && g.head) {   /* rank r's rows start at r * Vr (zero_shard): the group's rows gathered in order */
        CUDA_CHECK(cudaMemsetAsync(c->row_part, 0, c->Vr * sizeof(floatX), g.stream));
        CUDA_CHECK(cudaMemcpyAsync(c->row_part, last, g.V * sizeof(floatX), cudaMemcpyDeviceToDevice, g.stream));
        NCCL_CHECK(ncclAllGather(c->row_part, c->row_all, c->Vr, nccl_type<floatX>(), g.tp_comm, g.stream));
        last = c->row_all;
    }
    if (c->d->pp > 1) {   /* the last stage's row, to every stage (the others add zeros) */
        CUDA_CHECK(cudaMemsetAsync(c->row_pp, 0, V * sizeof(floatX), g.stream));
        if (last) CUDA_CHECK(cudaMemcpyAsync(c->row_pp, last, V * sizeof(floatX), cudaMemcpyDeviceToDevice, g.stream));
        NCCL_CHECK(ncclAllReduce(c->row_pp, c->row_pp, V, nccl_type<floatX>(), ncclSum, c->d->pp_comm, g.stream));
        last = c->row_pp;
    }
    CUDA_CHECK(cudaMemcpyAsync(c->row_t, last, V * sizeof(floatX), cudaMemcpyDeviceToHost, g.stream));
    CUDA_CHECK(cudaStreamSynchronize(g.stream));
    for (int v = 0; v < V; v++) {
        if (sizeof(floatX) == 4) memcpy(&c->row[v], &c->row_t[v], 4);
        else { uint16_t h; memcpy(&h, &c->row_t[v], 2); c->row[v] = host_bf16_bits_to_f32(h); }
    }
    progress_mark();
    return c->row;
}

/* x[0..n) on the host summed over comm's ranks, through a device buffer of at most 1 Mi floats: the same pieces on
   every rank (the ranks' staging buffers differ in size with --tp or --pp) */
template <typename floatX>
static void host_all_reduce(GModel<floatX> &g, ncclComm_t comm, float *x, size_t n) {
    size_t piece = n < ((size_t)1 << 20) ? n : ((size_t)1 << 20);
    float *buf = (float *)dev_alloc(piece * sizeof(float));
    for (size_t k0 = 0; k0 < n; k0 += piece) {
        size_t cnt = n - k0 < piece ? n - k0 : piece;
        CUDA_CHECK(cudaMemcpyAsync(buf, x + k0, cnt * sizeof(float), cudaMemcpyHostToDevice, g.stream));
        NCCL_CHECK(ncclAllReduce(buf, buf, cnt, ncclFloat, ncclSum, comm, g.stream));
        CUDA_CHECK(cudaMemcpyAsync(x + k0, buf, cnt * sizeof(float), cudaMemcpyDeviceToHost, g.stream));
        CUDA_CHECK(cudaStreamSynchronize(g.stream));
    }
    dev_free(buf, piece * sizeof(float));
}

/* put_whole_model's sum over the model-parallel group, through the GPU */
template <typename floatX>
static void mp_sum(void *ctx, float *buf, size_t n) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    host_all_reduce(c->g, c->d->mp_comm, buf, n);
}

/* The masters and moments gathered from the ZeRO shards into the host model of each data-parallel group's first rank.
   With --tp or --pp (as train.c's cpu_save) the first model's ranks then put the whole model together: each writes
   the runs it owns into zeroed whole buffers, summed over the model-parallel group, and rank 0 writes it. */
template <typename floatX>
static void gpu_save(void *ctx, const TrainState *ts) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    const Dist *d = c->d;
    Model *m = c->g.host;
    gmodel_download(c->g, *d, 1);   /* collective: masters and moments gathered from the shards */
    if (d->tp == 1 && d->pp == 1) {
        if (d->rank == 0) write_checkpoint(c->a, m, ts);
    } else if (d->rank == 0) {
        Model whole;
        put_whole_model(&whole, m, c->cfg, mp_sum<floatX>, c);
        if (d->grank == 0) write_checkpoint(c->a, &whole, ts);
        model_free(&whole);
    }
    progress_mark();   /* a checkpoint is not a hang */
}

template <typename floatX>
static void gpu_print_setup(void *ctx) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    const Args *a = c->a;
    const GModel<floatX> &g = c->g;
    int world = c->d->world;
    printf("batch %d x %d tokens x %d accumulation x %d %s = %d tokens/step\n", a->batch_size, a->seq_len,
           a->grad_accum, world, g.tp > 1 || g.pp > 1 ? "data-parallel groups" : "GPUs", a->batch_size * a->seq_len * a->grad_accum * world);
    if (g.pp > 1) {
        int M = a->grad_accum, P = g.pp;
        printf("pipeline: %d stages, 1F1B over %d micro-batches, layers %d-%d on rank 0 (of %d), %d activation sets; the "
               "bubble in theory (P-1)/(M+P-1) = %.3f\n", P, M, g.host->pp.layer0, g.host->pp.layer0 + g.L - 1, c->cfg->n_layer,
               c->nviews, (double)(P - 1) / (M + P - 1));
    }
    if (g.tp > 1)
        printf("tensor parallel: %d GPUs per group%s (%d heads, %d kv heads%s, ff %d, %d vocabulary rows on rank 0)\n", g.tp,
               g.sp ? ", sequence parallel" : "", g.NH, g.NKV, g.kv_comm ? " shared" : "", g.F, g.V);
    printf("device %s (%d SMs): %s, recompute %d, %s attention, ZeRO-%d over %d rank(s)%s, %.2f GiB allocated; "
           "%.1f GFLOP/token, peak %.0f TFLOP/s bf16\n", c->prop.name, c->prop.multiProcessorCount, a->dtype, a->recompute,
           gpu::attention_uses_tc<floatX>(c->g.cfg.head_dim, a->plain_attn) ? "tensor-core flash" : "plain", c->g.zero2 ? 2 : 1,
           world, !c->d->comm ? "" : c->g.overlap ? " (NCCL, reduce overlapped with the backward)" : " (NCCL, reduce-scatter)",
           g_dev_bytes / 1073741824.0, c->flops_per_token / 1e9, c->peak_flops / 1e12);
    /* this GPU's budget: its slice of the model (--tp / --pp) in floatX, the fp32 gradients (ZeRO-2: the tensors
       outside the layers and two layers' buffers), the masters and moments of its ZeRO shard, the rest (activations,
       one set per micro-batch a pipeline stage keeps, and scratch) */
    double MiB = 1048576.0, par = (double)g.padded * sizeof(floatX) / MiB, opt = 3.0 * g.shard * sizeof(float) / MiB;
    double grad = (g.zero2 ? (double)g.outer_floats + 2.0 * g.layer_floats : (double)g.padded) * sizeof(float) / MiB;
    printf("memory of rank 0's GPU: parameters %.1f MiB, gradients %.1f MiB, AdamW masters and moments %.1f MiB (its ZeRO "
           "shard), activations and scratch %.1f MiB\n", par, grad, opt, g_dev_bytes / MiB - par - grad - opt);
}

/* the watchdog's timer starts with the training loop */
template <typename floatX>
static void gpu_loop_start(void *ctx) {
    GpuRun<floatX> *c = (GpuRun<floatX> *)ctx;
    watchdog_start(c->d, c->a->nccl_timeout);
}

template <typename floatX>
static double gpu_memory_gib(void *ctx) {
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    return (double)(tot - fr) / 1073741824.0;
}

template <typename floatX>
static int run(Args &a, Dist &d) {
    ModelConfig cfg, local_cfg;
    TensorParallel tp;
    Data data;
    Model m;
    char err[1024];
    open_run(&a, &cfg, &data, &m);
    size_t whole_params = m.num_params;
    if (tp_config(&cfg, a.tp, d.grank % a.tp, &local_cfg, &tp, err, sizeof(err)) != 0) die("--tp %d: %s", a.tp, err);
    PipelineStage *stages = (PipelineStage *)malloc((size_t)a.pp * sizeof(PipelineStage));
    if (!stages) die("out of memory");
    pp_layout(&a, &cfg, stages);
    dist_split(&d, a.tp, a.pp, tp.kv_share, cfg.tie_embeddings);
    /* the loader, and the weights: resumed, continued from HF weights, or fresh (the whole model on every rank) */
    DataLoader dl;
    TrainState ts;
    int resumed = start_weights(&m, &ts, &dl, &data, &a, &cfg, d.rank, d.world, d.grank == 0);
    /* tensor or pipeline parallel (as train.c): this rank's slice of the weights (its stage's layers), and of the
       moments on a resume */
    Model slice;
    if (a.tp > 1 || a.pp > 1) {
        tp.sp = a.sp;
        if (model_take_slice(&slice, &m, &local_cfg, &stages[d.pp_rank], &tp) != 0) die("out of memory for the model");
        m = slice;
    }

    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    GOptions o = {a.recompute, a.plain_attn, a.fuse_gelu, (size_t)a.logits_mb << 20, a.overlap, a.zero};
    GpuRun<floatX> c;
    c.d = &d; c.a = &a;
    c.opt = {a.lr, a.beta1, a.beta2, a.eps, a.weight_decay};
    gmodel_build(c.g, &m, a.batch_size, a.seq_len, o, d, stream);
    gmodel_upload(c.g, resumed ? (int)(ts.step - ts.skipped) : 0, a.seed);   /* resumed: the same bf16 copy as before */
    free(m.m_memory); free(m.v_memory); m.m_memory = m.v_memory = NULL;   /* the shards live on the device now */
    c.cfg = &cfg;
    c.row_t = (floatX *)malloc(c.g.Vfull * sizeof(floatX));
    c.row = (float *)malloc(c.g.Vfull * sizeof(float));
    c.Vr = (cfg.vocab_size + a.tp - 1) / a.tp;
    c.row_part = a.tp > 1 ? (floatX *)dev_alloc((size_t)c.Vr * sizeof(floatX)) : NULL;
    c.row_all = a.tp > 1 ? (floatX *)dev_alloc((size_t)a.tp * c.Vr * sizeof(floatX)) : NULL;
    c.views = NULL; c.extra = NULL; c.nviews = 0; c.mb_inputs = c.mb_targets = NULL; c.row_pp = NULL; c.trace = NULL; c.ts = &ts;
    if (a.pp > 1) {   /* the step's micro-batches, and a model view for each one alive at once */
        int warm = a.pp - 1 - d.pp_rank;
        c.nviews = (warm < a.grad_accum ? warm : a.grad_accum) + 1;
        c.views = (GModel<floatX> **)malloc((size_t)c.nviews * sizeof(GModel<floatX> *));
        c.extra = (GModel<floatX> *)calloc((size_t)c.nviews, sizeof(GModel<floatX>));
        c.mb_inputs = (int *)malloc((size_t)a.grad_accum * a.batch_size * a.seq_len * sizeof(int));
        c.mb_targets = (int *)malloc((size_t)a.grad_accum * a.batch_size * a.seq_len * sizeof(int));
        if (!c.views || !c.extra || !c.mb_inputs || !c.mb_targets) die("out of memory");
        c.views[0] = &c.g;
        for (int i = 1; i < c.nviews; i++) { gmodel_view(c.extra[i], c.g); c.views[i] = &c.extra[i]; }
        c.row_pp = (floatX *)dev_alloc((size_t)c.g.Vfull * sizeof(floatX));
        if (a.pp_trace) {
            char path[1100];
            snprintf(path, sizeof(path), "%s.rank%d", a.pp_trace, d.grank);
            if (!(c.trace = fopen(path, "w"))) die("--pp-trace %s: cannot write: %s", path, strerror(errno));
        }
    }
    CUDA_CHECK(cudaGetDeviceProperties(&c.prop, d.local_rank));
    c.flops_per_token = flops_per_token(&cfg, a.seq_len);
    c.peak_flops = peak_bf16_flops(c.prop.name);

    /* every rank of a data-parallel group's first tensor-parallel group evaluates and samples (they compute it
       together; with --pp every stage of its pipeline); the MFU's peak is that of the tp x pp GPUs of a model */
    TrainBackend b = {&c, d.grank, d.world, d.rank == 0, 1, gpu_forward_backward<floatX>, gpu_step_queue<floatX>, gpu_step_outcome<floatX>,
                      gpu_eval_batch<floatX>, gpu_eval_sum<floatX>, gpu_forward_logits<floatX>, gpu_save<floatX>, gpu_print_setup<floatX>,
                      gpu_loop_start<floatX>, gpu_memory_gib<floatX>, c.flops_per_token, c.peak_flops * a.tp * a.pp};
    train_loop(&b, &a, &cfg, whole_params, &data, &dl, &ts, resumed);

    for (int i = 1; i < c.nviews; i++) gmodel_view_free(c.extra[i]);
    if (c.trace) fclose(c.trace);
    free(c.views); free(c.extra); free(c.mb_inputs); free(c.mb_targets); free(stages);
    dev_free(c.row_pp, (size_t)c.g.Vfull * sizeof(floatX));
    free(c.row_t); free(c.row);
    dev_free(c.row_part, (size_t)c.Vr * sizeof(floatX));
    dev_free(c.row_all, (size_t)a.tp * c.Vr * sizeof(floatX));
    gmodel_free(c.g);
    dataloader_free(&dl);
    close_data(&data);
    model_free(&m);
    return 0;
}

/* Config features the CUDA kernels do not implement, refused by their config key before any rank starts
   (./train runs them on the CPU). A sliding window at least --seq-len long is full attention. */
static void refuse_gpu_config(const Args *a) {
    ModelConfig c;
    choose_config(&c, a);
    const char *key = NULL;
    if (c.attn_unscaled) key = "scale_attn_weights false";
    else if (c.attn_by_layer) key = "scale_attn_by_inverse_layer_idx";
    for (int l = 0; l < c.n_layer && !key; l++)
        if (attention_window(&c, l) > 0 && attention_window(&c, l) < a->seq_len) key = "use_sliding_window (sliding_window below --seq-len)";
    if (key) die("config key %s is not implemented on the GPU; train this model with ./train", key);
    /* tensor parallel: the layout (as train.c checks it) and the widths of a rank's slice */
    ModelConfig local;
    TensorParallel tp;
    char err[512];
    if (tp_config(&c, a->tp, 0, &local, &tp, err, sizeof(err)) != 0) die("--tp %d: %s", a->tp, err);
    if (a->tp > 1 && local.d_ff % 8)
        die("--tp %d: the GPU kernels need each rank's MLP width divisible by 8 (intermediate_size %d / %d = %d)", a->tp,
            c.d_ff, a->tp, local.d_ff);
    /* pipeline parallel: the stages (as train.c checks them) */
    PipelineStage *stages = (PipelineStage *)malloc((size_t)a->pp * sizeof(PipelineStage));
    if (!stages) die("out of memory");
    pp_layout(a, &c, stages);
    free(stages);
}

int main(int argc, char **argv) {
    trainer_name = "train_gpu";
    Args a;
    parse_args(&a, argc, argv, 1);
    if (a.sp && a.recompute >= 2)
        die("--sp with --recompute 2: the norms' recomputation is not sequence-parallel on the GPU (use --recompute 0 or 1)");
    refuse_gpu_config(&a);
    /* ZeRO-2 reduces through NCCL, with one rank too */
    LaunchArgs launch = {a.nproc, a.nnodes, a.node_rank, a.master_port, a.master_addr, a.run_id, a.dist_timeout,
                         a.nccl_one || a.zero == 2};
    maybe_launch(&launch, argc, argv);   /* forks the local ranks; returns in each of them */
    signal(SIGINT, on_signal);           /* from here on a signal ends the run after a step, with a checkpoint */
    signal(SIGTERM, on_signal);
    if (a.threads > 0) omp_set_num_threads(a.threads);
    Dist d;
    dist_init(&d, &launch);
    gpu_setup();
    int rc = !strcmp(a.dtype, "fp32") ? run<float>(a, d) : run<bf16>(a, d);
    gpu_teardown();
    watchdog_stop();
    dist_free(&d);
    return rc;
}

#endif /* TRAIN_GPU_NO_MAIN */
