#!/usr/bin/env bash
# Checkpoints: N steps straight == k steps + save + resume + (N-k) steps, bit for bit; resume refuses a
# changed setting; SIGTERM saves and exits 0; SIGKILL at random moments during saves, and at each rename of a
# save that replaces a step, never leaves a `latest` that does not load; the next start deletes the killed
# save's temp folders and the log's replayed steps; one run at a time per folder; the LR schedule goes on after
# a resume; sharded checkpoints load; a model off its family's features saves, resumes and loads.
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

# a model off its family's features (LLaMA with LayerNorm, GELU, learned positions, MLP biases): its config.json
# says so in "llmtrain" and the save says transformers cannot load it; a resume without the flags takes the
# checkpoint's features and is exact; a flag against them is refused, and so is one that changes --init-from's weights
feat=(--norm layernorm --activation gelu --positions learned --mlp-bias 1 --eval-every 0)
$BIN_DIR/train "${common[@]}" "${feat[@]}" --steps 6 --out "$tmp/fa" > "$tmp/fa.log" 2>&1 || { cat "$tmp/fa.log"; bad "feature run"; }
$BIN_DIR/train "${common[@]}" "${feat[@]}" --steps 3 --out "$tmp/fb" > "$tmp/fb1.log" 2>&1 || bad "feature run, first half"
grep -q 'transformers cannot load this llama model as written (norm layernorm, activation gelu, positions learned' "$tmp/fb1.log" \
    && ok "the save says transformers cannot load the model as written" || bad "no save warning: $(grep saved "$tmp/fb1.log")"
c="$tmp/fb/step_000003/config.json"
grep -q '"llmtrain"' "$c" && grep -q '"norm": "layernorm"' "$c" && grep -q '"positions": "learned"' "$c" && grep -q '"mlp_bias": true' "$c" \
    && ok "config.json has the llmtrain object and mlp_bias" || bad "config.json: $(tr -d '\n' < "$c")"
$BIN_DIR/train "${common[@]}" --eval-every 0 --steps 6 --out "$tmp/fb" --resume > "$tmp/fb2.log" 2>&1 || { cat "$tmp/fb2.log"; bad "feature resume"; }
if diff <(strip "$tmp/fa.log" | tail -n 3) <(strip "$tmp/fb2.log") > /dev/null && \
   cmp -s "$tmp/fa/step_000006/model.safetensors" "$tmp/fb/step_000006/model.safetensors"; then
    ok "features: steps 4-6 and the weights identical after a resume without the feature flags"
else bad "features: resume differs"; fi
$BIN_DIR/train "${common[@]}" --norm rmsnorm --steps 8 --out "$tmp/fb" --resume > /dev/null 2> "$tmp/fb3.err"
[ $? -ne 0 ] && [ "$(wc -l < "$tmp/fb3.err")" = 1 ] && grep -q -- "--norm rmsnorm: the checkpoint .* has norm layernorm" "$tmp/fb3.err" \
    && ok "resume refuses a feature flag against the checkpoint: $(cat "$tmp/fb3.err")" || bad "feature flag on resume: $(cat "$tmp/fb3.err")"
$BIN_DIR/train "${common[@]}" --init-from "$tmp/fa/step_000006" --steps 0 --eval-every 1 > "$tmp/fi.log" 2>&1 \
    && grep -q "val loss" "$tmp/fi.log" && ok "--init-from a feature checkpoint" || { cat "$tmp/fi.log"; bad "--init-from a feature checkpoint"; }
$BIN_DIR/train "${common[@]}" --init-from "$tmp/fa/step_000006" --activation swiglu --steps 0 > /dev/null 2> "$tmp/fi.err"
[ $? -ne 0 ] && grep -q -- "--activation swiglu: changes the weights of --init-from" "$tmp/fi.err" \
    && ok "--init-from refuses a flag that changes its weights: $(cat "$tmp/fi.err")" || bad "--init-from + --activation: $(cat "$tmp/fi.err")"

