/*
 cuda_runtime.h (emulation): the part of the CUDA runtime and of the device language that train_gpu.cu uses,
 run on the host (tests/cuda_emu/README.md). Kernels are plain functions; emu_launch (which the source rewrite
 puts where `<<<...>>>` was) runs one fiber per CUDA thread. Semantics follow the CUDA C++ Programming Guide.
*/
#ifndef EMU_CUDA_RUNTIME_H
#define EMU_CUDA_RUNTIME_H

#include "emu_core.h"
#include <math.h>
#include <string.h>

/* ---- qualifiers: kernels and device functions are host functions here ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
/* static shared memory: one copy, in its own section, so its addresses are known (blocks run one at a time) */
#define __shared__ static __attribute__((section("emu_smem")))

/* ---- vector types and the built-in variables ---- */
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
static inline float2 make_float2(float x, float y) { float2 r = {x, y}; return r; }
static inline float4 make_float4(float x, float y, float z, float w) { float4 r = {x, y, z, w}; return r; }

extern uint3 emu_threadIdx, emu_blockIdx;
extern dim3 emu_blockDim, emu_gridDim;
#define threadIdx emu_threadIdx
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim
static const int warpSize = 32;

/* ---- synchronisation, warp collectives, atomics (emu_runtime.cpp) ---- */
enum EmuWarpOp { EMU_SHFL_IDX, EMU_SHFL_UP, EMU_SHFL_DOWN, EMU_SHFL_XOR, EMU_BALLOT, EMU_ALL, EMU_ANY, EMU_SYNCWARP,
                 EMU_MMA_16816, EMU_LDMATRIX_X4, EMU_LDMATRIX_X4_TRANS };
void emu_syncthreads(void);
uint64_t emu_warp_op(int op, unsigned mask, uint64_t value, int arg, int width);
unsigned emu_activemask(void);

static inline void __syncthreads(void) { emu_syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu_warp_op(EMU_SYNCWARP, mask, 0, 0, 32); }
static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename V> static inline V emu_shfl(int op, unsigned mask, V v, int arg, int width) {
    static_assert(sizeof(V) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(V));
    bits = emu_warp_op(op, mask, bits, arg, width);
    V r;
    memcpy(&r, &bits, sizeof(V));
    return r;
}
template <typename V> static inline V __shfl_sync(unsigned mask, V v, int src, int width = 32) { return emu_shfl(EMU_SHFL_IDX, mask, v, src, width); }
template <typename V> static inline V __shfl_up_sync(unsigned mask, V v, unsigned d, int width = 32) { return emu_shfl(EMU_SHFL_UP, mask, v, (int)d, width); }
template <typename V> static inline V __shfl_down_sync(unsigned mask, V v, unsigned d, int width = 32) { return emu_shfl(EMU_SHFL_DOWN, mask, v, (int)d, width); }
template <typename V> static inline V __shfl_xor_sync(unsigned mask, V v, int lm, int width = 32) { return emu_shfl(EMU_SHFL_XOR, mask, v, lm, width); }
static inline unsigned __ballot_sync(unsigned mask, int p) { return (unsigned)emu_warp_op(EMU_BALLOT, mask, p != 0, 0, 32); }
static inline int __all_sync(unsigned mask, int p) { return (int)emu_warp_op(EMU_ALL, mask, p != 0, 0, 32); }
static inline int __any_sync(unsigned mask, int p) { return (int)emu_warp_op(EMU_ANY, mask, p != 0, 0, 32); }
static inline unsigned __activemask(void) { return emu_activemask(); }

/* the inline-PTX functions of train_gpu.cu: each lane hands its fragments to a warp collective */
struct EmuMmaArgs { float *c; const uint32_t *a, *b; };
static inline void emu_mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    EmuMmaArgs x = {c, a, b};
    emu_warp_op(EMU_MMA_16816, 0xffffffffu, (uint64_t)(uintptr_t)&x, 0, 32);
}
/* ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lane l gives the address of row l % 8 of matrix l / 8 */
struct EmuLdmArgs { uint32_t *r; const void *row; };
static inline void emu_ldmatrix_x4(uint32_t r[4], const void *row) {
    EmuLdmArgs x = {r, row};
    emu_warp_op(EMU_LDMATRIX_X4, 0xffffffffu, (uint64_t)(uintptr_t)&x, 0, 32);
}
static inline void emu_ldmatrix_x4_trans(uint32_t r[4], const void *row) {
    EmuLdmArgs x = {r, row};
    emu_warp_op(EMU_LDMATRIX_X4_TRANS, 0xffffffffu, (uint64_t)(uintptr_t)&x, 0, 32);
}

