/*
 train_common.h — the host side both trainers share (train.c on the CPU, train_gpu.cu on the GPU):
 the flags, the datasets of --data, the settings a resume must match, and drawing sample tokens.
 Include after llmtrain.h (with its implementation) in exactly one file of a program.
*/
#ifndef TRAIN_COMMON_H
#define TRAIN_COMMON_H

#include <limits.h>
#include <signal.h>
#include <sys/file.h>
#include <stdarg.h>
#include <time.h>

#include "flags.h"

typedef struct {
    const char *data, *model, *init_from, *tokenizer, *out, *split, *schedule, *data_order;
    const char *norm, *activation, *positions;   /* model features over --model / --init-from (NULL: the model's) */
    int mlp_bias;                                /* -1: the model's */
    int batch_size, seq_len, grad_accum, steps, warmup_steps, decay_steps;
    float lr, min_lr, weight_decay, beta1, beta2, eps, clip, init_std;
    uint64_t seed;
    int eval_every, eval_steps, sample_every, sample_len, top_k, threads, log_every;
    int save_every, keep, resume, eod_mask_loss, skip_nonfinite, reset_attention_mask, reset_position_ids;
    long max_shard_mb;
    float temperature;
    int nproc;                 /* processes on this machine: CPU ranks, or GPUs per node */
    int tp, sp;                /* tensor-parallel size; sequence parallelism */
    int pp;                    /* pipeline stages */
    const char *pp_layers, *pp_trace;
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
"  --eod-mask-loss         no loss where the input token is the EOD (the config's eos_token_id), as Megatron\n"
"  --reset-attention-mask  attention does not cross an EOD inside a window: each document sees only itself (Megatron)\n"
"  --reset-position-ids    positions (RoPE, learned) restart after each EOD inside a window (Megatron)\n"
"  --split A,B,C           train/validation/test split by sequences, as Megatron (default 98,2,0)\n"
"  --data-order O          default | megatron: the training windows in exactly the order of Megatron's GPTDataset\n"
"                          (+ BlendedDataset) for the same seed (< 2^32), --seq-len, --split, blend and\n"
"                          --steps x global batch samples (default: default)\n"
"  --seq-len T             tokens per sequence (default 64)\n"
"  --batch-size B          sequences per micro-step (default 8)\n"
"  --grad-accum K          micro-steps per optimizer step (default 1)\n"
"model\n"
"  --model NAME|PATH       preset (gpt2-124m, gpt2-350m, tiny-gpt2, tiny-llama, tiny-qwen3, llama-1b) or a HF\n"
"                          config.json / directory holding one (default tiny-gpt2)\n"
"  --init-from DIR         start from the HF weights in DIR (config.json + model.safetensors)\n"
"  --norm N                layernorm | rmsnorm: the residual stream's norms (default: the model's)\n"
"  --activation A          gelu | swiglu: the MLP (default: the model's)\n"
"  --positions P           learned | rope | none: a position table, RoPE on q/k, or none (default: the model's)\n"
"  --mlp-bias 0|1          biases on the MLP projections (default: the model's)\n"
"                          these four change --model; --resume takes the checkpoint's, and with --init-from\n"
"                          they must not change the set of weights\n"
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
"  -n, --nproc N           processes on this machine, N / (tp x pp) data-parallel groups (ZeRO-1: each owns its\n"
"                          share of the AdamW state); the global batch is batch-size x grad-accum x N / (tp x pp)\n"
"                          (default 1)\n"
"  --tp N                  tensor parallelism: N adjacent processes (GPUs) share every layer (heads, MLP\n"
"                          columns and vocabulary split, Megatron-style); N divides -n (default 1)\n"
"  --sp                    sequence parallelism with --tp: the norms and residuals split by rows\n"
"  --pp N                  pipeline parallelism: the layers cut into N stages, one per process (GPU),\n"
"                          the micro-batches (--grad-accum) run 1F1B; -n = data-parallel x N x --tp (default 1)\n"
"  --pp-layers A,B,...     the layers of each stage (default: balanced by parameter count)\n"
"  --pp-trace FILE         per rank, every forward, backward, send and receive of the pipeline as Chrome trace\n"
"                          events (JSON lines: FILE.rankR)\n"
"  --log-every N           print a step line every N steps (default 1)\n"
"  --eval-every N          validation loss every N steps, and at the end; 0 disables (default 100)\n"
"  --eval-steps N          validation batches per evaluation (default 8)\n"
"  --sample-every N        print a generated sample every N steps and at the end; 0 disables (default 0)\n"
"  --sample-len N          tokens per sample (default 64)\n"
"  --temperature X         sampling temperature; 0: the most likely token (default 1.0)\n"
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

/* gpu: accept the GPU and launcher flags (train_gpu); the CPU trainer refuses them by name. Every flag is an
   entry of a table (flags.h) with its type and valid range; a value outside it stops the program. */
static void parse_args(Args *a, int argc, char **argv, int gpu) {
    memset(a, 0, sizeof(*a));
    a->model = "tiny-gpt2"; a->split = "98,2,0"; a->data_order = "default";
    a->batch_size = 8; a->seq_len = 64; a->grad_accum = 1; a->steps = 100;
    a->lr = -1; a->min_lr = -1; a->warmup_steps = -1; a->decay_steps = -1;   /* the schedule: set by resolve_schedule */ a->weight_decay = 0.1f; a->beta1 = 0.9f; a->beta2 = 0.95f; a->eps = 1e-8f;
    a->mlp_bias = -1;
    a->clip = 1.0f; a->init_std = 0.02f; a->seed = 1234; a->eval_every = 100; a->eval_steps = 8;
    a->sample_len = 64; a->top_k = 40; a->temperature = 1.0f; a->log_every = 1; a->nproc = 1; a->tp = 1; a->pp = 1;
    a->dtype = "bf16"; a->recompute = 1; a->zero = 1; a->logits_mb = 512;
    a->nnodes = 1; a->master_addr = "127.0.0.1"; a->master_port = 29500; a->dist_timeout = 300;
    a->overlap = 1; a->nccl_timeout = 1800;
    const char *attention = "tc";
    const double inf = INFINITY, imax = INT_MAX;
    const double max_nproc = gpu ? 1024 : COMM_MAX_RANKS;   /* GPUs per node, or CPU ranks */
    const Flag flags[] = {
        {"--data", FLAG_STRING, &a->data, 0, 0, 0, NULL},
        {"--model", FLAG_STRING, &a->model, 0, 0, 0, NULL},
        {"--init-from", FLAG_STRING, &a->init_from, 0, 0, 0, NULL},
        {"--norm", FLAG_CHOICE, &a->norm, 0, 0, 0, "layernorm|rmsnorm"},
        {"--activation", FLAG_CHOICE, &a->activation, 0, 0, 0, "gelu|swiglu"},
        {"--positions", FLAG_CHOICE, &a->positions, 0, 0, 0, "learned|rope|none"},
        {"--mlp-bias", FLAG_INT, &a->mlp_bias, 0, 1, 0, NULL},
        {"--tokenizer", FLAG_STRING, &a->tokenizer, 0, 0, 0, NULL},
        {"--out", FLAG_STRING, &a->out, 0, 0, 0, NULL},
        {"--split", FLAG_STRING, &a->split, 0, 0, 0, NULL},
        {"--data-order", FLAG_CHOICE, &a->data_order, 0, 0, 0, "default|megatron"},
        {"--lr-schedule", FLAG_CHOICE, &a->schedule, 0, 0, 0, "cosine|linear|constant"},
        {"--resume", FLAG_SWITCH, &a->resume, 0, 0, 0, NULL},
        {"--eod-mask-loss", FLAG_SWITCH, &a->eod_mask_loss, 0, 0, 0, NULL},
        {"--reset-attention-mask", FLAG_SWITCH, &a->reset_attention_mask, 0, 0, 0, NULL},
        {"--reset-position-ids", FLAG_SWITCH, &a->reset_position_ids, 0, 0, 0, NULL},
        {"--skip-nonfinite", FLAG_SWITCH, &a->skip_nonfinite, 0, 0, 0, NULL},
        {"--batch-size", FLAG_INT, &a->batch_size, 1, imax, 0, NULL},
        {"--seq-len", FLAG_INT, &a->seq_len, 1, imax, 0, NULL},
        {"--grad-accum", FLAG_INT, &a->grad_accum, 1, imax, 0, NULL},
        {"--steps", FLAG_INT, &a->steps, 0, imax, 0, "0: no training step"},
        {"--warmup-steps", FLAG_INT, &a->warmup_steps, 0, imax, 0, "0: no warmup"},
        {"--decay-steps", FLAG_INT, &a->decay_steps, 1, imax, 0, NULL},
        {"--lr", FLAG_FLOAT, &a->lr, 0, inf, 0, NULL},
        {"--min-lr", FLAG_FLOAT, &a->min_lr, 0, inf, 0, NULL},
        {"--weight-decay", FLAG_FLOAT, &a->weight_decay, 0, inf, 0, NULL},
        {"--beta1", FLAG_FLOAT, &a->beta1, 0, 1, FLAG_OPEN_MAX, NULL},
        {"--beta2", FLAG_FLOAT, &a->beta2, 0, 1, FLAG_OPEN_MAX, NULL},
        {"--eps", FLAG_FLOAT, &a->eps, 0, inf, FLAG_OPEN_MIN, NULL},
        {"--clip", FLAG_FLOAT, &a->clip, 0, inf, 0, "0: off"},
        {"--init-std", FLAG_FLOAT, &a->init_std, 0, inf, 0, NULL},
        {"--seed", FLAG_U64, &a->seed, 0, 0, 0, NULL},
        {"--threads", FLAG_INT, &a->threads, 0, 1024, 0, "0: all cores / --nproc"},
        {"--nproc", FLAG_INT, &a->nproc, 1, max_nproc, 0, NULL},
        {"-n", FLAG_INT, &a->nproc, 1, max_nproc, 0, NULL},
        {"--tp", FLAG_INT, &a->tp, 1, COMM_MAX_RANKS, 0, NULL},
        {"--sp", FLAG_SWITCH, &a->sp, 0, 0, 0, NULL},
        {"--pp", FLAG_INT, &a->pp, 1, COMM_MAX_RANKS, 0, NULL},
        {"--pp-layers", FLAG_STRING, &a->pp_layers, 0, 0, 0, NULL},
        {"--pp-trace", FLAG_STRING, &a->pp_trace, 0, 0, 0, NULL},
        {"--log-every", FLAG_INT, &a->log_every, 1, imax, 0, NULL},
        {"--eval-every", FLAG_INT, &a->eval_every, 0, imax, 0, "0: off"},
        {"--eval-steps", FLAG_INT, &a->eval_steps, 1, imax, 0, NULL},
        {"--sample-every", FLAG_INT, &a->sample_every, 0, imax, 0, "0: off"},
        {"--sample-len", FLAG_INT, &a->sample_len, 1, imax - 1, 0, NULL},
        {"--top-k", FLAG_INT, &a->top_k, 0, imax, 0, "0: all"},
        {"--temperature", FLAG_FLOAT, &a->temperature, 0, inf, 0, "0: the most likely token"},
        {"--save-every", FLAG_INT, &a->save_every, 0, imax, 0, "0: only at the end"},
        {"--keep", FLAG_INT, &a->keep, 0, imax, 0, "0: all"},
        {"--max-shard-size", FLAG_LONG, &a->max_shard_mb, 0, 1 << 30, 0, "0: one file"},
    };
    const Flag gpu_flags[] = {
        {"--dtype", FLAG_CHOICE, &a->dtype, 0, 0, 0, "bf16|fp32"},
        {"--recompute", FLAG_INT, &a->recompute, 0, 2, 0, NULL},
        {"--zero", FLAG_INT, &a->zero, 1, 2, 0, NULL},
        {"--attention", FLAG_CHOICE, &attention, 0, 0, 0, "tc|plain"},
        {"--fuse-gelu", FLAG_INT, &a->fuse_gelu, 0, 1, 0, NULL},
        {"--logits-mb", FLAG_LONG, &a->logits_mb, 1, 1 << 20, 0, NULL},
        {"--nproc-per-node", FLAG_INT, &a->nproc, 1, max_nproc, 0, NULL},
        {"--nnodes", FLAG_INT, &a->nnodes, 1, 65536, 0, NULL},
        {"--node-rank", FLAG_INT, &a->node_rank, 0, 65535, 0, NULL},
        {"--master-addr", FLAG_STRING, &a->master_addr, 0, 0, 0, NULL},
        {"--master-port", FLAG_INT, &a->master_port, 1, 65535, 0, NULL},
        {"--run-id", FLAG_STRING, &a->run_id, 0, 0, 0, NULL},
        {"--dist-timeout", FLAG_FLOAT, &a->dist_timeout, 0, inf, FLAG_OPEN_MIN, NULL},
        {"--overlap", FLAG_INT, &a->overlap, 0, 1, 0, NULL},
        {"--nccl", FLAG_INT, &a->nccl_one, 0, 1, 0, NULL},
        {"--nccl-timeout", FLAG_FLOAT, &a->nccl_timeout, 0, inf, 0, "0: no time limit"},
    };
    const int nflags = (int)(sizeof(flags) / sizeof(flags[0])), ngpu = (int)(sizeof(gpu_flags) / sizeof(gpu_flags[0]));
    char err[512];
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i];
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) { usage(gpu); exit(0); }
        const Flag *f = flag_find(flags, nflags, name);
        if (!f && flag_find(gpu_flags, ngpu, name)) {
            if (!gpu) die("%s is a flag of train_gpu (see --help)", name);
            f = flag_find(gpu_flags, ngpu, name);
        }
        if (!f) die("unknown flag %s (see --help)", name);
        if (f->type != FLAG_SWITCH && i + 1 >= argc) die("%s needs a value (see --help)", name);
        if (flag_set(f, f->type == FLAG_SWITCH ? NULL : argv[++i], err, sizeof(err)) != 0) die("%s", err);
    }
    a->plain_attn = !strcmp(attention, "plain");
    if (!a->data) die("--data PREFIX is required (see --help)");
    if (a->resume && !a->out) die("--resume needs --out DIR");
    if (a->nproc % (a->tp * a->pp)) die("--tp %d x --pp %d does not divide the %d processes of -n", a->tp, a->pp, a->nproc);
    if ((a->pp_layers || a->pp_trace) && a->pp < 2) die("%s needs --pp 2 or more", a->pp_layers ? "--pp-layers" : "--pp-trace");
    if (a->sp && a->tp < 2) die("--sp needs --tp 2 or more");
    if (a->sp && ((long long)a->batch_size * a->seq_len) % a->tp)
        die("--sp: --batch-size x --seq-len = %lld rows do not split into --tp %d blocks", (long long)a->batch_size * a->seq_len, a->tp);
    long long tokens = (long long)a->batch_size * a->seq_len * a->grad_accum * (a->nproc / a->tp / a->pp) * a->nnodes;
    if (tokens > INT_MAX)
        die("--batch-size x --seq-len x --grad-accum x processes = %lld tokens per step: more than %d", tokens, INT_MAX);
    if (!strcmp(a->data_order, "megatron") && a->seed > UINT32_MAX)
        die("--seed %llu: --data-order megatron needs a seed below 2^32 (numpy's RandomState)", (unsigned long long)a->seed);
    if (a->node_rank >= a->nnodes) die("--node-rank %d: out of range [0, %d] (--nnodes %d)", a->node_rank, a->nnodes - 1, a->nnodes);
}

