#!/usr/bin/env bash
# Checkpoints: N steps straight == k steps + save + resume + (N-k) steps, bit for bit; resume refuses a
# changed setting; SIGTERM saves and exits 0; SIGKILL at random moments during saves never leaves a
# `latest` that does not load; sharded checkpoints load.
set -u
cd "$(dirname "$0")/.."
. tests/lib/common.sh
shakespeare_data 60000
common=(--data "$tmp/shk_text_document" --model tests/fixtures/configs/train_small.json --batch-size 2 --seq-len 16
        --lr 1e-2 --warmup-steps 2 --decay-steps 12 --split 90,10,0 --eval-every 6 --eval-steps 2 --seed 11 --threads 2)

$BIN_DIR/train "${common[@]}" --steps 12 --out "$tmp/a" > "$tmp/a.log" 2>&1 || { cat "$tmp/a.log"; bad "straight run"; }
$BIN_DIR/train "${common[@]}" --steps 5 --out "$tmp/b" > "$tmp/b1.log" 2>&1 || bad "first half"
$BIN_DIR/train "${common[@]}" --steps 12 --out "$tmp/b" --resume > "$tmp/b2.log" 2>&1 || { cat "$tmp/b2.log"; bad "resumed half"; }
grep -q "resumed from $tmp/b/step_000005 at step 5" "$tmp/b2.log" && ok "resumed at step 5" || bad "no resume line"
strip() { grep -E '^step +[0-9]+/' "$1" | sed 's/| [0-9.]* ms.*//'; }
if diff <(strip "$tmp/a.log" | tail -n 7) <(strip "$tmp/b2.log") > /dev/null; then ok "steps 6-12 identical after resume"
else bad "losses differ after resume"; diff <(strip "$tmp/a.log" | tail -n 7) <(strip "$tmp/b2.log"); fi
for f in model.safetensors train_state.safetensors; do
    cmp -s "$tmp/a/step_000012/$f" "$tmp/b/step_000012/$f" && ok "$f bit-identical" || bad "$f differs"
done
[ "$(cat "$tmp/b/latest")" = "step_000012" ] && ok "latest -> step_000012" || bad "latest is $(cat "$tmp/b/latest")"

# a changed setting is refused, naming it
$BIN_DIR/train "${common[@]}" --steps 14 --seq-len 8 --out "$tmp/b" --resume > "$tmp/c.log" 2> "$tmp/c.err"
[ $? -ne 0 ] && grep -q "seq_len was 16" "$tmp/c.err" && ok "resume refuses a changed --seq-len: $(cat "$tmp/c.err")" || bad "changed seq-len accepted"

# --keep 2 leaves the newest two
$BIN_DIR/train "${common[@]}" --steps 6 --save-every 2 --keep 2 --out "$tmp/k" > /dev/null 2>&1
[ "$(ls -d "$tmp"/k/step_* | wc -l)" = 2 ] && [ -d "$tmp/k/step_000006" ] && [ -d "$tmp/k/step_000004" ] && ok "--keep 2" || bad "--keep 2: $(ls "$tmp/k")"

# sharded save loads back to the same loss
$BIN_DIR/train "${common[@]}" --steps 2 --max-shard-size 1 --out "$tmp/s" > /dev/null 2>&1
n=$(ls "$tmp"/s/step_000002/model-*-of-*.safetensors 2>/dev/null | wc -l)
[ "$n" -gt 1 ] && [ -f "$tmp/s/step_000002/model.safetensors.index.json" ] && ok "sharded into $n files + index" || bad "no shards"
v1=$($BIN_DIR/train "${common[@]}" --init-from "$tmp/s/step_000002" --steps 0 --eval-every 1 | awk '/val loss/ {print $6}')
v2=$($BIN_DIR/train "${common[@]}" --init-from "$tmp/a/step_000012" --steps 0 --eval-every 1 | awk '/val loss/ {print $6}')
v3=$(awk -F'"val_loss":' '/val_loss/ {v=$2} END {sub("}","",v); printf "%.4f", v}' "$tmp/a/log.jsonl")
[ -n "$v1" ] && ok "sharded checkpoint loads (val loss $v1)" || bad "sharded checkpoint does not load"
[ "$v2" = "$v3" ] && ok "--init-from a checkpoint reproduces its val loss $v2" || bad "--init-from val loss $v2 != $v3"

# SIGTERM: finish the step, save, exit 0
$BIN_DIR/train "${common[@]}" --steps 100000 --out "$tmp/t" > "$tmp/t.log" 2>&1 &
pid=$!; sleep 2; kill -TERM $pid; wait $pid; rc=$?
[ $rc -eq 0 ] && grep -q "stopped by signal" "$tmp/t.log" && [ -f "$tmp/t/latest" ] && ok "SIGTERM saved $(cat "$tmp/t/latest") and exited 0" || bad "SIGTERM (exit $rc)"

# SIGKILL at random moments while saving every step: every resume starts from a complete checkpoint
trials=0; good=0; mid_save=0; end=$((SECONDS + 40))
while [ $trials -lt 12 ] && [ $SECONDS -lt $end ]; do
    $BIN_DIR/train "${common[@]}" --steps 100000 --save-every 1 --keep 2 --out "$tmp/kill" > /dev/null 2>&1 &
    pid=$!
    sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"
    kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
    trials=$((trials + 1))
    ls -d "$tmp"/kill/.step_*.tmp > /dev/null 2>&1 && mid_save=$((mid_save + 1))   # killed while writing one
    if [ -f "$tmp/kill/latest" ]; then
        last=$(cat "$tmp/kill/latest"); step=$((10#${last#step_}))
        if $BIN_DIR/train "${common[@]}" --steps $((step + 1)) --out "$tmp/kill" --resume > "$tmp/r.log" 2>&1 &&
           grep -q "resumed from .*$last" "$tmp/r.log"; then good=$((good + 1)); else echo "     trial $trials: resume from $last failed:"; cat "$tmp/r.log"; fi
    else
        good=$((good + 1))   # killed before the first save: nothing to resume, and nothing half-written is named
    fi
done
[ $good -eq $trials ] && ok "SIGKILL during saves: $good/$trials resumes started from a complete checkpoint ($mid_save killed mid-save)" || bad "SIGKILL: $good/$trials"
exit $fail
