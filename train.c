/*
 train.c — the CPU trainer: flags -> config -> model -> loop (step, log, eval, sample, save).

   ./train --data out/tinyshakespeare_text_document --model tiny-gpt2 --tokenizer data/gpt2_tokenizer.json

 Everything numeric lives in llmtrain.h; this file reads flags, wires the pieces together and prints.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"

#include "train_common.h"

static Comm comm;   /* the data-parallel ranks (one process each); world 1 by default */
static void abort_ranks(void) { comm_abort(&comm); }

/* Mean loss over the first n batches of the (unshuffled) validation stream: the same tokens every time. */
static float evaluate(Model *m, Blend *val, int B, int n, int eod) {
    DataLoader dl;
    dataloader_init(&dl, val, B, 0, 1);
    dl.eod = eod;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        dataloader_next(&dl);
        sum += model_forward(m, dl.inputs, dl.targets, B, dl.T);
    }
    dataloader_free(&dl);
    return (float)(sum / n);
}

static void print_sample(Model *m, const Args *a, Tokenizer *tok, int step) {
    int T = a->seq_len, V = m->cfg.vocab_size;
    int start = sample_start_token(&m->cfg, tok);
    int n = a->sample_len + 1;
    int *ids = (int *)malloc(n * sizeof(int));
    ids[0] = start;
    for (int i = 1; i < n; i++) {
        int ctx = i < T ? i : T;    /* the last T tokens */
        model_forward(m, ids + i - ctx, NULL, 1, ctx);
        const float *logits = m->acts.logits + (size_t)(ctx - 1) * V;
        ids[i] = sample_token(logits, V, a->temperature, a->top_k, rng_uniform(a->seed ^ 0x5A5A5A5AULL, (uint64_t)step * n + i));
    }
    print_sample_text(tok, ids + 1, n - 1, step);
    free(ids);
}


static void save_checkpoint(Model *m, const Args *a, const TrainState *ts) {
    /* the AdamW moments live sharded: gather them so rank 0 writes the whole state */
    if (!m->m_memory) { m->m_memory = (float *)calloc(m->num_params, sizeof(float)); m->v_memory = (float *)calloc(m->num_params, sizeof(float)); }
    comm_all_gather(&comm, m->m_memory, m->num_params);
    comm_all_gather(&comm, m->v_memory, m->num_params);
    if (comm.rank == 0) {
        char err[1024], saved[1300];
        if (checkpoint_save(a->out, m, ts, a->tokenizer, (size_t)a->max_shard_mb << 20, a->keep, saved, sizeof(saved), err, sizeof(err)) != 0)
            die("checkpoint: %s", err);
        print_saved(saved, &m->cfg);
        fflush(stdout);
    }
    comm_barrier(&comm);
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
    int rank = comm.rank, world = comm.world, main_rank = rank == 0;
    size_t shard_begin, shard_end;
    zero_shard(m.num_params, world, rank, &shard_begin, &shard_end);
    int npieces;   /* ZeRO-1's reduction by pieces, in the order train_gpu overlaps them with the backward */
    ShardPiece *pieces = zero_all_grad_pieces(&m, world, &npieces);
    if (!pieces) die("out of memory");
    /* the loader, and the weights: resumed, continued from HF weights, or fresh */
    DataLoader dl;
    TrainState ts;
    int resumed = start_weights(&m, &ts, &dl, &data, &a, &cfg, rank, world);
    int eod = dl.eod;
    Tokenizer *tok = open_tokenizer(&a);
    FILE *logf = main_rank ? open_run_log(&a, resumed) : NULL;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    int style = lr_style(a.schedule);
    if (main_rank) {
        print_run_start(&cfg, m.num_params, &a, &data);
        printf("batch %d x %d tokens x %d accumulation x %d processes = %d tokens/step; %d threads each\n", a.batch_size,
               a.seq_len, a.grad_accum, world, a.batch_size * a.seq_len * a.grad_accum * world, omp_get_max_threads());
        if (data.have_valid && !resumed) log_val(logf, 0, evaluate(&m, &data.valid_blend, a.batch_size, a.eval_steps, eod));
        fflush(stdout);
    }

    AdamWConfig opt = {a.lr, a.beta1, a.beta2, a.eps, a.weight_decay};
    double total_ms = 0.0;
    int steps_run = 0;
    long tokens_per_step = (long)a.batch_size * a.seq_len * a.grad_accum * world;
    for (int step = (int)ts.step + 1; step <= a.steps; step++) {
        double t0 = now_ms();
        model_zero_grad(&m);
        double loss = 0.0;
        for (int micro = 0; micro < a.grad_accum; micro++) {
            dataloader_next(&dl);
            loss += model_forward(&m, dl.inputs, dl.targets, a.batch_size, a.seq_len);
            model_backward(&m, 1.0f / (a.grad_accum * world));
        }
        /* ZeRO-1: sum the gradients into their owners' shards; the norm is the sum of the shards' norms */
        comm_reduce_pieces(&comm, m.grads_memory, pieces, npieces);
        double red[3] = {loss / a.grad_accum, grad_sumsq(m.grads_memory, shard_begin, shard_end), (double)stop_requested};
        comm_all_reduce_double(&comm, red, 3);
        loss = red[0] / world;
        double norm = sqrt(red[1]);
        int stop = red[2] > 0;
        opt.lr = lr_schedule(step, a.lr, a.min_lr, a.warmup_steps, a.decay_steps, style);
        int skip = !isfinite(loss) || !isfinite(norm);
        if (skip && !a.skip_nonfinite)
            die("step %d: loss %f, grad norm %f: not finite (lower --lr, or --skip-nonfinite to skip such steps)", step, loss, norm);
        if (skip) ts.skipped++;
        else {
            /* clipping fused into the update: grads * grad_clip_scale, as grad_clip would leave them */
            model_adamw_update_scaled(&m, &opt, step - (int)ts.skipped, shard_begin, shard_end, grad_clip_scale(norm, a.clip));
        }
        comm_all_gather(&comm, m.params_memory, m.num_params);
        ts.step = step;
        ts.data_cursor = dl.cursor;
        double ms = now_ms() - t0;
        total_ms += ms;
        steps_run++;
        if (main_rank) {
            StepLog sl = {step, skip, (long long)ts.skipped, loss, opt.lr, norm, ms, tokens_per_step / (ms / 1000.0), -1, 0};
            log_step(&a, logf, &sl);
            if (data.have_valid && due(&a, step, a.eval_every))
                log_val(logf, step, evaluate(&m, &data.valid_blend, a.batch_size, a.eval_steps, eod));
            if (due(&a, step, a.sample_every)) print_sample(&m, &a, tok, step);
        }
        int last = step == a.steps || stop;
        if (a.out && ((a.save_every > 0 && step % a.save_every == 0) || last)) save_checkpoint(&m, &a, &ts);
        if (stop) { if (main_rank) printf("stopped by signal after step %d\n", step); break; }
    }
    if (steps_run > 0 && main_rank)
        printf("done: %d steps, %.1f ms/step, %.0f tokens/s\n", steps_run, total_ms / steps_run,
               tokens_per_step * steps_run / (total_ms / 1000.0));
    if (logf) fclose(logf);
    if (tok) tokenizer_free(tok);
    free(pieces);
    dataloader_free(&dl);
    close_data(&data);
    model_free(&m);
    if (!main_rank) exit(0);
    if (comm_finish(&comm) != 0) { fprintf(stderr, "train: a data-parallel process failed\n"); return 1; }
    return 0;
}
