#!/usr/bin/env bash
# The cost of tensor parallelism on the CPU ranks, side by side in one run: GPT-2 124M (or MODEL), the same
# global batch of B x T tokens on 2 processes, as data parallelism (-n 2, B/2 rows each) and as tensor
# parallelism (-n 2 --tp 2, the same B rows on both; and with --sp). The layouts take turns, REPS rounds; each
# figure is the median over rounds of each run's median step time (the first step left out). Each process
# gets one thread (the machine's 2 cores).
#   bash dev/bench_tp.sh        MODEL=gpt2-124m B=4 T=64 STEPS=5 REPS=3 to change
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-gpt2-124m}; B=${B:-4}; T=${T:-64}; steps=${STEPS:-5}; reps=${REPS:-3}
make -s train prepro/prepro
[ -f out/tinyshakespeare_text_document.idx ] || ./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph \
    --tokenizer data/gpt2_tokenizer.json --output-prefix out/tinyshakespeare --append-eod > /dev/null
median() { sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
run() {   # flags... -> the median ms of steps 2..
    ./train --data out/tinyshakespeare_text_document --model "$model" --seq-len "$T" --steps "$steps" --eval-every 0 \
        --threads 1 --lr 1e-4 "$@" | grep -E '^step +[0-9]+/' | awk -F'|' 'NR > 1 { sub(/ ms/, "", $5); print $5 + 0 }' | median
}
declare -A all
layouts=("dp:-n 2 --batch-size $((B / 2))" "tp:-n 2 --tp 2 --batch-size $B" "tpsp:-n 2 --tp 2 --sp --batch-size $B")
for r in $(seq "$reps"); do
    for l in "${layouts[@]}"; do
        name=${l%%:*}; ms=$(run ${l#*:}); all[$name]="${all[$name]:-} $ms"
        echo "round $r $name: $ms ms/step"
    done
done
dp=$(echo ${all[dp]} | tr ' ' '\n' | median)
echo "model $model, global batch $B x $T, 2 processes x 1 thread, $reps rounds; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
printf "| layout | ms/step (median) | rounds | vs -n 2 |\n|---|---|---|---|\n"
for l in "${layouts[@]}"; do
    name=${l%%:*}; m=$(echo ${all[$name]} | tr ' ' '\n' | median)
    printf "| \`%s\` | %s | %s | %.2fx |\n" "${l#*:}" "$m" "${all[$name]# }" "$(echo "$m $dp" | awk '{print $1 / $2}')"
done
