/*
 emu_runtime.cpp — the CUDA emulation's runtime: memory with checks, streams and events with the ordering
 checked, kernels as fibers (one per CUDA thread), barriers and warp collectives, mma.sync and ldmatrix.
 Compiled without instrumentation; the code under test calls it through cuda_runtime.h and the
 __asan_*_noabort hooks at the end of this file. tests/cuda_emu/README.md says what is checked.

 Memory map: one reservation holds the dynamic shared memory of the running block, then device memory, then
 pinned host memory. Every byte of the last two has a state (unallocated, allocated, written); every 4-byte
 granule remembers the last operation that wrote it and the last that read it. An operation (kernel, copy,
 memset, library call) belongs to a stream; each stream keeps a vector clock over all streams and the host,
 advanced by its own operations, event waits, and the host's issue order; an access is ordered after the
 operation that last touched the granule when the current clock has seen that operation.
*/
#include "emu_core.h"
#include "cuda_runtime.h"

#include <errno.h>
#include <execinfo.h>
#include <map>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

/* ------------------------------------------------------------------------------------------------ */
/* limits of the emulated device: an sm_90 part (CUDA C++ Programming Guide, "Compute Capabilities") */

#define SMEM_STATIC_MAX (48u * 1024)        /* shared memory without opting in */
#define SMEM_OPTIN_MAX (227u * 1024)        /* sm_90: the most one block can opt in to */
#define DEV_BYTES (80ull << 30)             /* reported total memory; also the size of the device arena */
#define PIN_BYTES (16ull << 30)
#define MAXS 64                             /* streams (index MAXS - 1 is the host) */
#define HOST (MAXS - 1)

/* ------------------------------------------------------------------------------------------------ */
/* state and reports */

uint3 emu_threadIdx, emu_blockIdx;
dim3 emu_blockDim, emu_gridDim;

struct Op { int stream; uint32_t clock; const char *what; };
static std::vector<Op> g_ops(1);            /* op 0: none */
static uint32_t g_op = 0;                    /* the running operation, 0 = the host */
static const char *g_kernel = NULL;          /* the running kernel's name */
static int g_device = 0;
static pthread_mutex_t g_host_lock = PTHREAD_MUTEX_INITIALIZER;

struct EmuFiber;
static EmuFiber *g_cur = NULL;               /* the CUDA thread running now (in a kernel) */
static void where(char *buf, size_t n);

void emu_fail(const char *fmt, ...) {
    char ctx[256];
    where(ctx, sizeof(ctx));
    fflush(stdout);
    fprintf(stderr, "cuda-emu: ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", ctx);
    if (getenv("CUDA_EMU_BACKTRACE")) {   /* the host's call stack (symbols with -rdynamic) */
        void *frames[32];
        int n = backtrace(frames, 32);
        backtrace_symbols_fd(frames, n, 2);
    }
    fflush(stderr);
    _exit(99);
}

/* ------------------------------------------------------------------------------------------------ */
/* the reservation and its shadows */

static char *g_base = NULL;                  /* [dyn smem | device | pinned] */
static size_t g_span = 0;
static char *g_dev = NULL, *g_pin = NULL, *g_dyn = NULL;
static size_t g_dev_top = 0, g_pin_top = 0;  /* bump pointers (memory is never reused: a stale pointer is caught) */
static size_t g_dev_used = 0;
static uint8_t *g_state = NULL;              /* per byte of device + pinned: 0 unallocated, 1 allocated, 2 written */
static uint32_t *g_wop = NULL, *g_rop = NULL;/* per 4-byte granule: last writer, last reader */
static std::map<uintptr_t, size_t> g_allocs; /* base -> size, device and pinned */
enum { ST_NONE = 0, ST_ALLOC = 1, ST_INIT = 2 };

extern "C" char __start_emu_smem[] __attribute__((weak)), __stop_emu_smem[] __attribute__((weak));

static void *reserve(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { fprintf(stderr, "cuda-emu: cannot reserve %zu bytes of address space\n", n); exit(99); }
    return p;
}

static void arena_init(void) {
    if (g_base) return;
    g_span = (size_t)SMEM_OPTIN_MAX + 65536 + DEV_BYTES + PIN_BYTES;
    g_base = (char *)reserve(g_span);
    g_dyn = g_base;
    g_dev = g_base + SMEM_OPTIN_MAX + 65536;
    g_pin = g_dev + DEV_BYTES;
    g_state = (uint8_t *)reserve(DEV_BYTES + PIN_BYTES);
    g_wop = (uint32_t *)reserve((DEV_BYTES + PIN_BYTES) / 4 * sizeof(uint32_t));
    g_rop = (uint32_t *)reserve((DEV_BYTES + PIN_BYTES) / 4 * sizeof(uint32_t));
}

/* ------------------------------------------------------------------------------------------------ */
/* streams, events and their vector clocks */

struct EmuStream { int id, nonblocking; uint32_t vc[MAXS]; };
struct EmuEvent { uint32_t vc[MAXS]; int recorded; };
static EmuStream g_legacy = {0, 0, {0}};
static EmuStream *g_streams[MAXS] = {&g_legacy};
static uint32_t g_host_vc[MAXS];
static uint32_t g_host_op = 0, g_host_op_clock = ~0u;
static const uint32_t *g_vc = g_host_vc;     /* the clock of whoever accesses memory now */

static void vc_join(uint32_t *a, const uint32_t *b) { for (int i = 0; i < MAXS; i++) if (b[i] > a[i]) a[i] = b[i]; }
static EmuStream *stream_of(cudaStream_t s) { return s ? s : &g_legacy; }

/* the host's own accesses form an operation on the host "stream", renewed each time it issues work */
static uint32_t host_op(void) {
    if (g_host_op_clock != g_host_vc[HOST]) {
        g_ops.push_back(Op{HOST, g_host_vc[HOST], "host code"});
        g_host_op = (uint32_t)g_ops.size() - 1;
        g_host_op_clock = g_host_vc[HOST];
    }
    return g_host_op;
}

