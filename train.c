/*
 train.c — the CPU trainer: flags -> config -> model -> the shared loop (train_loop.h) over this backend.

   ./train --data out/tinyshakespeare_text_document --model tiny-gpt2 --tokenizer data/gpt2_tokenizer.json

 Everything numeric lives in llmtrain.h; this file reads flags, wires the pieces together and fills the
 loop's backend with the header's model on the ranks (fork + shared memory, Comm): data-parallel, with --tp S
 tensor-parallel in groups of S adjacent ranks, with --pp P pipeline-parallel in P stages (docs/parallelism.md).
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"

#include "train_common.h"
#include "train_loop.h"

/* The ranks (one process each; world 1 by default), in Megatron's order: rank = (pp_rank x DP + dp_rank) x TP + tp_rank.
   This rank's groups: tensor-parallel (the TP ranks of its stage and data-parallel index), data-parallel (the
   ranks holding the same slice of the model; without --tp and --pp, all of them), model-parallel (the TP x PP
   ranks that hold one whole model together), and with tied embeddings the first and last stage of its pipeline. */
static Comm comm, tp_comm, dp_comm, mp_comm, emb_comm;
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
    float *logits;        /* [vocab_size]: forward_logits' whole row (tensor or pipeline parallel) */
    /* pipeline: the queues to and from the neighbouring stages, the step's micro-batches, their model views */
    CommQueue *to_next, *from_prev, *grad_to_prev, *grad_from_next;
    int *mb_inputs, *mb_targets;   /* [grad_accum][B*T] */
    Model *views;
    int nviews;
    float *dout;          /* [B*T*C]: a received output gradient */
    FILE *trace;          /* --pp-trace */
    double t0, busy_ms, step_ms;   /* the step's start; its time in forwards and backwards; its length */
} CpuRun;

/* --pp-trace: one Chrome trace event (a complete event, "ph":"X") per forward, backward, send and receive */
static void trace_event(CpuRun *c, const char *what, int micro, double start_ms) {
    double end = now_ms();
    if (!strcmp(what, "F") || !strcmp(what, "B")) c->busy_ms += end - start_ms;
    if (!c->trace) return;
    fprintf(c->trace, "{\"name\":\"%s%d\",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.1f,\"dur\":%.1f,\"pid\":0,\"tid\":%d,"
            "\"args\":{\"step\":%lld,\"micro\":%d}}\n", what, micro, what, start_ms * 1000.0, (end - start_ms) * 1000.0,
            comm.rank, (long long)c->ts->step + 1, micro);
}

/* micro-batch i through this stage: the input from the stage before (or the embedding), the forward, the output
   to the stage after (or the loss) */
static void pp_forward(CpuRun *c, int i) {
    Model *v = &c->views[i % c->nviews];
    int B = c->a->batch_size, T = c->a->seq_len;
    size_t n = model_stage_floats(v, B, T);
    double t = now_ms();
    if (!v->pp.embed) { comm_recv(&comm, c->from_prev, model_stage_input(v, B, T), n); trace_event(c, "recv", i, t); t = now_ms(); }
    float loss = model_forward(v, c->mb_inputs + (size_t)i * B * T, c->mb_targets + (size_t)i * B * T, B, T);
    trace_event(c, "F", i, t);
    if (v->pp.head) c->loss += loss;
    else { t = now_ms(); comm_send(&comm, c->to_next, model_stage_output(v), n); trace_event(c, "send", i, t); }
}

/* its backward: the output's gradient from the stage after (or the loss), the input's to the stage before */
static void pp_backward(CpuRun *c, int i) {
    Model *v = &c->views[i % c->nviews];
    size_t n = model_stage_floats(v, c->a->batch_size, c->a->seq_len);
    double t = now_ms();
    if (!v->pp.head) { comm_recv(&comm, c->grad_from_next, c->dout, n); trace_event(c, "recv", i, t); t = now_ms(); }
    model_backward_stage(v, 1.0f / (c->a->grad_accum * dp_comm.world), v->pp.head ? NULL : c->dout);
    trace_event(c, "B", i, t);
    if (!v->pp.embed) { t = now_ms(); comm_send(&comm, c->grad_to_prev, model_stage_input_grad(v), n); trace_event(c, "send", i, t); }
}

