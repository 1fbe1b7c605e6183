/*
 train.c — the CPU trainer: flags -> config -> model -> loop (step, log, eval, sample, save).

   ./train --data out/tinyshakespeare_text_document --model tiny-gpt2 --tokenizer data/gpt2_tokenizer.json

 Everything numeric lives in llmtrain.h; this file reads flags, wires the pieces together and prints.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "prepro/tokenizer.h"

#include <signal.h>
#include <stdarg.h>
#include <time.h>

typedef struct {
    const char *data, *model, *init_from, *tokenizer, *out, *split, *schedule;
    int batch_size, seq_len, grad_accum, steps, warmup_steps, decay_steps;
    float lr, min_lr, weight_decay, beta1, beta2, eps, clip, init_std;
    uint64_t seed;
    int eval_every, eval_steps, sample_every, sample_len, top_k, threads, log_every;
    int save_every, keep, resume, eod_mask_loss, skip_nonfinite, nproc;
    long max_shard_mb;
    float temperature;
} Args;

static Comm comm;   /* the data-parallel ranks (one process each); world 1 by default */

static void die(const char *fmt, ...) {
    comm_abort(&comm);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "train: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void usage(void) {
    printf(
"usage: train --data PREFIX [options]\n"
"\n"
"data\n"
"  --data SPEC             Megatron dataset prefix (PREFIX.bin / PREFIX.idx), e.g. out/shakespeare_text_document,\n"
"                          or a blend: \"0.7 PREFIX_A 0.3 PREFIX_B\" (weights), \"PREFIX_A PREFIX_B\" (by token count)\n"
"  --eod-mask-loss         no loss on targets that are the EOD token (the config's eos_token_id)\n"
"  --split A,B,C           train/validation/test split by documents (default 98,2,0)\n"
"  --seq-len T             tokens per sequence (default 64)\n"
"  --batch-size B          sequences per micro-step (default 8)\n"
"  --grad-accum K          micro-steps per optimizer step (default 1)\n"
"model\n"
"  --model NAME|PATH       preset (gpt2-124m, gpt2-350m, tiny-gpt2, tiny-llama, tiny-qwen3, llama-1b) or a HF\n"
"                          config.json / directory holding one (default tiny-gpt2)\n"
"  --init-from DIR         start from the HF weights in DIR (config.json + model.safetensors)\n"
"  --init-std S            std of the random init (default 0.02; residual projections S/sqrt(2L))\n"
"optimizer (AdamW)\n"
"  --lr LR                 peak learning rate (default 3e-4)\n"
"  --min-lr LR             final learning rate (default lr/10)\n"
"  --warmup-steps N        linear warmup steps (default 0)\n"
"  --decay-steps N         step at which the decay reaches min-lr (default --steps)\n"
"  --lr-schedule S         cosine | linear | constant (default cosine)\n"
"  --weight-decay W        decoupled weight decay on 2-D weights (default 0.1)\n"
"  --beta1 B1 --beta2 B2   AdamW betas (default 0.9, 0.95)\n"
"  --eps E                 AdamW epsilon (default 1e-8)\n"
"  --clip C                clip the global grad norm to C; 0 disables (default 1.0)\n"
"run\n"
"  --steps N               optimizer steps (default 100)\n"
"  --seed S                seed of init, data order and sampling (default 1234)\n"
"  --threads N             OpenMP threads per process (default: all cores / --nproc)\n"
"  -n, --nproc N           data-parallel processes on this machine (ZeRO-1: each owns 1/N of the AdamW\n"
"                          state); the global batch is batch-size x grad-accum x N (default 1)\n"
"  --log-every N           print a step line every N steps (default 1)\n"
"  --eval-every N          validation loss every N steps, and at the end; 0 disables (default 100)\n"
"  --eval-steps N          validation batches per evaluation (default 8)\n"
"  --sample-every N        print a generated sample every N steps and at the end; 0 disables (default 0)\n"
"  --sample-len N          tokens per sample (default 64)\n"
"  --temperature X         sampling temperature (default 1.0)\n"
"  --top-k K               sample from the K most likely tokens; 0 = all (default 40)\n"
"  --tokenizer FILE        HF tokenizer.json, to print samples as text\n"
"checkpoints\n"
"  --out DIR               write DIR/log.jsonl and checkpoints DIR/step_NNNNNN/ (HF config.json +\n"
"                          model.safetensors, train_state.safetensors, tokenizer.json); DIR/latest names the newest\n"
"  --save-every N          checkpoint every N steps (default 0: only at the end and on SIGINT/SIGTERM)\n"
"  --keep N                keep the newest N checkpoints (default 0: all)\n"
"  --resume                continue from DIR/latest (exactly: weights, AdamW state, step, data position)\n"
"  --max-shard-size MB     split model.safetensors into shards of at most MB megabytes (default 0: one file)\n"
"  --skip-nonfinite        skip a step whose loss or grad norm is not finite (default: stop with an error)\n");
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long parse_int(const char *flag, const char *s) {
    char *e;
    long v = strtol(s, &e, 10);
    if (e == s || *e) die("%s expects an integer, got \"%s\"", flag, s);
    return v;
}

static float parse_float(const char *flag, const char *s) {
    char *e;
    float v = strtof(s, &e);
    if (e == s || *e) die("%s expects a number, got \"%s\"", flag, s);
    return v;
}

static void parse_args(Args *a, int argc, char **argv) {
    memset(a, 0, sizeof(*a));
    a->model = "tiny-gpt2"; a->split = "98,2,0"; a->schedule = "cosine";
    a->batch_size = 8; a->seq_len = 64; a->grad_accum = 1; a->steps = 100; a->decay_steps = -1;
    a->lr = 3e-4f; a->min_lr = -1; a->weight_decay = 0.1f; a->beta1 = 0.9f; a->beta2 = 0.95f; a->eps = 1e-8f;
    a->clip = 1.0f; a->init_std = 0.02f; a->seed = 1234; a->eval_every = 100; a->eval_steps = 8;
    a->sample_len = 64; a->top_k = 40; a->temperature = 1.0f; a->log_every = 1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) { usage(); exit(0); }
        if (!strcmp(f, "--resume")) { a->resume = 1; continue; }
        if (!strcmp(f, "--eod-mask-loss")) { a->eod_mask_loss = 1; continue; }
        if (!strcmp(f, "--skip-nonfinite")) { a->skip_nonfinite = 1; continue; }
        if (i + 1 >= argc) die("%s needs a value (see --help)", f);
        if (!strcmp(f, "-n")) f = "--nproc";
        const char *v = argv[++i];
        if (!strcmp(f, "--data")) a->data = v;
        else if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--init-from")) a->init_from = v;
        else if (!strcmp(f, "--tokenizer")) a->tokenizer = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--split")) a->split = v;
        else if (!strcmp(f, "--lr-schedule")) a->schedule = v;
        else if (!strcmp(f, "--batch-size")) a->batch_size = (int)parse_int(f, v);
        else if (!strcmp(f, "--seq-len")) a->seq_len = (int)parse_int(f, v);
        else if (!strcmp(f, "--grad-accum")) a->grad_accum = (int)parse_int(f, v);
        else if (!strcmp(f, "--steps")) a->steps = (int)parse_int(f, v);
        else if (!strcmp(f, "--warmup-steps")) a->warmup_steps = (int)parse_int(f, v);
        else if (!strcmp(f, "--decay-steps")) a->decay_steps = (int)parse_int(f, v);
        else if (!strcmp(f, "--lr")) a->lr = parse_float(f, v);
        else if (!strcmp(f, "--min-lr")) a->min_lr = parse_float(f, v);
        else if (!strcmp(f, "--weight-decay")) a->weight_decay = parse_float(f, v);
        else if (!strcmp(f, "--beta1")) a->beta1 = parse_float(f, v);
        else if (!strcmp(f, "--beta2")) a->beta2 = parse_float(f, v);
        else if (!strcmp(f, "--eps")) a->eps = parse_float(f, v);
        else if (!strcmp(f, "--clip")) a->clip = parse_float(f, v);
        else if (!strcmp(f, "--init-std")) a->init_std = parse_float(f, v);
        else if (!strcmp(f, "--seed")) a->seed = (uint64_t)parse_int(f, v);
        else if (!strcmp(f, "--threads")) a->threads = (int)parse_int(f, v);
        else if (!strcmp(f, "--log-every")) a->log_every = (int)parse_int(f, v);
        else if (!strcmp(f, "--eval-every")) a->eval_every = (int)parse_int(f, v);
        else if (!strcmp(f, "--eval-steps")) a->eval_steps = (int)parse_int(f, v);
        else if (!strcmp(f, "--sample-every")) a->sample_every = (int)parse_int(f, v);
        else if (!strcmp(f, "--sample-len")) a->sample_len = (int)parse_int(f, v);
        else if (!strcmp(f, "--top-k")) a->top_k = (int)parse_int(f, v);
        else if (!strcmp(f, "--temperature")) a->temperature = parse_float(f, v);
        else if (!strcmp(f, "--nproc")) a->nproc = (int)parse_int(f, v);
        else if (!strcmp(f, "--save-every")) a->save_every = (int)parse_int(f, v);
        else if (!strcmp(f, "--keep")) a->keep = (int)parse_int(f, v);
        else if (!strcmp(f, "--max-shard-size")) a->max_shard_mb = parse_int(f, v);
        else die("unknown flag %s (see --help)", f);
    }
    if (!a->data) die("--data PREFIX is required (see --help)");
    if (a->resume && !a->out) die("--resume needs --out DIR");
    if (a->batch_size < 1 || a->seq_len < 1 || a->grad_accum < 1 || a->steps < 0)
        die("--batch-size, --seq-len and --grad-accum must be >= 1 and --steps >= 0");
    if (a->min_lr < 0) a->min_lr = a->lr / 10.0f;
    if (a->decay_steps < 0) a->decay_steps = a->steps;
    if (a->log_every < 1) a->log_every = 1;
    if (a->nproc < 1) a->nproc = 1;
}

