#!/usr/bin/env python3
"""Writes the small seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

Run from the repository root: python3 tests/fuzz/make_seeds.py. Standard library only. The shared
tokenizers (Qwen2, Mistral, Llama-3) are used when present for cut-down copies; every seed stays small.
"""
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
SHARED = [os.environ.get("LLMTRAIN_SHARED", ""), os.path.join(ROOT, "shared"), os.path.join(ROOT, "..", "shared"), "/work/shared"]


def shared(rel):
    for base in SHARED:
        if base and os.path.exists(os.path.join(base, rel)):
            return os.path.join(base, rel)
    return None


def put(target, data, name=None):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------------------------- texts

def text_seeds():
    """Texts from the tokenizer fixtures (at most 300 bytes each) and a few hand-made edge cases."""
    seeds = []
    fx = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
    for f in ["gpt2_cases.txt", "qwen2_cases.txt", "mistral_cases.txt", "gpt2_added_cases.txt", "llama3_cases.txt"]:
        if not os.path.exists(os.path.join(fx, f)):
            continue
        for line in open(os.path.join(fx, f), encoding="utf-8"):
            if line.startswith("text "):
                b = bytes.fromhex(line[5:].strip())
                if 0 < len(b) <= 300:
                    seeds.append(b)
    if os.path.exists(os.path.join(fx, "stress.jsonl")):
        for line in open(os.path.join(fx, "stress.jsonl"), encoding="utf-8"):
            seeds.append(json.loads(line)["text"].encode()[:300])
    seeds += [b"", b"\xff", b"ab\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"<|endoftext|>hi<|endoftext|>",
              b"<s> </s><unk>", b"\x00\x00a\x00", b"  \n\n\t\t  x  ", b"12345678901234567890",
              "e\u0301\u0300 \uac00\u11a8 \u1100\u1161".encode()]
    seen = set()
    for s in seeds:
        if s in seen:
            continue
        seen.add(s)
        put("fuzz_tokenizer", s)
        if len(seen) >= 150:
            break


# ---------------------------------------------------------------------------------------------- tokenizer.json

def cut_down(tok, keep_ids, max_merges=80):
    """A copy of a tokenizer.json with the vocab ids < keep_ids and the merges that stay inside it."""
    t = json.loads(json.dumps(tok))
    m = t["model"]
    vocab = {k: v for k, v in m["vocab"].items() if v < keep_ids}
    for a in t.get("added_tokens") or []:
        if a["content"] in m["vocab"]:
            vocab[a["content"]] = m["vocab"][a["content"]]
    merges = []
    for mg in m["merges"]:
        a, b = mg.split(" ", 1) if isinstance(mg, str) else mg
        prefix = m.get("continuing_subword_prefix") or ""
        if a in vocab and b in vocab and (a + b[len(prefix):]) in vocab:
            merges.append(mg)
            if len(merges) >= max_merges:
                break
    m["vocab"] = vocab
    m["merges"] = merges
    t["added_tokens"] = (t.get("added_tokens") or [])[:4]
    return t


def tiny(**over):
    """The shape of tests/fixtures/prepro/tiny_tokenizer.json with parts replaced."""
    t = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 7, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, " ": 4, "1": 5, "abc": 6, "<|endoftext|>": 7},
                  "merges": [["a", "b"], ["ab", "c"]]},
    }
    for k, v in over.items():
        if k.startswith("model_"):
            t["model"][k[6:]] = v
        else:
            t[k] = v
    return t


def byte_vocab():
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    cps, n = {}, 0
    for b in range(256):
        if b in keep:
            cps[b] = b
        else:
            cps[b] = 256 + n
            n += 1
    return {chr(cps[b]): i for i, b in enumerate(range(256))}


