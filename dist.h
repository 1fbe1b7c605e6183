/*
 dist.h — the distributed start-up of the GPU trainer (train_gpu.cu), MPI-free (docs/design.md sec. 7): one
 process per GPU. The ranks come from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
 MASTER_PORT), or from our own launcher (maybe_launch), which forks the local ranks, sets the same variables, waits
 for them and stops them all when one fails. Rank 0 makes the NCCL unique id and serves it over TCP (boot_serve);
 the others connect with retries until a timeout (boot_join). Each hello carries the run id, so a rank never joins
 a stale run. Then every rank joins the NCCL communicator (dist_init), and a watchdog thread stops a rank whose
 peers died or hang (watchdog_start).

 Reading order: the TCP handshake; the launcher; the progress clock; then the part marked NCCL: dist_init and the
 watchdog. All but the NCCL part is plain C (POSIX sockets, fork, waitpid); the NCCL part needs <nccl.h>, the CUDA
 runtime and, from train_gpu.cu, Dist, gpu_count, CUDA_CHECK and NCCL_CHECK: train_gpu.cu includes this file after
 them. Include after train_common.h (die, trainer_name, now_ms).

 The CPU trainer (train.c) does not use this file. Its ranks are the header's Comm (llmtrain.h): rank 0 is the
 process the user started, and comm_init_fork maps the memory the ranks reduce through (its size set by the
 model's) and only then forks the others, so they cannot be forked by a launcher that runs before the model is
 built; there is no id to hand out; and a rank that dies is seen by the others at their next barrier (waitpid,
 getppid: comm_peer_lost), which stops them all with an error, so nothing waits on a network and no watchdog is
 needed.
*/
#ifndef DIST_H
#define DIST_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------------ */
/* the handshake: rank 0 serves the id, the others fetch it */

#define BOOT_MAGIC "LLMTGPU1"
typedef struct { char magic[8]; char run_id[64]; int32_t rank, world; } BootHello;
#define BOOT_ID_BYTES 128   /* the id rank 0 hands out: an ncclUniqueId (NCCL_UNIQUE_ID_BYTES) */
typedef struct { char magic[8]; int32_t status; char run_id[64]; unsigned char id[BOOT_ID_BYTES]; } BootReply;
enum { BOOT_OK = 0, BOOT_OTHER_RUN = 1, BOOT_BAD_WORLD = 2, BOOT_DUP_RANK = 3 };

static double wall_s(void) { struct timeval tv; gettimeofday(&tv, NULL); return tv.tv_sec + tv.tv_usec * 1e-6; }

static int io_all(int fd, void *buf, size_t n, int wr, double deadline) {
    char *p = (char *)buf;
    while (n > 0) {
        double left = deadline - wall_s();
        if (left <= 0) return -1;
        fd_set fs; FD_ZERO(&fs); FD_SET(fd, &fs);
        struct timeval tv = {(long)left, (long)((left - (long)left) * 1e6)};
        int r = select(fd + 1, wr ? NULL : &fs, wr ? &fs : NULL, NULL, &tv);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        ssize_t k = wr ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k <= 0) { if (k < 0 && errno == EINTR) continue; return -1; }
        p += k; n -= (size_t)k;
    }
    return 0;
}

/* connect() that gives up at the deadline (a blocking one can hang for minutes on an unreachable address) */
static int connect_by(int fd, const struct sockaddr *addr, socklen_t len, double deadline) {
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    int r = connect(fd, addr, len);
    if (r != 0 && errno == EINPROGRESS) {
        for (;;) {
            double left = deadline - wall_s();
            if (left <= 0) { errno = ETIMEDOUT; return -1; }
            fd_set fs; FD_ZERO(&fs); FD_SET(fd, &fs);
            struct timeval tv = {(long)left, (long)((left - (long)left) * 1e6)};
            int k = select(fd + 1, NULL, &fs, NULL, &tv);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) { errno = ETIMEDOUT; return -1; }
            int err = 0;
            socklen_t el = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) return -1;
            if (err) { errno = err; return -1; }
            break;
        }
    } else if (r != 0) return -1;
    return fcntl(fd, F_SETFL, fl);
}