# a checkpoint whose --eod-mask-loss masked the targets (saved before the mask followed Megatron's rule, so its
# settings lack "eod_mask") is not resumed under the input rule: the same checkpoint with that key blanked out
$BIN_DIR/train "${common[@]}" --steps 2 --eval-every 0 --eod-mask-loss --out "$tmp/e" > "$tmp/e.log" 2>&1 || { cat "$tmp/e.log"; bad "eod-mask run"; }
perl -pi -e 's/\\"eod_mask\\":\\"input\\",/" " x length($&)/e' "$tmp/e/step_000002/train_state.safetensors"
$BIN_DIR/train "${common[@]}" --steps 4 --eval-every 0 --eod-mask-loss --out "$tmp/e" --resume > "$tmp/e2.log" 2> "$tmp/e2.err"
[ $? -ne 0 ] && grep -q 'eod_mask was (unset) in the checkpoint' "$tmp/e2.err" \
    && ok "resume refuses an --eod-mask-loss checkpoint of the target rule: $(cat "$tmp/e2.err")" || bad "old eod-mask checkpoint resumed: $(cat "$tmp/e2.err")"

# --data-order megatron: Megatron's order depends on the run's samples, so a resume goes on only with the same
# --steps (from a mid-run save: step 4 of an 8-step run, then the same 8 steps bit for bit) and refuses others
mg=(--data "0.6 tests/fixtures/megatron/single 0.4 tests/fixtures/megatron/multi" --data-order megatron --eval-every 0 --steps 8)
$BIN_DIR/train "${common[@]}" "${mg[@]}" --save-every 4 --out "$tmp/m" > "$tmp/m.log" 2>&1 || { cat "$tmp/m.log"; bad "megatron-order run"; }
mkdir -p "$tmp/m2" && cp -r "$tmp/m/step_000004" "$tmp/m2/" && echo step_000004 > "$tmp/m2/latest"
$BIN_DIR/train "${common[@]}" "${mg[@]}" --out "$tmp/m2" --resume > "$tmp/m2.log" 2>&1 || { cat "$tmp/m2.log"; bad "megatron-order resume"; }
cmp -s "$tmp/m/step_000008/model.safetensors" "$tmp/m2/step_000008/model.safetensors" \
    && ok "--data-order megatron: resumed at step 4, step 8 bit-identical" || bad "--data-order megatron resume differs"
$BIN_DIR/train "${common[@]}" "${mg[@]}" --steps 12 --out "$tmp/m2" --resume > "$tmp/m3.log" 2> "$tmp/m3.err"
[ $? -ne 0 ] && grep -q "megatron_samples was 16 in the checkpoint, now 24" "$tmp/m3.err" \
    && ok "--data-order megatron: resume refuses another --steps: $(cat "$tmp/m3.err")" || bad "megatron resume with other --steps: $(cat "$tmp/m3.err")"

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

# SIGKILL at every rename of a save that replaces an existing step_000001 (a second run into the same folder),
# killed by strace at the entry of the K-th rename: latest must name a complete checkpoint at every instant; the
# next start deletes the temp folders of the killed save. "links": the path of file systems that cannot
# exchange two names (renameat2 fails with EINVAL), where latest names the temp folder while step_000001 is
# replaced.
quick=("${common[@]}" --eval-every 0 --threads 1)   # one thread: fast on a busy machine
command -v strace > /dev/null || bad "strace is missing (make deps installs it)"
$BIN_DIR/train "${quick[@]}" --steps 1 --out "$tmp/re0" > /dev/null 2>&1 || bad "first save of step 1"
resave_ok=0; resave_n=0
for trial in "exchange rename 3" "exchange renameat2 1" "exchange rename 4" "exchange rename 5" \
             "links rename 5" "links rename 6" "links rename 7"; do
    set -- $trial
    inject=(-e "inject=$2:signal=KILL:when=$3")
    [ "$1" = links ] && inject+=(-e inject=renameat2:error=EINVAL)
    rm -rf "$tmp/re"; cp -r "$tmp/re0" "$tmp/re"
    (strace -f -o /dev/null "${inject[@]}" $BIN_DIR/train "${quick[@]}" --steps 1 --out "$tmp/re" > /dev/null 2>&1; true) 2> /dev/null
    resave_n=$((resave_n + 1))
    # a resume at the checkpoint's step only loads it; the second start finds nothing left to clean
    if $BIN_DIR/train "${quick[@]}" --steps 1 --out "$tmp/re" --resume > "$tmp/re.log" 2>&1 &&
       grep -q "resumed from $tmp/re/step_000001 at step 1" "$tmp/re.log" &&
       $BIN_DIR/train "${quick[@]}" --steps 1 --out "$tmp/re" --resume > /dev/null 2>&1 &&
       ! ls -d "$tmp"/re/.step_* > /dev/null 2>&1; then resave_ok=$((resave_ok + 1))
    else echo "     $trial: latest $(cat "$tmp/re/latest"), left $(ls -A "$tmp/re" | tr '\n' ' ')"; cat "$tmp/re.log"; fi