static int lr_style(const char *s) {
    if (!strcmp(s, "cosine")) return LR_COSINE;
    if (!strcmp(s, "linear")) return LR_LINEAR;
    if (!strcmp(s, "constant")) return LR_CONSTANT;
    die("--lr-schedule must be cosine, linear or constant, got \"%s\"", s);
    return 0;
}

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

/* Draws the next token from the logits of one position: temperature, then the top-k most likely. */
static int sample_token(const float *logits, int V, float temperature, int top_k, float coin) {
    if (top_k <= 0 || top_k > V) top_k = V;
    int *idx = (int *)malloc(top_k * sizeof(int));
    int n = 0;
    for (int v = 0; v < V; v++) {  /* keep idx sorted by descending logit (insertion into a small list) */
        if (n == top_k && logits[v] <= logits[idx[n - 1]]) continue;
        int j = n < top_k ? n++ : n - 1;
        while (j > 0 && logits[idx[j - 1]] < logits[v]) { idx[j] = idx[j - 1]; j--; }
        idx[j] = v;
    }
    float t = temperature > 0 ? temperature : 1e-6f;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((logits[idx[i]] - logits[idx[0]]) / t);
    double r = coin * sum, acc = 0.0;
    int pick = idx[n - 1];
    for (int i = 0; i < n; i++) {
        acc += exp((logits[idx[i]] - logits[idx[0]]) / t);
        if (r < acc) { pick = idx[i]; break; }
    }
    free(idx);
    return pick;
}

