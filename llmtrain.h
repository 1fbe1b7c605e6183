/*
 llmtrain.h — GPT-2, LLaMA and Qwen decoders trained on the CPU, in one header.

 stb-style: every file may include it for the declarations; exactly one file defines
 LLMTRAIN_IMPLEMENTATION before including it to get the definitions.

 Sections, in reading order. The model and its training math first, in plain C on libc and OpenMP:
   config     ModelConfig: sizes and features (norm, activation, positions, biases, q/k norm, attention
              window and scaling); the family sets only their defaults; named presets
   layout     one flat fp32 buffer for params, one for grads, one for activations; named pointers
   layers     <layer>_forward / <layer>_backward, fp32, OpenMP
   model      model_forward / model_backward / model_zero_grad, built from the layers
   optimizer  AdamW on a [begin,end) slice of the flat params, grad-norm clipping, LR schedule
   rng        a counter-based RNG (the same sequence wherever it is computed)
 then the plumbing that connects it to files and processes (the implementation marks where it starts):
   config.json  a Hugging Face config read and written (Jansson)
   data       Megatron MMIDIDX .bin/.idx reader (mmap), the window samplers, Megatron's sample order
   io         safetensors read/write, HF parameter names, checkpoints
   comm       ZeRO-1 shards and the CPU ranks' collectives (forked processes, shared memory)

 Conventions: shapes are passed explicitly (B batch, T time, C channels, NH query heads, NKV key/value
 heads, HD head dim, F MLP width, V vocab). Every backward function ACCUMULATES (+=) into the gradients
 it writes, so residual branches and gradient accumulation need no extra code. Reductions run in a
 fixed order, so a run repeats bit for bit with the same thread count.
 Dependencies: the C library and OpenMP; the plumbing also Jansson (config.json and safetensors headers).
*/
#ifndef LLMTRAIN_H
#define LLMTRAIN_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------------------------------ */
/* config */

enum { FAMILY_GPT2 = 0, FAMILY_LLAMA = 1, FAMILY_QWEN2 = 2, FAMILY_QWEN3 = 3 };
enum { NORM_LAYERNORM = 0, NORM_RMSNORM = 1 };
enum { ACT_GELU_TANH = 0, ACT_SWIGLU = 1 };
enum { POS_LEARNED = 0, POS_ROPE = 1, POS_NONE = 2 };

typedef struct {
    int family;          /* FAMILY_*: only the defaults of the features below and the HF names */
    int norm;            /* NORM_*: every norm on the residual stream; LayerNorm has a bias */
    int act;             /* ACT_*: MLP act(fc(x)); SwiGLU: fc has 2F rows (gate | up) */
    int positions;       /* POS_*: a learned wpe table, RoPE on q/k, or no positions (NoPE) */
    int mlp_bias;        /* biases on the MLP's fc and proj (SwiGLU: fc's bias has 2F entries) */
    int vocab_size;      /* V: rows of the embedding and of the lm_head */
    int max_seq_len;     /* POS_LEARNED: rows of the position table (the longest sequence); else max_position_embeddings */
    int n_layer;         /* L */
    int n_embd;          /* C */
    int n_head;          /* NH */
    int n_kv_head;       /* NKV (== NH without grouped-query attention) */
    int head_dim;        /* HD (C / NH unless the config sets it) */
    int d_ff;            /* F: MLP hidden width */
    float norm_eps;
    float rope_theta;
    int rope_llama3;     /* 1: llama3 rope_scaling applied to the inverse frequencies */
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    int tie_embeddings;  /* lm_head shares the token embedding */
    int qkv_bias;        /* biases on the q/k/v projections (GPT-2, Qwen2, LLaMA/Qwen3 attention_bias) */
    int o_bias;          /* bias on the attention output projection (GPT-2, LLaMA/Qwen3 attention_bias) */
    int qk_norm;         /* per-head RMSNorm on q and k before RoPE (Qwen3) */
    int attn_unscaled;   /* GPT-2 scale_attn_weights false: scores not divided by sqrt(HD) */
    int attn_by_layer;   /* GPT-2 scale_attn_by_inverse_layer_idx: layer l's scores also divided by l + 1 */
    int attn_upcast;     /* GPT-2 reorder_and_upcast_attn: fp32 scores (always so here); kept for config.json */
    int sliding_window;  /* > 0: layers l >= max_window_layers see only the last sliding_window positions */
    int max_window_layers;
    int bos_token_id, eos_token_id;
} ModelConfig;

const char *family_name(int family);
/* Named presets: gpt2-124m, gpt2-350m, tiny-gpt2, tiny-llama, tiny-qwen3, llama-1b. 0 on success. */
int model_config_preset(ModelConfig *cfg, const char *name);
/* Reads a Hugging Face config.json (a file, or a directory holding config.json). 0 on success,
   else -1 with a one-line message in err naming the file and the key. */
int model_config_from_json(ModelConfig *cfg, const char *path, char *err, size_t errlen);
/* The features of cfg that its family's HF config.json cannot express (they go to config.json's "llmtrain"
   object), as text into buf ("norm rmsnorm, activation swiglu"); returns how many (0: transformers loads it). */
int model_config_extras(const ModelConfig *cfg, char *buf, size_t n);
/* The names of the feature values, for flags and config.json: "layernorm"/"rmsnorm", "gelu"/"swiglu",
   "learned"/"rope"/"none". */
extern const char *const norm_names[2], *const act_names[2], *const positions_names[3];
/* Checks sizes are positive and consistent; 0 if fine, else -1 with the reason in err. */
int model_config_validate(const ModelConfig *cfg, char *err, size_t errlen);
/* Layer l's sliding attention window (0: full causal attention). */
int attention_window(const ModelConfig *cfg, int l);
/* Writes cfg as a Hugging Face config.json string (malloc'ed). */
char *model_config_to_json(const ModelConfig *cfg);

/* ------------------------------------------------------------------------------------------------ */
/* layout */

/* The parameter tensors, in the order they sit in the flat buffer. Per-layer tensors hold all L layers
   back to back ([L][...]). A tensor the family does not have has size 0. */
enum {
    P_WTE,    /* [V, C]        token embedding */
    P_WPE,    /* [P, C]        learned positions (GPT-2) */
    P_LN1W,   /* [L, C]        norm before attention (LayerNorm weight or RMSNorm weight) */
    P_LN1B,   /* [L, C]        LayerNorm bias (GPT-2) */
    P_WQKV,   /* [L, QKV, C]   q, k, v projections stacked by rows: NH*HD q rows, NKV*HD k rows, NKV*HD v rows */
    P_BQKV,   /* [L, QKV]      their biases */
    P_QNW,    /* [L, HD]       Qwen3 per-head q RMSNorm weight */
    P_KNW,    /* [L, HD]       Qwen3 per-head k RMSNorm weight */
    P_WO,     /* [L, C, NH*HD] attention output projection */
    P_BO,     /* [L, C]        its bias (GPT-2) */
    P_LN2W,   /* [L, C]        norm before the MLP */
    P_LN2B,   /* [L, C]        (GPT-2) */
    P_WFC,    /* [L, FC, C]    MLP in: GPT-2 FC = F; SwiGLU FC = 2F (F gate rows, then F up rows) */
    P_BFC,    /* [L, F]        (GPT-2) */
    P_WPROJ,  /* [L, C, F]     MLP out (GPT-2 c_proj, LLaMA down_proj) */
    P_BPROJ,  /* [L, C]        (GPT-2) */
    P_LNFW,   /* [C]           final norm */
    P_LNFB,   /* [C]           (GPT-2) */
    P_LMHEAD, /* [V, C]        lm_head when not tied */
    NUM_PARAM_TENSORS
};

typedef struct {
    float *wte, *wpe, *ln1w, *ln1b, *wqkv, *bqkv, *qnw, *knw, *wo, *bo, *ln2w, *ln2b,
          *wfc, *bfc, *wproj, *bproj, *lnfw, *lnfb, *lmhead;
} ParameterTensors;

/* Activations of one forward pass, kept for the backward pass. Per-layer buffers are [L][B*T*...]. */
enum {
    A_ENCODED,   /* [B,T,C]        embedding output = input of layer 0 */
    A_LN1,       /* [L,B,T,C]      */
    A_LN1_MEAN,  /* [L,B,T]        (LayerNorm only) */
    A_LN1_RSTD,  /* [L,B,T]        */
    A_Q,         /* [L,B,T,NH*HD]  q projection (+bias) */
    A_K,         /* [L,B,T,NKV*HD] */
    A_V,         /* [L,B,T,NKV*HD] */
    A_QN,        /* [L,B,T,NH*HD]  q after the per-head norm (Qwen3) */
    A_KN,        /* [L,B,T,NKV*HD] */
    A_QN_RSTD,   /* [L,B,T,NH]     */
    A_KN_RSTD,   /* [L,B,T,NKV]    */
    A_QR,        /* [L,B,T,NH*HD]  q after RoPE (what attention sees; absent for GPT-2: attention reads A_Q) */
    A_KR,        /* [L,B,T,NKV*HD] */
    A_ATT,       /* [L,B,NH,T,T]   attention probabilities */
    A_ATTY,      /* [L,B,T,NH*HD]  attention output before the output projection */
    A_ATTPROJ,   /* [L,B,T,C]      */
    A_RESID2,    /* [L,B,T,C]      x after the attention residual */
    A_LN2,       /* [L,B,T,C]      */
    A_LN2_MEAN,  /* [L,B,T]        */
    A_LN2_RSTD,  /* [L,B,T]        */
    A_FCH,       /* [L,B,T,FC]     MLP pre-activation (SwiGLU: gate | up) */
    A_FCH_ACT,   /* [L,B,T,F]      after GELU / SwiGLU */
    A_FCPROJ,    /* [L,B,T,C]      */
    A_RESID3,    /* [L,B,T,C]      x after the MLP residual = input of the next layer */
    A_LNF,       /* [B,T,C]        */
    A_LNF_MEAN,  /* [B,T]          */
    A_LNF_RSTD,  /* [B,T]          */
    A_LOGITS,    /* [B,T,V]        */
    A_LSE,       /* [B,T]          log-sum-exp of each logits row */
    A_LOSSES,    /* [B,T]          */
    NUM_ACT_TENSORS
};

typedef struct {
    float *encoded, *ln1, *ln1_mean, *ln1_rstd, *q, *k, *v, *qn, *kn, *qn_rstd, *kn_rstd, *qr, *kr,
          *att, *atty, *attproj, *resid2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_act, *fcproj, *resid3,
          *lnf, *lnf_mean, *lnf_rstd, *logits, *lse, *losses;
} ActivationTensors;

/* Tensor parallelism (Megatron-LM: Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language
   Models Using Model Parallelism"; sequence parallelism: Korthikanti et al. 2022, "Reducing Activation Recomputation
   in Large Transformer Models"): `size` ranks share every layer, each holding a slice of its weights (its heads,
   its columns of the MLP, its rows of the vocabulary; docs/parallelism.md draws them). A tensor-parallel model is
   built from its rank's config (tp_config) and model_forward / model_backward call these collectives over the
   group. size 1 (model_build's default): one rank, no calls. The collectives work in place on n floats; rank r's
   block of them is zero_shard(n, size, r). */
typedef struct {
    int size, rank;
    int sp;              /* sequence parallelism: the norms and residuals run on this rank's block of the rows */
    ModelConfig full;    /* the whole model's config */
    int vocab_begin;     /* this rank's rows of wte / lm_head: [vocab_begin, vocab_begin + cfg.vocab_size) */
    int kv_share;        /* ranks that share each k/v head: n_kv_head < size replicates the heads; 1: split */
    void *ctx;
    void (*all_reduce)(void *ctx, float *x, size_t n);       /* every rank gets the sums */
    void (*all_gather)(void *ctx, float *x, size_t n);       /* every rank gets every rank's block */
    void (*reduce_scatter)(void *ctx, float *x, size_t n);   /* each rank gets the sums of its block */
} TensorParallel;

/* Pipeline parallelism (GPipe: Huang et al. 2019; the 1F1B schedule: Narayanan et al. 2021, "Efficient Large-Scale
   Language Model Training on GPU Clusters Using Megatron-LM"): the layers cut into `size` contiguous stages, one
   per rank. A stage's model has its cfg.n_layer layers from layer0 on; the first stage also the embedding, the
   last the final norm, the lm_head and the loss (and, with tied embeddings, its own copy of wte). A stage after
   the first reads its input from model_stage_input, a stage before the last is given the gradient of its output
   (model_backward_stage) and leaves the gradient of its input in model_stage_input_grad. */
typedef struct {
    int size, rank;
    int layer0, layers;  /* this stage's first layer in the whole model, and its number of layers */
    int embed, head;     /* it holds the embedding (the first stage) / the final norm, lm_head and loss (the last) */
} PipelineStage;

typedef struct {
    ModelConfig cfg;     /* with tensor parallelism: this rank's slice (tp.full is the whole model); with pipeline
                            parallelism n_layer is this stage's */
    TensorParallel tp;
    PipelineStage pp;
    int cur_sp;          /* the last forward ran sequence-parallel (tp.sp, and B*T splits into tp.size blocks) */
    float *tp_parts;     /* [tp.size][2][B*T]: each rank's log-sum-exp and target logit of its vocabulary rows */
    float *tp_all;       /* sequence parallel: [2][B*T, C], the whole rows of a layer's input and of its gradient */
    size_t param_sizes[NUM_PARAM_TENSORS];
    size_t param_offsets[NUM_PARAM_TENSORS];
    size_t num_params;
    float *params_memory;       /* fp32 weights */
    float *grads_memory;        /* their gradients (accumulated over micro-steps) */
    float *m_memory, *v_memory; /* AdamW moments (allocated on the first update) */
    ParameterTensors params, grads;
    int B, T;                   /* the largest batch the activations were allocated for */
    int cur_B, cur_T;           /* the shape of the last forward */
    size_t num_acts;
    float *acts_memory, *grads_acts_memory;
    ActivationTensors acts, grads_acts;
    float *rope_cos, *rope_sin; /* [max T, HD/2] */
    int *inputs, *targets;      /* [B*T] copies of the last batch */
    /* Megatron's --reset-attention-mask / --reset-position-ids: each EOD (id eod) in the inputs ends a document;
       the rows after it see only their own document's keys and count positions from its start */
    int reset_attention, reset_positions, eod;
    int *doc_start, *pos;       /* [B*T] of the last batch (document_starts), when either is on */
    float mean_loss;            /* mean loss of the last forward with targets (-1 if none) */
    int num_valid;              /* targets >= 0 in the last forward */
} Model;

/* ------------------------------------------------------------------------------------------------ */
/* layers (see the definitions for the math) */

/* pos [B*T]: the position of each token (NULL: t), as document_starts makes for --reset-position-ids;
   doc_start [B*T]: the first key each row may see (NULL: 0), for --reset-attention-mask */
void document_starts(int *doc_start, int *pos, const int *inputs, int B, int T, int eod);
void embedding_forward(float *out, const int *tokens, const float *wte, const float *wpe, int B, int T, int C, const int *pos);
void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int B, int T, int C, int V, const int *pos);
/* the same over the rows [v0, v0 + V) of the vocabulary that wte / dwte hold (tensor parallelism) */
void embedding_forward_shard(float *out, const int *tokens, const float *wte, int v0, int V, const float *wpe, int B, int T,
                             int C, const int *pos);
void embedding_backward_shard(float *dwte, float *dwpe, const float *dout, const int *tokens, int v0, int V, int B, int T,
                              int C, const int *pos);
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C, float eps);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C);
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C);
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC);
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int IC, int OC);
/* the plain loops, the reference of the two above */
void matmul_forward_ref(float *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC);
void matmul_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC);
/* C[i*ldc + j] += sum_k A(i,k) B(k,j) (i < M, j < N) with A(i,k) = a[i*sai + k*sak], B(k,j) = b[k*sbk + j*sbj];
   each element summed in a fixed order whatever the thread count */
void sgemm_acc(int M, int N, int K, const float *a, size_t sai, size_t sak, const float *b, size_t sbk, size_t sbj,
               float *c, size_t ldc);
void rope_init(float *cos_table, float *sin_table, const ModelConfig *cfg, int T);
void rope_forward(float *out, const float *inp, const float *cos_table, const float *sin_table, int B, int T, int NH, int HD,
                  const int *pos);
void rope_backward(float *dinp, const float *dout, const float *cos_table, const float *sin_table, int B, int T, int NH, int HD,
                   const int *pos);
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int NH, int NKV, int HD, float scale, int window, const int *doc_start);
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const float *att, int B, int T, int NH, int NKV, int HD, float scale, int window,
                        const int *doc_start);
void gelu_forward(float *out, const float *inp, size_t N);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t N);
void swiglu_forward(float *out, const float *inp, int N, int F);
void swiglu_backward(float *dinp, const float *dout, const float *inp, int N, int F);
void residual_forward(float *out, const float *inp1, const float *inp2, size_t N);
void residual_backward(float *dinp1, float *dinp2, const float *dout, size_t N);
void crossentropy_forward(float *losses, float *lse, const float *logits, const int *targets, int N, int V);
/* vocabulary-parallel: over the columns [v0, v0 + V) of the vocabulary that logits holds; combine: the ranks' parts */
void crossentropy_forward_shard(float *lse, float *target_logit, const float *logits, const int *targets, int N, int V, int v0);
void crossentropy_combine(float *losses, float *lse, const float *parts, const int *targets, int N, int ranks);
/* init: dlogits = the gradient (rows of ignored targets zeroed) instead of += it */
void crossentropy_backward_shard(float *dlogits, const float *logits, const float *lse, const int *targets,
                                 float dloss, int N, int V, int v0, int init);
void crossentropy_backward(float *dlogits, const float *logits, const float *lse, const int *targets,
                           float dloss, int N, int V);

/* ------------------------------------------------------------------------------------------------ */
/* model */

/* Allocates params (and grads) for cfg. Weights are not initialised: call model_init_weights or load. */
int model_build(Model *m, const ModelConfig *cfg);
/* normal(0, std) weights, residual output projections std/sqrt(2L), norm weights 1, biases 0. */
void model_init_weights(Model *m, uint64_t seed, float std);
/* inputs [B*T]; targets [B*T] or NULL. With targets, returns the mean loss over targets >= 0. */
float model_forward(Model *m, const int *inputs, const int *targets, int B, int T);
/* Backward of the last forward (which must have had targets); grads += d(loss * loss_scale)/dparams. */
void model_backward(Model *m, float loss_scale);
void model_zero_grad(Model *m);
/* AdamW's moments m and v, zeroed, where m has none yet. 0, or -1 when out of memory. */
int model_alloc_moments(Model *m);
void model_free(Model *m);

/* pipeline parallelism (PipelineStage) */
/* the `size` stages of the whole model: stage s gets layers[s] layers (layers NULL: as many as keep the largest
   stage's parameters the fewest, every stage at least one). 0, or -1 with the reason in err. */
int pp_stages(const ModelConfig *full, int size, const int *layers, PipelineStage *out, char *err, size_t errlen);
/* Allocates params (and grads) for stage st of the model cfg: its st->layers layers from st->layer0 on. */
int model_build_stage(Model *m, const ModelConfig *cfg, const PipelineStage *st);
/* Where a stage after the first takes its input: the buffer the next forward of B x T starts from, of
   model_stage_floats(m, B, T) floats (the residual stream's rows on this rank: B*T x C, or its sequence-parallel
   block). */
float *model_stage_input(Model *m, int B, int T);
size_t model_stage_floats(const Model *m, int B, int T);
/* A stage's output after a forward: the residual stream its last layer leaves (before the last stage). */
const float *model_stage_output(const Model *m);
/* model_backward on a stage: dout [B*T, C] is the gradient of the stage's output (the next stage's
   model_stage_input_grad; NULL on the last stage, which starts from its loss). */
void model_backward_stage(Model *m, float loss_scale, const float *dout);
/* After model_backward_stage of a stage after the first: the gradient of its input, for the stage before. */
const float *model_stage_input_grad(const Model *m);
/* A micro-batch's context of m: the same weights and gradients, activations of its own (allocated by its first
   forward), so a stage can keep several forwards alive for their backwards; model_view_free frees only those. */
void model_view(Model *view, const Model *m);
void model_view_free(Model *view);
/* floats of activations (and as many of their gradients) a forward of B x T allocates */
size_t model_activation_floats(const Model *m, int B, int T);

/* tensor parallelism (TensorParallel; the layout above tp_config's definition) */
/* rank `rank` of `size`: its config (its heads, k/v heads, d_ff and vocabulary rows) and tp's sizes and full config
   (the collectives are the caller's to set). 0, or -1 with the reason in err (a size that does not divide). */
int tp_config(const ModelConfig *full, int size, int rank, ModelConfig *local, TensorParallel *tp, char *err, size_t errlen);
/* A run of a rank's flat parameters in the whole model's: local[local .. +len) is whole[whole .. +len). owner: the
   one rank that writes a replicated run when the whole model is put together (rank 0; a shared k/v head's first). */
typedef struct { size_t local, whole, len; int owner; } TPRun;
/* the runs of m's flat parameters, in local order, covering all of them (out NULL: only the count) */
size_t tp_runs(const Model *m, TPRun *out);
/* local = this rank's slice of `whole`, a buffer laid out as the whole model's parameters (weights, moments) */
void tp_slice(const Model *m, float *local, const float *whole);
/* the runs this rank owns, from local into whole (the rest untouched): summed over the ranks into a zeroed
   whole, the whole model */
void tp_unslice(const Model *m, float *whole, const float *local);
/* A rank's part of the whole model: slice is built for its config `local` (tp_config's) and pipeline stage st, with
   tp as its TensorParallel, and given its slice of whole's weights and, when whole has them, of its AdamW moments,
   and whole's data settings; then whole is freed. 0, or -1 when out of memory. */
int model_take_slice(Model *slice, Model *whole, const ModelConfig *local, const PipelineStage *st, const TensorParallel *tp);
/* the sum of squares of m's gradients in [begin, end) of its flat buffer, counting a replicated run on its owner
   only: summed over the ranks, the whole model's */
double tp_grad_sumsq(const Model *m, size_t begin, size_t end);
/* once per optimizer step, before the data-parallel reduction: the gradients of replicated weights that each rank
   saw only part of, summed over the group (Qwen3's q/k norms, shared k/v heads, with sequence parallelism the
   norms: the step's forwards must then have run sequence-parallel, B*T a multiple of tp.size) */
void model_tp_reduce_grads(Model *m);
/* 1 if params tensor t gets weight decay (2-D weights), 0 for norms and biases. */
int param_has_decay(int t);
/* 1 if params tensor t holds one slice per layer ([L][...]), 0 for the embeddings, final norm and lm_head. */
int param_is_per_layer(int t);

/* ------------------------------------------------------------------------------------------------ */
/* optimizer */

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} AdamWConfig;

/* One AdamW step on n contiguous values (torch.optim.AdamW semantics, decoupled weight decay). */
void adamw_update(float *params, const float *grads, float *m, float *v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step);
/* The same with the gradients taken times grad_scale (grad_clip's scaling fused into the update: one pass
   over the gradients fewer, the same values as grad_clip then adamw_update). */
void adamw_update_scaled(float *params, const float *grads, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale);
/* AdamW on params [begin, end) of the flat buffer (the ZeRO-1 shard of one rank; all of it on one rank). */
void model_adamw_update(Model *m, const AdamWConfig *opt, int step, size_t begin, size_t end);
/* The same on gradients times grad_scale (grad_clip_scale: clipping without a pass of its own). */
void model_adamw_update_scaled(Model *m, const AdamWConfig *opt, int step, size_t begin, size_t end, float grad_scale);
/* sum of squares of grads[begin, end), in double, in a fixed order */
double grad_sumsq(const float *grads, size_t begin, size_t end);
/* Scales grads by min(1, max_norm / (norm + 1e-6)) (as torch.nn.utils.clip_grad_norm_). */
void grad_clip(float *grads, size_t n, double norm, float max_norm);
/* The factor grad_clip multiplies by (1 when it leaves the gradients alone). */
float grad_clip_scale(double norm, float max_norm);

enum { LR_COSINE = 0, LR_LINEAR = 1, LR_CONSTANT = 2 };
/* lr of update `step` (1-based): linear warmup to max_lr over warmup steps, then decay to min_lr at decay_steps */
float lr_schedule(int step, float max_lr, float min_lr, int warmup, int decay_steps, int style);

/* ------------------------------------------------------------------------------------------------ */
/* rng: counter-based, so value i of stream s can be computed anywhere, in any order */

uint64_t rng_u64(uint64_t seed, uint64_t counter);
float rng_uniform(uint64_t seed, uint64_t counter);   /* [0, 1) */
float rng_normal(uint64_t seed, uint64_t counter);    /* N(0, 1) */
/* perm[0..n) = a seeded random permutation of 0..n-1 (Fisher-Yates) */
void rng_permutation(uint64_t *perm, uint64_t n, uint64_t seed);

/* ------------------------------------------------------------------------------------------------ */
/* data */

typedef struct {
    char path[1024];        /* the prefix */
    int dtype_code;         /* 8 uint16, 4 int32 (Megatron DType codes) */
    int itemsize;
    uint64_t num_seqs;      /* S */
    uint64_t num_docs;      /* D = len(document_indices) - 1 */
    int64_t *doc_start;     /* [D] first token (element index into .bin) of each document */
    int64_t *doc_len;       /* [D] tokens of each document */
    int64_t *seq_start;     /* [S + 1] first token of each sequence (seq_start[S]: the token count) */
    const unsigned char *bin; size_t bin_size;
} IndexedDataset;

/* Opens PREFIX.idx / PREFIX.bin; 0 on success, else -1 with a one-line message in err. */
int indexed_dataset_open(IndexedDataset *ds, const char *prefix, char *err, size_t errlen);
void indexed_dataset_close(IndexedDataset *ds);
int64_t indexed_dataset_token(const IndexedDataset *ds, int64_t element);
/* Checks that every token of sequences [seq_begin, seq_end) is an id of a vocabulary of `vocab`: 0 <= id < vocab.
   0 if so, else -1 with the .bin, the sequence, the token's place in it and the id of the first bad one in err. */
int indexed_dataset_check_ids(const IndexedDataset *ds, uint64_t seq_begin, uint64_t seq_end, int vocab, char *err, size_t errlen);

/* Sequences [seq_begin, seq_end) of a dataset (the units of Megatron's GPT dataset: a document stored as
   several sequences is several units), in a seeded shuffled order per epoch, concatenated and cut into
   windows of T+1 tokens with stride T; the windows are shuffled with the seed. Window k of the stream
   (k counts across epochs) is a pure function of (seed, k). */
typedef struct {
    const IndexedDataset *ds;
    uint64_t seq_begin, seq_end;
    int T;
    uint64_t seed;
    int shuffle;               /* 0: sequences and windows in file order (validation) */
    uint64_t tokens_per_epoch;
    uint64_t windows_per_epoch;
    int64_t epoch;             /* the epoch whose orders are cached below (-1: none) */
    uint64_t *seq_order;       /* [n seqs] */
    uint64_t *seq_cum;         /* [n seqs + 1] token offset of each sequence in the epoch's stream */
    uint64_t *win_order;       /* [windows_per_epoch] */
} Sampler;

int sampler_init(Sampler *s, const IndexedDataset *ds, uint64_t seq_begin, uint64_t seq_end, int T,
                 uint64_t seed, int shuffle, char *err, size_t errlen);
/* Writes the T+1 tokens of stream window k. */
void sampler_window(Sampler *s, uint64_t k, int *out);
void sampler_free(Sampler *s);

/* Splits N units (a GPT dataset's sequences) by weights "949,50,1" into [begin,end) ranges for
   train/valid/test as Megatron does: w normalised to sum 1, boundary i = round(N * (w_0 + ... + w_i))
   with the sums taken left to right and round() half to even (Python's round). 0 on success. */
int split_sequences(const char *spec, uint64_t N, uint64_t begin[3], uint64_t end[3], char *err, size_t errlen);

/* numpy's legacy RandomState (numpy.random.RandomState(seed) with a seed < 2^32): MT19937 seeded by
   init_genrand, the legacy bounded integer (a mask of the bits of max, redrawn until <= max; 32-bit words
   when max < 2^32, else two words high first) and the legacy shuffle (Fisher-Yates from the end). */
typedef struct { uint32_t mt[624]; int pos; } NumpyRandom;
void numpy_random_seed(NumpyRandom *r, uint32_t seed);
uint32_t numpy_random_u32(NumpyRandom *r);
uint64_t numpy_random_interval(NumpyRandom *r, uint64_t max);   /* uniform in [0, max] */
void numpy_random_shuffle(NumpyRandom *r, int64_t *x, int64_t n);
/* numpy.sum of n doubles (its pairwise order, exact for n <= 128) */
double numpy_sum(const double *a, int n);

/* --data-order megatron: the training samples of Megatron's GPTDataset over sequences [seq_begin, seq_end)
   for num_samples requested samples (-1: one epoch, as Megatron builds for a blend without weights): the
   epochs needed, the document index (the split's sequences once per epoch, shuffled with RandomState(seed);
   when the last epoch would be used for less than 80% of its samples it is shuffled on its own), the
   samples (windows of T+1 tokens with stride T over the sequences in that order) and the shuffle index (a
   permutation of the samples; the last epoch's samples on their own when it is separate). Sample j of the
   dataset is window shuffle[j]. */
typedef struct {
    const IndexedDataset *ds;
    uint64_t seq_begin, seq_end;
    int T;
    int64_t tokens_per_epoch, num_epochs, num_samples;   /* num_samples: windows of the sample index */
    int separate_last;
    int64_t ndoc;             /* num_epochs * (seq_end - seq_begin) */
    int64_t *doc_index;       /* [ndoc] sequence ids */
    int64_t *doc_cum;         /* [ndoc + 1] first stream token of each entry */
    int64_t *shuffle;         /* [num_samples] */
} MegatronGPT;

int megatron_gpt_init(MegatronGPT *g, const IndexedDataset *ds, uint64_t seq_begin, uint64_t seq_end, int T, uint32_t seed,
                      int64_t num_samples, char *err, size_t errlen);
/* The T+1 tokens of sample j (j modulo num_samples). */
void megatron_gpt_window(const MegatronGPT *g, uint64_t j, int *out);
void megatron_gpt_free(MegatronGPT *g);

/* A weighted blend of samplers (Megatron's rule, no RNG): stream window s comes from the dataset i with the
   largest w_i * max(s, 1) - count_i, which then serves its own window count_i. One dataset = weight 1.
   With --data-order megatron the datasets are MegatronGPT samples instead (megatron_blend_init). */
#define MAX_BLEND 16
typedef struct {
    int n, T;
    double weights[MAX_BLEND];       /* normalised to sum 1 */
    Sampler *samplers[MAX_BLEND];
    MegatronGPT *megatron[MAX_BLEND];  /* set: the datasets are Megatron's (samplers unused) */
    int64_t size;                    /* megatron: the samples of Megatron's blend (its training length) */
    uint64_t counts[MAX_BLEND];      /* windows taken from each dataset by stream position `pos` */
    uint64_t pos;
} Blend;

void blend_init(Blend *b, int n, const double *weights, Sampler **samplers);
/* Megatron's training dataset for `target` samples over n datasets (sequence ranges [begin[i], end[i]) of
   ds[i]), built as its BlendedMegatronDatasetBuilder does: one dataset without a weight (weights[0] < 0) is
   a GPTDataset of target samples; weights w (normalised): dataset i gets ceil(ceil(target * w_i) * 1.005)
   samples and the blend sum_i ceil(target * w_i); no weights (all < 0, n > 1): one epoch of each, blended by
   their sample counts, min(target, total) samples. Fills g[0..n). 0, or -1 with err. */
int megatron_blend_init(Blend *b, MegatronGPT *g, int n, const double *weights, const IndexedDataset *ds,
                        const uint64_t *begin, const uint64_t *end, int T, uint32_t seed, int64_t target,
                        char *err, size_t errlen);
/* The dataset of blend window k, and that dataset's window index in *sample (fastest when k grows). */
int blend_source(Blend *b, uint64_t k, uint64_t *sample);
/* Writes the T+1 tokens of blend window k (fastest when k grows from call to call). */
void blend_window(Blend *b, uint64_t k, int *out);
/* Parses --data: "PREFIX", "P1 P2 ..." (weights from their token counts, filled in by the caller: -1) or
   "W1 P1 W2 P2 ...". Returns the number of datasets (prefixes point into buf), or -1 with err. */
int parse_data_spec(const char *spec, char *buf, size_t buflen, char **prefixes, double *weights, int max, char *err, size_t errlen);

/* Batches from a blend: micro-batch of B rows per rank; rank r takes windows cursor + r + world*b.
   eod >= 0 drops the loss where the INPUT token is eod (Megatron's loss_mask[tokens == eod] = 0): that
   target becomes -1 (no loss). The prediction of the EOD itself keeps its loss. */
typedef struct {
    Blend *source;
    int B, T, rank, world, eod;
    uint64_t cursor;        /* next stream window of the global batch (the loader state to checkpoint) */
    int *window;            /* [T+1] */
    int *inputs, *targets;  /* [B*T] */
} DataLoader;