/* SIGINT / SIGTERM: finish the step, save, exit 0 */
static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

/* --norm, --activation, --positions, --mlp-bias over cfg. On --resume with a checkpoint in --out its features
   stand: a flag that says otherwise is refused. With --init-from, a flag that changes the set of weights is. */
static void apply_features(ModelConfig *cfg, const Args *a) {
    const char *flag[4] = {"--norm", "--activation", "--positions", "--mlp-bias"};
    const char *given[4] = {a->norm, a->activation, a->positions, a->mlp_bias < 0 ? NULL : a->mlp_bias ? "1" : "0"};
    /* the flag's value as the field holds it (-1: not given); the flag table checked the names */
    int want[4] = {name_index(a->norm, norm_names, 2), name_index(a->activation, act_names, 2),
                   name_index(a->positions, positions_names, 3), a->mlp_bias};
    int *field[4] = {&cfg->norm, &cfg->act, &cfg->positions, &cfg->mlp_bias};
    char ckpt[1300], err[1024];
    if (a->resume && a->out && checkpoint_latest(a->out, ckpt, sizeof(ckpt)) == 0) {
        ModelConfig saved;
        if (model_config_from_json(&saved, ckpt, err, sizeof(err)) != 0) die("resume: %s", err);
        int have[4] = {saved.norm, saved.act, saved.positions, saved.mlp_bias};
        const char *const *names[4] = {norm_names, act_names, positions_names, NULL};
        for (int i = 0; i < 4; i++) {
            if (given[i] && want[i] != have[i])
                die("%s %s: the checkpoint %s has %s %s", flag[i], given[i], ckpt, flag[i] + 2,
                    names[i] ? names[i][have[i]] : have[i] ? "1" : "0");
            *field[i] = have[i];
        }
        return;
    }
    size_t before[NUM_PARAM_TENSORS], after[NUM_PARAM_TENSORS];
    param_sizes(cfg, NULL, before);
    for (int i = 0; i < 4; i++) {
        if (!given[i]) continue;
        *field[i] = want[i];
        param_sizes(cfg, NULL, after);
        if (a->init_from && memcmp(before, after, sizeof(before)))
            die("%s %s: changes the weights of --init-from %s (train from scratch with --model instead)", flag[i], given[i],
                a->init_from);
    }
}