void emu_op_begin(cudaStream_t st, const char *what) {
    arena_init();
    EmuStream *s = stream_of(st);
    if (s->id == 0) {                                    /* the legacy stream waits for every blocking stream */
        for (int i = 1; i < HOST; i++) if (g_streams[i] && !g_streams[i]->nonblocking) vc_join(s->vc, g_streams[i]->vc);
    } else if (!s->nonblocking) vc_join(s->vc, g_legacy.vc);   /* ... and blocking streams wait for it */
    vc_join(s->vc, g_host_vc);                           /* issued after everything the host did so far */
    s->vc[s->id]++;
    g_ops.push_back(Op{s->id, s->vc[s->id], what});
    g_op = (uint32_t)g_ops.size() - 1;
    g_vc = s->vc;
    g_host_vc[HOST]++;                                   /* host accesses after this are not seen by it */
}

void emu_op_end(void) { g_op = 0; g_vc = g_host_vc; }

/* ------------------------------------------------------------------------------------------------ */
/* checks of device and pinned memory */

static int ordered(uint32_t op) {
    if (!op) return 1;
    const Op &o = g_ops[op];
    return g_vc[o.stream] >= o.clock;
}

static const char *stream_name(int id, char *buf, size_t n) {
    if (id == HOST) snprintf(buf, n, "the host");
    else if (id == 0) snprintf(buf, n, "the default stream");
    else snprintf(buf, n, "stream %d", id);
    return buf;
}

static void describe_addr(uintptr_t a, char *buf, size_t n) {
    auto it = g_allocs.upper_bound(a);
    if (it != g_allocs.begin()) {
        --it;
        if (a < it->first + it->second) { snprintf(buf, n, "%zu bytes into an allocation of %zu", (size_t)(a - it->first), it->second); return; }
        snprintf(buf, n, "%zu bytes past the end of an allocation of %zu bytes", (size_t)(a - it->first - it->second), it->second);
        return;
    }
    snprintf(buf, n, "outside every allocation");
}

static void check_global(uintptr_t a, size_t n, int write, int from_kernel) {
    size_t off = a - (uintptr_t)g_dev;
    if (from_kernel && (n == 2 || n == 4 || n == 8 || n == 16) && (a % n))
        emu_fail("misaligned %zu-byte %s at %p", n, write ? "store" : "load", (void *)a);
    uint8_t *st = g_state + off;
    size_t i = 0;                                       /* the common case first: every byte written */
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, st + i, 8);
        if (v != 0x0202020202020202ull) break;
    }
    int all_written = 1;
    for (; i < n; i++) {
        if (st[i] == ST_INIT) continue;
        all_written = 0;
        if (st[i] == ST_NONE) {
            char d[160];
            describe_addr(a + i, d, sizeof(d));
            emu_fail("out-of-bounds %zu-byte %s at %p (%s)", n, write ? "store" : "load", (void *)a, d);
        }
        if (!write) {
            char d[160];
            describe_addr(a + i, d, sizeof(d));
            emu_fail("%zu-byte load at %p reads memory never written (%s)", n, (void *)a, d);
        }
    }
    uint32_t me = g_op ? g_op : host_op();
    static uint32_t seen_me = 0, seen_ok = 0;           /* the last operation found ordered before `me` */
    if (seen_me != me) { seen_me = me; seen_ok = 0; }
    for (size_t g = off / 4; g <= (off + n - 1) / 4; g++) {
        uint32_t w = g_wop[g];
        if (w != me && w != seen_ok && !ordered(w)) {
            char s1[32], s2[32];
            emu_fail("%s of %p: last written by %s on %s, with no event wait or synchronisation between (%s here)",
                     write ? "store" : "load", (void *)a, g_ops[w].what, stream_name(g_ops[w].stream, s1, 32),
                     stream_name(g_ops[me].stream, s2, 32));
        }
        if (w != me) seen_ok = w;
        if (write) {
            uint32_t r = g_rop[g];
            if (r != me && r != seen_ok && !ordered(r)) {
                char s1[32], s2[32];
                emu_fail("store to %p: last read by %s on %s, with no event wait or synchronisation between (%s here)",
                         (void *)a, g_ops[r].what, stream_name(g_ops[r].stream, s1, 32), stream_name(g_ops[me].stream, s2, 32));
            }
            g_wop[g] = me;
        } else g_rop[g] = me;
    }
    if (write && !all_written) memset(st, ST_INIT, n);
}

/* ------------------------------------------------------------------------------------------------ */
/* fibers: one per CUDA thread of the running block */

enum { F_RUN, F_BAR, F_WARP, F_DONE };
struct EmuCopy { char *dst; const char *src; int group; };   /* a cp.async in flight */
struct EmuFiber {
    void *sp;
    char *stack;
    uint3 tid;
    int linear, warp, lane, state;
    uint64_t result;
    std::vector<EmuCopy> copies;             /* this thread's cp.asyncs not yet delivered */
    int groups;                              /* its cp.async.commit_groups so far (the open group's number) */
};

struct WarpGroup { int op, width; unsigned mask, arrived; uint64_t val[32]; int arg[32]; };
struct Warp {
    WarpGroup g[4];
    int ng;
    uint32_t counter;                        /* completed __syncwarp()s */
    uint32_t common[32][32];                 /* common[i][j]: counter after the last __syncwarp with lanes i and j */
};

#define STACK_BYTES (256 * 1024)
static std::vector<EmuFiber> g_fib;
static std::vector<Warp> g_warps;
static void *g_sched_sp = NULL;
static int g_live = 0, g_at_bar = 0, g_exited = 0;
static uint32_t g_bar = 0;                   /* barriers passed by the block */
static void (*g_body)(void *) = NULL;
static void *g_body_ctx = NULL;
static size_t g_dyn_bytes = 0;

static void where(char *buf, size_t n) {
    if (g_kernel && g_cur)
        snprintf(buf, n, "\n    in kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", g_kernel, emu_blockIdx.x,
                 emu_blockIdx.y, emu_blockIdx.z, g_cur->tid.x, g_cur->tid.y, g_cur->tid.z);
    else if (g_op) snprintf(buf, n, "\n    in %s", g_ops[g_op].what);
    else snprintf(buf, n, "\n    in host code");
}