static void boot_serve(const void *id, const char *run_id, int world, int port, double timeout_s) {
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (ls < 0) die("rank 0: socket: %s", strerror(errno));
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET; a.sin_addr.s_addr = htonl(INADDR_ANY); a.sin_port = htons((uint16_t)port);
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0)
        die("rank 0: cannot listen on port %d: %s (another run still holding it? pick --master-port)", port, strerror(errno));
    if (listen(ls, 256) != 0) die("rank 0: listen: %s", strerror(errno));
    int *fds = (int *)calloc(world, sizeof(int));
    int joined = 0;
    double deadline = wall_s() + timeout_s;
    while (joined < world - 1) {
        double left = deadline - wall_s();
        if (left <= 0) die("rank 0: only %d of %d ranks joined within %.0f s (run id %s)", joined + 1, world, timeout_s, run_id);
        fd_set fs; FD_ZERO(&fs); FD_SET(ls, &fs);
        struct timeval tv = {(long)left, (long)((left - (long)left) * 1e6)};
        if (select(ls + 1, &fs, NULL, NULL, &tv) <= 0) continue;
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        BootHello h;
        BootReply r;
        memset(&r, 0, sizeof(r));
        memcpy(r.magic, BOOT_MAGIC, 8);
        snprintf(r.run_id, sizeof(r.run_id), "%s", run_id);
        if (io_all(fd, &h, sizeof(h), 0, wall_s() + 10) != 0 || memcmp(h.magic, BOOT_MAGIC, 8) != 0) { close(fd); continue; }
        h.run_id[63] = 0;
        if (strcmp(h.run_id, run_id) != 0) r.status = BOOT_OTHER_RUN;
        else if (h.world != world || h.rank <= 0 || h.rank >= world) r.status = BOOT_BAD_WORLD;
        else if (fds[h.rank]) r.status = BOOT_DUP_RANK;
        if (r.status != BOOT_OK) {
            fprintf(stderr, "%s: rank 0: refused rank %d of run \"%s\" (world %d): status %d\n", trainer_name, h.rank, h.run_id, h.world, r.status);
            io_all(fd, &r, sizeof(r), 1, wall_s() + 5);
            close(fd);
            continue;
        }
        fds[h.rank] = fd;
        joined++;
    }
    BootReply r;
    memset(&r, 0, sizeof(r));
    memcpy(r.magic, BOOT_MAGIC, 8);
    snprintf(r.run_id, sizeof(r.run_id), "%s", run_id);
    memcpy(r.id, id, BOOT_ID_BYTES);
    for (int i = 1; i < world; i++) {
        if (io_all(fds[i], &r, sizeof(r), 1, wall_s() + 30) != 0) die("rank 0: lost rank %d during the handshake", i);
        close(fds[i]);
    }
    free(fds);
    close(ls);
}

