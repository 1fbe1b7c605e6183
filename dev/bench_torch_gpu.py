#!/usr/bin/env python3
"""dev/bench_torch_gpu.py — the PyTorch side of the GPU benchmarks, run beside train_gpu on the same GPU.

  python3 dev/bench_torch_gpu.py train --model gpt2-124m --batch-size 32 --seq-len 1024 --steps 30
  python3 dev/bench_torch_gpu.py train --model llama-1b --batch-size 8 --seq-len 2048 --steps 20
  python3 dev/bench_torch_gpu.py attention

train: the model of our preset (same sizes, vocab and tying as llmtrain.h's presets), fp32 weights, bf16 autocast,
F.scaled_dot_product_attention (causal; flash), torch.compile, fused AdamW, clip 1.0, random tokens. Prints one
line per step and a closing line "torch <model>: N tok/s, MFU X%, peak mem Y GiB" (mean over the steps after the
first 5) with MFU counted exactly as train_gpu counts it (flops_per_token in train_gpu.cu).
attention: SDPA forward and backward alone at the shapes of dev/cuda/bench_attention.cu, TFLOP/s by the same
causal count (forward 2*B*T*T*QD, backward 2.5x that, fwd+bwd 3.5x).
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # family, vocab, max positions, layers, hidden, heads, kv heads, head dim, ff, tied, rope theta
    "gpt2-124m": ("gpt2", 50257, 1024, 12, 768, 12, 12, 64, 3072, True, 0.0),
    "gpt2-350m": ("gpt2", 50257, 1024, 24, 1024, 16, 16, 64, 4096, True, 0.0),
    "llama-1b": ("llama", 128256, 2048, 16, 2048, 32, 8, 64, 8192, True, 500000.0),
}

PEAK_BF16 = [("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("GH200", 989), ("H800", 989),
             ("B200", 2250), ("B100", 1750), ("A100", 312)]


def peak_flops(name):
    for key, tf in PEAK_BF16:
        if key in name:
            return tf * 1e12
    return 0.0


def flops_per_token(p, T):
    """train_gpu.cu's flops_per_token: 6 x matmul params (lm_head included) + 6 L T QD for attention"""
    fam, V, _, L, C, NH, NKV, HD, Fd, _, _ = p
    QD, KD = NH * HD, NKV * HD
    FC = Fd if fam == "gpt2" else 2 * Fd
    return 6.0 * (L * ((QD + 2 * KD) * C + C * QD + FC * C + C * Fd) + V * C) + 6.0 * L * T * QD


class RMSNorm(nn.Module):
    def __init__(self, C, eps=1e-5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(C))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.w


def rope_tables(T, HD, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, HD, 2, device=device).float() / HD))
    f = torch.outer(torch.arange(T, device=device).float(), inv)
    return torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()


def rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class Block(nn.Module):
    def __init__(self, p):
        super().__init__()
        fam, V, P, L, C, NH, NKV, HD, Fd, tied, theta = p
        self.gpt2, self.NH, self.NKV, self.HD = fam == "gpt2", NH, NKV, HD
        self.n1 = nn.LayerNorm(C) if self.gpt2 else RMSNorm(C)
        self.n2 = nn.LayerNorm(C) if self.gpt2 else RMSNorm(C)
        self.qkv = nn.Linear(C, (NH + 2 * NKV) * HD, bias=self.gpt2)
        self.o = nn.Linear(NH * HD, C, bias=self.gpt2)
        self.fc = nn.Linear(C, Fd if self.gpt2 else 2 * Fd, bias=self.gpt2)
        self.proj = nn.Linear(Fd, C, bias=self.gpt2)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(self.n1(x)).split([self.NH * self.HD, self.NKV * self.HD, self.NKV * self.HD], -1)
        q = q.view(B, T, self.NH, self.HD).transpose(1, 2)
        k = k.view(B, T, self.NKV, self.HD).transpose(1, 2)
        v = v.view(B, T, self.NKV, self.HD).transpose(1, 2)
        if cos is not None:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.NKV != self.NH)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, -1))
        h = self.fc(self.n2(x))
        if self.gpt2:
            h = F.gelu(h, approximate="tanh")
        else:
            g, u = h.chunk(2, -1)
            h = F.silu(g) * u
        return x + self.proj(h)