/* The model config: from --init-from's folder, a preset, or a config.json, with the feature flags; checked
   against the flags. */
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
    apply_features(cfg, a);
    if (model_config_validate(cfg, err, sizeof(err)) != 0) die("model config: %s", err);
    if (cfg->positions == POS_LEARNED && a->seq_len > cfg->max_seq_len)
        die("--seq-len %d exceeds the model's %d positions", a->seq_len, cfg->max_seq_len);
    if (a->eod_mask_loss && cfg->eos_token_id < 0) die("--eod-mask-loss needs eos_token_id in the model config");
    if (a->reset_attention_mask && cfg->eos_token_id < 0) die("--reset-attention-mask needs eos_token_id in the model config");
    if (a->reset_position_ids && cfg->eos_token_id < 0) die("--reset-position-ids needs eos_token_id in the model config");
}

static int lr_style(const char *s) {
    if (!strcmp(s, "cosine")) return LR_COSINE;
    if (!strcmp(s, "linear")) return LR_LINEAR;
    if (!strcmp(s, "constant")) return LR_CONSTANT;
    die("--lr-schedule must be cosine, linear or constant, got \"%s\"", s);
    return 0;
}

/* Sampling the next token from the logits l of one position, at temperature t (0 stands for 1e-6: the most
   likely token): p_v = exp((l_v - l_max) / t) / sum, over the top_k most likely tokens, or over all V when
   top_k is 0 or >= V. The token drawn is the first whose cumulative p exceeds coin, in [0, 1): among the top
   k in order of falling logit (ties: the lower id first); over all V in id order, which needs no sort. */

