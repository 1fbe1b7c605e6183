/*
 Whole-model check against Hugging Face transformers. For each tiny model in tests/fixtures/models/<case>/
 (written by dev/gen_model_fixtures.py from GPT2LMHeadModel, LlamaForCausalLM with GQA and llama3 rope
 scaling, Qwen2ForCausalLM, Qwen3ForCausalLM), the C model loads the same config.json and model.safetensors
 and must reproduce: the logits and the loss, the gradient of every parameter, and the losses and grad norms
 of 5 AdamW steps (clip 1.0) on the same batch.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"

static int failures = 0;

/* max |a - b| / max |b|: the error relative to the tensor's scale */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (e > d || isnan(e)) d = isnan(e) ? INFINITY : e;
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return s > 0 ? d / s : d;
}

static void check(const char *what, double err, double tol) {
    int ok = err <= tol;
    printf("  %-52s rel err %.2e (tol %.0e) %s\n", what, err, tol, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static float *read_tensor(SafeTensors *st, const char *name, size_t *n) {
    const SafeTensor *t = safetensors_find(st, name);
    if (!t) { printf("  reference tensor %s missing\n", name); exit(1); }
    *n = (size_t)safetensor_numel(t);
    float *x = (float *)malloc(*n * sizeof(float));
    if (t->dtype == ST_I32) {
        const int32_t *src = (const int32_t *)(st->data + t->begin);
        for (size_t i = 0; i < *n; i++) x[i] = (float)src[i];
    } else if (safetensors_read_f32(st, t, x, 0) != 0) { printf("  %s: bad dtype\n", name); exit(1); }
    return x;
}

static float meta_float(const SafeTensors *st, const char *key) {
    const char *p = st->metadata_json ? strstr(st->metadata_json, key) : NULL;
    if (!p) { printf("  metadata %s missing\n", key); exit(1); }
    p = strchr(p + strlen(key), ':');
    while (*p == ':' || *p == ' ' || *p == '"') p++;
    return strtof(p, NULL);
}

static void run_case(const char *name, int expect_family) {
    char dir[256], path[320], err[512];
    snprintf(dir, sizeof(dir), "tests/fixtures/models/%s", name);
    printf("%s\n", name);
    ModelConfig cfg;
    if (model_config_from_json(&cfg, dir, err, sizeof(err)) != 0) { printf("  %s\n", err); failures++; return; }
    if (cfg.family != expect_family) { printf("  family %d, expected %d\n", cfg.family, expect_family); failures++; return; }
    Model m;
    model_build(&m, &cfg);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (model_load_safetensors(&m, path, err, sizeof(err)) != 0) { printf("  %s\n", err); failures++; return; }
    SafeTensors ref;
    snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    if (safetensors_open(&ref, path, err, sizeof(err)) != 0) { printf("  %s\n", err); failures++; return; }

    size_t n;
    const SafeTensor *ids_t = safetensors_find(&ref, "input_ids");
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    float *f_in = read_tensor(&ref, "input_ids", &n), *f_tg = read_tensor(&ref, "targets", &n);
    int *inputs = (int *)malloc(n * sizeof(int)), *targets = (int *)malloc(n * sizeof(int));
    for (size_t i = 0; i < n; i++) { inputs[i] = (int)f_in[i]; targets[i] = (int)f_tg[i]; }

    /* forward: logits and loss */
    float loss = model_forward(&m, inputs, targets, B, T);
    float *ref_logits = read_tensor(&ref, "logits", &n);
    check("logits", rel_err(m.acts.logits, ref_logits, n), 1e-5);
    float *ref_loss = read_tensor(&ref, "loss", &n);
    check("loss", fabs(loss - ref_loss[0]) / fabs(ref_loss[0]), 1e-5);

    /* backward: every parameter's gradient, under its HF name (GPT-2 Conv1D grads are transposed) */
    model_zero_grad(&m);
    model_backward(&m, 1.0f);
    int nt = model_hf_tensors(&m, NULL);
    HFTensor *list = (HFTensor *)malloc(nt * sizeof(HFTensor));
    model_hf_tensors(&m, list);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < nt; i++) {
        char gname[200];
        snprintf(gname, sizeof(gname), "grad.%s%s", cfg.family == FAMILY_GPT2 ? "transformer." : "", list[i].name);
        if (!safetensors_find(&ref, gname)) snprintf(gname, sizeof(gname), "grad.%s", list[i].name);
        float *g = read_tensor(&ref, gname, &n);
        float *ours = (float *)malloc(n * sizeof(float));
        const float *src = m.grads_memory + list[i].offset;
        if (list[i].transpose) {   /* ours [cols, rows] -> HF [rows, cols] */
            int64_t R = list[i].shape[0], Cc = list[i].shape[1];
            for (int64_t r = 0; r < R; r++) for (int64_t c = 0; c < Cc; c++) ours[r * Cc + c] = src[c * R + r];
        } else memcpy(ours, src, n * sizeof(float));
        double e = rel_err(ours, g, n);
        if (e > worst) { worst = e; worst_name = list[i].name; }
        if (e > 1e-4) printf("    grad %s rel err %.2e\n", list[i].name, e);
        free(g); free(ours);
    }
    char what[160];
    snprintf(what, sizeof(what), "grads of %d tensors (worst %s)", nt, worst_name);
    check(what, worst, 1e-4);

    /* 5 AdamW steps on the same batch: clip the global norm, then update */
    AdamWConfig opt = {meta_float(&ref, "\"lr\""), 0.9f, 0.95f, meta_float(&ref, "\"eps\""), meta_float(&ref, "\"weight_decay\"")};
    float clip = meta_float(&ref, "\"clip\"");
    float *ref_losses = read_tensor(&ref, "adamw_losses", &n);
    size_t nsteps = n;
    float *ref_norms = read_tensor(&ref, "adamw_gradnorms", &n);
    float losses[16] = {0}, norms[16] = {0};
    for (size_t k = 0; k < nsteps; k++) {
        losses[k] = model_forward(&m, inputs, targets, B, T);
        if (k + 1 == nsteps) break;
        model_zero_grad(&m);
        model_backward(&m, 1.0f);
        double norm = sqrt(grad_sumsq(m.grads_memory, 0, m.num_params));
        norms[k] = (float)norm;
        grad_clip(m.grads_memory, m.num_params, norm, clip);
        model_adamw_update(&m, &opt, (int)k + 1, 0, m.num_params);
    }
    check("AdamW losses (6 forwards, 5 updates)", rel_err(losses, ref_losses, nsteps), 1e-5);
    check("AdamW grad norms", rel_err(norms, ref_norms, nsteps - 1), 1e-4);
    printf("  losses:");
    for (size_t k = 0; k < nsteps; k++) printf(" %.5f/%.5f", losses[k], ref_losses[k]);
    printf("  (ours/HF)\n");

    free(ref_logits); free(ref_loss); free(ref_losses); free(ref_norms); free(list);
    free(f_in); free(f_tg); free(inputs); free(targets);
    safetensors_close(&ref);
    model_free(&m);
}

/* The fixture exercises a config feature: with the feature switched off after loading (as a reader that
   ignored its key would compute), the logits move far past the 1e-5 tolerance of run_case. */
static void off_o_bias(Model *m) { memset(m->params.bo, 0, m->param_sizes[P_BO] * sizeof(float)); }
static void off_mlp_bias(Model *m) {
    memset(m->params.bfc, 0, m->param_sizes[P_BFC] * sizeof(float));
    memset(m->params.bproj, 0, m->param_sizes[P_BPROJ] * sizeof(float));
}
static void off_window(Model *m) { m->cfg.sliding_window = 0; }
static void off_layer_scale(Model *m) { m->cfg.attn_by_layer = 0; }
static void off_unscaled(Model *m) { m->cfg.attn_unscaled = 0; }

static void check_feature_needed(const char *name, const char *feature, void (*off)(Model *m)) {
    char dir[256], path[320], err[512];
    snprintf(dir, sizeof(dir), "tests/fixtures/models/%s", name);
    ModelConfig cfg;
    Model m;
    SafeTensors ref;
    snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    if (model_config_from_json(&cfg, dir, err, sizeof(err)) != 0 || model_build(&m, &cfg) != 0 ||
        model_load_hf_dir(&m, dir, err, sizeof(err)) != 0 || safetensors_open(&ref, path, err, sizeof(err)) != 0) {
        printf("  %s\n", err); failures++; return;
    }
    size_t n;
    const SafeTensor *ids_t = safetensors_find(&ref, "input_ids");
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    float *f_in = read_tensor(&ref, "input_ids", &n), *hf = NULL;
    int *inputs = (int *)malloc(n * sizeof(int));
    for (size_t i = 0; i < n; i++) inputs[i] = (int)f_in[i];
    off(&m);
    model_forward(&m, inputs, NULL, B, T);
    hf = read_tensor(&ref, "logits", &n);
    double e = rel_err(m.acts.logits, hf, n);
    int ok = e > 1e-3;
    printf("  %s without %s: logits rel err %.2e (must exceed 1e-3) %s\n", name, feature, e, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(f_in); free(inputs); free(hf);
    safetensors_close(&ref);
    model_free(&m);
}

/* Every key that transformers' GPT2Config, LlamaConfig, Qwen2Config and Qwen3Config know (listed by
   dev/gen_model_fixtures.py from the installed transformers) is classified by the config reader, and every
   classified key is explained in docs/hf_config_keys.md. */
/* --reset-attention-mask + --reset-position-ids: rows packing 2-4 documents (each ending in the EOD) give, at
   every position, the loss HF gives on each document run by itself (reset_reference.safetensors, written by
   dev/gen_reset_fixtures.py); without them the losses after the first EOD differ. */
static void check_reset_documents(const char *name) {
    char dir[256], path[320], err[512];
    snprintf(dir, sizeof(dir), "tests/fixtures/models/%s", name);
    ModelConfig cfg;
    Model m;
    SafeTensors ref;
    snprintf(path, sizeof(path), "%s/reset_reference.safetensors", dir);
    if (model_config_from_json(&cfg, dir, err, sizeof(err)) != 0 || model_build(&m, &cfg) != 0 ||
        safetensors_open(&ref, path, err, sizeof(err)) != 0) { printf("  %s\n", err); failures++; return; }
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (model_load_safetensors(&m, path, err, sizeof(err)) != 0) { printf("  %s\n", err); failures++; return; }
    size_t n;
    const SafeTensor *ids_t = safetensors_find(&ref, "input_ids");
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    float *f_in = read_tensor(&ref, "input_ids", &n), *f_tg = read_tensor(&ref, "targets", &n), *want = read_tensor(&ref, "losses", &n);
    int *inputs = (int *)malloc(n * sizeof(int)), *targets = (int *)malloc(n * sizeof(int));
    for (size_t i = 0; i < n; i++) { inputs[i] = (int)f_in[i]; targets[i] = (int)f_tg[i]; }
    m.eod = cfg.eos_token_id;
    m.reset_attention = m.reset_positions = 1;
    model_forward(&m, inputs, targets, B, T);
    char what[160];
    snprintf(what, sizeof(what), "%s: packed documents = each run alone (%d x %d)", name, B, T);
    check(what, rel_err(m.acts.losses, want, n), 1e-5);
    /* without the attention mask the documents see each other; without the position reset GPT-2's learned
       positions differ, while RoPE, relative, gives the same losses once attention stays inside documents */
    for (int k = 0; k < 3; k++) {
        m.reset_attention = k == 0; m.reset_positions = k == 1;
        model_forward(&m, inputs, targets, B, T);
        double e = rel_err(m.acts.losses, want, n);
        int same = k == 0 && cfg.family != FAMILY_GPT2;
        snprintf(what, sizeof(what), "%s: %s %s", name, k == 0 ? "without --reset-position-ids" : k == 1 ? "without --reset-attention-mask" : "without either",
                 same ? "the same (RoPE)" : "differs");
        check(what, same ? e : e > 1e-3 ? 0.0 : 1.0, same ? 1e-5 : 0.5);
    }
    free(f_in); free(f_tg); free(want); free(inputs); free(targets);
    safetensors_close(&ref);
    model_free(&m);
}

static void check_key_table(void) {
    json_error_t je;
    json_t *root = json_load_file("tests/fixtures/models/hf_config_keys.json", 0, &je);
    if (!root) { printf("hf_config_keys.json: %s\n", je.text); failures++; return; }
    const char *fams[4] = {"gpt2", "llama", "qwen2", "qwen3"};
    int nk = (int)(sizeof(config_keys) / sizeof(config_keys[0])), checked = 0, missing = 0;
    for (int f = 0; f < 4; f++) {
        json_t *arr = json_object_get(root, fams[f]);
        for (size_t i = 0; i < json_array_size(arr); i++) {
            const char *key = json_string_value(json_array_get(arr, i));
            int found = 0;
            for (int k = 0; k < nk && !found; k++) found = (config_keys[k].families & (1 << f)) && !strcmp(config_keys[k].key, key);
            if (!found) { printf("  %s key \"%s\" is not classified\n", fams[f], key); missing++; }
            checked++;
        }
    }
    json_decref(root);
    size_t len;
    char merr[256];
    unsigned char *doc = map_file("docs/hf_config_keys.md", &len, merr, sizeof(merr));
    char *text = doc ? (char *)calloc(len + 1, 1) : NULL;
    if (text) memcpy(text, doc, len);
    for (int k = 0; k < nk; k++) {
        char quoted[96];
        snprintf(quoted, sizeof(quoted), "`%s`", config_keys[k].key);
        if (!text || !strstr(text, quoted)) { printf("  docs/hf_config_keys.md does not explain %s\n", quoted); missing++; }
    }
    free(text);
    unmap_file(doc, len);
    printf("config keys: %d transformers keys of 4 families classified, %d table keys documented: %s\n", checked, nk,
           missing ? "FAIL" : "ok");
    if (missing) failures++;
}

/* Configs whose meaning this code does not implement are refused, naming the key (and the file). */
static void check_config_refusals(void) {
    const char *cases[][2] = {
        {"refuse_rope_linear", "\"linear\""}, {"refuse_rope_dynamic", "\"dynamic\""}, {"refuse_rope_yarn", "\"yarn\""},
        {"refuse_rope_extra_key", "\"factor\""}, {"refuse_llama3_missing", "\"low_freq_factor\""},
        {"refuse_partial_rotary", "\"partial_rotary_factor\""}, {"refuse_mlp_bias", "\"mlp_bias\" must be true or false"},
        {"refuse_llmtrain_key", "llmtrain key \"alibi\" is not known"},
        {"refuse_llmtrain_value", "llmtrain key \"positions\" must be learned, rope"},
        {"refuse_hidden_act", "hidden_act"}, {"refuse_activation_function", "activation_function"},
        {"refuse_cross_attention", "\"add_cross_attention\""}, {"refuse_pruned_heads", "\"pruned_heads\""},
        {"refuse_unknown_key", "\"sliding_window\" is not a llama config key"},
        {"refuse_quantization", "\"quantization_config\""}, {"refuse_bias_type", "\"attention_bias\" must be true or false"},
        {"refuse_gpt2_alias_both", "\"hidden_size\""}, {"refuse_layer_types_order", "layer_types[1]"},
        {"refuse_layer_types_no_window", "sliding_window"}, {"refuse_sliding_window_zero", "\"sliding_window\" must be at least 1"},
        {"refuse_scale_attn_type", "\"scale_attn_by_inverse_layer_idx\" must be true or false"},
    };
    int n = (int)(sizeof(cases) / sizeof(cases[0]));
    printf("config refusals\n");
    for (int i = 0; i < n; i++) {
        char path[256], err[512] = "";
        snprintf(path, sizeof(path), "tests/fixtures/configs/%s.json", cases[i][0]);
        ModelConfig cfg;
        int rc = model_config_from_json(&cfg, path, err, sizeof(err));
        int ok = rc != 0 && strstr(err, path) && strstr(err, cases[i][1]) && !strchr(err, '\n');
        printf("  %-30s %s -> %s\n", cases[i][0], ok ? "ok  " : "FAIL", err);
        if (!ok) failures++;
    }
}

/* Writes JSON to tests/tmp/<name>.json and reads it as a config; 0 on success. */
static int config_from_json_value(json_t *o, const char *name, ModelConfig *cfg, char *err, size_t errlen) {
    char path[256];
    mkdir("tests/tmp", 0755);
    snprintf(path, sizeof(path), "tests/tmp/%s.json", name);
    json_dump_file(o, path, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    int rc = model_config_from_json(cfg, path, err, errlen);
    unlink(path);
    return rc;
}

/* Equivalent spellings give the same config, and saved configs say what the model computes: each fixture's
   config written by model_config_to_json reads back to the same ModelConfig. */
static void check_config_spellings(void) {
    char err[512];
    printf("config spellings and saved configs\n");
    const char *names[] = {"gpt2", "llama", "qwen2", "qwen3", "gpt2_layer_scaled", "gpt2_unscaled", "llama_bias",
                           "llama_mlp_bias", "qwen2_window", "qwen3_bias_window"};
    for (int i = 0; i < 10; i++) {
        char dir[256];
        snprintf(dir, sizeof(dir), "tests/fixtures/models/%s", names[i]);
        ModelConfig a, b;
        if (model_config_from_json(&a, dir, err, sizeof(err)) != 0) { printf("  %s\n", err); failures++; continue; }
        char *s = model_config_to_json(&a);
        json_t *o = json_loads(s, 0, NULL);
        int ok = o && config_from_json_value(o, "saved", &b, err, sizeof(err)) == 0 && !memcmp(&a, &b, sizeof(a));
        printf("  %-40s %s %s\n", names[i], ok ? "ok" : "FAIL", ok ? "" : err);
        if (!ok) failures++;
        json_decref(o); free(s);
    }
    /* Qwen: without layer_types, the layers >= max_window_layers slide, as transformers derives them */
    ModelConfig a, b;
    json_error_t je;
    json_t *o = json_load_file("tests/fixtures/models/qwen2_window/config.json", 0, &je);
    model_config_from_json(&a, "tests/fixtures/models/qwen2_window", err, sizeof(err));
    json_object_del(o, "layer_types");
    int ok = config_from_json_value(o, "no_layer_types", &b, err, sizeof(err)) == 0 && !memcmp(&a, &b, sizeof(a)) &&
             attention_window(&b, 0) == 0 && attention_window(&b, 1) == 5 && attention_window(&b, 2) == 5;
    printf("  %-40s %s %s\n", "qwen2_window without layer_types", ok ? "ok" : "FAIL", ok ? "" : err);
    if (!ok) failures++;
    /* ... and with use_sliding_window false the window is not used, whatever sliding_window says */
    json_object_set_new(o, "use_sliding_window", json_false());
    ok = config_from_json_value(o, "window_off", &b, err, sizeof(err)) == 0 && attention_window(&b, 2) == 0;
    printf("  %-40s %s %s\n", "qwen2_window with use_sliding_window false", ok ? "ok" : "FAIL", ok ? "" : err);
    if (!ok) failures++;
    json_decref(o);
    /* GPT-2: the LLaMA size names are aliases (transformers' attribute_map) */
    o = json_load_file("tests/fixtures/models/gpt2/config.json", 0, &je);
    model_config_from_json(&a, "tests/fixtures/models/gpt2", err, sizeof(err));
    const char *pairs[4][2] = {{"n_embd", "hidden_size"}, {"n_positions", "max_position_embeddings"},
                               {"n_head", "num_attention_heads"}, {"n_layer", "num_hidden_layers"}};
    for (int i = 0; i < 4; i++) {
        json_object_set(o, pairs[i][1], json_object_get(o, pairs[i][0]));
        json_object_del(o, pairs[i][0]);
    }
    ok = config_from_json_value(o, "gpt2_aliases", &b, err, sizeof(err)) == 0 && !memcmp(&a, &b, sizeof(a));
    printf("  %-40s %s %s\n", "gpt2 with hidden_size etc.", ok ? "ok" : "FAIL", ok ? "" : err);
    if (!ok) failures++;
    json_decref(o);
}

/* A tiny model of the family with features set on top: every parameter perturbed (norm weights off 1, biases off
   0), the gradient of the mean loss of model_backward against central finite differences of model_forward,
   per tensor: |g - fd| / |fd| over all its entries (h = 1e-2 in fp32; the truncation error is ~1e-4). One
   thread: the model is far too small for more. */
static void check_model_grads(const char *what, int family, int norm, int act, int positions, int mlp_bias, int qk_norm) {
    ModelConfig c;
    memset(&c, 0, sizeof(c));
    model_config_preset(&c, family == FAMILY_GPT2 ? "tiny-gpt2" : family == FAMILY_QWEN3 ? "tiny-qwen3" : "tiny-llama");
    c.vocab_size = 11; c.max_seq_len = 8; c.n_layer = 2; c.n_embd = 8; c.n_head = 2; c.n_kv_head = family == FAMILY_GPT2 ? 2 : 1;
    c.head_dim = 4; c.d_ff = 12; c.tie_embeddings = 0;
    c.norm = norm; c.act = act; c.positions = positions; c.mlp_bias = mlp_bias; c.qk_norm = qk_norm;
    char err[256];
    if (model_config_validate(&c, err, sizeof(err)) != 0) { printf("  %s: %s FAIL\n", what, err); failures++; return; }
    Model m;
    model_build(&m, &c);
    int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    uint64_t x = 12345;
    for (size_t i = 0; i < m.num_params; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        m.params_memory[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5) * 0.6f;
    }
    for (int t = 0; t < NUM_PARAM_TENSORS; t++)
        if (t == P_LN1W || t == P_LN2W || t == P_LNFW || t == P_QNW || t == P_KNW)
            for (size_t i = 0; i < m.param_sizes[t]; i++) m.params_memory[m.param_offsets[t] + i] += 1.0f;
    int B = 2, T = 5, inputs[10], targets[10];
    for (int i = 0; i < B * T; i++) { inputs[i] = (i * 7 + 3) % 11; targets[i] = (i * 5 + 1) % 11; }
    model_forward(&m, inputs, targets, B, T);
    model_zero_grad(&m);
    model_backward(&m, 1.0f);
    float *g = (float *)malloc(m.num_params * sizeof(float));
    memcpy(g, m.grads_memory, m.num_params * sizeof(float));
    double worst = 0.0;
    int worst_t = -1, tensors = 0;
    const float h = 1e-2f;
    for (int t = 0; t < NUM_PARAM_TENSORS; t++) {
        if (!m.param_sizes[t]) continue;
        tensors++;
        double num = 0.0, den = 0.0;
        for (size_t i = 0; i < m.param_sizes[t]; i++) {
            float *p = m.params_memory + m.param_offsets[t] + i, p0 = *p;
            *p = p0 + h; double lp = model_forward(&m, inputs, targets, B, T);
            *p = p0 - h; double lm = model_forward(&m, inputs, targets, B, T);
            *p = p0;
            double fd = (lp - lm) / (2.0 * h), d = g[m.param_offsets[t] + i] - fd;
            num += d * d; den += fd * fd;
        }
        double e = sqrt(num / (den > 1e-12 ? den : 1e-12));
        if (e > worst) { worst = e; worst_t = t; }
    }
    int ok = worst < 1e-2 && tensors > 0;
    printf("  %-44s %2d tensors, worst rel err %.1e (tensor %d) %s\n", what, tensors, worst, worst_t, ok ? "ok" : "FAIL");
    if (!ok) failures++;
    free(g);
    model_free(&m);
    omp_set_num_threads(threads);
}

/* docs/labs.md, labs 2 and 3: a feature value the labs add is checked once the code knows its name, and reported
   as not implemented until then. A tiny model of the family with the feature, weights from model_init_weights
   (std 0.5, so that pre-activations and scores spread over several units), one forward of B = 2 rows of T = 9. */
static void lab_model(Model *m, int family, int act, int positions, int *inputs, int *targets, int B, int T) {
    ModelConfig c;
    model_config_preset(&c, family == FAMILY_GPT2 ? "tiny-gpt2" : "tiny-llama");
    c.vocab_size = 23; c.max_seq_len = 16; c.n_layer = 2; c.n_embd = 16; c.n_head = 4; c.n_kv_head = family == FAMILY_GPT2 ? 4 : 2;
    c.head_dim = 4; c.d_ff = 24; c.act = act; c.positions = positions;
    model_build(m, &c);
    model_init_weights(m, 7, 0.5f);
    for (int i = 0; i < B * T; i++) { inputs[i] = (i * 7 + 3) % 23; targets[i] = (i * 5 + 1) % 23; }
    model_forward(m, inputs, targets, B, T);
}

/* the activation `name` in double on one row of the MLP pre-activation (FC values; SwiGLU: gate | up) into
   y (F values); 0 when this test has no formula for the name */
static int act_ref(const char *name, const float *x, int F, double *y) {
    for (int i = 0; i < F; i++) {
        double v = x[i];
        if (!strcmp(name, "gelu")) y[i] = 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
        else if (!strcmp(name, "swiglu")) y[i] = v / (1.0 + exp(-v)) * x[F + i];
        else if (!strcmp(name, "relu2")) y[i] = v > 0 ? v * v : 0.0;
        else if (!strcmp(name, "gelu_erf")) y[i] = 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
        else return 0;
    }
    return 1;
}

/* Every MLP activation the code names (act_names): the forward (layer 0's fch_act against act_ref of its fch,
   relative to the largest value) and the whole-model gradients. */
static void check_activations(void) {
    const char *lab[] = {"relu2", "gelu_erf"};
    int n = (int)(sizeof(act_names) / sizeof(act_names[0]));
    printf("activations\n");
    for (int j = 0; j < 2; j++) {
        int known = 0;
        for (int a = 0; a < n; a++) known |= !strcmp(act_names[a], lab[j]);
        if (!known) printf("  %s: not implemented (labs.md lab 2)\n", lab[j]);
    }
    for (int a = 0; a < n; a++) {
        Model m;
        int B = 2, T = 9, inputs[18], targets[18];
        lab_model(&m, FAMILY_GPT2, a, POS_LEARNED, inputs, targets, B, T);
        int F = m.cfg.d_ff, FC = a == ACT_SWIGLU ? 2 * F : F;
        double *y = (double *)malloc(sizeof(double) * F), worst = 0.0, top = 0.0;
        int have = 1;
        for (int r = 0; r < B * T && have; r++) {
            have = act_ref(act_names[a], m.acts.fch + (size_t)r * FC, F, y);
            for (int i = 0; have && i < F; i++) {
                double d = fabs(m.acts.fch_act[(size_t)r * F + i] - y[i]);
                if (d > worst) worst = d;
                if (fabs(y[i]) > top) top = fabs(y[i]);
            }
        }
        if (!have) printf("  %-44s no formula in this test (act_ref) FAIL\n", act_names[a]);
        else printf("  %-44s forward rel err %.1e (tol 1e-05) %s\n", act_names[a], worst / top, worst <= 1e-5 * top ? "ok" : "FAIL");
        if (!have || worst > 1e-5 * top) failures++;
        free(y);
        model_free(&m);
        char what[64];
        snprintf(what, sizeof(what), "%s: gradients", act_names[a]);
        check_model_grads(what, FAMILY_GPT2, NORM_LAYERNORM, a, POS_LEARNED, 1, 0);
    }
}

/* ALiBi (docs/labs.md lab 3), once positions_names has "alibi": every layer's attention probabilities against a
   causal softmax in double of scale q_t.k_s - m_h (t - s) from that layer's q and k, m_h = 2^(-8 h / NH) for
   heads h = 1..NH (4 query heads, 2 kv heads); then the whole-model gradients. */
static void check_alibi(void) {
    int n = (int)(sizeof(positions_names) / sizeof(positions_names[0])), pos = -1;
    printf("alibi\n");
    for (int p = 0; p < n; p++) if (!strcmp(positions_names[p], "alibi")) pos = p;
    if (pos < 0) { printf("  alibi: not implemented (labs.md lab 3)\n"); return; }
    Model m;
    int B = 2, T = 9, inputs[18], targets[18];
    lab_model(&m, FAMILY_LLAMA, ACT_SWIGLU, pos, inputs, targets, B, T);
    int L = m.cfg.n_layer, NH = m.cfg.n_head, NKV = m.cfg.n_kv_head, HD = m.cfg.head_dim;
    double worst = 0.0, a[16];
    int worst_h = 0;
    for (int l = 0; l < L; l++)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++) {
                    const float *q = m.acts.q + (((size_t)l * B * T + (size_t)b * T + t) * NH + h) * HD;
                    double slope = pow(2.0, -8.0 * (h + 1) / NH), mx = -INFINITY, sum = 0.0;
                    for (int s = 0; s <= t; s++) {
                        const float *k = m.acts.k + (((size_t)l * B * T + (size_t)b * T + s) * NKV + h / (NH / NKV)) * HD;
                        double d = 0.0;
                        for (int i = 0; i < HD; i++) d += (double)q[i] * k[i];
                        a[s] = d / sqrt((double)HD) - slope * (t - s);
                        if (a[s] > mx) mx = a[s];
                    }
                    for (int s = 0; s <= t; s++) { a[s] = exp(a[s] - mx); sum += a[s]; }
                    const float *got = m.acts.att + ((((size_t)l * B + b) * NH + h) * T + t) * T;
                    for (int s = 0; s <= t; s++) {
                        double e = fabs(got[s] - a[s] / sum);
                        if (e > worst) { worst = e; worst_h = h; }
                    }
                }
    int ok = worst <= 1e-5;
    printf("  %-44s max abs err %.1e (tol 1e-05; worst head %d of %d) %s\n", "attention probabilities", worst, worst_h + 1, NH,
           ok ? "ok" : "FAIL");
    if (!ok) failures++;
    model_free(&m);
    check_model_grads("alibi: gradients", FAMILY_LLAMA, NORM_RMSNORM, ACT_SWIGLU, pos, 0, 0);
}

/* A config with features off its family's defaults: config.json carries them in "llmtrain" and reads back
   to the same ModelConfig; with the family's features nothing is written there. */
static void check_feature_configs(void) {
    char err[512];
    printf("feature configs through config.json\n");
    struct { const char *preset; int norm, act, positions, mlp_bias; const char *expect; } cases[] = {
        {"tiny-gpt2", NORM_RMSNORM, ACT_SWIGLU, POS_LEARNED, 1, "\"activation\": \"swiglu\""},
        {"tiny-gpt2", NORM_LAYERNORM, ACT_GELU_TANH, POS_NONE, 0, "\"mlp_bias\": false"},
        {"tiny-llama", NORM_RMSNORM, ACT_SWIGLU, POS_LEARNED, 1, "\"positions\": \"learned\""},
        {"tiny-qwen3", NORM_LAYERNORM, ACT_GELU_TANH, POS_NONE, 1, "\"norm\": \"layernorm\""},
        {"tiny-llama", NORM_RMSNORM, ACT_SWIGLU, POS_ROPE, 1, NULL},   /* LLaMA's own mlp_bias key */
    };
    for (int i = 0; i < 5; i++) {
        ModelConfig a, b;
        model_config_preset(&a, cases[i].preset);
        a.norm = cases[i].norm; a.act = cases[i].act; a.positions = cases[i].positions; a.mlp_bias = cases[i].mlp_bias;
        if (a.family == FAMILY_QWEN3) a.max_window_layers = a.n_layer;   /* as layer_types reads back (no sliding layer) */
        char *s = model_config_to_json(&a);
        json_t *o = json_loads(s, 0, NULL);
        int has = json_object_get(o, "llmtrain") != NULL;
        int ok = o && config_from_json_value(o, "features", &b, err, sizeof(err)) == 0 && !memcmp(&a, &b, sizeof(a)) &&
                 (cases[i].expect ? has && strstr(s, cases[i].expect) != NULL : !has);
        printf("  %-12s %-9s %-6s %-7s mlp_bias %d %s %s\n", cases[i].preset, norm_names[a.norm], act_names[a.act],
               positions_names[a.positions], a.mlp_bias, ok ? "ok" : "FAIL", ok ? "" : err);
        if (!ok) failures++;
        json_decref(o); free(s);
    }
    const char *presets[] = {"tiny-gpt2", "tiny-llama", "tiny-qwen3"};
    for (int i = 0; i < 3; i++) {
        ModelConfig a;
        model_config_preset(&a, presets[i]);
        char *s = model_config_to_json(&a), extras[128];
        int ok = !strstr(s, "llmtrain") && model_config_extras(&a, extras, sizeof(extras)) == 0;
        printf("  %-12s the family's features: no llmtrain object %s\n", presets[i], ok ? "ok" : "FAIL");
        if (!ok) failures++;
        free(s);
    }
}

/* Saving and reloading gives the same weights, under the same names HF uses. */
static void check_roundtrip(void) {
    char err[512];
    ModelConfig cfg;
    model_config_from_json(&cfg, "tests/fixtures/models/gpt2", err, sizeof(err));
    Model a, b;
    model_build(&a, &cfg);
    model_build(&b, &cfg);
    if (model_load_safetensors(&a, "tests/fixtures/models/gpt2/model.safetensors", err, sizeof(err)) != 0) { printf("%s\n", err); failures++; return; }
    mkdir("tests/tmp", 0755);
    if (model_save_safetensors(&a, "tests/tmp/roundtrip.safetensors", err, sizeof(err)) != 0) { printf("%s\n", err); failures++; return; }
    if (model_load_safetensors(&b, "tests/tmp/roundtrip.safetensors", err, sizeof(err)) != 0) { printf("%s\n", err); failures++; return; }
    int same = memcmp(a.params_memory, b.params_memory, a.num_params * sizeof(float)) == 0;
    printf("save/load round trip (gpt2, transposed Conv1D): %s\n", same ? "ok" : "FAIL");
    if (!same) failures++;
    unlink("tests/tmp/roundtrip.safetensors");
    model_free(&a); model_free(&b);
}

/* Our checkpoints, read by transformers: dev/check_hf_interop.py let our trainer continue each fixture model,
   loaded the folder it saved with AutoModelForCausalLM.from_pretrained and kept HF's logits. Our forward on
   the same files must give those logits, and saving the loaded weights again must give the same bytes. */
static void check_interop(const char *name) {
    char dir[256], path[320], err[512];
    snprintf(dir, sizeof(dir), "tests/fixtures/interop/%s", name);
    ModelConfig cfg;
    Model m;
    if (model_config_from_json(&cfg, dir, err, sizeof(err)) != 0 || model_build(&m, &cfg) != 0 ||
        model_load_hf_dir(&m, dir, err, sizeof(err)) != 0) { printf("interop %s: %s\n", name, err); failures++; return; }
    SafeTensors ref;
    snprintf(path, sizeof(path), "%s/hf_logits.safetensors", dir);
    if (safetensors_open(&ref, path, err, sizeof(err)) != 0) { printf("%s\n", err); failures++; return; }
    size_t n;
    const SafeTensor *ids_t = safetensors_find(&ref, "input_ids");
    int B = (int)ids_t->shape[0], T = (int)ids_t->shape[1];
    float *f_in = read_tensor(&ref, "input_ids", &n);
    int *inputs = (int *)malloc(n * sizeof(int));
    for (size_t i = 0; i < n; i++) inputs[i] = (int)f_in[i];
    model_forward(&m, inputs, NULL, B, T);
    float *hf = read_tensor(&ref, "logits", &n);
    char what[160];
    snprintf(what, sizeof(what), "interop %s: HF logits of our checkpoint", name);
    check(what, rel_err(m.acts.logits, hf, n), 1e-5);
    mkdir("tests/tmp", 0755);
    snprintf(path, sizeof(path), "tests/tmp/interop_%s.safetensors", name);
    int same = model_save_safetensors(&m, path, err, sizeof(err)) == 0;
    if (same) {
        char orig[320];
        snprintf(orig, sizeof(orig), "%s/model.safetensors", dir);
        size_t a_len, b_len;
        unsigned char *a = map_file(orig, &a_len, err, sizeof(err)), *b = map_file(path, &b_len, err, sizeof(err));
        same = a && b && a_len == b_len && memcmp(a, b, a_len) == 0;
        unmap_file(a, a_len); unmap_file(b, b_len);
        unlink(path);
    }
    printf("  interop %s: re-saved model.safetensors is byte-identical: %s\n", name, same ? "ok" : "FAIL");
    if (!same) failures++;
    free(f_in); free(inputs); free(hf);
    safetensors_close(&ref);
    model_free(&m);
}

/* A safetensors file with the given header JSON and data bytes; open must fail with an error naming `needle`. */
static void expect_bad_safetensors(const char *what, const char *header, size_t data_bytes, const char *needle) {
    const char *path = "tests/tmp/bad.safetensors";
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    fwrite(&n, 8, 1, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_bytes; i++) fputc(0, f);
    fclose(f);
    SafeTensors st;
    char err[512] = "";
    int rc = safetensors_open(&st, path, err, sizeof(err));
    int ok = rc != 0 && strstr(err, path) && strstr(err, needle);
    printf("  %-28s %s -> %s\n", what, ok ? "ok  " : "FAIL", err);
    if (!ok) failures++;
    if (rc == 0) safetensors_close(&st);
    unlink(path);
}

static void check_safetensors_validation(void) {
    mkdir("tests/tmp", 0755);
    printf("safetensors validation\n");
    expect_bad_safetensors("gap between tensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16, "\"b\" starts at byte 12");
    expect_bad_safetensors("overlapping tensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "tile");
    expect_bad_safetensors("size != dtype x shape", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "dtype x shape");
    expect_bad_safetensors("duplicate name", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate");
    expect_bad_safetensors("offsets past the data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "outside");
    expect_bad_safetensors("trailing bytes", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "cover 4 data bytes");
    expect_bad_safetensors("unknown dtype", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_bad_safetensors("malformed header", "{\"a\":{\"dtype\":", 4, "malformed header");
    /* a header length beyond the file */
    FILE *f = fopen("tests/tmp/bad.safetensors", "wb");
    uint64_t n = 1ULL << 40;
    fwrite(&n, 8, 1, f);
    fclose(f);
    SafeTensors st;
    char err[512] = "";
    int bad = safetensors_open(&st, "tests/tmp/bad.safetensors", err, sizeof(err)) != 0 && strstr(err, "header length");
    printf("  %-28s %s -> %s\n", "header length bound", bad ? "ok  " : "FAIL", err);
    if (!bad) failures++;
    unlink("tests/tmp/bad.safetensors");
    /* a model file whose tensor has the wrong shape for the config names the tensor */
    ModelConfig cfg;
    Model m;
    model_config_from_json(&cfg, "tests/fixtures/models/llama", err, sizeof(err));
    cfg.d_ff = 80;
    model_build(&m, &cfg);
    bad = model_load_safetensors(&m, "tests/fixtures/models/llama/model.safetensors", err, sizeof(err)) != 0 &&
          strstr(err, "model.layers.0.mlp.gate_proj.weight") && strstr(err, "[96, 64]");
    printf("  %-28s %s -> %s\n", "shape vs config", bad ? "ok  " : "FAIL", err);
    if (!bad) failures++;
    model_free(&m);
}

/* bf16 checkpoints load: the llama fixture's weights rounded to bf16 (nearest even) and written as BF16
   load back to exactly those rounded values. */
static void check_bf16_load(void) {
    char err[512];
    ModelConfig cfg;
    Model a, b;
    model_config_from_json(&cfg, "tests/fixtures/models/llama", err, sizeof(err));
    model_build(&a, &cfg); model_build(&b, &cfg);
    model_load_safetensors(&a, "tests/fixtures/models/llama/model.safetensors", err, sizeof(err));
    int n = model_hf_tensors(&a, NULL);
    HFTensor *list = (HFTensor *)malloc(n * sizeof(HFTensor));
    model_hf_tensors(&a, list);
    SafeTensorOut *out = (SafeTensorOut *)calloc(n, sizeof(SafeTensorOut));
    uint16_t **bufs = (uint16_t **)calloc(n, sizeof(uint16_t *));
    for (int i = 0; i < n; i++) {
        int64_t numel = list[i].shape[0] * (list[i].ndim == 2 ? list[i].shape[1] : 1);
        bufs[i] = (uint16_t *)malloc(numel * 2);
        float *src = a.params_memory + list[i].offset;
        for (int64_t j = 0; j < numel; j++) {
            uint32_t u; memcpy(&u, &src[j], 4);
            u += 0x7FFF + ((u >> 16) & 1);         /* round to nearest even */
            bufs[i][j] = (uint16_t)(u >> 16);
            u = (uint32_t)bufs[i][j] << 16; memcpy(&src[j], &u, 4);   /* a now holds the rounded weights */
        }
        out[i].name = list[i].name; out[i].dtype = ST_BF16; out[i].ndim = list[i].ndim;
        out[i].shape[0] = list[i].shape[0]; out[i].shape[1] = list[i].shape[1]; out[i].data = bufs[i];
    }
    mkdir("tests/tmp", 0755);
    int ok = safetensors_write("tests/tmp/bf16.safetensors", out, n, NULL, err, sizeof(err)) == 0 &&
             model_load_safetensors(&b, "tests/tmp/bf16.safetensors", err, sizeof(err)) == 0 &&
             memcmp(a.params_memory, b.params_memory, a.num_params * sizeof(float)) == 0;
    printf("bf16 safetensors load (llama): %s %s\n", ok ? "ok" : "FAIL", ok ? "" : err);
    if (!ok) failures++;
    unlink("tests/tmp/bf16.safetensors");
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs); free(out); free(list);
    model_free(&a); model_free(&b);
}

int main(void) {
    run_case("gpt2", FAMILY_GPT2);
    run_case("llama", FAMILY_LLAMA);
    run_case("qwen2", FAMILY_QWEN2);
    run_case("qwen3", FAMILY_QWEN3);
    run_case("gpt2_layer_scaled", FAMILY_GPT2);
    run_case("gpt2_unscaled", FAMILY_GPT2);
    run_case("llama_bias", FAMILY_LLAMA);
    run_case("llama_mlp_bias", FAMILY_LLAMA);
    run_case("qwen2_window", FAMILY_QWEN2);
    run_case("qwen3_bias_window", FAMILY_QWEN3);
    printf("the new fixtures need their features\n");
    check_feature_needed("gpt2_layer_scaled", "scale_attn_by_inverse_layer_idx", off_layer_scale);
    check_feature_needed("gpt2_unscaled", "scale_attn_weights false", off_unscaled);
    check_feature_needed("llama_bias", "the o_proj bias", off_o_bias);
    check_feature_needed("llama_mlp_bias", "the MLP biases", off_mlp_bias);
    check_feature_needed("qwen2_window", "the sliding window", off_window);
    check_feature_needed("qwen3_bias_window", "the o_proj bias", off_o_bias);
    check_feature_needed("qwen3_bias_window", "the sliding window", off_window);
    printf("documents packed in a window (--reset-attention-mask, --reset-position-ids)\n");
    check_reset_documents("gpt2");
    check_reset_documents("llama");
    check_key_table();
    check_config_refusals();
    check_config_spellings();
    check_feature_configs();
    printf("whole-model gradients against finite differences\n");
    check_model_grads("gpt2", FAMILY_GPT2, NORM_LAYERNORM, ACT_GELU_TANH, POS_LEARNED, 1, 0);
    check_model_grads("llama", FAMILY_LLAMA, NORM_RMSNORM, ACT_SWIGLU, POS_ROPE, 0, 0);
    check_model_grads("gpt2 + RMSNorm + SwiGLU", FAMILY_GPT2, NORM_RMSNORM, ACT_SWIGLU, POS_LEARNED, 1, 0);
    check_model_grads("llama + learned positions", FAMILY_LLAMA, NORM_RMSNORM, ACT_SWIGLU, POS_LEARNED, 0, 0);
    check_model_grads("gpt2 + no positions", FAMILY_GPT2, NORM_LAYERNORM, ACT_GELU_TANH, POS_NONE, 1, 0);
    check_model_grads("qwen3 (q/k norm) + no positions", FAMILY_QWEN3, NORM_RMSNORM, ACT_SWIGLU, POS_NONE, 0, 1);
    check_model_grads("llama + mlp_bias", FAMILY_LLAMA, NORM_RMSNORM, ACT_SWIGLU, POS_ROPE, 1, 0);
    check_activations();
    check_alibi();
    check_roundtrip();
    check_bf16_load();
    check_interop("gpt2");
    check_interop("llama");
    check_interop("qwen2");
    check_interop("qwen3");
    check_safetensors_validation();
    printf("%s\n", failures ? "FAILED" : "all model checks passed");
    return failures ? 1 : 0;
}
