#!/usr/bin/env python3
"""Checks that Megatron's own reader accepts what ./prepro/prepro writes, and that the tokens are right.

Runs prepro on a small .jsonl (strings, a list of sentences, empty texts, special-token strings, Unicode)
and on data/tinyshakespeare.txt with --txt-mode paragraph, opens each output with
megatron.core.datasets.indexed_dataset.IndexedDataset and checks:
  - the dtype (uint16 for GPT-2: Megatron's DType.optimal_dtype(vocab) rule);
  - the number of documents and of sequences;
  - every sequence == HF `tokenizers` encode(text).ids (+ the EOD id on a document's last sentence), with
    Megatron's tools/preprocess_data.py rules: one sequence per sentence (a string is one sentence),
    sentences that encode to no ids are dropped, --append-eod appends to the last sentence.
Documents whose text is empty are skipped by prepro (README, "empty documents are skipped"), where
Megatron writes a zero-length document, or for a tokenizer that adds a BOS, a [BOS, EOD] sequence.
Those are listed as NOTE lines and do not fail the check.

With the shared Qwen2 and Mistral tokenizers present (shared/data/tokenizers/...), the .jsonl is also run
through them (int32 tokens; a BOS added by the post-processor).

Usage: python3 dev/check_megatron_reader.py [--keep] [--gpt2-only]
Needs: pip install megatron-core tokenizers (megatron-core pulls in torch; no GPU is needed).
When megatron-core cannot be imported whole, only its indexed_dataset module is loaded; when that fails
too, a reader written from docs/formats.md sec. 1 is used and the output says so on every line
that matters: that run does NOT show that Megatron's reader accepts the files.
Prints one line per check and a closing PASS/FAIL line; exits 0 on PASS.
"""
import argparse
import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import warnings

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GPT2 = os.path.join(ROOT, "data", "gpt2_tokenizer.json")
SHAKESPEARE = os.path.join(ROOT, "data", "tinyshakespeare.txt")


def shared(rel):
    for base in [os.environ.get("LLMTRAIN_SHARED", ""), os.path.join(ROOT, "shared"), os.path.join(ROOT, "..", "shared"),
                 "/work/shared"]:
        if base and os.path.exists(os.path.join(base, rel)):
            return os.path.join(base, rel)
    return None


# ------------------------------------------------------------------------------------------------ the reader

class FallbackIndexedDataset:
    """MMIDIDX reader written from docs/formats.md sec. 1 (used only when megatron-core is missing)."""
    DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64", 7: "float32", 8: "uint16"}

    def __init__(self, prefix):
        import numpy as np
        with open(prefix + ".idx", "rb") as f:
            idx = f.read()
        assert idx[:9] == b"MMIDIDX\x00\x00", "bad magic"
        version, code, S, D = struct.unpack_from("<QBQQ", idx, 9)
        assert version == 1, "version %d" % version
        self.dtype = np.dtype(self.DTYPES[code])
        self.sequence_lengths = np.frombuffer(idx, np.int32, S, 34)
        self.sequence_pointers = np.frombuffer(idx, np.int64, S, 34 + 4 * S)
        self.document_indices = np.frombuffer(idx, np.int64, D, 34 + 12 * S)
        assert self.sequence_lengths.shape[0] == self.document_indices[-1] == S
        self.bin = np.memmap(prefix + ".bin", mode="r", dtype=np.uint8)

    def __len__(self):
        return len(self.sequence_lengths)

    def __getitem__(self, i):
        import numpy as np
        n, p = int(self.sequence_lengths[i]), int(self.sequence_pointers[i])
        return np.frombuffer(self.bin, self.dtype, n, p)


