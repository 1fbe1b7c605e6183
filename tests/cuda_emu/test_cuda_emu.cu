/*
 test_cuda_emu.cu — the CUDA emulation tested on its own (tests/cuda_emu/README.md). Plain CUDA: the same file
 builds with nvcc, so a GPU can say whether the emulation's answers are the hardware's.
   1. mma.sync m16n8k16 (bf16 -> fp32) against a plain matmul; ldmatrix .x4 and .x4.trans against the element
      distribution of the PTX ISA; ldmatrix feeding mma (the usual attention tiling);
   2. shuffles (idx, up, down, xor, with width 32 and 16), votes, a block reduction through shared memory;
   3. mutations, each in a child process that must be stopped with a report naming the fault: a missing
      __syncthreads, an out-of-bounds write, a read of never-written memory, a missing event wait between
      streams, dynamic shared memory over the limit, a barrier some threads never reach, a misaligned vector
      load, host code dereferencing device memory, a cp.async destination read before its wait, a cp.async
      read by another thread with no barrier after the wait. The same programs without the fault must pass (the
      cp.async pipeline also with the right sums).
*/
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int g_pass = 0, g_fail = 0;
static void result(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    ok ? g_pass++ : g_fail++;
}
#define CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__); exit(1); } } while (0)

static float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }
static float rnd(uint32_t *s) { return bf16_round((lcg(s) % 2001) / 1000.0f - 1.0f); }

/* ---- the PTX under test, one instruction per function ---- */
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(row)));
}