/* does token a rank below token b (a smaller logit, or an equal one and a larger id)? */
static int ranks_below(const float *logits, int a, int b) {
    return logits[a] < logits[b] || (logits[a] == logits[b] && a > b);
}

/* restores the heap h[0..n) below position i: every entry ranks below neither of its children (the root is
   the lowest ranked) */
static void sift_down(const float *logits, int *h, int n, int i) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && ranks_below(logits, h[c + 1], h[c])) c++;
        if (!ranks_below(logits, h[c], h[i])) return;
        int x = h[i]; h[i] = h[c]; h[c] = x;
        i = c;
    }
}

/* the k highest ranked tokens into idx[0..k), highest first: a heap of the best k so far, its lowest at the
   root, then sorted by taking the root out k times (O(V log k), no sort of the vocabulary) */
static void top_k_tokens(const float *logits, int V, int k, int *idx) {
    for (int v = 0; v < k; v++) idx[v] = v;
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(logits, idx, k, i);
    for (int v = k; v < V; v++)
        if (ranks_below(logits, idx[0], v)) { idx[0] = v; sift_down(logits, idx, k, 0); }
    for (int n = k - 1; n > 0; n--) {
        int x = idx[0]; idx[0] = idx[n]; idx[n] = x;
        sift_down(logits, idx, n, 0);
    }
}

