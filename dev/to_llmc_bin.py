#!/usr/bin/env python3
"""dev/to_llmc_bin.py — our Megatron .bin/.idx tokens (uint16) as llm.c's token file, for the side-by-side GPU
benchmark against llm.c's train_gpt2cu: a header of 256 int32 (20240520, version 1, token count) then the tokens
as uint16, in the order of the .bin file.

  python3 dev/to_llmc_bin.py out/tinyshakespeare_text_document out/llmc_train.bin
"""
import os
import sys

import numpy as np


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: to_llmc_bin.py PREFIX OUT.bin")
    prefix, out = sys.argv[1], sys.argv[2]
    with open(prefix + ".idx", "rb") as f:
        head = f.read(18)
    if head[:9] != b"MMIDIDX\x00\x00":
        sys.exit(f"{prefix}.idx: not an MMIDIDX index")
    dtype_code = head[17]
    if dtype_code != 8:
        sys.exit(f"{prefix}.idx: dtype code {dtype_code}; llm.c reads uint16 tokens (code 8) only")
    tokens = np.fromfile(prefix + ".bin", dtype=np.uint16)
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(out + ".tmp", "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
    os.replace(out + ".tmp", out)
    print(f"{out}: {len(tokens)} tokens")


if __name__ == "__main__":
    main()
