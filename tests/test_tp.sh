#!/usr/bin/env bash
# Tensor and sequence parallelism on the CPU (train --tp N [--sp]): for every family (GPT-2; LLaMA with k/v heads
# split (--tp 2) and shared (--tp 4); Qwen2 tied with one k/v head; Qwen3 with q/k norms and an lm_head), the
# layouts -n 2 --tp 2, -n 4 --tp 2 (2 data-parallel x 2), -n 4 --tp 4, each with and without --sp, give the losses
# and grad norms of one rank on the same global batch (to the printed digits) and the same saved model (to fp32
# sum-order tolerance); a checkpoint saved with --tp loads in one rank and gives its losses; a resume with the same
# layout is bit-exact; a rank killed mid-run stops every group; layouts that do not divide the model are refused.
set -u
cd "$(dirname "$0")/.."
. tests/lib/common.sh
shakespeare_data 60000
common=(--data "$tmp/shk_text_document" --seq-len 16 --lr 1e-2 --warmup-steps 2 --steps 6 --grad-accum 2
        --split 90,10,0 --eval-every 0 --seed 5 --threads 1)
losses() { grep -E '^step +[0-9]+/' "$1" | awk -F'|' '{print $2, $4}'; }
maxdiff() { $BIN_DIR/tests/bin/st_maxdiff "$1/step_000006/$3.safetensors" "$2/step_000006/$3.safetensors"; }

families=(tp_gpt2:GPT-2 train_small:"LLaMA (2 kv heads)" tp_qwen2:"Qwen2 (tied, 1 kv head)" tp_qwen3:"Qwen3 (q/k norms, lm_head)")
layouts=("-n 2 --tp 2 --batch-size 4" "-n 4 --tp 2 --batch-size 2" "-n 4 --tp 4 --batch-size 4"); sps=("" "--sp")
# TEST_SHORT (the sanitized pass, ~10x slower): two families, each layout once, --sp on the 4-rank ones
[ "${TEST_SHORT:-0}" = 1 ] && families=(train_small:"LLaMA (2 kv heads)" tp_qwen3:"Qwen3 (q/k norms, lm_head)")
for fam in "${families[@]}"; do
    cfg=tests/fixtures/configs/${fam%%:*}.json name=${fam#*:} d="$tmp/${fam%%:*}"
    mkdir -p "$d"
    $BIN_DIR/train "${common[@]}" --model "$cfg" --batch-size 4 --out "$d/one" > "$d.one.log" 2>&1 || { cat "$d.one.log"; bad "$name: 1 rank"; continue; }
    first_last=$(losses "$d.one.log" | awk '{ if (NR == 1) f = $2; l = $2 } END { print f, l }')
    awk -v fl="$first_last" 'BEGIN { split(fl, x, " "); exit !(x[2] + 0.3 < x[1] + 0) }' || bad "$name: 1 rank does not learn ($first_last)"
    for layout in "${layouts[@]}"; do
        for sp in "${sps[@]}"; do
            if [ "${TEST_SHORT:-0}" = 1 ]; then case "$layout$sp" in *"-n 2"*--sp|*"-n 4"*"size 2"|*"-n 4"*"size 4") continue;; esac; fi
            run="$layout $sp" out="$d/$(echo "$layout $sp" | tr -d ' -')"
            # shellcheck disable=SC2086
            if ! $BIN_DIR/train "${common[@]}" --model "$cfg" $layout $sp --out "$out" > "$out.log" 2>&1; then
                tail -n 5 "$out.log"; bad "$name: $run"; continue
            fi
            if diff <(losses "$d.one.log") <(losses "$out.log") > /dev/null; then ok "$name: $run == 1 rank: losses and grad norms"
            else bad "$name: $run vs 1 rank"; paste <(losses "$d.one.log") <(losses "$out.log"); fi
            m=$(maxdiff "$d/one" "$out" model) s=$(maxdiff "$d/one" "$out" train_state)
            awk -v m="$m" -v s="$s" 'BEGIN { exit !(m != "" && s != "" && m + 0 <= 1e-3 && s + 0 <= 1e-5) }' \
                && ok "$name: $run checkpoint == 1 rank's: weights max diff $m, moments $s" || bad "$name: $run checkpoint: weights $m, moments $s"
        done
    done
done

# a checkpoint of -n 2 --tp 2 is the whole model: one rank resumes it (saying the layout changed) and its 7th
# step has the loss of the one-rank run's 7th step
d="$tmp/train_small"
cp -r "$d/n2tp2batchsize4" "$d/resume1"; cp -r "$d/one" "$d/resume0"
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/train_small.json --batch-size 4 --steps 7 --resume --out "$d/resume1" > "$d/r1.log" 2>&1 || { cat "$d/r1.log"; bad "1 rank resuming a --tp checkpoint"; }
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/train_small.json --batch-size 4 --steps 7 --resume --out "$d/resume0" > "$d/r0.log" 2>&1 || bad "1 rank resuming its own checkpoint"
grep -q "saved with --tp 2 --pp 1, this run has --tp 1 --pp 1" "$d/r1.log" && ok "resume across layouts says so: $(grep -o 'saved with.*--tp 1 --pp 1' "$d/r1.log")" || bad "no layout note on resume"
a=$(losses "$d/r1.log" | tail -n 1) b=$(losses "$d/r0.log" | tail -n 1)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "the --tp checkpoint in one rank: step 7 '$a' as the one-rank checkpoint's" || bad "step 7 from the --tp checkpoint '$a', from the one-rank one '$b'"

# the same layout: 3 steps, then a resume to 6, is bit-exact with 6 straight steps
lay=(-n 4 --tp 2 --sp --batch-size 2)
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/train_small.json "${lay[@]}" --steps 3 --decay-steps 6 --out "$d/half" > "$d/h1.log" 2>&1 || bad "3 steps"
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/train_small.json "${lay[@]}" --resume --out "$d/half" > "$d/h2.log" 2>&1 || { cat "$d/h2.log"; bad "resume to 6"; }
for f in model train_state; do
    x=$(maxdiff "$d/n4tp2batchsize2sp" "$d/half" $f)
    [ "$x" = "0.000e+00" ] && ok "-n 4 --tp 2 --sp: 3 steps + resume == 6 steps: $f.safetensors identical" || bad "resume with the same layout: $f differs by $x"
done

# a rank killed mid-run: every group stops with an error
kill_a_rank $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/train_small.json -n 4 --tp 2 --batch-size 2 --steps 100000

# layouts the model or the flags do not allow
refuse "does not divide the 4 processes" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/tp_gpt2.json -n 4 --tp 3
refuse "does not divide num_attention_heads 4" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/tp_gpt2.json -n 8 --tp 8
sed 's/"num_attention_heads": 4/"num_attention_heads": 6/; s/"num_key_value_heads": 2/"num_key_value_heads": 3/' \
    tests/fixtures/configs/train_small.json > "$tmp/kv3.json"
refuse "neither divides num_key_value_heads 3 nor" $BIN_DIR/train "${common[@]}" --model "$tmp/kv3.json" -n 2 --tp 2
refuse "needs --tp 2 or more" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/tp_gpt2.json --sp
refuse "do not split into --tp 4 blocks" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/tp_gpt2.json -n 4 --tp 4 --sp --batch-size 1 --seq-len 15
exit $fail