/* the token whose cumulative p first exceeds coin, walking ids[0..n) (or the ids 0..n-1 when ids is NULL);
   p_i = exp((l_i - l_top) / t) / sum. The top token is returned only when a logit is nan. */
static int draw_by_cdf(const float *logits, const int *ids, int n, int top, float t, float coin) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((logits[ids ? ids[i] : i] - logits[top]) / t);
    double r = coin * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += exp((logits[ids ? ids[i] : i] - logits[top]) / t);
        if (r < acc) return ids ? ids[i] : i;
    }
    return top;
}

static int sample_token(const float *logits, int V, float temperature, int top_k, float coin) {
    float t = temperature > 0 ? temperature : 1e-6f;
    if (top_k <= 0 || top_k >= V) {   /* all V, in id order: O(V) */
        int top = 0;
        for (int v = 1; v < V; v++) if (logits[v] > logits[top]) top = v;
        return draw_by_cdf(logits, NULL, V, top, t, coin);
    }
    int *idx = (int *)malloc(top_k * sizeof(int));
    top_k_tokens(logits, V, top_k, idx);
    int pick = draw_by_cdf(logits, idx, top_k, idx[0], t, coin);
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
    MegatronGPT megatron[MAX_BLEND];   /* --data-order megatron: the training datasets */
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
    double wv[MAX_BLEND], given[MAX_BLEND];
    uint64_t train_begin[MAX_BLEND], train_end[MAX_BLEND];
    int nvalid = 0, megatron = !strcmp(a->data_order, "megatron");
    memcpy(given, w, sizeof(w));
    for (int i = 0; i < d->n; i++) {
        IndexedDataset *ds = &d->ds[i];
        if (indexed_dataset_open(ds, prefixes[i], err, sizeof(err)) != 0) die("%s", err);
        uint64_t sb[3], se[3];
        if (split_sequences(a->split, ds->num_seqs, sb, se, err, sizeof(err)) != 0) die("%s", err);
        /* every token the run reads (the training split, and the validation split when it evaluates) is an id of
           the model's vocabulary: checked here, once, before any step */
        int evaluates = se[1] > sb[1] && a->eval_every > 0;
        if (indexed_dataset_check_ids(ds, sb[0], evaluates ? se[1] : se[0], vocab_size, err, sizeof(err)) != 0) die("%s", err);
        train_begin[i] = sb[0]; train_end[i] = se[0];
        /* each dataset's stream gets its own seed, so two blended copies of one file do not march in step */
        if (!megatron && sampler_init(&d->train[i], ds, sb[0], se[0], a->seq_len, a->seed + 1000003ULL * i, 1, err, sizeof(err)) != 0)
            die("train split: %s", err);
        uint64_t tokens = (uint64_t)(ds->seq_start[se[0]] - ds->seq_start[sb[0]]);
        if (w[i] < 0) w[i] = (double)tokens;
        tr[i] = &d->train[i];
        d->train_tokens += tokens;
        if (evaluates) {
            if (sampler_init(&d->valid[i], ds, sb[1], se[1], a->seq_len, a->seed, 0, err, sizeof(err)) != 0)
                die("validation split: %s", err);
            va[nvalid] = &d->valid[i]; wv[nvalid++] = w[i];
        }
    }
    if (megatron) {
        /* Megatron builds its indices for the samples of the whole run (--train-iters x global batch) */
        long long target = (long long)a->steps * a->batch_size * a->grad_accum * (a->nproc / a->tp / a->pp) * a->nnodes;
        if (target < 1) target = 1;
        if (megatron_blend_init(&d->train_blend, d->megatron, d->n, given, d->ds, train_begin, train_end, a->seq_len,
                                (uint32_t)a->seed, target, err, sizeof(err)) != 0)
            die("train split: %s", err);
        if (d->train_blend.size < target)
            die("--data-order megatron: the blend without weights holds %lld samples (one epoch of each dataset, as "
                "Megatron builds it), fewer than the %lld of --steps x global batch; give weights", (long long)d->train_blend.size, target);
    } else
        blend_init(&d->train_blend, d->n, w, tr);
    d->have_valid = nvalid > 0;
    if (d->have_valid) blend_init(&d->valid_blend, nvalid, wv, va);
}