static void boot_join(void *id, const char *run_id, int rank, int world, const char *addr, int port, double timeout_s) {
    double deadline = wall_s() + timeout_s;
    char ports[16];
    snprintf(ports, sizeof(ports), "%d", port);
    const char *last_err = "no answer";
    for (;;) {
        if (wall_s() > deadline)
            die("rank %d: could not reach rank 0 at %s:%d within %.0f s (%s); is rank 0 running with the same "
                    "--master-addr/--master-port?", rank, addr, port, timeout_s, last_err);
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_INET; hints.ai_socktype = SOCK_STREAM;
        int gai = getaddrinfo(addr, ports, &hints, &res);
        if (gai != 0) { last_err = gai_strerror(gai); sleep(1); continue; }
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        double attempt = wall_s() + 10.0 < deadline ? wall_s() + 10.0 : deadline;
        int ok = fd >= 0 && connect_by(fd, res->ai_addr, res->ai_addrlen, attempt) == 0;
        freeaddrinfo(res);
        if (!ok) { last_err = strerror(errno); if (fd >= 0) close(fd); sleep(1); continue; }
        BootHello h;
        memset(&h, 0, sizeof(h));
        memcpy(h.magic, BOOT_MAGIC, 8);
        snprintf(h.run_id, sizeof(h.run_id), "%s", run_id);
        h.rank = rank; h.world = world;
        BootReply r;
        if (io_all(fd, &h, sizeof(h), 1, deadline) != 0 || io_all(fd, &r, sizeof(r), 0, deadline) != 0 ||
            memcmp(r.magic, BOOT_MAGIC, 8) != 0) {
            close(fd); last_err = "connection closed during the handshake"; sleep(1); continue;
        }
        close(fd);
        r.run_id[63] = 0;
        if (r.status == BOOT_OTHER_RUN)
            die("rank %d: the process at %s:%d belongs to another run (run id \"%s\", ours \"%s\"): a stale run? "
                    "stop it or pick another --master-port", rank, addr, port, r.run_id, run_id);
        if (r.status == BOOT_BAD_WORLD) die("rank %d: rank 0 expects a different world size (ours %d)", rank, world);
        if (r.status == BOOT_DUP_RANK) die("rank %d: another process already joined as rank %d", rank, rank);
        memcpy(id, r.id, BOOT_ID_BYTES);
        return;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* the launcher */

typedef struct {
    int nproc_per_node, nnodes, node_rank, master_port;
    const char *master_addr, *run_id;
    double timeout_s;
    int nccl_one;          /* NCCL even with one rank */
} LaunchArgs;

static pid_t g_children[1024];
static int g_nchildren = 0;
static pid_t g_launcher_pid = 0;
static void forward_signal(int sig) { for (int i = 0; i < g_nchildren; i++) if (g_children[i] > 0) kill(g_children[i], sig); }

static uint64_t fnv1a(const char *s, uint64_t h) { for (; *s; s++) { h ^= (unsigned char)*s; h *= 0x100000001b3ULL; } return h; }

/* Our launcher: with --nproc-per-node N (and no torchrun variables) fork N processes, each with RANK, WORLD_SIZE,
   LOCAL_RANK, MASTER_ADDR, MASTER_PORT and LLMTRAIN_RUN_ID set, and wait for them. Returns in each child; the
   parent exits with the first failure's status (and stops the other ranks). Must run before any CUDA call. */
static void maybe_launch(const LaunchArgs *la, int argc, char **argv) {
    if (getenv("RANK") && getenv("WORLD_SIZE")) return;
    int world = la->nproc_per_node * la->nnodes;
    if (world <= 1) return;
    if (la->nproc_per_node > 1024) die("--nproc-per-node %d: at most 1024", la->nproc_per_node);
    char run_id[64];
    if (la->run_id) snprintf(run_id, sizeof(run_id), "%s", la->run_id);
    else if (la->nnodes == 1) snprintf(run_id, sizeof(run_id), "local-%d-%ld", (int)getpid(), (long)time(NULL));
    else {   /* the same command line on every node gives the same id */
        uint64_t h = 0xcbf29ce484222325ULL;
        for (int i = 1; i < argc; i++) {
            if (!strcmp(argv[i], "--node-rank")) { i++; continue; }
            h = fnv1a(argv[i], h); h = fnv1a(" ", h);
        }
        snprintf(run_id, sizeof(run_id), "argv-%016llx", (unsigned long long)h);
    }
    char v[64];
    setenv("WORLD_SIZE", (snprintf(v, sizeof(v), "%d", world), v), 1);
    setenv("MASTER_ADDR", la->master_addr, 1);
    setenv("MASTER_PORT", (snprintf(v, sizeof(v), "%d", la->master_port), v), 1);
    setenv("LLMTRAIN_RUN_ID", run_id, 1);
    fflush(stdout); fflush(stderr);
    g_launcher_pid = getpid();
    for (int i = 0; i < la->nproc_per_node; i++) {
        pid_t p = fork();
        if (p < 0) die("fork: %s", strerror(errno));
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);           /* the launcher killed: the ranks stop too */
            if (getppid() != g_launcher_pid) _exit(1);  /* ... also when it died before the line above */
            setenv("RANK", (snprintf(v, sizeof(v), "%d", la->node_rank * la->nproc_per_node + i), v), 1);
            setenv("LOCAL_RANK", (snprintf(v, sizeof(v), "%d", i), v), 1);
            setenv("LOCAL_WORLD_SIZE", (snprintf(v, sizeof(v), "%d", la->nproc_per_node), v), 1);
            return;
        }
        g_children[g_nchildren++] = p;
    }
    signal(SIGINT, forward_signal);
    signal(SIGTERM, forward_signal);
    signal(SIGHUP, forward_signal);
    /* After a failure the others get SIGTERM; a rank catches it to finish its step, which it cannot do while a
       collective waits for the dead rank, so whoever is still there after a grace period gets SIGKILL. */
    const double grace_s = 30.0;
    int rc = 0, left = g_nchildren, killed = 0;
    double kill_at = 0.0;
    while (left > 0) {
        int st;
        pid_t p = waitpid(-1, &st, rc ? WNOHANG : 0);
        if (p < 0) { if (errno == EINTR) continue; break; }
        if (p == 0) {   /* only with WNOHANG: nobody exited yet */
            if (!killed && wall_s() >= kill_at) {
                fprintf(stderr, "%s: %d rank(s) still running %.0f s after the failure: killing them\n", trainer_name, left, grace_s);
                for (int i = 0; i < g_nchildren; i++) if (g_children[i] > 0) kill(g_children[i], SIGKILL);
                killed = 1;
            }
            usleep(100000);
            continue;
        }
        left--;
        for (int i = 0; i < g_nchildren; i++) if (g_children[i] == p) g_children[i] = -1;   /* reaped: never signal it again */
        int bad = !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        if (bad && rc == 0) {
            rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            fprintf(stderr, "%s: a rank failed (status %d): stopping the others\n", trainer_name, rc);
            for (int i = 0; i < g_nchildren; i++) if (g_children[i] > 0) kill(g_children[i], SIGTERM);
            kill_at = wall_s() + grace_s;
        }
    }
    exit(rc);
}

