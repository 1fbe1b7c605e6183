/* emu_nccl.cpp: NCCL's communicator and collectives between processes on this machine, written from NCCL's API
   reference.

   ncclGetUniqueId puts a fresh POSIX shared-memory name in the id; ncclCommInitRank opens that segment (the first
   rank to come creates it), records its pid, and waits for all nranks ranks; the name is unlinked once all are
   in. The segment holds a barrier and one staging slot per rank. A collective runs at the call, in call order
   (NCCL requires every rank to make the same calls in the same order): chunk by chunk, each rank copies its
   part into its slot, all meet at the barrier, each reads what it needs from the slots, all meet again. Sums go
   over the ranks in order 0..n-1 in the element type (bf16: in fp32, rounded once).

   Point to point (ncclSend / ncclRecv): after the slots, one mailbox per ordered pair of ranks, one chunk deep.
   Messages between two ranks of a communicator match in call order. An operation completes when its peer has
   taken every byte (a send waits for its receive, as NCCL may), so two standalone sends towards each other hang
   here as they can on the device. Inside ncclGroupStart/End the sends and receives all progress together at
   ncclGroupEnd, chunk by chunk, so a group that sends to and receives from the same peer never deadlocks (NCCL's
   guarantee for grouped point-to-point calls); the collectives of a group still run at their call.

   A collective whose ranks pass different counts or types is an error (ncclInvalidUsage) on every rank that sees
   it. Nothing waits forever: a wait gives up with ncclRemoteError when a peer process has died and with
   ncclSystemError after NCCL_EMU_TIMEOUT seconds (default 600); the communicator then stays in that error, every
   later call returns it, ncclCommGetAsyncError reports it, and the other ranks see it in the segment. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "nccl.h"
#include "emu_core.h"

#define MAX_RANKS 256
#define SLOT_BYTES ((size_t)1 << 20)          /* staging per rank and chunk */
#define SHM_MAGIC 0x4c4c4d4e43434c31ull       /* "LLMNCCL1" */

/* the shared segment: this header, then nranks slots of SLOT_BYTES, then nranks x nranks mailboxes */
struct Shared {
    uint64_t magic;             /* written last by the creator */
    int32_t nranks;
    uint32_t attached;          /* ranks in so far */
    uint32_t arrived;           /* at the current barrier */
    uint32_t generation;        /* barriers passed; the futex word the ranks wait on */
    int32_t error;              /* the first error any rank hit (ncclResult_t), 0 if none */
    int32_t pids[MAX_RANKS];    /* 0: rank not in yet */
    uint64_t counts[MAX_RANKS]; /* each rank's element count and type of the current collective (same_call) */
};
#define HEADER_BYTES ((sizeof(Shared) + 63) / 64 * 64)

