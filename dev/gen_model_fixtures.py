#!/usr/bin/env python3
"""Generate tiny Hugging Face reference models and their forward/backward/AdamW
results for the C tests.

For each case a directory tests/fixtures/models/<case>/ is written with:
  config.json, model.safetensors   exactly as save_pretrained() writes them
  reference.safetensors            input_ids, targets, logits, loss,
                                   grad.<name> for every stored tensor,
                                   adamw_losses, adamw_gradnorms

Usage:  python3 dev/gen_model_fixtures.py [--out tests/fixtures/models]
"""

import argparse
import dataclasses
import json
import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
import transformers
import safetensors
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SEED = 1234
B, T = 2, 16
# Weight matrices / embeddings: N(0, INIT_STD). Larger than the usual 0.02 so
# that attention scores and logits are far from uniform in such small models.
INIT_STD = 0.1
NORM_W_STD = 0.1   # norm weights: 1 + NORM_W_STD * randn
BIAS_STD = 0.02    # biases: BIAS_STD * randn
LR = 1e-2
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
CLIP = 1.0
ADAMW_FORWARDS = 6  # 6 recorded forwards, 5 updates between them

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def make_gpt2():
    cfg = GPT2Config(
        vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=95, eos_token_id=95,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(cfg)


def make_llama():
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
        rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=False,
        max_position_embeddings=64, attention_dropout=0.0,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg)


def make_qwen2():
    cfg = Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
        max_position_embeddings=64, use_sliding_window=False,
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
        attn_implementation="eager",
    )
    return Qwen2ForCausalLM(cfg)


def make_qwen3():
    cfg = Qwen3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False,
        rms_norm_eps=1e-6, attention_bias=False, max_position_embeddings=64,
        use_sliding_window=False, attention_dropout=0.0,
        bos_token_id=1, eos_token_id=2,
        attn_implementation="eager",
    )
    return Qwen3ForCausalLM(cfg)


def make_gpt2_small(**extra):
    cfg = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_head=2,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=63, eos_token_id=63, attn_implementation="eager",
        **extra,
    )
    return GPT2LMHeadModel(cfg)


def make_gpt2_layer_scaled():
    # layer l's attention scores divided by l + 1; the reordered fp32 score
    # path (the same math in fp32)
    return make_gpt2_small(n_layer=3, scale_attn_by_inverse_layer_idx=True,
                           reorder_and_upcast_attn=True)


def make_gpt2_unscaled():
    # scores not divided by sqrt(head_dim)
    return make_gpt2_small(n_layer=2, scale_attn_weights=False)


# the shared sizes of the small LLaMA / Qwen feature cases
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48,
             num_attention_heads=4, num_key_value_heads=2,
             tie_word_embeddings=True, max_position_embeddings=64,
             attention_dropout=0.0, attn_implementation="eager")


def make_llama_bias():
    # attention_bias: biases on q, k, v and o_proj
    return LlamaForCausalLM(LlamaConfig(
        **SMALL, num_hidden_layers=2, head_dim=8, rms_norm_eps=1e-5,
        rope_theta=10000.0, attention_bias=True))


def make_llama_mlp_bias():
    # mlp_bias: biases on gate_proj, up_proj and down_proj
    return LlamaForCausalLM(LlamaConfig(
        **SMALL, num_hidden_layers=2, head_dim=8, rms_norm_eps=1e-5,
        rope_theta=10000.0, mlp_bias=True))


def make_qwen2_window():
    # sliding window of 5 < T on layers >= max_window_layers = 1 (of 3)
    return Qwen2ForCausalLM(Qwen2Config(
        **SMALL, num_hidden_layers=3, rope_theta=10000.0, rms_norm_eps=1e-6,
        use_sliding_window=True, sliding_window=5, max_window_layers=1,
        bos_token_id=1, eos_token_id=2))


def make_qwen3_bias_window():
    # attention_bias (q, k, v, o_proj biases) and a sliding window of 4 on
    # layer 1 of 2
    return Qwen3ForCausalLM(Qwen3Config(
        **SMALL, num_hidden_layers=2, head_dim=8, rope_theta=1000000.0,
        rms_norm_eps=1e-6, attention_bias=True, use_sliding_window=True,
        sliding_window=4, max_window_layers=1, bos_token_id=1, eos_token_id=2))


CASES = [
    ("gpt2", make_gpt2),
    ("llama", make_llama),
    ("qwen2", make_qwen2),
    ("qwen3", make_qwen3),
    ("gpt2_layer_scaled", make_gpt2_layer_scaled),
    ("gpt2_unscaled", make_gpt2_unscaled),
    ("llama_bias", make_llama_bias),
    ("llama_mlp_bias", make_llama_mlp_bias),
    ("qwen2_window", make_qwen2_window),
    ("qwen3_bias_window", make_qwen3_bias_window),
]

