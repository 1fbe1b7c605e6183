#!/usr/bin/env bash
# Tokenizer throughput: prepro (C) against HF tokenizers and tiktoken on the same documents.
#
#   bash dev/bench_prepro.sh [SHARED_DATA_DIR]      (default ../shared/data; needs python3 with
#                                                   tokenizers and tiktoken: pip install tokenizers tiktoken)
#   ONLY=qwen2 bash dev/bench_prepro.sh             only the rows of one tokenizer family
#
# For each (tokenizer, corpus) row:
#   prepro 1w / Nw   prepro --workers 1 / --workers $(nproc): input bytes / time after the tokenizer
#                    is loaded (reading, tokenizing and writing the .bin/.idx all count)
#   HF 1t / Nt       tokenizers encode_batch on the in-memory documents, RAYON_NUM_THREADS=1 / all
#   tiktoken 1t      tiktoken encode_ordinary per document on one thread (byte-level families only:
#                    the encodings are built from the local files, no download; no NFC for Qwen2)
# Token totals are compared: prepro must equal HF (tiktoken differs only where special-token text occurs).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
make -s prepro/prepro
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
NPROC=$(nproc)

ROWS=(
  "gpt2|data/gpt2_tokenizer.json|$SHARED/corpora/tinystories/tinystories_train_head_lowercase.txt|line"
  "gpt2|data/gpt2_tokenizer.json|$SHARED/corpora/wikitext-2/test.txt|paragraph"
  "gpt2|data/gpt2_tokenizer.json|data/tinyshakespeare.txt|paragraph"
  "llama3|$SHARED/tokenizers/llama3/tokenizer.json|$SHARED/corpora/tinystories/tinystories_train_head_lowercase.txt|line"
  "qwen2|$SHARED/tokenizers/qwen2/tokenizer.json|$SHARED/corpora/zh/zh_classics.jsonl|jsonl"
  "mistral|$SHARED/tokenizers/llama2/mistral-7b-v0.1/tokenizer.json|$SHARED/corpora/tinystories/tinystories_train_head_lowercase.txt|line"
)

printf "%-8s %-36s %7s %9s %9s %9s %9s %11s %s\n" tokenizer corpus MB "prepro1w" "prepro${NPROC}w" "HF 1t" "HF ${NPROC}t" "tiktoken1t" "tokens (prepro = HF?)"
for row in "${ROWS[@]}"; do
  IFS='|' read -r fam tok corpus mode <<< "$row"
  [ -n "${ONLY:-}" ] && [ "$ONLY" != "$fam" ] && continue
  if [ ! -f "$tok" ] || [ ! -f "$corpus" ]; then echo "skip $fam $(basename "$corpus"): file absent"; continue; fi
  args=(--input "$corpus" --tokenizer "$tok" --output-prefix "$OUT/b")
  [ "$mode" != jsonl ] && args+=(--txt-mode "$mode")
  rate() { # the MB/s of prepro's summary line
    ./prepro/prepro "${args[@]}" --workers "$1" 2>&1 | sed -n 's/.*(\([0-9.]*\) MB\/s.*/\1/p'
  }
  r1=$(rate 1); rn=$(rate "$NPROC")
  ptok=$(./prepro/prepro "${args[@]}" --workers "$NPROC" 2>&1 | sed -n 's/.* documents, \([0-9]*\) tokens.*/\1/p')
  py=$(python3 - "$fam" "$tok" "$corpus" "$mode" <<'EOF'
import json, os, sys, time
fam, tok_path, corpus, mode = sys.argv[1:5]
raw = open(corpus, "rb").read()
text = raw.decode("utf-8")
if mode == "line":
    docs = [l[:-1] if l.endswith("\r") else l for l in text.split("\n")]
    docs = [d for d in docs if d.strip(" \t\r\f\v")]
elif mode == "paragraph":
    docs, cur = [], []
    for line in text.split("\n"):
        if line.strip(" \t\r\f\v") == "":
            if cur: docs.append("\n".join(cur)); cur = []
        else: cur.append(line)
    if cur: docs.append("\n".join(cur))
    docs = [d[:-1] if d.endswith("\r") else d for d in docs]
else:
    docs = [json.loads(l)["text"] for l in text.split("\n") if l.strip()]
mb = len(raw) / 1e6
def hf(threads):
    import subprocess
    code = ("import os,sys,time,json\nfrom tokenizers import Tokenizer\n"
            "docs=json.load(sys.stdin)\nt=Tokenizer.from_file(sys.argv[1])\n"
            "t0=time.time(); n=sum(len(e.ids) for e in t.encode_batch(docs)); dt=time.time()-t0\n"
            "print(n, dt)")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code, tok_path], input=json.dumps(docs), env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1])
n1, t1 = hf(1)
nn, tn = hf(os.cpu_count())
tk = "-"
try:
    import tiktoken, base64
    enc = None
    if fam in ("gpt2", "qwen2"):
        # byte-level vocab -> tiktoken ranks (rank = id; both vocabularies are rank ordered)
        vocab = json.load(open(tok_path))["model"]["vocab"]
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
        cs = bs[:]; k = 0
        for b in range(256):
            if b not in bs: bs.append(b); cs.append(256 + k); k += 1
        dec = {chr(c): b for b, c in zip(bs, cs)}
        ranks = {bytes(dec[ch] for ch in s): i for s, i in vocab.items() if all(ch in dec for ch in s)}
        if fam == "gpt2":
            ranks.pop(b"<|endoftext|>", None)
            pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
            special = {"<|endoftext|>": 50256}
        else:
            pat = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            special = {}
        enc = tiktoken.Encoding(fam + "-local", pat_str=pat, mergeable_ranks=ranks, special_tokens=special)
    elif fam == "llama3":
        model = os.path.join(os.path.dirname(tok_path), "tokenizer.model")
        from tiktoken.load import load_tiktoken_bpe
        ranks = load_tiktoken_bpe(model)
        pat = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        enc = tiktoken.Encoding("llama3-local", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
    if enc is not None:
        t0 = time.time(); nt = sum(len(enc.encode_ordinary(d)) for d in docs); dt = time.time() - t0
        tk = "%.1f" % (mb / dt)
except ImportError:
    pass
print("%.2f %.1f %.1f %s %d" % (mb, mb / t1, mb / tn, tk, n1))
EOF
)
  read -r mb hf1 hfn tk hftok <<< "$py"
  same=$([ "$ptok" = "$hftok" ] && echo "yes" || echo "NO: HF $hftok")
  printf "%-8s %-36s %7s %9s %9s %9s %9s %11s %s\n" "$fam" "$(basename "$corpus") ($mode)" "$mb" "$r1" "$rn" "$hf1" "$hfn" "$tk" "$ptok ($same)"
done
echo "(MB/s; ${NPROC} CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
