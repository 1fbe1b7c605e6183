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

int main(void) {
    run_case("gpt2", FAMILY_GPT2);
    run_case("llama", FAMILY_LLAMA);
    run_case("qwen2", FAMILY_QWEN2);
    run_case("qwen3", FAMILY_QWEN3);
    check_roundtrip();
    printf("%s\n", failures ? "FAILED" : "all model checks passed");
    return failures ? 1 : 0;
}