static void close_data(Data *d) {
    for (int i = 0; i < d->n; i++) {
        sampler_free(&d->train[i]);
        megatron_gpt_free(&d->megatron[i]);
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
    /* the positions --eod-mask-loss drops (Megatron's: where the input is EOD); a checkpoint that does not
       say so masked the targets, and resuming it under the other rule is refused */
    if (a->eod_mask_loss) json_object_set_new(o, "eod_mask", json_string("input"));
    if (a->reset_attention_mask) json_object_set_new(o, "reset_attention_mask", json_true());
    if (a->reset_position_ids) json_object_set_new(o, "reset_position_ids", json_true());
    if (strcmp(a->data_order, "default")) {   /* Megatron's order depends on the run's length */
        json_object_set_new(o, "data_order", json_string(a->data_order));
        json_object_set_new(o, "megatron_samples", json_integer((json_int_t)a->steps * a->batch_size * a->grad_accum * world));
    }
    if (schedule && (a->tp > 1 || a->pp > 1))
        json_object_set_new(o, "tensor_parallel", json_pack("{s:i,s:b,s:i}", "tp", a->tp, "sp", a->sp, "pp", a->pp));
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
        static char saved_style[32];   /* the checkpoint's name, kept for the rest of the run */
        if (!a->schedule) { snprintf(saved_style, sizeof(saved_style), "%s", style ? style : "cosine"); a->schedule = saved_style; }
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
    m->reset_attention = a->reset_attention_mask; m->reset_positions = a->reset_position_ids; m->eod = cfg->eos_token_id;
}

/* A checkpoint is the whole model whatever the layout that saved it, so a resume may change --tp / --sp / --pp; the sums
   then run in another order, and a line says the run is not bit-exact with one that kept its layout. */
static void resume_layout_note(const char *saved, const Args *a, int verbose) {
    json_t *root = json_loads(saved, 0, NULL), *t = json_object_get(root, "tensor_parallel");
    int tp = t ? (int)json_integer_value(json_object_get(t, "tp")) : 1, sp = t ? json_is_true(json_object_get(t, "sp")) : 0;
    json_t *ppj = json_object_get(t, "pp");
    int pp = ppj ? (int)json_integer_value(ppj) : 1;
    json_decref(root);
    if (verbose && (tp != a->tp || sp != a->sp || pp != a->pp))
        printf("resume: the checkpoint was saved with --tp %d%s --pp %d, this run has --tp %d%s --pp %d: it goes on from the "
               "same weights, but sums run in another order, so it is not bit-exact with a run that kept the layout\n",
               tp, sp ? " --sp" : "", pp, a->tp, a->sp ? " --sp" : "", a->pp);
}

/* Saving with --tp or --pp: a model's ranks put the whole model together. Each writes the runs of its parameters and
   AdamW moments that it owns (tp_unslice; zeros elsewhere) into whole buffers, and sum (every rank of the model
   group calls it: a collective) adds them over the group. The caller frees whole (model_free). */
static void put_whole_model(Model *whole, const Model *m, const ModelConfig *cfg,
                            void (*sum)(void *ctx, float *buf, size_t n), void *ctx) {
    if (model_build(whole, cfg) != 0 || model_alloc_moments(whole) != 0) die("out of memory putting the model together");
    const float *mine[3] = {m->params_memory, m->m_memory, m->v_memory};
    float *all[3] = {whole->params_memory, whole->m_memory, whole->v_memory};
    for (int i = 0; i < 3; i++) {
        tp_unslice(m, all[i], mine[i]);
        sum(ctx, all[i], whole->num_params);
    }
}

/* The pipeline's stages (--pp, --pp-layers) of the whole model cfg into stages[0 .. a->pp): the counts given, or
   balanced by parameters (pp_stages); a bad list or layout is a one-line error naming the flag. */
static void pp_layout(const Args *a, const ModelConfig *cfg, PipelineStage *stages) {
    char err[512];
    int *layers = NULL;
    if (a->pp_layers) {
        layers = (int *)calloc((size_t)a->pp, sizeof(int));
        if (!layers) die("out of memory");
        const char *p = a->pp_layers;
        for (int s = 0; s < a->pp; s++) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > INT_MAX || (s + 1 < a->pp ? *end != ',' : *end != 0))
                die("--pp-layers %s: give %d positive layer counts separated by commas", a->pp_layers, a->pp);
            layers[s] = (int)v; p = end + 1;
        }
    }
    if (pp_stages(cfg, a->pp, layers, stages, err, sizeof(err)) != 0) die("--pp %d: %s", a->pp, err);
    free(layers);
}