done
[ $resave_ok -eq $resave_n ] && ok "SIGKILL while re-saving a step: $resave_ok/$resave_n resumes from a complete step_000001, temp folders deleted" ||
    bad "SIGKILL while re-saving a step: $resave_ok/$resave_n"

# log.jsonl after a kill and a resume: each step once, with the losses of a straight run (the kill comes at the
# first rename of the save of step 4, the 6th of the run: steps 3 and 4 were logged, step 2 is the last saved)
(strace -f -o /dev/null -e inject=rename:signal=KILL:when=6 $BIN_DIR/train "${quick[@]}" --steps 4 --save-every 2 --out "$tmp/lg" > /dev/null 2>&1; true) 2> /dev/null
$BIN_DIR/train "${quick[@]}" --steps 4 --out "$tmp/lg" --resume > "$tmp/lg.log" 2>&1 || { cat "$tmp/lg.log"; bad "resume after a kill"; }
$BIN_DIR/train "${quick[@]}" --steps 4 --out "$tmp/lg1" > /dev/null 2>&1
losses() { grep -o '"step":[0-9]*,"loss":[0-9.]*' "$1/log.jsonl"; }
if grep -q "resumed from $tmp/lg/step_000002 at step 2" "$tmp/lg.log" && [ "$(losses "$tmp/lg" | wc -l)" = 4 ] && diff <(losses "$tmp/lg") <(losses "$tmp/lg1") > /dev/null
then ok "log.jsonl after kill + resume: steps 1-4 once each, as straight ($(grep -o 'dropped.*' "$tmp/lg.log"))"
else bad "log.jsonl after kill + resume:"; losses "$tmp/lg"; fi

# a second run into a folder that a run is writing stops, naming it
$BIN_DIR/train "${quick[@]}" --steps 100000 --out "$tmp/lk" > /dev/null 2>&1 &
pid=$!
for i in $(seq 50); do [ -s "$tmp/lk/.lock" ] && break; sleep 0.1; done
$BIN_DIR/train "${quick[@]}" --steps 1 --out "$tmp/lk" > /dev/null 2> "$tmp/lk.err"; rc=$?
kill -TERM $pid; wait $pid
[ $rc -ne 0 ] && grep -q "another run (pid $pid) is writing this folder" "$tmp/lk.err" && ok "a second run into a busy --out stops: $(cat "$tmp/lk.err")" ||
    bad "second run into a busy --out (exit $rc): $(cat "$tmp/lk.err")"

# the LR schedule goes on after a resume: --steps 3 (so --decay-steps 3) then --steps 5 --resume equals
# --steps 5 --decay-steps 3 straight, and says so; a --decay-steps given replaces it, and says so
sched=(--data "$tmp/shk_text_document" --model tests/fixtures/configs/train_small.json --batch-size 2 --seq-len 16
       --lr 1e-2 --warmup-steps 1 --split 90,10,0 --eval-every 0 --seed 11 --threads 1)
$BIN_DIR/train "${sched[@]}" --steps 3 --out "$tmp/sc" > /dev/null 2>&1
$BIN_DIR/train "${sched[@]}" --steps 5 --out "$tmp/sc" --resume > "$tmp/sc.log" 2>&1
$BIN_DIR/train "${sched[@]}" --steps 5 --decay-steps 3 --out "$tmp/sc1" > /dev/null 2>&1
cmp -s "$tmp/sc/step_000005/model.safetensors" "$tmp/sc1/step_000005/model.safetensors" &&
    grep -q "steps 4-5 run at min-lr 0.001" "$tmp/sc.log" && ok "resume keeps the LR schedule: == --decay-steps 3 straight; $(grep -h 'LR schedule\|min-lr 0.001 (' "$tmp/sc.log" | tr '\n' ' ')" ||
    { bad "resume with a longer --steps changed the LR schedule"; cat "$tmp/sc.log"; }
$BIN_DIR/train "${sched[@]}" --steps 6 --decay-steps 6 --out "$tmp/sc" --resume > "$tmp/sc2.log" 2>&1
grep -q -- "--decay-steps 6 replaces the checkpoint's 3: the learning rate follows the new schedule from step 6" "$tmp/sc2.log" &&
    ok "a --decay-steps given at resume is announced" || { bad "--decay-steps at resume"; cat "$tmp/sc2.log"; }

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