void dataloader_init(DataLoader *dl, Blend *source, int B, int rank, int world);
/* The T targets of a window of T+1 tokens: window[t+1], or -1 (no loss) where eod >= 0 and window[t] == eod. */
void window_targets(int *targets, const int *window, int T, int eod);
void dataloader_next(DataLoader *dl);
void dataloader_free(DataLoader *dl);

/* ------------------------------------------------------------------------------------------------ */
/* io */

enum { ST_F32, ST_F16, ST_BF16, ST_I32, ST_I64, ST_U8, ST_OTHER };

typedef struct {
    char name[256];
    int dtype;              /* ST_* */
    int ndim;
    int64_t shape[8];
    uint64_t begin, end;    /* byte range in the data buffer */
} SafeTensor;

typedef struct {
    char path[1024];
    unsigned char *map; size_t size; /* the whole file, mmap'ed */
    const unsigned char *data;       /* start of the byte buffer */
    SafeTensor *tensors; int num_tensors;
    char *metadata_json;             /* the __metadata__ object as JSON text, or NULL */
} SafeTensors;

/* Opens and validates a .safetensors file (header length bound, dtype x shape == byte size, offsets tile
   the buffer, no duplicates). 0 on success, else -1 with a message naming the file and tensor. */
int safetensors_open(SafeTensors *st, const char *path, char *err, size_t errlen);
const SafeTensor *safetensors_find(const SafeTensors *st, const char *name);
int64_t safetensor_numel(const SafeTensor *t);
/* Converts tensor t (F32, BF16 or F16) to fp32, transposing a 2-D tensor when transpose is set. */
int safetensors_read_f32(const SafeTensors *st, const SafeTensor *t, float *dst, int transpose);
void safetensors_close(SafeTensors *st);

/* One named tensor to write. */
typedef struct {
    const char *name;
    int dtype;              /* ST_F32, ST_BF16, ST_F16, ST_I32 or ST_I64 (data already in that type) */
    int ndim;
    int64_t shape[8];
    const void *data;
} SafeTensorOut;
/* Writes a .safetensors file atomically (temp file + fsync + rename). 0 on success. */
int safetensors_write(const char *path, const SafeTensorOut *tensors, int n, const char *metadata_json,
                      char *err, size_t errlen);

/* The HF tensors of a model: their names and shapes, and where each lives in a flat buffer. */
typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];       /* HF shape */
    size_t offset;          /* element offset in the flat params (or grads) buffer */
    int transpose;          /* 1: HF stores the transpose of our [rows, cols] block (GPT-2 Conv1D) */
} HFTensor;
/* Fills list (may be NULL to count) and returns the number of HF tensors of the model. */
int model_hf_tensors(const Model *m, HFTensor *list);
/* Loads weights from a safetensors file with HF names (GPT-2 with or without "transformer."). */
int model_load_safetensors(Model *m, const char *path, char *err, size_t errlen);
/* Saves weights with HF names (model.safetensors, as transformers writes them). */
int model_save_safetensors(const Model *m, const char *path, char *err, size_t errlen);
/* Loads HF weights from a folder: model.safetensors, or the shards listed in model.safetensors.index.json. */
int model_load_hf_dir(Model *m, const char *dir, char *err, size_t errlen);
/* Writes config.json and model.safetensors into dir; with max_shard_bytes > 0 and a larger model, shards
   model-0000i-of-0000n.safetensors plus model.safetensors.index.json instead. */
int model_save_hf_dir(const Model *m, const char *dir, size_t max_shard_bytes, char *err, size_t errlen);
/* Writes a small file atomically: temp file, fsync, rename. */
int write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen);

/* What a checkpoint holds besides the weights (train_state.safetensors). The RNG is counter-based, so the
   step and the seed in run_flags are its whole state. */
typedef struct {
    int64_t step;            /* optimizer steps done */
    uint64_t data_cursor;    /* the next window of the training stream */
    int64_t skipped;         /* steps skipped for a non-finite loss or grad norm */
    char run_flags[4096];    /* JSON object of the settings a resume must match */
} TrainState;

/* Saves OUT/step_%06d/{config.json, model.safetensors, train_state.safetensors, tokenizer.json}: written and
   fsynced in the temp folder OUT/.step_%06d.tmp, moved into place (exchanged with an existing folder of that
   step), then OUT/latest points at it; then removes all but the newest `keep` (keep > 0). OUT/latest names a
   complete checkpoint at every instant. The AdamW moments come from m (zeros before the first update). */
int checkpoint_save(const char *out_dir, const Model *m, const TrainState *ts, const char *tokenizer_path,
                    size_t max_shard_bytes, int keep, char *saved, size_t saved_len, char *err, size_t errlen);
/* For the one run that writes OUT, at its start: finishes a save that a kill interrupted while it moved a
   checkpoint into place, and deletes the temp folders of other interrupted saves (OUT/.step_*). Returns how
   many it deleted, or -1 with err. */
int checkpoint_clean(const char *out_dir, char *err, size_t errlen);
/* The folder OUT/latest names, if it is complete: 0 and its path in dir, or -1. */
int checkpoint_latest(const char *out_dir, char *dir, size_t len);
/* Loads weights, AdamW moments and the train state of a checkpoint folder into a model built from its config. */
int checkpoint_load(const char *dir, Model *m, TrainState *ts, char *err, size_t errlen);
/* Compares two run_flags objects; 0 if equal, else -1 with the first difference in err. */
int run_flags_compare(const char *saved, const char *now, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------------ */
/* comm: the collectives a data-parallel trainer needs. On the CPU the ranks are processes forked from one
   parent, sharing one memory region; reductions add the ranks' values in rank order, so a run repeats
   bit for bit. ZeRO-1: the flat parameters are cut into `world` contiguous shards; rank r owns shard r. */

/* [begin, end) of rank's shard of n values: ceil(n / world) each, the last one shorter */
void zero_shard(size_t n, int world, int rank, size_t *begin, size_t *end);

/* A run [begin, end) of the flat parameters inside one tensor and one rank's shard (owner). */
typedef struct { size_t begin, end; int tensor, owner; } ShardPiece;
/* The gradient pieces that are final once the backward has passed layer l (0 <= l < L): that layer's slice of
   every per-layer tensor; or, for l == L, the tensors outside the layers (embeddings, final norm, lm_head),
   final only at the end of the backward. Each is cut at the borders of zero_shard(num_params, world, .).
   Writes up to cap pieces to out (out may be NULL) and returns how many there are. Over l = 0..L the pieces
   cover [0, num_params) exactly once. A trainer that reduces layer l's pieces as soon as its backward is done
   overlaps the ZeRO reduction with the rest of the backward. */
int zero_grad_pieces(const Model *m, int l, int world, ShardPiece *out, int cap);
/* Every piece, in the order a backward finishes them: layers L-1 .. 0, then the rest. malloc'd; NULL if out of memory. */
ShardPiece *zero_all_grad_pieces(const Model *m, int world, int *count);

typedef struct CommShared CommShared;
typedef struct Comm {
    int rank, world;
    CommShared *sh;          /* shared by all ranks (NULL when world == 1) */
    size_t chunk;            /* floats per rank in the reduction buffer */
    struct Comm *parent;     /* a group's: the Comm of all the ranks (NULL: this is it) */
} Comm;

/* Creates the shared region for `world` ranks, then forks world-1 children; returns in every process with
   its rank set (the parent is rank 0). gather_floats bounds comm_all_gather. 0 on success. */
int comm_init_fork(Comm *c, int world, size_t gather_floats, char *err, size_t errlen);
/* The same, with groups of the ranks (tensor-, data-, pipeline-parallel): grouping k cuts the world by
   color[k * world_n + rank], the ranks of one color forming a group in rank order; out[k] becomes this rank's
   group of grouping k, a Comm of its own (its rank: the place in the group; a group of the whole world is the
   world's Comm). gather[k] bounds grouping k's all-gathers. Every group's shared region is mapped before the
   fork. A rank that fails stops every group. */
int comm_init_fork_groups(Comm *world, int world_n, int ngroupings, const int *color, const size_t *gather, Comm *out,
                          char *err, size_t errlen);
/* Point to point: a one-way queue of messages of up to n floats from one rank to another, `slots` messages deep
   (the sender waits only when they are all unread), mapped before the fork. c: the sender's / receiver's world
   Comm, watched for failures while waiting. */
typedef struct CommQueue CommQueue;
CommQueue *comm_queue_map(size_t n, int slots, char *err, size_t errlen);
void comm_send(Comm *c, CommQueue *q, const float *x, size_t n);
void comm_recv(Comm *c, CommQueue *q, float *x, size_t n);
/* every rank waits for all; a rank that exits or fails makes the others stop with an error */
void comm_barrier(Comm *c);
/* data[0..n) summed over ranks; afterwards rank r holds the sums of its shard zero_shard(n, world, r) */
void comm_reduce_scatter(Comm *c, float *data, size_t n);
/* for each piece, data[begin, end) summed over ranks into rank owner's data (the others' stay as they were) */
void comm_reduce_pieces(Comm *c, float *data, const ShardPiece *p, int n);
/* every rank contributes data[its shard]; afterwards all of data[0..n) is the same on every rank */
void comm_all_gather(Comm *c, float *data, size_t n);
/* data[0..n) summed over the ranks, the same sums on every rank (n <= the gather bound) */
void comm_all_reduce(Comm *c, float *data, size_t n);
/* x[0..k) summed over ranks (k <= 64), the same result on every rank */
void comm_all_reduce_double(Comm *c, double *x, int k);
/* marks the run failed (the other ranks stop at their next collective) */
void comm_abort(Comm *c);
/* rank 0 waits for its children; returns non-zero if one failed */
int comm_finish(Comm *c);

#endif /* LLMTRAIN_H */

/* ================================================================================================ */
#ifdef LLMTRAIN_IMPLEMENTATION

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <omp.h>

/* ------------------------------------------------------------------------------------------------ */
/* config */

const char *family_name(int family) {
    switch (family) {
    case FAMILY_GPT2: return "gpt2";
    case FAMILY_LLAMA: return "llama";
    case FAMILY_QWEN2: return "qwen2";
    case FAMILY_QWEN3: return "qwen3";
    }
    return "?";
}

static void config_defaults(ModelConfig *c, int family) {
    memset(c, 0, sizeof(*c));
    c->family = family;
    c->norm = family == FAMILY_GPT2 ? NORM_LAYERNORM : NORM_RMSNORM;
    c->act = family == FAMILY_GPT2 ? ACT_GELU_TANH : ACT_SWIGLU;
    c->positions = family == FAMILY_GPT2 ? POS_LEARNED : POS_ROPE;
    c->mlp_bias = family == FAMILY_GPT2;
    c->norm_eps = family == FAMILY_GPT2 ? 1e-5f : 1e-6f;
    c->rope_theta = 10000.0f;
    c->tie_embeddings = family == FAMILY_GPT2;
    c->qkv_bias = family == FAMILY_GPT2 || family == FAMILY_QWEN2;
    c->o_bias = family == FAMILY_GPT2;
    c->max_window_layers = 28;   /* the Qwen default; no layer slides while sliding_window is 0 */
    c->qk_norm = family == FAMILY_QWEN3;
    c->bos_token_id = c->eos_token_id = -1;
}

/* A GPT-2 shaped config: d_ff = 4C, head_dim = C/NH. */
static void preset_gpt2(ModelConfig *c, int V, int P, int L, int C, int NH) {
    config_defaults(c, FAMILY_GPT2);
    c->vocab_size = V; c->max_seq_len = P; c->n_layer = L; c->n_embd = C;
    c->n_head = NH; c->n_kv_head = NH; c->head_dim = C / NH; c->d_ff = 4 * C;
    c->bos_token_id = c->eos_token_id = 50256;
}

static void preset_llama(ModelConfig *c, int family, int V, int P, int L, int C, int NH, int NKV, int HD, int F) {
    config_defaults(c, family);
    c->vocab_size = V; c->max_seq_len = P; c->n_layer = L; c->n_embd = C;
    c->n_head = NH; c->n_kv_head = NKV; c->head_dim = HD; c->d_ff = F;
    c->norm_eps = 1e-5f;
}

int model_config_preset(ModelConfig *c, const char *name) {
    if (!strcmp(name, "gpt2-124m")) preset_gpt2(c, 50257, 1024, 12, 768, 12);
    else if (!strcmp(name, "gpt2-350m")) preset_gpt2(c, 50257, 1024, 24, 1024, 16);
    else if (!strcmp(name, "tiny-gpt2")) preset_gpt2(c, 50257, 256, 4, 128, 4);
    else if (!strcmp(name, "tiny-llama")) {
        preset_llama(c, FAMILY_LLAMA, 50257, 256, 4, 128, 4, 2, 32, 344);
        c->tie_embeddings = 1; c->eos_token_id = 50256;
    } else if (!strcmp(name, "tiny-qwen3")) {
        preset_llama(c, FAMILY_QWEN3, 50257, 256, 4, 128, 4, 2, 32, 344);
        c->tie_embeddings = 1; c->eos_token_id = 50256; c->rope_theta = 1000000.0f; c->norm_eps = 1e-6f;
    } else if (!strcmp(name, "llama-1b")) {
        /* LLaMA-3.2-1B shape */
        preset_llama(c, FAMILY_LLAMA, 128256, 2048, 16, 2048, 32, 8, 64, 8192);
        c->rope_theta = 500000.0f; c->tie_embeddings = 1; c->bos_token_id = 128000; c->eos_token_id = 128001;
    } else return -1;
    return 0;
}

int model_config_validate(const ModelConfig *c, char *err, size_t errlen) {
    if (c->vocab_size <= 0 || c->n_layer <= 0 || c->n_embd <= 0 || c->n_head <= 0 || c->n_kv_head <= 0 ||
        c->head_dim <= 0 || c->d_ff <= 0 || c->max_seq_len <= 0) {
        snprintf(err, errlen, "sizes must be positive (vocab %d, layers %d, hidden %d, heads %d, kv heads %d, "
                 "head_dim %d, ff %d, positions %d)", c->vocab_size, c->n_layer, c->n_embd, c->n_head,
                 c->n_kv_head, c->head_dim, c->d_ff, c->max_seq_len);
        return -1;
    }
    if (c->norm != NORM_LAYERNORM && c->norm != NORM_RMSNORM) { snprintf(err, errlen, "unknown norm %d", c->norm); return -1; }
    if (c->act != ACT_GELU_TANH && c->act != ACT_SWIGLU) { snprintf(err, errlen, "unknown activation %d", c->act); return -1; }
    if (c->positions < POS_LEARNED || c->positions > POS_NONE) {
        snprintf(err, errlen, "unknown positions %d", c->positions); return -1;
    }
    if (c->positions == POS_ROPE && c->head_dim % 2 != 0) {
        snprintf(err, errlen, "head_dim %d must be even for RoPE", c->head_dim); return -1;
    }
    if (c->n_head % c->n_kv_head != 0) {
        snprintf(err, errlen, "num_attention_heads %d is not a multiple of num_key_value_heads %d", c->n_head, c->n_kv_head);
        return -1;
    }
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps)) { snprintf(err, errlen, "norm epsilon must be positive and finite"); return -1; }
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta)) { snprintf(err, errlen, "rope_theta must be positive and finite"); return -1; }
    if (c->rope_llama3 && !(c->rope_factor > 0 && c->rope_high_freq_factor > c->rope_low_freq_factor &&
                            c->rope_orig_max_pos > 0)) {
        snprintf(err, errlen, "llama3 rope_scaling needs factor > 0, high_freq_factor > low_freq_factor, "
                 "original_max_position_embeddings > 0"); return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* layers
   Every function works on flat row-major arrays. N = number of rows (usually B*T). Backward functions
   add (+=) into every gradient they write.
   Notation in the derivations: for the loss L and any array x, dx means dL/dx (same shape as x). The
   backward of y = f(x) is the chain rule dx[i] += sum_j dy[j] * J[j,i], J[j,i] = partial y[j] / partial x[i],
   written out per layer with the names the code uses. */

/* document starts (Megatron's _get_ltor_masks_and_position_ids): an EOD at input position i of a row ends a
   document, so the positions after it start a new one:
     doc_start[b,t] = 1 + the last i < t with inputs[b,i] == eod (0 if none);  pos[b,t] = t - doc_start[b,t]
   Rows then attend to keys doc_start[b,t] <= s <= t, and RoPE / learned positions use pos. */
void document_starts(int *doc_start, int *pos, const int *inputs, int B, int T, int eod) {
    for (int b = 0; b < B; b++) {
        int start = 0;
        for (int t = 0; t < T; t++) {
            if (t > 0 && inputs[b * T + t - 1] == eod) start = t;
            if (doc_start) doc_start[b * T + t] = start;
            if (pos) pos[b * T + t] = t - start;
        }
    }
}

/* embedding: out[b,t,:] = wte[tok[b,t],:] + wpe[p,:], p = pos[b,t] (or t when pos is NULL; wpe may be NULL:
   no learned positions)
   backward: out[b,t,c] is wte[tok,c] + wpe[p,c], derivative 1 for those two entries and 0 for every other
   row, so each row of dout is added back into the rows it was read from (a scatter-add):
     dwte[tok[b,t],:] += dout[b,t,:];   dwpe[p,:] += dout[b,t,:]
   (in the code d is the row of dout, e and p the rows of dwte and dwpe it is added to)
   A token that occurs k times gets the sum of its k rows; rows never read get nothing; tokens get no
   gradient (they are indices). Two (b,t) with the same token write the same row, so threads split the
   channels (c0..c1), not the rows: every sum runs in (b,t) order on every run. */
/* The _shard versions: wte holds only the rows [v0, v0 + V) of the vocabulary (a tensor-parallel rank's). A token
   outside them reads a zero row and adds to no row: the rank holding it does, and the sum over the ranks is the
   whole embedding (model_forward's tp_leave_forward). The plain versions: the whole vocabulary. */
void embedding_forward_shard(float *out, const int *tokens, const float *wte, int v0, int V, const float *wpe, int B, int T,
                             int C, const int *pos) {
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            int row = tokens[b * T + t] - v0;
            const float *e = row >= 0 && row < V ? wte + (size_t)row * C : NULL;
            const float *p = wpe ? wpe + (size_t)(pos ? pos[b * T + t] : t) * C : NULL;
            for (int c = 0; c < C; c++) o[c] = (e ? e[c] : 0.0f) + (p ? p[c] : 0.0f);
        }
}

void embedding_forward(float *out, const int *tokens, const float *wte, const float *wpe, int B, int T, int C, const int *pos) {
    embedding_forward_shard(out, tokens, wte, 0, INT_MAX, wpe, B, T, C, pos);
}

void embedding_backward_shard(float *dwte, float *dwpe, const float *dout, const int *tokens, int v0, int V, int B, int T,
                              int C, const int *pos) {
    const int CB = 32;
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += CB) {
        int c1 = c0 + CB < C ? c0 + CB : C;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const float *d = dout + ((size_t)b * T + t) * C;
                int row = tokens[b * T + t] - v0;
                if (row >= 0 && row < V) { float *e = dwte + (size_t)row * C; for (int c = c0; c < c1; c++) e[c] += d[c]; }
                if (dwpe) { float *p = dwpe + (size_t)(pos ? pos[b * T + t] : t) * C; for (int c = c0; c < c1; c++) p[c] += d[c]; }
            }
    }
}

void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int B, int T, int C, int V, const int *pos) {
    embedding_backward_shard(dwte, dwpe, dout, tokens, 0, V, B, T, C, pos);
}

/* layernorm, per row of C: m = sum(x)/C, s = rstd = 1/sqrt(sum((x-m)^2)/C + eps), n = (x-m)*s, y = n*w + b
   backward, per row (mean() is over the C channels):
     dn[c] = dy[c] * w[c]                          (dn; the code recomputes it as dy[c]*weight[c])
     n depends on x[i] directly and through m and s: partial m / partial x[i] = 1/C and
     partial s / partial x[i] = -s^3 (x[i]-m) / C (the m term drops out: sum(x-m) = 0), so
     J[c,i] = partial n[c] / partial x[i] = s (delta(c,i) - 1/C - n[c] n[i] / C)
     dx[i] = sum_c dn[c] J[c,i] = s * (dn[i] - mean(dn) - n[i] * mean(dn*n))
     code: dn_mean = mean(dn), dn_n_mean = mean(dn*n), nrm = n[i];  dx[c] += s * (dn - dn_mean - nrm*dn_n_mean)
   w and b are shared by all rows, so their gradients sum over rows:
     dw[c] += sum_rows dy[c]*n[c];  db[c] += sum_rows dy[c]
   (second loop: threads own channel blocks c0..c1 and add the rows in order, so the sums are deterministic) */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                       const float *bias, int N, int C, float eps) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float m = 0.0f;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        float var = 0.0f;
        for (int c = 0; c < C; c++) { float d = x[c] - m; var += d * d; }
        var /= C;
        float s = 1.0f / sqrtf(var + eps);
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m; rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        float dn_mean = 0.0f, dn_n_mean = 0.0f;
        for (int c = 0; c < C; c++) {
            float dn = dy[c] * weight[c];
            dn_mean += dn;
            dn_n_mean += dn * (x[c] - m) * s;
        }
        dn_mean /= C; dn_n_mean /= C;
        float *dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            float nrm = (x[c] - m) * s;
            dx[c] += s * (dy[c] * weight[c] - dn_mean - nrm * dn_n_mean);
        }
    }
    const int CB = 32;
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += CB) {
        int c1 = c0 + CB < C ? c0 + CB : C;
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) {
                dweight[c] += dy[c] * (x[c] - mean[n]) * rstd[n];
                dbias[c] += dy[c];
            }
        }
    }
}

/* rmsnorm, per row of C: s = rstd = 1/sqrt(sum(x^2)/C + eps), n = x*s, y = n*w
   backward: as layernorm without the mean: dn[c] = dy[c]*w[c], partial s / partial x[i] = -s^3 x[i] / C, so
     J[c,i] = partial n[c] / partial x[i] = s (delta(c,i) - n[c] n[i] / C),  dx[i] = s * (dn[i] - n[i] * mean(dn*n))
     code: dn_n_mean = mean(dy*w*x*s) = mean(dn*n);  dx[c] += s * (dy[c]*weight[c] - x[c]*s * dn_n_mean)
     dw[c] += sum_rows dy[c]*n[c]   (second loop: channel blocks, rows in order)
   Also the per-head q/k norm of Qwen3: called with N = B*T*heads rows of C = HD, one row per head vector,
   so each head is normalised on its own and the one weight [HD] (qnw / knw) sums its gradient over all
   B*T*heads rows. */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float s = 1.0f / sqrtf(ss / C + eps);
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = x[c] * s * weight[c];
        rstd[n] = s;
    }
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float s = rstd[n], dn_n_mean = 0.0f;
        for (int c = 0; c < C; c++) dn_n_mean += dy[c] * weight[c] * x[c] * s;
        dn_n_mean /= C;
        float *dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) dx[c] += s * (dy[c] * weight[c] - x[c] * s * dn_n_mean);
    }
    const int CB = 32;
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += CB) {
        int c1 = c0 + CB < C ? c0 + CB : C;
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dweight[c] += dy[c] * x[c] * rstd[n];
        }
    }
}

static inline float dot_f32(const float *a, const float *b, int n) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpy_f32(float *y, float a, const float *x, int n) {
    #pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

/* matmul: out[n,o] = sum_i inp[n,i] * w[o,i] + bias[o]      (w is [OC, IC], the layout of torch Linear)
   In matrices: out = inp W^T + bias, inp [N,IC], W [OC,IC], out [N,OC].
   backward: out[n,o] is linear in each input; its coefficient is w[o,i] for inp[n,i], inp[n,i] for w[o,i]
   (in every row n), and 1 for bias[o] (in every row n). Summing dout times those coefficients:
             dinp[n,i] += sum_o dout[n,o] * w[o,i]       dinp = dout W        [N,OC] x [OC,IC]
             dw[o,i]   += sum_n dout[n,o] * inp[n,i]     dW   = dout^T inp    [OC,N] x [N,IC]
             dbias[o]  += sum_n dout[n,o]                db   = the column sums of dout
   The plain loops first: the definition, and the reference the tests hold the fast version to. */
void matmul_forward_ref(float *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float s = bias ? bias[o] : 0.0f;
            for (int i = 0; i < IC; i++) s += inp[(size_t)n * IC + i] * weight[(size_t)o * IC + i];
            out[(size_t)n * OC + o] = s;
        }
}

void matmul_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float d = dout[(size_t)n * OC + o];
            for (int i = 0; i < IC; i++) {
                if (dinp) dinp[(size_t)n * IC + i] += d * weight[(size_t)o * IC + i];
                dweight[(size_t)o * IC + i] += d * inp[(size_t)n * IC + i];
            }
            if (dbias) dbias[o] += d;
        }
}

/* The fast matmul: all three products above are one operation, C[M,N] += A[M,K] B[K,N] (sgemm), with A and B
   read through strides, so one kernel serves them all:
     forward  out   = bias + inp  . w^T    M = rows, K = IC,   N = OC   (A row-major, B = w read transposed)
     dinp    dinp  += dout . w            M = rows, K = OC,   N = IC   (both row-major)
     dweight dw    += dout^T . inp        M = OC,   K = rows, N = IC   (A = dout read transposed)
   Why blocks. An FMA unit does 2 flops per lane per cycle, but only on data in registers; memory delivers far
   less than one float per FMA. Each level of blocking reuses what the level below loaded:
   - registers: the micro-kernel keeps an MM_MR x MM_NR tile of C in MM_MR * MM_NV vector registers. Each step
     over k loads MM_NV vectors of B and broadcasts MM_MR scalars of A, for MM_MR * MM_NV FMAs: 8 x 3 with
     16-float vectors (AVX-512, 32 registers) is 24 FMAs per 11 loads; 6 x 2 with 8-float vectors (AVX2, 16
     registers) is 12 per 8.
   - L1/L2: a micro-panel of B (MM_KC x MM_NR floats: 24 KiB for AVX2, 72 KiB for AVX-512) stays in L1, or
     for AVX-512 in L2 just below it, while the micro-kernel walks down all the A micro-panels of the block.
   - MM_KC = 384 rather than 256: C is read and written once per k slice, so fewer slices mean less C traffic
     (2 vs 3 passes at K = 768); measured 3-10% faster over a GPT-2 step's shapes on an AVX-512 core.
   - L2: the A block (MM_MC x MM_KC) stays in L2 while the loop walks across the B panel.
   - packing: before use, A and B blocks are copied into the order the micro-kernel reads them (A as columns
     of MM_MR, B as rows of MM_NR, zero-padded at the edges), so every load in the kernel is sequential and
     aligned whatever the strides of the source; the copy is paid once per block and amortized over the
     block's MM_KC x MM_MC x MM_NC FMAs.
   Threads: OpenMP shares out chunks of C's columns and rows (mm_split chooses them), never K. Every
   C element is summed by one thread in one fixed order: for each MM_KC slice of k in turn, the slice's sum
   (an FMA chain from 0 in k order, in a register) is added to C. That order depends on MM_KC alone, not on
   the tiling or the thread count, so the results are bit-identical for any number of threads.
   Portable C: GCC/Clang vector extensions, no intrinsics; the vector width and tile follow the instruction
   set the compiler targets (the #if below), and any other target gets 4-float vectors (SSE, NEON). */
#if defined(__AVX512F__)
#define MM_VLEN 16
#define MM_MR 8
#define MM_NV 3
#elif defined(__AVX__)
#define MM_VLEN 8
#define MM_MR 6
#define MM_NV 2
#else
#define MM_VLEN 4
#define MM_MR 6
#define MM_NV 2
#endif
#define MM_NR (MM_NV * MM_VLEN)     /* columns of the C tile */
#define MM_KC 384                   /* k slice: sets the sum order, so it is a constant */
#define MM_MC (32 * MM_MR)          /* rows of the A block kept in L2 */
#define MM_NC (32 * MM_NR)          /* most columns of one thread's chunk of C */

typedef float mm_vec __attribute__((vector_size(MM_VLEN * sizeof(float))));
typedef float mm_vec_u __attribute__((vector_size(MM_VLEN * sizeof(float)), aligned(sizeof(float))));

/* the kernel needs a*b+c as one FMA; ISO C mode (-std=c11) leaves contraction off, so ask for it here */
#if defined(__clang__)
#define MM_FMA_CONTRACT
#elif defined(__GNUC__)
#define MM_FMA_CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define MM_FMA_CONTRACT
#endif

/* C tile (mr x nr valid of MM_MR x MM_NR, row stride ldc) += ap (kc x MM_MR) . bp (kc x MM_NR); or, for the
   first k slice of a product that overwrites C (init), C tile = bias row (nr values; zeros when NULL) + the
   same sum. bias + sum is, bit for bit, C set to the bias and the slice's sum then added to it, without a
   pass that writes the bias rows into C and a read of them back. */
MM_FMA_CONTRACT
static void mm_kernel(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr,
                      int init, const float *bias) {
#if defined(__clang__)
#pragma clang fp contract(fast)
#endif
    mm_vec acc[MM_MR][MM_NV];
    for (int i = 0; i < MM_MR; i++)
        for (int v = 0; v < MM_NV; v++) acc[i][v] = (mm_vec){ 0 };
    for (int k = 0; k < kc; k++) {
        mm_vec b[MM_NV];
        for (int v = 0; v < MM_NV; v++) b[v] = *(const mm_vec *)(bp + (size_t)k * MM_NR + v * MM_VLEN);
        for (int i = 0; i < MM_MR; i++) {
            float a = ap[(size_t)k * MM_MR + i];
            for (int v = 0; v < MM_NV; v++) acc[i][v] += a * b[v];
        }
    }
    if (mr == MM_MR && nr == MM_NR) {
        mm_vec base[MM_NV];
        for (int v = 0; v < MM_NV; v++) base[v] = bias ? *(const mm_vec_u *)(bias + v * MM_VLEN) : (mm_vec){ 0 };
        for (int i = 0; i < MM_MR; i++)
            for (int v = 0; v < MM_NV; v++) {
                mm_vec_u *cv = (mm_vec_u *)(c + i * ldc + v * MM_VLEN);
                *cv = (init ? base[v] : *cv) + acc[i][v];
            }
    } else {   /* an edge tile: the same sums, only the valid part stored */
        float t[MM_MR][MM_NR];
        for (int i = 0; i < MM_MR; i++)
            for (int v = 0; v < MM_NV; v++) memcpy(&t[i][v * MM_VLEN], &acc[i][v], sizeof(mm_vec));
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                c[i * ldc + j] = (init ? (bias ? bias[j] : 0.0f) : c[i * ldc + j]) + t[i][j];
    }
}

