/*
 train.c — the CPU trainer: flags -> config -> model -> the shared loop (train_loop.h) over this backend.

   ./train --data out/tinyshakespeare_text_document --model tiny-gpt2 --tokenizer data/gpt2_tokenizer.json

 Everything numeric lives in llmtrain.h; this file reads flags, wires the pieces together and fills the
 loop's backend with the header's model on the ranks (fork + shared memory, Comm): data-parallel, and with
 --tp N tensor-parallel in groups of N adjacent ranks (docs/parallelism.md).
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"

#include "train_common.h"
#include "train_loop.h"

/* all the ranks (one process each; world 1 by default), this rank's tensor-parallel group (--tp adjacent ranks)
   and its data-parallel group (the ranks holding the same slice of the model; without --tp, all of them) */
static Comm comm, tp_comm, dp_comm;
static void abort_ranks(void) { comm_abort(&comm); }

/* the model's tensor-parallel collectives, over tp_comm */
static void tp_all_reduce(void *ctx, float *x, size_t n) { comm_all_reduce((Comm *)ctx, x, n); }
static void tp_all_gather(void *ctx, float *x, size_t n) { comm_all_gather((Comm *)ctx, x, n); }
static void tp_reduce_scatter(void *ctx, float *x, size_t n) { comm_reduce_scatter((Comm *)ctx, x, n); }

/* the backend's state: the model, this rank's ZeRO-1 shard and the current step's numbers */
typedef struct {
    Model *m;
    const Args *a;
    const ModelConfig *cfg; /* the whole model's */
    const TrainState *ts;
    ShardPiece *pieces;   /* ZeRO-1's reduction by pieces, in the order train_gpu overlaps them with the backward */
    int npieces;
    size_t shard_begin, shard_end;
    AdamWConfig opt;
    double loss;          /* the micro-steps' losses summed, then the step's mean over the ranks */
    double norm, eval;
    int stop, skip;
    float *logits;        /* [vocab_size]: forward_logits' whole row (tensor parallel) */
} CpuRun;

static void cpu_forward_backward(void *ctx, const DataLoader *dl, int micro) {
    CpuRun *c = (CpuRun *)ctx;
    if (micro == 0) { model_zero_grad(c->m); c->loss = 0.0; }
    c->loss += model_forward(c->m, dl->inputs, dl->targets, c->a->batch_size, c->a->seq_len);
    model_backward(c->m, 1.0f / (c->a->grad_accum * dp_comm.world));
}

/* ZeRO-1: sum the gradients into their owners' shards over the data-parallel group (first, with --tp, the
   replicated weights' partial gradients over the tensor-parallel group); the norm is the sum of the shards'
   norms (a replicated weight counted once); AdamW on the own shard (not on a non-finite step); every rank gathers
   the others' shards of the weights. The loss is the same on a tensor-parallel group's ranks: its first adds it. */
static void cpu_step_queue(void *ctx, int step, float lr, int stop) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    model_tp_reduce_grads(m);
    comm_reduce_pieces(&dp_comm, m->grads_memory, c->pieces, c->npieces);
    double red[3] = {tp_comm.rank == 0 ? c->loss / c->a->grad_accum : 0.0, tp_grad_sumsq(m, c->shard_begin, c->shard_end),
                     (double)stop};
    comm_all_reduce_double(&comm, red, 3);
    c->loss = red[0] / dp_comm.world;
    c->norm = sqrt(red[1]);
    c->stop = red[2] > 0;
    c->skip = !isfinite(c->loss) || !isfinite(c->norm);
    if (!c->skip) {
        /* clipping fused into the update: grads * grad_clip_scale, as grad_clip would leave them */
        c->opt.lr = lr;
        model_adamw_update_scaled(m, &c->opt, step - (int)c->ts->skipped, c->shard_begin, c->shard_end,
                                  grad_clip_scale(c->norm, c->a->clip));
    }
    comm_all_gather(&dp_comm, m->params_memory, m->num_params);
}

static int cpu_step_outcome(void *ctx, int step, double *loss, double *norm, int *stop) {
    CpuRun *c = (CpuRun *)ctx;
    *loss = c->loss; *norm = c->norm; *stop = c->stop;
    return c->skip;
}