/* x86-64 System V: save the callee-saved registers on the old stack, switch stacks, restore */
extern "C" void emu_swap(void **save, void *to);
__asm__(".text\n.globl emu_swap\n.type emu_swap,@function\nemu_swap:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
        ".size emu_swap, .-emu_swap\n");

static void shared_block_start(void);
static void fiber_exit(void);

static void yield(void) { emu_swap(&g_cur->sp, g_sched_sp); }

extern "C" void emu_fiber_entry(void) {
    g_body(g_body_ctx);
    fiber_exit();
    g_cur->state = F_DONE;
    yield();
    abort();   /* a finished fiber is never resumed */
}

static void fiber_start(EmuFiber *f) {
    if (!f->stack) {
        f->stack = (char *)mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (f->stack == MAP_FAILED) { fprintf(stderr, "cuda-emu: no memory for a fiber stack\n"); exit(99); }
        mprotect(f->stack, 4096, PROT_NONE);   /* a stack overflow faults */
    }
    uintptr_t top = ((uintptr_t)f->stack + STACK_BYTES) & ~(uintptr_t)15;
    void **sp = (void **)(top - 8 * sizeof(void *));
    for (int i = 0; i < 6; i++) sp[i] = 0;
    sp[6] = (void *)emu_fiber_entry;
    sp[7] = 0;
    f->sp = sp;
    f->state = F_RUN;
    f->copies.clear();
    f->groups = 0;
}

static const char *op_name(int op) {
    static const char *n[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                              "__all_sync", "__any_sync", "__syncwarp", "mma.sync.m16n8k16", "ldmatrix.x4",
                              "ldmatrix.x4.trans"};
    return n[op];
}

static void deadlock(void) {
    char msg[1024];
    int n = snprintf(msg, sizeof(msg), "deadlock: %d threads wait at __syncthreads while %d have exited", g_at_bar, g_exited);
    for (size_t w = 0; w < g_warps.size(); w++)
        for (int k = 0; k < g_warps[w].ng && n < 900; k++) {
            WarpGroup &G = g_warps[w].g[k];
            n += snprintf(msg + n, sizeof(msg) - n, "; warp %zu: %s with mask %08x has lanes %08x", w, op_name(G.op), G.mask, G.arrived);
        }
    g_cur = NULL;
    emu_fail("%s (a barrier or warp collective some threads can never reach)", msg);
}

void emu_syncthreads(void) {
    if (!g_cur) emu_fail("__syncthreads outside a kernel");
    if (g_exited) emu_fail("__syncthreads after %d threads of the block exited: a barrier they never reach", g_exited);
    g_cur->state = F_BAR;
    if (++g_at_bar == g_live) {
        for (auto &f : g_fib) if (f.state == F_BAR) f.state = F_RUN;
        g_at_bar = 0;
        g_bar++;
    }
    yield();
}

unsigned emu_activemask(void) {
    unsigned m = 0;
    int w = g_cur->warp;
    for (auto &f : g_fib) if (f.warp == w && f.state != F_DONE) m |= 1u << f.lane;
    return m;
}