/* The packs copy a block into panels, k-major: panel element (k, r) at p[k * W + r] (W = MM_MR rows of A or
   MM_NR columns of B), zeros past the matrix edge. Sources contiguous across the panel (s_r = 1: dinp's B,
   dweight's A and B) are copied a row of the block at a time, each row read once left to right. Sources contiguous in k (s_k = 1: the forward's weight, read transposed, and the
   forward's and dinp's A) are a transpose: 8 source rows x 8 k are loaded as 8 vectors, transposed in
   registers by three rounds of shuffles (pairs of rows interleaved, then pairs of pairs, then halves) and
   stored as 8 panel rows, where one float at a time would be a load and a store per float. The rest (edge
   rows, the last k % 8, compilers without __builtin_shufflevector, other strides) goes a float at a time in
   chunks of 16 k, so the panel rows being written stay in L1. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define MM_SHUFFLE 1
typedef float mm_v8 __attribute__((vector_size(8 * sizeof(float)), aligned(sizeof(float))));

/* d[k * ld_d + r] = s[r * ld_s + k] for r, k < 8 */
static void mm_transpose8(float *d, size_t ld_d, const float *s, size_t ld_s) {
    mm_v8 x[8], y[8], z[8];
    for (int r = 0; r < 8; r++) x[r] = *(const mm_v8 *)(s + r * ld_s);
    for (int r = 0; r < 8; r += 2) {   /* y[r] = rows r, r+1 at k 0,1,4,5 interleaved; y[r+1] at k 2,3,6,7 */
        y[r] = __builtin_shufflevector(x[r], x[r + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        y[r + 1] = __builtin_shufflevector(x[r], x[r + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int r = 0; r < 8; r += 4)     /* z[r + q] = rows r..r+3 at k q and q + 4, q = 0..3 */
        for (int h = 0; h < 2; h++) {
            z[r + 2 * h] = __builtin_shufflevector(y[r + h], y[r + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            z[r + 2 * h + 1] = __builtin_shufflevector(y[r + h], y[r + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    for (int q = 0; q < 4; q++) {      /* k q: the low halves of rows 0..3 and 4..7; k q + 4: the high halves */
        *(mm_v8 *)(d + q * ld_d) = __builtin_shufflevector(z[q], z[q + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        *(mm_v8 *)(d + (q + 4) * ld_d) = __builtin_shufflevector(z[q], z[q + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
#endif

/* sources contiguous across the panels (s_r = 1): each k row of the block (n values from src + k * s_k) is
   read once, left to right, and dealt out to the panels (panel r0 / W at p + r0 * kc) */
static void mm_pack_rows(float *p, int W, const float *src, size_t s_k, int n, int kc) {
    for (int k = 0; k < kc; k++) {
        const float *q = src + (size_t)k * s_k;
        for (int r0 = 0; r0 < n; r0 += W) {
            float *d = p + (size_t)r0 * kc + (size_t)k * W;
            int nv = n - r0 < W ? n - r0 : W, r = 0;
            for (; r < nv; r++) d[r] = q[r0 + r];
            for (; r < W; r++) d[r] = 0.0f;
        }
    }
}

/* one panel of W rows (s_r > 1) */
static void mm_pack_panel(float *p, int W, const float *src, size_t s_r, size_t s_k, int nvalid, int kc) {
    int r8 = 0;   /* rows [0, r8) done by the transposes */
#ifdef MM_SHUFFLE
    if (s_k == 1) {
        r8 = nvalid / 8 * 8;
        int k8 = kc / 8 * 8;
        for (int r = 0; r < r8; r += 8) {
            for (int k = 0; k < k8; k += 8) mm_transpose8(p + (size_t)k * W + r, W, src + (size_t)r * s_r + k, s_r);
            for (int k = k8; k < kc; k++)
                for (int i = r; i < r + 8; i++) p[(size_t)k * W + i] = src[(size_t)i * s_r + k];
        }
    }
#endif
    for (int k0 = 0; k0 < kc; k0 += 16) {
        int k1 = k0 + 16 < kc ? k0 + 16 : kc;
        for (int r = r8; r < W; r++) {
            if (r >= nvalid) { for (int k = k0; k < k1; k++) p[(size_t)k * W + r] = 0.0f; continue; }
            const float *q = src + (size_t)r * s_r;
            for (int k = k0; k < k1; k++) p[(size_t)k * W + r] = q[(size_t)k * s_k];
        }
    }
}

/* A(i,k) = a[i*sai + k*sak]: rows [i0, i0+mc) and k [k0, k0+kc) into panels of MM_MR rows */
static void mm_pack_a(float *ap, const float *a, size_t sai, size_t sak, int M, int i0, int mc, int k0, int kc) {
    if (sai == 1) {
        mm_pack_rows(ap, MM_MR, a + (size_t)i0 + (size_t)k0 * sak, sak, M - i0 < mc ? M - i0 : mc, kc);
        return;
    }
    for (int ir = 0; ir < mc; ir += MM_MR) {
        int nv = M - (i0 + ir) < MM_MR ? M - (i0 + ir) : MM_MR;
        if (nv > mc - ir) nv = mc - ir;
        mm_pack_panel(ap + (size_t)ir * kc, MM_MR, a + (size_t)(i0 + ir) * sai + (size_t)k0 * sak, sai, sak, nv, kc);
    }
}

/* B(k,j) = b[k*sbk + j*sbj]: k [k0, k0+kc) and columns [j0, j0+nc) into panels of MM_NR columns */
static void mm_pack_b(float *bp, const float *b, size_t sbk, size_t sbj, int N, int k0, int kc, int j0, int nc) {
    if (sbj == 1) {
        mm_pack_rows(bp, MM_NR, b + (size_t)k0 * sbk + (size_t)j0, sbk, N - j0 < nc ? N - j0 : nc, kc);
        return;
    }
    for (int jr = 0; jr < nc; jr += MM_NR) {
        int nv = N - (j0 + jr) < MM_NR ? N - (j0 + jr) : MM_NR;
        if (nv > nc - jr) nv = nc - jr;
        mm_pack_panel(bp + (size_t)jr * kc, MM_NR, b + (size_t)k0 * sbk + (size_t)(j0 + jr) * sbj, sbj, sbk, nv, kc);
    }
}

static int mm_ceil_div(int a, int b) { return (a + b - 1) / b; }

/* each OpenMP thread's packing buffer, kept from call to call (a fresh large malloc per call would be fresh
   pages, faulted in and zeroed every time) */
#define MM_MAX_THREADS 256
static float *mm_buf[MM_MAX_THREADS];
static size_t mm_buf_cap[MM_MAX_THREADS];

static float *mm_thread_buffer(size_t n) {
    int t = omp_get_thread_num();
    if (t >= MM_MAX_THREADS) return NULL;
    if (mm_buf_cap[t] < n) {
        free(mm_buf[t]);
        mm_buf[t] = (float *)aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        mm_buf_cap[t] = mm_buf[t] ? n : 0;
    }
    return mm_buf[t];
}

/* How C is shared out among nt threads: chunks of ncw columns x mcw rows (whole tiles), one chunk at a time per
   thread. A chunk costs its micro-kernel tiles' multiply-adds plus its packing: its B panel (K x ncw floats) and
   its rows of A (mcw x K), a packed float costing about MM_PACK_COST multiply-adds (a copy moves one float a cycle,
   the FMA units do 16 multiply-adds). The busiest thread does ceil(chunks / nt) chunks; of the splits with at most
   MM_NC columns a chunk (so B's panel stays in cache) and up to nt more column chunks and nt row chunks than the
   fewest, the cheapest wins. Columns first, as B is packed once per chunk; rows when the columns do not share out
   evenly (128 columns are 3 tiles of 48: 2 + 1 over two threads, where 64 rows each is 50:50). The split changes
   only who computes a C element, never the order of its sum. */
#define MM_PACK_COST 16
static void mm_split(int M, int N, int K, int nt, int *ncw, int *mcw) {
    int ntiles = mm_ceil_div(N, MM_NR), mtiles = mm_ceil_div(M, MM_MR);
    int cn0 = mm_ceil_div(N, MM_NC);
    double best = -1.0;
    for (int cn = cn0; cn <= ntiles && cn <= cn0 + nt; cn++)
        for (int cm = 1; cm <= mtiles && cm <= nt; cm++) {
            int tn = mm_ceil_div(ntiles, cn), tm = mm_ceil_div(mtiles, cm);   /* tiles a chunk, at most */
            int chunks = mm_ceil_div(ntiles, tn) * mm_ceil_div(mtiles, tm);
            double chunk = (double)K * ((double)tn * MM_NR * tm * MM_MR + MM_PACK_COST * ((double)tn * MM_NR + (double)tm * MM_MR));
            double cost = mm_ceil_div(chunks, nt) * chunk;
            if (best < 0 || cost < best) { best = cost; *ncw = tn * MM_NR; *mcw = tm * MM_MR; }
        }
}

/* C[i*ldc + j] += sum_k A(i,k) B(k,j) for i < M, j < N; with init, C[i*ldc + j] = bias[j] (0 when bias is
   NULL) + the same sum instead (K >= 1) */
static void mm_sgemm(int M, int N, int K, const float *a, size_t sai, size_t sak, const float *b, size_t sbk,
                     size_t sbj, float *c, size_t ldc, int init, const float *bias) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    int nt = omp_get_max_threads(), ncw, mcw;
    mm_split(M, N, K, nt, &ncw, &mcw);
    int cn = mm_ceil_div(N, ncw), cm = mm_ceil_div(M, mcw);
    #pragma omp parallel
    {
        int mcb = mcw < MM_MC ? mcw : MM_MC;
        size_t na = (size_t)mcb * MM_KC, nb = (size_t)ncw * MM_KC;
        float *own = mm_thread_buffer(na + nb), *mine = own ? NULL : (float *)aligned_alloc(64, (na + nb) * sizeof(float));
        float *ap = own ? own : mine, *bp = ap + na;
        #pragma omp for schedule(static) collapse(2)
        for (int cj = 0; cj < cn; cj++)
            for (int ci = 0; ci < cm; ci++) {
                int j0 = cj * ncw, nc = N - j0 < ncw ? N - j0 : ncw;
                int ilo = ci * mcw, ihi = ilo + mcw < M ? ilo + mcw : M;
                for (int k0 = 0; k0 < K; k0 += MM_KC) {
                    int kc = K - k0 < MM_KC ? K - k0 : MM_KC;
                    mm_pack_b(bp, b, sbk, sbj, N, k0, kc, j0, nc);
                    for (int i0 = ilo; i0 < ihi; i0 += mcb) {
                        int mc = ihi - i0 < mcb ? ihi - i0 : mcb;
                        mm_pack_a(ap, a, sai, sak, M, i0, mc, k0, kc);
                        for (int jr = 0; jr < nc; jr += MM_NR)
                            for (int ir = 0; ir < mc; ir += MM_MR)
                                mm_kernel(kc, ap + (size_t)ir * kc, bp + (size_t)jr * kc,
                                          c + (size_t)(i0 + ir) * ldc + j0 + jr, ldc,
                                          mc - ir < MM_MR ? mc - ir : MM_MR, nc - jr < MM_NR ? nc - jr : MM_NR,
                                          init && k0 == 0, bias ? bias + j0 + jr : NULL);
                    }
                }
            }
        free(mine);
    }
}

void sgemm_acc(int M, int N, int K, const float *a, size_t sai, size_t sak, const float *b, size_t sbk, size_t sbj,
               float *c, size_t ldc) {
    mm_sgemm(M, N, K, a, sai, sak, b, sbk, sbj, c, ldc, 0, NULL);
}

/* out = bias + inp . weight^T: the bias is where the first k slice's sums start (mm_kernel's init) */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC) {
    if (IC < 1) {   /* no k slice to start from the bias: out is the bias alone */
        for (size_t i = 0; i < (size_t)N * OC; i++) out[i] = bias ? bias[i % OC] : 0.0f;
        return;
    }
    mm_sgemm(N, OC, IC, inp, IC, 1, weight, 1, IC, out, OC, 1, bias);
}

/* backward as two sgemm_acc calls: dinp += dout . W (both row-major; skipped when dinp is NULL), and
   dweight += dout^T . inp (dout read through strides (1, OC), i.e. as its transpose); then db's column sums */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int IC, int OC) {
    if (dinp) sgemm_acc(N, IC, OC, dout, OC, 1, weight, IC, 1, dinp, IC);
    sgemm_acc(OC, IC, N, dout, 1, OC, inp, IC, 1, dweight, IC);
    if (dbias) {   /* column sums: threads over column blocks, rows in order */
        #pragma omp parallel for schedule(static)
        for (int o0 = 0; o0 < OC; o0 += 64) {
            int o1 = o0 + 64 < OC ? o0 + 64 : OC;
            for (int n = 0; n < N; n++)
                for (int o = o0; o < o1; o++) dbias[o] += dout[(size_t)n * OC + o];
        }
    }
}

/* rope tables: inv_freq[i] = theta^(-2i/HD) for i < HD/2, optionally rescaled by the llama3 rule:
   wavelen = 2pi/inv_freq; wavelen < orig/high_ff: keep; wavelen > orig/low_ff: inv_freq/factor;
   otherwise s = (orig/wavelen - low_ff)/(high_ff - low_ff), inv_freq = (1-s)*inv_freq/factor + s*inv_freq.
   cos_table[t,i] = cos(t*inv_freq[i]), sin_table likewise, for t < T. */
void rope_init(float *cos_table, float *sin_table, const ModelConfig *cfg, int T) {
    int HD = cfg->head_dim, half = HD / 2;
    for (int i = 0; i < half; i++) {
        float inv = 1.0f / powf(cfg->rope_theta, (float)(2 * i) / (float)HD);
        if (cfg->rope_llama3) {
            double wavelen = 2.0 * M_PI / inv;
            double lo_wl = cfg->rope_orig_max_pos / cfg->rope_low_freq_factor;
            double hi_wl = cfg->rope_orig_max_pos / cfg->rope_high_freq_factor;
            if (wavelen > lo_wl) inv = inv / cfg->rope_factor;
            else if (wavelen >= hi_wl) {
                double s = (cfg->rope_orig_max_pos / wavelen - cfg->rope_low_freq_factor) /
                           (cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
                inv = (float)((1.0 - s) * inv / cfg->rope_factor + s * inv);
            }
        }
        for (int t = 0; t < T; t++) {
            float angle = (float)t * inv;
            cos_table[(size_t)t * half + i] = cosf(angle);
            sin_table[(size_t)t * half + i] = sinf(angle);
        }
    }
}

/* rope (HF rotate-half): within each head, element i pairs with element i + HD/2 (x1 = x[i], x2 = x[i+HD/2]),
   and the pair is rotated by the angle p*inv_freq[i] of position p (cs[i] = cos, sn[i] = sin of it):
     [ y[i]      ]   [ cs -sn ] [ x1 ]        y[i]      = x1*cs - x2*sn
     [ y[i+HD/2] ] = [ sn  cs ] [ x2 ]        y[i+HD/2] = x2*cs + x1*sn
   backward: y = R x with R a fixed matrix (no parameters), so dx = R^T dy, and R^T is the rotation by the
   opposite angle (R is orthogonal: its transpose is its inverse). With d1 = dy[i], d2 = dy[i+HD/2]:
     [ dx[i]      ]    [  cs  sn ] [ d1 ]     dx[i]      += d1*cs + d2*sn
     [ dx[i+HD/2] ] += [ -sn  cs ] [ d2 ]     dx[i+HD/2] += d2*cs - d1*sn
   inp/out are [B,T,NH,HD]; the angle of row (b,t) is that of position p = pos[b,t] (t when pos is NULL). */
void rope_forward(float *out, const float *inp, const float *cos_table, const float *sin_table, int B, int T, int NH, int HD,
                  const int *pos) {
    int half = HD / 2;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t p = (size_t)(pos ? pos[b * T + t] : t);
            const float *cs = cos_table + p * half, *sn = sin_table + p * half;
            for (int h = 0; h < NH; h++) {
                const float *x = inp + (((size_t)b * T + t) * NH + h) * HD;
                float *y = out + (((size_t)b * T + t) * NH + h) * HD;
                for (int i = 0; i < half; i++) {
                    float x1 = x[i], x2 = x[i + half];
                    y[i] = x1 * cs[i] - x2 * sn[i];
                    y[i + half] = x2 * cs[i] + x1 * sn[i];
                }
            }
        }
}

void rope_backward(float *dinp, const float *dout, const float *cos_table, const float *sin_table, int B, int T, int NH, int HD,
                   const int *pos) {
    int half = HD / 2;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t p = (size_t)(pos ? pos[b * T + t] : t);
            const float *cs = cos_table + p * half, *sn = sin_table + p * half;
            for (int h = 0; h < NH; h++) {
                const float *dy = dout + (((size_t)b * T + t) * NH + h) * HD;
                float *dx = dinp + (((size_t)b * T + t) * NH + h) * HD;
                for (int i = 0; i < half; i++) {
                    float d1 = dy[i], d2 = dy[i + half];
                    dx[i] += d1 * cs[i] + d2 * sn[i];
                    dx[i + half] += d2 * cs[i] - d1 * sn[i];
                }
            }
        }
}

/* causal attention with grouped-query heads: query head h reads key/value head kh = h / G, G = NH/NKV.
   q [B,T,NH,HD], k and v [B,T,NKV,HD], att [B,NH,T,T], out [B,T,NH,HD]. Per (b, h), in matrices, with
   Q = q[b,:,h,:], K = k[b,:,kh,:], V = v[b,:,kh,:] ([T,HD] each), P = att[b,h,:,:] ([T,T]), Y = out[b,:,h,:]:
     S = scale * Q K^T                     (scale: usually 1/sqrt(HD), see attention_scale)
     P = softmax of each row of S + M,     M[t,s] = 0 for s0 <= s <= t, -inf otherwise
     Y = P V
   The mask M: causal, s <= t; with window W > 0 also s > t - W (a sliding window); with doc_start (NULL:
   none) also s >= doc_start[b,t] (the row's document start). attention_first gives s0, the larger bound.
   exp(-inf) = 0, so masked entries are not computed: they are stored as 0 and every sum runs over s0..t.
   Row t in the code (a = row t of att, qt = Q[t], o = Y[t]): a[s] = S[t,s]; maxv = max_s a[s];
   a[s] = exp(a[s] - maxv); sum = sum_s a[s]; a[s] *= inv = 1/sum; o = sum_s a[s] * v[s]. Subtracting maxv
   cancels in the ratio but keeps every exp <= 1 (no overflow). */
static inline int attention_first(int t, int window, const int *doc_start) {
    int s0 = window > 0 && t >= window ? t - window + 1 : 0;
    return doc_start && *doc_start > s0 ? *doc_start : s0;
}

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                       int B, int T, int NH, int NKV, int HD, float scale, int window, const int *doc_start) {
    int G = NH / NKV;
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int kh = h / G, s0 = attention_first(t, window, doc_start ? doc_start + b * T + t : NULL);
                const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
                float *a = att + (((size_t)b * NH + h) * T + t) * T;
                float maxv = -INFINITY;
                for (int s = s0; s <= t; s++) {
                    float x = dot_f32(qt, k + (((size_t)b * T + s) * NKV + kh) * HD, HD) * scale;
                    a[s] = x;
                    if (x > maxv) maxv = x;
                }
                float sum = 0.0f;
                for (int s = s0; s <= t; s++) { a[s] = expf(a[s] - maxv); sum += a[s]; }
                float inv = 1.0f / sum;
                for (int s = s0; s <= t; s++) a[s] *= inv;
                for (int s = 0; s < s0; s++) a[s] = 0.0f;
                for (int s = t + 1; s < T; s++) a[s] = 0.0f;
                float *o = out + (((size_t)b * T + t) * NH + h) * HD;
                for (int i = 0; i < HD; i++) o[i] = 0.0f;
                for (int s = s0; s <= t; s++) axpy_f32(o, a[s], v + (((size_t)b * T + s) * NKV + kh) * HD, HD);
            }
}

/* attention backward, per (b, h) and row t, with a = P[t,:], dy = dY[t] (dout), qt = Q[t], dqt = dQ[t]:
     Y = P V:          dV = P^T dY  ->  dv[s] += a[s] * dy                  (for every t)
                       dP = dY V^T  ->  da[s] = dP[t,s] = dy . v[s]         (da holds row t of dP)
     softmax of a row, p = softmax(z): J[s,s'] = partial p[s] / partial z[s'] = p[s] (delta(s,s') - p[s']), so
                       dS[t,s] = sum_s' dP[t,s'] J[s',s] = P[t,s] * (dP[t,s] - rowsum(dP * P)[t])
                       code: sum = sum_s a[s]*da[s];  dS[t,s] = a[s] * (da[s] - sum)
     masked s (outside s0..t): P[t,s] = 0, so dS[t,s] = 0 and the loops skip them; M has no gradient.
     S = scale Q K^T:  dQ = scale dS K,  dK = scale dS^T Q
                       code: g = dS[t,s] * scale;  dqt += g * k[s];  dk[s] += g * qt
   GQA: the G query heads of kv head kh read the same K and V, so their dK, dV add up. One task per (b, kh)
   runs those heads in turn and owns every dk/dv row it writes: no races, and a fixed order of sums. */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const float *att, int B, int T, int NH, int NKV, int HD, float scale, int window,
                        const int *doc_start) {
    int G = NH / NKV;
    #pragma omp parallel
    {
        float *da = (float *)malloc((size_t)T * sizeof(float));
        #pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < NKV; kh++)
                for (int h = kh * G; h < (kh + 1) * G; h++)
                    for (int t = 0; t < T; t++) {
                        const float *a = att + (((size_t)b * NH + h) * T + t) * T;
                        const float *dy = dout + (((size_t)b * T + t) * NH + h) * HD;
                        const float *qt = q + (((size_t)b * T + t) * NH + h) * HD;
                        float *dqt = dq + (((size_t)b * T + t) * NH + h) * HD;
                        int s0 = attention_first(t, window, doc_start ? doc_start + b * T + t : NULL);
                        float sum = 0.0f;
                        for (int s = s0; s <= t; s++) {
                            size_t kv = (((size_t)b * T + s) * NKV + kh) * HD;
                            da[s] = dot_f32(dy, v + kv, HD);
                            sum += a[s] * da[s];
                            axpy_f32(dv + kv, a[s], dy, HD);
                        }
                        for (int s = s0; s <= t; s++) {
                            size_t kv = (((size_t)b * T + s) * NKV + kh) * HD;
                            float g = a[s] * (da[s] - sum) * scale;
                            axpy_f32(dqt, g, k + kv, HD);
                            axpy_f32(dk + kv, g, qt, HD);
                        }
                    }
        free(da);
    }
}

/* expf as plain arithmetic, so that the loops which call it vectorise (a libm call does not): with
   n = round(x / ln2) and r = x - n ln2 (ln2 in two parts, so r is exact), e^x = 2^n e^r, e^r from a degree-7
   polynomial (Cephes' expf, about 1 ulp for |r| <= ln2/2), 2^n put into the exponent bits. x is clamped to
   [-87.3, 88.7]: e^-87.3 is the smallest normal float, e^88.7 near the largest. */
static inline float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   /* round to nearest: 1.5 * 2^23 */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &p, sizeof(bits));
    bits += (int32_t)n * (1 << 23);
    memcpy(&p, &bits, sizeof(p));
    return p;
}

/* gelu (tanh approximation, HF "gelu_new"): y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
   (GELU_K = sqrt(2/pi))
   backward, by the product rule, with tanh' = 1 - tanh^2:
     dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx,    du/dx = sqrt(2/pi) (1 + 3*0.044715 x^2)
     dx += dout * dy/dx
   Computed with s = 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)) (a sigmoid): tanh u = 2s - 1, so
   0.5 (1 - tanh^2 u) = 2 s (1 - s). In the code: s as above, du = du/dx, and
     dx += dout * (s + 2 x s (1 - s) du),   forward y = x * s
   One exp, no cancellation near 1 + tanh u = 0, and the loops vectorise. */
#define GELU_K 0.7978845608028654f
void gelu_forward(float *out, const float *inp, size_t N) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float s = 1.0f / (1.0f + exp_poly(-2.0f * GELU_K * (x + 0.044715f * x * x * x)));
        out[i] = x * s;
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t N) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float s = 1.0f / (1.0f + exp_poly(-2.0f * GELU_K * (x + 0.044715f * x * x * x)));
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += dout[i] * (s + 2.0f * x * s * (1.0f - s) * du);
    }
}

/* swiglu: inp rows are [gate (F) | up (F)];  y = silu(g) * u,  silu(g) = g * sigmoid(g)
   backward, with sg = sigmoid(g) and sigmoid' = sg (1 - sg):
     silu'(g) = sg + g sg (1 - sg) = sg (1 + g (1 - sg))
     y = silu(g) * u:  dg += dy * u * silu'(g) = dy * u * sg * (1 + g (1 - sg));   du += dy * silu(g) = dy * g * sg
   dinp has the layout of inp: row n is [dg (F) | du (F)]. */
void swiglu_forward(float *out, const float *inp, int N, int F) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *g = inp + (size_t)n * 2 * F, *u = g + F;
        float *y = out + (size_t)n * F;
        for (int f = 0; f < F; f++) y[f] = g[f] / (1.0f + expf(-g[f])) * u[f];
    }
}

void swiglu_backward(float *dinp, const float *dout, const float *inp, int N, int F) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *g = inp + (size_t)n * 2 * F, *u = g + F;
        float *dg = dinp + (size_t)n * 2 * F, *du = dg + F;
        const float *dy = dout + (size_t)n * F;
        for (int f = 0; f < F; f++) {
            float sg = 1.0f / (1.0f + expf(-g[f]));
            dg[f] += dy[f] * u[f] * sg * (1.0f + g[f] * (1.0f - sg));
            du[f] += dy[f] * g[f] * sg;
        }
    }
}

/* residual: out = inp1 + inp2
   backward: partial out / partial inp1 = partial out / partial inp2 = 1 (element by element), so
   dinp1 += dout, dinp2 += dout: the gradient reaches both the skip path and the branch unchanged. */
void residual_forward(float *out, const float *inp1, const float *inp2, size_t N) {
    #pragma omp parallel for
    for (size_t i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];
}

void residual_backward(float *dinp1, float *dinp2, const float *dout, size_t N) {
    #pragma omp parallel for
    for (size_t i = 0; i < N; i++) { dinp1[i] += dout[i]; dinp2[i] += dout[i]; }
}

/* crossentropy: lse[n] = log sum_v exp(logits[n,v]);  losses[n] = lse[n] - logits[n, target[n]]
   = -log softmax(logits[n,:])[target[n]]   (rows with target < 0 are ignored: loss 0)
   The lse trick (x = logits[n,:], as in the code): lse = maxv + log sum_v exp(x[v] - maxv) is exact for any
   maxv; with maxv = the row max every exp is <= 1 (no overflow) and one is 1 (the sum is >= 1: a finite log).
   backward: partial lse / partial x[v] = exp(x[v] - lse) = softmax(x)[v] = p[v], and
   partial x[target] / partial x[v] = [v == target], so a row's gradient is softmax minus one-hot:
     dlogits[n,v] += dloss * (p[v] - [v == target[n]])      (code: l = lse[n], p[v] = exp_poly(x[v] - l))
   dloss = partial L / partial losses[n], the same for every row: L is the mean over the valid rows,
   (1/valid) sum_{target[n] >= 0} losses[n], so dloss = 1/valid (model_backward passes loss_scale / num_valid,
   loss_scale averaging over micro-steps and ranks); rows with target < 0 are not in L and are skipped.
   The row max and the sum of exps are vector reductions (a fixed lane order: the same result on every run). */
void crossentropy_forward(float *losses, float *lse, const float *logits, const int *targets, int N, int V) {
    crossentropy_forward_shard(lse, losses, logits, targets, N, V, 0);   /* losses first holds the target logits */
    for (int n = 0; n < N; n++) losses[n] = (targets && targets[n] >= 0) ? lse[n] - losses[n] : 0.0f;
}

/* Vocabulary-parallel (Megatron's VocabParallelCrossEntropy): a rank holds the logits of its columns
   [v0, v0 + V) of the vocabulary, and the whole rows are never put together. Each rank computes its part:
     lse_r[n] = log sum_{its v} exp(logits[n,v]),   target_logit_r[n] = logits[n, target - v0] if it holds the
     target, else 0
   and crossentropy_combine, given every rank's parts, the whole row's: lse = log sum_r exp(lse_r) (the lse trick
   again, with the largest lse_r taken out) and losses = lse - sum_r target_logit_r. The backward needs only the
   whole lse: each rank's dlogits are softmax minus one-hot on its own columns (crossentropy_backward_shard). */
void crossentropy_forward_shard(float *lse, float *target_logit, const float *logits, const int *targets, int N, int V, int v0) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float maxv = -INFINITY;
        #pragma omp simd reduction(max:maxv)
        for (int v = 0; v < V; v++) maxv = x[v] > maxv ? x[v] : maxv;
        double sum = 0.0;            /* float sums over blocks of 1024, added in double */
        for (int b0 = 0; b0 < V; b0 += 1024) {
            int b1 = b0 + 1024 < V ? b0 + 1024 : V;
            float s = 0.0f;
            #pragma omp simd reduction(+:s)
            for (int v = b0; v < b1; v++) s += exp_poly(x[v] - maxv);
            sum += s;
        }
        lse[n] = maxv + (float)log(sum);
        int k = targets && targets[n] >= 0 ? targets[n] - v0 : -1;
        target_logit[n] = k >= 0 && k < V ? x[k] : 0.0f;
    }
}

/* parts: [ranks][2][N], rank r's lse_r then its target_logit_r (crossentropy_forward_shard) */
void crossentropy_combine(float *losses, float *lse, const float *parts, const int *targets, int N, int ranks) {
    for (int n = 0; n < N; n++) {
        float maxl = -INFINITY, tl = 0.0f;
        for (int r = 0; r < ranks; r++) maxl = fmaxf(maxl, parts[(size_t)r * 2 * N + n]);
        double sum = 0.0;
        for (int r = 0; r < ranks; r++) {
            sum += exp((double)parts[(size_t)r * 2 * N + n] - maxl);
            tl += parts[(size_t)r * 2 * N + N + n];
        }
        lse[n] = maxl + (float)log(sum);
        losses[n] = (targets && targets[n] >= 0) ? lse[n] - tl : 0.0f;
    }
}

/* With init the gradient is stored rather than added: the backward of a training step then neither zeroes the
   B*T x V dlogits beforehand nor reads them back here (two passes over the largest buffer of a small model). */
void crossentropy_backward_shard(float *dlogits, const float *logits, const float *lse, const int *targets,
                                 float dloss, int N, int V, int v0, int init) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *dx = dlogits + (size_t)n * V, l = lse[n];
        if (targets[n] < 0) {
            if (init) memset(dx, 0, (size_t)V * sizeof(float));
            continue;
        }
        if (init) {
            #pragma omp simd
            for (int v = 0; v < V; v++) dx[v] = dloss * exp_poly(x[v] - l);
        } else {
            #pragma omp simd
            for (int v = 0; v < V; v++) dx[v] += dloss * exp_poly(x[v] - l);
        }
        int k = targets[n] - v0;
        if (k >= 0 && k < V) dx[k] -= dloss;
    }
}

void crossentropy_backward(float *dlogits, const float *logits, const float *lse, const int *targets,
                           float dloss, int N, int V) {
    crossentropy_backward_shard(dlogits, logits, lse, targets, dloss, N, V, 0, 0);
}

/* ------------------------------------------------------------------------------------------------ */
/* model */

static int qkv_rows(const ModelConfig *c) { return (c->n_head + 2 * c->n_kv_head) * c->head_dim; }
static int fc_rows(const ModelConfig *c) { return c->act == ACT_SWIGLU ? 2 * c->d_ff : c->d_ff; }

/* the sizes of the parameter tensors of a stage (st: NULL, the whole model) */
static void param_sizes(const ModelConfig *c, const PipelineStage *st, size_t *s) {
    size_t V = c->vocab_size, C = c->n_embd, L = c->n_layer, HD = c->head_dim, F = c->d_ff;
    size_t QKV = qkv_rows(c), FC = fc_rows(c), A = (size_t)c->n_head * HD;
    int ln = c->norm == NORM_LAYERNORM, embed = !st || st->embed, head = !st || st->head;
    s[P_WTE] = embed || (head && c->tie_embeddings) ? V * C : 0;
    s[P_WPE] = embed && c->positions == POS_LEARNED ? (size_t)c->max_seq_len * C : 0;
    s[P_LN1W] = L * C;
    s[P_LN1B] = ln ? L * C : 0;
    s[P_WQKV] = L * QKV * C;
    s[P_BQKV] = c->qkv_bias ? L * QKV : 0;
    s[P_QNW] = c->qk_norm ? L * HD : 0;
    s[P_KNW] = c->qk_norm ? L * HD : 0;
    s[P_WO] = L * C * A;
    s[P_BO] = c->o_bias ? L * C : 0;
    s[P_LN2W] = L * C;
    s[P_LN2B] = ln ? L * C : 0;
    s[P_WFC] = L * FC * C;
    s[P_BFC] = c->mlp_bias ? L * FC : 0;
    s[P_WPROJ] = L * C * F;
    s[P_BPROJ] = c->mlp_bias ? L * C : 0;
    s[P_LNFW] = head ? C : 0;
    s[P_LNFB] = head && ln ? C : 0;
    s[P_LMHEAD] = head && !c->tie_embeddings ? V * C : 0;
}

int param_has_decay(int t) {
    return t == P_WTE || t == P_WPE || t == P_WQKV || t == P_WO || t == P_WFC || t == P_WPROJ || t == P_LMHEAD;
}

static void point_params(ParameterTensors *p, float *mem, const size_t *offsets, const size_t *sizes) {
    float **ptrs[NUM_PARAM_TENSORS] = {&p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->wqkv, &p->bqkv, &p->qnw,
        &p->knw, &p->wo, &p->bo, &p->ln2w, &p->ln2b, &p->wfc, &p->bfc, &p->wproj, &p->bproj, &p->lnfw,
        &p->lnfb, &p->lmhead};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) *ptrs[i] = sizes[i] ? mem + offsets[i] : NULL;
}

int model_build(Model *m, const ModelConfig *cfg) {
    PipelineStage whole = {1, 0, 0, cfg->n_layer, 1, 1};
    return model_build_stage(m, cfg, &whole);
}

int model_build_stage(Model *m, const ModelConfig *cfg, const PipelineStage *st) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    m->cfg.n_layer = st->layers;
    m->pp = *st;
    param_sizes(&m->cfg, st, m->param_sizes);
    m->num_params = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { m->param_offsets[i] = m->num_params; m->num_params += m->param_sizes[i]; }
    m->params_memory = (float *)calloc(m->num_params, sizeof(float));
    m->grads_memory = (float *)calloc(m->num_params, sizeof(float));
    if (!m->params_memory || !m->grads_memory) return -1;
    point_params(&m->params, m->params_memory, m->param_offsets, m->param_sizes);
    point_params(&m->grads, m->grads_memory, m->param_offsets, m->param_sizes);
    m->mean_loss = -1.0f;
    m->tp.size = 1; m->tp.full = m->cfg; m->tp.kv_share = 1;
    return 0;
}