def load_reader():
    """Returns (IndexedDataset class, description). Tries megatron.core whole, then only its module."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    errors = []
    quiet = io.StringIO()
    try:
        stderr, sys.stderr = sys.stderr, quiet   # megatron/torch print import-time warnings
        try:
            from megatron.core.datasets.indexed_dataset import IndexedDataset
        finally:
            sys.stderr = stderr
        import megatron.core
        return IndexedDataset, "megatron-core %s: megatron.core.datasets.indexed_dataset.IndexedDataset" % getattr(
            megatron.core, "__version__", "?")
    except Exception as e:  # noqa: BLE001 - any import failure falls through to the next way
        errors.append("import megatron.core: %s: %s" % (type(e).__name__, e))
    # only the module file, with empty parent packages so that megatron/core/__init__.py does not run
    try:
        path = None
        for base in sys.path:
            cand = os.path.join(base or ".", "megatron", "core", "datasets", "indexed_dataset.py")
            if os.path.exists(cand):
                path = cand
                break
        if not path:
            raise ImportError("megatron/core/datasets/indexed_dataset.py not found on sys.path")
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(path))))
        for name in [n for n in sys.modules if n == "megatron" or n.startswith("megatron.")]:
            del sys.modules[name]   # what the failed import left half made
        for name in ["megatron", "megatron.core", "megatron.core.datasets"]:
            m = types.ModuleType(name)
            m.__path__ = [os.path.join(pkg_root, *name.split("."))]
            sys.modules[name] = m
        spec = importlib.util.spec_from_file_location("megatron.core.datasets.indexed_dataset", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        stderr, sys.stderr = sys.stderr, quiet
        try:
            spec.loader.exec_module(mod)
        finally:
            sys.stderr = stderr
        return mod.IndexedDataset, "megatron-core module file %s (package __init__ skipped)" % path
    except Exception as e:  # noqa: BLE001
        errors.append("load indexed_dataset.py alone: %s: %s" % (type(e).__name__, e))
    for e in errors:
        print("reader: " + e)
    return FallbackIndexedDataset, ("FALLBACK reader written from docs/formats.md sec. 1, NOT Megatron's code "
                                    "(pip install megatron-core to check against Megatron itself)")


# ------------------------------------------------------------------------------------------------ prepro

def ensure_prepro():
    exe = os.path.join(ROOT, "prepro", "prepro")
    srcs = [os.path.join(ROOT, "prepro", f) for f in os.listdir(os.path.join(ROOT, "prepro")) if f.endswith((".c", ".h"))]
    if os.path.exists(exe) and all(os.path.getmtime(s) <= os.path.getmtime(exe) for s in srcs):
        return exe
    r = subprocess.run(["make", "-C", ROOT, "all"], capture_output=True, text=True)
    if r.returncode == 0 and os.path.exists(exe):
        return exe
    print("prepro: `make all` failed (%s); building prepro alone with gcc" % (r.stderr.strip().splitlines() or ["?"])[-1])
    files = ["prepro/prepro.c", "prepro/tokenizer.c"]
    libs = ["-ljansson", "-lpcre2-8", "-lm"]
    if os.path.exists(os.path.join(ROOT, "prepro", "parquet.c")):
        files.append("prepro/parquet.c")
        libs += ["-lz", "-lzstd", "-lsnappy"]
    r = subprocess.run(["gcc", "-O3", "-std=c11", "-fopenmp", "-D_GNU_SOURCE", "-o", "prepro/prepro"] + files + libs,
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit("prepro: cannot build")
    return exe


def run_prepro(exe, inputs, tokenizer, prefix, extra):
    cmd = [exe, "--input"] + inputs + ["--tokenizer", tokenizer, "--output-prefix", prefix, "--append-eod"] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("prepro failed (%d): %s" % (r.returncode, r.stderr.strip()[-2000:]))
    return (r.stderr.strip().splitlines() or [""])[-1]


# ------------------------------------------------------------------------------------------------ expectations

def paragraphs(text):
    """prepro's --txt-mode paragraph: runs of non-blank lines (blank: only spaces, tabs, CR, FF, VT),
    joined by '\\n', a CR at the very end dropped."""
    docs, cur = [], []
    for line in text.split("\n"):
        if line.strip(" \t\r\f\v") == "":
            if cur:
                docs.append("\n".join(cur))
                cur = []
            continue
        cur.append(line)
    if cur:
        docs.append("\n".join(cur))
    return [d[:-1] if d.endswith("\r") else d for d in docs]


def megatron_doc(tok, value, eod):
    """tools/preprocess_data.py for one document: the list of sequences (sentences with ids)."""
    sentences = value if isinstance(value, list) else [value]
    seqs = [tok.encode(s).ids for s in sentences]
    seqs = [s for s in seqs if len(s) > 0]
    if seqs:
        seqs[-1] = seqs[-1] + [eod]
    return seqs


# ------------------------------------------------------------------------------------------------ checks

class Report:
    def __init__(self):
        self.fails, self.passes, self.notes = 0, 0, 0

    def check(self, ok, msg):
        print(("ok    " if ok else "FAIL  ") + msg)
        if ok:
            self.passes += 1
        else:
            self.fails += 1
        return ok

    def note(self, msg):
        print("NOTE  " + msg)
        self.notes += 1


def compare(rep, Reader, prefix, name, tok, values, eod, want_dtype):
    """values: the document texts in input order (a string, or a list of sentences)."""
    import numpy as np
    try:
        ds = Reader(prefix)
    except Exception as e:  # noqa: BLE001
        rep.check(False, "%s: the reader refuses %s: %s: %s" % (name, prefix, type(e).__name__, e))
        return
    rep.check(True, "%s: the reader opens %s.{bin,idx}" % (name, os.path.basename(prefix)))
    dtype = np.dtype(ds.index.dtype) if hasattr(ds, "index") else ds.dtype
    rep.check(dtype == np.dtype(want_dtype), "%s: dtype %s (expected %s)" % (name, dtype, want_dtype))
    doc_idx = [int(x) for x in ds.document_indices]
    expected, skipped = [], 0
    for i, v in enumerate(values):
        seqs = megatron_doc(tok, v, eod)
        text_empty = all(s == "" for s in (v if isinstance(v, list) else [v]))
        if text_empty:
            skipped += 1
            rep.note("%s: document %d has empty text: prepro skips it; Megatron writes %s" % (
                name, i, "a zero-length document" if not seqs else "the sequences %s" % seqs))
            continue
        if isinstance(v, list) and any(s == "" for s in v):
            kept = [tok.encode(s).ids for s in v if s != ""]
            if len(kept) != len(seqs):
                rep.note("%s: document %d: prepro drops its empty sentences; Megatron keeps those that encode "
                         "to ids (a BOS): %s" % (name, i, seqs))
                seqs = [s for s in kept if s]
                if seqs:
                    seqs[-1] = seqs[-1] + [eod]
        expected.append(seqs)
    nseq = sum(len(d) for d in expected)
    rep.check(len(doc_idx) - 1 == len(expected), "%s: %d documents (expected %d; %d empty skipped)" % (
        name, len(doc_idx) - 1, len(expected), skipped))
    rep.check(len(ds) == nseq, "%s: %d sequences (expected %d)" % (name, len(ds), nseq))
    if len(doc_idx) - 1 != len(expected) or len(ds) != nseq:
        return
    bad = 0
    for d, seqs in enumerate(expected):
        if doc_idx[d + 1] - doc_idx[d] != len(seqs):
            bad += 1
            if bad <= 5:
                print("      document %d: %d sequences, expected %d" % (d, doc_idx[d + 1] - doc_idx[d], len(seqs)))
            continue
        for k, want in enumerate(seqs):
            got = [int(x) for x in ds[doc_idx[d] + k]]
            if got != want:
                bad += 1
                if bad <= 5:
                    print("      document %d sequence %d: got %s..., expected %s..." % (d, k, got[:12], want[:12]))
    rep.check(bad == 0, "%s: every sequence == HF encode(text) + eod %d (%d mismatches)" % (name, eod, bad))


JSONL_DOCS = [
    "Hello world",
    "",
    "   ",
    "The quick brown fox jumps over the lazy dog.\nSecond line,\ttabs and  double  spaces.",
    "caf\u00e9 na\u00efve e\u0301 \u00c5ngstr\u00f6m \u4f60\u597d\u4e16\u754c \ud55c\uad6d\uc5b4 \U0001F600\U0001F44D\U0001F3FD",
    "a<|endoftext|>b <|endoftext|>",
    "numbers 1234567890 3.14159 and 'quotes' it's don't",
    ["First sentence.", "Second sentence.", "", "Last one"],
    ["", ""],
    "trailing newline\n",
    "\u0000nul\u0000 and control \u0007 chars",
    "x" * 3000,
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    ap.add_argument("--gpt2-only", action="store_true", help="skip the Qwen2 and Mistral runs")
    args = ap.parse_args()

    Reader, how = load_reader()
    print("reader: " + how)
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("FAIL  the HF tokenizers package is missing (pip install tokenizers)")
        print("FAIL: check_megatron_reader")
        return 1
    exe = ensure_prepro()
    rep = Report()
    tmp = tempfile.mkdtemp(prefix="megatron_check_")
    try:
        jsonl = os.path.join(tmp, "docs.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            for d in JSONL_DOCS:
                f.write(json.dumps({"text": d}) + "\n")
        runs = [("gpt2", GPT2, "<|endoftext|>")]
        if not args.gpt2_only:
            for name, rel, eod in [("qwen2", "data/tokenizers/qwen2/tokenizer.json", "<|endoftext|>"),
                                   ("mistral", "data/tokenizers/llama2/mistral-7b-v0.1/tokenizer.json", "</s>")]:
                p = shared(rel)
                if p:
                    runs.append((name, p, eod))
                else:
                    print("skip  %s: %s not found" % (name, rel))
        for name, path, eod_name in runs:
            tok = Tokenizer.from_file(path)
            eod = tok.token_to_id(eod_name)
            vocab = tok.get_vocab_size(with_added_tokens=True)
            want = "uint16" if vocab < 65500 else "int32"
            if name == "gpt2":
                rep.check(want == "uint16", "gpt2: vocab %d -> uint16 tokens" % vocab)
            prefix = os.path.join(tmp, name)
            try:
                line = run_prepro(exe, [jsonl], path, prefix, ["--workers", "2"])
                print("      " + line)
            except RuntimeError as e:
                rep.check(False, "%s: %s" % (name, e))
                continue
            compare(rep, Reader, prefix + "_text_document", name + " jsonl", tok, JSONL_DOCS, eod, want)

        tok = Tokenizer.from_file(GPT2)
        prefix = os.path.join(tmp, "shakespeare")
        try:
            line = run_prepro(exe, [SHAKESPEARE], GPT2, prefix, ["--txt-mode", "paragraph"])
            print("      " + line)
            with open(SHAKESPEARE, encoding="utf-8") as f:
                paras = paragraphs(f.read())
            compare(rep, Reader, prefix + "_text_document", "gpt2 tinyshakespeare paragraphs", tok, paras,
                    tok.token_to_id("<|endoftext|>"), "uint16")
        except RuntimeError as e:
            rep.check(False, "tinyshakespeare: %s" % e)
    finally:
        if args.keep:
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    fallback = Reader is FallbackIndexedDataset
    verdict = "PASS" if rep.fails == 0 else "FAIL"
    print("%d passed, %d failed, %d notes" % (rep.passes, rep.fails, rep.notes))
    print("%s: check_megatron_reader (%s)" % (verdict, "FALLBACK reader, not Megatron's" if fallback else how))
    return 0 if rep.fails == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