/* One step's M micro-batches through the P stages, 1F1B (Narayanan et al. 2021, sec. 2.2): stage s runs
   warm = min(P - s - 1, M) forwards, then one forward and one backward at a time, then the backwards left. At most
   warm + 1 micro-batches are alive on a stage (its views); the last stage never waits between a forward and its
   backward, the first waits P - 1 forwards and backwards of the others: the bubble, (P - 1) / (M + P - 1) of
   the step when every stage takes the same time. */
static void pp_step(CpuRun *c) {
    int P = c->m->pp.size, s = c->m->pp.rank, M = c->a->grad_accum, warm = P - s - 1 < M ? P - s - 1 : M;
    for (int i = 0; i < warm; i++) pp_forward(c, i);
    for (int i = warm; i < M; i++) { pp_forward(c, i); pp_backward(c, i - warm); }
    for (int i = M - warm; i < M; i++) pp_backward(c, i);
}

static void cpu_forward_backward(void *ctx, const DataLoader *dl, int micro) {
    CpuRun *c = (CpuRun *)ctx;
    if (micro == 0) { model_zero_grad(c->m); c->loss = 0.0; c->t0 = now_ms(); c->busy_ms = 0.0; }
    if (c->m->pp.size == 1) {
        c->loss += model_forward(c->m, dl->inputs, dl->targets, c->a->batch_size, c->a->seq_len);
        model_backward(c->m, 1.0f / (c->a->grad_accum * dp_comm.world));
        return;
    }
    size_t BT = (size_t)c->a->batch_size * c->a->seq_len;   /* the pipeline runs when it has the step's micro-batches */
    memcpy(c->mb_inputs + micro * BT, dl->inputs, BT * sizeof(int));
    memcpy(c->mb_targets + micro * BT, dl->targets, BT * sizeof(int));
    if (micro == c->a->grad_accum - 1) { pp_step(c); c->step_ms = now_ms() - c->t0; }
}

/* ZeRO-1: sum the gradients into their owners' shards over the data-parallel group (first, with --tp, the
   replicated weights' partial gradients over the tensor-parallel group; with --pp and tied embeddings, the two
   copies' gradients over the first and last stage); the norm is the sum of the shards' norms (a replicated weight
   counted once); AdamW on the own shard (not on a non-finite step); every rank gathers the others' shards of the
   weights. The loss: the last stage's, added by its first tensor-parallel rank. */
static void cpu_step_queue(void *ctx, int step, float lr, int stop) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    model_tp_reduce_grads(m);
    if (emb_comm.world > 1) comm_all_reduce(&emb_comm, m->grads.wte, m->param_sizes[P_WTE]);
    comm_reduce_pieces(&dp_comm, m->grads_memory, c->pieces, c->npieces);
    double mine = m->pp.head && tp_comm.rank == 0 ? c->loss / c->a->grad_accum : 0.0;
    double red[3] = {mine, tp_grad_sumsq(m, c->shard_begin, c->shard_end), (double)stop};
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

/* a forward of B x T through the stages (an evaluation or a sample's): returns the loss on the last stage */
static float pp_forward_only(CpuRun *c, const int *ids, const int *targets, int B, int T) {
    Model *m = c->m;
    size_t n = model_stage_floats(m, B, T);
    if (!m->pp.embed) comm_recv(&comm, c->from_prev, model_stage_input(m, B, T), n);
    float loss = model_forward(m, ids, targets, B, T);
    if (!m->pp.head) comm_send(&comm, c->to_next, model_stage_output(m), n);
    return loss;
}

static void cpu_eval_batch(void *ctx, const DataLoader *dl, int i) {
    CpuRun *c = (CpuRun *)ctx;
    if (i == 0) c->eval = 0.0;
    float loss = pp_forward_only(c, dl->inputs, dl->targets, dl->B, dl->T);
    if (c->m->pp.head) c->eval += loss;
}

