/*
 train.c — the CPU trainer: flags -> config -> model -> the shared loop (train_loop.h) over this backend.

   ./train --data out/tinyshakespeare_text_document --model tiny-gpt2 --tokenizer data/gpt2_tokenizer.json

 Everything numeric lives in llmtrain.h; this file reads flags, wires the pieces together and fills the
 loop's backend with the header's model on the data-parallel ranks (fork + shared memory, Comm).
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"

#include "train_common.h"
#include "train_loop.h"

static Comm comm;   /* the data-parallel ranks (one process each); world 1 by default */
static void abort_ranks(void) { comm_abort(&comm); }

/* the backend's state: the model, this rank's ZeRO-1 shard and the current step's numbers */
typedef struct {
    Model *m;
    const Args *a;
    const TrainState *ts;
    ShardPiece *pieces;   /* ZeRO-1's reduction by pieces, in the order train_gpu overlaps them with the backward */
    int npieces;
    size_t shard_begin, shard_end;
    AdamWConfig opt;
    double loss;          /* the micro-steps' losses summed, then the step's mean over the ranks */
    double norm, eval;
    int stop, skip;
} CpuRun;

static void cpu_forward_backward(void *ctx, const DataLoader *dl, int micro) {
    CpuRun *c = (CpuRun *)ctx;
    if (micro == 0) { model_zero_grad(c->m); c->loss = 0.0; }
    c->loss += model_forward(c->m, dl->inputs, dl->targets, c->a->batch_size, c->a->seq_len);
    model_backward(c->m, 1.0f / (c->a->grad_accum * comm.world));
}

/* ZeRO-1: sum the gradients into their owners' shards; the norm is the sum of the shards' norms; AdamW on the own
   shard (not on a non-finite step); every rank gathers the others' shards of the weights */
static void cpu_step_queue(void *ctx, int step, float lr, int stop) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    comm_reduce_pieces(&comm, m->grads_memory, c->pieces, c->npieces);
    double red[3] = {c->loss / c->a->grad_accum, grad_sumsq(m->grads_memory, c->shard_begin, c->shard_end), (double)stop};
    comm_all_reduce_double(&comm, red, 3);
    c->loss = red[0] / comm.world;
    c->norm = sqrt(red[1]);
    c->stop = red[2] > 0;
    c->skip = !isfinite(c->loss) || !isfinite(c->norm);
    if (!c->skip) {
        /* clipping fused into the update: grads * grad_clip_scale, as grad_clip would leave them */
        c->opt.lr = lr;
        model_adamw_update_scaled(m, &c->opt, step - (int)c->ts->skipped, c->shard_begin, c->shard_end,
                                  grad_clip_scale(c->norm, c->a->clip));
    }
    comm_all_gather(&comm, m->params_memory, m->num_params);
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

static const float *cpu_forward_logits(void *ctx, const int *ids, int n) {
    CpuRun *c = (CpuRun *)ctx;
    model_forward(c->m, ids, NULL, 1, n);
    return c->m->acts.logits + (size_t)(n - 1) * c->m->cfg.vocab_size;
}

/* the AdamW moments live sharded: gather them so rank 0 writes the whole state */
static void cpu_save(void *ctx, const TrainState *ts) {
    Model *m = ((CpuRun *)ctx)->m;
    if (!m->m_memory) { m->m_memory = (float *)calloc(m->num_params, sizeof(float)); m->v_memory = (float *)calloc(m->num_params, sizeof(float)); }
    comm_all_gather(&comm, m->m_memory, m->num_params);
    comm_all_gather(&comm, m->v_memory, m->num_params);
    if (comm.rank == 0) write_checkpoint(((CpuRun *)ctx)->a, m, ts);
    comm_barrier(&comm);
}

static void cpu_print_setup(void *ctx) {
    const Args *a = ((CpuRun *)ctx)->a;
    printf("batch %d x %d tokens x %d accumulation x %d processes = %d tokens/step; %d threads each\n", a->batch_size,
           a->seq_len, a->grad_accum, comm.world, a->batch_size * a->seq_len * a->grad_accum * comm.world, omp_get_max_threads());
}

int main(int argc, char **argv) {
    trainer_on_die = abort_ranks;
    Args a;
    parse_args(&a, argc, argv, 0);
    if (a.threads > 0) omp_set_num_threads(a.threads);
    else if (a.nproc > 1) omp_set_num_threads(omp_get_num_procs() / a.nproc > 0 ? omp_get_num_procs() / a.nproc : 1);
    char err[1024];

    ModelConfig cfg;
    Data data;
    Model m;
    open_run(&a, &cfg, &data, &m);

    /* the data-parallel ranks: from here on every process runs the same loop on its rows of each batch */
    if (comm_init_fork(&comm, a.nproc, m.num_params, err, sizeof(err)) != 0) die("%s", err);
    CpuRun c;
    memset(&c, 0, sizeof(c));
    c.m = &m; c.a = &a;
    zero_shard(m.num_params, comm.world, comm.rank, &c.shard_begin, &c.shard_end);
    c.pieces = zero_all_grad_pieces(&m, comm.world, &c.npieces);
    if (!c.pieces) die("out of memory");
    /* the loader, and the weights: resumed, continued from HF weights, or fresh */
    DataLoader dl;
    TrainState ts;
    int resumed = start_weights(&m, &ts, &dl, &data, &a, &cfg, comm.rank, comm.world);
    c.ts = &ts;
    c.opt = (AdamWConfig){a.lr, a.beta1, a.beta2, a.eps, a.weight_decay};
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    TrainBackend b = {.ctx = &c, .rank = comm.rank, .world = comm.world, .lag = 0,   /* the outcome at once */
                      .forward_backward = cpu_forward_backward, .step_queue = cpu_step_queue,
                      .step_outcome = cpu_step_outcome, .eval_batch = cpu_eval_batch, .eval_sum = cpu_eval_sum,
                      .forward_logits = cpu_forward_logits, .save = cpu_save, .print_setup = cpu_print_setup};
    train_loop(&b, &a, &cfg, m.num_params, &data, &dl, &ts, resumed);

    free(c.pieces);
    dataloader_free(&dl);
    close_data(&data);
    model_free(&m);
    if (comm.rank != 0) exit(0);
    if (comm_finish(&comm) != 0) { fprintf(stderr, "train: a data-parallel process failed\n"); return 1; }
    return 0;
}