CONFIG_CLASSES = [
    ("gpt2", GPT2Config),
    ("llama", LlamaConfig),
    ("qwen2", Qwen2Config),
    ("qwen3", Qwen3Config),
]


def write_config_keys(path):
    """Every key transformers knows for each family's config class: its
    fields and the keys of its to_dict(), the attribute_map aliases, and the
    generation settings that PreTrainedConfig moves out of a config. The C
    config reader must classify each one."""
    gen = sorted(transformers.GenerationConfig
                 ._get_default_generation_params().keys())
    out = {}
    for name, cls in CONFIG_CLASSES:
        keys = {f.name for f in dataclasses.fields(cls)}
        keys |= set(cls().to_dict().keys())
        keys |= set(getattr(cls, "attribute_map", {}).keys())
        keys |= set(gen)
        out[name] = sorted(keys)
    out["transformers_version"] = transformers.__version__
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}")


def is_norm_weight(name):
    leaf = name.split(".")[-2] if name.endswith(".weight") else ""
    return name.endswith(".weight") and (
        "norm" in leaf or leaf in ("ln_1", "ln_2", "ln_f"))


def reinit(model, gen):
    """Re-initialise every parameter with non-trivial random values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                v = BIAS_STD * torch.randn(p.shape, generator=gen)
            elif is_norm_weight(name):
                assert p.dim() == 1, name
                v = 1.0 + NORM_W_STD * torch.randn(p.shape, generator=gen)
            else:
                assert p.dim() == 2, name
                v = INIT_STD * torch.randn(p.shape, generator=gen)
            p.copy_(v)


def stored_names(model, st_keys):
    """Map each parameter (by identity) to its key in model.safetensors."""
    sd = model.state_dict(keep_vars=True)
    out = []
    for pname, p in model.named_parameters():
        cands = [k for k, v in sd.items() if v is p and k in st_keys]
        assert len(cands) == 1, (pname, cands)
        out.append((cands[0], p))
    names = [n for n, _ in out]
    assert sorted(names) == sorted(st_keys), (sorted(names), sorted(st_keys))
    return out


def forward_loss(model, input_ids, targets):
    logits = model(input_ids=input_ids).logits
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V).float(),
                           targets.reshape(-1).long(), reduction="mean")
    return logits, loss


def manual_ce(logits, targets):
    lp = torch.log_softmax(logits.double(), dim=-1)
    nll = -lp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return nll.mean()


def print_llama3_branches(cfg):
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    hd = cfg.head_dim
    orig = rp["original_max_position_embeddings"]
    low, high = rp["low_freq_factor"], rp["high_freq_factor"]
    lo_wl, hi_wl = orig / high, orig / low
    branches = []
    print(f"  llama3 rope: theta={theta} hd={hd} keep if wavelen<{lo_wl}, "
          f"scale if wavelen>{hi_wl}, smooth otherwise")
    for i in range(hd // 2):
        inv = theta ** (-2 * i / hd)
        wl = 2 * math.pi / inv
        b = "keep" if wl < lo_wl else ("scale" if wl > hi_wl else "smooth")
        branches.append(b)
        print(f"    i={i} inv_freq={inv:.6g} wavelen={wl:.4g} -> {b}")
    assert set(branches) == {"keep", "scale", "smooth"}, branches
    # Compare with transformers' own llama3 inv_freq.
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    inv_hf, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    print("    transformers inv_freq:", [f"{x:.6g}" for x in inv_hf.tolist()])


def canonicalize_metadata_order(path):
    """save_file writes __metadata__ in hash order; sort it so that the file
    bytes are reproducible. The header keeps its length (padding with spaces
    if needed), so data offsets are unchanged."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        hdr = json.loads(raw, object_pairs_hook=lambda kv: kv)
        hdr = [(k, dict(sorted(v) if k == "__metadata__" else v))
               for k, v in hdr]
        new = json.dumps(dict(hdr), separators=(",", ":"),
                         ensure_ascii=False).encode()
        assert len(new) <= n, (len(new), n)
        new += b" " * (n - len(new))
        f.seek(8)
        f.write(new)