struct ncclComm {
    Shared *sh;
    size_t map_bytes;
    int rank, nranks;
    int error;                  /* this rank's sticky error (atomic: the watchdog thread reads it) */
    unsigned splits;            /* ncclCommSplit calls so far (the same on every rank: they are collective) */
    char name[64];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double timeout_s(void) {
    const char *e = getenv("NCCL_EMU_TIMEOUT");
    double t = e ? atof(e) : 600.0;
    return t > 0 ? t : 600.0;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

static ncclResult_t warn(ncclResult_t r, const char *fn, int rank, const char *why) {
    fprintf(stderr, "cuda-emu: %s: rank %d: %s\n", fn, rank, why);
    return r;
}

/* the communicator fails for good: every later call returns r, and the peers see it in the segment */
static ncclResult_t comm_fail(ncclComm *c, ncclResult_t r, const char *fn, const char *why) {
    int none = 0;
    __atomic_compare_exchange_n(&c->error, &none, (int)r, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    none = 0;
    __atomic_compare_exchange_n(&c->sh->error, &none, (int)ncclRemoteError, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return warn(r, fn, c->rank, why);
}

/* a process is gone when it no longer exists or is a zombie nobody has reaped yet */
static int process_dead(pid_t pid) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');   /* "pid (comm) S ...": the state follows the command name */
    return p && (p[2] == 'Z' || p[2] == 'X');
}

/* the first rank whose process died, or -1 */
static int dead_peer(const ncclComm *c) {
    for (int r = 0; r < c->nranks; r++) {
        int pid = __atomic_load_n(&c->sh->pids[r], __ATOMIC_ACQUIRE);
        if (r != c->rank && pid > 0 && process_dead(pid)) return r;
    }
    return -1;
}

/* what a wait waits for: every rank has joined (n = nranks), or the barrier of generation n has opened */
static int all_joined(const ncclComm *c, uint32_t n) { return __atomic_load_n(&c->sh->attached, __ATOMIC_ACQUIRE) >= n; }
static int barrier_open(const ncclComm *c, uint32_t gen) { return __atomic_load_n(&c->sh->generation, __ATOMIC_ACQUIRE) != gen; }

/* between two polls of a wait: an error from a peer, a dead peer, or the deadline end it. A peer may finish
   the wait and exit at once: what it did before exiting is visible once it is dead, so the wait's own
   condition is looked at again before its death counts as a failure. */
static ncclResult_t wait_check(ncclComm *c, double deadline, const char *fn, const char *what,
                               int (*done)(const ncclComm *, uint32_t), uint32_t arg) {
    char why[160];
    if (__atomic_load_n(&c->sh->error, __ATOMIC_ACQUIRE)) {
        snprintf(why, sizeof(why), "%s: another rank failed", what);
        return comm_fail(c, ncclRemoteError, fn, why);
    }
    int d = dead_peer(c);
    if (d >= 0 && done(c, arg)) return ncclSuccess;
    if (d >= 0) {
        snprintf(why, sizeof(why), "%s: rank %d (pid %d) has exited", what, d, (int)c->sh->pids[d]);
        return comm_fail(c, ncclRemoteError, fn, why);
    }
    if (now_s() > deadline) {
        snprintf(why, sizeof(why), "%s: no progress in %.0f s (NCCL_EMU_TIMEOUT)", what, timeout_s());
        return comm_fail(c, ncclSystemError, fn, why);
    }
    return ncclSuccess;
}

/* all ranks meet: the last to arrive opens the next generation and wakes the others (futex on the shared word) */
static ncclResult_t barrier(ncclComm *c, const char *fn) {
    Shared *sh = c->sh;
    uint32_t gen = __atomic_load_n(&sh->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&sh->arrived, 1, __ATOMIC_ACQ_REL) == (uint32_t)c->nranks) {
        __atomic_store_n(&sh->arrived, 0, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sh->generation, 1, __ATOMIC_RELEASE);
        syscall(SYS_futex, &sh->generation, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        return ncclSuccess;
    }
    double deadline = now_s() + timeout_s();
    while (__atomic_load_n(&sh->generation, __ATOMIC_ACQUIRE) == gen) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        syscall(SYS_futex, &sh->generation, FUTEX_WAIT, gen, &ts, NULL, 0);
        if (__atomic_load_n(&sh->generation, __ATOMIC_ACQUIRE) != gen) break;
        ncclResult_t r = wait_check(c, deadline, fn, "waiting for the other ranks", barrier_open, gen);
        if (r != ncclSuccess) return r;
    }
    return ncclSuccess;
}

static char *slot(const ncclComm *c, int r) { return (char *)c->sh + HEADER_BYTES + (size_t)r * SLOT_BYTES; }

/* NCCL requires every rank of a collective to pass the same count and type (else it hangs or corrupts): each rank
   posts its (count, type) before the collective's first barrier, and after it each compares the others' with its
   own. The next collective posts only after this one's second barrier, when every rank has looked. */
static void post_call(ncclComm *c, size_t count, ncclDataType_t t) {
    __atomic_store_n(&c->sh->counts[c->rank], (uint64_t)count << 8 | (uint64_t)t, __ATOMIC_RELEASE);
}
static ncclResult_t same_call(ncclComm *c, const char *fn) {
    uint64_t mine = __atomic_load_n(&c->sh->counts[c->rank], __ATOMIC_ACQUIRE);
    for (int q = 0; q < c->nranks; q++) {
        uint64_t other = __atomic_load_n(&c->sh->counts[q], __ATOMIC_ACQUIRE);
        if (other == mine) continue;
        char why[160];
        snprintf(why, sizeof(why), "rank %d passes %llu elements of type %d, this rank %llu of type %d", q,
                 (unsigned long long)(other >> 8), (int)(other & 0xff), (unsigned long long)(mine >> 8), (int)(mine & 0xff));
        return comm_fail(c, ncclInvalidUsage, fn, why);
    }
    return ncclSuccess;
}

/* the mailbox of messages from rank `from` to rank `to`: this header, then box_data_bytes of data */
struct Mailbox {
    uint32_t posted;            /* chunks the sender has put in (a futex word) */
    uint32_t taken;             /* chunks the receiver has copied out (a futex word); the box is free when equal */
    uint64_t msg_bytes;         /* the size of the message the chunk belongs to (a size mismatch is an error) */
    uint64_t chunk_bytes;
    char pad[40];
};
/* a pair's chunk: 16 MiB over all pairs, within [4 KiB, SLOT_BYTES] */
static size_t box_data_bytes(int n) {
    size_t b = ((size_t)16 << 20) / ((size_t)n * n);
    if (b > SLOT_BYTES) b = SLOT_BYTES;
    if (b < 4096) b = 4096;
    return b / 64 * 64;
}
static size_t segment_bytes(int n) {
    return HEADER_BYTES + (size_t)n * SLOT_BYTES + (size_t)n * n * (sizeof(Mailbox) + box_data_bytes(n));
}
static Mailbox *mailbox(const ncclComm *c, int from, int to) {
    size_t box = sizeof(Mailbox) + box_data_bytes(c->nranks);
    return (Mailbox *)((char *)c->sh + HEADER_BYTES + (size_t)c->nranks * SLOT_BYTES + ((size_t)from * c->nranks + to) * box);
}

/* ------------------------------------------------------------------------------------------------ */
/* ids and communicators */

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static unsigned counter = 0;
    if (!id) return warn(ncclInvalidArgument, "ncclGetUniqueId", -1, "uniqueId is NULL");
    uint64_t rnd = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, &rnd, sizeof(rnd)) != (ssize_t)sizeof(rnd)) rnd = (uint64_t)(now_s() * 1e9);
    if (fd >= 0) close(fd);
    memset(id, 0, sizeof(*id));
    snprintf(id->internal, sizeof(id->internal), "/llmtrain-nccl-%d-%u-%016llx", (int)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED), (unsigned long long)rnd);
    return ncclSuccess;
}