/* cp.async.cg.shared.global (16 bytes), commit_group, wait_group N, wait_all: the bytes land in shared memory at
   the issuing thread's wait, not before (emu_runtime.cpp) */
void emu_cp_async_16(void *dst, const void *src);
void emu_cp_async_commit(void);
void emu_cp_async_wait_group(int n);
static inline void emu_cp_async_wait_1(void) { emu_cp_async_wait_group(1); }
static inline void emu_cp_async_wait_all(void) { emu_cp_async_commit(); emu_cp_async_wait_group(0); }

float emu_atomic_add_f32(float *p, float v);
double emu_atomic_add_f64(double *p, double v);
int emu_atomic_add_i32(int *p, int v);
unsigned emu_atomic_add_u32(unsigned *p, unsigned v);
unsigned long long emu_atomic_add_u64(unsigned long long *p, unsigned long long v);
int emu_atomic_max_i32(int *p, int v);
int emu_atomic_cas_i32(int *p, int cmp, int v);
unsigned emu_atomic_cas_u32(unsigned *p, unsigned cmp, unsigned v);
int emu_atomic_exch_i32(int *p, int v);
static inline float atomicAdd(float *p, float v) { return emu_atomic_add_f32(p, v); }
static inline double atomicAdd(double *p, double v) { return emu_atomic_add_f64(p, v); }
static inline int atomicAdd(int *p, int v) { return emu_atomic_add_i32(p, v); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return emu_atomic_add_u32(p, v); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { return emu_atomic_add_u64(p, v); }
static inline int atomicMax(int *p, int v) { return emu_atomic_max_i32(p, v); }
static inline int atomicCAS(int *p, int c, int v) { return emu_atomic_cas_i32(p, c, v); }
static inline unsigned atomicCAS(unsigned *p, unsigned c, unsigned v) { return emu_atomic_cas_u32(p, c, v); }
static inline int atomicExch(int *p, int v) { return emu_atomic_exch_i32(p, v); }

/* device math intrinsics that the host library lacks (the fast versions are given their accurate results) */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
/* CUDA's min and max for the integer and float types */
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
template <typename V> static inline V __ldg(const V *p) { return *p; }

/* ---- the runtime API ---- */
typedef enum cudaError {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9, cudaErrorInvalidMemcpyDirection = 21, cudaErrorInsufficientDriver = 35,
    cudaErrorInvalidDeviceFunction = 98, cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400, cudaErrorNotReady = 600, cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701, cudaErrorLaunchFailure = 719
} cudaError_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8, cudaFuncAttributePreferredSharedMemoryCarveout = 9 };
enum cudaDeviceAttr { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrMultiProcessorCount = 16,
                      cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00

struct EmuEvent;
typedef struct EmuEvent *cudaEvent_t;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
    int regsPerBlock, warpSize, maxThreadsPerBlock, maxThreadsDim[3], maxGridSize[3];
    int major, minor, multiProcessorCount, maxThreadsPerMultiProcessor, clockRate, memoryClockRate, memoryBusWidth;
    int l2CacheSize;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags);
cudaError_t cudaFreeHost(void *p);
template <typename V> static inline cudaError_t cudaMalloc(V **p, size_t n) { return cudaMalloc((void **)p, n); }
template <typename V> static inline cudaError_t cudaMallocHost(V **p, size_t n) { return cudaMallocHost((void **)p, n); }
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s = 0);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned flags, int priority);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t emu_func_set_attribute(const void *f, cudaFuncAttribute a, int v);
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F *f, cudaFuncAttribute a, int v) {
    return emu_func_set_attribute((const void *)f, a, v);
}
/* the dynamic shared memory of the running block */
void *emu_dynamic_smem(void);

/* ---- kernel launch: `kernel<<<grid, block, smem, stream>>>(args);` is rewritten (emu_source.sh) to
   `emu_launch([&]() { kernel(args); }, (const void *)kernel, "kernel", grid, block, smem, stream);`: each CUDA
   thread calls the kernel with the arguments (pure expressions in the code under test) */
void emu_run_kernel(const char *name, const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                    void (*body)(void *), void *ctx);
template <typename L> static void emu_body(void *ctx) { (*(L *)ctx)(); }
template <typename L>
static inline void emu_launch(L call, const void *fn, const char *name, dim3 grid, dim3 block, size_t smem = 0,
                              cudaStream_t s = 0) {
    emu_run_kernel(name, fn, grid, block, smem, s, emu_body<L>, &call);
}

#endif