static void print_sample(Model *m, const Args *a, Tokenizer *tok, int step) {
    int T = a->seq_len, V = m->cfg.vocab_size;
    int start = m->cfg.eos_token_id >= 0 && m->cfg.eos_token_id < V ? m->cfg.eos_token_id : 0;
    if (tok && tokenizer_bos_id(tok) >= 0) start = tokenizer_bos_id(tok);
    else if (tok && tokenizer_eos_id(tok) >= 0) start = tokenizer_eos_id(tok);
    int n = a->sample_len + 1;
    int *ids = (int *)malloc(n * sizeof(int));
    ids[0] = start;
    for (int i = 1; i < n; i++) {
        int ctx = i < T ? i : T;    /* the last T tokens */
        model_forward(m, ids + i - ctx, NULL, 1, ctx);
        const float *logits = m->acts.logits + (size_t)(ctx - 1) * V;
        ids[i] = sample_token(logits, V, a->temperature, a->top_k, rng_uniform(a->seed ^ 0x5A5A5A5AULL, (uint64_t)step * n + i));
    }
    printf("--- sample at step %d ---\n", step);
    if (tok) {
        int32_t *ids32 = (int32_t *)malloc(n * sizeof(int32_t));
        for (int i = 0; i < n; i++) ids32[i] = ids[i];
        char *text = tokenizer_decode(tok, ids32 + 1, n - 1);
        printf("%s\n", text ? text : "(decode failed)");
        free(text); free(ids32);
    } else {
        for (int i = 1; i < n; i++) printf("%d ", ids[i]);
        printf("\n");
    }
    printf("---\n");
    fflush(stdout);
    free(ids);
}

