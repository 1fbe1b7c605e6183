#!/usr/bin/env bash
# dev/device_kit.sh — prepares, on a machine with package access, what dev/gpu_check.sh needs on a GPU machine
# that reaches no package registry: .devkit/ gets the Debian packages of the libraries train_gpu links (jansson,
# PCRE2) and NCCL's header; with a path to a checkout of llm.c (a git folder, bare or not), .peers/llm.c/ gets
# its sources for the side-by-side benchmark. Both folders are ignored by git: llm.c's code is never part of
# this repository. gpu_check.sh unpacks .devkit/ where the system lacks a library.
#   bash dev/device_kit.sh [LLMC_GIT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .devkit && mkdir -p .devkit
(cd .devkit && apt-get download libjansson4 libjansson-dev libpcre2-8-0 libpcre2-dev 2>/dev/null)
for h in /usr/include/nccl.h /usr/local/cuda/include/nccl.h /usr/local/include/nccl.h; do
  if [ -f "$h" ]; then cp "$h" .devkit/nccl.h; break; fi
done
[ -f .devkit/nccl.h ] || echo "device_kit: no nccl.h here; gpu_check.sh will look for one on the GPU machine"
# the bundled corpus as .bin/.idx (prepro needs zlib, zstd and snappy, which the GPU machine may lack)
make -s prepro/prepro
./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph --tokenizer data/gpt2_tokenizer.json \
  --output-prefix .devkit/tinyshakespeare --append-eod > /dev/null
if [ $# -ge 1 ]; then
  rm -rf .peers/llm.c && mkdir -p .peers/llm.c
  git -C "$1" archive HEAD Makefile train_gpt2.cu llmc | tar -x -C .peers/llm.c
  echo "llm.c $(git -C "$1" rev-parse --short HEAD) -> .peers/llm.c"
fi
du -sh .devkit .peers 2>/dev/null || true