/* cp.async.cg (16 bytes, global -> shared, L2 only), its groups, and the waits: at most 1 group pending, none */
__device__ __forceinline__ void cp_async_16(void *dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_1() {
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

__device__ uint32_t pair(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint32_t *>(p); }
__device__ uint32_t pair2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

/* D (16x8) = A (16x16, row-major) B (16x8, row-major) + C, fragments loaded by the documented layout */
__global__ void mma_kernel(float *D, const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C) {
    int l = threadIdx.x, g = l / 4, q = l % 4;
    uint32_t a[4] = {pair(A + g * 16 + 2 * q), pair(A + (g + 8) * 16 + 2 * q), pair(A + g * 16 + 2 * q + 8),
                     pair(A + (g + 8) * 16 + 2 * q + 8)};
    uint32_t b[2] = {pair2(B[(2 * q) * 8 + g], B[(2 * q + 1) * 8 + g]), pair2(B[(2 * q + 8) * 8 + g], B[(2 * q + 9) * 8 + g])};
    float c[4] = {C[g * 8 + 2 * q], C[g * 8 + 2 * q + 1], C[(g + 8) * 8 + 2 * q], C[(g + 8) * 8 + 2 * q + 1]};
    mma_16816(c, a, b);
    D[g * 8 + 2 * q] = c[0]; D[g * 8 + 2 * q + 1] = c[1]; D[(g + 8) * 8 + 2 * q] = c[2]; D[(g + 8) * 8 + 2 * q + 1] = c[3];
}

/* the same product with A read by ldmatrix.x4 (rows of the four 8x8 quarters) and B (stored k-major, 16x8) by
   ldmatrix.x4.trans of B^T... here B is given as Bt (8x16, row n holds column n of B), read with plain .x4 */
__global__ void ldm_mma_kernel(float *D, const __nv_bfloat16 *A, const __nv_bfloat16 *Bt) {
    __shared__ __align__(16) __nv_bfloat16 As[16 * 16], Bs[8 * 16];
    int l = threadIdx.x;
    for (int i = l; i < 256; i += 32) As[i] = A[i];
    for (int i = l; i < 128; i += 32) Bs[i] = Bt[i];
    __syncwarp();
    uint32_t a[4], bb[4];
    /* matrix m = l / 8: rows (m % 2) * 8 + l % 8, columns (m / 2) * 8 */
    ldmatrix_x4(a, As + ((l / 8) % 2 * 8 + l % 8) * 16 + (l / 16) * 8);
    /* B^T rows n = l % 8, k half = l / 8 (only halves 0 and 1 used: matrices 2, 3 repeat them) */
    ldmatrix_x4(bb, Bs + (l % 8) * 16 + ((l / 8) % 2) * 8);
    uint32_t b[2] = {bb[0], bb[1]};
    float c[4] = {0, 0, 0, 0};
    mma_16816(c, a, b);
    int g = l / 4, q = l % 4;
    D[g * 8 + 2 * q] = c[0]; D[g * 8 + 2 * q + 1] = c[1]; D[(g + 8) * 8 + 2 * q] = c[2]; D[(g + 8) * 8 + 2 * q + 1] = c[3];
}

/* every register of ldmatrix.x4(.trans) on a 32x8 tile whose element (r, c) holds r * 8 + c */
__global__ void ldm_kernel(uint32_t *out, int trans) {
    __shared__ __align__(16) unsigned short M[32 * 8];
    int l = threadIdx.x;
    for (int c = 0; c < 8; c++) M[l * 8 + c] = (unsigned short)(l * 8 + c);
    __syncwarp();
    uint32_t r[4];
    if (trans) ldmatrix_x4_trans(r, M + l * 8);
    else ldmatrix_x4(r, M + l * 8);
    for (int i = 0; i < 4; i++) out[l * 4 + i] = r[i];
}

static void test_mma(void) {
    uint32_t s = 7;
    float A[256], B[128], C[128], Bt[128];
    __nv_bfloat16 Ab[256], Bb[128], Btb[128];
    for (int i = 0; i < 256; i++) { A[i] = rnd(&s); Ab[i] = __float2bfloat16_rn(A[i]); }
    for (int i = 0; i < 128; i++) { B[i] = rnd(&s); Bb[i] = __float2bfloat16_rn(B[i]); C[i] = rnd(&s); }
    for (int n = 0; n < 8; n++) for (int k = 0; k < 16; k++) { Bt[n * 16 + k] = B[k * 8 + n]; Btb[n * 16 + k] = Bb[k * 8 + n]; }
    __nv_bfloat16 *dA, *dB, *dBt;
    float *dC, *dD;
    CHECK(cudaMalloc(&dA, sizeof(Ab))); CHECK(cudaMalloc(&dB, sizeof(Bb))); CHECK(cudaMalloc(&dBt, sizeof(Btb)));
    CHECK(cudaMalloc(&dC, sizeof(C))); CHECK(cudaMalloc(&dD, sizeof(C)));
    CHECK(cudaMemcpy(dA, Ab, sizeof(Ab), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dB, Bb, sizeof(Bb), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dBt, Btb, sizeof(Btb), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dC, C, sizeof(C), cudaMemcpyHostToDevice));
    float D[128], ref[128], err = 0, err2 = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
            double acc = 0;
            for (int k = 0; k < 16; k++) acc += (double)A[i * 16 + k] * B[k * 8 + j];
            ref[i * 8 + j] = (float)acc;
        }
    mma_kernel<<<1, 32>>>(dD, dA, dB, dC);
    CHECK(cudaMemcpy(D, dD, sizeof(D), cudaMemcpyDeviceToHost));
    for (int i = 0; i < 128; i++) err = fmaxf(err, fabsf(D[i] - (ref[i] + C[i])));
    result(err < 1e-5f, "mma.sync m16n8k16 bf16 = plain matmul + C (fragments by the PTX layout)");
    ldm_mma_kernel<<<1, 32>>>(dD, dA, dBt);
    CHECK(cudaMemcpy(D, dD, sizeof(D), cudaMemcpyDeviceToHost));
    for (int i = 0; i < 128; i++) err2 = fmaxf(err2, fabsf(D[i] - ref[i]));
    result(err2 < 1e-5f, "ldmatrix.x4 fragments feeding mma.sync = plain matmul");

    uint32_t *dout, out[128];
    CHECK(cudaMalloc(&dout, sizeof(out)));
    for (int trans = 0; trans < 2; trans++) {
        ldm_kernel<<<1, 32>>>(dout, trans);
        CHECK(cudaMemcpy(out, dout, sizeof(out), cudaMemcpyDeviceToHost));
        int ok = 1;
        for (int l = 0; l < 32; l++)
            for (int i = 0; i < 4; i++) {
                /* matrix i is rows 8i..8i+7 of the tile; lane l holds (row l/4, cols 2(l%4), +1), or transposed */
                int r = l / 4, c = 2 * (l % 4);
                uint32_t e0 = trans ? (8 * i + c) * 8 + r : (8 * i + r) * 8 + c;
                uint32_t e1 = trans ? (8 * i + c + 1) * 8 + r : (8 * i + r) * 8 + c + 1;
                if (out[l * 4 + i] != (e0 | e1 << 16)) ok = 0;
            }
        result(ok, trans ? "ldmatrix.x4.trans: each lane's registers as the PTX ISA distributes them"
                         : "ldmatrix.x4: each lane's registers as the PTX ISA distributes them");
    }
    cudaFree(dA); cudaFree(dB); cudaFree(dBt); cudaFree(dC); cudaFree(dD); cudaFree(dout);
}

/* ---- shuffles, votes, a block reduction ---- */
__global__ void shfl_kernel(int *out) {
    int l = threadIdx.x;
    out[0 * 32 + l] = __shfl_sync(0xffffffffu, l * 10, 5);
    out[1 * 32 + l] = __shfl_sync(0xffffffffu, l * 10, 3, 16);
    out[2 * 32 + l] = __shfl_up_sync(0xffffffffu, l * 10, 2);
    out[3 * 32 + l] = __shfl_down_sync(0xffffffffu, l * 10, 3, 16);
    out[4 * 32 + l] = __shfl_xor_sync(0xffffffffu, l * 10, 6);
    out[5 * 32 + l] = (int)__ballot_sync(0xffffffffu, l % 3 == 0);
    out[6 * 32 + l] = __any_sync(0xffffffffu, l == 17) + 2 * __all_sync(0xffffffffu, l < 32);
}
static int shfl_expect(int k, int l) {
    switch (k) {
    case 0: return 50;
    case 1: return ((l / 16) * 16 + 3) * 10;
    case 2: return (l >= 2 ? l - 2 : l) * 10;
    case 3: return (l % 16 + 3 < 16 ? l + 3 : l) * 10;
    case 4: return (l ^ 6) * 10;
    case 5: { unsigned b = 0; for (int i = 0; i < 32; i += 3) b |= 1u << i; return (int)b; }
    default: return 3;
    }
}

/* sum of n floats by one block of 256: a shared-memory tree; with barrier = 0 the __syncthreads are missing */
__global__ void block_sum_kernel(float *out, const float *x, int n, int barrier) {
    __shared__ float sh[256];
    float s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    sh[threadIdx.x] = s;
    if (barrier) __syncthreads();
    for (int h = 128; h > 0; h >>= 1) {
        if (threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
        if (barrier) __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = sh[0];
}

static void test_collectives(void) {
    int *d, h[7 * 32];
    CHECK(cudaMalloc(&d, sizeof(h)));
    shfl_kernel<<<1, 32>>>(d);
    CHECK(cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost));
    static const char *what[] = {"__shfl_sync", "__shfl_sync width 16", "__shfl_up_sync", "__shfl_down_sync width 16",
                                 "__shfl_xor_sync", "__ballot_sync", "__any_sync / __all_sync"};
    for (int k = 0; k < 7; k++) {
        int ok = 1;
        for (int l = 0; l < 32; l++) if (h[k * 32 + l] != shfl_expect(k, l)) ok = 0;
        result(ok, what[k]);
    }
    float x[1000], *dx, *dout, got;
    double ref = 0;
    for (int i = 0; i < 1000; i++) { x[i] = (float)(i % 7) - 3.0f; ref += x[i]; }
    CHECK(cudaMalloc(&dx, sizeof(x))); CHECK(cudaMalloc(&dout, 4));
    CHECK(cudaMemcpy(dx, x, sizeof(x), cudaMemcpyHostToDevice));
    block_sum_kernel<<<1, 256>>>(dout, dx, 1000, 1);
    CHECK(cudaMemcpy(&got, dout, 4, cudaMemcpyDeviceToHost));
    result(got == (float)ref, "block reduction through shared memory with __syncthreads");
    cudaFree(d); cudaFree(dx); cudaFree(dout);
}

/* ---- mutations: each runs in a child; 0 = the correct program, 1 = the fault ---- */
__global__ void write_n_kernel(float *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 1.0f;
}
__global__ void copy_kernel(float *out, const float *in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i] * 2.0f;
}
__global__ void smem_kernel(float *out) {
    extern __shared__ float dyn[];
    dyn[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = dyn[(threadIdx.x + 1) % blockDim.x];
}
__global__ void early_exit_kernel(float *out, int n) {
    __shared__ float sh[64];
    int i = threadIdx.x;
    if (i >= n) return;   /* the fault when n < blockDim.x: the others wait at a barrier these never reach */
    sh[i] = (float)i;
    __syncthreads();
    out[i] = sh[n - 1 - i];
}
__global__ void vec_kernel(float *out, const float *in, int offset) {
    float4 v = *reinterpret_cast<const float4 *>(in + offset);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

/* a double-buffered cp.async pipeline: 64 threads copy tile j + 1 (256 floats, 16 bytes each) while they read
   tile j, each thread a word another thread copied. fault 1: no wait before the read; fault 2: no __syncthreads
   between the wait and the read. out[t] = sum over tiles of in[j][(4t + 5) % 256]. */
__global__ void pipeline_kernel(float *out, const float *in, int ntiles, int fault) {
    __shared__ __align__(16) float buf[2][256];
    int t = threadIdx.x;
    float acc = 0.0f;
    cp_async_16(&buf[0][4 * t], in + 4 * t);
    cp_async_commit();
    for (int j = 0; j < ntiles; j++) {
        if (j + 1 < ntiles) {
            cp_async_16(&buf[(j + 1) % 2][4 * t], in + (j + 1) * 256 + 4 * t);
            cp_async_commit();
            if (fault != 1) cp_async_wait_1();     /* tile j has landed; tile j + 1 may still be in flight */
        } else if (fault != 1) cp_async_wait_all();
        if (fault != 2) __syncthreads();
        acc += buf[j % 2][(4 * t + 5) % 256];
        __syncthreads();                           /* everyone is done with buf[j % 2] before it is refilled */
    }
    out[t] = acc;
}

static void mutation(int fault, int which) {
    float *a, *b, h[256];
    CHECK(cudaMalloc(&a, 256 * 4)); CHECK(cudaMalloc(&b, 256 * 4));
    for (int i = 0; i < 256; i++) h[i] = (float)i;
    switch (which) {
    case 0: {   /* a missing __syncthreads */
        CHECK(cudaMemcpy(b, h, sizeof(h), cudaMemcpyHostToDevice));
        block_sum_kernel<<<1, 256>>>(a, b, 256, !fault);
        break;
    }
    case 1:     /* an out-of-bounds write: one element past a 255-element buffer */
        write_n_kernel<<<1, 256>>>(a + 1, fault ? 256 : 255);
        break;
    case 2:     /* a read of memory never written */
        if (!fault) CHECK(cudaMemcpy(b, h, sizeof(h), cudaMemcpyHostToDevice));
        copy_kernel<<<1, 256>>>(a, b, 256);
        break;
    case 3: {   /* a missing event wait: b written on s1, read on s2 */
        cudaStream_t s1, s2;
        cudaEvent_t e;
        CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
        CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
        CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        write_n_kernel<<<1, 256, 0, s1>>>(b, 256);
        CHECK(cudaEventRecord(e, s1));
        if (!fault) CHECK(cudaStreamWaitEvent(s2, e, 0));
        copy_kernel<<<1, 256, 0, s2>>>(a, b, 256);
        CHECK(cudaStreamSynchronize(s2));
        CHECK(cudaStreamSynchronize(s1));
        break;
    }
    case 4: {   /* 64 KB of dynamic shared memory without raising the kernel's limit */
        if (!fault) CHECK(cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536));
        smem_kernel<<<1, 256, 65536>>>(a);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) { fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(e)); _exit(3); }
        break;
    }
    case 5:     /* a barrier some threads never reach */
        early_exit_kernel<<<1, 64>>>(a, fault ? 40 : 64);
        break;
    case 6:     /* a misaligned float4 load */
        CHECK(cudaMemcpy(b, h, sizeof(h), cudaMemcpyHostToDevice));
        vec_kernel<<<1, 32>>>(a, b, fault ? 2 : 4);
        break;
    case 7:     /* host code reading device memory */
        CHECK(cudaMemcpy(b, h, sizeof(h), cudaMemcpyHostToDevice));
        CHECK(cudaDeviceSynchronize());
        if (fault) printf("%g\n", b[3]);
        break;
    case 8:     /* a read of a cp.async's destination before the wait */
    case 9: {   /* the wait, but no __syncthreads before reading another thread's copy */
        float *in, hin[3 * 256], hout[64];
        CHECK(cudaMalloc(&in, sizeof(hin)));
        for (int i = 0; i < 3 * 256; i++) hin[i] = (float)(i % 97) - 40.0f;
        CHECK(cudaMemcpy(in, hin, sizeof(hin), cudaMemcpyHostToDevice));
        pipeline_kernel<<<1, 64>>>(a, in, 3, fault ? which - 7 : 0);
        CHECK(cudaMemcpy(hout, a, sizeof(hout), cudaMemcpyDeviceToHost));
        for (int t = 0; t < 64; t++) {
            float want = 0.0f;
            for (int j = 0; j < 3; j++) want += hin[j * 256 + (4 * t + 5) % 256];
            if (hout[t] != want) { fprintf(stderr, "pipeline: out[%d] = %g, want %g\n", t, hout[t], want); _exit(4); }
        }
        break;
    }
    }
    CHECK(cudaDeviceSynchronize());
}

