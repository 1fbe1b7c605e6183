/*
 train_common.h — the host side both trainers share (train.c on the CPU, train_gpu.cu on the GPU):
 the flags, the datasets of --data, the settings a resume must match, and drawing sample tokens.
 Include after llmtrain.h (with its implementation) in exactly one file of a program.
*/
#ifndef TRAIN_COMMON_H
#define TRAIN_COMMON_H

#include <signal.h>
#include <sys/file.h>
#include <stdarg.h>
#include <time.h>

typedef struct {
    const char *data, *model, *init_from, *tokenizer, *out, *split, *schedule;
    int batch_size, seq_len, grad_accum, steps, warmup_steps, decay_steps;
    float lr, min_lr, weight_decay, beta1, beta2, eps, clip, init_std;
    uint64_t seed;
    int eval_every, eval_steps, sample_every, sample_len, top_k, threads, log_every;
    int save_every, keep, resume, eod_mask_loss, skip_nonfinite;
    long max_shard_mb;
    float temperature;
    int nproc;                 /* processes on this machine: CPU ranks, or GPUs per node */
    /* train_gpu only */
    const char *dtype;         /* bf16 | fp32 */
    int recompute, zero, plain_attn, fuse_gelu, overlap, nccl_one;
    long logits_mb;
    int nnodes, node_rank, master_port;
    const char *master_addr, *run_id;
    float dist_timeout, nccl_timeout;
} Args;

/* The program's name for messages, and what to do before exiting on an error (stop the other ranks). */
static const char *trainer_name = "train";
static void (*trainer_on_die)(void) = NULL;

