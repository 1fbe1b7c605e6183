#!/usr/bin/env python3
"""Runs prepro on a .jsonl corpus and checks every document's ids against HF tokenizers.

    pip install tokenizers numpy
    python3 dev/check_prepro_vs_hf.py --tokenizer T.json [--input docs.jsonl] [--no-bos] [--special-as-text]

Without --input the corpus is generated: one document per assigned Unicode code point X (about
282,000), "aXa 1X1 X xXX'Xs", which puts every character next to letters, digits, spaces and a
contraction, so each regex class (\\p{L}, \\p{N}, \\s, (?i:'s)) and each normalizer sees it.
Prints the number of documents whose ids differ and the first few of them.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata

import numpy as np
from tokenizers import Tokenizer

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--input")
    ap.add_argument("--no-bos", action="store_true")
    ap.add_argument("--special-as-text", action="store_true")
    ap.add_argument("--workers", default="2")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    corpus = args.input
    if not corpus:
        corpus = os.path.join(tmp, "codepoints.jsonl")
        with open(corpus, "w", encoding="utf-8") as f:
            for cp in range(0x20, 0x110000):
                ch = chr(cp)
                if 0xD800 <= cp <= 0xDFFF or unicodedata.category(ch) == "Cn":
                    continue
                text = "a" + ch + "a 1" + ch + "1 " + ch + " x" + ch + ch + "'" + ch + "s"
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    prefix = os.path.join(tmp, "out")
    cmd = [os.path.join(ROOT, "prepro", "prepro"), "--input", corpus, "--tokenizer", args.tokenizer,
           "--output-prefix", prefix, "--workers", args.workers]
    if args.no_bos:
        cmd.append("--no-bos")
    if args.special_as_text:
        cmd.append("--special-as-text")
    subprocess.run(cmd, check=True)

    tok = Tokenizer.from_file(args.tokenizer)
    tok.encode_special_tokens = args.special_as_text
    docs = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8") if line.strip()]
    docs = [d for d in docs if d]   # prepro skips empty documents
    enc = tok.encode_batch(docs, add_special_tokens=not args.no_bos)

    idx = open(prefix + "_text_document.idx", "rb").read()
    code, nseq = idx[17], int.from_bytes(idx[18:26], "little")
    lens = np.frombuffer(idx, dtype=np.int32, count=nseq, offset=34)
    ids = np.fromfile(prefix + "_text_document.bin", dtype=np.uint16 if code == 8 else np.int32)
    bad, off = [], 0
    if nseq != len(docs):
        sys.exit("prepro wrote %d sequences for %d documents" % (nseq, len(docs)))
    for i, e in enumerate(enc):
        got = ids[off:off + lens[i]].tolist()
        off += lens[i]
        if got != e.ids:
            bad.append(i)
    print("%d documents, %d differ" % (len(docs), len(bad)))
    for i in bad[:10]:
        print("  %r" % docs[i][:80])
    shutil.rmtree(tmp)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