/* ------------------------------------------------------------------------------------------------ */
/* the progress clock: the trainer marks each micro-step, step outcome, evaluation and checkpoint; the watchdog
   stops a rank that marked nothing for --nccl-timeout seconds */

static long long g_progress_ms = 0;     /* when the last step (or evaluation, or checkpoint) ended (atomic) */
static long long mono_ms(void) { return (long long)now_ms(); }   /* CLOCK_MONOTONIC: wall-clock steps do not count */
static void progress_mark(void) { __atomic_store_n(&g_progress_ms, mono_ms(), __ATOMIC_RELEASE); }

/* ================================================================================================ */
/* NCCL (and the CUDA runtime): the communicator and its watchdog. Not plain C: train_gpu.cu only. */

/* rank layout from the environment (torchrun's, or our launcher's), the device, and NCCL */
static void dist_init(Dist *d, const LaunchArgs *la) {
    memset(d, 0, sizeof(*d));
    const char *r = getenv("RANK"), *w = getenv("WORLD_SIZE"), *lr = getenv("LOCAL_RANK");
    d->rank = r ? atoi(r) : 0;
    d->world = w ? atoi(w) : 1;
    d->local_rank = lr ? atoi(lr) : 0;
    if (d->world < 1 || d->rank < 0 || d->rank >= d->world) die("bad RANK %d / WORLD_SIZE %d", d->rank, d->world);
    int ndev = gpu_count();
    if (ndev == 0) die("no CUDA device found");
    if (d->local_rank >= ndev) die("LOCAL_RANK %d but only %d GPUs on this node", d->local_rank, ndev);
    CUDA_CHECK(cudaSetDevice(d->local_rank));
    d->tp = 1; d->pp = 1;
    if (d->world == 1) {
        if (la->nccl_one) {   /* a communicator of one: the NCCL code path on one GPU */
            ncclUniqueId id;
            NCCL_CHECK(ncclGetUniqueId(&id));
            NCCL_CHECK(ncclCommInitRank(&d->comm, 1, id, 0));
        }
        d->grank = d->rank; d->gworld = d->world; d->gcomm = d->comm;
        return;
    }
    const char *addr = getenv("MASTER_ADDR") ? getenv("MASTER_ADDR") : la->master_addr;
    int port = getenv("MASTER_PORT") ? atoi(getenv("MASTER_PORT")) : la->master_port;
    /* Under torchrun with TORCHELASTIC_USE_AGENT_STORE=True the agent on node 0 already serves its own TCP store on
       MASTER_PORT (the workers are meant to join it as clients), so rank 0 could not listen there: the handshake
       uses the port above it (every rank gets the same environment, so they agree). */
    const char *agent_store = getenv("TORCHELASTIC_USE_AGENT_STORE");
    if (agent_store && !strcmp(agent_store, "True")) port += 1;
    char run_id[64];
    const char *rid = getenv("LLMTRAIN_RUN_ID") ? getenv("LLMTRAIN_RUN_ID") : la->run_id ? la->run_id : getenv("TORCHELASTIC_RUN_ID");
    if (rid) snprintf(run_id, sizeof(run_id), "%s", rid);
    else snprintf(run_id, sizeof(run_id), "env-%s-%d-%d", addr, port, d->world);
    ncclUniqueId id;
    if (d->rank == 0) {
        NCCL_CHECK(ncclGetUniqueId(&id));
        boot_serve(&id, run_id, d->world, port, la->timeout_s);
    } else {
        boot_join(&id, run_id, d->rank, d->world, addr, port, la->timeout_s);
    }
    NCCL_CHECK(ncclCommInitRank(&d->comm, d->world, id, d->rank));
    d->grank = d->rank; d->gworld = d->world; d->gcomm = d->comm;
}