void model_init_weights(Model *m, uint64_t seed, float std) {
    const ModelConfig *c = &m->cfg;
    float resid_std = std / sqrtf(2.0f * c->n_layer);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        float *p = m->params_memory + m->param_offsets[t];
        size_t n = m->param_sizes[t];
        int is_norm_w = t == P_LN1W || t == P_LN2W || t == P_LNFW || t == P_QNW || t == P_KNW;
        if (is_norm_w) { for (size_t i = 0; i < n; i++) p[i] = 1.0f; continue; }
        if (!param_has_decay(t)) { memset(p, 0, n * sizeof(float)); continue; }
        float s = (t == P_WO || t == P_WPROJ) ? resid_std : std;
        uint64_t stream = seed * 0x9E3779B97F4A7C15ULL + (uint64_t)t + 1;
        #pragma omp parallel for
        for (size_t i = 0; i < n; i++) p[i] = s * rng_normal(stream, i);
    }
}

/* the activations of a forward of B x T whose residual stream (encoded, the norms, attproj, fcproj, resid2,
   resid3) has R rows on this rank: B*T, or with sequence parallelism its block */
static void act_sizes(const ModelConfig *c, const PipelineStage *st, int B, int T, int R, size_t *s) {
    size_t BT = (size_t)B * T, RS = R, L = c->n_layer, C = c->n_embd, HD = c->head_dim;
    size_t QD = (size_t)c->n_head * HD, KD = (size_t)c->n_kv_head * HD;
    int ln = c->norm == NORM_LAYERNORM, rope = c->positions == POS_ROPE, qkn = c->qk_norm, head = st->head;
    s[A_ENCODED] = RS * C;
    s[A_LN1] = L * RS * C;
    s[A_LN1_MEAN] = ln ? L * RS : 0;
    s[A_LN1_RSTD] = L * RS;
    s[A_Q] = L * BT * QD;
    s[A_K] = L * BT * KD;
    s[A_V] = L * BT * KD;
    s[A_QN] = qkn ? L * BT * QD : 0;
    s[A_KN] = qkn ? L * BT * KD : 0;
    s[A_QN_RSTD] = qkn ? L * BT * c->n_head : 0;
    s[A_KN_RSTD] = qkn ? L * BT * c->n_kv_head : 0;
    s[A_QR] = rope ? L * BT * QD : 0;
    s[A_KR] = rope ? L * BT * KD : 0;
    s[A_ATT] = L * B * (size_t)c->n_head * T * T;
    s[A_ATTY] = L * BT * QD;
    s[A_ATTPROJ] = L * RS * C;
    s[A_RESID2] = L * RS * C;
    s[A_LN2] = L * RS * C;
    s[A_LN2_MEAN] = ln ? L * RS : 0;
    s[A_LN2_RSTD] = L * RS;
    s[A_FCH] = L * BT * fc_rows(c);
    s[A_FCH_ACT] = L * BT * c->d_ff;
    s[A_FCPROJ] = L * RS * C;
    s[A_RESID3] = L * RS * C;
    s[A_LNF] = head ? RS * C : 0;
    s[A_LNF_MEAN] = head && ln ? RS : 0;
    s[A_LNF_RSTD] = head ? RS : 0;
    s[A_LOGITS] = head ? BT * c->vocab_size : 0;
    s[A_LSE] = head ? BT : 0;
    s[A_LOSSES] = head ? BT : 0;
}

static void point_acts(ActivationTensors *a, float *mem, const size_t *sizes) {
    float **ptrs[NUM_ACT_TENSORS] = {&a->encoded, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &a->q, &a->k, &a->v,
        &a->qn, &a->kn, &a->qn_rstd, &a->kn_rstd, &a->qr, &a->kr, &a->att, &a->atty, &a->attproj, &a->resid2,
        &a->ln2, &a->ln2_mean, &a->ln2_rstd, &a->fch, &a->fch_act, &a->fcproj, &a->resid3, &a->lnf,
        &a->lnf_mean, &a->lnf_rstd, &a->logits, &a->lse, &a->losses};
    size_t off = 0;
    for (int i = 0; i < NUM_ACT_TENSORS; i++) { *ptrs[i] = sizes[i] ? mem + off : NULL; off += sizes[i]; }
}

/* (Re)allocates activations when (B, T) outgrows them, then points them at the layout for (B, T). */
/* This forward's layout: sequence-parallel when tp.sp is on and the B*T rows split into tp.size blocks (a sample's
   odd length runs without it: the same numbers, other collectives). */
static void model_prepare(Model *m, int B, int T) {
    int N = B * T;
    m->cur_sp = m->tp.size > 1 && m->tp.sp && N % m->tp.size == 0;
    size_t sizes[NUM_ACT_TENSORS], need = 0;
    act_sizes(&m->cfg, &m->pp, B, T, m->cur_sp ? N / m->tp.size : N, sizes);
    for (int i = 0; i < NUM_ACT_TENSORS; i++) need += sizes[i];
    if (B > m->B || T > m->T || need > m->num_acts) {
        int nB = B > m->B ? B : m->B, nT = T > m->T ? T : m->T;
        free(m->acts_memory); free(m->grads_acts_memory); free(m->rope_cos); free(m->rope_sin);
        free(m->inputs); free(m->targets); free(m->doc_start); free(m->pos); free(m->tp_parts); free(m->tp_all);
        if (need > m->num_acts) m->num_acts = need;
        m->acts_memory = (float *)calloc(m->num_acts, sizeof(float));
        m->grads_acts_memory = (float *)calloc(m->num_acts, sizeof(float));
        size_t half = m->cfg.head_dim / 2;
        m->rope_cos = (float *)malloc((size_t)nT * half * sizeof(float));
        m->rope_sin = (float *)malloc((size_t)nT * half * sizeof(float));
        rope_init(m->rope_cos, m->rope_sin, &m->cfg, nT);
        m->inputs = (int *)malloc((size_t)nB * nT * sizeof(int));
        m->targets = (int *)malloc((size_t)nB * nT * sizeof(int));
        m->doc_start = (int *)malloc((size_t)nB * nT * sizeof(int));
        m->pos = (int *)malloc((size_t)nB * nT * sizeof(int));
        m->tp_parts = (float *)malloc((size_t)m->tp.size * 2 * nB * nT * sizeof(float));
        m->tp_all = m->tp.sp ? (float *)malloc((size_t)2 * nB * nT * m->cfg.n_embd * sizeof(float)) : NULL;
        if (!m->acts_memory || !m->grads_acts_memory || !m->rope_cos || !m->inputs || !m->doc_start || !m->pos || !m->tp_parts ||
            (m->tp.sp && !m->tp_all)) {
            fprintf(stderr, "out of memory allocating activations for B=%d T=%d\n", nB, nT);
            exit(1);
        }
        m->B = nB; m->T = nT;
    }
    point_acts(&m->acts, m->acts_memory, sizes);
    point_acts(&m->grads_acts, m->grads_acts_memory, sizes);
}

/* the residual stream's norm: LayerNorm (with a bias) or RMSNorm */
static void norm_forward(const ModelConfig *c, float *out, float *mean, float *rstd, const float *inp,
                         const float *w, const float *b, int N, int C) {
    if (c->norm == NORM_LAYERNORM) layernorm_forward(out, mean, rstd, inp, w, b, N, C, c->norm_eps);
    else rmsnorm_forward(out, rstd, inp, w, N, C, c->norm_eps);
}

static void norm_backward(const ModelConfig *c, float *dinp, float *dw, float *db, const float *dout,
                          const float *inp, const float *w, const float *mean, const float *rstd, int N, int C) {
    if (c->norm == NORM_LAYERNORM) layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
    else rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
}

/* Layer l's attention score scale: 1/sqrt(HD), or 1 (GPT-2 scale_attn_weights false), then / (l + 1) with GPT-2
   scale_attn_by_inverse_layer_idx. */
static float attention_scale(const ModelConfig *c, int l) {
    float s = c->attn_unscaled ? 1.0f : 1.0f / sqrtf((float)c->head_dim);
    return c->attn_by_layer ? s / (float)(l + 1) : s;
}

/* Layer l's sliding window (0: full causal attention): Qwen layers l >= max_window_layers when it is set. */
int attention_window(const ModelConfig *c, int l) {
    return c->sliding_window > 0 && l >= c->max_window_layers ? c->sliding_window : 0;
}

/* Pointer to layer l's slice of a per-layer tensor (NULL stays NULL). */
static inline float *at_layer(float *base, int l, size_t per_layer) { return base ? base + l * per_layer : NULL; }

/* Tensor parallelism's two conjugate operators, Megatron's f and g (Shoeybi et al. 2019, sec. 3), around each
   block whose weights the ranks split: the column-parallel layers (q/k/v, the MLP's fc, the lm_head: each rank
   computes its columns of the output from the whole input) and the row-parallel ones after them (the attention's
   output projection, the MLP's proj: each rank multiplies its columns of the input, so the outputs are partial
   sums).
     tp_enter (f), before a column-parallel layer: forward identity (every rank has the whole input); backward the
       all-reduce that sums the input gradients the ranks' columns produced.
     tp_leave (g), after a row-parallel layer: forward the all-reduce that sums the partial outputs; backward
       identity (every rank has the whole output gradient).
   With sequence parallelism (Korthikanti et al. 2022) the rows outside these blocks (the norms, the residual
   stream) are split: this rank keeps only its block of R = N / size rows of them, rows r0 = rank x R on. tp_enter's
   forward all-gathers the blocks into the whole [N, C] buffer `all` the layer reads, its backward reduce-scatters
   the whole input gradient and adds this rank's block to dx; tp_leave's forward reduce-scatters the partial
   outputs and keeps this rank's block in y, its backward all-gathers the blocks of dy into the whole `all`.
   Without it, `all` and the rank's rows are the same buffer of N rows. One rank: nothing to do. */
static void tp_enter_forward(const Model *m, const float *x, float *all, int R, int C) {
    if (!m->cur_sp) return;
    memcpy(all + (size_t)m->tp.rank * R * C, x, (size_t)R * C * sizeof(float));
    m->tp.all_gather(m->tp.ctx, all, (size_t)R * C * m->tp.size);
}
static void tp_enter_backward(const Model *m, float *dall, float *dx, int R, int C) {
    if (m->tp.size == 1) return;
    if (!m->cur_sp) { m->tp.all_reduce(m->tp.ctx, dall, (size_t)R * C); return; }
    m->tp.reduce_scatter(m->tp.ctx, dall, (size_t)R * C * m->tp.size);
    const float *mine = dall + (size_t)m->tp.rank * R * C;
    for (size_t i = 0; i < (size_t)R * C; i++) dx[i] += mine[i];
}
static void tp_leave_forward(const Model *m, float *all, float *y, int R, int C) {
    if (m->tp.size == 1) return;
    if (!m->cur_sp) { m->tp.all_reduce(m->tp.ctx, all, (size_t)R * C); return; }
    m->tp.reduce_scatter(m->tp.ctx, all, (size_t)R * C * m->tp.size);
    memcpy(y, all + (size_t)m->tp.rank * R * C, (size_t)R * C * sizeof(float));
}
static void tp_leave_backward(const Model *m, const float *dy, float *dall, int R, int C) {
    if (!m->cur_sp) return;
    memcpy(dall + (size_t)m->tp.rank * R * C, dy, (size_t)R * C * sizeof(float));
    m->tp.all_gather(m->tp.ctx, dall, (size_t)R * C * m->tp.size);
}

/* A replicated bias of a row-parallel layer (o_proj's, the MLP proj's) or the position table, added where the ranks'
   partial sums meet: rank 0 adds it to its part (tp_leave's sum then has it once), the others add nothing. Its
   gradient is the sum of the whole output gradient, which every rank has: every rank computes it. */
static const float *tp_once(const Model *m, const float *w) { return m->tp.rank == 0 ? w : NULL; }

/* Data flow into the activations (a.<name> = A_<NAME>; weights p.<name>): encoded = embedding(inputs);
   then per layer l, from x = encoded (l = 0) or resid3 of layer l-1:
     ln1 [ln1_mean, ln1_rstd] = norm(x);  q, k, v = ln1 wqkv^T (+ bqkv);  (Qwen3) qn, kn [qn_rstd, kn_rstd] =
     per-head rmsnorm(q, k);  (LLaMA/Qwen) qr, kr = rope;  atty [att] = attention(qr|q, kr|k, v);
     attproj = atty wo^T;  resid2 = x + attproj;  ln2 [ln2_mean, ln2_rstd] = norm(resid2);  fch = ln2 wfc^T;
     fch_act = gelu(fch) or swiglu(fch);  fcproj = fch_act wproj^T;  resid3 = resid2 + fcproj
   then lnf [lnf_mean, lnf_rstd] = norm(last resid3);  logits = lnf lmhead^T (wte when tied);  lse, losses.
   Tensor parallel (m->tp): the same on this rank's heads, MLP columns and vocabulary rows, with tp_enter before
   q/k/v, fc and the lm_head, tp_leave after the embedding, wo and wproj, and the vocabulary-parallel
   cross-entropy. With sequence parallelism the residual stream's tensors (encoded, the norms' inputs and outputs,
   attproj, fcproj, resid2, resid3: R rows per layer) hold this rank's rows only, and the whole rows a layer reads
   or writes pass through the scratch buffer tp_all (gathered again in the backward). */
float model_forward(Model *m, const int *inputs, const int *targets, int B, int T) {
    const ModelConfig *c = &m->cfg;
    const TensorParallel *tp = &m->tp;
    if (T > c->max_seq_len && c->positions == POS_LEARNED) {
        fprintf(stderr, "sequence length %d exceeds the model's %d positions\n", T, c->max_seq_len);
        exit(1);
    }
    for (int i = 0; i < B * T; i++)
        if (inputs[i] < 0 || inputs[i] >= tp->full.vocab_size) {
            fprintf(stderr, "token id %d out of range for vocab size %d\n", inputs[i], tp->full.vocab_size);
            exit(1);
        }
    model_prepare(m, B, T);
    m->cur_B = B; m->cur_T = T;
    memcpy(m->inputs, inputs, (size_t)B * T * sizeof(int));
    if (targets) memcpy(m->targets, targets, (size_t)B * T * sizeof(int));
    m->mean_loss = -1.0f;
    ParameterTensors p = m->params;
    ActivationTensors a = m->acts;
    int N = B * T, C = c->n_embd, NH = c->n_head, NKV = c->n_kv_head, HD = c->head_dim, F = c->d_ff, V = c->vocab_size;
    int QD = NH * HD, KD = NKV * HD, QKV = qkv_rows(c), FC = fc_rows(c);
    int R = m->cur_sp ? N / tp->size : N;          /* the rows of the residual stream on this rank */
    size_t RC = (size_t)R * C;
    float *all = m->cur_sp ? m->tp_all : NULL;     /* sequence parallel: the whole rows a layer reads or writes */

    const int *doc_start = m->reset_attention ? m->doc_start : NULL, *pos = m->reset_positions ? m->pos : NULL;
    if (doc_start || pos) document_starts(m->doc_start, m->pos, inputs, B, T, m->eod);
    if (m->pp.embed) {   /* else encoded holds the previous stage's output (model_stage_input) */
        float *emb = all ? all : a.encoded;
        embedding_forward_shard(emb, inputs, p.wte, tp->vocab_begin, V, tp_once(m, p.wpe), B, T, C, pos);
        tp_leave_forward(m, emb, a.encoded, R, C);
    }
    for (int l = 0; l < c->n_layer; l++) {
        int lg = m->pp.layer0 + l;   /* the layer's place in the whole model */
        const float *x = l == 0 ? a.encoded : a.resid3 + (l - 1) * RC;
        float *ln1 = a.ln1 + l * RC, *ln1_mean = at_layer(a.ln1_mean, l, R), *ln1_rstd = a.ln1_rstd + l * R;
        float *q = a.q + (size_t)l * N * QD, *k = a.k + (size_t)l * N * KD, *v = a.v + (size_t)l * N * KD;
        const float *wqkv = p.wqkv + (size_t)l * QKV * C, *bqkv = at_layer(p.bqkv, l, QKV);
        float *att = a.att + (size_t)l * B * NH * T * T, *atty = a.atty + (size_t)l * N * QD;
        float *attproj = a.attproj + l * RC, *resid2 = a.resid2 + l * RC;
        float *ln2 = a.ln2 + l * RC, *ln2_mean = at_layer(a.ln2_mean, l, R), *ln2_rstd = a.ln2_rstd + l * R;
        float *fch = a.fch + (size_t)l * N * FC, *fch_act = a.fch_act + (size_t)l * N * F;
        float *fcproj = a.fcproj + l * RC, *resid3 = a.resid3 + l * RC;

        norm_forward(c, ln1, ln1_mean, ln1_rstd, x, p.ln1w + l * C, at_layer(p.ln1b, l, C), R, C);
        float *ln1_all = all ? all : ln1;
        tp_enter_forward(m, ln1, ln1_all, R, C);
        matmul_forward(q, ln1_all, wqkv, bqkv, N, C, QD);
        matmul_forward(k, ln1_all, wqkv + (size_t)QD * C, bqkv ? bqkv + QD : NULL, N, C, KD);
        matmul_forward(v, ln1_all, wqkv + (size_t)(QD + KD) * C, bqkv ? bqkv + QD + KD : NULL, N, C, KD);
        const float *qa = q, *ka = k;   /* what attention reads */
        if (c->qk_norm) {
            float *qn = a.qn + (size_t)l * N * QD, *kn = a.kn + (size_t)l * N * KD;
            rmsnorm_forward(qn, a.qn_rstd + (size_t)l * N * NH, q, p.qnw + l * HD, N * NH, HD, c->norm_eps);
            rmsnorm_forward(kn, a.kn_rstd + (size_t)l * N * NKV, k, p.knw + l * HD, N * NKV, HD, c->norm_eps);
            qa = qn; ka = kn;
        }
        if (c->positions == POS_ROPE) {
            float *qr = a.qr + (size_t)l * N * QD, *kr = a.kr + (size_t)l * N * KD;
            rope_forward(qr, qa, m->rope_cos, m->rope_sin, B, T, NH, HD, pos);
            rope_forward(kr, ka, m->rope_cos, m->rope_sin, B, T, NKV, HD, pos);
            qa = qr; ka = kr;
        }
        attention_forward(atty, att, qa, ka, v, B, T, NH, NKV, HD, attention_scale(c, lg), attention_window(c, lg), doc_start);
        float *attproj_all = all ? all : attproj;
        matmul_forward(attproj_all, atty, p.wo + (size_t)l * C * QD, tp_once(m, at_layer(p.bo, l, C)), N, QD, C);
        tp_leave_forward(m, attproj_all, attproj, R, C);
        residual_forward(resid2, x, attproj, RC);
        norm_forward(c, ln2, ln2_mean, ln2_rstd, resid2, p.ln2w + l * C, at_layer(p.ln2b, l, C), R, C);
        float *ln2_all = all ? all : ln2;
        tp_enter_forward(m, ln2, ln2_all, R, C);
        matmul_forward(fch, ln2_all, p.wfc + (size_t)l * FC * C, at_layer(p.bfc, l, FC), N, C, FC);
        if (c->act == ACT_GELU_TANH) gelu_forward(fch_act, fch, (size_t)N * F);
        else swiglu_forward(fch_act, fch, N, F);
        float *fcproj_all = all ? all : fcproj;
        matmul_forward(fcproj_all, fch_act, p.wproj + (size_t)l * C * F, tp_once(m, at_layer(p.bproj, l, C)), N, F, C);
        tp_leave_forward(m, fcproj_all, fcproj, R, C);
        residual_forward(resid3, resid2, fcproj, RC);
    }
    if (!m->pp.head) return -1.0f;   /* the next stage goes on from model_stage_output */
    norm_forward(c, a.lnf, a.lnf_mean, a.lnf_rstd, a.resid3 + (c->n_layer - 1) * RC, p.lnfw, p.lnfb, R, C);
    float *lnf_all = all ? all : a.lnf;
    tp_enter_forward(m, a.lnf, lnf_all, R, C);
    matmul_forward(a.logits, lnf_all, p.lmhead ? p.lmhead : p.wte, NULL, N, C, V);
    if (tp->size == 1) crossentropy_forward(a.losses, a.lse, a.logits, targets, N, V);
    else {   /* every rank's lse and target logit of its vocabulary rows, gathered; the whole rows' losses */
        float *part = m->tp_parts + (size_t)tp->rank * 2 * N;
        crossentropy_forward_shard(part, part + N, a.logits, targets, N, V, tp->vocab_begin);
        tp->all_gather(tp->ctx, m->tp_parts, (size_t)tp->size * 2 * N);
        crossentropy_combine(a.losses, a.lse, m->tp_parts, targets, N, tp->size);
    }
    if (!targets) return -1.0f;
    double sum = 0.0;
    int valid = 0;
    for (int i = 0; i < N; i++) if (targets[i] >= 0) { sum += a.losses[i]; valid++; }
    m->num_valid = valid;
    m->mean_loss = valid ? (float)(sum / valid) : 0.0f;
    return m->mean_loss;
}

void model_zero_grad(Model *m) { memset(m->grads_memory, 0, m->num_params * sizeof(float)); }

int model_alloc_moments(Model *m) {
    if (!m->m_memory) m->m_memory = (float *)calloc(m->num_params, sizeof(float));
    if (!m->v_memory) m->v_memory = (float *)calloc(m->num_params, sizeof(float));
    return m->m_memory && m->v_memory ? 0 : -1;
}

/* The forward in reverse: each step reads d<output> and adds into d<inputs> (grads_acts d, named as the
   activations, zeroed first) and into the weight gradients g. crossentropy -> d.logits -> d.lnf -> last d.resid3;
   per layer l: d.resid3 -> d.fcproj (+ d.resid2) -> d.fch_act -> d.fch -> d.ln2 -> d.resid2;
     d.resid2 -> d.attproj (+ dx) -> d.atty -> d.qr, d.kr, d.v -> (Qwen3) d.qn, d.kn -> d.q, d.k
     -> d.ln1 -> dx;   dx = d.resid3 of layer l-1, or d.encoded -> g.wte, g.wpe.
   (GPT-2 has no qr/kr: attention's backward writes d.q, d.k.) Tensor parallel: tp_enter's and tp_leave's
   backwards where the forward had them. Sequence parallel: a column-parallel layer's weight gradient needs its
   whole input again, gathered into tp_all (Megatron's choice too: memory over one more all-gather); the whole
   input gradient goes to tp_all + N*C before its reduce-scatter. */
void model_backward(Model *m, float loss_scale) { model_backward_stage(m, loss_scale, NULL); }

void model_backward_stage(Model *m, float loss_scale, const float *dout) {
    const ModelConfig *c = &m->cfg;
    const TensorParallel *tp = &m->tp;
    if (m->pp.head && m->mean_loss < 0) { fprintf(stderr, "model_backward: the last forward had no targets\n"); exit(1); }
    int B = m->cur_B, T = m->cur_T;
    const int *doc_start = m->reset_attention ? m->doc_start : NULL, *pos = m->reset_positions ? m->pos : NULL;   /* the forward's */
    ParameterTensors p = m->params, g = m->grads;
    ActivationTensors a = m->acts, d = m->grads_acts;
    int N = B * T, C = c->n_embd, NH = c->n_head, NKV = c->n_kv_head, HD = c->head_dim, F = c->d_ff, V = c->vocab_size;
    int QD = NH * HD, KD = NKV * HD, QKV = qkv_rows(c), FC = fc_rows(c);
    size_t NC = (size_t)N * C;
    int R = m->cur_sp ? N / tp->size : N;
    size_t RC = (size_t)R * C;
    float *all = m->cur_sp ? m->tp_all : NULL, *dall = m->cur_sp ? m->tp_all + NC : NULL;
    /* every activation gradient is accumulated into from zero, except d.logits, which the crossentropy stores */
    if (m->pp.head) {
        size_t before = (size_t)(d.logits - m->grads_acts_memory), after = before + (size_t)N * V;
        memset(m->grads_acts_memory, 0, before * sizeof(float));
        memset(d.logits + (size_t)N * V, 0, (m->num_acts - after) * sizeof(float));
    } else memset(m->grads_acts_memory, 0, m->num_acts * sizeof(float));

    float *last = a.resid3 + (c->n_layer - 1) * RC, *dlast = d.resid3 + (c->n_layer - 1) * RC;
    if (m->pp.head) {
        /* the mean loss over valid targets: every valid row gets dloss = scale / valid */
        float dloss = m->num_valid ? loss_scale / m->num_valid : 0.0f;
        crossentropy_backward_shard(d.logits, a.logits, a.lse, m->targets, dloss, N, V, tp->vocab_begin, 1);
        float *lnf_all = all ? all : a.lnf, *dlnf_all = dall ? dall : d.lnf;
        tp_enter_forward(m, a.lnf, lnf_all, R, C);
        if (dall) memset(dall, 0, NC * sizeof(float));
        matmul_backward(dlnf_all, p.lmhead ? g.lmhead : g.wte, NULL, d.logits, lnf_all, p.lmhead ? p.lmhead : p.wte, N, C, V);
        tp_enter_backward(m, dlnf_all, d.lnf, R, C);
        norm_backward(c, dlast, g.lnfw, g.lnfb, d.lnf, last, p.lnfw, a.lnf_mean, a.lnf_rstd, R, C);
    } else memcpy(dlast, dout, RC * sizeof(float));   /* from the next stage */

    for (int l = c->n_layer - 1; l >= 0; l--) {
        const float *x = l == 0 ? a.encoded : a.resid3 + (l - 1) * RC;
        float *dx = l == 0 ? d.encoded : d.resid3 + (l - 1) * RC;
        size_t oq = (size_t)l * N * QD, ok = (size_t)l * N * KD;
        const float *wqkv = p.wqkv + (size_t)l * QKV * C;
        float *dwqkv = g.wqkv + (size_t)l * QKV * C, *dbqkv = at_layer(g.bqkv, l, QKV);
        float *ln2_mean = at_layer(a.ln2_mean, l, R), *ln1_mean = at_layer(a.ln1_mean, l, R);
        float *ln1 = a.ln1 + l * RC, *dln1 = d.ln1 + l * RC, *ln2 = a.ln2 + l * RC, *dln2 = d.ln2 + l * RC;
        float scale = attention_scale(c, m->pp.layer0 + l);
        int window = attention_window(c, m->pp.layer0 + l);

        /* MLP: resid3 = resid2 + proj(act(fc(norm2(resid2)))) */
        residual_backward(d.resid2 + l * RC, d.fcproj + l * RC, d.resid3 + l * RC, RC);
        float *dfcproj_all = dall ? dall : d.fcproj + l * RC;
        tp_leave_backward(m, d.fcproj + l * RC, dfcproj_all, R, C);
        matmul_backward(d.fch_act + (size_t)l * N * F, g.wproj + (size_t)l * C * F, at_layer(g.bproj, l, C),
                        dfcproj_all, a.fch_act + (size_t)l * N * F, p.wproj + (size_t)l * C * F, N, F, C);
        if (c->act == ACT_GELU_TANH)
            gelu_backward(d.fch + (size_t)l * N * FC, a.fch + (size_t)l * N * FC, d.fch_act + (size_t)l * N * F, (size_t)N * F);
        else
            swiglu_backward(d.fch + (size_t)l * N * FC, d.fch_act + (size_t)l * N * F, a.fch + (size_t)l * N * FC, N, F);
        float *ln2_all = all ? all : ln2, *dln2_all = dall ? dall : dln2;
        tp_enter_forward(m, ln2, ln2_all, R, C);
        if (dall) memset(dall, 0, NC * sizeof(float));
        matmul_backward(dln2_all, g.wfc + (size_t)l * FC * C, at_layer(g.bfc, l, FC), d.fch + (size_t)l * N * FC,
                        ln2_all, p.wfc + (size_t)l * FC * C, N, C, FC);
        tp_enter_backward(m, dln2_all, dln2, R, C);
        norm_backward(c, d.resid2 + l * RC, g.ln2w + l * C, at_layer(g.ln2b, l, C), dln2, a.resid2 + l * RC,
                      p.ln2w + l * C, ln2_mean, a.ln2_rstd + l * R, R, C);

        /* attention: resid2 = x + o(attention(rope(qknorm(q)), rope(qknorm(k)), v)) */
        residual_backward(dx, d.attproj + l * RC, d.resid2 + l * RC, RC);
        float *dattproj_all = dall ? dall : d.attproj + l * RC;
        tp_leave_backward(m, d.attproj + l * RC, dattproj_all, R, C);
        matmul_backward(d.atty + oq, g.wo + (size_t)l * C * QD, at_layer(g.bo, l, C), dattproj_all,
                        a.atty + oq, p.wo + (size_t)l * C * QD, N, QD, C);
        /* q/k before RoPE (after the qk norm when there is one), then what attention read */
        const float *qa = c->qk_norm ? a.qn + oq : a.q + oq, *ka = c->qk_norm ? a.kn + ok : a.k + ok;
        float *dqb = c->qk_norm ? d.qn + oq : d.q + oq, *dkb = c->qk_norm ? d.kn + ok : d.k + ok, *dqa = dqb, *dka = dkb;
        if (c->positions == POS_ROPE) { qa = a.qr + oq; ka = a.kr + ok; dqa = d.qr + oq; dka = d.kr + ok; }
        attention_backward(dqa, dka, d.v + ok, d.atty + oq, qa, ka, a.v + ok,
                           a.att + (size_t)l * B * NH * T * T, B, T, NH, NKV, HD, scale, window, doc_start);
        if (c->positions == POS_ROPE) {
            rope_backward(dqb, dqa, m->rope_cos, m->rope_sin, B, T, NH, HD, pos);
            rope_backward(dkb, dka, m->rope_cos, m->rope_sin, B, T, NKV, HD, pos);
        }
        if (c->qk_norm) {
            rmsnorm_backward(d.q + oq, g.qnw + l * HD, d.qn + oq, a.q + oq, p.qnw + l * HD,
                             a.qn_rstd + (size_t)l * N * NH, N * NH, HD);
            rmsnorm_backward(d.k + ok, g.knw + l * HD, d.kn + ok, a.k + ok, p.knw + l * HD,
                             a.kn_rstd + (size_t)l * N * NKV, N * NKV, HD);
        }
        float *ln1_all = all ? all : ln1, *dln1_all = dall ? dall : dln1;
        tp_enter_forward(m, ln1, ln1_all, R, C);
        if (dall) memset(dall, 0, NC * sizeof(float));
        matmul_backward(dln1_all, dwqkv, dbqkv, d.q + oq, ln1_all, wqkv, N, C, QD);
        matmul_backward(dln1_all, dwqkv + (size_t)QD * C, dbqkv ? dbqkv + QD : NULL, d.k + ok, ln1_all,
                        wqkv + (size_t)QD * C, N, C, KD);
        matmul_backward(dln1_all, dwqkv + (size_t)(QD + KD) * C, dbqkv ? dbqkv + QD + KD : NULL, d.v + ok, ln1_all,
                        wqkv + (size_t)(QD + KD) * C, N, C, KD);
        tp_enter_backward(m, dln1_all, dln1, R, C);
        norm_backward(c, dx, g.ln1w + l * C, at_layer(g.ln1b, l, C), dln1, x, p.ln1w + l * C, ln1_mean,
                      a.ln1_rstd + l * R, R, C);
    }
    if (!m->pp.embed) return;   /* d.encoded goes to the previous stage (model_stage_input_grad) */
    float *denc_all = dall ? dall : d.encoded;
    tp_leave_backward(m, d.encoded, denc_all, R, C);
    embedding_backward_shard(g.wte, g.wpe, denc_all, m->inputs, tp->vocab_begin, V, B, T, C, pos);
}

float *model_stage_input(Model *m, int B, int T) { model_prepare(m, B, T); return m->acts.encoded; }

/* the floats of a stage's input or output: the residual stream's rows on this rank (all B*T, or its block) */
size_t model_stage_floats(const Model *m, int B, int T) {
    int N = B * T, sp = m->tp.size > 1 && m->tp.sp && N % m->tp.size == 0;
    return (size_t)(sp ? N / m->tp.size : N) * m->cfg.n_embd;
}

const float *model_stage_output(const Model *m) {
    return m->acts.resid3 + (size_t)(m->cfg.n_layer - 1) * model_stage_floats(m, m->cur_B, m->cur_T);
}

const float *model_stage_input_grad(const Model *m) { return m->grads_acts.encoded; }

void model_view(Model *view, const Model *m) {
    *view = *m;
    view->acts_memory = view->grads_acts_memory = view->rope_cos = view->rope_sin = view->tp_parts = view->tp_all = NULL;
    view->num_acts = 0;
    view->inputs = view->targets = view->doc_start = view->pos = NULL;
    view->B = view->T = 0;
    view->mean_loss = -1.0f;
}

void model_view_free(Model *m) {
    free(m->acts_memory); free(m->grads_acts_memory); free(m->rope_cos); free(m->rope_sin);
    free(m->inputs); free(m->targets); free(m->doc_start); free(m->pos); free(m->tp_parts); free(m->tp_all);
    m->acts_memory = m->grads_acts_memory = m->rope_cos = m->rope_sin = m->tp_parts = m->tp_all = NULL;
    m->num_acts = 0;
    m->inputs = m->targets = m->doc_start = m->pos = NULL;
    m->B = m->T = 0;
}

