/* st_maxdiff A.safetensors B.safetensors: the largest |a - b| over the float tensors of two safetensors
   files with the same names and shapes (for the shell tests). Exit 2 if they do not match in layout. */
#define LLMTRAIN_IMPLEMENTATION
#include "llmtrain.h"

/* The largest |a - b| over the tensors of two opened files; -1 if they do not match in layout. */
static double max_diff(const SafeTensors *a, const SafeTensors *b) {
    if (a->num_tensors != b->num_tensors) { fprintf(stderr, "different tensor counts\n"); return -1; }
    double worst = 0;
    for (int i = 0; i < a->num_tensors; i++) {
        const SafeTensor *ta = &a->tensors[i], *tb = safetensors_find(b, ta->name);
        if (!tb || safetensor_numel(ta) != safetensor_numel(tb)) { fprintf(stderr, "%s: missing or reshaped\n", ta->name); return -1; }
        if (ta->dtype != ST_F32 && ta->dtype != ST_BF16 && ta->dtype != ST_F16) {
            if (ta->end - ta->begin != tb->end - tb->begin || memcmp(a->data + ta->begin, b->data + tb->begin, ta->end - ta->begin)) worst = INFINITY;
            continue;
        }
        int64_t n = safetensor_numel(ta);
        float *x = (float *)malloc(n * sizeof(float)), *y = (float *)malloc(n * sizeof(float));
        safetensors_read_f32(a, ta, x, 0);
        safetensors_read_f32(b, tb, y, 0);
        for (int64_t j = 0; j < n; j++) { double d = fabs((double)x[j] - y[j]); if (d > worst || d != d) worst = d != d ? INFINITY : d; }
        free(x); free(y);
    }
    return worst;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: st_maxdiff A.safetensors B.safetensors\n"); return 2; }
    SafeTensors a, b;
    char err[512];
    if (safetensors_open(&a, argv[1], err, sizeof(err))) { fprintf(stderr, "%s\n", err); return 2; }
    if (safetensors_open(&b, argv[2], err, sizeof(err))) { fprintf(stderr, "%s\n", err); safetensors_close(&a); return 2; }
    double worst = max_diff(&a, &b);
    safetensors_close(&a);
    safetensors_close(&b);
    if (worst < 0) return 2;
    printf("%.3e\n", worst);
    return 0;
}
