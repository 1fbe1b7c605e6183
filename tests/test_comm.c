/* test_comm: the ZeRO shard arithmetic both trainers share (zero_shard, zero_grad_pieces) and the CPU
   collectives (comm_reduce_pieces, comm_reduce_scatter, comm_all_gather, comm_all_reduce_double) across forked
   ranks, with a reduction buffer cut small so that pieces straddle its chunks.

   The pieces: for every family preset and every world size, the pieces of layers 0..L-1 and of the rest cover
   [0, num_params) exactly once; each lies in one tensor, in its owner's zero_shard, and a layer's pieces in
   that layer's slice of the tensor. The collectives: each rank fills its buffer with values of its own; after
   the call the owner of every element holds the sum in rank order (bit for bit: the same float additions),
   and the other ranks' values are untouched.

   Tensor parallelism: for every preset, tied and untied, and tensor-parallel sizes 1, 2, 4, each rank's runs
   (tp_runs) cover its flat parameters once in order, and the owned runs of all ranks cover the whole model's once;
   tp_slice then tp_unslice on every rank, summed, gives the whole buffer back bit for bit. The groups of
   comm_init_fork_groups (4 ranks as 2 x 2, 6 as 3 x 2, 4 as 1 x 4): a tensor-parallel group's all-reduce and a
   data-parallel group's reduce-scatter and all-gather sum exactly their own ranks' values, in group order; and
   5 messages around a ring of queues (comm_send / comm_recv) arrive whole and in order. */
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "test_util.h"

