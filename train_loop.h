/*
 train_loop.h — the training loop both trainers run, written once over a backend (train.c: the model of
 llmtrain.h on the CPU ranks; train_gpu.cu: the CUDA model on the GPUs): the optimizer steps, the step lines and
 log.jsonl, the evaluations, the samples, the checkpoints and the stop on a signal. The trainer builds its model,
 fills a TrainBackend and calls train_loop; the loop never touches the model but through the backend.
 Include after train_common.h.

 The backend: a context pointer (its model, ranks, buffers) and the functions the loop calls with it:
   forward_backward(ctx, dl, micro)    micro-step `micro` (0 .. grad_accum-1) on the loader's batch: the loss,
                                       and the gradients accumulated (micro 0 starts from zero)
   step_queue(ctx, step, lr, stop)     optimizer step `step` after its micro-steps: the gradients summed into
                                       the ranks' shards, the global grad norm, the loss and this rank's stop
                                       request reduced over the ranks, skip (non-finite loss or norm) or clip,
                                       AdamW at `lr` on the own shard, the weights gathered
   step_outcome(ctx, step, &loss, &norm, &stop) -> skipped
                                       the outcome of step `step`: the mean loss over the ranks, the grad norm,
                                       whether any rank asked to stop, whether the step was skipped
   eval_batch(ctx, dl, i)              validation batch i (the loss only; i == 0 starts a new sum)
   eval_sum(ctx)                       the sum of the batches' mean losses since i == 0
   forward_logits(ctx, ids, n)         the logits (vocab_size floats) that follow ids[0..n), n <= seq_len
   save(ctx, ts)                       a checkpoint of the weights, the AdamW state and ts: collective (every
                                       rank calls it; the shards are gathered), rank 0 writes it (write_checkpoint)
   print_setup(ctx)                    rank 0's lines about the batch and the device, after the model's and the data's
   loop_start(ctx)                     (may be NULL) the first step is about to start
   memory_gib(ctx)                     (may be NULL) device memory in use; with it the step lines and log.jsonl
                                       carry MFU (flops_per_token, peak_flops; peak 0: unknown, "n/a") and memory
 and `lag`, when a step's outcome is known:
   lag 0  when step_queue returns (the CPU: step_queue ran the step). The loop reads it at once.
   lag 1  one step behind (the GPU: step_queue only queues the step on the device). The loop queues step N, then
          reads step N-1's outcome: the device always has the next step queued and never waits for the host to
          read a loss. Where the host needs the weights after step N (an evaluation, a sample, a checkpoint, the
          end, a stop) it reads step N's outcome at once. The points where a rank waits depend only on the flags,
          the step and the reduced stop requests: the same on every rank.
 A step's time runs from when the host started it (or, when the previous step was still running then, from the
 end of that one) to when the host saw its outcome.
*/
#ifndef TRAIN_LOOP_H
#define TRAIN_LOOP_H

typedef struct {
    void *ctx;
    int rank, world;   /* this process's rank (0 prints and writes), and the data-parallel size */
    int evaluates;     /* this rank runs the evaluations and samples: rank 0, and with tensor parallelism every
                          rank of its group (they compute them together) */
    int lag;           /* 0: a step's outcome is known when step_queue returns; 1: one step later (see above) */
    void (*forward_backward)(void *ctx, const DataLoader *dl, int micro);
    void (*step_queue)(void *ctx, int step, float lr, int stop);
    int (*step_outcome)(void *ctx, int step, double *loss, double *norm, int *stop);
    void (*eval_batch)(void *ctx, const DataLoader *dl, int i);
    double (*eval_sum)(void *ctx);
    const float *(*forward_logits)(void *ctx, const int *ids, int n);
    void (*save)(void *ctx, const TrainState *ts);
    void (*print_setup)(void *ctx);
    void (*loop_start)(void *ctx);
    double (*memory_gib)(void *ctx);
    double flops_per_token, peak_flops;   /* model FLOPs of a token of training; the device's peak FLOP/s */
} TrainBackend;

