#!/usr/bin/env bash
# Data parallel on the CPU (train -n N: forked processes, shared-memory collectives, ZeRO-1 sharded AdamW):
# 1, 2 and 4 ranks on the same global batch give the same losses (to the printed digits) and checkpoints
# equal to fp32 sum-order tolerance; so does gradient accumulation (--batch-size 4 --grad-accum 2 against
# --batch-size 8 --grad-accum 1); a rank that dies stops the others with an error.
set -u
cd "$(dirname "$0")/.."
. tests/lib/common.sh
shakespeare_data 60000
common=(--data "$tmp/shk_text_document" --model tests/fixtures/configs/train_small.json --seq-len 16 --lr 1e-2
        --warmup-steps 2 --steps 6 --grad-accum 2 --split 90,10,0 --eval-every 0 --seed 5 --threads 1)
$BIN_DIR/train "${common[@]}" --batch-size 4 --out "$tmp/r1" > "$tmp/r1.log" 2>&1 || { cat "$tmp/r1.log"; bad "1 rank"; }
$BIN_DIR/train "${common[@]}" --batch-size 2 -n 2 --out "$tmp/r2" > "$tmp/r2.log" 2>&1 || { cat "$tmp/r2.log"; bad "2 ranks"; }
$BIN_DIR/train "${common[@]}" --batch-size 1 -n 4 --out "$tmp/r4" > "$tmp/r4.log" 2>&1 || { cat "$tmp/r4.log"; bad "4 ranks"; }
$BIN_DIR/train "${common[@]}" --batch-size 8 --grad-accum 1 --out "$tmp/a1" > "$tmp/a1.log" 2>&1 || { cat "$tmp/a1.log"; bad "no accumulation"; }
losses() { grep -E '^step +[0-9]+/' "$1" | awk -F'|' '{print $2, $4}'; }
# the runs compared must learn (equal runs that update nothing, e.g. with empty shards, would also agree)
first_last=$(losses "$tmp/r1.log" | awk '{ if (NR == 1) f = $2; l = $2 } END { print f, l }')
awk -v fl="$first_last" 'BEGIN { split(fl, x, " "); exit !(x[2] + 0.3 < x[1] + 0) }' && ok "1 rank learns: loss $first_last (step 1, step 6)" \
    || bad "1 rank does not learn: loss $first_last (step 1, step 6)"
for r in r2:"2 ranks" r4:"4 ranks" a1:"batch 8 without accumulation"; do
    n=${r%%:*} what=${r#*:}
    if diff <(losses "$tmp/r1.log") <(losses "$tmp/$n.log") > /dev/null; then ok "1 rank == $what: losses and grad norms"
    else bad "1 rank vs $what"; paste <(losses "$tmp/r1.log") <(losses "$tmp/$n.log"); fi
    for f in model train_state; do
        d=$($BIN_DIR/tests/bin/st_maxdiff "$tmp/r1/step_000006/$f.safetensors" "$tmp/$n/step_000006/$f.safetensors")
        [ -n "$d" ] && awk -v d="$d" 'BEGIN { exit !(d + 0 <= 1e-4) }' && ok "$f.safetensors 1 rank vs $what: max diff $d" || bad "$f 1 rank vs $what: max diff $d"
    done
done
# a rank killed mid-run: the others stop with an error instead of waiting forever
kill_a_rank $BIN_DIR/train "${common[@]}" --steps 100000 --batch-size 2 -n 2
exit $fail