/* SIGINT / SIGTERM: finish the step, save, exit 0 */
static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

/* The datasets of --data, split into train and validation blends with the same weights. */
typedef struct {
    int n;
    IndexedDataset ds[MAX_BLEND];
    Sampler train[MAX_BLEND], valid[MAX_BLEND];
    Blend train_blend, valid_blend;
    int have_valid;
    uint64_t train_tokens;
} Data;

static void open_data(Data *d, const Args *a, int vocab_size) {
    char buf[8192], *prefixes[MAX_BLEND], err[1024];
    double w[MAX_BLEND];
    memset(d, 0, sizeof(*d));
    d->n = parse_data_spec(a->data, buf, sizeof(buf), prefixes, w, MAX_BLEND, err, sizeof(err));
    if (d->n < 0) die("%s", err);
    Sampler *tr[MAX_BLEND], *va[MAX_BLEND];
    double wv[MAX_BLEND];
    int nvalid = 0;
    for (int i = 0; i < d->n; i++) {
        IndexedDataset *ds = &d->ds[i];
        if (indexed_dataset_open(ds, prefixes[i], err, sizeof(err)) != 0) die("%s", err);
        if (ds->max_token >= vocab_size)
            die("%s: token id %lld is outside the model's vocabulary of %d", prefixes[i], (long long)ds->max_token, vocab_size);
        uint64_t sb[3], se[3];
        if (split_documents(a->split, ds->num_docs, sb, se, err, sizeof(err)) != 0) die("%s", err);
        /* each dataset's stream gets its own seed, so two blended copies of one file do not march in step */
        if (sampler_init(&d->train[i], ds, sb[0], se[0], a->seq_len, a->seed + 1000003ULL * i, 1, err, sizeof(err)) != 0)
            die("train split: %s", err);
        if (w[i] < 0) w[i] = (double)d->train[i].tokens_per_epoch;
        tr[i] = &d->train[i];
        d->train_tokens += d->train[i].tokens_per_epoch;
        if (se[1] > sb[1] && a->eval_every > 0) {
            if (sampler_init(&d->valid[i], ds, sb[1], se[1], a->seq_len, a->seed, 0, err, sizeof(err)) != 0)
                die("validation split: %s", err);
            va[nvalid] = &d->valid[i]; wv[nvalid++] = w[i];
        }
    }
    blend_init(&d->train_blend, d->n, w, tr);
    d->have_valid = nvalid > 0;
    if (d->have_valid) blend_init(&d->valid_blend, nvalid, wv, va);
}

static void close_data(Data *d) {
    for (int i = 0; i < d->n; i++) {
        sampler_free(&d->train[i]);
        if (d->valid[i].ds) sampler_free(&d->valid[i]);
        indexed_dataset_close(&d->ds[i]);
    }
}