void model_free(Model *m) {
    model_view_free(m);
    free(m->params_memory); free(m->grads_memory); free(m->m_memory); free(m->v_memory);
    memset(m, 0, sizeof(*m));
}

/* Stages balanced by parameters: best[s][l] is the smallest largest stage of s + 1 stages holding layers 0 .. l
   (the first stage also the embedding, the last the head), found over every cut. */
int pp_stages(const ModelConfig *f, int P, const int *layers, PipelineStage *out, char *err, size_t errlen) {
    int L = f->n_layer;
    if (P > L) { snprintf(err, errlen, "%d stages need at least as many layers (the model has %d)", P, L); return -1; }
    int *count = (int *)malloc((size_t)P * sizeof(int));
    if (layers) {
        int sum = 0;
        for (int s = 0; s < P; s++) {
            if (layers[s] < 1) { snprintf(err, errlen, "stage %d: %d layers (each stage needs at least one)", s, layers[s]); free(count); return -1; }
            count[s] = layers[s]; sum += layers[s];
        }
        if (sum != L) { snprintf(err, errlen, "the stages' layers add up to %d, the model has %d", sum, L); free(count); return -1; }
    } else {
        size_t sz[NUM_PARAM_TENSORS], layer = 0, first = 0, last = 0;
        param_sizes(f, NULL, sz);
        for (int t = 0; t < NUM_PARAM_TENSORS; t++) if (param_is_per_layer(t)) layer += sz[t] / L;
        first = sz[P_WTE] + sz[P_WPE];
        last = sz[P_LNFW] + sz[P_LNFB] + (f->tie_embeddings ? sz[P_WTE] : sz[P_LMHEAD]);
        size_t *best = (size_t *)malloc((size_t)P * L * sizeof(size_t));
        int *cut = (int *)malloc((size_t)P * L * sizeof(int));
        for (int s = 0; s < P; s++)
            for (int l = 0; l < L; l++) {   /* stage s ends with layer l and starts at layer j */
                best[s * L + l] = (size_t)-1;
                for (int j = s; j <= l; j++) {
                    if (s == 0 && j != 0) break;
                    size_t own = (size_t)(l - j + 1) * layer + (s == 0 ? first : 0) + (s == P - 1 ? last : 0);
                    size_t before = s == 0 ? 0 : best[(s - 1) * L + j - 1];
                    size_t worst = own > before ? own : before;
                    if (worst < best[s * L + l]) { best[s * L + l] = worst; cut[s * L + l] = j; }
                }
            }
        for (int s = P - 1, l = L - 1; s >= 0; s--) { int j = cut[s * L + l]; count[s] = l - j + 1; l = j - 1; }
        free(best); free(cut);
    }
    for (int s = 0, l0 = 0; s < P; s++) {
        out[s] = (PipelineStage){P, s, l0, count[s], s == 0, s == P - 1};
        l0 += count[s];
    }
    free(count);
    return 0;
}

size_t model_activation_floats(const Model *m, int B, int T) {
    size_t s[NUM_ACT_TENSORS], n = 0;
    int N = B * T, sp = m->tp.size > 1 && m->tp.sp && N % m->tp.size == 0;
    act_sizes(&m->cfg, &m->pp, B, T, sp ? N / m->tp.size : N, s);
    for (int i = 0; i < NUM_ACT_TENSORS; i++) n += s[i];
    return n + (sp ? (size_t)N * m->cfg.n_embd : 0);   /* and half of tp_all (the caller doubles for the gradients) */
}

/* ------------------------------------------------------------------------------------------------ */
/* tensor and pipeline parallelism: the ranks' slices of the model

   Rank r of S holds (Megatron's layout; H = heads, F = d_ff, V = vocabulary):
     wqkv, bqkv   its H/S q heads; its NKV/S k and v heads, or, when NKV < S, the one k/v head its q heads
                  use (S/NKV ranks share it: kv_share)                              column-parallel
     wo           the columns of its q heads                                         row-parallel
     wfc, bfc     its F/S rows (SwiGLU: its gate rows and its up rows)               column-parallel
     wproj        its F/S columns                                                    row-parallel
     wte, lmhead  its rows [vocab_begin, ...) of the vocabulary, zero_shard(V, S, r)  vocabulary-parallel
     the rest     whole on every rank (norms, wpe, the biases of wo and wproj, Qwen3's q/k norms) */
int tp_config(const ModelConfig *f, int size, int rank, ModelConfig *c, TensorParallel *tp, char *err, size_t errlen) {
    *c = *f;
    memset(tp, 0, sizeof(*tp));
    tp->size = size; tp->rank = rank; tp->full = *f; tp->kv_share = 1;
    if (size <= 1) return 0;
    size_t vb, ve, lb, le;
    zero_shard((size_t)f->vocab_size, size, rank, &vb, &ve);
    zero_shard((size_t)f->vocab_size, size, size - 1, &lb, &le);
    if (f->n_head % size) { snprintf(err, errlen, "tensor-parallel size %d does not divide num_attention_heads %d", size, f->n_head); return -1; }
    if (f->d_ff % size) { snprintf(err, errlen, "tensor-parallel size %d does not divide intermediate_size %d", size, f->d_ff); return -1; }
    if (f->n_kv_head >= size ? f->n_kv_head % size : size % f->n_kv_head) {
        snprintf(err, errlen, "tensor-parallel size %d neither divides num_key_value_heads %d nor is a multiple of it",
                 size, f->n_kv_head);
        return -1;
    }
    if (le <= lb) { snprintf(err, errlen, "tensor-parallel size %d: vocab_size %d leaves a rank no rows", size, f->vocab_size); return -1; }
    c->n_head = f->n_head / size;
    c->n_kv_head = f->n_kv_head >= size ? f->n_kv_head / size : 1;
    tp->kv_share = f->n_kv_head >= size ? 1 : size / f->n_kv_head;
    c->d_ff = f->d_ff / size;
    c->vocab_size = (int)(ve - vb);
    tp->vocab_begin = (int)vb;
    return 0;
}

static void tp_add_run(TPRun *out, size_t *n, size_t local, size_t whole, size_t len, int owner) {
    if (out) out[*n] = (TPRun){local, whole, len, owner};
    (*n)++;
}

size_t tp_runs(const Model *m, TPRun *out) {
    const TensorParallel *tp = &m->tp;
    const ModelConfig *c = &m->cfg, *f = &tp->full;
    size_t wsize[NUM_PARAM_TENSORS], woff[NUM_PARAM_TENSORS], off = 0, n = 0;
    param_sizes(f, NULL, wsize);
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) { woff[t] = off; off += wsize[t]; }
    size_t L = c->n_layer, C = c->n_embd, HD = c->head_dim, r = tp->rank;
    size_t QDl = (size_t)c->n_head * HD, KDl = (size_t)c->n_kv_head * HD, Fl = c->d_ff, F = f->d_ff;
    size_t QD = (size_t)f->n_head * HD, KD = (size_t)f->n_kv_head * HD;
    size_t kv0 = tp->kv_share > 1 ? r / tp->kv_share * HD : r * KDl;   /* its first k/v row in the whole model */
    int kv_owner = r % tp->kv_share == 0;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        size_t lo = m->param_offsets[t], wo = woff[t];
        if (m->param_sizes[t] == 0) continue;
        if (param_is_per_layer(t)) wo += m->pp.layer0 * (wsize[t] / f->n_layer);   /* a stage's first layer */
        int copy = t == P_WTE && !m->pp.embed;   /* the last stage's copy of tied embeddings: the first stage owns them */
        if (tp->size <= 1) { tp_add_run(out, &n, lo, wo, m->param_sizes[t], !copy); continue; }
        switch (t) {
        case P_WTE: case P_LMHEAD:
            tp_add_run(out, &n, lo, wo + (size_t)tp->vocab_begin * C, m->param_sizes[t], !copy);
            break;
        case P_WQKV: case P_BQKV: {   /* per layer: q rows, k rows, v rows (a bias: rows of width 1) */
            size_t w = t == P_WQKV ? C : 1, QKVl = QDl + 2 * KDl, QKV = QD + 2 * KD;
            for (size_t l = 0; l < L; l++) {
                size_t ll = lo + l * QKVl * w, wl = wo + l * QKV * w;
                tp_add_run(out, &n, ll, wl + r * QDl * w, QDl * w, 1);
                tp_add_run(out, &n, ll + QDl * w, wl + (QD + kv0) * w, KDl * w, kv_owner);
                tp_add_run(out, &n, ll + (QDl + KDl) * w, wl + (QD + KD + kv0) * w, KDl * w, kv_owner);
            }
            break;
        }
        case P_WO: case P_WPROJ: {    /* per layer, per output row: this rank's columns */
            size_t cols = t == P_WO ? QDl : Fl, wcols = t == P_WO ? QD : F;
            for (size_t i = 0; i < L * C; i++) tp_add_run(out, &n, lo + i * cols, wo + i * wcols + r * cols, cols, 1);
            break;
        }
        case P_WFC: case P_BFC: {     /* per layer: its F/S rows (SwiGLU: of the gate, then of the up half) */
            size_t w = t == P_WFC ? C : 1, halves = c->act == ACT_SWIGLU ? 2 : 1;
            for (size_t l = 0; l < L; l++)
                for (size_t h = 0; h < halves; h++)
                    tp_add_run(out, &n, lo + (l * halves + h) * Fl * w, wo + (l * halves * F + h * F + r * Fl) * w, Fl * w, 1);
            break;
        }
        default:                      /* replicated: rank 0 owns it */
            tp_add_run(out, &n, lo, wo, m->param_sizes[t], r == 0);
        }
    }
    return n;
}

static TPRun *tp_runs_alloc(const Model *m, size_t *n) {
    *n = tp_runs(m, NULL);
    TPRun *runs = (TPRun *)malloc(*n * sizeof(TPRun));
    if (!runs) { fprintf(stderr, "out of memory for the tensor-parallel layout\n"); exit(1); }
    tp_runs(m, runs);
    return runs;
}

void tp_slice(const Model *m, float *local, const float *whole) {
    size_t n;
    TPRun *runs = tp_runs_alloc(m, &n);
    for (size_t i = 0; i < n; i++) memcpy(local + runs[i].local, whole + runs[i].whole, runs[i].len * sizeof(float));
    free(runs);
}

void tp_unslice(const Model *m, float *whole, const float *local) {
    size_t n;
    TPRun *runs = tp_runs_alloc(m, &n);
    for (size_t i = 0; i < n; i++)
        if (runs[i].owner) memcpy(whole + runs[i].whole, local + runs[i].local, runs[i].len * sizeof(float));
    free(runs);
}

int model_take_slice(Model *slice, Model *whole, const ModelConfig *local, const PipelineStage *st, const TensorParallel *tp) {
    if (model_build_stage(slice, local, st) != 0) return -1;
    slice->tp = *tp;
    slice->reset_attention = whole->reset_attention; slice->reset_positions = whole->reset_positions; slice->eod = whole->eod;
    tp_slice(slice, slice->params_memory, whole->params_memory);
    if (whole->m_memory) {
        if (model_alloc_moments(slice) != 0) return -1;
        tp_slice(slice, slice->m_memory, whole->m_memory);
        tp_slice(slice, slice->v_memory, whole->v_memory);
    }
    model_free(whole);
    return 0;
}

/* the owned runs merged where they touch (in local order), each range's sum of squares added */
double tp_grad_sumsq(const Model *m, size_t begin, size_t end) {
    if (m->tp.size <= 1 && m->pp.size <= 1) return grad_sumsq(m->grads_memory, begin, end);
    size_t n, lo = 0, hi = 0;
    TPRun *runs = tp_runs_alloc(m, &n);
    double s = 0.0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && runs[i].owner && runs[i].local == hi) { hi += runs[i].len; continue; }
        size_t b = lo > begin ? lo : begin, e = hi < end ? hi : end;
        if (b < e) s += grad_sumsq(m->grads_memory, b, e);
        if (i < n && runs[i].owner) { lo = runs[i].local; hi = lo + runs[i].len; }
        else if (i < n) lo = hi = runs[i].local + runs[i].len;
    }
    free(runs);
    return s;
}

/* the k/v rows of each layer (width w: C for wqkv, 1 for bqkv) summed over the ranks that share each k/v head:
   every rank puts its rows at its head's place in a zeroed buffer of all heads, the buffer is summed over the
   group, and each rank takes its head's rows back */
static void tp_reduce_kv(Model *m, float *base, size_t w) {
    const TensorParallel *tp = &m->tp;
    size_t L = m->cfg.n_layer, HD = m->cfg.head_dim, NKV = tp->full.n_kv_head, QDl = (size_t)m->cfg.n_head * HD;
    size_t QKVl = QDl + 2 * HD, head = tp->rank / tp->kv_share, n = L * 2 * NKV * HD * w;
    float *buf = (float *)calloc(n, sizeof(float));
    if (!buf) { fprintf(stderr, "out of memory reducing the k/v gradients\n"); exit(1); }
    for (size_t l = 0; l < L; l++)
        for (size_t j = 0; j < 2; j++)
            memcpy(buf + ((l * 2 + j) * NKV + head) * HD * w, base + (l * QKVl + QDl + j * HD) * w, HD * w * sizeof(float));
    tp->all_reduce(tp->ctx, buf, n);
    for (size_t l = 0; l < L; l++)
        for (size_t j = 0; j < 2; j++)
            memcpy(base + (l * QKVl + QDl + j * HD) * w, buf + ((l * 2 + j) * NKV + head) * HD * w, HD * w * sizeof(float));
    free(buf);
}

void model_tp_reduce_grads(Model *m) {
    const TensorParallel *tp = &m->tp;
    if (tp->size <= 1) return;
    ParameterTensors g = m->grads;
    size_t L = m->cfg.n_layer, C = m->cfg.n_embd, HD = m->cfg.head_dim;
    if (g.qnw) { tp->all_reduce(tp->ctx, g.qnw, L * HD); tp->all_reduce(tp->ctx, g.knw, L * HD); }
    if (tp->kv_share > 1) { tp_reduce_kv(m, g.wqkv, C); if (g.bqkv) tp_reduce_kv(m, g.bqkv, 1); }
    if (tp->sp) {   /* each rank's norms saw only its rows (the micro-batches' rows split into tp->size blocks) */
        float *norms[6] = {g.ln1w, g.ln1b, g.ln2w, g.ln2b, g.lnfw, g.lnfb};
        size_t sizes[6] = {L * C, L * C, L * C, L * C, C, C};
        for (int i = 0; i < 6; i++) if (norms[i]) tp->all_reduce(tp->ctx, norms[i], sizes[i]);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* optimizer */

/* AdamW (torch.optim.AdamW), for each parameter p with gradient g, at step t (1-based):
     p *= 1 - lr*wd                          decoupled weight decay
     m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2       moving averages of g and g^2, both starting at 0
     mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t)      bias correction
     p -= lr * mhat / (sqrt(vhat) + eps)
   Bias correction: from m = 0, after t steps of a constant g, m = (1 - b1^t) g; dividing by 1 - b1^t (bc1 in
   the code) gives g back, so the early steps are not too small; likewise v with bc2.
   Decoupled: the decay shrinks p directly instead of adding wd*p to g (Adam with L2), so it is not divided by
   sqrt(vhat) and every weight decays at the same rate lr*wd. torch applies it first, as here.
   In the code: step_size = lr / bc1, bc2_sqrt = sqrt(bc2), so sqrt(vhat) = sqrt(vi) / bc2_sqrt. */
void adamw_update(float *params, const float *grads, float *m, float *v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step) {
    adamw_update_scaled(params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, step, 1.0f);
}

/* the same with g = grads * grad_scale (gradient clipping folded into the update: grad_clip_scale).
   Memory bound: 28 bytes a parameter (read p, g, m, v; write p, m, v), one vectorised pass */
void adamw_update_scaled(float *params, const float *grads, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale) {
    float bc1 = 1.0f - powf(beta1, (float)step), bc2 = 1.0f - powf(beta2, (float)step);
    float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2);
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i] * grad_scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi; v[i] = vi;
        float p = params[i] * (1.0f - lr * weight_decay);
        params[i] = p - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

void model_adamw_update(Model *m, const AdamWConfig *o, int step, size_t begin, size_t end) {
    model_adamw_update_scaled(m, o, step, begin, end, 1.0f);
}

void model_adamw_update_scaled(Model *m, const AdamWConfig *o, int step, size_t begin, size_t end, float grad_scale) {
    if (model_alloc_moments(m) != 0) { fprintf(stderr, "out of memory for the AdamW moments\n"); exit(1); }
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        size_t b = m->param_offsets[t], e = b + m->param_sizes[t];
        if (b < begin) b = begin;
        if (e > end) e = end;
        if (b >= e) continue;
        adamw_update_scaled(m->params_memory + b, m->grads_memory + b, m->m_memory + b, m->v_memory + b, e - b,
                            o->lr, o->beta1, o->beta2, o->eps, param_has_decay(t) ? o->weight_decay : 0.0f, step,
                            grad_scale);
    }
}

/* sum of squares in fixed chunks (partial sums in double, added in chunk order): the same result for
   any thread count */
double grad_sumsq(const float *grads, size_t begin, size_t end) {
    const size_t CH = 1 << 16;
    size_t n = end > begin ? end - begin : 0, nch = (n + CH - 1) / CH;
    double *part = (double *)calloc(nch ? nch : 1, sizeof(double));
    #pragma omp parallel for schedule(static)
    for (size_t ch = 0; ch < nch; ch++) {
        size_t b = begin + ch * CH, e = b + CH < end ? b + CH : end;
        double s = 0.0;
        #pragma omp simd reduction(+:s)
        for (size_t i = b; i < e; i++) s += (double)grads[i] * grads[i];
        part[ch] = s;
    }
    double s = 0.0;
    for (size_t ch = 0; ch < nch; ch++) s += part[ch];
    free(part);
    return s;
}

float grad_clip_scale(double norm, float max_norm) {
    float coef = (float)(max_norm / (norm + 1e-6));
    return (max_norm <= 0 || coef >= 1.0f) ? 1.0f : coef;
}

void grad_clip(float *grads, size_t n, double norm, float max_norm) {
    float coef = (float)(max_norm / (norm + 1e-6));
    if (max_norm <= 0 || coef >= 1.0f) return;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) grads[i] *= coef;
}

/* warmup: lr = max_lr * step / warmup for step <= warmup;
   then with r = (step - warmup) / (decay_steps - warmup):  cosine: min + (max-min) * 0.5 (1 + cos(pi r)),
   linear: min + (max-min) (1 - r);  after decay_steps: min_lr */
float lr_schedule(int step, float max_lr, float min_lr, int warmup, int decay_steps, int style) {
    if (warmup > 0 && step <= warmup) return max_lr * (float)step / (float)warmup;
    if (style == LR_CONSTANT) return max_lr;
    if (step >= decay_steps) return min_lr;
    float r = (float)(step - warmup) / (float)(decay_steps - warmup);
    float coeff = style == LR_COSINE ? 0.5f * (1.0f + cosf((float)M_PI * r)) : 1.0f - r;
    return min_lr + coeff * (max_lr - min_lr);
}

/* ------------------------------------------------------------------------------------------------ */
/* rng: value = mix(mix(seed) ^ counter), mix = the SplitMix64 finaliser */

static inline uint64_t rng_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t rng_u64(uint64_t seed, uint64_t counter) { return rng_mix(rng_mix(seed) ^ counter); }

float rng_uniform(uint64_t seed, uint64_t counter) { return (float)(rng_u64(seed, counter) >> 40) * (1.0f / 16777216.0f); }

/* Box-Muller on two uniforms drawn from counters 2c and 2c+1 */
float rng_normal(uint64_t seed, uint64_t counter) {
    double u1 = ((rng_u64(seed, 2 * counter) >> 11) + 1) * (1.0 / 9007199254740992.0);
    double u2 = (rng_u64(seed, 2 * counter + 1) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

void rng_permutation(uint64_t *perm, uint64_t n, uint64_t seed) {
    for (uint64_t i = 0; i < n; i++) perm[i] = i;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = rng_u64(seed, i) % i;
        uint64_t t = perm[i - 1]; perm[i - 1] = perm[j]; perm[j] = t;
    }
}

/* ================================================================================================ */
/* Everything above (config, layers, model, optimizer, rng) is the model and its training math, in plain C on
   libc and OpenMP alone. What follows connects it to files and processes: config.json (Jansson), Megatron's
   data files, safetensors and checkpoints, and the collectives of the data-parallel ranks. */

#include <jansson.h>

/* ------------------------------------------------------------------------------------------------ */
/* config.json: a Hugging Face config read into a ModelConfig (every key supported, harmless, or refused by name;
   docs/hf_config_keys.md) and written back, with the "llmtrain" object for features HF cannot express */

/* A count or id read from JSON: a whole number in [0, 2^24] (so that products such as 4 * n_embd still
   fit the int fields). */
static int int_in_range(double x) { return x >= 0 && x <= 16777216.0 && x == floor(x); }

/* Reads an optional number; returns 0 when present and numeric, 1 when absent, -1 when of the wrong type. */
static int json_num(json_t *obj, const char *key, double *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 1;
    if (!json_is_number(v)) return -1;
    *out = json_number_value(v);
    return 0;
}

/* How the reader treats each key of a Hugging Face config.json, per family (docs/hf_config_keys.md gives the
   reason for each). KEY_READ: read and implemented. KEY_IGNORED: changes nothing in the weights, the forward or
   the backward. KEY_OFF: accepted only while null, false, 0, "" or empty; any other value is refused by name.
   A key not listed for the family is refused by name. */
enum { KEY_READ, KEY_IGNORED, KEY_OFF };
enum { FK_GPT2 = 1, FK_LLAMA = 2, FK_QWEN2 = 4, FK_QWEN3 = 8, FK_ROPE = 14, FK_QWEN = 12, FK_ALL = 15 };
typedef struct { const char *key; int families, how; } ConfigKey;
static const ConfigKey config_keys[] = {
    /* every family */
    {"model_type", FK_ALL, KEY_READ}, {"llmtrain", FK_ALL, KEY_READ}, {"vocab_size", FK_ALL, KEY_READ}, {"tie_word_embeddings", FK_ALL, KEY_READ},
    {"bos_token_id", FK_ALL, KEY_READ}, {"eos_token_id", FK_ALL, KEY_READ},
    {"architectures", FK_ALL, KEY_IGNORED}, {"transformers_version", FK_ALL, KEY_IGNORED},
    {"dtype", FK_ALL, KEY_IGNORED}, {"torch_dtype", FK_ALL, KEY_IGNORED}, {"pad_token_id", FK_ALL, KEY_IGNORED},
    {"sep_token_id", FK_ALL, KEY_IGNORED}, {"decoder_start_token_id", FK_ALL, KEY_IGNORED},
    {"initializer_range", FK_ALL, KEY_IGNORED}, {"use_cache", FK_ALL, KEY_IGNORED},
    {"output_hidden_states", FK_ALL, KEY_IGNORED}, {"output_attentions", FK_ALL, KEY_IGNORED},
    {"return_dict", FK_ALL, KEY_IGNORED}, {"chunk_size_feed_forward", FK_ALL, KEY_IGNORED},
    {"id2label", FK_ALL, KEY_IGNORED}, {"label2id", FK_ALL, KEY_IGNORED}, {"num_labels", FK_ALL, KEY_IGNORED},
    {"problem_type", FK_ALL, KEY_IGNORED}, {"finetuning_task", FK_ALL, KEY_IGNORED},
    {"task_specific_params", FK_ALL, KEY_IGNORED}, {"tokenizer_class", FK_ALL, KEY_IGNORED},
    {"prefix", FK_ALL, KEY_IGNORED}, {"tie_last_hidden_states", FK_ALL, KEY_IGNORED},
    {"_name_or_path", FK_ALL, KEY_IGNORED}, {"name_or_path", FK_ALL, KEY_IGNORED},
    {"_commit_hash", FK_ALL, KEY_IGNORED}, {"attn_implementation", FK_ALL, KEY_IGNORED},
    {"_attn_implementation_autoset", FK_ALL, KEY_IGNORED}, {"experts_implementation", FK_ALL, KEY_IGNORED},
    {"torchscript", FK_ALL, KEY_IGNORED}, {"use_bfloat16", FK_ALL, KEY_IGNORED},
    {"tf_legacy_loss", FK_ALL, KEY_IGNORED}, {"is_decoder", FK_ALL, KEY_IGNORED},
    {"tie_encoder_decoder", FK_ALL, KEY_IGNORED}, {"cross_attention_hidden_size", FK_ALL, KEY_IGNORED},
    {"gradient_checkpointing", FK_ALL, KEY_IGNORED},
    /* generation settings (transformers moves them to GenerationConfig) */
    {"max_length", FK_ALL, KEY_IGNORED}, {"min_length", FK_ALL, KEY_IGNORED}, {"do_sample", FK_ALL, KEY_IGNORED},
    {"early_stopping", FK_ALL, KEY_IGNORED}, {"num_beams", FK_ALL, KEY_IGNORED},
    {"num_beam_groups", FK_ALL, KEY_IGNORED}, {"diversity_penalty", FK_ALL, KEY_IGNORED},
    {"temperature", FK_ALL, KEY_IGNORED}, {"top_k", FK_ALL, KEY_IGNORED}, {"top_p", FK_ALL, KEY_IGNORED},
    {"typical_p", FK_ALL, KEY_IGNORED}, {"epsilon_cutoff", FK_ALL, KEY_IGNORED}, {"eta_cutoff", FK_ALL, KEY_IGNORED},
    {"repetition_penalty", FK_ALL, KEY_IGNORED}, {"encoder_repetition_penalty", FK_ALL, KEY_IGNORED},
    {"length_penalty", FK_ALL, KEY_IGNORED}, {"no_repeat_ngram_size", FK_ALL, KEY_IGNORED},
    {"encoder_no_repeat_ngram_size", FK_ALL, KEY_IGNORED}, {"bad_words_ids", FK_ALL, KEY_IGNORED},
    {"num_return_sequences", FK_ALL, KEY_IGNORED}, {"output_scores", FK_ALL, KEY_IGNORED},
    {"return_dict_in_generate", FK_ALL, KEY_IGNORED}, {"forced_bos_token_id", FK_ALL, KEY_IGNORED},
    {"forced_eos_token_id", FK_ALL, KEY_IGNORED}, {"remove_invalid_values", FK_ALL, KEY_IGNORED},
    {"exponential_decay_length_penalty", FK_ALL, KEY_IGNORED}, {"suppress_tokens", FK_ALL, KEY_IGNORED},
    {"begin_suppress_tokens", FK_ALL, KEY_IGNORED}, {"num_assistant_tokens", FK_ALL, KEY_IGNORED},
    {"num_assistant_tokens_schedule", FK_ALL, KEY_IGNORED}, {"assistant_confidence_threshold", FK_ALL, KEY_IGNORED},
    {"assistant_lookbehind", FK_ALL, KEY_IGNORED}, {"target_lookbehind", FK_ALL, KEY_IGNORED},
    /* architecture switches this code does not implement */
    {"is_encoder_decoder", FK_ALL, KEY_OFF}, {"add_cross_attention", FK_ALL, KEY_OFF},
    {"pruned_heads", FK_ALL, KEY_OFF}, {"per_layer_config", FK_ALL, KEY_OFF},
    /* GPT-2 (hidden_size, max_position_embeddings, num_attention_heads, num_hidden_layers: its aliases) */
    {"n_positions", FK_GPT2, KEY_READ}, {"n_layer", FK_GPT2, KEY_READ}, {"n_embd", FK_GPT2, KEY_READ},
    {"n_head", FK_GPT2, KEY_READ}, {"n_inner", FK_GPT2, KEY_READ}, {"layer_norm_epsilon", FK_GPT2, KEY_READ},
    {"activation_function", FK_GPT2, KEY_READ}, {"scale_attn_weights", FK_GPT2, KEY_READ},
    {"scale_attn_by_inverse_layer_idx", FK_GPT2, KEY_READ}, {"reorder_and_upcast_attn", FK_GPT2, KEY_READ},
    {"n_ctx", FK_GPT2, KEY_IGNORED}, {"resid_pdrop", FK_GPT2, KEY_IGNORED}, {"embd_pdrop", FK_GPT2, KEY_IGNORED},
    {"attn_pdrop", FK_GPT2, KEY_IGNORED}, {"summary_type", FK_GPT2, KEY_IGNORED},
    {"summary_use_proj", FK_GPT2, KEY_IGNORED}, {"summary_activation", FK_GPT2, KEY_IGNORED},
    {"summary_proj_to_labels", FK_GPT2, KEY_IGNORED}, {"summary_first_dropout", FK_GPT2, KEY_IGNORED},
    /* the sizes, under the LLaMA names (GPT-2 aliases) */
    {"hidden_size", FK_ALL, KEY_READ}, {"max_position_embeddings", FK_ALL, KEY_READ},
    {"num_attention_heads", FK_ALL, KEY_READ}, {"num_hidden_layers", FK_ALL, KEY_READ},
    /* LLaMA, Qwen2, Qwen3 */
    {"intermediate_size", FK_ROPE, KEY_READ}, {"num_key_value_heads", FK_ROPE, KEY_READ},
    {"head_dim", FK_ROPE, KEY_READ}, {"hidden_act", FK_ROPE, KEY_READ}, {"rms_norm_eps", FK_ROPE, KEY_READ},
    {"rope_theta", FK_ROPE, KEY_READ}, {"rope_scaling", FK_ROPE, KEY_READ}, {"rope_parameters", FK_ROPE, KEY_READ},
    {"partial_rotary_factor", FK_ROPE, KEY_READ}, {"attention_dropout", FK_ROPE, KEY_IGNORED},
    {"attention_bias", FK_LLAMA | FK_QWEN3, KEY_READ}, {"attention_bias", FK_QWEN2, KEY_IGNORED},
    {"mlp_bias", FK_LLAMA, KEY_READ}, {"mlp_bias", FK_QWEN, KEY_IGNORED}, {"pretraining_tp", FK_LLAMA, KEY_IGNORED},
    {"use_sliding_window", FK_QWEN, KEY_READ}, {"sliding_window", FK_QWEN, KEY_READ},
    {"max_window_layers", FK_QWEN, KEY_READ}, {"layer_types", FK_QWEN, KEY_READ},
};

/* null, false, 0, "" or an empty object/array: the value of a KEY_OFF key that is accepted */
static int json_is_off(json_t *v) {
    return !v || json_is_null(v) || json_is_false(v) || (json_is_number(v) && json_number_value(v) == 0) ||
           (json_is_string(v) && !json_string_length(v)) || (json_is_object(v) && !json_object_size(v)) ||
           (json_is_array(v) && !json_array_size(v));
}

/* Every key of root must be listed for the family; KEY_OFF keys must be off. */
static int config_check_keys(json_t *root, int family, const char *file, char *err, size_t errlen) {
    const char *key;
    json_t *v;
    int bit = 1 << family, n = (int)(sizeof(config_keys) / sizeof(config_keys[0]));
    json_object_foreach(root, key, v) {
        int how = -1;
        for (int i = 0; i < n && how < 0; i++)
            if ((config_keys[i].families & bit) && !strcmp(config_keys[i].key, key)) how = config_keys[i].how;
        if (how < 0) {
            snprintf(err, errlen, "%s: key \"%s\" is not a %s config key this code knows (see docs/hf_config_keys.md)",
                     file, key, family_name(family));
            return -1;
        }
        if (how == KEY_OFF && !json_is_off(v)) {
            snprintf(err, errlen, "%s: key \"%s\" is not supported (only null, false or empty)", file, key); return -1;
        }
    }
    return 0;
}

/* An optional boolean key: 0 when absent or null, -1 (with err) when of another type. */
static int json_flag(json_t *root, const char *key, int *out, const char *file, char *err, size_t errlen) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) { snprintf(err, errlen, "%s: key \"%s\" must be true or false", file, key); return -1; }
    *out = json_is_true(v);
    return 0;
}

/* An optional whole-number key in [0, 2^24]: 0 when absent (out unchanged) or fine, -1 (with err) otherwise. */
static int json_count(json_t *obj, const char *key, int *out, const char *file, char *err, size_t errlen) {
    double x;
    int r = json_num(obj, key, &x);
    if (r == 1) return 0;
    if (r < 0 || !int_in_range(x)) {
        snprintf(err, errlen, "%s: key \"%s\" must be a whole number from 0 to 2^24", file, key); return -1;
    }
    *out = (int)x;
    return 0;
}

/* RoPE: the rope dict is rope_scaling when it is a non-empty object, else rope_parameters (transformers 5
   writes rope_theta and the rope type there); rope_theta comes from that dict, else the top level, else
   10000. Types: default, llama3. */