/* open the segment named in the id, creating it if this rank is the first; wait for the creator to fill it in */
static ncclResult_t attach(ncclComm *c, double deadline) {
    const char *fn = "ncclCommInitRank";
    size_t bytes = segment_bytes(c->nranks);
    int fd = shm_open(c->name, O_RDWR | O_CREAT | O_EXCL, 0600);
    int creator = fd >= 0;
    if (!creator && errno == EEXIST) fd = shm_open(c->name, O_RDWR, 0600);
    if (fd < 0) return warn(ncclSystemError, fn, c->rank, "shm_open failed");
    if (creator) {
        int e = posix_fallocate(fd, 0, (off_t)bytes);   /* fails now, rather than SIGBUS later, when shm is full */
        if (e) {
            close(fd);
            shm_unlink(c->name);
            return warn(ncclSystemError, fn, c->rank, "cannot size the shared memory segment (is /dev/shm full?)");
        }
    } else {
        struct stat st;
        for (;;) {
            if (fstat(fd, &st) != 0) { close(fd); return warn(ncclSystemError, fn, c->rank, "fstat failed"); }
            if (st.st_size != 0) break;
            if (now_s() > deadline) { close(fd); return warn(ncclSystemError, fn, c->rank, "the segment was never sized"); }
            usleep(1000);
        }
        if ((size_t)st.st_size != bytes) {
            close(fd);
            return warn(ncclInvalidUsage, fn, c->rank, "the ranks disagree on nranks");
        }
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return warn(ncclSystemError, fn, c->rank, "mmap failed");
    c->sh = (Shared *)p;
    c->map_bytes = bytes;
    if (creator) {
        c->sh->nranks = c->nranks;
        __atomic_store_n(&c->sh->magic, SHM_MAGIC, __ATOMIC_RELEASE);
    }
    while (__atomic_load_n(&c->sh->magic, __ATOMIC_ACQUIRE) != SHM_MAGIC) {
        if (now_s() > deadline) return warn(ncclSystemError, fn, c->rank, "the segment was never initialised");
        usleep(1000);
    }
    return ncclSuccess;
}

static void comm_free(ncclComm *c) {
    if (c->sh) munmap(c->sh, c->map_bytes);
    free(c);
}

/* NCCL docs: collective over the nranks ranks; returns once all of them have joined */
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    const char *fn = "ncclCommInitRank";
    if (!comm) return warn(ncclInvalidArgument, fn, rank, "comm is NULL");
    *comm = NULL;
    if (nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks)
        return warn(ncclInvalidArgument, fn, rank, "nranks or rank out of range");
    if (id.internal[0] != '/' || !memchr(id.internal, 0, sizeof(id.internal)) || strlen(id.internal) >= 64)
        return warn(ncclInvalidArgument, fn, rank, "the unique id is not one from ncclGetUniqueId");
    ncclComm *c = (ncclComm *)calloc(1, sizeof(ncclComm));
    if (!c) return ncclSystemError;
    c->rank = rank;
    c->nranks = nranks;
    snprintf(c->name, sizeof(c->name), "%s", id.internal);
    double deadline = now_s() + timeout_s();
    ncclResult_t r = attach(c, deadline);
    if (r != ncclSuccess) { comm_free(c); return r; }
    if (c->sh->nranks != nranks) {
        comm_free(c);
        return warn(ncclInvalidUsage, fn, rank, "the ranks disagree on nranks");
    }
    int none = 0;
    if (!__atomic_compare_exchange_n(&c->sh->pids[rank], &none, (int)getpid(), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        comm_free(c);
        return warn(ncclInvalidUsage, fn, rank, "two processes joined as the same rank");
    }
    __atomic_add_fetch(&c->sh->attached, 1, __ATOMIC_ACQ_REL);
    while (__atomic_load_n(&c->sh->attached, __ATOMIC_ACQUIRE) < (uint32_t)nranks) {
        r = wait_check(c, deadline, fn, "waiting for all ranks to join", all_joined, (uint32_t)nranks);
        if (r != ncclSuccess) {
            shm_unlink(c->name);
            comm_free(c);
            return r;
        }
        usleep(1000);
    }
    shm_unlink(c->name);   /* all are in: the name is no longer needed (ENOENT for all but the first) */
    *comm = c;
    return ncclSuccess;
}

/* NCCL docs: one process, one communicator per device. Collectives here run at the call, so one process can drive
   only one rank. */
ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
    (void)devlist;
    if (!comms || ndev < 1) return warn(ncclInvalidArgument, "ncclCommInitAll", -1, "comms is NULL or ndev < 1");
    if (ndev > 1) return warn(ncclInvalidUsage, "ncclCommInitAll", -1, "the emulation drives one rank per process");
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    return ncclCommInitRank(&comms[0], 1, id, 0);
}