/* The settings a resumed run must share with the run that saved the checkpoint. */
static void make_run_flags(char *out, size_t n, const Args *a, const ModelConfig *cfg, int world) {
    char *mc = model_config_to_json(cfg);
    json_t *mj = json_loads(mc, 0, NULL);
    free(mc);
    json_t *o = json_pack("{s:o,s:s,s:s,s:i,s:i,s:i,s:i,s:I,s:b}", "model", mj, "data", a->data, "split", a->split,
                          "seq_len", a->seq_len, "batch_size", a->batch_size, "grad_accum", a->grad_accum,
                          "world_size", world, "seed", (json_int_t)a->seed, "eod_mask_loss", a->eod_mask_loss);
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    if (strlen(s) >= n) die("run settings too long to record (%zu bytes)", strlen(s));
    snprintf(out, n, "%s", s);
    free(s);
    json_decref(o);
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
        printf("saved %s\n", saved);
        fflush(stdout);
    }
    comm_barrier(&comm);
}

int main(int argc, char **argv) {
    Args a;
    parse_args(&a, argc, argv);
    if (a.threads > 0) omp_set_num_threads(a.threads);
    else if (a.nproc > 1) omp_set_num_threads(omp_get_num_procs() / a.nproc > 0 ? omp_get_num_procs() / a.nproc : 1);
    char err[1024];

    /* model config: HF weights, a config.json, or a preset */
    ModelConfig cfg;
    if (a.init_from) {
        if (model_config_from_json(&cfg, a.init_from, err, sizeof(err)) != 0) die("%s", err);
    } else if (model_config_preset(&cfg, a.model) != 0) {
        if (access(a.model, R_OK) != 0)
            die("--model \"%s\" is neither a preset (gpt2-124m, gpt2-350m, tiny-gpt2, tiny-llama, tiny-qwen3, "
                "llama-1b) nor a readable config.json", a.model);
        if (model_config_from_json(&cfg, a.model, err, sizeof(err)) != 0) die("%s", err);
    }
    if (cfg.family == FAMILY_GPT2 && a.seq_len > cfg.max_seq_len)
        die("--seq-len %d exceeds the model's %d positions", a.seq_len, cfg.max_seq_len);
    if (a.eod_mask_loss && cfg.eos_token_id < 0) die("--eod-mask-loss needs eos_token_id in the model config");
    Data data;
    open_data(&data, &a, cfg.vocab_size);
    Model m;
    if (model_build(&m, &cfg) != 0) die("out of memory for the model");

    /* the data-parallel ranks: from here on every process runs the same loop on its rows of each batch */
    if (comm_init_fork(&comm, a.nproc, m.num_params, err, sizeof(err)) != 0) die("%s", err);
    int rank = comm.rank, world = comm.world, main_rank = rank == 0;
    size_t shard_begin, shard_end;
    zero_shard(m.num_params, world, rank, &shard_begin, &shard_end);
    DataLoader dl;
    dataloader_init(&dl, &data.train_blend, a.batch_size, rank, world);
    dl.eod = a.eod_mask_loss ? cfg.eos_token_id : -1;
    int eod = dl.eod;

    /* weights: resumed, continued from HF weights, or fresh */
    TrainState ts;
    memset(&ts, 0, sizeof(ts));
    char run_flags[sizeof(ts.run_flags)], ckpt[1300];
    make_run_flags(run_flags, sizeof(run_flags), &a, &cfg, world);
    int resumed = 0;
    if (a.resume && checkpoint_latest(a.out, ckpt, sizeof(ckpt)) == 0) {
        if (checkpoint_load(ckpt, &m, &ts, err, sizeof(err)) != 0) die("resume: %s", err);
        if (run_flags_compare(ts.run_flags, run_flags, err, sizeof(err)) != 0) die("resume from %s: %s", ckpt, err);
        dl.cursor = ts.data_cursor;
        resumed = 1;
        if (main_rank) printf("resumed from %s at step %lld\n", ckpt, (long long)ts.step);
    } else if (a.init_from) {
        if (model_load_hf_dir(&m, a.init_from, err, sizeof(err)) != 0) die("%s", err);
    } else {
        if (a.resume && main_rank) printf("no checkpoint in %s: starting fresh\n", a.out);
        model_init_weights(&m, a.seed, a.init_std);
    }
    snprintf(ts.run_flags, sizeof(ts.run_flags), "%s", run_flags);
    Tokenizer *tok = NULL;
    if (a.tokenizer) {
        tok = tokenizer_load(a.tokenizer, err, sizeof(err));
        if (!tok) die("%s", err);
    }
    FILE *logf = NULL;
    if (a.out && main_rank) {
        if (mkdir(a.out, 0755) != 0 && errno != EEXIST) die("%s: cannot create: %s", a.out, strerror(errno));
        char path[1200];
        snprintf(path, sizeof(path), "%s/log.jsonl", a.out);
        logf = fopen(path, resumed ? "a" : "w");
        if (!logf) die("%s: cannot write: %s", path, strerror(errno));
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    int style = lr_style(a.schedule);
    if (main_rank) {
        printf("model %s: %d layers, %d hidden, %d heads (%d kv, head dim %d), ff %d, vocab %d: %zu parameters\n",
               family_name(cfg.family), cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_ff,
               cfg.vocab_size, m.num_params);
        printf("data %s: %d dataset(s), %llu train tokens/epoch, windows of %d\n", a.data, data.n,
               (unsigned long long)data.train_tokens, a.seq_len);
        printf("batch %d x %d tokens x %d accumulation x %d processes = %d tokens/step; %d threads each\n", a.batch_size,
               a.seq_len, a.grad_accum, world, a.batch_size * a.seq_len * a.grad_accum * world, omp_get_max_threads());
        if (data.have_valid && !resumed) {
            float vl = evaluate(&m, &data.valid_blend, a.batch_size, a.eval_steps, eod);
            printf("step %d | val loss %.4f\n", 0, vl);
            if (logf) { fprintf(logf, "{\"step\":0,\"val_loss\":%.6f}\n", vl); fflush(logf); }
        }
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
        comm_reduce_scatter(&comm, m.grads_memory, m.num_params);
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
            grad_clip(m.grads_memory + shard_begin, shard_end - shard_begin, norm, a.clip);
            model_adamw_update(&m, &opt, step - (int)ts.skipped, shard_begin, shard_end);
        }
        comm_all_gather(&comm, m.params_memory, m.num_params);
        ts.step = step;
        ts.data_cursor = dl.cursor;
        double ms = now_ms() - t0;
        total_ms += ms;
        steps_run++;
        if (main_rank) {
            if (step % a.log_every == 0 || step == a.steps || skip) {
                printf("step %4d/%d | loss %.4f | lr %.3e | norm %.3f | %.1f ms | %.0f tok/s%s\n", step, a.steps, loss,
                       opt.lr, norm, ms, tokens_per_step / (ms / 1000.0), skip ? " | skipped (non-finite)" : "");
                fflush(stdout);
            }
            if (logf) fprintf(logf, "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"ms\":%.3f,\"tokens_per_s\":%.1f,\"skipped\":%lld}\n",
                              step, loss, opt.lr, norm, ms, tokens_per_step / (ms / 1000.0), (long long)ts.skipped);
            if (data.have_valid && (step % a.eval_every == 0 || step == a.steps)) {
                float vl = evaluate(&m, &data.valid_blend, a.batch_size, a.eval_steps, eod);
                printf("step %d | val loss %.4f\n", step, vl);
                if (logf) fprintf(logf, "{\"step\":%d,\"val_loss\":%.6f}\n", step, vl);
            }
            if (logf) fflush(logf);
            if (a.sample_every > 0 && (step % a.sample_every == 0 || step == a.steps)) print_sample(&m, &a, tok, step);
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
    dataloader_free(&dl);
    close_data(&data);
    model_free(&m);
    if (!main_rank) exit(0);
    if (comm_finish(&comm) != 0) { fprintf(stderr, "train: a data-parallel process failed\n"); return 1; }
    return 0;
}