static unsigned warp_lanes(int w) {
    int n = (int)g_fib.size() - 32 * w;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

static void mma_16816(WarpGroup &G);
static void ldmatrix_x4(WarpGroup &G, int trans);

/* a warp collective is complete: every lane of the mask has arrived; compute each lane's result */
static void warp_complete(Warp &W, WarpGroup &G, int w) {
    uint64_t res[32] = {0};
    for (int l = 0; l < 32; l++) {
        if (!(G.mask >> l & 1)) continue;
        int width = G.width, seg = l & ~(width - 1), src = l;
        switch (G.op) {
        case EMU_SHFL_IDX: src = seg + (G.arg[l] & (width - 1)); break;
        case EMU_SHFL_UP: src = (l - seg) >= G.arg[l] ? l - G.arg[l] : l; break;
        case EMU_SHFL_DOWN: src = (l - seg) + G.arg[l] < width ? l + G.arg[l] : l; break;
        case EMU_SHFL_XOR: src = l ^ G.arg[l]; if (src > seg + width - 1 || src > 31) src = l; break;
        default: break;
        }
        if (G.op <= EMU_SHFL_XOR) {
            if (!(G.mask >> src & 1)) emu_fail("lane %d of warp %d reads lane %d in %s, which is not in the mask %08x", l, w, src, op_name(G.op), G.mask);
            res[l] = G.val[src];
        }
    }
    if (G.op == EMU_BALLOT || G.op == EMU_ALL || G.op == EMU_ANY) {
        unsigned b = 0;
        for (int l = 0; l < 32; l++) if ((G.mask >> l & 1) && G.val[l]) b |= 1u << l;
        uint64_t r = G.op == EMU_BALLOT ? b : G.op == EMU_ALL ? (b == G.mask) : (b != 0);
        for (int l = 0; l < 32; l++) res[l] = r;
    }
    if (G.op == EMU_SYNCWARP) {
        W.counter++;
        for (int i = 0; i < 32; i++) if (G.mask >> i & 1)
            for (int j = 0; j < 32; j++) if (G.mask >> j & 1) W.common[i][j] = W.counter;
    }
    if (G.op == EMU_MMA_16816) mma_16816(G);
    if (G.op == EMU_LDMATRIX_X4) ldmatrix_x4(G, 0);
    if (G.op == EMU_LDMATRIX_X4_TRANS) ldmatrix_x4(G, 1);
    for (int l = 0; l < 32; l++) {
        if (!(G.mask >> l & 1)) continue;
        EmuFiber &f = g_fib[32 * w + l];
        f.result = res[l];
        if (&f != g_cur) f.state = F_RUN;
    }
}

uint64_t emu_warp_op(int op, unsigned mask, uint64_t value, int arg, int width) {
    if (!g_cur) emu_fail("%s outside a kernel", op_name(op));
    int w = g_cur->warp, l = g_cur->lane;
    Warp &W = g_warps[w];
    if (!(mask >> l & 1)) emu_fail("%s with mask %08x called by lane %d, which the mask leaves out", op_name(op), mask, l);
    if (mask & ~warp_lanes(w)) emu_fail("%s with mask %08x names lanes the warp does not have", op_name(op), mask);
    if (width < 1 || width > 32 || (width & (width - 1))) emu_fail("%s with width %d (a power of two up to 32)", op_name(op), width);
    for (int k = 0; k < 32; k++)
        if ((mask >> k & 1) && g_fib[32 * w + k].state == F_DONE) { g_cur = NULL; emu_fail("%s with mask %08x: lane %d has exited", op_name(op), mask, k); }
    WarpGroup *G = NULL;
    for (int k = 0; k < W.ng; k++) {
        if (!(W.g[k].mask & mask)) continue;
        if (W.g[k].mask != mask || W.g[k].op != op || (W.g[k].arrived >> l & 1))
            emu_fail("lane %d calls %s (mask %08x) while lanes %08x wait in %s (mask %08x): divergent warp collectives",
                     l, op_name(op), mask, W.g[k].arrived, op_name(W.g[k].op), W.g[k].mask);
        G = &W.g[k];
    }
    if (!G) {
        if (W.ng == 4) emu_fail("more than 4 concurrent warp collectives in one warp");
        G = &W.g[W.ng++];
        G->op = op; G->mask = mask; G->arrived = 0; G->width = width;
    }
    G->val[l] = value;
    G->arg[l] = arg;
    G->arrived |= 1u << l;
    if (G->arrived == mask) {
        warp_complete(W, *G, w);
        *G = W.g[--W.ng];
    } else {
        g_cur->state = F_WARP;
        yield();
    }
    return g_cur->result;
}

static void fiber_exit(void) {
    g_live--;
    g_exited++;
    if (g_at_bar) emu_fail("thread exits while %d threads wait at __syncthreads: a barrier it never reaches", g_at_bar);
    Warp &W = g_warps[g_cur->warp];
    for (int k = 0; k < W.ng; k++)
        if (W.g[k].mask >> g_cur->lane & 1)
            emu_fail("thread exits while lanes %08x wait for it in %s (mask %08x)", W.g[k].arrived, op_name(W.g[k].op), W.g[k].mask);
}

/* ------------------------------------------------------------------------------------------------ */
/* mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 and ldmatrix (PTX ISA, "Matrix Fragments for mma.m16n8k16"
   and "ldmatrix"), with g = lane / 4, q = lane % 4 (the "groupID" and "threadID_in_group"):
     A 16x16: a0 = A[g][2q, 2q+1], a1 = A[g+8][2q, 2q+1], a2 = A[g][2q+8, 2q+9], a3 = A[g+8][2q+8, 2q+9]
     B 16x8:  b0 = B[2q, 2q+1][g], b1 = B[2q+8, 2q+9][g]
     C, D 16x8: c0, c1 = C[g][2q, 2q+1], c2, c3 = C[g+8][2q, 2q+1]
   The products are summed in fp32 in k order (the hardware's order within one mma is not specified). */

static float lo_bf16(uint32_t x) { return emu_bf16_to_float((uint16_t)(x & 0xffff)); }
static float hi_bf16(uint32_t x) { return emu_bf16_to_float((uint16_t)(x >> 16)); }

static void mma_16816(WarpGroup &G) {
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; l++) {
        const EmuMmaArgs *x = (const EmuMmaArgs *)(uintptr_t)G.val[l];
        int g = l / 4, q = l % 4;
        const uint32_t *a = x->a, *b = x->b;
        A[g][2 * q] = lo_bf16(a[0]);         A[g][2 * q + 1] = hi_bf16(a[0]);
        A[g + 8][2 * q] = lo_bf16(a[1]);     A[g + 8][2 * q + 1] = hi_bf16(a[1]);
        A[g][2 * q + 8] = lo_bf16(a[2]);     A[g][2 * q + 9] = hi_bf16(a[2]);
        A[g + 8][2 * q + 8] = lo_bf16(a[3]); A[g + 8][2 * q + 9] = hi_bf16(a[3]);
        B[2 * q][g] = lo_bf16(b[0]);         B[2 * q + 1][g] = hi_bf16(b[0]);
        B[2 * q + 8][g] = lo_bf16(b[1]);     B[2 * q + 9][g] = hi_bf16(b[1]);
        C[g][2 * q] = x->c[0]; C[g][2 * q + 1] = x->c[1]; C[g + 8][2 * q] = x->c[2]; C[g + 8][2 * q + 1] = x->c[3];
    }
    float D[16][8];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
            float acc = 0.0f;
            for (int k = 0; k < 16; k++) acc = fmaf(A[i][k], B[k][j], acc);
            D[i][j] = acc + C[i][j];
        }
    for (int l = 0; l < 32; l++) {
        const EmuMmaArgs *x = (const EmuMmaArgs *)(uintptr_t)G.val[l];
        int g = l / 4, q = l % 4;
        x->c[0] = D[g][2 * q]; x->c[1] = D[g][2 * q + 1]; x->c[2] = D[g + 8][2 * q]; x->c[3] = D[g + 8][2 * q + 1];
    }
}

static void check_smem(uintptr_t a, size_t n, int write);

/* ldmatrix .x4: four 8x8 b16 matrices; lane l supplies the 16-byte row address of row l % 8 of matrix l / 8.
   Lane l receives, in register i, elements (row l / 4, columns 2(l % 4), 2(l % 4) + 1) of matrix i; with .trans
   the matrix is transposed first: elements (rows 2(l % 4) and 2(l % 4) + 1, column l / 4). */
