#!/usr/bin/env python3
"""Reference for --reset-attention-mask + --reset-position-ids: a packed window of several documents gives,
at every position, the loss Hugging Face transformers gives when each document runs on its own.

For each case (the tiny models of dev/gen_model_fixtures.py, already in tests/fixtures/models/<case>/),
writes tests/fixtures/models/<case>/reset_reference.safetensors with
  input_ids [B, T] int32   rows of 2-3 documents, each ending in the config's eos_token_id (the EOD)
  targets   [B, T] int32   the window shifted by one
  losses    [B, T] f32     per-token cross-entropy, each document run separately (positions from 0)
Usage: python3 dev/gen_reset_fixtures.py [--models tests/fixtures/models]
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

T = 16
DOCS = [[5, 6], [3, 4, 7], [9]]   # the lengths (with their EOD) of the documents of each row; a last one fills the row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tests/fixtures/models")
    args = ap.parse_args()
    for case in ["gpt2", "llama"]:
        d = os.path.join(args.models, case)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        eod, V = model.config.eos_token_id, model.config.vocab_size
        rng = np.random.default_rng(11)
        B = len(DOCS)
        window = np.zeros((B, T + 1), dtype=np.int64)
        def words(n):   # n random ids other than the EOD
            x = rng.integers(0, V - 1, size=n)
            return [int(v) + (v >= eod) for v in x]
        for b, lens in enumerate(DOCS):
            row = []
            for n in lens:
                row += words(n - 1) + [eod]
            window[b] = (row + words(T + 1))[: T + 1]
        inputs, targets = window[:, :T], window[:, 1:]
        losses = np.zeros((B, T), dtype=np.float32)
        with torch.no_grad():
            for b in range(B):
                ends = [t for t in range(T) if inputs[b, t] == eod] + [T - 1]
                start = 0
                for e in ends:
                    if e < start:
                        continue
                    ids = torch.tensor(inputs[b, start:e + 1])[None]
                    logits = model(input_ids=ids).logits[0].double()
                    tg = torch.tensor(targets[b, start:e + 1])
                    losses[b, start:e + 1] = F.cross_entropy(logits, tg, reduction="none").float().numpy()
                    start = e + 1
            assert sum(int((inputs[b] == eod).sum()) for b in range(B)) >= 4, "the rows hold several documents"
        save_file({"input_ids": torch.tensor(inputs, dtype=torch.int32), "targets": torch.tensor(targets, dtype=torch.int32),
                   "losses": torch.tensor(losses)}, os.path.join(d, "reset_reference.safetensors"))
        print(case, "documents per row:", [int((inputs[b] == eod).sum()) + 1 for b in range(B)])


if __name__ == "__main__":
    main()
