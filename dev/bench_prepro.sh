#!/usr/bin/env bash
# Tokenizer throughput, one thread each, side by side: prepro (C) against tiktoken and HF tokenizers.
#
#   bash dev/bench_prepro.sh [SHARED_DATA_DIR]   (default ../shared/data; needs python3 with tokenizers
#                                                and tiktoken: pip install tokenizers tiktoken)
#   REPS=5 bash dev/bench_prepro.sh              repetitions (default 3); ONLY=qwen2: one family's rows
#
# Rows: GPT-2, Qwen2 and Llama-3 on English (TinyStories, WikiText-2 test; one document a line) and
# Chinese (the classics jsonl, one chapter a document). For each row the three tokenizers run in turn,
# REPS times (interleaved, so a change of machine load hits all three alike); the table gives medians
# of MB per CPU second (process CPU time, not wall time: on a shared machine the wall time mostly measures
# the other processes):
#   prepro     prepro --workers 1 --no-bos: MB / the CPU time its summary line gives (all its threads,
#              from after the tokenizer load: reading the input, tokenizing, writing the .bin/.idx)
#              (MB: the documents' UTF-8 text, for all three)
#   tiktoken   Encoding.encode_ordinary per document (built from the local files: no download; it applies
#              no NFC, which Qwen2's normalizer does: the counts would show if that mattered here)
#   HF         tokenizers Tokenizer.encode_batch(add_special_tokens=False), RAYON_NUM_THREADS=1
# then prepro / tiktoken, the token totals (all three must be equal) and the load times (prepro's own
# summary; HF Tokenizer.from_file; tiktoken's Encoding built from vocab/merges or tokenizer.model).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
make -s prepro/prepro
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "load: $(uptime | sed 's/.*load average/load average/')"
RAYON_NUM_THREADS=1 REPS=${REPS:-3} ONLY=${ONLY:-} python3 - "$SHARED" "$OUT" <<'EOF'
import json, os, re, statistics, subprocess, sys, time
shared, out = sys.argv[1:3]
reps, only = int(os.environ["REPS"]), os.environ["ONLY"]
from tokenizers import Tokenizer
import tiktoken
from tiktoken.load import load_tiktoken_bpe

FAMS = [("gpt2", "data/gpt2_tokenizer.json"),
        ("qwen2", os.path.join(shared, "tokenizers/qwen2/tokenizer.json")),
        ("llama3", os.path.join(shared, "tokenizers/llama3/tokenizer.json"))]
CORPORA = [("TinyStories", os.path.join(shared, "corpora/tinystories/tinystories_train_head_lowercase.txt"), "line"),
           ("WikiText-2", os.path.join(shared, "corpora/wikitext-2/test.txt"), "line"),
           ("zh classics", os.path.join(shared, "corpora/zh/zh_classics.jsonl"), "jsonl")]
PATS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}

def tiktoken_encoding(fam, tok_path):
    if fam == "llama3":
        ranks = load_tiktoken_bpe(os.path.join(os.path.dirname(tok_path), "tokenizer.model"))
    else:   # byte-level vocab -> byte ranks (rank = id: both vocabularies are in merge order)
        vocab = json.load(open(tok_path, encoding="utf-8"))["model"]["vocab"]
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
        cs, k = bs[:], 0
        for b in range(256):
            if b not in bs: bs.append(b); cs.append(256 + k); k += 1
        dec = {chr(c): b for b, c in zip(bs, cs)}
        ranks = {bytes(dec[ch] for ch in s): i for s, i in vocab.items() if all(ch in dec for ch in s)}
        ranks.pop(b"<|endoftext|>", None)
    return tiktoken.Encoding(fam + "-local", pat_str=PATS[fam], mergeable_ranks=ranks, special_tokens={})

def documents(path, mode):
    text = open(path, encoding="utf-8").read()
    if mode == "jsonl":
        return [json.loads(l)["text"] for l in text.split("\n") if l.strip()]
    docs = [l[:-1] if l.endswith("\r") else l for l in text.split("\n")]
    return [d for d in docs if d.strip(" \t\r\f\v")]   # prepro --txt-mode line skips blank lines

def prepro(tok_path, corpus, mode):
    """Runs prepro; returns its tokens, the CPU seconds after the tokenizer load (all its threads), the load."""
    args = ["./prepro/prepro", "--input", corpus, "--tokenizer", tok_path, "--output-prefix", out + "/b",
            "--workers", "1", "--no-bos"] + (["--txt-mode", "line"] if mode == "line" else [])
    err = subprocess.run(args, capture_output=True, text=True, check=True).stderr
    m = re.search(r"done: \d+ documents, (\d+) tokens.* ([0-9.]+) CPU s; tokenizer load ([0-9.]+) s", err)
    return int(m[1]), float(m[2]), float(m[3])

rows = []
print("%-7s %-12s %6s | %8s %8s %8s | %8s %8s | %s | %s" % ("family", "corpus", "MB", "prepro", "tiktoken", "HF",
      "/tiktok", "/HF", "tokens (prepro = tiktoken = HF?)", "load s: prepro HF tiktoken"), flush=True)
for fam, tok_path in FAMS:
    if only and fam != only: continue
    t0 = time.perf_counter(); hf = Tokenizer.from_file(tok_path); hf_load = time.perf_counter() - t0
    t0 = time.perf_counter(); tk = tiktoken_encoding(fam, tok_path); tk_load = time.perf_counter() - t0
    for cname, corpus, mode in CORPORA:
        docs = documents(corpus, mode)
        mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
        r_pp, r_tk, r_hf, loads = [], [], [], []
        for _ in range(reps):
            n_pp, cpu, load = prepro(tok_path, corpus, mode); loads.append(load); r_pp.append(mb / cpu)
            t0 = time.process_time(); n_tk = sum(len(tk.encode_ordinary(d)) for d in docs)
            r_tk.append(mb / (time.process_time() - t0))
            t0 = time.process_time(); n_hf = sum(len(e.ids) for e in hf.encode_batch(docs, add_special_tokens=False))
            r_hf.append(mb / (time.process_time() - t0))
        pp, tkm, hfm = statistics.median(r_pp), statistics.median(r_tk), statistics.median(r_hf)
        same = "yes" if n_pp == n_tk == n_hf else "NO: tiktoken %d, HF %d" % (n_tk, n_hf)
        print("%-7s %-12s %6.2f | %8.1f %8.1f %8.1f | %7.2fx %7.2fx | %d (%s) | %.2f %.2f %.2f" % (
            fam, cname, mb, pp, tkm, hfm, pp / tkm, pp / hfm, n_pp, same, statistics.median(loads), hf_load, tk_load),
            flush=True)
print("(MB per CPU second of UTF-8 input, one thread each, medians of %d interleaved runs; %s)" % (reps,
      open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": ")))
EOF
echo "load: $(uptime | sed 's/.*load average/load average/')"