static int config_rope(ModelConfig *c, json_t *root, const char *file, char *err, size_t errlen) {
    json_t *rs = json_object_get(root, "rope_scaling"), *rp = json_object_get(root, "rope_parameters");
    if (rs && !json_is_null(rs) && !json_is_object(rs)) { snprintf(err, errlen, "%s: key \"rope_scaling\" must be an object or null", file); return -1; }
    if (rp && !json_is_null(rp) && !json_is_object(rp)) { snprintf(err, errlen, "%s: key \"rope_parameters\" must be an object or null", file); return -1; }
    json_t *d = json_is_object(rs) && json_object_size(rs) ? rs : json_is_object(rp) ? rp : NULL;
    const char *dname = d == rs ? "rope_scaling" : "rope_parameters";
    double x = 10000.0, prf = 1.0;
    if (json_num(root, "rope_theta", &x) < 0 || (d && json_num(d, "rope_theta", &x) < 0)) {
        snprintf(err, errlen, "%s: key \"rope_theta\" must be a number", file); return -1;
    }
    c->rope_theta = (float)x;
    if (json_num(root, "partial_rotary_factor", &prf) < 0 || prf != 1.0) {
        snprintf(err, errlen, "%s: key \"partial_rotary_factor\" is not supported (only 1)", file); return -1;
    }
    if (!d) return 0;
    json_t *t = json_object_get(d, "rope_type");
    if (!t) t = json_object_get(d, "type");
    if (t && !json_is_string(t)) { snprintf(err, errlen, "%s: %s.rope_type must be a string", file, dname); return -1; }
    const char *rt = t ? json_string_value(t) : "default";
    const char *llama3_keys[4] = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"};
    if (!strcmp(rt, "llama3")) {
        double v[4];
        for (int i = 0; i < 4; i++)
            if (json_num(d, llama3_keys[i], &v[i]) != 0) {
                snprintf(err, errlen, "%s: llama3 %s needs the number \"%s\"", file, dname, llama3_keys[i]); return -1;
            }
        c->rope_llama3 = 1;
        c->rope_factor = (float)v[0]; c->rope_low_freq_factor = (float)v[1]; c->rope_high_freq_factor = (float)v[2];
        c->rope_orig_max_pos = int_in_range(v[3]) ? (int)v[3] : 0;   /* 0 fails the validation */
    } else if (strcmp(rt, "default")) {
        snprintf(err, errlen, "%s: %s rope type \"%s\" is not supported (default or llama3)", file, dname, rt); return -1;
    }
    const char *key;
    json_t *v;
    json_object_foreach(d, key, v) {
        int known = !strcmp(key, "rope_type") || !strcmp(key, "type") || !strcmp(key, "rope_theta");
        for (int i = 0; i < 4 && c->rope_llama3; i++) known |= !strcmp(key, llama3_keys[i]);
        if (!strcmp(key, "partial_rotary_factor") && json_is_number(v) && json_number_value(v) == 1.0) known = 1;
        if (!known) { snprintf(err, errlen, "%s: %s key \"%s\" is not supported for rope type %s", file, dname, key, rt); return -1; }
    }
    return 0;
}

/* Qwen sliding-window attention, as transformers reads it: sliding_window counts only with use_sliding_window
   true; layer_types, when given, names each layer's attention ("full_attention" or "sliding_attention"), else
   the layers l >= max_window_layers slide. Sliding layers must come after all full ones. */
static int config_sliding(ModelConfig *c, json_t *root, const char *file, char *err, size_t errlen) {
    int use = 0, w = 0;
    if (json_flag(root, "use_sliding_window", &use, file, err, errlen) != 0) return -1;
    if (json_count(root, "max_window_layers", &c->max_window_layers, file, err, errlen) != 0) return -1;
    if (use && json_count(root, "sliding_window", &w, file, err, errlen) != 0) return -1;
    json_t *sw = json_object_get(root, "sliding_window");
    if (use && w == 0 && sw && !json_is_null(sw)) {
        snprintf(err, errlen, "%s: key \"sliding_window\" must be at least 1", file); return -1;
    }
    c->sliding_window = w;
    json_t *lt = json_object_get(root, "layer_types");
    if (!lt || json_is_null(lt)) return 0;
    if (!json_is_array(lt) || (int)json_array_size(lt) != c->n_layer) {
        snprintf(err, errlen, "%s: key \"layer_types\" must be a list of %d layer types", file, c->n_layer); return -1;
    }
    int first_sliding = c->n_layer;
    for (int l = 0; l < c->n_layer; l++) {
        const char *s = json_string_value(json_array_get(lt, l));
        int sliding = s && !strcmp(s, "sliding_attention");
        if (!s || !(sliding || !strcmp(s, "full_attention") || !strcmp(s, "attention"))) {
            snprintf(err, errlen, "%s: layer_types[%d] must be \"full_attention\" or \"sliding_attention\"", file, l); return -1;
        }
        if (sliding && first_sliding == c->n_layer) first_sliding = l;
        if (!sliding && first_sliding < l) {
            snprintf(err, errlen, "%s: layer_types[%d] is full attention after a sliding layer (not supported)", file, l); return -1;
        }
    }
    if (first_sliding < c->n_layer && c->sliding_window == 0) {
        snprintf(err, errlen, "%s: layer_types has sliding_attention layers but no sliding_window "
                 "(use_sliding_window false or sliding_window null)", file); return -1;
    }
    c->max_window_layers = first_sliding;
    if (first_sliding == c->n_layer) c->sliding_window = 0;
    return 0;
}

const char *const norm_names[2] = {"layernorm", "rmsnorm"}, *const act_names[2] = {"gelu", "swiglu"};
const char *const positions_names[3] = {"learned", "rope", "none"};

/* index of s in names[0..n), or -1 */
static int name_index(const char *s, const char *const *names, int n) {
    for (int i = 0; s && i < n; i++) if (!strcmp(s, names[i])) return i;
    return -1;
}

/* config.json's "llmtrain" object: the features that differ from the family's and that its HF config cannot
   say, {"norm": "rmsnorm", "activation": "swiglu", "positions": "none", "mlp_bias": false}; every key optional,
   any other key refused. Absent: the family's features stand. */
static int config_features(ModelConfig *c, json_t *o, const char *file, char *err, size_t errlen) {
    if (!o) return 0;
    if (!json_is_object(o)) { snprintf(err, errlen, "%s: key \"llmtrain\" must be an object", file); return -1; }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        int *dst = !strcmp(key, "norm") ? &c->norm : !strcmp(key, "activation") ? &c->act :
                   !strcmp(key, "positions") ? &c->positions : NULL;
        const char *const *names = dst == &c->norm ? norm_names : dst == &c->act ? act_names : positions_names;
        int n = dst == &c->positions ? 3 : 2;
        if (!strcmp(key, "mlp_bias")) {
            if (!json_is_boolean(v)) { snprintf(err, errlen, "%s: llmtrain key \"mlp_bias\" must be true or false", file); return -1; }
            c->mlp_bias = json_is_true(v);
        } else if (!dst) {
            snprintf(err, errlen, "%s: llmtrain key \"%s\" is not known (norm, activation, positions, mlp_bias)", file, key);
            return -1;
        } else if ((*dst = name_index(json_string_value(v), names, n)) < 0) {
            snprintf(err, errlen, "%s: llmtrain key \"%s\" must be %s%s%s%s%s", file, key, names[0], n == 3 ? ", " : " or ",
                     names[1], n == 3 ? " or " : "", n == 3 ? names[2] : "");
            return -1;
        }
    }
    return 0;
}

/* The features of c that differ from its family's and that the family's HF config has no key for (LLaMA has
   mlp_bias), as the "llmtrain" object (NULL when none) and, with buf, as text. */
static json_t *config_extras(const ModelConfig *c, char *buf, size_t n) {
    ModelConfig d;
    config_defaults(&d, c->family);
    json_t *o = json_object();
    if (c->norm != d.norm) json_object_set_new(o, "norm", json_string(norm_names[c->norm]));
    if (c->act != d.act) json_object_set_new(o, "activation", json_string(act_names[c->act]));
    if (c->positions != d.positions) json_object_set_new(o, "positions", json_string(positions_names[c->positions]));
    if (c->mlp_bias != d.mlp_bias && c->family != FAMILY_LLAMA) json_object_set_new(o, "mlp_bias", json_boolean(c->mlp_bias));
    if (buf && n) {
        buf[0] = 0;
        const char *key;
        json_t *v;
        json_object_foreach(o, key, v) {
            size_t k = strlen(buf);
            snprintf(buf + k, n - k, "%s%s %s", k ? ", " : "", key,
                     json_is_string(v) ? json_string_value(v) : json_is_true(v) ? "true" : "false");
        }
    }
    if (json_object_size(o) == 0) { json_decref(o); return NULL; }
    return o;
}

int model_config_extras(const ModelConfig *c, char *buf, size_t n) {
    json_t *o = config_extras(c, buf, n);
    int k = o ? (int)json_object_size(o) : 0;
    json_decref(o);
    return k;
}

/* The body of model_config_from_json on a parsed JSON document. */
static int config_from_root(ModelConfig *c, json_t *root, const char *file, char *err, size_t errlen) {
    if (!json_is_object(root)) { snprintf(err, errlen, "%s: expected a JSON object", file); return -1; }
    json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) { snprintf(err, errlen, "%s: missing string key \"model_type\"", file); return -1; }
    const char *type = json_string_value(mt);
    int family;
    if (!strcmp(type, "gpt2")) family = FAMILY_GPT2;
    else if (!strcmp(type, "llama")) family = FAMILY_LLAMA;
    else if (!strcmp(type, "qwen2")) family = FAMILY_QWEN2;
    else if (!strcmp(type, "qwen3")) family = FAMILY_QWEN3;
    else { snprintf(err, errlen, "%s: unknown model_type \"%s\" (expected gpt2, llama, qwen2 or qwen3)", file, type); return -1; }
    config_defaults(c, family);
    if (config_check_keys(root, family, file, err, errlen) != 0) return -1;

    /* the sizes every family has, under the family's HF names (GPT-2 also takes the LLaMA names as aliases,
       as transformers' attribute_map does); a default < 0 marks a required key */
    const char *names_gpt2[7] = {"vocab_size", "n_positions", "n_layer", "n_embd", "n_head", "n_inner", "layer_norm_epsilon"};
    const char *names_llama[7] = {"vocab_size", "max_position_embeddings", "num_hidden_layers", "hidden_size",
                                  "num_attention_heads", "intermediate_size", "rms_norm_eps"};
    const char **names = family == FAMILY_GPT2 ? names_gpt2 : names_llama;
    double val[7], defs[7] = {-1.0, family == FAMILY_GPT2 ? 1024.0 : 2048.0, -1.0, -1.0, -1.0, family == FAMILY_GPT2 ? 0.0 : -1.0,
                              family == FAMILY_GPT2 ? 1e-5 : 1e-6};
    for (int i = 0; i < 7; i++) {
        const char *name = names[i];
        if (family == FAMILY_GPT2 && names_gpt2[i] != names_llama[i] && i >= 1 && i <= 4 && json_object_get(root, names_llama[i])) {
            if (json_object_get(root, names_gpt2[i])) {
                snprintf(err, errlen, "%s: both \"%s\" and its alias \"%s\" are set", file, names_gpt2[i], names_llama[i]); return -1;
            }
            name = names_llama[i];
        }
        int r = json_num(root, name, &val[i]);
        if (r < 0) { snprintf(err, errlen, "%s: key \"%s\" must be a number", file, name); return -1; }
        if (r == 1) {
            if (defs[i] < 0) { snprintf(err, errlen, "%s: missing key \"%s\" for model_type %s", file, name, type); return -1; }
            val[i] = defs[i];
        }
        if (i < 6 && !int_in_range(val[i])) {
            snprintf(err, errlen, "%s: key \"%s\" must be a whole number from 0 to 2^24, not %g", file, name, val[i]); return -1;
        }
    }
    c->vocab_size = (int)val[0]; c->max_seq_len = (int)val[1]; c->n_layer = (int)val[2];
    c->n_embd = (int)val[3]; c->n_head = (int)val[4]; c->d_ff = (int)val[5]; c->norm_eps = (float)val[6];
    c->n_kv_head = c->n_head;
    c->head_dim = c->n_head > 0 ? c->n_embd / c->n_head : 0;
    double x;
    if (family == FAMILY_GPT2) {
        if (c->d_ff == 0) c->d_ff = 4 * c->n_embd;
        json_t *act = json_object_get(root, "activation_function");
        if (act && !(json_is_string(act) && (!strcmp(json_string_value(act), "gelu_new") ||
                     !strcmp(json_string_value(act), "gelu_pytorch_tanh")))) {
            snprintf(err, errlen, "%s: activation_function must be \"gelu_new\" (tanh GELU)", file); return -1;
        }
        int scaled = 1;
        if (json_flag(root, "scale_attn_weights", &scaled, file, err, errlen) != 0 ||
            json_flag(root, "scale_attn_by_inverse_layer_idx", &c->attn_by_layer, file, err, errlen) != 0 ||
            json_flag(root, "reorder_and_upcast_attn", &c->attn_upcast, file, err, errlen) != 0) return -1;
        c->attn_unscaled = !scaled;
    } else {
        if (json_count(root, "num_key_value_heads", &c->n_kv_head, file, err, errlen) != 0) return -1;
        if (family == FAMILY_QWEN3) c->head_dim = 128;   /* Qwen3Config's default; the others use hidden / heads */
        if (json_count(root, "head_dim", &c->head_dim, file, err, errlen) != 0) return -1;
        json_t *act = json_object_get(root, "hidden_act");
        if (act && !(json_is_string(act) && (!strcmp(json_string_value(act), "silu") || !strcmp(json_string_value(act), "swish")))) {
            snprintf(err, errlen, "%s: hidden_act must be \"silu\"", file); return -1;
        }
        if (family != FAMILY_QWEN2) {   /* Qwen2 always has q/k/v biases and no o_proj bias */
            int bias = 0;
            if (json_flag(root, "attention_bias", &bias, file, err, errlen) != 0) return -1;
            c->qkv_bias = c->o_bias = bias;
        }
        if (family == FAMILY_LLAMA && json_flag(root, "mlp_bias", &c->mlp_bias, file, err, errlen) != 0) return -1;
        if (config_rope(c, root, file, err, errlen) != 0) return -1;
        if (family != FAMILY_LLAMA && config_sliding(c, root, file, err, errlen) != 0) return -1;
    }
    if (json_flag(root, "tie_word_embeddings", &c->tie_embeddings, file, err, errlen) != 0) return -1;
    if (json_num(root, "bos_token_id", &x) == 0 && int_in_range(x)) c->bos_token_id = (int)x;
    if (json_num(root, "eos_token_id", &x) == 0 && int_in_range(x)) c->eos_token_id = (int)x;
    else {
        json_t *e = json_object_get(root, "eos_token_id");
        if (json_is_array(e) && json_array_size(e) > 0 && json_is_number(json_array_get(e, 0)) &&
            int_in_range(json_number_value(json_array_get(e, 0))))
            c->eos_token_id = (int)json_number_value(json_array_get(e, 0));
    }
    if (config_features(c, json_object_get(root, "llmtrain"), file, err, errlen) != 0) return -1;
    char verr[256];
    if (model_config_validate(c, verr, sizeof(verr)) != 0) { snprintf(err, errlen, "%s: %s", file, verr); return -1; }
    return 0;
}

int model_config_from_json(ModelConfig *c, const char *path, char *err, size_t errlen) {
    char file[1200];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(file, sizeof(file), "%s/config.json", path);
    else snprintf(file, sizeof(file), "%s", path);
    json_error_t je;
    json_t *root = json_load_file(file, 0, &je);
    if (!root) {
        if (access(file, R_OK) != 0) snprintf(err, errlen, "%s: cannot open: %s", file, strerror(errno));
        else snprintf(err, errlen, "%s:%d:%d: malformed JSON: %s", file, je.line, je.column, je.text);
        return -1;
    }
    int rc = config_from_root(c, root, file, err, errlen);
    json_decref(root);
    return rc;
}

char *model_config_to_json(const ModelConfig *c) {
    json_t *o = json_object();
    if (c->family == FAMILY_GPT2) {
        json_object_set_new(o, "architectures", json_pack("[s]", "GPT2LMHeadModel"));
        json_object_set_new(o, "model_type", json_string("gpt2"));
        json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
        json_object_set_new(o, "n_positions", json_integer(c->max_seq_len));
        json_object_set_new(o, "n_ctx", json_integer(c->max_seq_len));
        json_object_set_new(o, "n_embd", json_integer(c->n_embd));
        json_object_set_new(o, "n_layer", json_integer(c->n_layer));
        json_object_set_new(o, "n_head", json_integer(c->n_head));
        json_object_set_new(o, "n_inner", json_integer(c->d_ff));
        json_object_set_new(o, "activation_function", json_string("gelu_new"));
        json_object_set_new(o, "layer_norm_epsilon", json_real(c->norm_eps));
        json_object_set_new(o, "resid_pdrop", json_real(0.0));
        json_object_set_new(o, "embd_pdrop", json_real(0.0));
        json_object_set_new(o, "attn_pdrop", json_real(0.0));
        json_object_set_new(o, "scale_attn_weights", json_boolean(!c->attn_unscaled));
        json_object_set_new(o, "scale_attn_by_inverse_layer_idx", json_boolean(c->attn_by_layer));
        json_object_set_new(o, "reorder_and_upcast_attn", json_boolean(c->attn_upcast));
    } else {
        const char *arch = c->family == FAMILY_LLAMA ? "LlamaForCausalLM" : c->family == FAMILY_QWEN2 ?
                           "Qwen2ForCausalLM" : "Qwen3ForCausalLM";
        json_object_set_new(o, "architectures", json_pack("[s]", arch));
        json_object_set_new(o, "model_type", json_string(family_name(c->family)));
        json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
        json_object_set_new(o, "max_position_embeddings", json_integer(c->max_seq_len));
        json_object_set_new(o, "hidden_size", json_integer(c->n_embd));
        json_object_set_new(o, "intermediate_size", json_integer(c->d_ff));
        json_object_set_new(o, "num_hidden_layers", json_integer(c->n_layer));
        json_object_set_new(o, "num_attention_heads", json_integer(c->n_head));
        json_object_set_new(o, "num_key_value_heads", json_integer(c->n_kv_head));
        json_object_set_new(o, "head_dim", json_integer(c->head_dim));
        json_object_set_new(o, "hidden_act", json_string("silu"));
        json_object_set_new(o, "rms_norm_eps", json_real(c->norm_eps));
        json_object_set_new(o, "rope_theta", json_real(c->rope_theta));
        if (c->rope_llama3)
            json_object_set_new(o, "rope_scaling", json_pack("{s:s,s:f,s:f,s:f,s:i}", "rope_type", "llama3",
                                "factor", c->rope_factor, "low_freq_factor", c->rope_low_freq_factor,
                                "high_freq_factor", c->rope_high_freq_factor,
                                "original_max_position_embeddings", c->rope_orig_max_pos));
        else json_object_set_new(o, "rope_scaling", json_null());
        if (c->family != FAMILY_QWEN2) json_object_set_new(o, "attention_bias", json_boolean(c->qkv_bias));
        if (c->family == FAMILY_LLAMA) json_object_set_new(o, "mlp_bias", json_boolean(c->mlp_bias));
        json_object_set_new(o, "attention_dropout", json_real(0.0));
        if (c->family != FAMILY_LLAMA) {
            json_object_set_new(o, "use_sliding_window", json_boolean(c->sliding_window > 0));
            json_object_set_new(o, "sliding_window", c->sliding_window > 0 ? json_integer(c->sliding_window) : json_null());
            json_object_set_new(o, "max_window_layers", json_integer(c->max_window_layers));
            json_t *types = json_array();
            for (int l = 0; l < c->n_layer; l++)
                json_array_append_new(types, json_string(attention_window(c, l) ? "sliding_attention" : "full_attention"));
            json_object_set_new(o, "layer_types", types);
        }
    }
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_embeddings));
    if (c->bos_token_id >= 0) json_object_set_new(o, "bos_token_id", json_integer(c->bos_token_id));
    if (c->eos_token_id >= 0) json_object_set_new(o, "eos_token_id", json_integer(c->eos_token_id));
    json_object_set_new(o, "torch_dtype", json_string("float32"));
    json_object_set_new(o, "initializer_range", json_real(0.02));
    json_t *extras = config_extras(c, NULL, 0);
    if (extras) json_object_set_new(o, "llmtrain", extras);
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}

/* ------------------------------------------------------------------------------------------------ */
/* data: Megatron MMIDIDX (.idx header: magic, version 1, dtype code, S, D+1; int32 lengths[S];
   int64 byte pointers[S]; int64 document_indices[D+1]) */

static uint64_t rd_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static unsigned char *map_file(const char *path, size_t *size, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fd, &sb) != 0) { snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno)); close(fd); return NULL; }
    *size = (size_t)sb.st_size;
    if (*size == 0) { close(fd); return (unsigned char *)""; }
    void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) { snprintf(err, errlen, "%s: cannot mmap: %s", path, strerror(errno)); return NULL; }
    return (unsigned char *)p;
}

static void unmap_file(const unsigned char *p, size_t size) { if (p && size) munmap((void *)p, size); }

/* Checks the index idx[0..isz) and fills ds (opening the .bin); -1 with err on any inconsistency. */
static int indexed_dataset_parse(IndexedDataset *ds, const unsigned char *idx, size_t isz, const char *ip, const char *bp, char *err, size_t errlen) {
    static const unsigned char magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
    if (isz < 34 || memcmp(idx, magic, 9) != 0) { snprintf(err, errlen, "%s: not a Megatron MMIDIDX index (bad magic)", ip); return -1; }
    if (rd_u64(idx + 9) != 1) { snprintf(err, errlen, "%s: unsupported version %llu (expected 1)", ip, (unsigned long long)rd_u64(idx + 9)); return -1; }
    ds->dtype_code = idx[17];
    if (ds->dtype_code == 8) ds->itemsize = 2;
    else if (ds->dtype_code == 4) ds->itemsize = 4;
    else { snprintf(err, errlen, "%s: token dtype code %d not supported (8 uint16 or 4 int32)", ip, ds->dtype_code); return -1; }
    uint64_t S = rd_u64(idx + 18), D1 = rd_u64(idx + 26);
    if (D1 < 1 || S > isz / 12 || D1 > isz / 8 || 34 + 12 * S + 8 * D1 > isz) {
        snprintf(err, errlen, "%s: truncated index (%llu sequences, %llu document indices, %zu bytes)", ip,
                 (unsigned long long)S, (unsigned long long)D1, isz);
        return -1;
    }
    ds->num_seqs = S; ds->num_docs = D1 - 1;
    ds->bin = map_file(bp, &ds->bin_size, err, errlen);
    if (!ds->bin) return -1;
    const unsigned char *lens = idx + 34, *ptrs = idx + 34 + 4 * S, *docs = idx + 34 + 12 * S;
    ds->doc_start = (int64_t *)malloc((ds->num_docs + 1) * sizeof(int64_t));
    ds->doc_len = (int64_t *)malloc((ds->num_docs + 1) * sizeof(int64_t));
    ds->seq_start = (int64_t *)malloc((S + 1) * sizeof(int64_t));
    if (!ds->doc_start || !ds->doc_len || !ds->seq_start) { snprintf(err, errlen, "%s: out of memory for %llu sequences", ip, (unsigned long long)S); return -1; }
    /* sequences must be stored back to back; a document is the run of sequences between two indices */
    int64_t expect = 0;
    for (uint64_t i = 0; i < S; i++) {
        int32_t len; int64_t ptr;
        memcpy(&len, lens + 4 * i, 4); memcpy(&ptr, ptrs + 8 * i, 8);
        if (len < 0 || ptr != expect) { snprintf(err, errlen, "%s: sequence %llu has length %d at byte %lld (expected byte %lld)", ip, (unsigned long long)i, len, (long long)ptr, (long long)expect); return -1; }
        ds->seq_start[i] = expect / ds->itemsize;
        expect += (int64_t)len * ds->itemsize;
    }
    ds->seq_start[S] = expect / ds->itemsize;
    if ((size_t)expect != ds->bin_size) { snprintf(err, errlen, "%s: holds %zu bytes but the index describes %lld", bp, ds->bin_size, (long long)expect); return -1; }
    int64_t prev = 0;
    for (uint64_t d = 0; d < D1; d++) {
        int64_t di; memcpy(&di, docs + 8 * d, 8);
        if ((d == 0 && di != 0) || di < prev || (uint64_t)di > S || (d == D1 - 1 && (uint64_t)di != S)) {
            snprintf(err, errlen, "%s: document index %llu = %lld is out of order or range", ip, (unsigned long long)d, (long long)di); return -1;
        }
        if (d > 0) {
            int64_t first = prev, n = 0, start = 0;
            if (first < (int64_t)S) { int64_t p; memcpy(&p, ptrs + 8 * first, 8); start = p / ds->itemsize; }
            else start = expect / ds->itemsize;
            for (int64_t s = first; s < di; s++) { int32_t len; memcpy(&len, lens + 4 * s, 4); n += len; }
            ds->doc_start[d - 1] = start; ds->doc_len[d - 1] = n;
        }
        prev = di;
    }
    return 0;
}

int indexed_dataset_open(IndexedDataset *ds, const char *prefix, char *err, size_t errlen) {
    memset(ds, 0, sizeof(*ds));
    snprintf(ds->path, sizeof(ds->path), "%s", prefix);
    char ip[1100], bp[1100];
    snprintf(ip, sizeof(ip), "%s.idx", prefix);
    snprintf(bp, sizeof(bp), "%s.bin", prefix);
    size_t isz;
    unsigned char *idx = map_file(ip, &isz, err, errlen);
    if (!idx) return -1;
    int rc = indexed_dataset_parse(ds, idx, isz, ip, bp, err, errlen);
    unmap_file(idx, isz);
    if (rc != 0) indexed_dataset_close(ds);
    return rc;
}

int64_t indexed_dataset_token(const IndexedDataset *ds, int64_t e) {
    if (ds->itemsize == 2) { uint16_t v; memcpy(&v, ds->bin + 2 * e, 2); return v; }
    int32_t v; memcpy(&v, ds->bin + 4 * e, 4); return v;
}

/* the first of elements [begin, end) that is not in [0, vocab), or -1: a pass without branches over the mapped
   .bin (the file is mapped at a page boundary, so the elements are aligned), then a search only on failure */
static int64_t first_bad_id(const IndexedDataset *ds, int64_t begin, int64_t end, int64_t vocab) {
    int bad = 0;
    if (ds->itemsize == 2) {
        const uint16_t *t = (const uint16_t *)ds->bin;
        for (int64_t i = begin; i < end; i++) bad |= t[i] >= vocab;
    } else {
        const int32_t *t = (const int32_t *)ds->bin;
        for (int64_t i = begin; i < end; i++) bad |= (t[i] < 0) | (t[i] >= vocab);
    }
    if (!bad) return -1;
    for (int64_t i = begin; i < end; i++) {
        int64_t id = indexed_dataset_token(ds, i);
        if (id < 0 || id >= vocab) return i;
    }
    return -1;
}

int indexed_dataset_check_ids(const IndexedDataset *ds, uint64_t seq_begin, uint64_t seq_end, int vocab, char *err, size_t errlen) {
    if (seq_begin >= seq_end) return 0;
    /* the sequences are stored back to back: one pass over their tokens, then the sequence of a bad one */
    int64_t e = first_bad_id(ds, ds->seq_start[seq_begin], ds->seq_start[seq_end], vocab);
    if (e < 0) return 0;
    uint64_t q = seq_begin;
    while (ds->seq_start[q + 1] <= e) q++;
    snprintf(err, errlen, "%s.bin: sequence %llu, token %lld: id %lld is outside the model's vocabulary [0, %d)", ds->path,
             (unsigned long long)q, (long long)(e - ds->seq_start[q]), (long long)indexed_dataset_token(ds, e), vocab);
    return -1;
}

void indexed_dataset_close(IndexedDataset *ds) {
    unmap_file(ds->bin, ds->bin_size);
    free(ds->doc_start); free(ds->doc_len); free(ds->seq_start);
    memset(ds, 0, sizeof(*ds));
}

int split_sequences(const char *spec, uint64_t N, uint64_t begin[3], uint64_t end[3], char *err, size_t errlen) {
    double w[3] = {0, 0, 0}, sum = 0;
    const char *p = spec;
    for (int i = 0; i < 3 && *p; i++) {
        char *e;
        w[i] = strtod(p, &e);
        if (e == p || w[i] < 0) { snprintf(err, errlen, "--split \"%s\": expected up to 3 non-negative numbers like 949,50,1", spec); return -1; }
        sum += w[i];
        p = e;
        if (*p == ',' || *p == '/') p++;
        else if (*p) { snprintf(err, errlen, "--split \"%s\": expected up to 3 non-negative numbers like 949,50,1", spec); return -1; }
    }
    if (*p || sum <= 0) { snprintf(err, errlen, "--split \"%s\": expected up to 3 non-negative numbers with a positive sum", spec); return -1; }
    /* nearbyint in the default rounding mode: to nearest, ties to even, as Python's round */
    double acc = 0;
    uint64_t b = 0;
    for (int i = 0; i < 3; i++) {
        acc += w[i] / sum;
        double r = nearbyint(acc * (double)N);
        uint64_t e = r >= (double)N ? N : (uint64_t)r;
        begin[i] = b; end[i] = e; b = e;
    }
    return 0;
}

static int64_t seq_tokens(const IndexedDataset *ds, uint64_t q) { return ds->seq_start[q + 1] - ds->seq_start[q]; }

/* the orders of one epoch: sequences (seed, epoch) and windows (seed, epoch) */
static void sampler_epoch(Sampler *s, int64_t epoch) {
    uint64_t nd = s->seq_end - s->seq_begin;
    if (s->shuffle) rng_permutation(s->seq_order, nd, rng_u64(s->seed, 2 * (uint64_t)epoch));
    else for (uint64_t i = 0; i < nd; i++) s->seq_order[i] = i;
    s->seq_cum[0] = 0;
    for (uint64_t i = 0; i < nd; i++) s->seq_cum[i + 1] = s->seq_cum[i] + seq_tokens(s->ds, s->seq_begin + s->seq_order[i]);
    if (s->shuffle) rng_permutation(s->win_order, s->windows_per_epoch, rng_u64(s->seed, 2 * (uint64_t)epoch + 1));
    else for (uint64_t i = 0; i < s->windows_per_epoch; i++) s->win_order[i] = i;
    s->epoch = epoch;
}

int sampler_init(Sampler *s, const IndexedDataset *ds, uint64_t seq_begin, uint64_t seq_end, int T,
                 uint64_t seed, int shuffle, char *err, size_t errlen) {
    memset(s, 0, sizeof(*s));
    s->ds = ds; s->seq_begin = seq_begin; s->seq_end = seq_end; s->T = T; s->seed = seed; s->shuffle = shuffle;
    s->tokens_per_epoch = seq_begin < seq_end ? (uint64_t)(ds->seq_start[seq_end] - ds->seq_start[seq_begin]) : 0;
    if (s->tokens_per_epoch < (uint64_t)T + 1) {
        snprintf(err, errlen, "%s: sequences %llu..%llu hold %llu tokens, fewer than one window of %d", ds->path,
                 (unsigned long long)seq_begin, (unsigned long long)seq_end, (unsigned long long)s->tokens_per_epoch, T + 1);
        return -1;
    }
    s->windows_per_epoch = (s->tokens_per_epoch - 1) / T;
    uint64_t nd = seq_end - seq_begin;
    s->seq_order = (uint64_t *)malloc(nd * sizeof(uint64_t));
    s->seq_cum = (uint64_t *)malloc((nd + 1) * sizeof(uint64_t));
    s->win_order = (uint64_t *)malloc(s->windows_per_epoch * sizeof(uint64_t));
    if (!s->seq_order || !s->seq_cum || !s->win_order) { snprintf(err, errlen, "out of memory in the sampler"); return -1; }
    sampler_epoch(s, 0);
    return 0;
}

void sampler_window(Sampler *s, uint64_t k, int *out) {
    int64_t epoch = (int64_t)(k / s->windows_per_epoch);
    if (epoch != s->epoch) sampler_epoch(s, epoch);
    uint64_t start = s->win_order[k % s->windows_per_epoch] * (uint64_t)s->T;
    uint64_t nd = s->seq_end - s->seq_begin;
    /* find the sequence holding stream position `start`: the last i with seq_cum[i] <= start */
    uint64_t lo = 0, hi = nd;
    while (hi - lo > 1) { uint64_t mid = (lo + hi) / 2; if (s->seq_cum[mid] <= start) lo = mid; else hi = mid; }
    uint64_t i = lo, off = start - s->seq_cum[i];
    for (int t = 0; t <= s->T; t++) {
        while (off >= (uint64_t)seq_tokens(s->ds, s->seq_begin + s->seq_order[i])) { i++; off = 0; }
        out[t] = (int)indexed_dataset_token(s->ds, s->ds->seq_start[s->seq_begin + s->seq_order[i]] + off);
        off++;
    }
}

void sampler_free(Sampler *s) { free(s->seq_order); free(s->seq_cum); free(s->win_order); memset(s, 0, sizeof(*s)); }

void blend_init(Blend *b, int n, const double *weights, Sampler **samplers) {
    memset(b, 0, sizeof(*b));
    double sum = 0;
    for (int i = 0; i < n; i++) sum += weights[i];
    b->n = n; b->T = samplers[0]->T;
    for (int i = 0; i < n; i++) { b->weights[i] = weights[i] / sum; b->samplers[i] = samplers[i]; }
}