static void ldmatrix_x4(WarpGroup &G, int trans) {
    uint16_t M[4][8][8];
    for (int l = 0; l < 32; l++) {
        const EmuLdmArgs *x = (const EmuLdmArgs *)(uintptr_t)G.val[l];
        uintptr_t a = (uintptr_t)x->row;
        if (a % 16) emu_fail("ldmatrix: lane %d's row address %p is not 16-byte aligned", l, x->row);
        EmuFiber *me = g_cur;
        g_cur = &g_fib[32 * (g_cur->warp) + l];   /* the read is the supplying lane's */
        check_smem(a, 16, 0);
        g_cur = me;
        memcpy(M[l / 8][l % 8], x->row, 16);
    }
    for (int l = 0; l < 32; l++) {
        const EmuLdmArgs *x = (const EmuLdmArgs *)(uintptr_t)G.val[l];
        int r = l / 4, c = 2 * (l % 4);
        for (int i = 0; i < 4; i++) {
            uint16_t e0 = trans ? M[i][c][r] : M[i][r][c], e1 = trans ? M[i][c + 1][r] : M[i][r][c + 1];
            x->r[i] = (uint32_t)e0 | ((uint32_t)e1 << 16);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* shared memory: the static section and the dynamic area, per 2-byte granule (a "word" below; bf16 is the
   smallest type the kernels store): the block generation that last
   touched it, its last writer, and the readers since the last __syncthreads. Two accesses of one word by
   different threads, one of them a write, race unless a __syncthreads lies between them, or, in one warp,
   a __syncwarp naming both lanes. */

struct SmemWord {
    uint32_t gen, w_bar, w_wc, r_bar, r_warps, r_lanes, r_wc;
    int32_t w_tid;
    int32_t pend;                            /* 1 + the thread whose cp.async to this word is in flight, or 0 */
};
static std::vector<SmemWord> g_smem;
static uint32_t g_gen = 0;

static void shared_block_start(void) {
    size_t words = (size_t)(__stop_emu_smem - __start_emu_smem) / 2 + 1 + SMEM_OPTIN_MAX / 2 + 1;
    if (g_smem.size() < words) g_smem.resize(words);
    g_gen++;
    if (__stop_emu_smem > __start_emu_smem) memset(__start_emu_smem, 0xff, __stop_emu_smem - __start_emu_smem);
    memset(g_dyn, 0xff, g_dyn_bytes);
}

/* write: 0 a load, 1 a store, SM_ISSUE a cp.async issued to [a, a + n) (checked as a store, then the words are
   in flight: any access before the issuing thread's wait delivers them is reported), SM_DELIVER its delivery */
enum { SM_ISSUE = 2, SM_DELIVER = 3 };
static void check_smem(uintptr_t a, size_t n, int write) {
    size_t first, last, nstatic = (size_t)(__stop_emu_smem - __start_emu_smem) / 2 + 1;
    if (!g_cur) {
        if (a >= (uintptr_t)g_dyn && a < (uintptr_t)g_dev) emu_fail("host code accesses shared memory at %p", (void *)a);
        return;   /* the static shared variables' storage, touched by the runtime only */
    }
    if (a >= (uintptr_t)g_dyn && a < (uintptr_t)g_dev) {
        if (a + n > (uintptr_t)g_dyn + g_dyn_bytes)
            emu_fail("out-of-bounds %zu-byte %s of dynamic shared memory at offset %zu (the launch gave %zu bytes)", n,
                     write ? "store" : "load", (size_t)(a - (uintptr_t)g_dyn), g_dyn_bytes);
        first = nstatic + (a - (uintptr_t)g_dyn) / 2;
        last = nstatic + (a + n - 1 - (uintptr_t)g_dyn) / 2;
    } else {
        first = (a - (uintptr_t)__start_emu_smem) / 2;
        last = (a + n - 1 - (uintptr_t)__start_emu_smem) / 2;
    }
    if ((n == 2 || n == 4 || n == 8 || n == 16) && a % n) emu_fail("misaligned %zu-byte shared-memory %s at %p", n, write ? "store" : "load", (void *)a);
    int t = g_cur->linear, w = g_cur->warp, l = g_cur->lane;
    Warp &W = g_warps[w];
    for (size_t k = first; k <= last; k++) {
        SmemWord &s = g_smem[k];
        if (s.gen != g_gen) {
            if (!write) emu_fail("%zu-byte shared-memory load at %p reads what no thread of this block has written (a missing barrier?)", n, (void *)a);
            s.gen = g_gen; s.w_tid = -1; s.r_bar = ~0u; s.r_warps = 0; s.r_lanes = 0; s.r_wc = 0; s.pend = 0;
        }
        if (s.pend && !(write == SM_DELIVER && s.pend == t + 1))
            emu_fail("%zu-byte shared-memory %s at %p: a cp.async of thread %d to this word is still in flight (no "
                     "cp.async.wait_group of that thread has completed it)", n, write ? "store" : "load", (void *)a, s.pend - 1);
        if (write == SM_DELIVER) s.pend = 0;
        int u = s.w_tid;
        if (u >= 0 && u != t && s.w_bar == g_bar && !(u / 32 == w && W.common[u % 32][l] > s.w_wc))
            emu_fail("shared-memory race at %p: thread %d %s a word that thread %d wrote with no barrier between",
                     (void *)a, t, write ? "writes" : "reads", u);
        if (write) {
            if (s.r_bar == g_bar) {
                if (s.r_warps & ~(1u << w))
                    emu_fail("shared-memory race at %p: thread %d writes a word that another warp read with no barrier between", (void *)a, t);
                for (int j = 0; j < 32; j++)
                    if (j != l && (s.r_lanes >> j & 1) && W.common[j][l] <= s.r_wc)
                        emu_fail("shared-memory race at %p: thread %d writes a word that lane %d of its warp read with no __syncwarp between", (void *)a, t, j);
            }
            s.w_tid = t; s.w_bar = g_bar; s.w_wc = W.counter;
            if (write == SM_ISSUE) s.pend = t + 1;
        } else {
            if (s.r_bar != g_bar) { s.r_bar = g_bar; s.r_warps = 0; s.r_lanes = 0; s.r_wc = 0; }
            s.r_warps |= 1u << (w & 31);
            if (s.r_warps == (1u << (w & 31))) s.r_lanes |= 1u << l;
            if (W.counter > s.r_wc) s.r_wc = W.counter;
        }
    }
}

void *emu_dynamic_smem(void) { return g_dyn; }
static int in_static_smem(uintptr_t a);

/* cp.async.cg.shared.global [dst], [src], 16; cp.async.commit_group; cp.async.wait_group N; cp.async.wait_all
   (PTX ISA, "Data Movement and Conversion Instructions: cp.async"). A cp.async joins the thread's open group;
   commit_group closes it; wait_group N returns when at most the N most recent committed groups are pending, and
   wait_all = commit_group + wait_group 0. The copy is checked when issued (the 16 global bytes readable, both
   addresses 16-byte aligned, the destination writable as a store would be) but its bytes reach shared memory only
   when a wait of the issuing thread completes its group; until then the destination is stale, and any access to
   it, by any thread, is reported. Other threads see the delivered bytes after the next __syncthreads (a delivery
   is a store of the issuing thread at the time of its wait). */
void emu_cp_async_16(void *dst, const void *src) {
    if (!g_cur) emu_fail("cp.async outside a kernel");
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    int dst_shared = (d >= (uintptr_t)g_dyn && d < (uintptr_t)g_dev) || in_static_smem(d);
    if (!dst_shared) emu_fail("cp.async.shared.global: destination %p is not shared memory", dst);
    if (!(s >= (uintptr_t)g_dev && s < (uintptr_t)g_base + g_span)) emu_fail("cp.async.shared.global: source %p is not global memory", src);
    if (d % 16 || s % 16) emu_fail("cp.async of 16 bytes: misaligned address (shared %p, global %p)", dst, src);
    check_global(s, 16, 0, 1);
    check_smem(d, 16, SM_ISSUE);
    g_cur->copies.push_back(EmuCopy{(char *)dst, (const char *)src, g_cur->groups});
}
void emu_cp_async_commit(void) {
    if (!g_cur) emu_fail("cp.async.commit_group outside a kernel");
    g_cur->groups++;
}
void emu_cp_async_wait_group(int n) {
    if (!g_cur) emu_fail("cp.async.wait_group outside a kernel");
    if (n < 0) emu_fail("cp.async.wait_group %d", n);
    std::vector<EmuCopy> &c = g_cur->copies;
    size_t kept = 0;
    for (size_t i = 0; i < c.size(); i++) {
        if (c[i].group < g_cur->groups - n) {
            check_smem((uintptr_t)c[i].dst, 16, SM_DELIVER);
            memcpy(c[i].dst, c[i].src, 16);
        } else c[kept++] = c[i];
    }
    c.resize(kept);
}

/* ------------------------------------------------------------------------------------------------ */
/* the access hooks and emu_access */

static int in_reservation(uintptr_t a) { return a - (uintptr_t)g_base < g_span; }
static int in_static_smem(uintptr_t a) { return a - (uintptr_t)__start_emu_smem < (uintptr_t)(__stop_emu_smem - __start_emu_smem); }

static void access(uintptr_t a, size_t n, int write) {
    if (a >= (uintptr_t)g_dev && a < (uintptr_t)g_base + g_span) {
        int kernel = g_cur != NULL;
        if (a < (uintptr_t)g_pin && !kernel && !g_op)
            emu_fail("host code %s device memory at %p", write ? "writes" : "reads", (void *)a);
        if (!kernel) pthread_mutex_lock(&g_host_lock);
        check_global(a, n, write, kernel);
        if (!kernel) pthread_mutex_unlock(&g_host_lock);
    } else check_smem(a, n, write);
}

void emu_access(const void *p, size_t bytes, int write) {
    uintptr_t a = (uintptr_t)p;
    if (!bytes) return;
    arena_init();
    if (!in_reservation(a) && !in_static_smem(a)) return;   /* ordinary host memory */
    if (a >= (uintptr_t)g_dev && a < (uintptr_t)g_pin && (a + bytes > (uintptr_t)g_pin)) emu_fail("access runs past device memory");
    access(a, bytes, write);
}

#define HOOK(n)                                                                                            \
    extern "C" void __asan_load##n##_noabort(void *p) {                                                    \
        if (in_reservation((uintptr_t)p) || in_static_smem((uintptr_t)p)) access((uintptr_t)p, n, 0);      \
    }                                                                                                      \
    extern "C" void __asan_store##n##_noabort(void *p) {                                                   \
        if (in_reservation((uintptr_t)p) || in_static_smem((uintptr_t)p)) access((uintptr_t)p, n, 1);      \
    }
HOOK(1) HOOK(2) HOOK(4) HOOK(8) HOOK(16)
extern "C" void __asan_loadN_noabort(void *p, size_t n) {
    if (in_reservation((uintptr_t)p) || in_static_smem((uintptr_t)p)) access((uintptr_t)p, n, 0);
}
extern "C" void __asan_storeN_noabort(void *p, size_t n) {
    if (in_reservation((uintptr_t)p) || in_static_smem((uintptr_t)p)) access((uintptr_t)p, n, 1);
}
extern "C" void __asan_handle_no_return(void) {}

/* memcpy is not instrumented (the compiler calls the C library): this one replaces it in the program, so a
   host memcpy into pinned memory (a staging buffer) is checked and marked written like any other store */
extern "C" void *memcpy(void *dst, const void *src, size_t n) {
    if (g_base && n && (in_reservation((uintptr_t)dst) || in_reservation((uintptr_t)src))) {
        emu_access(src, n, 0);
        emu_access(dst, n, 1);
    }
    return memmove(dst, src, n);
}

/* -fsanitize=alignment checks each dereference against its type's alignment before the optimiser may split a
   vector access (a float4 load) into scalar ones; a misaligned access in a kernel is a fault on the GPU */
struct UbsanLoc { const char *file; uint32_t line, col; };
struct UbsanType { uint16_t kind, info; char name[1]; };
struct UbsanMismatch { UbsanLoc loc; const UbsanType *type; unsigned char log_align, kind; };
extern "C" void __ubsan_handle_type_mismatch_v1(UbsanMismatch *d, uintptr_t p) {
    uintptr_t align = (uintptr_t)1 << d->log_align;
    if (!g_cur || !p || !(p & (align - 1))) return;   /* host code: x86 tolerates it */
    emu_fail("misaligned %s at %p: %s needs %zu-byte alignment (%s:%u)", d->kind == 1 ? "store" : "load", (void *)p,
             d->type->name, (size_t)align, d->loc.file, d->loc.line);
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(UbsanMismatch *d, uintptr_t p) { __ubsan_handle_type_mismatch_v1(d, p); }
extern "C" void __asan_before_dynamic_init(const char *m) {}
extern "C" void __asan_after_dynamic_init(void) {}

/* ------------------------------------------------------------------------------------------------ */
/* kernel launch */

static cudaError_t g_last = cudaSuccess;
static std::map<const void *, int> g_max_dyn;   /* cudaFuncAttributeMaxDynamicSharedMemorySize per kernel */

cudaError_t emu_func_set_attribute(const void *f, cudaFuncAttribute a, int v) {
    if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (v < 0 || (unsigned)v > SMEM_OPTIN_MAX) return g_last = cudaErrorInvalidValue;
        g_max_dyn[f] = v;
    }
    return cudaSuccess;
}

void emu_run_kernel(const char *name, const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                    void (*body)(void *), void *ctx) {
    arena_init();
    size_t nt = (size_t)block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
        grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        g_last = cudaErrorInvalidConfiguration;
        return;
    }
    auto it = g_max_dyn.find(fn);
    size_t limit = it != g_max_dyn.end() && (size_t)it->second > SMEM_STATIC_MAX ? (size_t)it->second : SMEM_STATIC_MAX;
    if (smem > limit) {   /* the real launch fails: "too many resources requested" / invalid argument */
        fprintf(stderr, "cuda-emu: kernel %s asks for %zu bytes of dynamic shared memory; the limit is %zu%s\n", name, smem,
                limit, limit == SMEM_STATIC_MAX ? " (raise it with cudaFuncSetAttribute)" : "");
        g_last = cudaErrorInvalidValue;
        return;
    }
    emu_op_begin(s, name);
    g_kernel = name;
    g_body = body;
    g_body_ctx = ctx;
    g_dyn_bytes = smem;
    emu_gridDim = grid;
    emu_blockDim = block;
    if (g_fib.size() != nt) {
        for (auto &f : g_fib) if (f.stack) munmap(f.stack, STACK_BYTES);
        g_fib.assign(nt, EmuFiber());
    }
    g_warps.resize((nt + 31) / 32);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                emu_blockIdx = uint3{bx, by, bz};
                shared_block_start();
                for (auto &W : g_warps) { W.ng = 0; W.counter = 0; memset(W.common, 0, sizeof(W.common)); }
                g_live = (int)nt; g_at_bar = 0; g_exited = 0; g_bar = 0;
                for (size_t i = 0; i < nt; i++) {
                    EmuFiber &f = g_fib[i];
                    f.linear = (int)i; f.warp = (int)(i / 32); f.lane = (int)(i % 32);
                    f.tid = uint3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y), (unsigned)(i / ((size_t)block.x * block.y))};
                    fiber_start(&f);
                }
                while (g_live > 0) {
                    int ran = 0;
                    for (auto &f : g_fib) {
                        if (f.state != F_RUN) continue;
                        g_cur = &f;
                        emu_threadIdx = f.tid;
                        emu_swap(&g_sched_sp, f.sp);
                        ran = 1;
                    }
                    g_cur = NULL;
                    if (!ran && g_live > 0) deadlock();
                }
            }
    g_kernel = NULL;
    emu_op_end();
}

