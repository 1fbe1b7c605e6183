#!/usr/bin/env bash
# CPU training speed: GPT-2 124M at B=4, T=64 on 2 threads (the configuration of llm.c's CPU trainer), and the
# default run's model (tiny-gpt2, B=8, T=64), side by side with PyTorch (fp32, same shapes and optimizer)
# when python3 can import torch and transformers. Prints one table; the numbers go into BENCHMARKS.md.
#   bash dev/bench_cpu.sh   (or: make bench)     STEPS=10 THREADS=2 to change
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-10}; threads=${THREADS:-2}
mkdir -p out
[ -f out/tinyshakespeare_text_document.idx ] || ./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph \
    --tokenizer data/gpt2_tokenizer.json --output-prefix out/tinyshakespeare --append-eod
row() {  # name, batch, seq, model
    # the first step warms the caches: report the mean of the others
    local ms; ms=$(./train --data out/tinyshakespeare_text_document --model "$4" --batch-size "$2" --seq-len "$3" \
        --steps "$steps" --eval-every 0 --threads "$threads" --log-every 1 | awk '/^step +[0-9]+\// && $2+0 > 1 {s += $(NF-4); n++} END {printf "%.1f", s/n}')
    local torch_ms="-"
    if python3 -c "import torch, transformers" 2> /dev/null; then
        torch_ms=$(python3 dev/bench_torch_cpu.py --model "$4" --batch-size "$2" --seq-len "$3" --steps "$steps" --threads "$threads" 2> /dev/null | awk '{print $4}')
    fi
    printf "| %-28s | %2d | %4d | %8s | %8.0f | %13s |\n" "$1" "$2" "$3" "$ms" "$(awk -v b="$2" -v t="$3" -v ms="$ms" 'BEGIN {print b * t * 1000 / ms}')" "$torch_ms"
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $threads threads, $steps steps"
echo "| model                        |  B |    T | ms/step  | tokens/s | PyTorch ms/step |"
echo "|------------------------------|----|------|----------|----------|---------------|"
row "gpt2-124m (llm.c CPU config)" 4 64 gpt2-124m
row "tiny-gpt2 (the default run)" 8 64 tiny-gpt2