/* the dataset of stream position b->pos */
static int blend_pick(const Blend *b) {
    double x = b->pos > 1 ? (double)b->pos : 1.0, best = -INFINITY;
    int pick = 0;
    for (int i = 0; i < b->n; i++) {
        double e = b->weights[i] * x - (double)b->counts[i];
        if (e > best) { best = e; pick = i; }
    }
    return pick;
}

int blend_source(Blend *b, uint64_t k, uint64_t *sample) {
    if (k < b->pos) { memset(b->counts, 0, sizeof(b->counts)); b->pos = 0; }
    while (b->pos < k) { b->counts[blend_pick(b)]++; b->pos++; }
    int i = blend_pick(b);
    *sample = b->counts[i];
    b->counts[i]++; b->pos++;
    return i;
}

void blend_window(Blend *b, uint64_t k, int *out) {
    uint64_t j;
    int i = blend_source(b, k, &j);
    if (b->megatron[i]) megatron_gpt_window(b->megatron[i], j, out);
    else sampler_window(b->samplers[i], j, out);
}

/* numpy's MT19937: init_genrand seeding, the reference generator and tempering */
void numpy_random_seed(NumpyRandom *r, uint32_t seed) {
    r->mt[0] = seed;
    for (int i = 1; i < 624; i++) r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->pos = 624;
}

uint32_t numpy_random_u32(NumpyRandom *r) {
    if (r->pos == 624) {
        for (int i = 0; i < 624; i++) {
            uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % 624] & 0x7fffffffu);
            r->mt[i] = r->mt[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        r->pos = 0;
    }
    uint32_t y = r->mt[r->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t numpy_random_interval(NumpyRandom *r, uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max, v;
    for (int sh = 1; sh <= 32; sh *= 2) mask |= mask >> sh;   /* the smallest all-ones mask >= max */
    if (max <= 0xffffffffu) {
        do v = numpy_random_u32(r) & mask; while (v > max);
    } else {
        do { uint64_t hi = numpy_random_u32(r); v = ((hi << 32) | numpy_random_u32(r)) & mask; } while (v > max);
    }
    return v;
}

void numpy_random_shuffle(NumpyRandom *r, int64_t *x, int64_t n) {
    for (int64_t i = n - 1; i >= 1; i--) {
        int64_t j = (int64_t)numpy_random_interval(r, (uint64_t)i);
        int64_t t = x[i]; x[i] = x[j]; x[j] = t;
    }
}

double numpy_sum(const double *a, int n) {
    if (n < 8) { double s = 0.0; for (int i = 0; i < n; i++) s += a[i]; return s; }
    double q[8];
    int i;
    for (int j = 0; j < 8; j++) q[j] = a[j];
    for (i = 8; i < n - n % 8; i += 8)
        for (int j = 0; j < 8; j++) q[j] += a[i + j];
    double s = ((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]));
    for (; i < n; i++) s += a[i];
    return s;
}

/* Megatron's _build_document_index: the sequences once per epoch, shuffled together */
static void megatron_doc_index(int64_t *out, uint64_t seq_begin, uint64_t seq_end, int64_t epochs, NumpyRandom *r) {
    int64_t n = (int64_t)(seq_end - seq_begin);
    for (int64_t e = 0; e < epochs; e++)
        for (int64_t i = 0; i < n; i++) out[e * n + i] = (int64_t)seq_begin + i;
    numpy_random_shuffle(r, out, epochs * n);
}

int megatron_gpt_init(MegatronGPT *g, const IndexedDataset *ds, uint64_t seq_begin, uint64_t seq_end, int T, uint32_t seed,
                      int64_t num_samples, char *err, size_t errlen) {
    memset(g, 0, sizeof(*g));
    g->ds = ds; g->seq_begin = seq_begin; g->seq_end = seq_end; g->T = T;
    g->tokens_per_epoch = seq_begin < seq_end ? ds->seq_start[seq_end] - ds->seq_start[seq_begin] : 0;
    if (g->tokens_per_epoch < (int64_t)T + 1) {
        snprintf(err, errlen, "%s: sequences %llu..%llu hold %lld tokens, fewer than one window of %d", ds->path,
                 (unsigned long long)seq_begin, (unsigned long long)seq_end, (long long)g->tokens_per_epoch, T + 1);
        return -1;
    }
    /* epochs: enough for num_samples windows of T + 1 tokens with stride T */
    g->num_epochs = 1;
    if (num_samples >= 0) {
        int64_t have = g->tokens_per_epoch, want = num_samples * (int64_t)T + 1;
        while (have < want) { g->num_epochs++; have += g->tokens_per_epoch; }
    }
    int64_t sans_last = 0;
    if (g->num_epochs > 1) {
        sans_last = ((g->num_epochs - 1) * g->tokens_per_epoch - 1) / T;
        int64_t per_epoch = (g->tokens_per_epoch - 1) / T, from_last = num_samples - sans_last;
        g->separate_last = from_last < (int64_t)(0.80 * (double)per_epoch);
    }
    int64_t n = (int64_t)(seq_end - seq_begin);
    g->ndoc = g->num_epochs * n;
    g->num_samples = (g->num_epochs * g->tokens_per_epoch - 1) / T;
    g->doc_index = (int64_t *)malloc((size_t)g->ndoc * sizeof(int64_t));
    g->doc_cum = (int64_t *)malloc((size_t)(g->ndoc + 1) * sizeof(int64_t));
    g->shuffle = (int64_t *)malloc((size_t)g->num_samples * sizeof(int64_t));
    if (!g->doc_index || !g->doc_cum || !g->shuffle) { snprintf(err, errlen, "%s: out of memory for Megatron's indices (%lld samples)", ds->path, (long long)g->num_samples); return -1; }
    NumpyRandom r;
    numpy_random_seed(&r, seed);
    if (!g->separate_last) megatron_doc_index(g->doc_index, seq_begin, seq_end, g->num_epochs, &r);
    else {
        megatron_doc_index(g->doc_index, seq_begin, seq_end, g->num_epochs - 1, &r);
        megatron_doc_index(g->doc_index + (g->num_epochs - 1) * n, seq_begin, seq_end, 1, &r);
    }
    g->doc_cum[0] = 0;
    for (int64_t i = 0; i < g->ndoc; i++) g->doc_cum[i + 1] = g->doc_cum[i] + seq_tokens(ds, (uint64_t)g->doc_index[i]);
    for (int64_t i = 0; i < g->num_samples; i++) g->shuffle[i] = i;
    int64_t first = g->separate_last ? sans_last : g->num_samples;
    numpy_random_shuffle(&r, g->shuffle, first);
    numpy_random_shuffle(&r, g->shuffle + first, g->num_samples - first);
    return 0;
}

void megatron_gpt_window(const MegatronGPT *g, uint64_t j, int *out) {
    int64_t start = g->shuffle[j % (uint64_t)g->num_samples] * (int64_t)g->T;
    /* the entry of the document index holding stream token `start`: the last i with doc_cum[i] <= start */
    int64_t lo = 0, hi = g->ndoc;
    while (hi - lo > 1) { int64_t mid = (lo + hi) / 2; if (g->doc_cum[mid] <= start) lo = mid; else hi = mid; }
    int64_t i = lo, off = start - g->doc_cum[i];
    for (int t = 0; t <= g->T; t++) {
        while (off >= seq_tokens(g->ds, (uint64_t)g->doc_index[i])) { i++; off = 0; }
        out[t] = (int)indexed_dataset_token(g->ds, g->ds->seq_start[g->doc_index[i]] + off);
        off++;
    }
}

void megatron_gpt_free(MegatronGPT *g) { free(g->doc_index); free(g->doc_cum); free(g->shuffle); memset(g, 0, sizeof(*g)); }

int megatron_blend_init(Blend *b, MegatronGPT *g, int n, const double *weights, const IndexedDataset *ds,
                        const uint64_t *begin, const uint64_t *end, int T, uint32_t seed, int64_t target,
                        char *err, size_t errlen) {
    memset(b, 0, sizeof(*b));
    b->n = n; b->T = T;
    double w[MAX_BLEND] = {0}, sum;
    if (n == 1 && weights[0] < 0) {   /* one dataset, no weight: the GPTDataset itself */
        if (megatron_gpt_init(&g[0], &ds[0], begin[0], end[0], T, seed, target, err, errlen) != 0) return -1;
        b->weights[0] = 1.0; b->megatron[0] = &g[0]; b->size = target;
        return 0;
    }
    if (weights[0] >= 0) {
        for (int i = 0; i < n; i++) w[i] = weights[i];
        sum = numpy_sum(w, n);
        for (int i = 0; i < n; i++) w[i] /= sum;
        for (int i = 0; i < n; i++) {
            double want = ceil((double)target * w[i]);
            if (megatron_gpt_init(&g[i], &ds[i], begin[i], end[i], T, seed, (int64_t)ceil(want * (1.0 + 0.005)), err, errlen) != 0) return -1;
            b->size += (int64_t)want;
        }
    } else {
        for (int i = 0; i < n; i++) {
            if (megatron_gpt_init(&g[i], &ds[i], begin[i], end[i], T, seed, -1, err, errlen) != 0) return -1;
            w[i] = (double)g[i].num_samples;
            b->size += g[i].num_samples;
        }
        if (target < b->size) b->size = target;
    }
    /* the blend normalises its weights once more */
    sum = numpy_sum(w, n);
    for (int i = 0; i < n; i++) { b->weights[i] = w[i] / sum; b->megatron[i] = &g[i]; }
    return 0;
}

int parse_data_spec(const char *spec, char *buf, size_t buflen, char **prefixes, double *weights, int max, char *err, size_t errlen) {
    snprintf(buf, buflen, "%s", spec);
    char *words[2 * MAX_BLEND + 1];
    int nw = 0;
    for (char *w = strtok(buf, " \t\n"); w; w = strtok(NULL, " \t\n")) {
        if (nw == 2 * max) { snprintf(err, errlen, "--data: at most %d datasets", max); return -1; }
        words[nw++] = w;
    }
    if (nw == 0) { snprintf(err, errlen, "--data is empty"); return -1; }
    /* weighted form: an even count where every odd word is a number */
    int weighted = nw % 2 == 0;
    for (int i = 0; i < nw && weighted; i += 2) { char *e; strtod(words[i], &e); weighted = *e == 0; }
    int n = 0;
    if (weighted) {
        for (int i = 0; i < nw; i += 2, n++) {
            weights[n] = strtod(words[i], NULL);
            prefixes[n] = words[i + 1];
            if (!(weights[n] > 0)) { snprintf(err, errlen, "--data: weight %s of %s must be positive", words[i], words[i + 1]); return -1; }
        }
    } else {
        if (nw > max) { snprintf(err, errlen, "--data: at most %d datasets", max); return -1; }
        for (int i = 0; i < nw; i++, n++) { prefixes[n] = words[i]; weights[n] = -1; }
    }
    return n;
}

void dataloader_init(DataLoader *dl, Blend *source, int B, int rank, int world) {
    memset(dl, 0, sizeof(*dl));
    int T = source->T;
    dl->source = source; dl->B = B; dl->T = T; dl->rank = rank; dl->world = world; dl->eod = -1;
    dl->window = (int *)malloc((size_t)(T + 1) * sizeof(int));
    dl->inputs = (int *)malloc((size_t)B * T * sizeof(int));
    dl->targets = (int *)malloc((size_t)B * T * sizeof(int));
}

void window_targets(int *targets, const int *window, int T, int eod) {
    for (int t = 0; t < T; t++) targets[t] = eod >= 0 && window[t] == eod ? -1 : window[t + 1];
}

void dataloader_next(DataLoader *dl) {
    int T = dl->T;
    for (int b = 0; b < dl->B; b++) {
        blend_window(dl->source, dl->cursor + (uint64_t)dl->rank + (uint64_t)dl->world * b, dl->window);
        memcpy(dl->inputs + (size_t)b * T, dl->window, T * sizeof(int));
        window_targets(dl->targets + (size_t)b * T, dl->window, T, dl->eod);
    }
    dl->cursor += (uint64_t)dl->B * dl->world;
}

void dataloader_free(DataLoader *dl) { free(dl->window); free(dl->inputs); free(dl->targets); memset(dl, 0, sizeof(*dl)); }

/* ------------------------------------------------------------------------------------------------ */
/* io: safetensors = u64 header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, data */

static int st_dtype(const char *s, int *bytes) {
    if (!strcmp(s, "F32")) { *bytes = 4; return ST_F32; }
    if (!strcmp(s, "F16")) { *bytes = 2; return ST_F16; }
    if (!strcmp(s, "BF16")) { *bytes = 2; return ST_BF16; }
    if (!strcmp(s, "I32")) { *bytes = 4; return ST_I32; }
    if (!strcmp(s, "I64")) { *bytes = 8; return ST_I64; }
    if (!strcmp(s, "U8") || !strcmp(s, "I8") || !strcmp(s, "BOOL")) { *bytes = 1; return ST_U8; }
    if (!strcmp(s, "F64") || !strcmp(s, "U64")) { *bytes = 8; return ST_OTHER; }
    if (!strcmp(s, "I16") || !strcmp(s, "U16")) { *bytes = 2; return ST_OTHER; }
    if (!strcmp(s, "U32")) { *bytes = 4; return ST_OTHER; }
    return -1;
}

static int st_dtype_bytes(int dt) { return dt == ST_I64 ? 8 : dt == ST_BF16 || dt == ST_F16 ? 2 : dt == ST_U8 ? 1 : 4; }

static const char *st_dtype_name(int dt) {
    return dt == ST_F32 ? "F32" : dt == ST_F16 ? "F16" : dt == ST_BF16 ? "BF16" : dt == ST_I32 ? "I32" :
           dt == ST_I64 ? "I64" : dt == ST_U8 ? "U8" : "?";
}

static int cmp_tensor_begin(const void *a, const void *b) {
    const SafeTensor *x = (const SafeTensor *)a, *y = (const SafeTensor *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* The checks of safetensors_open on the mapped file; *rootp gets the parsed header for the caller to free. */
static int safetensors_parse(SafeTensors *st, json_t **rootp, const char *path, char *err, size_t errlen) {
    if (st->size < 8) { snprintf(err, errlen, "%s: truncated safetensors file (%zu bytes)", path, st->size); return -1; }
    uint64_t hlen = rd_u64(st->map);
    if (hlen > 100000000ULL || 8 + hlen > st->size) {
        snprintf(err, errlen, "%s: header length %llu is beyond the file's %zu bytes or the 100 MB bound", path, (unsigned long long)hlen, st->size);
        return -1;
    }
    json_error_t je;
    json_t *root = *rootp = json_loadb((const char *)st->map + 8, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen, "%s: malformed header JSON at byte %d: %s", path, root ? 8 : 8 + je.position, root ? "not an object" : je.text);
        return -1;
    }
    st->data = st->map + 8 + hlen;
    uint64_t data_size = st->size - 8 - hlen;
    size_t n = json_object_size(root);
    st->tensors = (SafeTensor *)calloc(n ? n : 1, sizeof(SafeTensor));
    const char *key; json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__")) { st->metadata_json = json_dumps(val, JSON_COMPACT); continue; }
        SafeTensor *t = &st->tensors[st->num_tensors];
        if (strlen(key) >= sizeof(t->name)) { snprintf(err, errlen, "%s: tensor name too long: %.60s...", path, key); return -1; }
        snprintf(t->name, sizeof(t->name), "%s", key);
        json_t *dt = json_object_get(val, "dtype"), *sh = json_object_get(val, "shape"), *of = json_object_get(val, "data_offsets");
        int bytes = 0;
        if (!json_is_string(dt) || (t->dtype = st_dtype(json_string_value(dt), &bytes)) < 0) {
            snprintf(err, errlen, "%s: tensor \"%s\": missing or unknown dtype", path, key); return -1;
        }
        if (!json_is_array(sh) || json_array_size(sh) > 8) { snprintf(err, errlen, "%s: tensor \"%s\": bad shape", path, key); return -1; }
        if (!json_is_array(of) || json_array_size(of) != 2 || !json_is_integer(json_array_get(of, 0)) ||
            !json_is_integer(json_array_get(of, 1))) {
            snprintf(err, errlen, "%s: tensor \"%s\": bad data_offsets", path, key); return -1;
        }
        t->ndim = (int)json_array_size(sh);
        uint64_t numel = 1, nonzero = 1;
        for (int i = 0; i < t->ndim; i++) {
            json_t *d = json_array_get(sh, i);
            if (!json_is_integer(d) || json_integer_value(d) < 0) { snprintf(err, errlen, "%s: tensor \"%s\": bad shape", path, key); return -1; }
            t->shape[i] = json_integer_value(d);
            /* the product of the non-zero dimensions must stay far from overflowing (2^62) */
            if (t->shape[i] > 0 && nonzero > ((uint64_t)1 << 62) / (uint64_t)t->shape[i]) {
                snprintf(err, errlen, "%s: tensor \"%s\": shape too large", path, key); return -1;
            }
            if (t->shape[i] > 0) nonzero *= (uint64_t)t->shape[i];
            numel *= (uint64_t)t->shape[i];
        }
        json_int_t b = json_integer_value(json_array_get(of, 0)), e = json_integer_value(json_array_get(of, 1));
        if (b < 0 || e < b || (uint64_t)e > data_size) {
            snprintf(err, errlen, "%s: tensor \"%s\": data_offsets [%lld, %lld] outside the %llu data bytes", path, key,
                     (long long)b, (long long)e, (unsigned long long)data_size);
            return -1;
        }
        t->begin = (uint64_t)b; t->end = (uint64_t)e;
        if (numel > UINT64_MAX / 8 || t->end - t->begin != numel * (uint64_t)bytes) {
            snprintf(err, errlen, "%s: tensor \"%s\": %llu bytes but dtype x shape needs %llu", path, key,
                     (unsigned long long)(t->end - t->begin), (unsigned long long)(numel * bytes));
            return -1;
        }
        st->num_tensors++;
    }
    /* the tensors, sorted by offset, must tile the data buffer exactly */
    SafeTensor *sorted = (SafeTensor *)malloc((st->num_tensors ? st->num_tensors : 1) * sizeof(SafeTensor));
    memcpy(sorted, st->tensors, st->num_tensors * sizeof(SafeTensor));
    qsort(sorted, st->num_tensors, sizeof(SafeTensor), cmp_tensor_begin);
    uint64_t pos = 0;
    for (int i = 0; i < st->num_tensors; i++) {
        if (sorted[i].begin != pos) {
            snprintf(err, errlen, "%s: tensor \"%s\" starts at byte %llu, expected %llu (offsets must tile the buffer)", path,
                     sorted[i].name, (unsigned long long)sorted[i].begin, (unsigned long long)pos);
            free(sorted); return -1;
        }
        pos = sorted[i].end;
    }
    free(sorted);
    if (pos != data_size) { snprintf(err, errlen, "%s: tensors cover %llu data bytes but the file holds %llu", path, (unsigned long long)pos, (unsigned long long)data_size); return -1; }
    return 0;
}

int safetensors_open(SafeTensors *st, const char *path, char *err, size_t errlen) {
    memset(st, 0, sizeof(*st));
    snprintf(st->path, sizeof(st->path), "%s", path);
    st->map = map_file(path, &st->size, err, errlen);
    if (!st->map) return -1;
    json_t *root = NULL;
    int rc = safetensors_parse(st, &root, path, err, errlen);
    if (root) json_decref(root);
    if (rc != 0) safetensors_close(st);
    return rc;
}

const SafeTensor *safetensors_find(const SafeTensors *st, const char *name) {
    for (int i = 0; i < st->num_tensors; i++) if (!strcmp(st->tensors[i].name, name)) return &st->tensors[i];
    return NULL;
}

int64_t safetensor_numel(const SafeTensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static float half_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000 | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
}

int safetensors_read_f32(const SafeTensors *st, const SafeTensor *t, float *dst, int transpose) {
    int64_t n = safetensor_numel(t);
    const unsigned char *src = st->data + t->begin;
    int64_t rows = t->ndim == 2 ? t->shape[0] : 1, cols = t->ndim == 2 ? t->shape[1] : n;
    if (transpose && t->ndim != 2) return -1;
    for (int64_t i = 0; i < n; i++) {
        float f;
        if (t->dtype == ST_F32) memcpy(&f, src + 4 * i, 4);
        else if (t->dtype == ST_BF16) { uint16_t h; memcpy(&h, src + 2 * i, 2); uint32_t b = (uint32_t)h << 16; memcpy(&f, &b, 4); }
        else if (t->dtype == ST_F16) { uint16_t h; memcpy(&h, src + 2 * i, 2); f = half_to_f32(h); }
        else return -1;
        if (transpose) dst[(i % cols) * rows + i / cols] = f;   /* src [rows, cols] -> dst [cols, rows] */
        else dst[i] = f;
    }
    return 0;
}

void safetensors_close(SafeTensors *st) {
    unmap_file(st->map, st->size);
    free(st->tensors); free(st->metadata_json);
    memset(st, 0, sizeof(*st));
}

static int write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

int safetensors_write(const char *path, const SafeTensorOut *ts, int n, const char *metadata_json,
                      char *err, size_t errlen) {
    json_t *h = json_object();
    if (metadata_json) {
        json_error_t je;
        json_t *md = json_loads(metadata_json, 0, &je);
        if (md) json_object_set_new(h, "__metadata__", md);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        int bytes = st_dtype_bytes(ts[i].dtype);
        int64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < ts[i].ndim; d++) { numel *= ts[i].shape[d]; json_array_append_new(shape, json_integer(ts[i].shape[d])); }
        json_object_set_new(h, ts[i].name, json_pack("{s:s,s:o,s:[I,I]}", "dtype", st_dtype_name(ts[i].dtype), "shape", shape,
                            "data_offsets", (json_int_t)off, (json_int_t)(off + numel * bytes)));
        off += (uint64_t)numel * bytes;
    }
    char *hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    size_t hl = strlen(hs), padded = (hl + 7) / 8 * 8;
    char tmp[1600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) { snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(errno)); free(hs); return -1; }
    uint64_t hl64 = padded;
    int bad = write_all(f, &hl64, 8) || write_all(f, hs, hl);
    for (size_t i = hl; i < padded && !bad; i++) bad = fputc(' ', f) == EOF;
    free(hs);
    for (int i = 0; i < n && !bad; i++) {
        int64_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) numel *= ts[i].shape[d];
        bad = write_all(f, ts[i].data, (size_t)numel * st_dtype_bytes(ts[i].dtype));
    }
    if (!bad) bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* HF names: GPT-2 (Conv1D weights stored [in, out], the transpose of ours; fused c_attn = our q|k|v rows),
   LLaMA/Qwen (torch Linear [out, in], our layout; q/k/v and gate/up are row blocks of our fused tensors). */
static void hf_add(HFTensor *list, int *n, const char *name, size_t offset, int64_t d0, int64_t d1, int transpose) {
    if (list) {
        HFTensor *t = &list[*n];
        snprintf(t->name, sizeof(t->name), "%s", name);
        t->ndim = d1 ? 2 : 1; t->shape[0] = d0; t->shape[1] = d1; t->offset = offset; t->transpose = transpose;
    }
    (*n)++;
}

int model_hf_tensors(const Model *m, HFTensor *list) {
    const ModelConfig *c = &m->cfg;
    const size_t *o = m->param_offsets;
    int n = 0, L = c->n_layer;
    int64_t C = c->n_embd, V = c->vocab_size, HD = c->head_dim, F = c->d_ff, QD = c->n_head * HD, KD = c->n_kv_head * HD;
    int64_t QKV = qkv_rows(c), FC = fc_rows(c);
    int ln = c->norm == NORM_LAYERNORM, wpe = c->positions == POS_LEARNED, glu = c->act == ACT_SWIGLU;
    char nm[128];
    /* the family's names; a feature the family lacks keeps them (SwiGLU in GPT-2: c_fc holds gate | up), or
       takes a name in the family's style (LayerNorm biases, a position table in LLaMA: embed_positions) */
    if (c->family == FAMILY_GPT2) {
        hf_add(list, &n, "wte.weight", o[P_WTE], V, C, 0);
        if (wpe) hf_add(list, &n, "wpe.weight", o[P_WPE], c->max_seq_len, C, 0);
        for (int l = 0; l < L; l++) {
            #define GPT2_NAME(s) (snprintf(nm, sizeof(nm), "h.%d.%s", l, s), nm)
            hf_add(list, &n, GPT2_NAME("ln_1.weight"), o[P_LN1W] + l * C, C, 0, 0);
            if (ln) hf_add(list, &n, GPT2_NAME("ln_1.bias"), o[P_LN1B] + l * C, C, 0, 0);
            hf_add(list, &n, GPT2_NAME("attn.c_attn.weight"), o[P_WQKV] + l * QKV * C, C, QKV, 1);
            if (c->qkv_bias) hf_add(list, &n, GPT2_NAME("attn.c_attn.bias"), o[P_BQKV] + l * QKV, QKV, 0, 0);
            hf_add(list, &n, GPT2_NAME("attn.c_proj.weight"), o[P_WO] + l * C * QD, QD, C, 1);
            if (c->o_bias) hf_add(list, &n, GPT2_NAME("attn.c_proj.bias"), o[P_BO] + l * C, C, 0, 0);
            hf_add(list, &n, GPT2_NAME("ln_2.weight"), o[P_LN2W] + l * C, C, 0, 0);
            if (ln) hf_add(list, &n, GPT2_NAME("ln_2.bias"), o[P_LN2B] + l * C, C, 0, 0);
            hf_add(list, &n, GPT2_NAME("mlp.c_fc.weight"), o[P_WFC] + l * FC * C, C, FC, 1);
            if (c->mlp_bias) hf_add(list, &n, GPT2_NAME("mlp.c_fc.bias"), o[P_BFC] + l * FC, FC, 0, 0);
            hf_add(list, &n, GPT2_NAME("mlp.c_proj.weight"), o[P_WPROJ] + l * C * F, F, C, 1);
            if (c->mlp_bias) hf_add(list, &n, GPT2_NAME("mlp.c_proj.bias"), o[P_BPROJ] + l * C, C, 0, 0);
            #undef GPT2_NAME
        }
        hf_add(list, &n, "ln_f.weight", o[P_LNFW], C, 0, 0);
        if (ln) hf_add(list, &n, "ln_f.bias", o[P_LNFB], C, 0, 0);
        if (!c->tie_embeddings) hf_add(list, &n, "lm_head.weight", o[P_LMHEAD], V, C, 0);
        return n;
    }
    hf_add(list, &n, "model.embed_tokens.weight", o[P_WTE], V, C, 0);
    if (wpe) hf_add(list, &n, "model.embed_positions.weight", o[P_WPE], c->max_seq_len, C, 0);
    for (int l = 0; l < L; l++) {
        #define LLAMA_NAME(s) (snprintf(nm, sizeof(nm), "model.layers.%d.%s", l, s), nm)
        size_t wq = o[P_WQKV] + l * QKV * C, bq = o[P_BQKV] + l * QKV, wf = o[P_WFC] + l * FC * C, bf = o[P_BFC] + l * FC;
        hf_add(list, &n, LLAMA_NAME("input_layernorm.weight"), o[P_LN1W] + l * C, C, 0, 0);
        if (ln) hf_add(list, &n, LLAMA_NAME("input_layernorm.bias"), o[P_LN1B] + l * C, C, 0, 0);
        hf_add(list, &n, LLAMA_NAME("self_attn.q_proj.weight"), wq, QD, C, 0);
        hf_add(list, &n, LLAMA_NAME("self_attn.k_proj.weight"), wq + QD * C, KD, C, 0);
        hf_add(list, &n, LLAMA_NAME("self_attn.v_proj.weight"), wq + (QD + KD) * C, KD, C, 0);
        if (c->qkv_bias) {
            hf_add(list, &n, LLAMA_NAME("self_attn.q_proj.bias"), bq, QD, 0, 0);
            hf_add(list, &n, LLAMA_NAME("self_attn.k_proj.bias"), bq + QD, KD, 0, 0);
            hf_add(list, &n, LLAMA_NAME("self_attn.v_proj.bias"), bq + QD + KD, KD, 0, 0);
        }
        if (c->qk_norm) {
            hf_add(list, &n, LLAMA_NAME("self_attn.q_norm.weight"), o[P_QNW] + l * HD, HD, 0, 0);
            hf_add(list, &n, LLAMA_NAME("self_attn.k_norm.weight"), o[P_KNW] + l * HD, HD, 0, 0);
        }
        hf_add(list, &n, LLAMA_NAME("self_attn.o_proj.weight"), o[P_WO] + l * C * QD, C, QD, 0);
        if (c->o_bias) hf_add(list, &n, LLAMA_NAME("self_attn.o_proj.bias"), o[P_BO] + l * C, C, 0, 0);
        hf_add(list, &n, LLAMA_NAME("post_attention_layernorm.weight"), o[P_LN2W] + l * C, C, 0, 0);
        if (ln) hf_add(list, &n, LLAMA_NAME("post_attention_layernorm.bias"), o[P_LN2B] + l * C, C, 0, 0);
        /* SwiGLU: fc's rows are gate | up; GELU: fc is up_proj alone */
        if (glu) hf_add(list, &n, LLAMA_NAME("mlp.gate_proj.weight"), wf, F, C, 0);
        if (glu && c->mlp_bias) hf_add(list, &n, LLAMA_NAME("mlp.gate_proj.bias"), bf, F, 0, 0);
        hf_add(list, &n, LLAMA_NAME("mlp.up_proj.weight"), wf + (glu ? F * C : 0), F, C, 0);
        if (c->mlp_bias) hf_add(list, &n, LLAMA_NAME("mlp.up_proj.bias"), bf + (glu ? F : 0), F, 0, 0);
        hf_add(list, &n, LLAMA_NAME("mlp.down_proj.weight"), o[P_WPROJ] + l * C * F, C, F, 0);
        if (c->mlp_bias) hf_add(list, &n, LLAMA_NAME("mlp.down_proj.bias"), o[P_BPROJ] + l * C, C, 0, 0);
        #undef LLAMA_NAME
    }
    hf_add(list, &n, "model.norm.weight", o[P_LNFW], C, 0, 0);
    if (ln) hf_add(list, &n, "model.norm.bias", o[P_LNFB], C, 0, 0);
    if (!c->tie_embeddings) hf_add(list, &n, "lm_head.weight", o[P_LMHEAD], V, C, 0);
    return n;
}

/* HF keys that are buffers, not parameters */
static int hf_ignored(const char *name) {
    size_t n = strlen(name);
    const char *ends[] = {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"};
    for (int i = 0; i < 3; i++) { size_t k = strlen(ends[i]); if (n >= k && !strcmp(name + n - k, ends[i])) return 1; }
    return 0;
}

/* Fills the model's weights from one or more open safetensors files (the shards of one checkpoint). Every
   tensor the config needs must be present with its shape; a tensor nobody needs is an error too, since it
   means the config does not describe these weights. */
static int load_hf_files(Model *m, SafeTensors *sts, int nst, char *err, size_t errlen) {
    int n = model_hf_tensors(m, NULL);
    HFTensor *list = (HFTensor *)malloc(n * sizeof(HFTensor));
    model_hf_tensors(m, list);
    char **used = (char **)calloc(nst, sizeof(char *));
    for (int f = 0; f < nst; f++) used[f] = (char *)calloc(sts[f].num_tensors + 1, 1);
    int rc = -1;
    for (int i = 0; i < n; i++) {
        const SafeTensor *t = NULL;
        int f = 0;
        for (; f < nst && !t; f++) {
            t = safetensors_find(&sts[f], list[i].name);
            if (!t && m->cfg.family == FAMILY_GPT2) {
                char alt[160];
                snprintf(alt, sizeof(alt), "transformer.%s", list[i].name);
                t = safetensors_find(&sts[f], alt);
            }
        }
        f--;
        if (!t) { snprintf(err, errlen, "%s: missing tensor \"%s\" for a %s model", sts[0].path, list[i].name, family_name(m->cfg.family)); goto done; }
        int shape_ok = t->ndim == list[i].ndim && t->shape[0] == list[i].shape[0] && (t->ndim == 1 || t->shape[1] == list[i].shape[1]);
        if (!shape_ok) {
            snprintf(err, errlen, "%s: tensor \"%s\" has shape [%lld%s%lld], the config needs [%lld%s%lld]", sts[f].path, t->name,
                     (long long)t->shape[0], t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
                     (long long)list[i].shape[0], list[i].ndim > 1 ? ", " : "", list[i].ndim > 1 ? (long long)list[i].shape[1] : 0LL);
            goto done;
        }
        if (safetensors_read_f32(&sts[f], t, m->params_memory + list[i].offset, list[i].transpose) != 0) {
            snprintf(err, errlen, "%s: tensor \"%s\": dtype must be F32, BF16 or F16", sts[f].path, t->name); goto done;
        }
        used[f][t - sts[f].tensors] = 1;
    }
    for (int f = 0; f < nst; f++)
        for (int i = 0; i < sts[f].num_tensors; i++) {
            const char *nm = sts[f].tensors[i].name;
            int tied_head = m->cfg.tie_embeddings && !strcmp(nm, "lm_head.weight");
            if (!used[f][i] && !hf_ignored(nm) && !tied_head) { snprintf(err, errlen, "%s: unexpected tensor \"%s\" for this config", sts[f].path, nm); goto done; }
        }
    rc = 0;
done:
    for (int f = 0; f < nst; f++) free(used[f]);
    free(used); free(list);
    return rc;
}

int model_load_safetensors(Model *m, const char *path, char *err, size_t errlen) {
    SafeTensors st;
    if (safetensors_open(&st, path, err, errlen) != 0) return -1;
    int rc = load_hf_files(m, &st, 1, err, errlen);
    safetensors_close(&st);
    return rc;
}

int model_load_hf_dir(Model *m, const char *dir, char *err, size_t errlen) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    if (access(path, F_OK) != 0) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        return model_load_safetensors(m, path, err, errlen);
    }
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    json_t *wm = root ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        if (!root) snprintf(err, errlen, "%s:%d:%d: malformed JSON: %s", path, je.line, je.column, je.text);
        else snprintf(err, errlen, "%s: no \"weight_map\" object", path);
        json_decref(root);
        return -1;
    }
    /* the distinct shard files, in first-seen order */
    const char **files = (const char **)calloc(json_object_size(wm) + 1, sizeof(char *));
    int nf = 0, rc = -1, opened = 0;
    SafeTensors *sts = NULL;
    const char *key; json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val) || strchr(json_string_value(val), '/')) { snprintf(err, errlen, "%s: weight_map[\"%s\"] must be a file name", path, key); goto done; }
        int seen = 0;
        for (int i = 0; i < nf; i++) seen |= !strcmp(files[i], json_string_value(val));
        if (!seen) files[nf++] = json_string_value(val);
    }
    sts = (SafeTensors *)calloc(nf + 1, sizeof(SafeTensors));
    for (; opened < nf; opened++) {
        char sp[1400];
        snprintf(sp, sizeof(sp), "%s/%s", dir, files[opened]);
        if (safetensors_open(&sts[opened], sp, err, errlen) != 0) break;
    }
    if (opened == nf) rc = load_hf_files(m, sts, nf, err, errlen);
    for (int i = 0; i < opened; i++) safetensors_close(&sts[i]);
    free(sts);