/* ------------------------------------------------------------------------------------------------ */
/* atomics: blocks run one at a time, so a plain read-modify-write is atomic; the access is checked */

#define ATOMIC(name, T, expr)                              \
    T name(T *p, T v) {                                    \
        emu_access(p, sizeof(T), 0);                       \
        emu_access(p, sizeof(T), 1);                       \
        T old = *p;                                        \
        *p = (expr);                                       \
        return old;                                        \
    }
ATOMIC(emu_atomic_add_f32, float, old + v)
ATOMIC(emu_atomic_add_f64, double, old + v)
ATOMIC(emu_atomic_add_i32, int, old + v)
ATOMIC(emu_atomic_add_u32, unsigned, old + v)
ATOMIC(emu_atomic_add_u64, unsigned long long, old + v)
ATOMIC(emu_atomic_max_i32, int, old > v ? old : v)
ATOMIC(emu_atomic_exch_i32, int, v)
int emu_atomic_cas_i32(int *p, int c, int v) { emu_access(p, 4, 0); emu_access(p, 4, 1); int o = *p; if (o == c) *p = v; return o; }
unsigned emu_atomic_cas_u32(unsigned *p, unsigned c, unsigned v) { emu_access(p, 4, 0); emu_access(p, 4, 1); unsigned o = *p; if (o == c) *p = v; return o; }