static void die(const char *fmt, ...) {
    if (trainer_on_die) trainer_on_die();
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", trainer_name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void usage(int gpu) {
    printf(gpu ? "usage: train_gpu --data PREFIX [options]\n" : "usage: train --data PREFIX [options]\n");
    printf(
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
"                          --resume keeps the checkpoint's values of these five flags unless they are given\n"
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
"                          model.safetensors, train_state.safetensors, tokenizer.json); DIR/latest names the newest;\n"
"                          one run at a time writes DIR (it holds DIR/.lock)\n"
"  --save-every N          checkpoint every N steps (default 0: only at the end and on SIGINT/SIGTERM)\n"
"  --keep N                keep the newest N checkpoints (default 0: all)\n"
"  --resume                continue from DIR/latest (exactly: weights, AdamW state, step, data position,\n"
"                          LR schedule)\n"
"  --max-shard-size MB     split model.safetensors into shards of at most MB megabytes (default 0: one file)\n"
"  --skip-nonfinite        skip a step whose loss or grad norm is not finite (default: stop with an error)\n");
    if (gpu) printf(
"GPU\n"
"  --dtype bf16|fp32       weights and activations (default bf16; masters, moments and grads are fp32)\n"
"  --recompute 0|1|2       0 keep all activations; 1 recompute GELU/SwiGLU outputs; 2 also the norms (default 1)\n"
"  --zero 1|2              ZeRO stage: 1 shards the fp32 masters and AdamW moments; 2 also keeps only this\n"
"                          rank's shard of the summed gradients (default 1)\n"
"  --attention tc|plain    tensor-core flash attention (bf16, head dim 32/64/128) or the plain kernels\n"
"  --fuse-gelu 0|1         GPT-2's GELU in the cuBLASLt epilogue (default 0)\n"
"  --logits-mb MB          bound on the classifier's chunk of logits (default 512)\n"
"multi-GPU (one process per GPU; or start under torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)\n"
"  --nproc-per-node N      fork N ranks on this node (alias --nproc, -n; default 1)\n"
"  --nnodes M --node-rank R  nodes and this node's index (default 1, 0)\n"
"  --master-addr A --master-port P  where rank 0 serves the NCCL id (default 127.0.0.1:29500)\n"
"  --run-id ID             run id checked in the handshake (default: made by the launcher)\n"
"  --dist-timeout S        seconds to wait for all ranks (default 300)\n"
"  --overlap 0|1           reduce each layer's gradients into their ZeRO shards while the backward goes on\n"
"                          (default 1); 0: one reduce-scatter after the backward\n"
"  --nccl 0|1              1: NCCL even with one rank (the multi-GPU code path, testable on one GPU; default 0)\n"
"  --nccl-timeout S        stop all ranks when NCCL reports an error, or when no step ends within S seconds\n"
"                          (a rank died or hangs); 0: no time limit (default 1800)\n");
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

/* the values of --lr, --min-lr, --warmup-steps, --decay-steps: not negative (negative marks a flag not given) */
static float parse_nonneg(const char *flag, const char *s) {
    float v = parse_float(flag, s);
    if (!(v >= 0)) die("%s must be >= 0, got \"%s\"", flag, s);
    return v;
}

static long parse_count(const char *flag, const char *s) {
    long v = parse_int(flag, s);
    if (v < 0) die("%s must be >= 0, got \"%s\"", flag, s);
    return v;
}

/* gpu: accept the GPU and launcher flags (train_gpu); the CPU trainer refuses them by name. */
static void parse_args(Args *a, int argc, char **argv, int gpu) {
    memset(a, 0, sizeof(*a));
    a->model = "tiny-gpt2"; a->split = "98,2,0";
    a->batch_size = 8; a->seq_len = 64; a->grad_accum = 1; a->steps = 100;
    a->lr = -1; a->min_lr = -1; a->warmup_steps = -1; a->decay_steps = -1;   /* the schedule: set by resolve_schedule */ a->weight_decay = 0.1f; a->beta1 = 0.9f; a->beta2 = 0.95f; a->eps = 1e-8f;
    a->clip = 1.0f; a->init_std = 0.02f; a->seed = 1234; a->eval_every = 100; a->eval_steps = 8;
    a->sample_len = 64; a->top_k = 40; a->temperature = 1.0f; a->log_every = 1; a->nproc = 1;
    a->dtype = "bf16"; a->recompute = 1; a->zero = 1; a->logits_mb = 512;
    a->nnodes = 1; a->master_addr = "127.0.0.1"; a->master_port = 29500; a->dist_timeout = 300;
    a->overlap = 1; a->nccl_timeout = 1800;
    static const char *gpu_flags[] = {"--dtype", "--recompute", "--zero", "--attention", "--fuse-gelu", "--logits-mb",
        "--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--run-id", "--dist-timeout",
        "--overlap", "--nccl", "--nccl-timeout"};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) { usage(gpu); exit(0); }
        for (size_t k = 0; !gpu && k < sizeof(gpu_flags) / sizeof(gpu_flags[0]); k++)
            if (!strcmp(f, gpu_flags[k])) die("%s is a flag of train_gpu (see --help)", f);
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
        else if (!strcmp(f, "--warmup-steps")) a->warmup_steps = (int)parse_count(f, v);
        else if (!strcmp(f, "--decay-steps")) a->decay_steps = (int)parse_count(f, v);
        else if (!strcmp(f, "--lr")) a->lr = parse_nonneg(f, v);
        else if (!strcmp(f, "--min-lr")) a->min_lr = parse_nonneg(f, v);
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
        else if (!strcmp(f, "--dtype")) a->dtype = v;
        else if (!strcmp(f, "--recompute")) a->recompute = (int)parse_int(f, v);
        else if (!strcmp(f, "--zero")) a->zero = (int)parse_int(f, v);
        else if (!strcmp(f, "--attention")) {
            if (strcmp(v, "tc") && strcmp(v, "plain")) die("--attention must be tc or plain, got \"%s\"", v);
            a->plain_attn = !strcmp(v, "plain");
        }
        else if (!strcmp(f, "--fuse-gelu")) a->fuse_gelu = (int)parse_int(f, v);
        else if (!strcmp(f, "--logits-mb")) a->logits_mb = parse_int(f, v);
        else if (!strcmp(f, "--nproc-per-node")) a->nproc = (int)parse_int(f, v);
        else if (!strcmp(f, "--nnodes")) a->nnodes = (int)parse_int(f, v);
        else if (!strcmp(f, "--node-rank")) a->node_rank = (int)parse_int(f, v);
        else if (!strcmp(f, "--master-addr")) a->master_addr = v;
        else if (!strcmp(f, "--master-port")) a->master_port = (int)parse_int(f, v);
        else if (!strcmp(f, "--run-id")) a->run_id = v;
        else if (!strcmp(f, "--dist-timeout")) a->dist_timeout = parse_float(f, v);
        else if (!strcmp(f, "--overlap")) a->overlap = (int)parse_int(f, v);
        else if (!strcmp(f, "--nccl")) a->nccl_one = (int)parse_int(f, v);
        else if (!strcmp(f, "--nccl-timeout")) a->nccl_timeout = parse_float(f, v);
        else die("unknown flag %s (see --help)", f);
    }
    if (!a->data) die("--data PREFIX is required (see --help)");
    if (a->resume && !a->out) die("--resume needs --out DIR");
    if (a->batch_size < 1 || a->seq_len < 1 || a->grad_accum < 1 || a->steps < 0)
        die("--batch-size, --seq-len and --grad-accum must be >= 1 and --steps >= 0");
    if (a->log_every < 1) a->log_every = 1;
    if (a->nproc < 1) die("--nproc must be >= 1");
    if (gpu) {
        if (strcmp(a->dtype, "bf16") && strcmp(a->dtype, "fp32")) die("--dtype must be bf16 or fp32, got \"%s\"", a->dtype);
        if (a->recompute < 0 || a->recompute > 2) die("--recompute must be 0, 1 or 2");
        if (a->zero != 1 && a->zero != 2) die("--zero must be 1 or 2, got %d", a->zero);
        if ((a->overlap != 0 && a->overlap != 1) || (a->nccl_one != 0 && a->nccl_one != 1))
            die("--overlap and --nccl must be 0 or 1");
        if (!(a->nccl_timeout >= 0)) die("--nccl-timeout must be >= 0 seconds");
        if (a->nnodes < 1 || a->node_rank < 0 || a->node_rank >= a->nnodes)
            die("--nnodes must be >= 1 and 0 <= --node-rank < --nnodes");
    }
}