done:
    free(files);
    json_decref(root);
    return rc;
}

/* Writes HF tensors list[0..n) of the model into one safetensors file (GPT-2 names get "transformer."). */
static int save_hf_tensors(const Model *m, const HFTensor *list, int n, const char *path, char *err, size_t errlen) {
    SafeTensorOut *out = (SafeTensorOut *)calloc(n + 1, sizeof(SafeTensorOut));
    float **bufs = (float **)calloc(n + 1, sizeof(float *));
    char (*names)[160] = (char (*)[160])calloc(n + 1, 160);
    for (int i = 0; i < n; i++) {
        const float *src = m->params_memory + list[i].offset;
        int64_t numel = list[i].shape[0] * (list[i].ndim == 2 ? list[i].shape[1] : 1);
        if (list[i].transpose) {  /* ours [cols, rows] -> HF [rows, cols] */
            int64_t R = list[i].shape[0], Cc = list[i].shape[1];
            bufs[i] = (float *)malloc(numel * sizeof(float));
            for (int64_t r = 0; r < R; r++) for (int64_t c = 0; c < Cc; c++) bufs[i][r * Cc + c] = src[c * R + r];
            src = bufs[i];
        }
        snprintf(names[i], 160, "%s%s", m->cfg.family == FAMILY_GPT2 && strncmp(list[i].name, "lm_head", 7) ? "transformer." : "", list[i].name);
        out[i].name = names[i]; out[i].dtype = ST_F32; out[i].ndim = list[i].ndim;
        out[i].shape[0] = list[i].shape[0]; out[i].shape[1] = list[i].shape[1]; out[i].data = src;
    }
    int rc = safetensors_write(path, out, n, "{\"format\":\"pt\"}", err, errlen);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs); free(out); free(names);
    return rc;
}

int model_save_safetensors(const Model *m, const char *path, char *err, size_t errlen) {
    int n = model_hf_tensors(m, NULL);
    HFTensor *list = (HFTensor *)malloc(n * sizeof(HFTensor));
    model_hf_tensors(m, list);
    int rc = save_hf_tensors(m, list, n, path, err, errlen);
    free(list);
    return rc;
}

int write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen) {
    char tmp[1600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) { snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(errno)); return -1; }
    int bad = write_all(f, data, len) || fflush(f) != 0 || fsync(fileno(f)) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) { snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno)); unlink(tmp); return -1; }
    return 0;
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int model_save_hf_dir(const Model *m, const char *dir, size_t max_shard_bytes, char *err, size_t errlen) {
    char path[1400];
    char *cfg = model_config_to_json(&m->cfg);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    int rc = write_file_atomic(path, cfg, strlen(cfg), err, errlen);
    free(cfg);
    if (rc) return rc;
    int n = model_hf_tensors(m, NULL);
    HFTensor *list = (HFTensor *)malloc(n * sizeof(HFTensor));
    model_hf_tensors(m, list);
    /* shards: tensors in order, a new shard when the next tensor would overflow the current one */
    int *shard = (int *)malloc(n * sizeof(int)), nshards = 1;
    size_t cur = 0, total = 0;
    for (int i = 0; i < n; i++) {
        size_t bytes = (size_t)list[i].shape[0] * (list[i].ndim == 2 ? list[i].shape[1] : 1) * 4;
        if (max_shard_bytes > 0 && cur > 0 && cur + bytes > max_shard_bytes) { nshards++; cur = 0; }
        shard[i] = nshards - 1; cur += bytes; total += bytes;
    }
    if (nshards == 1) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        rc = save_hf_tensors(m, list, n, path, err, errlen);
    } else {
        json_t *wm = json_object();
        for (int s = 0, first = 0; s < nshards && rc == 0; s++) {
            int last = first;
            while (last < n && shard[last] == s) last++;
            char fname[64];
            snprintf(fname, sizeof(fname), "model-%05d-of-%05d.safetensors", s + 1, nshards);
            snprintf(path, sizeof(path), "%s/%s", dir, fname);
            rc = save_hf_tensors(m, list + first, last - first, path, err, errlen);
            for (int i = first; i < last; i++) {
                char nm[160];
                snprintf(nm, sizeof(nm), "%s%s", m->cfg.family == FAMILY_GPT2 && strncmp(list[i].name, "lm_head", 7) ? "transformer." : "", list[i].name);
                json_object_set_new(wm, nm, json_string(fname));
            }
            first = last;
        }
        if (rc == 0) {
            json_t *idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", wm);
            char *js = json_dumps(idx, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
            rc = write_file_atomic(path, js, strlen(js), err, errlen);
            free(js);
            json_decref(idx);
        } else json_decref(wm);
    }
    free(shard); free(list);
    return rc;
}

static int remove_dir_files(const char *dir) {
    char cmd[1300];
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(cmd, sizeof(cmd), "%s/%s", dir, e->d_name);
        unlink(cmd);
    }
    closedir(d);
    return rmdir(dir);
}

static int copy_file(const char *src, const char *dst, char *err, size_t errlen) {
    size_t size;
    unsigned char *p = map_file(src, &size, err, errlen);
    if (!p) return -1;
    int rc = write_file_atomic(dst, p, size, err, errlen);
    unmap_file(p, size);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* OUT/latest := name (a small file replaced by a rename), and the folder entry made durable */
static int write_latest(const char *out_dir, const char *name, char *err, size_t errlen) {
    char path[1200], line[320];
    snprintf(path, sizeof(path), "%s/latest", out_dir);
    snprintf(line, sizeof(line), "%s\n", name);
    if (write_file_atomic(path, line, strlen(line), err, errlen) != 0) return -1;
    fsync_dir(out_dir);
    return 0;
}

/* Publishing where the file system cannot exchange two names: latest names the complete temp folder
   OUT/.NAME.tmp while OUT/NAME is deleted and made again from hard links to the temp folder's files (no copy);
   then latest names NAME. A kill on the way leaves latest naming the temp folder, which checkpoint_clean
   finishes. drop_tmp: delete the temp folder at the end (checkpoint_clean keeps it: another rank may be
   reading it). */
static int publish_by_links(const char *out_dir, const char *name, int drop_tmp, char *err, size_t errlen) {
    char tmp_name[300], tmp[1300], dir[1300], old[1300], lnk[1300], a[1600], b[1600];
    snprintf(tmp_name, sizeof(tmp_name), ".%s.tmp", name);
    snprintf(tmp, sizeof(tmp), "%s/%s", out_dir, tmp_name);
    snprintf(dir, sizeof(dir), "%s/%s", out_dir, name);
    snprintf(old, sizeof(old), "%s/.%s.old", out_dir, name);
    snprintf(lnk, sizeof(lnk), "%s/.%s.link", out_dir, name);
    if (write_latest(out_dir, tmp_name, err, errlen) != 0) return -1;
    remove_dir_files(old);
    if (access(dir, F_OK) == 0 && (rename(dir, old) != 0 || remove_dir_files(old) != 0)) {
        snprintf(err, errlen, "%s: cannot replace: %s", dir, strerror(errno));
        return -1;
    }
    remove_dir_files(lnk);
    DIR *d = mkdir(lnk, 0755) == 0 ? opendir(tmp) : NULL;
    struct dirent *e;
    int bad = d == NULL;
    while (!bad && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(a, sizeof(a), "%s/%s", tmp, e->d_name);
        snprintf(b, sizeof(b), "%s/%s", lnk, e->d_name);
        bad = link(a, b) != 0;
    }
    if (d) closedir(d);
    if (!bad) bad = fsync_dir(lnk) != 0 || rename(lnk, dir) != 0;
    if (bad) { snprintf(err, errlen, "%s: cannot make from %s: %s", dir, tmp, strerror(errno)); return -1; }
    fsync_dir(out_dir);
    if (write_latest(out_dir, name, err, errlen) != 0) return -1;
    if (drop_tmp) remove_dir_files(tmp);
    return 0;
}

/* Moves the complete, fsynced folder OUT/.NAME.tmp to OUT/NAME and points OUT/latest at it, so that latest
   names a complete checkpoint at every instant. A new NAME: one rename, then latest. An existing NAME (a
   step saved again, e.g. by a second run into the same folder, while latest may name it): the two folders
   swap names in one step (renameat2 RENAME_EXCHANGE), so NAME is the old or the new checkpoint at every
   instant; the old one, now under the temp name, is deleted after latest is written. File systems without
   the exchange (NFS) go through publish_by_links. */
static int checkpoint_publish(const char *out_dir, const char *name, char *err, size_t errlen) {
    char tmp[1300], dir[1300];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", out_dir, name);
    snprintf(dir, sizeof(dir), "%s/%s", out_dir, name);
    int exists = access(dir, F_OK) == 0;
    if (exists && renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) != 0) {
        if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
            snprintf(err, errlen, "%s: cannot exchange with %s: %s", tmp, dir, strerror(errno));
            return -1;
        }
        return publish_by_links(out_dir, name, 1, err, errlen);
    }
    if (!exists && rename(tmp, dir) != 0) {
        snprintf(err, errlen, "%s: cannot rename to %s: %s", tmp, dir, strerror(errno));
        return -1;
    }
    fsync_dir(out_dir);
    if (write_latest(out_dir, name, err, errlen) != 0) return -1;
    if (exists) remove_dir_files(tmp);   /* the replaced checkpoint */
    return 0;
}

/* the folder name in OUT/latest: 0, or -1 (no such file, or not a name inside OUT) */
static int read_latest(const char *out_dir, char *name, size_t len) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/latest", out_dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(name, (int)len, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    name[strcspn(name, "\r\n")] = 0;
    return name[0] && !strchr(name, '/') ? 0 : -1;
}

int checkpoint_clean(const char *out_dir, char *err, size_t errlen) {
    char named[256], path[1300];
    if (read_latest(out_dir, named, sizeof(named)) != 0) named[0] = 0;
    DIR *d = opendir(out_dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".step_", 6) != 0 || !strcmp(e->d_name, named)) continue;
        snprintf(path, sizeof(path), "%s/%s", out_dir, e->d_name);
        if (remove_dir_files(path) == 0) removed++;
    }
    closedir(d);
    /* latest names a temp folder: publish_by_links was killed; finish it */
    size_t n = strlen(named);
    if (!strncmp(named, ".step_", 6) && n > 10 && !strcmp(named + n - 4, ".tmp")) {
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)(n - 5), named + 1);
        if (publish_by_links(out_dir, name, 0, err, errlen) != 0) return -1;
    }
    return removed;
}

int checkpoint_save(const char *out_dir, const Model *m, const TrainState *ts, const char *tokenizer_path,
                    size_t max_shard_bytes, int keep, char *saved, size_t saved_len, char *err, size_t errlen) {
    char name[64], dir[1200], tmp[1300], path[1400];
    snprintf(name, sizeof(name), "step_%06lld", (long long)ts->step);
    snprintf(dir, sizeof(dir), "%s/%s", out_dir, name);
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", out_dir, name);
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) { snprintf(err, errlen, "%s: cannot create: %s", out_dir, strerror(errno)); return -1; }
    remove_dir_files(tmp);   /* a leftover of an interrupted save */
    if (mkdir(tmp, 0755) != 0) { snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno)); return -1; }
    if (model_save_hf_dir(m, tmp, max_shard_bytes, err, errlen) != 0) return -1;
    /* train state: flat AdamW moments in our parameter order, the counters, the run's settings */
    float *zeros = NULL;
    if (!m->m_memory) zeros = (float *)calloc(m->num_params, sizeof(float));
    int64_t step = ts->step, cursor = (int64_t)ts->data_cursor, skipped = ts->skipped;
    SafeTensorOut t[5] = {
        {"optimizer.m", ST_F32, 1, {(int64_t)m->num_params}, m->m_memory ? m->m_memory : zeros},
        {"optimizer.v", ST_F32, 1, {(int64_t)m->num_params}, m->v_memory ? m->v_memory : zeros},
        {"step", ST_I64, 1, {1}, &step},
        {"data_cursor", ST_I64, 1, {1}, &cursor},
        {"skipped_steps", ST_I64, 1, {1}, &skipped},
    };
    json_t *md = json_pack("{s:s,s:s}", "format", "llmtrain-train-state-1", "run_flags", ts->run_flags);
    char *mds = json_dumps(md, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(md);
    snprintf(path, sizeof(path), "%s/train_state.safetensors", tmp);
    int rc = safetensors_write(path, t, 5, mds, err, errlen);
    free(mds); free(zeros);
    if (rc) return -1;
    if (tokenizer_path) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", tmp);
        if (copy_file(tokenizer_path, path, err, errlen) != 0) return -1;
    }
    fsync_dir(tmp);
    if (checkpoint_publish(out_dir, name, err, errlen) != 0) return -1;
    if (saved) snprintf(saved, saved_len, "%s", dir);
    /* keep the newest `keep` checkpoints */
    if (keep > 0) {
        DIR *d = opendir(out_dir);
        char **names = NULL;
        int n = 0;
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (strncmp(e->d_name, "step_", 5) != 0 || strchr(e->d_name, '.')) continue;
            names = (char **)realloc(names, (n + 1) * sizeof(char *));
            names[n++] = strdup(e->d_name);
        }
        if (d) closedir(d);
        qsort(names, n, sizeof(char *), cmp_str);
        for (int i = 0; i < n; i++) {
            if (i < n - keep && strcmp(names[i], name) != 0) {
                snprintf(path, sizeof(path), "%s/%s", out_dir, names[i]);
                remove_dir_files(path);
            }
            free(names[i]);
        }
        free(names);
    }
    return 0;
}

int checkpoint_latest(const char *out_dir, char *dir, size_t len) {
    char name[256];
    if (read_latest(out_dir, name, sizeof(name)) != 0) return -1;
    snprintf(dir, len, "%s/%s", out_dir, name);
    return 0;
}

static int read_i64(const SafeTensors *st, const char *name, int64_t *v, char *err, size_t errlen) {
    const SafeTensor *t = safetensors_find(st, name);
    if (!t || t->dtype != ST_I64 || safetensor_numel(t) != 1) { snprintf(err, errlen, "%s: missing I64 scalar \"%s\"", st->path, name); return -1; }
    memcpy(v, st->data + t->begin, 8);
    return 0;
}

int checkpoint_load(const char *dir, Model *m, TrainState *ts, char *err, size_t errlen) {
    if (model_load_hf_dir(m, dir, err, errlen) != 0) return -1;
    char path[1200];
    snprintf(path, sizeof(path), "%s/train_state.safetensors", dir);
    SafeTensors st;
    if (safetensors_open(&st, path, err, errlen) != 0) return -1;
    int rc = -1;
    int64_t cursor;
    json_error_t je;
    json_t *md = NULL, *rf = NULL;
    memset(ts, 0, sizeof(*ts));
    const SafeTensor *tm = safetensors_find(&st, "optimizer.m"), *tv = safetensors_find(&st, "optimizer.v");
    if (!tm || !tv || tm->dtype != ST_F32 || tv->dtype != ST_F32 ||
        safetensor_numel(tm) != (int64_t)m->num_params || safetensor_numel(tv) != (int64_t)m->num_params) {
        snprintf(err, errlen, "%s: optimizer.m/optimizer.v must be F32 [%zu] for this model", path, m->num_params);
        goto done;
    }
    if (model_alloc_moments(m) != 0) { snprintf(err, errlen, "%s: out of memory for the AdamW moments", path); goto done; }
    memcpy(m->m_memory, st.data + tm->begin, m->num_params * sizeof(float));
    memcpy(m->v_memory, st.data + tv->begin, m->num_params * sizeof(float));
    if (read_i64(&st, "step", &ts->step, err, errlen) || read_i64(&st, "data_cursor", &cursor, err, errlen) ||
        read_i64(&st, "skipped_steps", &ts->skipped, err, errlen)) goto done;
    ts->data_cursor = (uint64_t)cursor;
    md = st.metadata_json ? json_loads(st.metadata_json, 0, &je) : NULL;
    rf = md ? json_object_get(md, "run_flags") : NULL;
    if (!json_is_string(rf)) { snprintf(err, errlen, "%s: metadata has no run_flags", path); json_decref(md); goto done; }
    snprintf(ts->run_flags, sizeof(ts->run_flags), "%s", json_string_value(rf));
    json_decref(md);
    rc = 0;
done:
    safetensors_close(&st);
    return rc;
}

int run_flags_compare(const char *saved, const char *now, char *err, size_t errlen) {
    json_error_t je;
    json_t *a = json_loads(saved, 0, &je), *b = json_loads(now, 0, &je);
    int rc = 0;
    if (!json_is_object(a) || !json_is_object(b)) { snprintf(err, errlen, "unreadable run settings"); rc = -1; }
    const char *key; json_t *val;
    if (rc == 0) json_object_foreach(b, key, val) {
        json_t *old = json_object_get(a, key);
        if (!old || !json_equal(old, val)) {
            char *x = old ? json_dumps(old, JSON_ENCODE_ANY) : strdup("(unset)"), *y = json_dumps(val, JSON_ENCODE_ANY);
            snprintf(err, errlen, "%s was %s in the checkpoint, now %s", key, x, y);
            free(x); free(y);
            rc = -1;
            break;
        }
    }
    json_decref(a); json_decref(b);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ */
/* comm */

void zero_shard(size_t n, int world, int rank, size_t *begin, size_t *end) {
    size_t per = (n + (size_t)world - 1) / (size_t)world;
    size_t b = per * (size_t)rank, e = b + per;
    *begin = b < n ? b : n;
    *end = e < n ? e : n;
}

int param_is_per_layer(int t) { return t >= P_LN1W && t <= P_BPROJ; }

int zero_grad_pieces(const Model *m, int l, int world, ShardPiece *out, int cap) {
    int L = m->cfg.n_layer, np = 0;
    size_t per = (m->num_params + (size_t)world - 1) / (size_t)world;   /* zero_shard's shard length */
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        size_t size = m->param_sizes[t];
        if (size == 0 || param_is_per_layer(t) != (l < L)) continue;
        size_t b = m->param_offsets[t], e = b + size;
        if (l < L) { b += (size / L) * l; e = b + size / L; }
        while (b < e) {   /* cut at the shard borders */
            int owner = (int)(b / per);
            size_t cut = (size_t)(owner + 1) * per;
            size_t end = cut < e ? cut : e;
            if (out && np < cap) { out[np].begin = b; out[np].end = end; out[np].tensor = t; out[np].owner = owner; }
            np++;
            b = end;
        }
    }
    return np;
}

ShardPiece *zero_all_grad_pieces(const Model *m, int world, int *count) {
    int L = m->cfg.n_layer, n = 0, k = 0;
    for (int l = 0; l <= L; l++) n += zero_grad_pieces(m, l, world, NULL, 0);
    ShardPiece *p = (ShardPiece *)malloc((size_t)(n > 0 ? n : 1) * sizeof(ShardPiece));
    if (!p) return NULL;
    for (int l = L - 1; l >= -1; l--) k += zero_grad_pieces(m, l < 0 ? L : l, world, p + k, n - k);
    *count = k;
    return p;
}

#define COMM_MAX_RANKS 64
struct CommShared {
    int arrived;                  /* ranks at the barrier in the current generation (atomic) */
    int generation;               /* (atomic) */
    int failed;                   /* (atomic) */
    pid_t pids[COMM_MAX_RANKS];
    double dbl[COMM_MAX_RANKS][64];
    size_t gather_floats;
    /* followed by the reduction buffer [world][chunk] floats and the gather buffer [gather_floats] */
};

static float *comm_reduce_buf(Comm *c) { return (float *)((char *)c->sh + sizeof(CommShared)); }
static float *comm_gather_buf(Comm *c) { return comm_reduce_buf(c) + (size_t)c->world * c->chunk; }

#define COMM_CHUNK ((size_t)1 << 20)

/* a shared region for `world` ranks (before the fork: every process inherits it) */
static CommShared *comm_map(int world, size_t gather_floats, char *err, size_t errlen) {
    size_t bytes = sizeof(CommShared) + ((size_t)world * COMM_CHUNK + gather_floats) * sizeof(float);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { snprintf(err, errlen, "cannot map %zu bytes of shared memory: %s", bytes, strerror(errno)); return NULL; }
    CommShared *sh = (CommShared *)p;
    memset(sh, 0, sizeof(CommShared));
    sh->gather_floats = gather_floats;
    return sh;
}

int comm_init_fork(Comm *c, int world, size_t gather_floats, char *err, size_t errlen) {
    memset(c, 0, sizeof(*c));
    c->world = world > 1 ? world : 1;
    if (world <= 1) return 0;
    if (world > COMM_MAX_RANKS) { snprintf(err, errlen, "at most %d ranks", COMM_MAX_RANKS); return -1; }
    c->chunk = COMM_CHUNK;
    if (!(c->sh = comm_map(world, gather_floats, err, errlen))) return -1;
    c->sh->pids[0] = getpid();
    fflush(NULL);
    for (int r = 1; r < world; r++) {
        pid_t pid = fork();
        if (pid < 0) { snprintf(err, errlen, "fork: %s", strerror(errno)); comm_abort(c); return -1; }
        if (pid == 0) { c->rank = r; c->sh->pids[r] = getpid(); break; }
        c->sh->pids[r] = pid;
    }
    comm_barrier(c);
    return 0;
}

int comm_init_fork_groups(Comm *world, int world_n, int ngroupings, const int *color, const size_t *gather, Comm *out,
                          char *err, size_t errlen) {
    if (world_n > COMM_MAX_RANKS) { snprintf(err, errlen, "at most %d ranks", COMM_MAX_RANKS); return -1; }
    if (ngroupings > 8) { snprintf(err, errlen, "at most 8 groupings"); return -1; }
    /* region[k][r]: the region of the group of grouping k whose lowest rank is r */
    static CommShared *region[8][COMM_MAX_RANKS];
    size_t world_gather = 0;
    for (int k = 0; k < ngroupings; k++) {
        const int *col = color + (size_t)k * world_n;
        for (int r = 0; r < world_n; r++) {
            int size = 0, lowest = -1;
            for (int q = 0; q < world_n; q++) if (col[q] == col[r]) { size++; if (lowest < 0) lowest = q; }
            region[k][r] = NULL;
            if (size == world_n && gather[k] > world_gather) world_gather = gather[k];
            if (size > 1 && size < world_n && lowest == r && !(region[k][r] = comm_map(size, gather[k], err, errlen))) return -1;
        }
    }
    if (comm_init_fork(world, world_n, world_gather, err, errlen) != 0) return -1;
    for (int k = 0; k < ngroupings; k++) {
        const int *col = color + (size_t)k * world_n;
        int r = world->rank, size = 0, place = 0, lowest = -1;
        for (int q = 0; q < world_n; q++)
            if (col[q] == col[r]) { if (q < r) place++; if (lowest < 0) lowest = q; size++; }
        if (size == world_n) out[k] = *world;
        else out[k] = (Comm){place, size, size > 1 ? region[k][lowest] : NULL, COMM_CHUNK, world};
    }
    return 0;
}

void comm_abort(Comm *c) {
    if (c->sh) __atomic_store_n(&c->sh->failed, 1, __ATOMIC_SEQ_CST);
    if (c->parent) comm_abort(c->parent);
}

/* Has a rank died? Rank 0 reaps its children; the children watch rank 0. A group asks its parent. */
static int comm_peer_lost(Comm *c) {
    if (c->parent) return comm_peer_lost(c->parent);
    if (c->rank == 0) {
        for (int r = 1; r < c->world; r++) {
            int st;
            if (waitpid(c->sh->pids[r], &st, WNOHANG) == c->sh->pids[r]) { c->sh->pids[r] = 0; return 1; }
            if (c->sh->pids[r] == 0) return 1;
        }
        return 0;
    }
    return getppid() != c->sh->pids[0];
}

/* One turn of a wait: spin a while, then sleep 20 us a turn; stop this rank if another one failed or died. */
static void comm_wait_turn(Comm *c, long spin) {
    if (spin < 4096) return;
    int failed = __atomic_load_n(&c->sh->failed, __ATOMIC_ACQUIRE) ||
                 (c->parent && __atomic_load_n(&c->parent->sh->failed, __ATOMIC_ACQUIRE));
    if (failed || (spin % 8192 == 0 && comm_peer_lost(c))) {
        comm_abort(c);
        fprintf(stderr, "rank %d: another rank stopped; stopping too\n", c->parent ? c->parent->rank : c->rank);
        _exit(1);
    }
    usleep(20);
}

/* generation barrier: the last rank to arrive opens the next generation */
void comm_barrier(Comm *c) {
    if (c->world <= 1) return;
    CommShared *sh = c->sh;
    int gen = __atomic_load_n(&sh->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&sh->arrived, 1, __ATOMIC_ACQ_REL) == c->world) {
        __atomic_store_n(&sh->arrived, 0, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sh->generation, 1, __ATOMIC_ACQ_REL);
        return;
    }
    for (long spin = 0; __atomic_load_n(&sh->generation, __ATOMIC_ACQUIRE) == gen; spin++) comm_wait_turn(c, spin);
}

/* a ring of `slots` messages: the sender writes message `sent` into slot sent % slots once the receiver has read
   message sent - slots; the counters only grow */
struct CommQueue {
    long sent, received;   /* (atomic) */
    size_t n;
    int slots;
    /* followed by [slots][n] floats */
};

static float *comm_queue_slot(CommQueue *q, long i) { return (float *)(q + 1) + (size_t)(i % q->slots) * q->n; }

CommQueue *comm_queue_map(size_t n, int slots, char *err, size_t errlen) {
    size_t bytes = sizeof(CommQueue) + (size_t)slots * n * sizeof(float);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { snprintf(err, errlen, "cannot map %zu bytes of shared memory: %s", bytes, strerror(errno)); return NULL; }
    CommQueue *q = (CommQueue *)p;
    q->sent = q->received = 0; q->n = n; q->slots = slots;
    return q;
}

void comm_send(Comm *c, CommQueue *q, const float *x, size_t n) {
    if (n > q->n) { fprintf(stderr, "comm_send: %zu values exceed the queue's %zu\n", n, q->n); comm_abort(c); exit(1); }
    long i = __atomic_load_n(&q->sent, __ATOMIC_RELAXED);
    for (long spin = 0; i - __atomic_load_n(&q->received, __ATOMIC_ACQUIRE) >= q->slots; spin++) comm_wait_turn(c, spin);
    memcpy(comm_queue_slot(q, i), x, n * sizeof(float));
    __atomic_store_n(&q->sent, i + 1, __ATOMIC_RELEASE);
}

void comm_recv(Comm *c, CommQueue *q, float *x, size_t n) {
    long i = __atomic_load_n(&q->received, __ATOMIC_RELAXED);
    for (long spin = 0; __atomic_load_n(&q->sent, __ATOMIC_ACQUIRE) == i; spin++) comm_wait_turn(c, spin);
    memcpy(x, comm_queue_slot(q, i), n * sizeof(float));
    __atomic_store_n(&q->received, i + 1, __ATOMIC_RELEASE);
}

/* One pass over the part [c0, c1) of the pieces laid end to end: copy it into this rank's row of the reduction
   buffer (sum = 0), or, for the pieces this rank owns, sum the ranks' rows in rank order into data (sum = 1). */
static void comm_pieces_pass(Comm *c, float *data, const ShardPiece *p, int n, size_t c0, size_t c1, int sum) {
    float *buf = comm_reduce_buf(c);
    size_t s = 0;   /* where piece i starts in the concatenation */
    for (int i = 0; i < n && s < c1; i++) {
        size_t len = p[i].end - p[i].begin, lo = s > c0 ? s : c0, hi = s + len < c1 ? s + len : c1;
        if (lo < hi) {
            float *d = data + p[i].begin + (lo - s), *b = buf + (lo - c0);
            size_t k = hi - lo;
            if (!sum) memcpy(b + (size_t)c->rank * c->chunk, d, k * sizeof(float));
            else if (p[i].owner == c->rank) {
                #pragma omp parallel for
                for (size_t j = 0; j < k; j++) {
                    float v = b[j];
                    for (int r = 1; r < c->world; r++) v += b[(size_t)r * c->chunk + j];
                    d[j] = v;
                }
            }
        }
        s += len;
    }
}

/* the pieces go through the shared buffer a chunk at a time: each rank copies its values in, then the owners sum */
void comm_reduce_pieces(Comm *c, float *data, const ShardPiece *p, int n) {
    if (c->world <= 1) return;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += p[i].end - p[i].begin;
    for (size_t c0 = 0; c0 < total; c0 += c->chunk) {
        size_t c1 = total - c0 < c->chunk ? total : c0 + c->chunk;
        comm_pieces_pass(c, data, p, n, c0, c1, 0);
        comm_barrier(c);
        comm_pieces_pass(c, data, p, n, c0, c1, 1);
        comm_barrier(c);
    }
}

/* the pieces of [0, n) cut at the shard borders, one per rank */
void comm_reduce_scatter(Comm *c, float *data, size_t n) {
    if (c->world <= 1) return;
    ShardPiece p[COMM_MAX_RANKS];
    for (int r = 0; r < c->world; r++) {
        zero_shard(n, c->world, r, &p[r].begin, &p[r].end);
        p[r].tensor = -1; p[r].owner = r;
    }
    comm_reduce_pieces(c, data, p, c->world);
}

void comm_all_gather(Comm *c, float *data, size_t n) {
    if (c->world <= 1) return;
    if (n > c->sh->gather_floats) { fprintf(stderr, "comm_all_gather: %zu values exceed the %zu reserved\n", n, c->sh->gather_floats); comm_abort(c); exit(1); }
    float *buf = comm_gather_buf(c);
    size_t sb, se;
    zero_shard(n, c->world, c->rank, &sb, &se);
    memcpy(buf + sb, data + sb, (se - sb) * sizeof(float));
    comm_barrier(c);
    memcpy(data, buf, n * sizeof(float));
    comm_barrier(c);
}

void comm_all_reduce(Comm *c, float *data, size_t n) {
    comm_reduce_scatter(c, data, n);
    comm_all_gather(c, data, n);
}

void comm_all_reduce_double(Comm *c, double *x, int k) {
    if (c->world <= 1) return;
    memcpy(c->sh->dbl[c->rank], x, (size_t)k * sizeof(double));
    comm_barrier(c);
    for (int i = 0; i < k; i++) {
        double s = 0.0;
        for (int r = 0; r < c->world; r++) s += c->sh->dbl[r][i];
        x[i] = s;
    }
    comm_barrier(c);
}

int comm_finish(Comm *c) {
    if (c->world <= 1 || c->rank != 0) return 0;
    int bad = 0;
    for (int r = 1; r < c->world; r++) {
        int st = 0;
        if (c->sh->pids[r] == 0) { bad = 1; continue; }
        if (waitpid(c->sh->pids[r], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
    }
    return bad;
}

#endif /* LLMTRAIN_IMPLEMENTATION */