/* rank 0's part of a checkpoint: m (the whole model, its AdamW moments in m_memory / v_memory) and ts into --out,
   and the line that names it */
static void write_checkpoint(const Args *a, Model *m, const TrainState *ts) {
    char err[1024], saved[1300];
    if (checkpoint_save(a->out, m, ts, a->tokenizer, (size_t)a->max_shard_mb << 20, a->keep, saved, sizeof(saved),
                        err, sizeof(err)) != 0)
        die("checkpoint: %s", err);
    print_saved(saved, &m->cfg);
    fflush(stdout);
}

/* Mean loss over the first --eval-steps batches of the (unshuffled) validation stream: the same tokens every time. */
static float evaluate(const TrainBackend *b, const Args *a, Blend *val, int eod) {
    DataLoader dl;
    dataloader_init(&dl, val, a->batch_size, 0, 1);
    dl.eod = eod;
    for (int i = 0; i < a->eval_steps; i++) {
        dataloader_next(&dl);
        b->eval_batch(b->ctx, &dl, i);
    }
    double sum = b->eval_sum(b->ctx);
    dataloader_free(&dl);
    return (float)(sum / a->eval_steps);
}

/* --sample-len tokens after the start token, each drawn from the logits of the last --seq-len tokens before it:
   temperature, then the top-k most likely (sample_token), with a draw that depends only on the seed and the step */
static void print_sample(const TrainBackend *b, const Args *a, const ModelConfig *cfg, Tokenizer *tok, int step, int print) {
    int T = a->seq_len, V = cfg->vocab_size;
    int start = sample_start_token(cfg, tok);
    int n = a->sample_len + 1;
    int *ids = (int *)malloc(n * sizeof(int));
    ids[0] = start;
    for (int i = 1; i < n; i++) {
        int ctx = i < T ? i : T;    /* the last T tokens */
        const float *logits = b->forward_logits(b->ctx, ids + i - ctx, ctx);
        ids[i] = sample_token(logits, V, a->temperature, a->top_k, rng_uniform(a->seed ^ 0x5A5A5A5AULL, (uint64_t)step * n + i));
    }
    if (print) print_sample_text(tok, ids + 1, n - 1, step);
    free(ids);
}

/* the loop's running numbers */
typedef struct {
    const TrainBackend *b;
    const Args *a;
    TrainState *ts;
    FILE *logf;
    long tokens_per_step;
    int steps_run, stop;                /* stop: a rank asked to stop (seen in a step's outcome) */
    double total_ms, mem_peak, last_done_ms;
    double queued_ms[2], lr_of[2];      /* of the steps whose outcome may still be unread: slot step % 2 */
} TrainClock;

/* reads step s's outcome and logs it: the step line, log.jsonl; a non-finite step stops the run, unless
   --skip-nonfinite, which counts it */
static void finish_step(TrainClock *c, int s) {
    const TrainBackend *b = c->b;
    const Args *a = c->a;
    double loss, norm;
    int stop = 0;
    int skip = b->step_outcome(b->ctx, s, &loss, &norm, &stop);
    double done = now_ms(), begin = c->queued_ms[s & 1] > c->last_done_ms ? c->queued_ms[s & 1] : c->last_done_ms;
    double ms = done - begin;
    c->last_done_ms = done;
    c->stop |= stop;
    if (skip && !a->skip_nonfinite)
        die("step %d: loss %f, grad norm %f: not finite (lower --lr, or --skip-nonfinite to skip such steps)", s, loss, norm);
    if (skip) c->ts->skipped++;
    c->total_ms += ms;
    c->steps_run++;
    double tps = c->tokens_per_step / (ms / 1000.0);
    double mfu = b->peak_flops > 0 ? 100.0 * b->flops_per_token * tps / b->world / b->peak_flops : -1;
    if (b->memory_gib) {
        double used = b->memory_gib(b->ctx);
        if (used > c->mem_peak) c->mem_peak = used;
    }
    if (b->rank == 0) {
        StepLog sl = {s, skip, (long long)c->ts->skipped, loss, c->lr_of[s & 1], norm, ms, tps, mfu, c->mem_peak};
        log_step(a, c->logf, &sl);
    }
}

