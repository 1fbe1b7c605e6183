#!/usr/bin/env bash
# Draws the loss curves of a run folder (its log.jsonl, written by train --out DIR) to DIR/loss.png.
#   bash dev/plot.sh out/run        (or: make plot RUN=out/run)
set -euo pipefail
run=${1:?usage: dev/plot.sh RUN_DIR}
log="$run/log.jsonl"
[ -f "$log" ] || { echo "plot: $log: no such file (run train with --out $run)" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# one "step value" line per record; the log is flat JSON, so a field is found by its key
field() { sed -n "s/.*\"step\":\([0-9]*\).*\"$1\":\([-0-9.eE+naif]*\).*/\1 \2/p" "$log"; }
field loss > "$tmp/train.dat"
field val_loss > "$tmp/val.dat"
[ -s "$tmp/train.dat" ] || { echo "plot: $log has no step records" >&2; exit 1; }
val_plot=""
[ -s "$tmp/val.dat" ] && val_plot=", '$tmp/val.dat' using 1:2 with linespoints lw 2 pt 7 title 'validation'"
gnuplot <<GP
set terminal pngcairo size 900,540 noenhanced
set output '$run/loss.png'
set title '$run'
set xlabel 'step'
set ylabel 'loss (nats/token)'
set grid
plot '$tmp/train.dat' using 1:2 with lines lw 1 title 'train' $val_plot
GP
echo "wrote $run/loss.png"