/* NCCL docs: collective over comm's ranks; the ranks of one color form a new communicator, ordered by key (ties by
   their rank in comm); NCCL_SPLIT_NOCOLOR gives NULL. Each rank posts (color, key) in its slot; every rank then
   knows its group, and the group joins a segment whose name all of its members derive alike: the creator's pid
   (as in ncclGetUniqueId's names), then a hash of comm's name, the split's ordinal and the color. */
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config) {
    const char *fn = "ncclCommSplit";
    (void)config;
    if (!comm || !newcomm) return warn(ncclInvalidArgument, fn, -1, "comm or newcomm is NULL");
    *newcomm = NULL;
    if (color < NCCL_SPLIT_NOCOLOR) return warn(ncclInvalidArgument, fn, comm->rank, "color is negative");
    int e = __atomic_load_n(&comm->error, __ATOMIC_ACQUIRE);
    if (e) return warn((ncclResult_t)e, fn, comm->rank, "the communicator has failed before");
    ncclComm *c = comm;
    int mine[2] = {color, key};
    memcpy(slot(c, c->rank), mine, sizeof(mine));
    ncclResult_t r = barrier(c, fn);
    if (r != ncclSuccess) return r;
    int n = 0, rank = 0;
    for (int q = 0; q < c->nranks; q++) {
        int other[2];
        memcpy(other, slot(c, q), sizeof(other));
        if (other[0] != color) continue;
        n++;
        if (other[1] < key || (other[1] == key && q < c->rank)) rank++;
    }
    if ((r = barrier(c, fn)) != ncclSuccess) return r;
    unsigned ordinal = c->splits++;
    if (color == NCCL_SPLIT_NOCOLOR) return ncclSuccess;
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a over the parent's name, the ordinal and the color */
    for (const char *p = c->name; *p; p++) { h ^= (unsigned char)*p; h *= 0x100000001b3ull; }
    for (int i = 0; i < 8; i++) { h ^= (uint64_t)((i < 4 ? ordinal >> (8 * i) : (unsigned)color >> (8 * (i - 4))) & 0xff); h *= 0x100000001b3ull; }
    int pid = 0;
    if (sscanf(c->name, "/llmtrain-nccl-%d-", &pid) != 1) pid = 0;
    ncclUniqueId id;
    memset(&id, 0, sizeof(id));
    snprintf(id.internal, sizeof(id.internal), "/llmtrain-nccl-%d-split-%016llx", pid, (unsigned long long)h);
    return ncclCommInitRank(newcomm, n, id, rank);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    shm_unlink(comm->name);
    comm_free(comm);
    return ncclSuccess;
}