/* The run from ts->step + 1 to --steps (dl: this rank's loader, at the data position of ts; cfg, num_params: the
   model's, for the first lines and the samples): the first lines and, on a fresh run, the validation loss of
   the starting weights; then each step: its micro-steps, the optimizer step, its line; the evaluations,
   samples and checkpoints that are due; a checkpoint at the end or at a stop (SIGINT/SIGTERM on any rank). */
static void train_loop(const TrainBackend *b, const Args *a, const ModelConfig *cfg, size_t num_params, Data *data,
                       DataLoader *dl, TrainState *ts, int resumed) {
    int main_rank = b->rank == 0, eod = dl->eod;
    Tokenizer *tok = open_tokenizer(a);
    FILE *logf = main_rank ? open_run_log(a, resumed) : NULL;
    if (main_rank) {
        print_run_start(cfg, num_params, a, data);
        b->print_setup(b->ctx);
    }
    if (b->evaluates && data->have_valid && !resumed) {
        float vl = evaluate(b, a, &data->valid_blend, eod);
        if (main_rank) log_val(logf, 0, vl);
    }
    if (main_rank) fflush(stdout);

    int style = lr_style(a->schedule);
    TrainClock c;
    memset(&c, 0, sizeof(c));
    c.b = b; c.a = a; c.ts = ts; c.logf = logf;
    c.tokens_per_step = (long)a->batch_size * a->seq_len * a->grad_accum * b->world;
    int pending = 0;   /* a queued step whose outcome is not read yet (lag 1) */
    if (b->loop_start) b->loop_start(b->ctx);
    for (int step = (int)ts->step + 1; step <= a->steps; step++) {
        c.queued_ms[step & 1] = now_ms();
        for (int micro = 0; micro < a->grad_accum; micro++) {
            dataloader_next(dl);
            b->forward_backward(b->ctx, dl, micro);
        }
        float lr = lr_schedule(step, a->lr, a->min_lr, a->warmup_steps, a->decay_steps, style);
        c.lr_of[step & 1] = lr;
        b->step_queue(b->ctx, step, lr, stop_requested);
        if (pending) finish_step(&c, pending);
        pending = step;
        ts->step = step;
        ts->data_cursor = dl->cursor;
        int eval_due = data->have_valid && due(a, step, a->eval_every), sample_due = due(a, step, a->sample_every);
        int save_due = a->out && a->save_every > 0 && step % a->save_every == 0;
        if (!b->lag || eval_due || sample_due || save_due || step == a->steps || c.stop) { finish_step(&c, step); pending = 0; }
        int last = step == a->steps || c.stop;   /* stop: seen in step - 1's outcome or in step's own */
        if (b->evaluates && eval_due) {
            float vl = evaluate(b, a, &data->valid_blend, eod);
            if (main_rank) log_val(logf, step, vl);
        }
        if (b->evaluates && sample_due) print_sample(b, a, cfg, tok, step, main_rank);
        if (a->out && (save_due || last)) b->save(b->ctx, ts);
        if (c.stop) { if (main_rank) printf("stopped by signal after step %d\n", step); break; }
    }
    if (pending) finish_step(&c, pending);
    if (c.steps_run > 0 && main_rank) {
        printf("done: %d steps, %.1f ms/step, %.0f tokens/s", c.steps_run, c.total_ms / c.steps_run,
               c.tokens_per_step * c.steps_run / (c.total_ms / 1000.0));
        if (b->memory_gib) printf(", peak GPU memory %.2f GiB", c.mem_peak);
        printf("\n");
    }
    if (logf) fclose(logf);
    if (tok) tokenizer_free(tok);
}

#endif /* TRAIN_LOOP_H */
