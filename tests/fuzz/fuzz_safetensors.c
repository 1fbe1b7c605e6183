/*
 libFuzzer target: safetensors_open on arbitrary bytes, then safetensors_read_f32 of every F32/BF16/F16
 tensor (plain, and transposed when 2-D) and safetensors_find of every name.

 Invariants checked on a file that opens: each tensor's byte range lies in the data buffer and equals
 dtype size x numel (what safetensors_open promises), numel is not negative, find returns the tensor of
 that name, the converted values of F32 tensors are the stored bits and a transpose moves them as it says.
*/
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"
#include "fuzz_common.h"

static int dtype_bytes(int dt) {
    switch (dt) {
    case ST_F32: case ST_I32: return 4;
    case ST_F16: case ST_BF16: return 2;
    case ST_I64: return 8;
    case ST_U8: return 1;
    default: return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[512];
    if (!path[0]) snprintf(path, sizeof(path), "%s/model.safetensors", fuzz_tmpdir());
    fuzz_write_file(path, data, size);
    SafeTensors st;
    char err[1024]; err[0] = 0;
    if (safetensors_open(&st, path, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != 0, "open failed without a message");
        return 0;
    }
    uint64_t data_size = st.size - (uint64_t)(st.data - st.map);
    for (int i = 0; i < st.num_tensors; i++) {
        const SafeTensor *t = &st.tensors[i];
        FUZZ_CHECK(t->begin <= t->end && t->end <= data_size, "tensor %s: [%llu, %llu) outside %llu bytes", t->name,
                   (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)data_size);
        FUZZ_CHECK(safetensors_find(&st, t->name) != NULL && !strcmp(safetensors_find(&st, t->name)->name, t->name),
                   "find(%s)", t->name);
        int64_t n = safetensor_numel(t);
        int b = dtype_bytes(t->dtype);
        FUZZ_CHECK(n >= 0, "tensor %s: numel %lld", t->name, (long long)n);
        if (b) FUZZ_CHECK((uint64_t)n * (uint64_t)b == t->end - t->begin && (uint64_t)n <= (t->end - t->begin) / (uint64_t)b + (b ? 0 : 1),
                          "tensor %s: numel %lld x %d bytes, but its range holds %llu bytes", t->name, (long long)n, b,
                          (unsigned long long)(t->end - t->begin));
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) continue;
        float *dst = malloc((size_t)(n ? n : 1) * sizeof(float));
        if (!dst) abort();
        FUZZ_CHECK(safetensors_read_f32(&st, t, dst, 0) == 0, "read_f32(%s) failed", t->name);
        if (t->dtype == ST_F32)
            FUZZ_CHECK(n == 0 || memcmp(dst, st.data + t->begin, (size_t)n * 4) == 0, "read_f32(%s) changed F32 bits", t->name);
        if (t->ndim == 2) {
            float *tr = malloc((size_t)(n ? n : 1) * sizeof(float));
            if (!tr) abort();
            FUZZ_CHECK(safetensors_read_f32(&st, t, tr, 1) == 0, "read_f32(%s, transpose) failed", t->name);
            int64_t R = t->shape[0], C = t->shape[1];
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < C; c++)
                    FUZZ_CHECK(memcmp(&tr[c * R + r], &dst[r * C + c], 4) == 0, "transpose of %s at (%lld, %lld)", t->name,
                               (long long)r, (long long)c);
            free(tr);
        } else {
            FUZZ_CHECK(safetensors_read_f32(&st, t, dst, 1) != 0, "transpose of a %d-D tensor %s accepted", t->ndim, t->name);
        }
        free(dst);
    }
    safetensors_close(&st);
    return 0;
}