static void test_mutations(void) {
    static const struct { const char *what, *report; int code; } M[] = {
        {"a missing __syncthreads", "shared-memory", 99},
        {"an out-of-bounds write", "out-of-bounds", 99},
        {"a read of never-written memory", "never written", 99},
        {"a missing event wait between streams", "no event wait", 99},
        {"dynamic shared memory over the 48 KB limit", "limit is 49152", 3},
        {"a barrier some threads never reach", "never reach", 99},
        {"a misaligned float4 load", "misaligned load", 99},
        {"host code reading device memory", "host code reads device memory", 99},
        {"a read of a cp.async's destination before its wait", "still in flight", 99},
        {"a read of another thread's cp.async with no __syncthreads after the wait", "shared-memory", 99},
    };
    for (int m = 0; m < (int)(sizeof(M) / sizeof(M[0])); m++)
        for (int fault = 0; fault < 2; fault++) {
            int fd[2];
            if (pipe(fd)) { perror("pipe"); exit(1); }
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                dup2(fd[1], 2);
                close(fd[0]);
                mutation(fault, m);
                _exit(0);
            }
            close(fd[1]);
            char buf[4096] = {0};
            size_t got = 0;
            ssize_t r;
            while (got < sizeof(buf) - 1 && (r = read(fd[0], buf + got, sizeof(buf) - 1 - got)) > 0) got += (size_t)r;
            close(fd[0]);
            int st = 0;
            waitpid(pid, &st, 0);
            int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            char what[160];
            int ok;
            if (fault) {
                ok = code == M[m].code && strstr(buf, M[m].report) != NULL;
                snprintf(what, sizeof(what), "reported: %s", M[m].what);
            } else {
                ok = code == 0;
                snprintf(what, sizeof(what), "no report without the fault: %s", M[m].what);
            }
            result(ok, what);
            if (!ok) printf("       exit %d, stderr: %s\n", code, buf);
        }
}

int main(void) {
    test_mma();
    test_collectives();
    test_mutations();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