/* safe from another thread while a collective runs: it only reads atomics */
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError) {
    if (!comm || !asyncError) return ncclInvalidArgument;
    int e = __atomic_load_n(&comm->error, __ATOMIC_ACQUIRE);
    if (!e && __atomic_load_n(&comm->sh->error, __ATOMIC_ACQUIRE)) e = ncclRemoteError;
    *asyncError = (ncclResult_t)e;
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    if (!comm || !count) return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (!comm || !rank) return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

/* NCCL docs: calls between ncclGroupStart and ncclGroupEnd are launched together. Every rank makes the same
   calls in the same order, so running each at its call, in order, gives the same result. */
static __thread int g_group_depth = 0;

ncclResult_t ncclGroupStart(void) {
    g_group_depth++;
    return ncclSuccess;
}

static ncclResult_t p2p_run(void);

ncclResult_t ncclGroupEnd(void) {
    if (g_group_depth == 0) return warn(ncclInvalidUsage, "ncclGroupEnd", -1, "without ncclGroupStart");
    g_group_depth--;
    return g_group_depth == 0 ? p2p_run() : ncclSuccess;   /* the group's sends and receives, together */
}

/* ------------------------------------------------------------------------------------------------ */
/* collectives */

static size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

/* NCCL's argument checks, then the emulation's limits; a failed check does not break the communicator */
static ncclResult_t check_args(ncclComm *c, const char *fn, const void *send, const void *recv, int uses_recv,
                               size_t count, ncclDataType_t t, int reduces, ncclRedOp_t op, int root) {
    if (!c) return warn(ncclInvalidArgument, fn, -1, "comm is NULL");
    int e = __atomic_load_n(&c->error, __ATOMIC_ACQUIRE);
    if (e) return warn((ncclResult_t)e, fn, c->rank, "the communicator has failed before");
    if ((int)t < 0 || (int)t >= ncclNumTypes) return warn(ncclInvalidArgument, fn, c->rank, "invalid datatype");
    if (reduces && ((int)op < 0 || (int)op >= ncclNumOps)) return warn(ncclInvalidArgument, fn, c->rank, "invalid op");
    if (root < 0 || root >= c->nranks) return warn(ncclInvalidArgument, fn, c->rank, "invalid root");
    if (count > 0 && (!send || (uses_recv && !recv)))
        return warn(ncclInvalidArgument, fn, c->rank, "sendbuff or recvbuff is NULL");
    if (reduces && op != ncclSum) return warn(ncclInvalidUsage, fn, c->rank, "only ncclSum is emulated");
    if (reduces && t != ncclFloat && t != ncclDouble && t != ncclBfloat16)
        return warn(ncclInvalidUsage, fn, c->rank, "reductions are emulated for ncclFloat, ncclDouble and ncclBfloat16");
    return ncclSuccess;
}

/* NCCL docs define in-place operation (recvbuff at one documented place in or at sendbuff); buffers that overlap
   in any other way are not a valid use */
static ncclResult_t check_overlap(ncclComm *c, const char *fn, const void *send, size_t send_bytes, const void *recv,
                                  size_t recv_bytes, const void *in_place_recv, const void *in_place_send) {
    const char *s = (const char *)send, *r = (const char *)recv;
    if (!send_bytes || !recv_bytes || (s + send_bytes <= r || r + recv_bytes <= s)) return ncclSuccess;
    if (recv == in_place_recv || send == in_place_send) return ncclSuccess;
    return warn(ncclInvalidArgument, fn, c->rank, "sendbuff and recvbuff overlap but not as the in-place form");
}

/* dst[i] = sum over ranks r = 0..n-1, in order, of element i at byte offset off of slot r */
static void sum_slots(const ncclComm *c, size_t off, size_t cnt, ncclDataType_t t, void *dst) {
    for (size_t i = 0; i < cnt; i++) {
        if (t == ncclDouble) {
            double acc = ((const double *)(slot(c, 0) + off))[i];
            for (int r = 1; r < c->nranks; r++) acc += ((const double *)(slot(c, r) + off))[i];
            ((double *)dst)[i] = acc;
        } else if (t == ncclFloat) {
            float acc = ((const float *)(slot(c, 0) + off))[i];
            for (int r = 1; r < c->nranks; r++) acc += ((const float *)(slot(c, r) + off))[i];
            ((float *)dst)[i] = acc;
        } else {   /* ncclBfloat16: in fp32, rounded once */
            float acc = emu_bf16_to_float(((const uint16_t *)(slot(c, 0) + off))[i]);
            for (int r = 1; r < c->nranks; r++) acc += emu_bf16_to_float(((const uint16_t *)(slot(c, r) + off))[i]);
            ((uint16_t *)dst)[i] = emu_bf16_from_float_rn(acc);
        }
    }
}

/* AllReduce (all: every rank gets the sum) and Reduce (only root's recvbuff is written). In place: recvbuff =
   sendbuff. */
static ncclResult_t reduce_common(const char *fn, const void *send, void *recv, size_t count, ncclDataType_t t,
                                  ncclRedOp_t op, int root, int all, ncclComm *c, cudaStream_t stream) {
    /* NCCL docs, ncclReduce: recvbuff is used only on the root */
    int writes = all || (c && root == c->rank);
    ncclResult_t r = check_args(c, fn, send, recv, writes, count, t, 1, op, root);
    if (r != ncclSuccess) return r;
    size_t es = type_size(t), bytes = count * es;
    if (writes && (r = check_overlap(c, fn, send, bytes, recv, bytes, send, recv)) != ncclSuccess) return r;
    emu_op_begin(stream, fn);
    emu_access(send, bytes, 0);
    if (writes) emu_access(recv, bytes, 1);
    size_t per = SLOT_BYTES / es;
    post_call(c, count, t);
    for (size_t off = 0; off < count && r == ncclSuccess; off += per) {
        size_t cnt = count - off < per ? count - off : per;
        memcpy(slot(c, c->rank), (const char *)send + off * es, cnt * es);
        if ((r = barrier(c, fn)) != ncclSuccess) break;
        if (off == 0 && (r = same_call(c, fn)) != ncclSuccess) break;
        if (writes) sum_slots(c, 0, cnt, t, (char *)recv + off * es);
        r = barrier(c, fn);
    }
    emu_op_end();
    return r;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    return reduce_common("ncclAllReduce", sendbuff, recvbuff, count, datatype, op, 0, 1, comm, stream);
}

ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                        int root, ncclComm_t comm, cudaStream_t stream) {
    return reduce_common("ncclReduce", sendbuff, recvbuff, count, datatype, op, root, 0, comm, stream);
}