static void cpu_eval_batch(void *ctx, const DataLoader *dl, int i) {
    CpuRun *c = (CpuRun *)ctx;
    if (i == 0) c->eval = 0.0;
    c->eval += model_forward(c->m, dl->inputs, dl->targets, dl->B, dl->T);
}

static double cpu_eval_sum(void *ctx) { return ((CpuRun *)ctx)->eval; }

/* the last row's logits; tensor parallel: each rank's vocabulary rows gathered into the whole row */
static const float *cpu_forward_logits(void *ctx, const int *ids, int n) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    model_forward(m, ids, NULL, 1, n);
    const float *row = m->acts.logits + (size_t)(n - 1) * m->cfg.vocab_size;
    if (m->tp.size == 1) return row;
    memcpy(c->logits + m->tp.vocab_begin, row, (size_t)m->cfg.vocab_size * sizeof(float));
    comm_all_gather(&tp_comm, c->logits, (size_t)m->tp.full.vocab_size);
    return c->logits;
}

/* The AdamW moments live sharded: gather them over the data-parallel group. With --tp, the first group's ranks
   then put the whole model together (each writes the runs it owns into zeroed whole buffers, summed over the
   group) and rank 0 writes it. */
static void cpu_save(void *ctx, const TrainState *ts) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    if (!m->m_memory) { m->m_memory = (float *)calloc(m->num_params, sizeof(float)); m->v_memory = (float *)calloc(m->num_params, sizeof(float)); }
    comm_all_gather(&dp_comm, m->m_memory, m->num_params);
    comm_all_gather(&dp_comm, m->v_memory, m->num_params);
    if (m->tp.size == 1) {
        if (comm.rank == 0) write_checkpoint(c->a, m, ts);
    } else if (dp_comm.rank == 0) {
        Model whole;
        if (model_build(&whole, c->cfg) != 0) die("out of memory putting the model together");
        whole.m_memory = (float *)calloc(whole.num_params, sizeof(float));
        whole.v_memory = (float *)calloc(whole.num_params, sizeof(float));
        if (!whole.m_memory || !whole.v_memory) die("out of memory putting the model together");
        float *mine[3] = {m->params_memory, m->m_memory, m->v_memory}, *all[3] = {whole.params_memory, whole.m_memory, whole.v_memory};
        for (int i = 0; i < 3; i++) {
            tp_unslice(m, all[i], mine[i]);
            comm_all_reduce(&tp_comm, all[i], whole.num_params);
        }
        if (comm.rank == 0) write_checkpoint(c->a, &whole, ts);
        model_free(&whole);
    }
    comm_barrier(&comm);
}

/* per rank: what it holds of the model, its gradients and AdamW moments (whole arrays; ZeRO-1 updates 1/dp of
   them) and the activations of a micro-batch */
static void cpu_print_setup(void *ctx) {
    const CpuRun *c = (const CpuRun *)ctx;
    const Args *a = c->a;
    const Model *m = c->m;
    printf("batch %d x %d tokens x %d accumulation x %d data-parallel = %d tokens/step; %d threads per process\n",
           a->batch_size, a->seq_len, a->grad_accum, dp_comm.world, a->batch_size * a->seq_len * a->grad_accum * dp_comm.world,
           omp_get_max_threads());
    if (a->tp > 1)
        printf("tensor parallel: %d ranks per group%s (%d heads, %d kv heads%s, ff %d, %d vocabulary rows on rank 0), "
               "%d data-parallel groups\n", a->tp, a->sp ? ", sequence parallel" : "", m->cfg.n_head, m->cfg.n_kv_head,
               m->tp.kv_share > 1 ? " shared" : "", m->cfg.d_ff, m->cfg.vocab_size, dp_comm.world);
    double mib = 1.0 / (1 << 20), p = m->num_params * 4.0 * mib;
    double act = 2.0 * model_activation_floats(m, a->batch_size, a->seq_len) * 4.0 * mib;
    printf("memory per rank: parameters %.1f MiB, gradients %.1f MiB, AdamW moments %.1f MiB (this rank updates %.1f MiB of "
           "them), activations and their gradients %.1f MiB\n", p, p, 2 * p,
           2.0 * (c->shard_end - c->shard_begin) * 4.0 * mib, act);
}