/* SIGINT / SIGTERM: finish the step, save, exit 0 */
static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

/* The model config: from --init-from's folder, a preset, or a config.json; checked against the flags. */
static void choose_config(ModelConfig *cfg, const Args *a) {
    char err[1024];
    if (a->init_from) {
        if (model_config_from_json(cfg, a->init_from, err, sizeof(err)) != 0) die("%s", err);
    } else if (model_config_preset(cfg, a->model) != 0) {
        if (access(a->model, R_OK) != 0)
            die("--model \"%s\" is neither a preset (gpt2-124m, gpt2-350m, tiny-gpt2, tiny-llama, tiny-qwen3, "
                "llama-1b) nor a readable config.json", a->model);
        if (model_config_from_json(cfg, a->model, err, sizeof(err)) != 0) die("%s", err);
    }
    if (cfg->family == FAMILY_GPT2 && a->seq_len > cfg->max_seq_len)
        die("--seq-len %d exceeds the model's %d positions", a->seq_len, cfg->max_seq_len);
    if (a->eod_mask_loss && cfg->eos_token_id < 0) die("--eod-mask-loss needs eos_token_id in the model config");
}

static int lr_style(const char *s) {
    if (!strcmp(s, "cosine")) return LR_COSINE;
    if (!strcmp(s, "linear")) return LR_LINEAR;
    if (!strcmp(s, "constant")) return LR_CONSTANT;
    die("--lr-schedule must be cosine, linear or constant, got \"%s\"", s);
    return 0;
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

/* The first token of a sample: the tokenizer's BOS, else its EOD, else the config's EOS. */
static int sample_start_token(const ModelConfig *cfg, Tokenizer *tok) {
    if (tok && tokenizer_bos_id(tok) >= 0) return tokenizer_bos_id(tok);
    if (tok && tokenizer_eos_id(tok) >= 0) return tokenizer_eos_id(tok);
    return cfg->eos_token_id >= 0 && cfg->eos_token_id < cfg->vocab_size ? cfg->eos_token_id : 0;
}

/* Prints generated ids as text (or as numbers without a tokenizer). */
static void print_sample_text(Tokenizer *tok, const int *ids, int n, int step) {
    printf("--- sample at step %d ---\n", step);
    if (tok) {
        int32_t *ids32 = (int32_t *)malloc((n + 1) * sizeof(int32_t));
        for (int i = 0; i < n; i++) ids32[i] = ids[i];
        char *text = tokenizer_decode(tok, ids32, n);
        printf("%s\n", text ? text : "(decode failed)");
        free(text); free(ids32);
    } else {
        for (int i = 0; i < n; i++) printf("%d ", ids[i]);
        printf("\n");
    }
    printf("---\n");
    fflush(stdout);
}

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

/* The settings a resumed run must share with the run that saved the checkpoint; with schedule, also the LR
   schedule under "lr_schedule" (recorded in checkpoints; a resume takes it over, see resolve_schedule). */
static void make_run_flags(char *out, size_t n, const Args *a, const ModelConfig *cfg, int world, int schedule) {
    char *mc = model_config_to_json(cfg);
    json_t *mj = json_loads(mc, 0, NULL);
    free(mc);
    json_t *o = json_pack("{s:o,s:s,s:s,s:i,s:i,s:i,s:i,s:I,s:b}", "model", mj, "data", a->data, "split", a->split,
                          "seq_len", a->seq_len, "batch_size", a->batch_size, "grad_accum", a->grad_accum,
                          "world_size", world, "seed", (json_int_t)a->seed, "eod_mask_loss", a->eod_mask_loss);
    if (schedule)
        json_object_set_new(o, "lr_schedule", json_pack("{s:s,s:f,s:f,s:i,s:i}", "lr_schedule", a->schedule,
                            "lr", (double)a->lr, "min_lr", (double)a->min_lr, "warmup_steps", a->warmup_steps,
                            "decay_steps", a->decay_steps));
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    if (strlen(s) >= n) die("run settings too long to record (%zu bytes)", strlen(s));
    snprintf(out, n, "%s", s);
    free(s);
    json_decref(o);
}

/* The LR schedule: --lr-schedule, --lr, --min-lr, --warmup-steps, --decay-steps. A flag given wins. On a
   resume (saved: the checkpoint's run_flags), a flag not given takes the checkpoint's value, so the schedule
   goes on as it was: --steps 10 then --steps 20 --resume decays to min-lr at step 10 (--decay-steps defaulted
   to that run's --steps) and runs steps 11-20 at min-lr, as --steps 20 --decay-steps 10 straight does. Else
   the defaults: cosine, lr 3e-4, min-lr lr/10, warmup 0, decay at --steps. A resume says what it uses. */
static void resolve_schedule(Args *a, const char *saved, long long step, int verbose) {
    json_t *root = saved ? json_loads(saved, 0, NULL) : NULL;
    json_t *old = json_object_get(root, "lr_schedule");
    const char *given[5] = {NULL, NULL, NULL, NULL, NULL};   /* the flags given that change the checkpoint's value */
    char was[5][64], now[5][64];
    if (old) {
        const char *style = json_string_value(json_object_get(old, "lr_schedule"));
        double lr = json_number_value(json_object_get(old, "lr")), min_lr = json_number_value(json_object_get(old, "min_lr"));
        int warmup = (int)json_integer_value(json_object_get(old, "warmup_steps"));
        int decay = (int)json_integer_value(json_object_get(old, "decay_steps"));
        if (!a->schedule) a->schedule = strdup(style ? style : "cosine");
        else if (style && strcmp(a->schedule, style)) { given[0] = "--lr-schedule"; snprintf(was[0], 64, "%s", style); snprintf(now[0], 64, "%s", a->schedule); }
        if (a->lr < 0) a->lr = (float)lr;
        else if (a->lr != (float)lr) { given[1] = "--lr"; snprintf(was[1], 64, "%g", lr); snprintf(now[1], 64, "%g", a->lr); }
        if (a->min_lr < 0) a->min_lr = (float)min_lr;
        else if (a->min_lr != (float)min_lr) { given[2] = "--min-lr"; snprintf(was[2], 64, "%g", min_lr); snprintf(now[2], 64, "%g", a->min_lr); }
        if (a->warmup_steps < 0) a->warmup_steps = warmup;
        else if (a->warmup_steps != warmup) { given[3] = "--warmup-steps"; snprintf(was[3], 64, "%d", warmup); snprintf(now[3], 64, "%d", a->warmup_steps); }
        if (a->decay_steps < 0) a->decay_steps = decay;
        else if (a->decay_steps != decay) { given[4] = "--decay-steps"; snprintf(was[4], 64, "%d", decay); snprintf(now[4], 64, "%d", a->decay_steps); }
    }
    json_decref(root);
    if (!a->schedule) a->schedule = "cosine";
    if (a->lr < 0) a->lr = 3e-4f;
    if (a->min_lr < 0) a->min_lr = a->lr / 10.0f;
    if (a->warmup_steps < 0) a->warmup_steps = 0;
    if (a->decay_steps < 0) a->decay_steps = a->steps;
    if (!saved || !verbose) return;
    printf("LR schedule %s: %s, warmup %d steps, lr %g decaying to min-lr %g at step %d\n",
           old ? "of the checkpoint but for the flags given" : "of the flags (the checkpoint records none)", a->schedule,
           a->warmup_steps, a->lr, a->min_lr, a->decay_steps);
    for (int i = 0; i < 5; i++)
        if (given[i]) printf("%s %s replaces the checkpoint's %s: the learning rate follows the new schedule from step %lld\n",
                             given[i], now[i], was[i], step + 1);
    if (strcmp(a->schedule, "constant") && a->decay_steps < a->steps)
        printf("steps %lld-%d run at min-lr %g (give --decay-steps N to decay to step N instead)\n",
               (a->decay_steps > step ? a->decay_steps : step) + 1, a->steps, a->min_lr);
    fflush(stdout);
}

/* The run that writes OUT holds OUT/.lock (flock) until it exits: a second run into the same folder stops
   with an error instead of mixing its checkpoints and log with the first one's. The file holds the pid. */
static void lock_run_folder(const char *out) {
    char path[1200], pid[32] = "";
    if (mkdir(out, 0755) != 0 && errno != EEXIST) die("%s: cannot create: %s", out, strerror(errno));
    snprintf(path, sizeof(path), "%s/.lock", out);
    int fd = open(path, O_RDWR | O_CREAT, 0644);   /* stays open: the lock lasts until the process exits */
    if (fd < 0) die("%s: cannot open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK) return;   /* a file system without locks */
        ssize_t n = read(fd, pid, sizeof(pid) - 1);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        die("--out %s: another run (pid %s) is writing this folder; wait for it to end or choose another --out",
            out, pid[0] ? pid : "?");
    }
    snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, strlen(pid), 0) < 0) die("%s: cannot write: %s", path, strerror(errno));
}

