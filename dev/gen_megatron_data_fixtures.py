#!/usr/bin/env python3
"""Megatron-core's view of small datasets, as fixtures for tests/test_data.c (make test needs no Python).

Writes tests/fixtures/megatron/:
  single.{bin,idx}   200 documents, one sequence each (uint16, EOD 0 at the end of each document)
  multi.{bin,idx}    120 documents of 1-4 sequences each (as prepro writes list-valued JSON fields)
  third.{bin,idx}    80 documents, one sequence each (the third member of the blend)
  split.txt          "SPEC N b0 e0 b1 e1 b2 e2": the sequence ranges of Megatron's GPT dataset splits
                     (int(round(bookend * N)) on the split matrix; an empty range where Megatron builds none)
  masks.txt          per window: "tokens ...", "loss ...", "pos ...", "start ...": Megatron's
                     _get_ltor_masks_and_position_ids with eod 0, eod_mask_loss, reset_position_ids and
                     reset_attention_mask; start[t] is the first key the dense mask lets row t see
  numpy.txt          numpy.random.RandomState outputs: raw 32-bit words, shuffle, permutation, 64-bit bounded
  windows_*.txt      a header "# data ... seed S seq_len T split SPEC samples N", then per training sample k
                     of Megatron's dataset (k < 1000): "k dataset dataset_sample shuffled_sample tok0 .. tokT"
                     (dataset/dataset_sample from BlendedDataset, 0/k for a single GPTDataset;
                     shuffled_sample = the GPTDataset's shuffle_index[dataset_sample])

Checked with megatron-core 0.16.1, numpy 2.4, torch 2.x on CPU.
Usage: python3 dev/gen_megatron_data_fixtures.py [--out tests/fixtures/megatron]
"""
import argparse
import os
import tempfile

import numpy
import torch

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix, parse_and_normalize_split)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, _get_ltor_masks_and_position_ids
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

EOD = 0
VOCAB = 1000
WINDOWS = 1000


def write_dataset(prefix, ndocs, max_seqs, seed):
    """Documents of 1..max_seqs sequences of 1..30 tokens; each document's last sequence ends in EOD."""
    rng = numpy.random.default_rng(seed)
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for _ in range(ndocs):
        nseq = int(rng.integers(1, max_seqs + 1))
        for s in range(nseq):
            n = int(rng.integers(1, 31))
            toks = rng.integers(1, VOCAB, size=n)
            if s == nseq - 1:
                toks[-1] = EOD
            b.add_item(torch.from_numpy(toks.astype(numpy.int64)))
        b.end_document()
    b.finalize(prefix + ".idx")


def write_split(path):
    specs = ["949,50,1", "98,2,0", "90,10,0", "0.9,0.1,0", "1,1,1", "99,1", "80,10,10", "2,1,1", "7,2,1", "1,0,1"]
    sizes = [1, 2, 3, 5, 7, 10, 11, 13, 20, 25, 33, 50, 99, 100, 101, 125, 333, 1000, 12345, 999999]
    with open(path, "w") as f:
        for spec in specs:
            matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(spec))
            for n in sizes:
                row = [spec, str(n)]
                prev = 0
                for bookend in matrix:
                    if bookend is None:
                        row += [str(prev), str(prev)]
                    else:
                        b, e = int(round(bookend[0] * float(n))), int(round(bookend[1] * float(n)))
                        row += [str(b), str(e)]
                        prev = e
                f.write(" ".join(row) + "\n")


def write_masks(path):
    rng = numpy.random.default_rng(7)
    windows = [[5, 6, 7, 0, 8, 9, 0, 10, 11], [0, 1, 2, 3], [1, 2, 3, 4], [0, 0, 4, 0, 5, 6], [3, 0]]
    for _ in range(6):
        w = rng.integers(1, 6, size=int(rng.integers(2, 24)))
        w[rng.random(len(w)) < 0.25] = EOD
        windows.append([int(x) for x in w])
    with open(path, "w") as f:
        for w in windows:
            tokens = torch.tensor(w, dtype=torch.long)
            att, loss, pos = _get_ltor_masks_and_position_ids(tokens, EOD, True, True, True, True)
            allowed = ~att[0]   # Megatron's mask is True where attention is NOT allowed
            starts = []
            for t in range(len(w)):
                cols = torch.nonzero(allowed[t]).flatten().tolist()
                assert cols == list(range(cols[0], t + 1)), "rows see a contiguous run of keys"
                starts.append(cols[0])
            f.write("tokens " + " ".join(map(str, w)) + "\n")
            f.write("loss " + " ".join(str(int(x)) for x in loss.tolist()) + "\n")
            f.write("pos " + " ".join(map(str, pos.tolist())) + "\n")
            f.write("start " + " ".join(map(str, starts)) + "\n")


