"""PyTorch on the CPU, for a side-by-side with train (dev/bench_cpu.sh runs it when torch is installed).

One training step = forward + backward + clip_grad_norm_(1.0) + AdamW, in fp32, on random tokens, for the
same model shapes as our presets. Prints "NAME B T ms/step", the median of the steps after the first.
    python3 dev/bench_torch_cpu.py --model gpt2-124m --batch-size 4 --seq-len 64 --steps 6 --threads 2
"""
import argparse, statistics, time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

PRESETS = {"gpt2-124m": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),
           "tiny-gpt2": dict(n_layer=4, n_embd=128, n_head=4, n_positions=256)}

p = argparse.ArgumentParser()
p.add_argument("--model", default="gpt2-124m", choices=PRESETS)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--seq-len", type=int, default=64)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = GPT2Config(vocab_size=50257, activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, **PRESETS[a.model])
model = GPT2LMHeadModel(cfg).train()
decay = [q for q in model.parameters() if q.dim() >= 2]
no_decay = [q for q in model.parameters() if q.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
x = torch.randint(0, 50257, (a.batch_size, a.seq_len + 1))
times = []
for step in range(a.steps):
    t0 = time.perf_counter()
    out = model(x[:, :-1], labels=None)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 50257), x[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append((time.perf_counter() - t0) * 1000)
ms = statistics.median(times[1:]) if len(times) > 1 else times[0]
print(f"{a.model} {a.batch_size} {a.seq_len} {ms:.1f}")