int main(int argc, char **argv) {
    trainer_on_die = abort_ranks;
    Args a;
    parse_args(&a, argc, argv, 0);
    if (a.threads > 0) omp_set_num_threads(a.threads);
    else if (a.nproc > 1) omp_set_num_threads(omp_get_num_procs() / a.nproc > 0 ? omp_get_num_procs() / a.nproc : 1);
    char err[1024];

    ModelConfig cfg, local_cfg;
    TensorParallel tp;
    Data data;
    Model m;
    open_run(&a, &cfg, &data, &m);
    size_t whole_params = m.num_params;
    if (tp_config(&cfg, a.tp, 0, &local_cfg, &tp, err, sizeof(err)) != 0) die("--tp %d: %s", a.tp, err);

    /* the ranks: from here on every process runs the same loop; a data-parallel group's ranks on their rows of each
       batch, a tensor-parallel group's on the same rows. The tensor-parallel gathers hold at most the whole model. */
    size_t tp_gather = m.num_params + (size_t)a.tp * 2 * a.batch_size * a.seq_len + (size_t)a.batch_size * a.seq_len * cfg.n_embd;
    if (comm_init_fork_groups(&comm, &tp_comm, &dp_comm, a.nproc, a.tp, tp_gather, m.num_params, err, sizeof(err)) != 0)
        die("%s", err);
    /* the loader, and the weights: resumed, continued from HF weights, or fresh (the whole model on every rank) */
    DataLoader dl;
    TrainState ts;
    int resumed = start_weights(&m, &ts, &dl, &data, &a, &cfg, dp_comm.rank, dp_comm.world, comm.rank == 0);

    /* tensor parallel: this rank's slice of the weights (and of the moments on a resume); the whole model goes */
    Model slice, *model = &m;
    if (a.tp > 1) {
        if (tp_config(&cfg, a.tp, tp_comm.rank, &local_cfg, &tp, err, sizeof(err)) != 0) die("--tp %d: %s", a.tp, err);
        if (model_build(&slice, &local_cfg) != 0) die("out of memory for the model");
        tp.sp = a.sp; tp.ctx = &tp_comm;
        tp.all_reduce = tp_all_reduce; tp.all_gather = tp_all_gather; tp.reduce_scatter = tp_reduce_scatter;
        slice.tp = tp;
        slice.reset_attention = m.reset_attention; slice.reset_positions = m.reset_positions; slice.eod = m.eod;
        tp_slice(&slice, slice.params_memory, m.params_memory);
        if (m.m_memory) {
            slice.m_memory = (float *)calloc(slice.num_params, sizeof(float));
            slice.v_memory = (float *)calloc(slice.num_params, sizeof(float));
            if (!slice.m_memory || !slice.v_memory) die("out of memory for the AdamW moments");
            tp_slice(&slice, slice.m_memory, m.m_memory);
            tp_slice(&slice, slice.v_memory, m.v_memory);
        }
        model_free(&m);
        model = &slice;
    }
    CpuRun c;
    memset(&c, 0, sizeof(c));
    c.m = model; c.a = &a; c.cfg = &cfg;
    zero_shard(model->num_params, dp_comm.world, dp_comm.rank, &c.shard_begin, &c.shard_end);
    c.pieces = zero_all_grad_pieces(model, dp_comm.world, &c.npieces);
    c.logits = (float *)malloc((size_t)cfg.vocab_size * sizeof(float));
    if (!c.pieces || !c.logits) die("out of memory");
    c.ts = &ts;
    c.opt = (AdamWConfig){a.lr, a.beta1, a.beta2, a.eps, a.weight_decay};
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    TrainBackend b = {.ctx = &c, .rank = comm.rank, .world = dp_comm.world, .evaluates = dp_comm.rank == 0,
                      .lag = 0,   /* the outcome at once */
                      .forward_backward = cpu_forward_backward, .step_queue = cpu_step_queue,
                      .step_outcome = cpu_step_outcome, .eval_batch = cpu_eval_batch, .eval_sum = cpu_eval_sum,
                      .forward_logits = cpu_forward_logits, .save = cpu_save, .print_setup = cpu_print_setup};
    train_loop(&b, &a, &cfg, whole_params, &data, &dl, &ts, resumed);

    free(c.pieces); free(c.logits);
    dataloader_free(&dl);
    close_data(&data);
    model_free(model);
    if (comm.rank != 0) exit(0);
    if (comm_finish(&comm) != 0) { fprintf(stderr, "train: a process failed\n"); return 1; }
    return 0;
}