static int cmp_piece(const void *a, const void *b) {
    const ShardPiece *x = (const ShardPiece *)a, *y = (const ShardPiece *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static void check_pieces(const char *name, const Model *m, int world) {
    int L = m->cfg.n_layer, total = 0;
    for (int l = 0; l <= L; l++) total += zero_grad_pieces(m, l, world, NULL, 0);
    ShardPiece *all = (ShardPiece *)malloc((size_t)total * sizeof(ShardPiece));
    int k = 0, bad = 0;
    for (int l = 0; l <= L; l++) {
        int n = zero_grad_pieces(m, l, world, all + k, total - k);
        for (int i = k; i < k + n; i++) {
            ShardPiece p = all[i];
            size_t tb = m->param_offsets[p.tensor], ts = m->param_sizes[p.tensor], sb, se;
            zero_shard(m->num_params, world, p.owner, &sb, &se);
            int in_tensor = p.begin >= tb && p.end <= tb + ts && p.begin < p.end;
            int in_shard = p.owner >= 0 && p.owner < world && p.begin >= sb && p.end <= se;
            int in_layer = 1;
            if (l < L) {   /* a per-layer tensor: this layer's slice */
                size_t per = ts / L;
                in_layer = ts % L == 0 && (p.begin - tb) / per == (size_t)l && (p.end - 1 - tb) / per == (size_t)l;
            } else {
                in_layer = p.tensor == P_WTE || p.tensor == P_WPE || p.tensor == P_LNFW || p.tensor == P_LNFB ||
                           p.tensor == P_LMHEAD;
            }
            if (!in_tensor || !in_shard || !in_layer) {
                if (bad++ < 5)
                    failf("%s world %d layer %d: piece [%zu, %zu) tensor %d owner %d: %s", name, world, l, p.begin, p.end,
                          p.tensor, p.owner, !in_tensor ? "not inside its tensor" : !in_shard ? "not inside its owner's shard" : "not in its layer's slice");
            }
        }
        k += n;
    }
    qsort(all, (size_t)total, sizeof(ShardPiece), cmp_piece);
    size_t at = 0;
    for (int i = 0; i < total; i++) {
        if (all[i].begin != at) { failf("%s world %d: a %s at %zu", name, world, all[i].begin > at ? "gap" : "overlap", at); bad++; break; }
        at = all[i].end;
    }
    if (at != m->num_params && !bad) { failf("%s world %d: the pieces end at %zu, not %zu", name, world, at, m->num_params); bad++; }
    checks++;
    free(all);
}

static void test_pieces(void) {
    const char *presets[] = {"tiny-gpt2", "tiny-llama", "tiny-qwen3"};
    const int worlds[] = {1, 2, 3, 4, 5, 7, 8, 13, 64};
    for (int i = 0; i < 3; i++) {
        for (int tie = 0; tie < 2; tie++) {
            ModelConfig cfg;
            if (model_config_preset(&cfg, presets[i]) != 0) { failf("%s: no such preset", presets[i]); continue; }
            cfg.tie_embeddings = tie;
            Model m;
            if (model_build(&m, &cfg) != 0) { failf("%s: model_build", presets[i]); continue; }
            char name[64];
            snprintf(name, sizeof(name), "%s%s", presets[i], tie ? " tied" : " untied");
            for (size_t w = 0; w < sizeof(worlds) / sizeof(worlds[0]); w++) check_pieces(name, &m, worlds[w]);
            model_free(&m);
        }
    }
    printf("zero_grad_pieces: %d layouts x worlds checked\n", checks);
}

/* the value rank r holds at i: distinct per rank, with fractions whose sum order matters in fp32 */
static float value_of(int r, size_t i) { return (float)((i * 2654435761u + (size_t)r * 40503u) % 100003) / 977.0f - 50.0f; }

static float rank_order_sum(int world, size_t i) {
    float s = value_of(0, i);
    for (int r = 1; r < world; r++) s += value_of(r, i);
    return s;
}

/* runs in every rank; returns the number of wrong values this rank saw */
static int collectives_in_rank(Comm *c, const Model *m) {
    int world = c->world, rank = c->rank, wrong = 0;
    size_t n = m->num_params;
    float *data = (float *)malloc(n * sizeof(float));
    /* comm_reduce_pieces over the pieces of every layer, in the trainers' order (layers last to first, then the rest) */
    int k = 0;
    ShardPiece *p = zero_all_grad_pieces(m, world, &k);
    for (size_t i = 0; i < n; i++) data[i] = value_of(rank, i);
    comm_reduce_pieces(c, data, p, k);
    size_t sb, se;
    zero_shard(n, world, rank, &sb, &se);
    for (size_t i = 0; i < n; i++) {
        float want = i >= sb && i < se ? rank_order_sum(world, i) : value_of(rank, i);
        if (memcmp(&data[i], &want, sizeof(float)) != 0 && wrong++ < 3)
            fprintf(stderr, "FAIL: rank %d/%d reduce_pieces [%zu] = %.9g, want %.9g\n", rank, world, i, data[i], want);
    }
    /* comm_reduce_scatter on an odd length, then comm_all_gather of the shards */
    size_t n2 = n - 3;
    for (size_t i = 0; i < n2; i++) data[i] = value_of(rank, i);
    comm_reduce_scatter(c, data, n2);
    zero_shard(n2, world, rank, &sb, &se);
    for (size_t i = sb; i < se; i++) {
        float want = rank_order_sum(world, i);
        if (memcmp(&data[i], &want, sizeof(float)) != 0 && wrong++ < 3)
            fprintf(stderr, "FAIL: rank %d/%d reduce_scatter [%zu] = %.9g, want %.9g\n", rank, world, i, data[i], want);
    }
    comm_all_gather(c, data, n2);
    for (size_t i = 0; i < n2; i++) {
        float want = rank_order_sum(world, i);
        if (memcmp(&data[i], &want, sizeof(float)) != 0 && wrong++ < 3)
            fprintf(stderr, "FAIL: rank %d/%d all_gather [%zu] = %.9g, want %.9g\n", rank, world, i, data[i], want);
    }
    double x[3] = {rank + 0.5, -rank * 2.0, 1.0};
    comm_all_reduce_double(c, x, 3);
    double w0 = 0, w1 = 0;
    for (int r = 0; r < world; r++) { w0 += r + 0.5; w1 += -r * 2.0; }
    if ((x[0] != w0 || x[1] != w1 || x[2] != world) && wrong++ < 3)
        fprintf(stderr, "FAIL: rank %d/%d all_reduce_double: %g %g %g\n", rank, world, x[0], x[1], x[2]);
    free(p);
    free(data);
    return wrong;
}

/* One world size, in a child process of its own: forking ranks from a process whose OpenMP thread pool exists
   would leave the children's pool broken, so the test's own process never runs a parallel region. */
static int collectives_world(const Model *m, int world, size_t chunk) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        char err[256];
        Comm c;
        omp_set_num_threads(1);
        if (comm_init_fork(&c, world, m->num_params, err, sizeof(err)) != 0) { fprintf(stderr, "FAIL: comm_init_fork: %s\n", err); _exit(2); }
        c.chunk = chunk;   /* every rank the same, smaller than the pieces: they straddle chunk borders */
        int wrong = collectives_in_rank(&c, m);
        comm_barrier(&c);
        if (c.rank != 0) _exit(wrong ? 1 : 0);
        _exit(comm_finish(&c) != 0 || wrong ? 1 : 0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) < 0) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_collectives(void) {
    ModelConfig cfg;
    if (model_config_preset(&cfg, "tiny-llama") != 0) { failf("tiny-llama: no such preset"); return; }
    Model m;
    if (model_build(&m, &cfg) != 0) { failf("model_build"); return; }
    const int worlds[] = {2, 3, 4};
    for (int w = 0; w < 3; w++) {
        int rc = collectives_world(&m, worlds[w], 3001 + 37 * w);
        if (rc != 0) failf("collectives over %d ranks: exit %d (see above)", worlds[w], rc);
        else printf("collectives over %d ranks: ok\n", worlds[w]);
        checks++;
    }
    model_free(&m);
}

/* the whole model's values: a test pattern distinct per element */
static float whole_value(size_t i) { return (float)(i % 1000003) * 0.5f - 7.0f; }

static void check_tp_layout(const char *name, const ModelConfig *cfg, int S) {
    ModelConfig lc;
    TensorParallel tp;
    char err[256];
    Model whole;
    if (model_build(&whole, cfg) != 0) { failf("model_build"); return; }
    size_t W = whole.num_params;
    int *owners = (int *)calloc(W, sizeof(int));
    float *sum = (float *)calloc(W, sizeof(float)), *src = (float *)malloc(W * sizeof(float));
    for (size_t i = 0; i < W; i++) src[i] = whole_value(i);
    for (int r = 0; r < S; r++) {
        if (tp_config(cfg, S, r, &lc, &tp, err, sizeof(err)) != 0) { failf("%s tp %d: %s", name, S, err); break; }
        Model m;
        if (model_build(&m, &lc) != 0) { failf("model_build"); break; }
        m.tp = tp;
        size_t n = tp_runs(&m, NULL), at = 0;
        TPRun *runs = (TPRun *)malloc(n * sizeof(TPRun));
        tp_runs(&m, runs);
        for (size_t i = 0; i < n; i++) {
            if (runs[i].local != at || runs[i].whole + runs[i].len > W) {
                failf("%s tp %d rank %d: run %zu at local %zu (expected %zu), whole %zu + %zu", name, S, r, i, runs[i].local, at,
                      runs[i].whole, runs[i].len);
                break;
            }
            at += runs[i].len;
            if (runs[i].owner) for (size_t j = 0; j < runs[i].len; j++) owners[runs[i].whole + j]++;
        }
        if (at != m.num_params) failf("%s tp %d rank %d: the runs cover %zu of %zu parameters", name, S, r, at, m.num_params);
        float *local = (float *)malloc(m.num_params * sizeof(float)), *back = (float *)calloc(W, sizeof(float));
        tp_slice(&m, local, src);
        tp_unslice(&m, back, local);
        for (size_t i = 0; i < W; i++) sum[i] += back[i];
        free(local); free(back); free(runs);
        model_free(&m);
    }
    size_t once = 0, same = 0;
    for (size_t i = 0; i < W; i++) { once += owners[i] == 1; same += memcmp(&sum[i], &src[i], sizeof(float)) == 0; }
    if (once != W) failf("%s tp %d: %zu of %zu whole parameters owned by exactly one rank", name, S, once, W);
    if (same != W) failf("%s tp %d: slice + unslice summed over the ranks gives back %zu of %zu values", name, S, same, W);
    checks++;
    free(owners); free(sum); free(src);
    model_free(&whole);
}

static void test_tp_layout(void) {
    const char *presets[] = {"tiny-gpt2", "tiny-llama", "tiny-qwen3"};
    for (int i = 0; i < 3; i++)
        for (int tie = 0; tie < 2; tie++)
            for (int S = 1; S <= 4; S *= 2) {
                ModelConfig cfg;
                model_config_preset(&cfg, presets[i]);
                cfg.tie_embeddings = tie;
                cfg.qkv_bias = cfg.mlp_bias = 1;   /* every tensor present */
                char name[64];
                snprintf(name, sizeof(name), "%s%s", presets[i], tie ? " tied" : " untied");
                check_tp_layout(name, &cfg, S);
            }
    printf("tensor-parallel layouts: %d checked\n", checks);
}

/* the value world rank r holds at i in the group tests */
static int groups_in_rank(Comm *world, Comm *tpc, Comm *dpc, int tp) {
    int wrong = 0;
    size_t n = 5003;
    float *x = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = value_of(world->rank, i);
    comm_all_reduce(tpc, x, n);
    int first = world->rank - tpc->rank;   /* the group's first world rank */
    for (size_t i = 0; i < n; i++) {
        float want = value_of(first, i);
        for (int r = 1; r < tp; r++) want += value_of(first + r, i);
        if (memcmp(&x[i], &want, sizeof(float)) != 0 && wrong++ < 3)
            fprintf(stderr, "FAIL: rank %d tp all_reduce [%zu] = %.9g, want %.9g\n", world->rank, i, x[i], want);
    }
    for (size_t i = 0; i < n; i++) x[i] = value_of(world->rank, i);
    comm_reduce_scatter(dpc, x, n);
    comm_all_gather(dpc, x, n);
    for (size_t i = 0; i < n; i++) {
        float want = value_of(tpc->rank, i);   /* dp group: world ranks tp_rank, tp_rank + tp, ... */
        for (int r = 1; r < dpc->world; r++) want += value_of(tpc->rank + r * tp, i);
        if (memcmp(&x[i], &want, sizeof(float)) != 0 && wrong++ < 3)
            fprintf(stderr, "FAIL: rank %d dp reduce_scatter + all_gather [%zu] = %.9g, want %.9g\n", world->rank, i, x[i], want);
    }
    free(x);
    return wrong;
}

static void test_groups(void) {
    const int layouts[3][2] = {{4, 2}, {6, 2}, {4, 4}};
    for (int k = 0; k < 3; k++) {
        int world_n = layouts[k][0], tp = layouts[k][1];
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            char err[256];
            Comm w, g[2];
            int color[2 * COMM_MAX_RANKS];
            size_t gather[2] = {8192, 8192};
            for (int r = 0; r < world_n; r++) { color[r] = r / tp; color[world_n + r] = r % tp; }   /* tp groups, dp groups */
            omp_set_num_threads(1);
            /* a queue from each rank to the next one, 2 messages deep */
            CommQueue *q[COMM_MAX_RANKS];
            for (int r = 0; r < world_n; r++) if (!(q[r] = comm_queue_map(1000, 2, err, sizeof(err)))) { fprintf(stderr, "FAIL: %s\n", err); _exit(2); }
            if (comm_init_fork_groups(&w, world_n, 2, color, gather, g, err, sizeof(err)) != 0) { fprintf(stderr, "FAIL: %s\n", err); _exit(2); }
            g[0].chunk = g[1].chunk = 777;   /* several chunks per call */
            int wrong = groups_in_rank(&w, &g[0], &g[1], tp);
            /* 5 messages around the ring (more than the queue holds: the sender waits for the reader) */
            float msg[1000], got[1000];
            for (int k = 0; k < 5; k++) {
                for (int i = 0; i < 1000; i++) msg[i] = value_of(w.rank * 10 + k, i);
                if (w.rank % 2 == 0) { comm_send(&w, q[w.rank], msg, 1000); comm_recv(&w, q[(w.rank + world_n - 1) % world_n], got, 1000); }
                else { comm_recv(&w, q[(w.rank + world_n - 1) % world_n], got, 1000); comm_send(&w, q[w.rank], msg, 1000); }
                int from = (w.rank + world_n - 1) % world_n;
                for (int i = 0; i < 1000; i++)
                    if (got[i] != value_of(from * 10 + k, i) && wrong++ < 3) fprintf(stderr, "FAIL: rank %d message %d from %d [%d]\n", w.rank, k, from, i);
            }
            comm_barrier(&w);
            if (w.rank != 0) _exit(wrong ? 1 : 0);
            _exit(comm_finish(&w) != 0 || wrong ? 1 : 0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failf("groups of %d ranks, tp %d: failed (see above)", world_n, tp);
        else printf("groups of %d ranks, tp %d: ok\n", world_n, tp);
        checks++;
    }
}

int main(void) {
    test_pieces();
    test_collectives();
    test_tp_layout();
    test_groups();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