def gen_case(name, make, outdir, versions):
    print(f"== {name}")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = make().float()
    reinit(model, gen)
    model.eval()
    cfg = model.config
    V = cfg.vocab_size
    if name == "llama":
        print_llama3_branches(cfg)

    d = os.path.join(outdir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    model.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors"):
            print(f"  removing {f}")
            os.remove(os.path.join(d, f))

    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        st_keys = list(f.keys())
        st_meta = f.metadata()
        st = {k: f.get_tensor(k) for k in st_keys}
    print(f"  model.safetensors metadata: {st_meta}")
    for k in sorted(st_keys):
        print(f"    {k} {st[k].dtype} {list(st[k].shape)}")
    params = stored_names(model, set(st_keys))
    for k, p in params:
        assert torch.equal(st[k], p.detach()), k

    tokens = torch.randint(0, V, (B, T + 1), generator=gen, dtype=torch.int64)
    input_ids = tokens[:, :-1].contiguous()
    targets = tokens[:, 1:].contiguous()

    # Forward / backward on the saved weights.
    model.zero_grad(set_to_none=True)
    logits, loss = forward_loss(model, input_ids, targets)
    loss.backward()
    ref_ce = manual_ce(logits.detach(), targets)
    assert abs(loss.item() - ref_ce.item()) < 1e-5, (loss.item(), ref_ce.item())
    # HF's own loss shifts labels inside: with labels=input_ids it covers the
    # first T-1 positions of our targets.
    with torch.no_grad():
        hf_loss = model(input_ids=input_ids, labels=input_ids).loss
    ce_t1 = manual_ce(logits.detach()[:, :-1], targets[:, :-1])
    assert abs(hf_loss.item() - ce_t1.item()) < 1e-5, (hf_loss.item(), ce_t1.item())
    ref = {
        "input_ids": input_ids.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.detach().float().contiguous(),
        "loss": loss.detach().float().reshape(1),
    }
    gsq = 0.0
    for k, p in params:
        assert p.grad is not None, k
        g = p.grad.detach().float().contiguous()
        assert g.shape == st[k].shape
        ref["grad." + k] = g
        gsq += float(g.double().pow(2).sum())
    print(f"  max|logit|={logits.abs().max().item():.4f} loss={loss.item():.6f} "
          f"(ln V={math.log(V):.4f}) total grad norm={math.sqrt(gsq):.6f}")
    for k, p in params:
        print(f"    |grad.{k}| = {ref['grad.' + k].norm().item():.6g}")

    # Reload from disk: identical logits.
    re = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager",
                                              dtype=torch.float32)
    re.eval()
    assert type(re) is type(model), type(re)
    with torch.no_grad():
        logits2 = re(input_ids=input_ids).logits
    assert torch.equal(logits2, logits.detach()), \
        (logits2 - logits.detach()).abs().max().item()
    print("  reload: logits identical")

    # AdamW on the same batch, starting from the reloaded (saved) weights.
    rparams = stored_names(re, set(st_keys))
    for k, p in rparams:
        assert torch.equal(p.detach(), st[k]), k
    plist = [p for _, p in rparams]
    decay = [p for p in plist if p.dim() >= 2]
    no_decay = [p for p in plist if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS)
    losses, norms = [], []
    for it in range(ADAMW_FORWARDS):
        _, l = forward_loss(re, input_ids, targets)
        losses.append(l.item())
        if it < ADAMW_FORWARDS - 1:
            l.backward()
            n = torch.nn.utils.clip_grad_norm_(plist, CLIP)
            norms.append(n.item())
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert losses[0] == loss.item(), (losses[0], loss.item())
    print("  adamw losses:", [f"{x:.6f}" for x in losses])
    print("  adamw grad norms:", [f"{x:.6f}" for x in norms])
    ref["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    ref["adamw_gradnorms"] = torch.tensor(norms, dtype=torch.float32)

    meta = {
        "case": name,
        "B": str(B),
        "T": str(T),
        "seed": str(SEED),
        "lr": repr(LR),
        "betas": f"{BETAS[0]!r},{BETAS[1]!r}",
        "eps": repr(EPS),
        "weight_decay": repr(WEIGHT_DECAY),
        "weight_decay_rule": "dim>=2",
        "clip": repr(CLIP),
        "adamw_forwards": str(ADAMW_FORWARDS),
        "loss": "mean cross-entropy over B*T",
        **versions,
    }
    ref_path = os.path.join(d, "reference.safetensors")
    save_file(ref, ref_path, metadata=meta)
    canonicalize_metadata_order(ref_path)
    with safe_open(ref_path, "pt") as f:
        assert f.metadata() == meta
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), ref[k]), k
    with open(os.path.join(d, "config.json")) as f:
        print("  config.json keys:", sorted(json.load(f).keys()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
        "models"))
    ap.add_argument("--cases", default=None,
                    help="comma-separated case names (default: all)")
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    versions = {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
    }
    print("versions:", versions)
    wanted = args.cases.split(",") if args.cases else [n for n, _ in CASES]
    unknown = set(wanted) - {n for n, _ in CASES}
    assert not unknown, f"unknown cases {sorted(unknown)}"
    for name, make in CASES:
        if name in wanted:
            gen_case(name, make, out, versions)
    write_config_keys(os.path.join(out, "hf_config_keys.json"))
    total = 0
    for root, _, files in os.walk(out):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"total fixture size under {out}: {total} bytes ({total / 1024:.1f} KiB)")
    assert total < 3 * 1024 * 1024


if __name__ == "__main__":
    main()
