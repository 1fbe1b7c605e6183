#!/usr/bin/env bash
# CPU training speed, side by side in one run: ours (train) vs PyTorch (dev/bench_torch_cpu.py: fp32, the same
# shapes, AdamW, clip 1.0, torch.set_num_threads equal; when python3 can import torch and transformers) vs
# llm.c's train_gpt2 CPU trainer (when its source is checked out in .peers/llm.c, which git ignores: built
# there from its source, run on a random-weight checkpoint of the same shape, dev/llmc_checkpoint.py, and our
# tokens, dev/to_llmc_bin.py), at 1 and 2 threads, on GPT-2 124M (B=4, T=64: llm.c's CPU configuration) and
# tiny-gpt2 (B=8, T=64: the default run). The programs take turns, REPS rounds; each figure is the median
# over rounds of each run's median step time (the first step, which warms up, left out). Then the matmul
# GFLOP/s against the measured FMA peak and the memory-bound layers (dev/bench_kernels.c).
#   bash dev/bench_cpu.sh   (or: make bench)     STEPS=5 REPS=3 THREADS="1 2" to change; TABLE_ONLY=1 prints the
#   table of the last run's out/bench/results.txt again (RESULTS=FILE: of another run's). The last column divides
#   each round's figures, whose runs were neighbours, so a load that came and went moves both.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-5}; reps=${REPS:-3}; threads_list=${THREADS:-1 2}
mkdir -p out/bench
res=${RESULTS:-out/bench/results.txt}; [ -n "${TABLE_ONLY:-}" ] || : > "$res"
make -s train prepro/prepro out/bench_kernels
[ -f out/tinyshakespeare_text_document.idx ] || ./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph \
    --tokenizer data/gpt2_tokenizer.json --output-prefix out/tinyshakespeare --append-eod > /dev/null
have_torch=0; python3 -c "import torch, transformers" 2> /dev/null && have_torch=1
have_llmc=0
if [ -f .peers/llm.c/train_gpt2.c ]; then   # one build per batch size (llm.c fixes B in main)
    for b in 4 8; do
        d=.peers/llmc-b$b; mkdir -p $d
        sed "s/int B = 4;/int B = $b;/" .peers/llm.c/train_gpt2.c > $d/train_gpt2.c
        [ -x $d/train_gpt2 ] && [ $d/train_gpt2 -nt $d/train_gpt2.c ] || \
            gcc -Ofast -march=native -fopenmp -DOMP -Wno-unused-result -I.peers/llm.c $d/train_gpt2.c -lm -o $d/train_gpt2
    done
    for m in gpt2-124m tiny-gpt2; do
        d=.peers/llmc-run-$m; mkdir -p $d/dev/data/tinyshakespeare
        [ -f $d/gpt2_124M.bin ] || python3 dev/llmc_checkpoint.py $m $d/gpt2_124M.bin
        for s in train val; do
            [ -f $d/dev/data/tinyshakespeare/tiny_shakespeare_$s.bin ] || \
                python3 dev/to_llmc_bin.py out/tinyshakespeare_text_document $d/dev/data/tinyshakespeare/tiny_shakespeare_$s.bin > /dev/null
        done
    done
    have_llmc=1
fi
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ours() {  # model B T threads -> median ms of steps 2..
    ./train --data out/tinyshakespeare_text_document --model "$1" --batch-size "$2" --seq-len "$3" --steps "$steps" \
        --eval-every 0 --threads "$4" --log-every 1 | awk '/^step +[0-9]+\// && $2+0 > 1 {print $(NF-4)}' | median
}
torch_ms() { python3 dev/bench_torch_cpu.py --model "$1" --batch-size "$2" --seq-len "$3" --steps "$steps" --threads "$4" 2> /dev/null | awk '{print $4}'; }
llmc_ms() {  # its step 0 comes after a validation pass; steps 1.. are timed; stopped once it has printed enough
    local log=out/bench/llmc.log pid
    (cd .peers/llmc-run-$1 && OMP_NUM_THREADS=$4 exec stdbuf -oL ../llmc-b$2/train_gpt2) > $log 2> /dev/null &
    pid=$!
    while kill -0 $pid 2> /dev/null && [ "$(grep -c '^step [0-9]*:' $log)" -lt "$steps" ]; do sleep 0.5; done
    kill $pid 2> /dev/null || true; wait $pid 2> /dev/null || true
    awk '/^step [0-9]+: / && $2 + 0 >= 1 {print $(NF-1) + 0}' $log | median
}
if [ -z "${TABLE_ONLY:-}" ]; then
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $steps steps per run, $reps rounds"
echo "load at start: $(uptime | sed 's/.*load average/load average/')"
for r in $(seq "$reps"); do
    for th in $threads_list; do
        for spec in "gpt2-124m 4 64" "tiny-gpt2 8 64"; do
            set -- $spec
            echo "$1 $th ours $(ours "$1" "$2" "$3" "$th")" >> "$res"
            if [ $have_torch = 1 ]; then echo "$1 $th torch $(torch_ms "$1" "$2" "$3" "$th")" >> "$res"; fi
            if [ $have_llmc = 1 ]; then echo "$1 $th llmc $(llmc_ms "$1" "$2" "$3" "$th")" >> "$res"; fi
        done
    done
    echo "round $r done ($(uptime | sed 's/.*load average/load average/'))"
done
fi
echo
echo "| model | threads | ours ms/step | PyTorch ms/step | llm.c ms/step | ours / PyTorch | ours / llm.c | ours / PyTorch, each round |"
echo "|---|---|---|---|---|---|---|---|"
for spec in "gpt2-124m 4 64" "tiny-gpt2 8 64"; do
    set -- $spec
    for th in $threads_list; do
        o=$(awk -v m="$1" -v t="$th" '$1 == m && $2 == t && $3 == "ours" && $4 != "-" {print $4}' "$res" | median)
        p=$(awk -v m="$1" -v t="$th" '$1 == m && $2 == t && $3 == "torch" && $4 != "-" {print $4}' "$res" | median)
        l=$(awk -v m="$1" -v t="$th" '$1 == m && $2 == t && $3 == "llmc" && $4 != "-" {print $4}' "$res" | median)
        ratio() { [ "$2" = "-" ] && echo "-" || awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
        # the ratio of each round's neighbouring runs (a load that comes and goes moves both), and their median
        rounds=$(awk -v m="$1" -v t="$th" '$1 == m && $2 == t && $4 != "-" {if ($3 == "ours") o = $4; if ($3 == "torch" && o != "") {printf "%.2f\n", o / $4; o = ""}}' "$res")
        each=$(echo "$rounds" | paste -sd, - | sed 's/,/, /g')
        mid=$(echo "$rounds" | median)
        echo "| $1 B=$2 T=$3 | $th | $o | $p | $l | $(ratio "$o" "$p") | $(ratio "$o" "$l") | ${each:--} (median ${mid}) |"
    done
done
echo "load at end: $(uptime | sed 's/.*load average/load average/')"
[ -n "${TABLE_ONLY:-}" ] && exit 0
echo
for th in $threads_list; do echo "kernels at $th thread(s):"; OMP_NUM_THREADS=$th out/bench_kernels; echo; done