class Model(nn.Module):
    def __init__(self, p, T):
        super().__init__()
        fam, V, P, L, C, NH, NKV, HD, Fd, tied, theta = p
        self.p = p
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(P, C) if fam == "gpt2" else None
        self.blocks = nn.ModuleList([Block(p) for _ in range(L)])
        self.nf = nn.LayerNorm(C) if fam == "gpt2" else RMSNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        if tied:
            self.head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        if fam != "gpt2":
            cos, sin = rope_tables(T, HD, theta, "cpu")
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        else:
            self.cos = self.sin = None

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        cos = self.cos[:T] if self.cos is not None else None
        sin = self.sin[:T] if self.sin is not None else None
        for b in self.blocks:
            x = b(x, cos, sin)
        logits = self.head(self.nf(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def train(args):
    p = PRESETS[args.model]
    dev = torch.device("cuda")
    torch.manual_seed(1234)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = Model(p, args.seq_len).to(dev)
    decay = [q for n, q in model.named_parameters() if q.dim() >= 2]
    other = [q for n, q in model.named_parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    step_fn = torch.compile(model) if not args.no_compile else model
    V = p[1]
    B, T = args.batch_size, args.seq_len
    name = torch.cuda.get_device_name()
    peak, fpt = peak_flops(name), flops_per_token(p, T)
    nparams = sum(q.numel() for q in model.parameters())
    print(f"torch {torch.__version__} on {name}: {args.model} ({nparams} parameters), B {B} T {T}, "
          f"{'torch.compile' if not args.no_compile else 'eager'}, bf16 autocast, SDPA", flush=True)
    tps_all, mfu_all = [], []
    torch.cuda.reset_peak_memory_stats()
    for step in range(1, args.steps + 1):
        x = torch.randint(0, V, (B, T + 1), device=dev)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tps = B * T / dt
        mfu = 100.0 * fpt * tps / peak if peak else float("nan")
        if step > 5:
            tps_all.append(tps)
            mfu_all.append(mfu)
        print(f"step {step:4d}/{args.steps} | loss {loss.item():.4f} | {dt * 1000:.1f} ms | {tps:.0f} tok/s | MFU {mfu:.1f}%",
              flush=True)
    mem = torch.cuda.max_memory_allocated() / 2**30
    if tps_all:
        print(f"torch {args.model}: {sum(tps_all) / len(tps_all):.0f} tok/s, MFU {sum(mfu_all) / len(mfu_all):.1f}%, "
              f"peak mem {mem:.2f} GiB")


def attention(args):
    dev = torch.device("cuda")
    shapes = [("gpt2-124m", 16, 1024, 12, 12, 64), ("llama-1b", 4, 2048, 32, 8, 64), ("hd128", 4, 2048, 16, 4, 128),
              ("hd128", 2, 4096, 16, 4, 128)]
    shapes += [("hd64", 16384 // T, T, 32, 32, 64) for T in (1024, 2048, 4096, 8192)]
    shapes += [("hd128", 16384 // T, T, 16, 16, 128) for T in (1024, 2048, 4096, 8192)]
    for name, B, T, NH, NKV, HD in shapes:
        q = torch.randn(B, NH, T, HD, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, NKV, T, HD, device=dev, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, NKV, T, HD, device=dev, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(B, NH, T, HD, device=dev, dtype=torch.bfloat16)
        gqa = NKV != NH

        def fwd():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

        for _ in range(3):
            fwd().backward(g)
        reps = 20
        ef, eb = 0.0, 0.0
        for _ in range(reps):
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            y = fwd()
            e1.record()
            y.backward(g)
            e2.record()
            torch.cuda.synchronize()
            ef += e0.elapsed_time(e1)
            eb += e1.elapsed_time(e2)
        ef /= reps
        eb /= reps
        flops = 2.0 * B * T * T * NH * HD
        print(f"{name:<10} sdpa  B{B:<3d} T{T:<5d} H{NH}/{NKV} HD{HD:<4d}  fwd {ef:8.3f} ms {flops / ef / 1e9:6.1f} TFLOP/s"
              f"   bwd {eb:8.3f} ms {2.5 * flops / eb / 1e9:6.1f} TFLOP/s   fwd+bwd {3.5 * flops / (ef + eb) / 1e9:6.1f} TFLOP/s",
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "attention"])
    ap.add_argument("--model", default="gpt2-124m", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    train(args) if args.what == "train" else attention(args)


if __name__ == "__main__":
    main()
