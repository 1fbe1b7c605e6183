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