/* ------------------------------------------------------------------------------------------------ */
/* the runtime API */

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    default: return "cudaError";
    }
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInitializationError: return "initialization error";
    default: return "unknown error";
    }
}
cudaError_t cudaGetLastError(void) { cudaError_t e = g_last; g_last = cudaSuccess; return e; }
cudaError_t cudaPeekAtLastError(void) { return g_last; }

/* CUDA_EMU_DEVICES=N emulated devices (default 1); CUDA_EMU_DEVICES=0 is a machine without one, and
   CUDA_EMU_FAIL_INIT=1 one whose CUDA initialisation fails */
cudaError_t cudaGetDeviceCount(int *n) {
    const char *f = getenv("CUDA_EMU_FAIL_INIT");
    if (f && atoi(f)) { *n = 0; return cudaErrorInitializationError; }
    const char *e = getenv("CUDA_EMU_DEVICES");
    *n = e ? atoi(e) : 1;
    return *n > 0 ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int d) {
    int n;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) return e;
    if (d < 0 || d >= n) return cudaErrorInvalidDevice;
    g_device = d;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) { *d = g_device; return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "CUDA emulation (sm_90 limits)");
    p->totalGlobalMem = DEV_BYTES;
    p->sharedMemPerBlock = SMEM_STATIC_MAX;
    p->sharedMemPerBlockOptin = SMEM_OPTIN_MAX;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->regsPerBlock = 65536; p->warpSize = 32; p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
    p->major = 9; p->minor = 0; p->multiProcessorCount = 132; p->maxThreadsPerMultiProcessor = 2048;
    p->l2CacheSize = 50 << 20;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d) {
    switch (a) {
    case cudaDevAttrMultiProcessorCount: *v = 132; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = SMEM_OPTIN_MAX; return cudaSuccess;
    }
    return cudaErrorInvalidValue;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest) { *least = 0; *greatest = -5; return cudaSuccess; }

