/*
 emu_core.h — the CUDA emulation's core, shared by the runtime (emu_runtime.cpp), the library emulations
 (emu_cublaslt.cpp, emu_nccl.cpp) and the device-side header (cuda_runtime.h). See tests/cuda_emu/README.md.

 A kernel runs on the host: one fiber per CUDA thread, the blocks of a grid one after another. Every load and
 store of the code under test is compiled with gcc's -fsanitize=kernel-address and
 --param asan-instrumentation-with-call-threshold=0, so it calls __asan_load4_noabort(addr) and the like; the
 runtime answers those calls by checking the address against its own maps of device memory, pinned host
 memory and shared memory. The runtime itself and the libraries are compiled without instrumentation and
 report their accesses with emu_access().
*/
#ifndef EMU_CORE_H
#define EMU_CORE_H

#include <stddef.h>
#include <stdint.h>

struct EmuStream;
typedef struct EmuStream *cudaStream_t;

/* an operation issued by the host on stream s (a kernel, a copy, a library call): every access it makes is
   checked against the stream order (a buffer last written on another stream must be ordered before it by an
   event wait or a host synchronisation) */
void emu_op_begin(cudaStream_t s, const char *what);
void emu_op_end(void);
/* the current operation (or the host, outside any) reads (write = 0) or writes (write = 1) [p, p + bytes):
   checks bounds, initialisation (reads) and stream order; a write marks the bytes initialised */
void emu_access(const void *p, size_t bytes, int write);
/* a failure of the code under test: prints "cuda-emu: <message>" with the kernel or operation and exits 99 */
[[noreturn]] void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* bf16 <-> fp32, bit-exact to the hardware: round to nearest even; NaN stays NaN (quiet) */
static inline uint16_t emu_bf16_from_float_rn(float f) {
    uint32_t b;
    __builtin_memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x0040u);   /* NaN: keep sign, quiet */
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}
static inline float emu_bf16_to_float(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &b, 4);
    return f;
}

#endif