/* Tensor and pipeline parallelism: rank = (pp_rank x DP + dp_rank) x tp + tp_rank (train.c's and Megatron's order),
   every group split from the whole run's communicator: the tensor-parallel group (tp adjacent ranks); the
   data-parallel group (the ranks with this rank's tp_rank and stage), whose fields d's rank, world and comm become;
   with pp > 1 the pipeline (the pp ranks with this dp and tp index, by stage), with tied embeddings its first and
   last stage (emb_comm), and the model-parallel group (the tp x pp ranks of one data-parallel index). kv_share > 1:
   the tensor-parallel ranks that share a k/v head (tp_rank / kv_share) get a communicator of their own. Collective
   over every rank. */
static void dist_split(Dist *d, int tp, int pp, int kv_share, int tied) {
    if (tp <= 1 && pp <= 1) return;
    if (d->gworld % (tp * pp)) die("--tp %d x --pp %d does not divide the %d ranks", tp, pp, d->gworld);
    int DP = d->gworld / (tp * pp), stride = tp * DP;
    d->tp = tp; d->tp_rank = d->grank % tp;
    d->pp = pp; d->pp_rank = d->grank / stride;
    if (tp > 1) NCCL_CHECK(ncclCommSplit(d->gcomm, d->grank / tp, d->grank, &d->tp_comm, NULL));
    NCCL_CHECK(ncclCommSplit(d->gcomm, d->pp_rank * tp + d->tp_rank, d->grank, &d->comm, NULL));
    d->rank = (d->grank / tp) % DP; d->world = DP;
    d->kv_comm = NULL;
    if (kv_share > 1) NCCL_CHECK(ncclCommSplit(d->tp_comm, d->tp_rank / kv_share, d->tp_rank, &d->kv_comm, NULL));
    d->pp_comm = d->emb_comm = NULL;
    d->mp_comm = d->tp_comm;
    if (pp > 1) {
        int ends = tied && (d->pp_rank == 0 || d->pp_rank == pp - 1);
        NCCL_CHECK(ncclCommSplit(d->gcomm, d->grank % stride, d->grank, &d->pp_comm, NULL));
        NCCL_CHECK(ncclCommSplit(d->gcomm, ends ? d->grank % stride : NCCL_SPLIT_NOCOLOR, d->grank, &d->emb_comm, NULL));
        NCCL_CHECK(ncclCommSplit(d->gcomm, d->rank, d->grank, &d->mp_comm, NULL));
    }
}

