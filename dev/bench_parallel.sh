#!/usr/bin/env bash
# What tensor and pipeline parallelism cost on the CPU ranks, side by side in one run: GPT-2 124M (or MODEL), the
# same global batch of B x T x M tokens on 2 processes of one thread each (the machine's 2 cores), as
#   data parallelism      -n 2, B/2 rows each, M accumulation steps
#   tensor parallelism    -n 2 --tp 2 (and with --sp), the same B rows on both
#   pipeline parallelism  -n 2 --pp 2, M micro-batches of B rows through 2 stages (1F1B)
#   one rank              -n 1 --threads 2, M micro-batches of B rows (LAYOUTS="one pp" M=8: the pipeline vs one rank)
# The layouts take turns, REPS rounds; each figure is the median over rounds of each run's median step time (the
# first step left out); the pipeline's measured bubble is the median of its step lines.
#   bash dev/bench_parallel.sh        MODEL=gpt2-124m B=4 T=64 M=4 STEPS=4 REPS=3 LAYOUTS="dp tp tpsp pp" to change
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-gpt2-124m}; B=${B:-4}; T=${T:-64}; M=${M:-4}; steps=${STEPS:-4}; reps=${REPS:-3}
make -s train prepro/prepro
mkdir -p out
[ -f out/tinyshakespeare_text_document.idx ] || ./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph \
    --tokenizer data/gpt2_tokenizer.json --output-prefix out/tinyshakespeare --append-eod > /dev/null
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
log=out/bench_parallel.log; : > "$log"
run() {   # name flags... -> "median ms of steps 2.. [median bubble]"
    local name=$1; shift
    ./train --data out/tinyshakespeare_text_document --model "$model" --seq-len "$T" --grad-accum "$M" --steps "$steps" \
        --eval-every 0 --threads 1 --lr 1e-4 "$@" > out/bench_parallel_run.log 2>&1
    cat out/bench_parallel_run.log >> "$log"
    local ms bub
    ms=$(grep -E '^step +[0-9]+/' out/bench_parallel_run.log | awk -F'|' 'NR > 1 { sub(/ ms/, "", $5); print $5 + 0 }' | median)
    bub=$(grep -E '^pipeline bubble' out/bench_parallel_run.log | awk 'NR > 1 { print $4 }' | median 2>/dev/null || true)
    echo "$ms ${bub:-}"
}
declare -A ms bubble
all=("dp:-n 2 --batch-size $((B / 2))" "tp:-n 2 --tp 2 --batch-size $B" "tpsp:-n 2 --tp 2 --sp --batch-size $B"
     "pp:-n 2 --pp 2 --batch-size $B" "one:-n 1 --batch-size $B --threads 2")
layouts=()   # LAYOUTS: which of dp tp tpsp pp one, the first the one the others are divided by
for want in ${LAYOUTS:-dp tp tpsp pp}; do for l in "${all[@]}"; do [ "${l%%:*}" = "$want" ] && layouts+=("$l"); done; done
for r in $(seq "$reps"); do
    for l in "${layouts[@]}"; do
        name=${l%%:*}; out=$(run "$name" ${l#*:}); set -- $out
        ms[$name]="${ms[$name]:-} $1"; [ $# -gt 1 ] && bubble[$name]="${bubble[$name]:-} $2"
        echo "round $r $name: $1 ms/step${2:+, bubble $2} (load $(cut -d' ' -f1 /proc/loadavg))"
    done
done
first=${layouts[0]%%:*}; base=$(echo ${ms[$first]} | tr ' ' '\n' | median)
echo
echo "model $model, global batch $B x $T x $M micro-batches, 2 processes x 1 thread (one: 1 process x 2 threads), $reps rounds; $(nproc) cores:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
printf "| layout | ms/step (median) | rounds | vs \`%s\` |\n|---|---|---|---|\n" "${layouts[0]#*:}"
for l in "${layouts[@]}"; do
    name=${l%%:*}; m=$(echo ${ms[$name]} | tr ' ' '\n' | median)
    printf "| \`%s\` | %s | %s | %.2fx |\n" "${l#*:}" "$m" "${ms[$name]# }" "$(echo "$m $base" | awk '{print $1 / $2}')"
done
[ -n "${bubble[pp]:-}" ] && echo "pipeline bubble, measured (median of steps 2.. per round): ${bubble[pp]# }; theory (P-1)/(M+P-1) = $(awk -v m="$M" 'BEGIN { printf "%.3f", 1 / (m + 1) }')"
