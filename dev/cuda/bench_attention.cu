/*
 dev/cuda/bench_attention.cu — times train_gpu.cu's attention kernels (tensor-core vs plain, forward and
 backward) at the GPT-2 124M and LLaMA-1B shapes, and at head dim 64 and 128 for T = 1k..8k with 16k tokens
 and 2048 channels per batch (FlashAttention-2's benchmark shapes, no GQA; dev/bench_torch_gpu.py attention runs
 the same with PyTorch SDPA), in TFLOP/s by the causal count that MFU uses: forward 2 B T^2 QD, backward 2.5x
 that, fwd+bwd 3.5x. "docs" rows: the same with 4 packed documents per window (AttnArgs.doc_start, pos), whose
 skipped tiles make them faster, though counted as full causal.
   nvcc -O3 -arch=sm_90 -std=c++17 -D_GNU_SOURCE -Xcompiler -fopenmp -I. -o out/bench_attention \
        dev/cuda/bench_attention.cu prepro/tokenizer.c -lcublas -lcublasLt -lnccl -ljansson -lpcre2-8 -lm
*/
#define TRAIN_GPU_NO_MAIN
#include "../../train_gpu.cu"

#include <vector>

static void bench(const char *name, int B, int Tn, int NH, int NKV, int HD, int rope, int plain, int docs = 0) {
    size_t N = (size_t)B * Tn, half = HD / 2;
    int QD = NH * HD, KD = NKV * HD, QKV = QD + 2 * KD;
    bf16 *qkv = (bf16 *)dev_alloc(N * QKV * 2), *dqkv = (bf16 *)dev_alloc(N * QKV * 2);
    bf16 *out = (bf16 *)dev_alloc(N * QD * 2), *dout = (bf16 *)dev_alloc(N * QD * 2);
    float *lse = (float *)dev_alloc(N * NH * 4), *delta = (float *)dev_alloc(N * NH * 4);
    CUDA_CHECK(cudaMemset(qkv, 0x3c, N * QKV * 2));   /* a small constant: finite arithmetic */
    CUDA_CHECK(cudaMemset(dout, 0x3c, N * QD * 2));
    CUDA_CHECK(cudaMemset(dqkv, 0, N * QKV * 2));     /* the backward adds into dq, dk, dv */
    float *cs = NULL, *sn = NULL;
    if (rope) {
        cs = (float *)dev_alloc(Tn * half * 4); sn = (float *)dev_alloc(Tn * half * 4);
        CUDA_CHECK(cudaMemset(cs, 0, Tn * half * 4)); CUDA_CHECK(cudaMemset(sn, 0, Tn * half * 4));
    }
    AttnArgs<bf16> a;
    memset(&a, 0, sizeof(a));
    a.q = qkv; a.k = qkv + QD; a.v = qkv + QD + KD; a.ldq = a.ldk = a.ldv = QKV;
    a.out = out; a.ldo = QD; a.lse = lse; a.dout = dout; a.lddo = QD;
    a.dq = dqkv; a.dk = dqkv + QD; a.dv = dqkv + QD + KD; a.lddq = a.lddk = a.lddv = QKV;
    a.delta = delta; a.cos = cs; a.sin = sn; a.B = B; a.T = Tn; a.NH = NH; a.NKV = NKV; a.HD = HD;
    int *dlo = NULL, *dpos = NULL;
    if (docs) {   /* docs equal documents per window; RoPE positions restart at each */
        std::vector<int> lo(N), pos(N);
        for (size_t i = 0; i < N; i++) { int t = (int)(i % Tn), len = Tn / docs; lo[i] = t / len * len; pos[i] = t - lo[i]; }
        dlo = (int *)dev_alloc(N * 4); dpos = (int *)dev_alloc(N * 4);
        CUDA_CHECK(cudaMemcpy(dlo, lo.data(), N * 4, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(dpos, pos.data(), N * 4, cudaMemcpyHostToDevice));
        a.doc_start = dlo; a.pos = dpos;
    }
    cudaEvent_t e0, e1, e2;
    cudaEventCreate(&e0); cudaEventCreate(&e1); cudaEventCreate(&e2);
    gpu::attention_forward(a, plain, 0);
    gpu::attention_backward(a, plain, 0);
    int reps = plain ? 2 : 20;
    float fwd = 0, bwd = 0;
    for (int i = 0; i < reps; i++) {
        cudaEventRecord(e0);
        gpu::attention_forward(a, plain, 0);
        cudaEventRecord(e1);
        gpu::attention_backward(a, plain, 0);
        cudaEventRecord(e2);
        cudaEventSynchronize(e2);
        float f, b;
        cudaEventElapsedTime(&f, e0, e1); cudaEventElapsedTime(&b, e1, e2);
        fwd += f / reps; bwd += b / reps;
    }
    double flops = 2.0 * (double)B * Tn * Tn * QD;   /* causal forward: 2 products x 2 flops x T^2/2 pairs x QD */
    printf("%-10s %-5s B%-3d T%-5d H%d/%d HD%-4d  fwd %8.3f ms %6.1f TFLOP/s   bwd %8.3f ms %6.1f TFLOP/s   fwd+bwd %6.1f TFLOP/s\n",
           name, plain ? "plain" : "tc", B, Tn, NH, NKV, HD, fwd, flops / fwd / 1e9, bwd, 2.5 * flops / bwd / 1e9,
           3.5 * flops / (fwd + bwd) / 1e9);
    fflush(stdout);
    if (docs) { dev_free(dlo, N * 4); dev_free(dpos, N * 4); }
    dev_free(qkv, N * QKV * 2); dev_free(dqkv, N * QKV * 2); dev_free(out, N * QD * 2); dev_free(dout, N * QD * 2);
    dev_free(lse, N * NH * 4); dev_free(delta, N * NH * 4);
    if (rope) { dev_free(cs, Tn * half * 4); dev_free(sn, Tn * half * 4); }
}

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { printf("no GPU: skipped\n"); return 0; }
    gpu_setup();
    bench("gpt2-124m", 16, 1024, 12, 12, 64, 0, 0);
    bench("llama-1b", 4, 2048, 32, 8, 64, 1, 0);
    bench("hd128", 4, 2048, 16, 4, 128, 1, 0);
    bench("hd128", 2, 4096, 16, 4, 128, 1, 0);
    for (int T = 1024; T <= 8192; T *= 2) bench("hd64", 16384 / T, T, 32, 32, 64, 1, 0);
    for (int T = 1024; T <= 8192; T *= 2) bench("hd128", 16384 / T, T, 16, 16, 128, 1, 0);
    bench("hd128-docs", 4, 4096, 16, 16, 128, 1, 0, 4);
    bench("gpt2-124m", 2, 1024, 12, 12, 64, 0, 1);
    return 0;
}
