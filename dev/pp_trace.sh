#!/usr/bin/env bash
# Draws one step of a --pp-trace as text: a row per rank (with -n 4 --pp 4, rank r is stage r), time left to right, each forward as its micro-batch's
# digit and each backward as the letter (a = 0, b = 1, ...), '.' where the rank computes nothing (waiting: the bubble).
#   bash dev/pp_trace.sh TRACE RANKS [STEP] [WIDTH]     (TRACE: the --pp-trace FILE; its files are TRACE.rankR)
# The files are Chrome trace events (JSON lines) too: chrome://tracing or ui.perfetto.dev open them as they are.
set -euo pipefail
trace=$1 ranks=$2 step=${3:-2} width=${4:-100}
for r in $(seq 0 $((ranks - 1))); do
    grep -E "\"step\":$step," "$trace.rank$r" | grep -E '"cat":"[FB]"' |
        sed -E 's/.*"cat":"([FB])".*"ts":([0-9.]+),"dur":([0-9.]+).*"micro":([0-9]+).*/'"$r"' \1 \2 \3 \4/'
done | awk -v ranks="$ranks" -v width="$width" '
    { r[NR] = $1; k[NR] = $2; t0[NR] = $3; t1[NR] = $3 + $4; mb[NR] = $5
      if (NR == 1 || $3 < lo) lo = $3; if ($3 + $4 > hi) hi = $3 + $4 }
    END {
        for (q = 0; q < ranks; q++) { line[q] = ""; for (x = 0; x < width; x++) line[q] = line[q] "." }
        for (i = 1; i <= NR; i++) {
            a = int((t0[i] - lo) / (hi - lo) * width); b = int((t1[i] - lo) / (hi - lo) * width); if (b <= a) b = a + 1
            c = k[i] == "F" ? mb[i] % 10 : substr("abcdefghijklmnopqrstuvwxyz", mb[i] % 26 + 1, 1)
            s = line[r[i]]
            for (x = a; x < b && x < width; x++) s = substr(s, 1, x) c substr(s, x + 2)
            line[r[i]] = s
        }
        printf "one step, %.1f ms, %d columns (digits: forwards of micro-batches 0-9, letters: their backwards)\n", (hi - lo) / 1000, width
        for (q = 0; q < ranks; q++) printf "rank %d |%s|\n", q, line[q]
    }'