/* the evaluation's sum, from the last stage to every rank of the model */
static double cpu_eval_sum(void *ctx) {
    CpuRun *c = (CpuRun *)ctx;
    double x = c->m->pp.head && tp_comm.rank == 0 ? c->eval : 0.0;
    comm_all_reduce_double(&mp_comm, &x, 1);
    return x;
}

/* the last row's logits, on every rank of the model: each tensor-parallel rank's vocabulary rows gathered into the
   whole row; with --pp, the last stage's row summed over the model's ranks (the others add zeros) */
static const float *cpu_forward_logits(void *ctx, const int *ids, int n) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    int V = c->cfg->vocab_size;
    pp_forward_only(c, ids, NULL, 1, n);
    if (m->tp.size == 1 && m->pp.size == 1) return m->acts.logits + (size_t)(n - 1) * V;
    memset(c->logits, 0, (size_t)V * sizeof(float));
    if (m->pp.head) {
        memcpy(c->logits + m->tp.vocab_begin, m->acts.logits + (size_t)(n - 1) * m->cfg.vocab_size, (size_t)m->cfg.vocab_size * sizeof(float));
        comm_all_gather(&tp_comm, c->logits, (size_t)V);
        if (tp_comm.rank != 0) memset(c->logits, 0, (size_t)V * sizeof(float));
    }
    if (m->pp.size > 1) comm_all_reduce(&mp_comm, c->logits, (size_t)V);
    return c->logits;
}

/* put_whole_model's sum over the model's ranks (--tp, --pp) */
static void mp_sum(void *ctx, float *buf, size_t n) { (void)ctx; comm_all_reduce(&mp_comm, buf, n); }

/* The AdamW moments live sharded: gather them over the data-parallel group. With --tp or --pp, the first model's
   ranks then put the whole model together (each writes the runs it owns into zeroed whole buffers, summed over
   the model's ranks) and rank 0 writes it. */
static void cpu_save(void *ctx, const TrainState *ts) {
    CpuRun *c = (CpuRun *)ctx;
    Model *m = c->m;
    if (model_alloc_moments(m) != 0) die("out of memory for the AdamW moments");
    comm_all_gather(&dp_comm, m->m_memory, m->num_params);
    comm_all_gather(&dp_comm, m->v_memory, m->num_params);
    if (mp_comm.world == 1) {
        if (comm.rank == 0) write_checkpoint(c->a, m, ts);
    } else if (dp_comm.rank == 0) {
        Model whole;
        put_whole_model(&whole, m, c->cfg, mp_sum, NULL);
        if (comm.rank == 0) write_checkpoint(c->a, &whole, ts);
        model_free(&whole);
    }
    comm_barrier(&comm);
}

/* per rank: what it holds of the model, its gradients and AdamW moments (whole arrays; ZeRO-1 updates 1/dp of
   them) and the activations of a micro-batch (with --pp, of each one alive at once) */
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
    if (a->pp > 1) {
        int M = a->grad_accum, P = a->pp;
        printf("pipeline: %d stages, 1F1B over %d micro-batches, layers %d-%d on rank 0 (of %d); the bubble in theory "
               "(P-1)/(M+P-1) = %.3f\n", P, M, m->pp.layer0, m->pp.layer0 + m->cfg.n_layer - 1, c->cfg->n_layer,
               (double)(P - 1) / (M + P - 1));
    }
    double mib = 1.0 / (1 << 20), p = m->num_params * 4.0 * mib;
    double act = 2.0 * model_activation_floats(m, a->batch_size, a->seq_len) * 4.0 * mib * (a->pp > 1 ? c->nviews : 1);
    printf("memory of rank 0: parameters %.1f MiB, gradients %.1f MiB, AdamW moments %.1f MiB (it updates %.1f MiB of "
           "them), activations and their gradients %.1f MiB\n", p, p, 2 * p, 2.0 * (c->shard_end - c->shard_begin) * 4.0 * mib, act);
}

/* the step line's bubble: with --pp, the share of the step a stage spent outside its forwards and backwards,
   averaged over the stages of the first pipeline (rank 0 prints it every --log-every steps) */
