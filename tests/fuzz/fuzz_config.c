/*
 libFuzzer target: model_config_from_json on an arbitrary config.json, then model_config_validate.

 Invariants checked on a config that loads: it validates; model_config_to_json writes it back as JSON that
 loads again into the same configuration (a config that reads is one that saves).
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "fuzz_common.h"

static int same_config(const ModelConfig *a, const ModelConfig *b, char *what, size_t len) {
#define SAME(f) if (a->f != b->f) { snprintf(what, len, #f); return 0; }
    SAME(family) SAME(vocab_size) SAME(max_seq_len) SAME(n_layer) SAME(n_embd) SAME(n_head) SAME(n_kv_head)
    SAME(head_dim) SAME(d_ff) SAME(norm_eps) SAME(rope_theta) SAME(rope_llama3) SAME(tie_embeddings)
    SAME(qkv_bias) SAME(qk_norm)
    if (a->rope_llama3) { SAME(rope_factor) SAME(rope_low_freq_factor) SAME(rope_high_freq_factor) SAME(rope_orig_max_pos) }
    /* token ids below 0 mean "none" and are not written */
    if ((a->bos_token_id < 0 ? -1 : a->bos_token_id) != (b->bos_token_id < 0 ? -1 : b->bos_token_id)) { snprintf(what, len, "bos_token_id"); return 0; }
    if ((a->eos_token_id < 0 ? -1 : a->eos_token_id) != (b->eos_token_id < 0 ? -1 : b->eos_token_id)) { snprintf(what, len, "eos_token_id"); return 0; }
#undef SAME
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[512], path2[512];
    if (!path[0]) {
        snprintf(path, sizeof(path), "%s/config.json", fuzz_tmpdir());
        snprintf(path2, sizeof(path2), "%s/config2.json", fuzz_tmpdir());
    }
    fuzz_write_file(path, data, size);
    ModelConfig c;
    char err[1024]; err[0] = 0;
    if (model_config_from_json(&c, path, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != 0, "from_json failed without a message");
        return 0;
    }
    char verr[512];
    FUZZ_CHECK(model_config_validate(&c, verr, sizeof(verr)) == 0, "a loaded config does not validate: %s", verr);
    char *js = model_config_to_json(&c);
    FUZZ_CHECK(js != NULL, "to_json returned NULL");
    fuzz_write_file(path2, js, strlen(js));
    ModelConfig c2;
    FUZZ_CHECK(model_config_from_json(&c2, path2, err, sizeof(err)) == 0, "the saved config does not load: %s\n%s", err, js);
    char what[64];
    FUZZ_CHECK(same_config(&c, &c2, what, sizeof(what)), "saved and reloaded config differs in %s\n%s", what, js);
    free(js);
    return 0;
}