/* every communicator of d, once */
static void dist_free(Dist *d) {
    ncclComm_t all[7] = {d->kv_comm, d->tp_comm, d->comm != d->gcomm ? d->comm : NULL, d->pp_comm, d->emb_comm,
                         d->mp_comm != d->tp_comm ? d->mp_comm : NULL, d->gcomm};
    for (int i = 0; i < 7; i++) if (all[i]) ncclCommDestroy(all[i]);
    memset(d, 0, sizeof(*d));
}

/* The NCCL watchdog: a thread that stops this rank when NCCL reports an asynchronous error (a connection to a peer
   broke) or when no step has ended for --nccl-timeout seconds (a peer died without breaking a connection, or
   hangs; progress is marked at each micro-step, evaluation and checkpoint, and the timer starts with the
   training loop). Without it a collective that waits for a dead rank on another node waits forever. It exits the
   process: the driver ends its kernels, the peers' connections break, and our launcher (or torchrun) stops the
   other local ranks. */
static double g_nccl_timeout_s = 0.0;
static ncclComm_t g_watched[7];         /* the run's communicators, g_n_watched of them (0 once the run is over; under
                                           g_watch_lock) */
static int g_n_watched = 0, g_watched_rank = 0;
static pthread_mutex_t g_watch_lock = PTHREAD_MUTEX_INITIALIZER;

static void *nccl_watchdog(void *arg) {
    (void)arg;
    for (;;) {
        sleep(1);
        ncclResult_t st = ncclSuccess, r = ncclSuccess;
        pthread_mutex_lock(&g_watch_lock);
        int over = g_n_watched == 0;
        for (int i = 0; i < g_n_watched && r == ncclSuccess && (st == ncclSuccess || st == ncclInProgress); i++)
            r = ncclCommGetAsyncError(g_watched[i], &st);
        pthread_mutex_unlock(&g_watch_lock);
        if (over) return NULL;
        if (r != ncclSuccess || (st != ncclSuccess && st != ncclInProgress)) {
            fprintf(stderr, "%s: rank %d: NCCL reports an error (%s): stopping\n", trainer_name, g_watched_rank,
                    ncclGetErrorString(r != ncclSuccess ? r : st));
            _exit(1);
        }
        double idle = (mono_ms() - __atomic_load_n(&g_progress_ms, __ATOMIC_ACQUIRE)) / 1000.0;
        if (g_nccl_timeout_s > 0 && idle > g_nccl_timeout_s) {
            fprintf(stderr, "%s: rank %d: no step ended in %.0f s (a rank died or hangs; see --nccl-timeout): stopping\n",
                    trainer_name, g_watched_rank, idle);
            _exit(1);
        }
    }
    return NULL;
}

static void watchdog_start(const Dist *d, double timeout_s) {
    if (!d->gcomm || d->gworld == 1) return;   /* one rank waits for nobody */
    ncclComm_t all[7] = {d->gcomm, d->comm != d->gcomm ? d->comm : NULL, d->tp_comm, d->kv_comm, d->pp_comm, d->emb_comm,
                         d->mp_comm != d->tp_comm ? d->mp_comm : NULL};   /* with --tp / --pp, the groups' too */
    for (int i = 0; i < 7; i++) if (all[i]) g_watched[g_n_watched++] = all[i];
    g_watched_rank = d->grank; g_nccl_timeout_s = timeout_s;
    progress_mark();
    pthread_t th;
    if (pthread_create(&th, NULL, nccl_watchdog, NULL) != 0) die("cannot start the NCCL watchdog thread");
    pthread_detach(th);
}

/* the run is over: the watchdog stops looking before the communicator goes */
static void watchdog_stop(void) {
    pthread_mutex_lock(&g_watch_lock);
    g_n_watched = 0;
    pthread_mutex_unlock(&g_watch_lock);
}

#endif /* DIST_H */