/* NCCL docs: sendbuff holds nranks blocks of recvcount; rank r receives the sum of block r. In place:
   recvbuff = sendbuff + rank * recvcount. */
ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    const char *fn = "ncclReduceScatter";
    ncclComm *c = comm;
    ncclResult_t r = check_args(c, fn, sendbuff, recvbuff, 1, recvcount, datatype, 1, op, 0);
    if (r != ncclSuccess) return r;
    size_t es = type_size(datatype), n = (size_t)c->nranks;
    const char *send = (const char *)sendbuff;
    if ((r = check_overlap(c, fn, send, n * recvcount * es, recvbuff, recvcount * es, send + c->rank * recvcount * es,
                           NULL)) != ncclSuccess)
        return r;
    emu_op_begin(stream, fn);
    emu_access(send, n * recvcount * es, 0);
    emu_access(recvbuff, recvcount * es, 1);
    size_t per = SLOT_BYTES / (n * es);
    post_call(c, recvcount, datatype);
    for (size_t off = 0; off < recvcount && r == ncclSuccess; off += per) {
        size_t cnt = recvcount - off < per ? recvcount - off : per;
        for (size_t b = 0; b < n; b++)   /* slot layout: [block b][cnt elements] */
            memcpy(slot(c, c->rank) + b * cnt * es, send + (b * recvcount + off) * es, cnt * es);
        if ((r = barrier(c, fn)) != ncclSuccess) break;
        if (off == 0 && (r = same_call(c, fn)) != ncclSuccess) break;
        sum_slots(c, (size_t)c->rank * cnt * es, cnt, datatype, (char *)recvbuff + off * es);
        r = barrier(c, fn);
    }
    emu_op_end();
    return r;
}