/* OUT/log.jsonl on a resume from `step`: the records of later steps (written before the run stopped without
   saving them; this run writes them again) and a torn last line are dropped. Temp file, fsync, rename. */
static void trim_run_log(const char *out, long long step) {
    char path[1200], tmp[1300];
    snprintf(path, sizeof(path), "%s/log.jsonl", out);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *in = fopen(path, "r");
    if (!in) return;
    FILE *o = fopen(tmp, "w");
    if (!o) die("%s: cannot write: %s", tmp, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long dropped = 0;
    while ((len = getline(&line, &cap, in)) > 0) {
        long long s;
        if (line[len - 1] == '\n' && sscanf(line, "{\"step\":%lld", &s) == 1 && s <= step) fputs(line, o);
        else dropped++;
    }
    free(line);
    fclose(in);
    if (fflush(o) != 0 || fsync(fileno(o)) != 0 || fclose(o) != 0 || rename(tmp, path) != 0)
        die("%s: cannot rewrite: %s", path, strerror(errno));
    fsync_dir(out);
    if (dropped) printf("%s: dropped %ld record(s) after step %lld\n", path, dropped, step);
}

/* The model config (choose_config), the datasets (open_data) and the fp32 model, its weights not set yet. */
static void open_run(const Args *a, ModelConfig *cfg, Data *data, Model *m) {
    choose_config(cfg, a);
    open_data(data, a, cfg->vocab_size);
    if (model_build(m, cfg) != 0) die("out of memory for the model");
}

/* The rank's loader (rows rank, rank + world, ... of each batch; the EOD mask) and the starting weights: with
   --resume and a checkpoint in --out, the checkpoint (weights, AdamW moments, step, data position; its run
   settings must match these; its LR schedule goes on, resolve_schedule); else --init-from's HF weights; else a
   fresh init. Rank 0 first takes --out (lock_run_folder, checkpoint_clean) and, resumed, trims its log.
   ts->run_flags gets this run's settings. Returns 1 when resumed. */
static int start_weights(Model *m, TrainState *ts, DataLoader *dl, Data *data, Args *a, const ModelConfig *cfg,
                         int rank, int world) {
    int main_rank = rank == 0;
    dataloader_init(dl, &data->train_blend, a->batch_size, rank, world);
    dl->eod = a->eod_mask_loss ? cfg->eos_token_id : -1;
    char err[1024], run_flags[sizeof(ts->run_flags)], ckpt[1300];
    memset(ts, 0, sizeof(*ts));
    if (main_rank && a->out) {
        lock_run_folder(a->out);
        int n = checkpoint_clean(a->out, err, sizeof(err));
        if (n < 0) die("%s", err);
        if (n > 0) printf("%s: deleted %d folder(s) of interrupted saves\n", a->out, n);
    }
    make_run_flags(run_flags, sizeof(run_flags), a, cfg, world, 0);
    int resumed = 0;
    if (a->resume && checkpoint_latest(a->out, ckpt, sizeof(ckpt)) == 0) {
        if (checkpoint_load(ckpt, m, ts, err, sizeof(err)) != 0) die("resume: %s", err);
        if (run_flags_compare(ts->run_flags, run_flags, err, sizeof(err)) != 0) die("resume from %s: %s", ckpt, err);
        dl->cursor = ts->data_cursor;
        resumed = 1;
        if (main_rank) printf("resumed from %s at step %lld\n", ckpt, (long long)ts->step);
        resolve_schedule(a, ts->run_flags, (long long)ts->step, main_rank);
        if (main_rank) trim_run_log(a->out, (long long)ts->step);
    } else if (a->init_from) {
        if (model_load_hf_dir(m, a->init_from, err, sizeof(err)) != 0) die("%s", err);
    } else {
        if (a->resume && main_rank) printf("no checkpoint in %s: starting fresh\n", a->out);
        model_init_weights(m, a->seed, a->init_std);
    }
    if (!resumed) resolve_schedule(a, NULL, 0, 0);
    make_run_flags(ts->run_flags, sizeof(ts->run_flags), a, cfg, world, 1);
    return resumed;
}

/* --tokenizer, for samples and checkpoints (NULL without the flag). */
static Tokenizer *open_tokenizer(const Args *a) {
    if (!a->tokenizer) return NULL;
    char err[1024];
    Tokenizer *tok = tokenizer_load(a->tokenizer, err, sizeof(err));
    if (!tok) die("%s", err);
    return tok;
}

/* OUT/log.jsonl: one JSON object per step and per evaluation; a resumed run appends. NULL without --out. */
static FILE *open_run_log(const Args *a, int resumed) {
    if (!a->out) return NULL;
    if (mkdir(a->out, 0755) != 0 && errno != EEXIST) die("%s: cannot create: %s", a->out, strerror(errno));
    char path[1200];
    snprintf(path, sizeof(path), "%s/log.jsonl", a->out);
    FILE *f = fopen(path, resumed ? "a" : "w");
    if (!f) die("%s: cannot write: %s", path, strerror(errno));
    return f;
}

/* The run's first lines: the model and the data. */
static void print_run_start(const ModelConfig *cfg, size_t nparams, const Args *a, const Data *data) {
    printf("model %s: %d layers, %d hidden, %d heads (%d kv, head dim %d), ff %d, vocab %d: %zu parameters\n",
           family_name(cfg->family), cfg->n_layer, cfg->n_embd, cfg->n_head, cfg->n_kv_head, cfg->head_dim, cfg->d_ff,
           cfg->vocab_size, nparams);
    printf("data %s: %d dataset(s), %llu train tokens/epoch, windows of %d\n", a->data, data->n,
           (unsigned long long)data->train_tokens, a->seq_len);
}

/* One step's numbers: a line on stdout (every --log-every steps, at the last step and at a skipped one) and a
   record in log.jsonl. mem_gib 0 (the CPU trainer) leaves out MFU and memory; mfu < 0 is a device whose peak
   FLOP/s is not in the table (MFU n/a). */
typedef struct {
    int step, skip;
    long long skipped;
    double loss, lr, norm, ms, tokens_per_s, mfu, mem_gib;
} StepLog;

static void log_step(const Args *a, FILE *logf, const StepLog *s) {
    char gpu[96] = "";
    if (s->mfu >= 0) snprintf(gpu, sizeof(gpu), " | MFU %.1f%% | mem %.2f GiB", s->mfu, s->mem_gib);
    else if (s->mem_gib > 0) snprintf(gpu, sizeof(gpu), " | MFU n/a | mem %.2f GiB", s->mem_gib);
    if (s->step % a->log_every == 0 || s->step == a->steps || s->skip) {
        printf("step %4d/%d | loss %.4f | lr %.3e | norm %.3f | %.1f ms | %.0f tok/s%s%s\n", s->step, a->steps, s->loss,
               s->lr, s->norm, s->ms, s->tokens_per_s, gpu, s->skip ? " | skipped (non-finite)" : "");
        fflush(stdout);
    }
    if (!logf) return;
    fprintf(logf, "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"ms\":%.3f,\"tokens_per_s\":%.1f,\"skipped\":%lld",
            s->step, s->loss, s->lr, s->norm, s->ms, s->tokens_per_s, s->skipped);
    if (s->mem_gib > 0) fprintf(logf, ",\"mfu\":%.4f,\"mem_gib\":%.3f", s->mfu >= 0 ? s->mfu / 100.0 : 0.0, s->mem_gib);
    fprintf(logf, "}\n");
    fflush(logf);
}

/* a validation loss: printed and logged */
static void log_val(FILE *logf, int step, float vl) {
    printf("step %d | val loss %.4f\n", step, vl);
    fflush(stdout);
    if (logf) { fprintf(logf, "{\"step\":%d,\"val_loss\":%.6f}\n", step, vl); fflush(logf); }
}

/* is a periodic event (evaluation, sample) due after this step? every <= 0: never */
static int due(const Args *a, int step, int every) { return every > 0 && (step % every == 0 || step == a->steps); }

#endif /* TRAIN_COMMON_H */