def write_numpy(path):
    with open(path, "w") as f:
        for seed in [0, 1, 1234, 4294967295]:
            rs = numpy.random.RandomState(seed)
            raw = rs.randint(0, 2**32, size=8, dtype=numpy.uint64)   # range 2^32 - 1: one 32-bit word each
            f.write(f"raw {seed} " + " ".join(map(str, raw.tolist())) + "\n")
            for n in [1, 2, 10, 300]:
                a = numpy.arange(n, dtype=numpy.int32)
                numpy.random.RandomState(seed).shuffle(a)
                f.write(f"shuffle {seed} {n} " + " ".join(map(str, a.tolist())) + "\n")
            p = numpy.random.RandomState(seed).permutation(37)
            f.write(f"permutation {seed} 37 " + " ".join(map(str, p.tolist())) + "\n")
            rs = numpy.random.RandomState(seed)
            big = 2**40 + 12345
            v = rs.randint(0, big + 1, size=6, dtype=numpy.int64)  # masked rejection on 64-bit words, as shuffle beyond 2^32
            f.write(f"bounded64 {seed} {big} " + " ".join(map(str, v.tolist())) + "\n")


class Tok:
    """The part of a tokenizer the GPT dataset reads."""
    def __init__(self):
        self.eod, self.pad, self.vocab_size = EOD, -1, VOCAB
        self.unique_identifiers = {"class": "Tok", "eod": EOD, "vocab_size": VOCAB}


def megatron_windows(path, blend, seed, seq_len, split, samples):
    cfg = GPTDatasetConfig(random_seed=seed, sequence_length=seq_len, blend=blend, split=split,
                           reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                           tokenizer=Tok(), path_to_cache=tempfile.mkdtemp(), mmap_bin_files=True)
    train = BlendedMegatronDatasetBuilder(GPTDataset, [samples, 16, 16], lambda: True, cfg).build()[0]
    prefixes, weights = blend
    with open(path, "w") as f:
        f.write(f"# data {' '.join(os.path.basename(p) for p in prefixes)} weights "
                f"{' '.join(map(str, weights)) if weights else '-'} seed {seed} seq_len {seq_len} split {split} "
                f"samples {samples}\n")
        for k in range(WINDOWS):
            if isinstance(train, GPTDataset):
                d, j, ds = 0, k, train
            else:
                d, j = int(train.dataset_index[k]), int(train.dataset_sample_index[k])
                ds = train.datasets[d]
            text, _ = ds._query_document_sample_shuffle_indices(j)
            assert len(text) == seq_len + 1
            f.write(f"{k} {d} {j} {int(ds.shuffle_index[j])} " + " ".join(map(str, text.tolist())) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/megatron")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    # the blended dataset asks for the rank once it caches its indices: a group of one
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29531", rank=0, world_size=1)
    single, multi, third = (os.path.join(out, n) for n in ("single", "multi", "third"))
    write_dataset(single, 200, 1, 1)
    write_dataset(multi, 120, 4, 2)
    write_dataset(third, 80, 1, 3)
    write_split(os.path.join(out, "split.txt"))
    write_masks(os.path.join(out, "masks.txt"))
    write_numpy(os.path.join(out, "numpy.txt"))
    # one dataset over several epochs with a separate last epoch; the multi-sequence one; a 3-way blend
    megatron_windows(os.path.join(out, "windows_single.txt"), ([single], None), 1234, 8, "90,8,2", 1000)
    megatron_windows(os.path.join(out, "windows_multi.txt"), ([multi], None), 7, 12, "80,10,10", 1000)
    megatron_windows(os.path.join(out, "windows_blend.txt"), ([single, multi, third], [0.5, 0.3, 0.2]), 42, 10,
                     "85,10,5", 1200)


if __name__ == "__main__":
    main()