/* NCCL docs: recvbuff holds the nranks sendbuffs of sendcount, in rank order. In place:
   sendbuff = recvbuff + rank * sendcount. */
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
    const char *fn = "ncclAllGather";
    ncclComm *c = comm;
    ncclResult_t r = check_args(c, fn, sendbuff, recvbuff, 1, sendcount, datatype, 0, ncclSum, 0);
    if (r != ncclSuccess) return r;
    size_t es = type_size(datatype), n = (size_t)c->nranks;
    char *recv = (char *)recvbuff;
    if ((r = check_overlap(c, fn, sendbuff, sendcount * es, recv, n * sendcount * es, NULL,
                           recv + c->rank * sendcount * es)) != ncclSuccess)
        return r;
    emu_op_begin(stream, fn);
    emu_access(sendbuff, sendcount * es, 0);
    emu_access(recv, n * sendcount * es, 1);
    size_t per = SLOT_BYTES / es;
    post_call(c, sendcount, datatype);
    for (size_t off = 0; off < sendcount && r == ncclSuccess; off += per) {
        size_t cnt = sendcount - off < per ? sendcount - off : per;
        memcpy(slot(c, c->rank), (const char *)sendbuff + off * es, cnt * es);
        if ((r = barrier(c, fn)) != ncclSuccess) break;
        if (off == 0 && (r = same_call(c, fn)) != ncclSuccess) break;
        for (size_t q = 0; q < n; q++) memcpy(recv + (q * sendcount + off) * es, slot(c, (int)q), cnt * es);
        r = barrier(c, fn);
    }
    emu_op_end();
    return r;
}

/* ------------------------------------------------------------------------------------------------ */
/* point to point */

/* a send or receive waiting for ncclGroupEnd (or run at once outside a group) */
struct P2POp {
    int send;
    ncclComm *c;
    int peer;
    char *buf;
    size_t bytes, done;         /* done: copied into the mailbox (send) or out of it (receive) */
    int complete;
    const char *fn;
};
#define MAX_P2P_OPS 256
static __thread P2POp g_p2p[MAX_P2P_OPS];
static __thread int g_np2p = 0;

/* op i may move only when the earlier operations on its channel (communicator, peer, direction) are complete:
   messages match in call order */
static int p2p_turn(int i) {
    for (int j = 0; j < i; j++)
        if (!g_p2p[j].complete && g_p2p[j].c == g_p2p[i].c && g_p2p[j].peer == g_p2p[i].peer && g_p2p[j].send == g_p2p[i].send)
            return 0;
    return 1;
}

