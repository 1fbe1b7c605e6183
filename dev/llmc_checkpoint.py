"""Writes a GPT-2 checkpoint in llm.c's format (header of 256 int32: 20240326, version 3, maxT, V, L, NH, C, Vp;
then the fp32 parameters in llm.c's order) with random N(0, 0.02) weights, for timing llm.c's train_gpt2 CPU
trainer on our presets (dev/bench_cpu.sh). The speed of a step does not depend on the values.
    python3 dev/llmc_checkpoint.py gpt2-124m OUT.bin
"""
import sys

import numpy as np

PRESETS = {"gpt2-124m": (1024, 12, 12, 768), "tiny-gpt2": (256, 4, 4, 128)}
if len(sys.argv) != 3 or sys.argv[1] not in PRESETS:
    sys.exit("usage: llmc_checkpoint.py gpt2-124m|tiny-gpt2 OUT.bin")
maxT, L, NH, C = PRESETS[sys.argv[1]]
V, Vp = 50257, 50304
n = Vp * C + maxT * C + L * (C + C + 3 * C * C + 3 * C + C * C + C + C + C + 4 * C * C + 4 * C + 4 * C * C + C) + 2 * C
header = np.zeros(256, dtype=np.int32)
header[:8] = [20240326, 3, maxT, V, L, NH, C, Vp]
rng = np.random.default_rng(0)
with open(sys.argv[2], "wb") as f:
    f.write(header.tobytes())
    f.write((rng.standard_normal(n, dtype=np.float32) * 0.02).tobytes())