/* The rank's loader (rows rank, rank + world, ... of each batch; rank and world: data-parallel; the EOD mask) and
   the starting weights (main_rank: the process that prints and writes --out): with
   --resume and a checkpoint in --out, the checkpoint (weights, AdamW moments, step, data position; its run
   settings must match these; its LR schedule goes on, resolve_schedule); else --init-from's HF weights; else a
   fresh init. Rank 0 first takes --out (lock_run_folder, checkpoint_clean) and, resumed, trims its log.
   ts->run_flags gets this run's settings. Returns 1 when resumed. */
static int start_weights(Model *m, TrainState *ts, DataLoader *dl, Data *data, Args *a, const ModelConfig *cfg,
                         int rank, int world, int main_rank) {
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
        resume_layout_note(ts->run_flags, a, main_rank);
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

/* "saved DIR", and when config.json needed its "llmtrain" object, that transformers cannot load it as written. */
static void print_saved(const char *saved, const ModelConfig *cfg) {
    char extras[256];
    printf("saved %s\n", saved);
    if (model_config_extras(cfg, extras, sizeof(extras)) > 0)
        printf("%s: transformers cannot load this %s model as written (%s: see \"llmtrain\" in config.json)\n", saved,
               family_name(cfg->family), extras);
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
    printf("features: %s norm, %s MLP%s, positions %s\n", norm_names[cfg->norm], act_names[cfg->act],
           cfg->mlp_bias ? " with biases" : "", positions_names[cfg->positions]);
    printf("data %s: %d dataset(s), %llu train tokens/epoch, windows of %d\n", a->data, data->n,
           (unsigned long long)data->train_tokens, a->seq_len);
    for (int i = 0; i < data->n && data->train_blend.megatron[i]; i++) {
        const MegatronGPT *g = data->train_blend.megatron[i];
        printf("megatron order: dataset %d: %lld samples over %lld epoch(s)%s%s", i, (long long)g->num_samples, (long long)g->num_epochs,
               g->separate_last ? " (the last shuffled apart)" : "", i + 1 == data->n ? "" : "\n");
        if (i + 1 == data->n) printf("; the blend: %lld samples\n", (long long)data->train_blend.size);
    }
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