cudaError_t cudaDeviceSynchronize(void) {
    for (int i = 0; i < HOST; i++) if (g_streams[i]) vc_join(g_host_vc, g_streams[i]->vc);
    return cudaSuccess;
}
cudaError_t cudaDeviceReset(void) { return cudaDeviceSynchronize(); }

static cudaError_t alloc(void **p, size_t n, int pinned) {
    arena_init();
    if (!p) return cudaErrorInvalidValue;
    size_t &top = pinned ? g_pin_top : g_dev_top;
    size_t cap = pinned ? PIN_BYTES : DEV_BYTES;
    size_t at = (top + 256 + 255) & ~(size_t)255;      /* 256-byte aligned, with a gap that belongs to nobody */
    if (at + n > cap) { *p = NULL; return cudaErrorMemoryAllocation; }
    char *base = (pinned ? g_pin : g_dev) + at;
    top = at + n;
    size_t off = base - g_dev;
    memset(g_state + off, ST_ALLOC, n);
    memset(base, 0xff, n);                              /* never-written memory reads as NaN */
    g_allocs[(uintptr_t)base] = n;
    if (!pinned) g_dev_used += n;
    *p = base;
    return cudaSuccess;
}
static cudaError_t release(void *p, int pinned) {
    if (!p) return cudaSuccess;
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || ((char *)p >= g_pin) != pinned) {
        emu_fail("%s(%p): not a pointer that %s returned", pinned ? "cudaFreeHost" : "cudaFree", p,
                 pinned ? "cudaMallocHost" : "cudaMalloc");
    }
    /* the memory must be idle: every stream that touched it has been waited for by the host (cudaFree
       synchronises the device, so only the host's own view matters here) */
    if (!pinned) cudaDeviceSynchronize();
    size_t off = (char *)p - g_dev, n = it->second;
    memset(g_state + off, ST_NONE, n);
    madvise((char *)p, n & ~(size_t)4095, MADV_DONTNEED);
    if (!pinned) g_dev_used -= n;
    g_allocs.erase(it);
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t n) { return alloc(p, n, 0); }
cudaError_t cudaFree(void *p) { return release(p, 0); }
cudaError_t cudaMallocHost(void **p, size_t n) { return alloc(p, n, 1); }
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned flags) { return alloc(p, n, 1); }
cudaError_t cudaFreeHost(void *p) { return release(p, 1); }
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *total_bytes = DEV_BYTES;
    *free_bytes = DEV_BYTES - g_dev_used;
    return cudaSuccess;
}

static int is_dev(const void *p) { return (const char *)p >= g_dev && (const char *)p < g_pin; }

static cudaError_t copy(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s, const char *what) {
    arena_init();
    if (!n) return cudaSuccess;
    int dd = is_dev(dst), sd = is_dev(src);
    if ((k == cudaMemcpyHostToDevice && (!dd || sd)) || (k == cudaMemcpyDeviceToHost && (dd || !sd)) ||
        (k == cudaMemcpyDeviceToDevice && (!dd || !sd)) || (k == cudaMemcpyHostToHost && (dd || sd)))
        emu_fail("%s(%p, %p, %zu): the pointers do not match the direction %d", what, dst, src, n, (int)k);
    emu_op_begin(s, what);
    emu_access(src, n, 0);
    emu_access(dst, n, 1);
    memmove(dst, src, n);
    emu_op_end();
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k) {
    cudaError_t e = copy(dst, src, n, k, 0, "cudaMemcpy");
    vc_join(g_host_vc, g_legacy.vc);                   /* synchronous: the host waits for the copy */
    return e;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s) {
    return copy(dst, src, n, k, s, "cudaMemcpyAsync");
}
static cudaError_t fill(void *p, int v, size_t n, cudaStream_t s, const char *what) {
    arena_init();
    if (!n) return cudaSuccess;
    if (!is_dev(p)) emu_fail("%s(%p, %d, %zu): not device memory", what, p, v, n);
    emu_op_begin(s, what);
    emu_access(p, n, 1);
    memset(p, v, n);
    emu_op_end();
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n) { return fill(p, v, n, 0, "cudaMemset"); }
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) { return fill(p, v, n, s, "cudaMemsetAsync"); }

cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned flags, int priority) {
    for (int i = 1; i < HOST; i++)
        if (!g_streams[i]) {
            EmuStream *st = (EmuStream *)calloc(1, sizeof(EmuStream));
            st->id = i;
            st->nonblocking = (flags & cudaStreamNonBlocking) != 0;
            vc_join(st->vc, g_host_vc);
            g_streams[i] = st;
            *s = st;
            return cudaSuccess;
        }
    return cudaErrorMemoryAllocation;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) { return cudaStreamCreateWithPriority(s, flags, 0); }
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithPriority(s, 0, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s || g_streams[s->id] != s) return cudaErrorInvalidResourceHandle;
    /* its id is not reused: the clocks of other streams still name it */
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    EmuStream *st = stream_of(s);
    vc_join(g_host_vc, st->vc);
    if (st->id == 0) cudaDeviceSynchronize();           /* the legacy stream waits for the blocking streams */
    return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) { *e = (EmuEvent *)calloc(1, sizeof(EmuEvent)); return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return cudaErrorInvalidResourceHandle;
    EmuStream *st = stream_of(s);
    emu_op_begin(s, "cudaEventRecord");   /* an event records the stream's work up to here, issue order included */
    emu_op_end();
    memcpy(e->vc, st->vc, sizeof(e->vc));
    e->recorded = 1;
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags) {
    if (!e) return cudaErrorInvalidResourceHandle;
    vc_join(stream_of(s)->vc, e->vc);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return cudaErrorInvalidResourceHandle;
    vc_join(g_host_vc, e->vc);
    return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) { *ms = 0.0f; return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { free(e); return cudaSuccess; }