def tokenizer_json_seeds():
    texts = ["", "Hello world, it's 2024!", "ab abc  1 22\n\nc", "caf\u00e9 e\u0301 \u4f60\u597d \U0001F600", "<|endoftext|>ab<s>"]
    seeds = []
    fixture = os.path.join(ROOT, "tests", "fixtures", "prepro", "tiny_tokenizer.json")
    if os.path.exists(fixture):
        seeds.append(json.load(open(fixture, encoding="utf-8")))
    bv = byte_vocab()
    bv.update({"\u0120a": 256, "ab": 257, "<|endoftext|>": 258})
    seeds += [
        tiny(),
        tiny(normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Strip", "strip_left": True, "strip_right": True}]}),
        tiny(normalizer={"type": "NFD"}),
        tiny(normalizer={"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                             {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}),
        tiny(normalizer={"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}),
        tiny(pre_tokenizer={"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False}),
        tiny(pre_tokenizer={"type": "Split", "pattern": {"String": "b"}, "behavior": "MergedWithPrevious", "invert": False}),
        tiny(pre_tokenizer={"type": "Split", "pattern": {"Regex": "a|c"}, "behavior": "MergedWithNext", "invert": True}),
        tiny(pre_tokenizer={"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Contiguous", "invert": False}),
        tiny(pre_tokenizer={"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                                  {"type": "Split", "pattern": {"Regex": "$"}, "behavior": "Isolated", "invert": False}]}),
        tiny(pre_tokenizer={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
             decoder={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}),
        tiny(model_unk_token="c", model_fuse_unk=True,
             post_processor={"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "a", "type_id": 0}},
                                                                      {"Sequence": {"id": "A", "type_id": 0}},
                                                                      {"SpecialToken": {"id": "b", "type_id": 0}}],
                             "special_tokens": {"a": {"id": "a", "ids": [0], "tokens": ["a"]}}}),
        tiny(post_processor={"type": "RobertaProcessing", "sep": ["b", 1], "cls": ["a", 0]}),
        tiny(model_continuing_subword_prefix="##", model_end_of_word_suffix="</w>",
             model_vocab={"a": 0, "##b": 1, "ab": 2, "c</w>": 3, "##c</w>": 4, "abc</w>": 5, "[UNK]": 6},
             model_merges=["a ##b", "ab ##c</w>"], model_unk_token="[UNK]", added_tokens=[]),
        tiny(model_byte_fallback=True, model_vocab=dict({"<unk>": 0, "a": 1, "\u2581": 2},
                                                        **{"<0x%02X>" % b: 3 + b for b in range(256)}),
             model_merges=[], model_unk_token="<unk>",
             decoder={"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                       {"type": "ByteFallback"}, {"type": "Fuse"},
                                                       {"type": "Strip", "content": " ", "start": 1, "stop": 1}]}),
        tiny(model_ignore_merges=True),
        tiny(added_tokens=[{"id": 8, "content": "ab", "single_word": True, "lstrip": True, "rstrip": True, "normalized": True, "special": False},
                           {"id": 9, "content": " c", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
             normalizer={"type": "Strip", "strip_left": True, "strip_right": False}),
        tiny(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
             decoder={"type": "ByteLevel"}, model_vocab=bv, model_merges=[["a", "b"], ["\u0120", "a"]]),
        tiny(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
             decoder={"type": "ByteLevel"}, model_vocab=bv, model_merges=["a b"]),
    ]
    for rel, keep in [("data/gpt2_tokenizer.json", 300), ("data/tokenizers/qwen2/tokenizer.json", 300),
                      ("data/tokenizers/llama2/mistral-7b-v0.1/tokenizer.json", 320), ("data/tokenizers/llama3/tokenizer.json", 300)]:
        p = os.path.join(ROOT, rel) if rel.startswith("data/gpt2") else shared(rel)
        if p:
            seeds.append(cut_down(json.load(open(p, encoding="utf-8")), keep))
    for i, s in enumerate(seeds):
        body = json.dumps(s, ensure_ascii=False, separators=(",", ":")).encode()
        put("fuzz_tokenizer_json", body)
        put("fuzz_tokenizer_json", body + b"\0" + texts[i % len(texts)].encode())


# ---------------------------------------------------------------------------------------------- .idx/.bin

def idx_bytes(seq_lens, doc_idx, code=8, ptrs=None):
    item = 2 if code == 8 else 4
    out = b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, code, len(seq_lens), len(doc_idx))
    out += b"".join(struct.pack("<i", n) for n in seq_lens)
    if ptrs is None:
        ptrs, p = [], 0
        for n in seq_lens:
            ptrs.append(p)
            p += n * item
    out += b"".join(struct.pack("<q", p) for p in ptrs)
    out += b"".join(struct.pack("<q", d) for d in doc_idx)
    return out


def idx_seed(flags, T, idx, binary, a=0, b=255):
    """The input layout of fuzz_idx.c: flags, T, first document, document count, u16 length of the .idx,
    the .idx, the .bin."""
    return bytes([flags, T, a, b]) + struct.pack("<H", len(idx)) + idx + binary


def idx_seeds():
    toks = lambda n, item=2: b"".join(struct.pack("<H" if item == 2 else "<i", (7 * i + 3) % 50257) for i in range(n))
    put("fuzz_idx", idx_seed(0, 4, idx_bytes([5, 0, 7, 1, 12], [0, 1, 2, 3, 4, 5]), toks(25)))
    put("fuzz_idx", idx_seed(1, 3, idx_bytes([5, 0, 7, 1, 12], [0, 2, 5]), toks(25)))
    put("fuzz_idx", idx_seed(2, 7, idx_bytes([3, 3, 3], [0, 3], code=4), toks(9, 4)))
    put("fuzz_idx", idx_seed(3, 1, idx_bytes([1], [0, 1]), toks(1)))
    put("fuzz_idx", idx_seed(0, 2, idx_bytes([], [0]), b""))
    put("fuzz_idx", idx_seed(4, 5, idx_bytes([10, 20], [0, 1, 2]), toks(29)))                  # .bin one token short
    put("fuzz_idx", idx_seed(0, 5, idx_bytes([4, 4], [0, 1, 2], ptrs=[0, 16]), toks(8)))       # pointers with a gap
    put("fuzz_idx", idx_seed(0, 5, idx_bytes([4, 4], [0, 2, 1, 2]), toks(8)))                  # documents out of order
    put("fuzz_idx", idx_seed(5, 9, idx_bytes([6] * 8, list(range(9))), toks(48)))
    put("fuzz_idx", idx_seed(4, 2, idx_bytes([3, 0, 4, 2, 5, 1], [0, 1, 2, 3, 4, 5, 6]), toks(15), a=2, b=3))


# ---------------------------------------------------------------------------------------------- safetensors

def st_bytes(tensors, metadata=None, pad_header=0):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode() + b" " * pad_header
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    f32 = lambda *v: struct.pack("<%df" % len(v), *v)
    put("fuzz_safetensors", st_bytes([("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6))], {"format": "pt"}))
    put("fuzz_safetensors", st_bytes([("a", "BF16", [4], struct.pack("<4H", 0x3F80, 0xC000, 0x7F80, 0x0001)),
                                      ("b", "F16", [2, 2], struct.pack("<4H", 0x3C00, 0x0001, 0x7C00, 0xFC01)),
                                      ("c", "F32", [], f32(7.5))], pad_header=5))
    put("fuzz_safetensors", st_bytes([("i", "I32", [3], struct.pack("<3i", 1, 2, 3)), ("l", "I64", [1], struct.pack("<q", 9)),
                                      ("u", "U8", [0], b""), ("e", "F32", [0, 4], b"")]))
    put("fuzz_safetensors", st_bytes([]))
    put("fuzz_safetensors", st_bytes([("x", "F64", [1], struct.pack("<d", 1.0))]))
    put("fuzz_safetensors", st_bytes([("w", "F32", [1, 1, 1, 1, 1, 1, 1, 2], f32(1, 2))]))
    fixture = os.path.join(ROOT, "tests", "fixtures", "interop", "gpt2", "hf_logits.safetensors")
    if os.path.exists(fixture) and os.path.getsize(fixture) < 20000:
        put("fuzz_safetensors", open(fixture, "rb").read())


# ---------------------------------------------------------------------------------------------- config.json

def config_seeds():
    d = os.path.join(ROOT, "tests", "fixtures")
    for sub in ["configs", "models/gpt2", "models/llama", "models/qwen2", "models/qwen3",
                "interop/gpt2", "interop/llama", "interop/qwen2", "interop/qwen3"]:
        p = os.path.join(d, sub)
        if not os.path.isdir(p):
            continue
        for f in sorted(os.listdir(p)):
            if f.endswith(".json"):
                put("fuzz_config", open(os.path.join(p, f), "rb").read())
    put("fuzz_config", json.dumps({"model_type": "llama", "vocab_size": 128256, "hidden_size": 64, "intermediate_size": 128,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                                   "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                                   "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                   "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": [128001, 128008]}))
    put("fuzz_config", json.dumps({"model_type": "qwen3", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 96,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                   "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
                                   "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "hidden_act": "silu"}))
    put("fuzz_config", json.dumps({"model_type": "gpt2", "vocab_size": 50257, "n_layer": 2, "n_embd": 64, "n_head": 4,
                                   "activation_function": "gelu_pytorch_tanh"}))


if __name__ == "__main__":
    text_seeds()
    tokenizer_json_seeds()
    idx_seeds()
    safetensors_seeds()
    config_seeds()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        print("%-22s %3d seeds, %6d bytes" % (t, len(files), sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)))
    sys.exit(0)