static void pp_report_bubble(CpuRun *c, int step) {
    double x[2] = {c->step_ms > 0 ? 1.0 - c->busy_ms / c->step_ms : 0.0, 1.0};
    if (tp_comm.rank != 0) x[0] = x[1] = 0.0;
    comm_all_reduce_double(&mp_comm, x, 2);
    if (comm.rank == 0 && (step % c->a->log_every == 0 || step == c->a->steps))
        printf("pipeline bubble: measured %.3f (mean of the stages), theory %.3f\n", x[0] / x[1],
               (double)(c->a->pp - 1) / (c->a->grad_accum + c->a->pp - 1));
}

static int cpu_step_outcome_pp(void *ctx, int step, double *loss, double *norm, int *stop) {
    CpuRun *c = (CpuRun *)ctx;
    if (dp_comm.rank == 0) pp_report_bubble(c, step);
    return cpu_step_outcome(ctx, step, loss, norm, stop);
}

/* The groups and queues of the layout, mapped before the fork: colors of the tensor-, data- and model-parallel
   groupings and of the embedding pairs; a pipeline's queues between stages s and s + 1, one per direction,
   P messages deep (1F1B never has more in flight). */
static void start_ranks(CpuRun *c, const Args *a, size_t whole_params, size_t BTC, int V, int tied) {
    int W = a->nproc, TP = a->tp, PP = a->pp, DP = W / (TP * PP);
    int *color = (int *)malloc((size_t)4 * W * sizeof(int));
    for (int r = 0; r < W; r++) {
        int tp = r % TP, dp = (r / TP) % DP, pp = r / (TP * DP);
        color[r] = pp * DP + dp;                  /* tensor-parallel */
        color[W + r] = pp * TP + tp;              /* data-parallel */
        color[2 * W + r] = dp;                    /* model-parallel: one whole model */
        color[3 * W + r] = tied && (pp == 0 || pp == PP - 1) ? dp * TP + tp : W + r;   /* the tied copies' stages */
    }
    size_t act = BTC + (size_t)TP * 2 * a->batch_size * a->seq_len + (size_t)V;
    size_t gather[4] = {whole_params + act, whole_params, whole_params + act, whole_params};
    Comm groups[4];
    char err[1024];
    CommQueue **q = (CommQueue **)calloc((size_t)2 * W, sizeof(CommQueue *));   /* [rank][0: to next, 1: grads to prev] */
    for (int r = 0; PP > 1 && r < W; r++) {
        if (r / (TP * DP) < PP - 1 && !(q[2 * r] = comm_queue_map(BTC, PP, err, sizeof(err)))) die("%s", err);
        if (r / (TP * DP) > 0 && !(q[2 * r + 1] = comm_queue_map(BTC, PP, err, sizeof(err)))) die("%s", err);
    }
    if (comm_init_fork_groups(&comm, W, 4, color, gather, groups, err, sizeof(err)) != 0) die("%s", err);
    tp_comm = groups[0]; dp_comm = groups[1]; mp_comm = groups[2]; emb_comm = groups[3];
    int r = comm.rank, stride = TP * DP;
    if (PP > 1) {
        c->to_next = q[2 * r];
        c->grad_to_prev = q[2 * r + 1];
        c->from_prev = r >= stride ? q[2 * (r - stride)] : NULL;
        c->grad_from_next = r + stride < W ? q[2 * (r + stride) + 1] : NULL;
    }
    free(q); free(color);
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
    /* the layout, checked before any fork: this rank's heads and vocabulary rows, its stage's layers */
    PipelineStage *stages = (PipelineStage *)malloc((size_t)a.pp * sizeof(PipelineStage));
    if (!stages) die("out of memory");
    if (tp_config(&cfg, a.tp, 0, &local_cfg, &tp, err, sizeof(err)) != 0) die("--tp %d: %s", a.tp, err);
    pp_layout(&a, &cfg, stages);

    /* the ranks: from here on every process runs the same loop; a data-parallel group's ranks on their rows of each
       batch, a tensor-parallel group's and a pipeline's on the same rows */
    CpuRun c;
    memset(&c, 0, sizeof(c));
    size_t BTC = (size_t)a.batch_size * a.seq_len * cfg.n_embd;
    start_ranks(&c, &a, whole_params, BTC, cfg.vocab_size, cfg.tie_embeddings);
    int pp_rank = comm.rank / (a.tp * dp_comm.world);
    /* the loader, and the weights: resumed, continued from HF weights, or fresh (the whole model on every rank) */
    DataLoader dl;
    TrainState ts;
    int resumed = start_weights(&m, &ts, &dl, &data, &a, &cfg, dp_comm.rank, dp_comm.world, comm.rank == 0);

    /* tensor or pipeline parallel: this rank's slice of the weights (and of the moments on a resume); the whole
       model goes */
    Model slice, *model = &m;
    if (a.tp > 1 || a.pp > 1) {
        if (tp_config(&cfg, a.tp, tp_comm.rank, &local_cfg, &tp, err, sizeof(err)) != 0) die("--tp %d: %s", a.tp, err);
        tp.sp = a.sp; tp.ctx = &tp_comm;
        tp.all_reduce = tp_all_reduce; tp.all_gather = tp_all_gather; tp.reduce_scatter = tp_reduce_scatter;
        if (model_take_slice(&slice, &m, &local_cfg, &stages[pp_rank], &tp) != 0) die("out of memory for the model");
        model = &slice;
    }
    c.m = model; c.a = &a; c.cfg = &cfg;
    zero_shard(model->num_params, dp_comm.world, dp_comm.rank, &c.shard_begin, &c.shard_end);
    c.pieces = zero_all_grad_pieces(model, dp_comm.world, &c.npieces);
    c.logits = (float *)malloc((size_t)cfg.vocab_size * sizeof(float));
    if (!c.pieces || !c.logits) die("out of memory");
    if (a.pp > 1) {   /* the step's micro-batches and a view of the model for each one alive at once */
        int warm = a.pp - 1 - pp_rank;
        c.nviews = (warm < a.grad_accum ? warm : a.grad_accum) + 1;
        c.views = (Model *)malloc((size_t)c.nviews * sizeof(Model));
        for (int i = 0; i < c.nviews; i++) model_view(&c.views[i], model);
        c.mb_inputs = (int *)malloc((size_t)a.grad_accum * a.batch_size * a.seq_len * sizeof(int));
        c.mb_targets = (int *)malloc((size_t)a.grad_accum * a.batch_size * a.seq_len * sizeof(int));
        c.dout = (float *)malloc(BTC * sizeof(float));
        if (!c.views || !c.mb_inputs || !c.mb_targets || !c.dout) die("out of memory");
        if (a.pp_trace) {
            char path[1100];
            snprintf(path, sizeof(path), "%s.rank%d", a.pp_trace, comm.rank);
            if (!(c.trace = fopen(path, "w"))) die("--pp-trace %s: cannot write: %s", path, strerror(errno));
        }
    }
    c.ts = &ts;
    c.opt = (AdamWConfig){a.lr, a.beta1, a.beta2, a.eps, a.weight_decay};
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    TrainBackend b = {.ctx = &c, .rank = comm.rank, .world = dp_comm.world, .evaluates = dp_comm.rank == 0,
                      .lag = 0,   /* the outcome at once */
                      .forward_backward = cpu_forward_backward, .step_queue = cpu_step_queue,
                      .step_outcome = a.pp > 1 ? cpu_step_outcome_pp : cpu_step_outcome, .eval_batch = cpu_eval_batch,
                      .eval_sum = cpu_eval_sum, .forward_logits = cpu_forward_logits, .save = cpu_save,
                      .print_setup = cpu_print_setup};
    train_loop(&b, &a, &cfg, whole_params, &data, &dl, &ts, resumed);

    for (int i = 0; i < c.nviews; i++) model_view_free(&c.views[i]);
    if (c.trace) fclose(c.trace);
    free(c.views); free(c.mb_inputs); free(c.mb_targets); free(c.dout);
    free(c.pieces); free(c.logits); free(stages);
    dataloader_free(&dl);
    close_data(&data);
    model_free(model);
    if (comm.rank != 0) exit(0);
    if (comm_finish(&comm) != 0) { fprintf(stderr, "train: a process failed\n"); return 1; }
    return 0;
}