/* one chunk of op o, when its mailbox allows; *moved = 1 when something changed */
static ncclResult_t p2p_step(P2POp *o, int *moved) {
    if (o->complete) return ncclSuccess;
    size_t chunk = box_data_bytes(o->c->nranks);
    if (o->send) {
        Mailbox *mb = mailbox(o->c, o->c->rank, o->peer);
        uint32_t posted = __atomic_load_n(&mb->posted, __ATOMIC_RELAXED), taken = __atomic_load_n(&mb->taken, __ATOMIC_ACQUIRE);
        if (posted != taken) return ncclSuccess;   /* the receiver has not taken the last chunk yet */
        if (o->done == o->bytes) { o->complete = 1; *moved = 1; return ncclSuccess; }
        size_t n = o->bytes - o->done < chunk ? o->bytes - o->done : chunk;
        memmove((char *)(mb + 1), o->buf + o->done, n);   /* not memcpy: the runtime's would check it as the host's */
        mb->chunk_bytes = n;
        mb->msg_bytes = o->bytes;
        __atomic_store_n(&mb->posted, posted + 1, __ATOMIC_RELEASE);
        syscall(SYS_futex, &mb->posted, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
        o->done += n;
        *moved = 1;
        return ncclSuccess;
    }
    if (o->done == o->bytes) { o->complete = 1; *moved = 1; return ncclSuccess; }
    Mailbox *mb = mailbox(o->c, o->peer, o->c->rank);
    uint32_t posted = __atomic_load_n(&mb->posted, __ATOMIC_ACQUIRE), taken = __atomic_load_n(&mb->taken, __ATOMIC_RELAXED);
    if (posted == taken) return ncclSuccess;   /* nothing there yet */
    if (mb->msg_bytes != o->bytes) {
        char why[160];
        snprintf(why, sizeof(why), "rank %d sends %llu bytes, this rank receives %zu", o->peer,
                 (unsigned long long)mb->msg_bytes, o->bytes);
        return comm_fail(o->c, ncclInvalidUsage, o->fn, why);
    }
    size_t n = mb->chunk_bytes;
    memmove(o->buf + o->done, (const char *)(mb + 1), n);
    o->done += n;
    __atomic_store_n(&mb->taken, taken + 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &mb->taken, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    if (o->done == o->bytes) o->complete = 1;
    *moved = 1;
    return ncclSuccess;
}

/* the queued operations until all are complete: each takes its turn a chunk at a time; when none can move, a
   short wait on the first blocked one's mailbox, then the failure checks (another rank's error, the peer's death
   with the operation still open, no progress for NCCL_EMU_TIMEOUT seconds) */
static ncclResult_t p2p_run(void) {
    ncclResult_t r = ncclSuccess;
    double deadline = now_s() + timeout_s();
    while (r == ncclSuccess) {
        int moved = 0, open = -1;
        for (int i = 0; i < g_np2p && r == ncclSuccess; i++) {
            if (!g_p2p[i].complete && p2p_turn(i)) r = p2p_step(&g_p2p[i], &moved);
            if (!g_p2p[i].complete && open < 0 && p2p_turn(i)) open = i;
        }
        if (r != ncclSuccess || open < 0) break;
        if (moved) { deadline = now_s() + timeout_s(); continue; }
        P2POp *o = &g_p2p[open];
        Mailbox *mb = o->send ? mailbox(o->c, o->c->rank, o->peer) : mailbox(o->c, o->peer, o->c->rank);
        uint32_t *word = o->send ? &mb->taken : &mb->posted, seen = __atomic_load_n(word, __ATOMIC_ACQUIRE);
        struct timespec ts = {0, 1000 * 1000};
        if ((o->send ? __atomic_load_n(&mb->posted, __ATOMIC_RELAXED) != seen : seen == __atomic_load_n(&mb->taken, __ATOMIC_RELAXED)))
            syscall(SYS_futex, word, FUTEX_WAIT, seen, &ts, NULL, 0);
        char why[160];
        if (__atomic_load_n(&o->c->sh->error, __ATOMIC_ACQUIRE)) {
            snprintf(why, sizeof(why), "%s rank %d: another rank failed", o->send ? "sending to" : "receiving from", o->peer);
            r = comm_fail(o->c, ncclRemoteError, o->fn, why);
        } else if (process_dead(__atomic_load_n(&o->c->sh->pids[o->peer], __ATOMIC_ACQUIRE))) {
            int m = 0;   /* what the peer did before it exited is there: one more look */
            if ((r = p2p_step(o, &m)) == ncclSuccess && !o->complete) {
                snprintf(why, sizeof(why), "%s rank %d: it has exited", o->send ? "sending to" : "receiving from", o->peer);
                r = comm_fail(o->c, ncclRemoteError, o->fn, why);
            }
        } else if (now_s() > deadline) {
            snprintf(why, sizeof(why), "%s rank %d: no progress in %.0f s (NCCL_EMU_TIMEOUT)", o->send ? "sending to" : "receiving from",
                     o->peer, timeout_s());
            r = comm_fail(o->c, ncclSystemError, o->fn, why);
        }
    }
    g_np2p = 0;
    return r;
}

/* NCCL docs: ncclSend / ncclRecv of count elements to / from peer. The buffer's access is checked (and a receive's
   bytes marked written) at the call, as the operation of its stream; the bytes move at the call (outside a group)
   or at ncclGroupEnd, by memmove, which the runtime does not check as a host access. */
static ncclResult_t p2p_enqueue(const char *fn, int send, void *buf, size_t count, ncclDataType_t t, int peer, ncclComm *c,
                                cudaStream_t stream) {
    ncclResult_t r = check_args(c, fn, buf, buf, 1, count, t, 0, ncclSum, 0);
    if (r != ncclSuccess) return r;
    if (peer < 0 || peer >= c->nranks) return warn(ncclInvalidArgument, fn, c->rank, "invalid peer");
    if (g_np2p == MAX_P2P_OPS) return warn(ncclInvalidUsage, fn, c->rank, "more sends and receives in one group than the emulation holds");
    size_t bytes = count * type_size(t);
    emu_op_begin(stream, fn);
    emu_access(buf, bytes, !send);
    emu_op_end();
    g_p2p[g_np2p++] = P2POp{send, c, peer, (char *)buf, bytes, 0, 0, fn};
    return g_group_depth == 0 ? p2p_run() : ncclSuccess;
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    return p2p_enqueue("ncclSend", 1, (void *)sendbuff, count, datatype, peer, comm, stream);
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream) {
    return p2p_enqueue("ncclRecv", 0, recvbuff, count, datatype, peer, comm, stream);
}
