#!/usr/bin/env bash
# The trainer end to end on the bundled corpus: prepro -> train a small LLaMA-shaped model -> the validation
# loss falls by a stated margin; the run repeats bit for bit (same seed; 1 thread vs 2 threads); the saved
# model reloads; and each class of bad input gives a one-line error and a non-zero exit.
set -u
cd "$(dirname "$0")/.."
. tests/lib/common.sh
# a quarter of the bundled corpus keeps this quick
shakespeare_data 300000
data="$tmp/shk_text_document"
[ -f "$data.bin" ] && [ -f "$data.idx" ] && ok "prepro wrote $data.{bin,idx}" || bad "prepro output missing"

# TEST_SHORT=1 (make test-sanitize, whose programs run about 10x slower) trains 20 steps instead of 60 and
# asks for 2 nats off instead of 3 (20 steps take 3.0-3.6 off, seeds 7-9)
steps=60; drop=3.0
if [ -n "${TEST_SHORT:-}" ]; then steps=20; drop=2.0; fi
common=(--data "$data" --model tests/fixtures/configs/train_small.json --batch-size 4 --seq-len 32 --steps $steps
        --lr 1e-2 --warmup-steps 5 --split 90,10,0 --eval-every $steps --eval-steps 4 --seed 7 --log-every 10)
$BIN_DIR/train "${common[@]}" --threads 2 --out "$tmp/run" > "$tmp/a.log" 2>&1 || { cat "$tmp/a.log"; bad "training run"; }
v0=$(awk '/^step 0 \| val loss/ {print $6}' "$tmp/a.log")
v1=$(awk -v s="$steps" '$1 == "step" && $2 == s && /val loss/ {print $6}' "$tmp/a.log")
echo "     val loss $v0 -> $v1"
# a random init starts near ln(50257) = 10.8; the run must take at least $drop nats off
if awk -v a="$v0" -v b="$v1" -v d="$drop" 'BEGIN { exit !(a > 10 && b < a - d) }'; then ok "val loss fell by > $drop nats in $steps steps"; else bad "val loss $v0 -> $v1"; fi

$BIN_DIR/train "${common[@]}" --threads 1 > "$tmp/b.log" 2>&1
if diff <(grep -E '^step' "$tmp/a.log" | sed 's/| [0-9.]* ms.*//') <(grep -E '^step' "$tmp/b.log" | sed 's/| [0-9.]* ms.*//') > /dev/null; then
    ok "1 thread and 2 threads give identical losses and norms"
else bad "runs with 1 and 2 threads differ"; fi

final="$tmp/run/$(cat "$tmp/run/latest" 2>/dev/null)"
[ -f "$final/model.safetensors" ] && [ -f "$final/config.json" ] && ok "final checkpoint $final" || bad "no final checkpoint"
grep -q '"val_loss"' "$tmp/run/log.jsonl" && ok "log.jsonl has step and eval records" || bad "log.jsonl"
# continue from the saved HF-format folder: its first validation loss is the last one of the run
$BIN_DIR/train --data "$data" --init-from "$final" --batch-size 4 --seq-len 32 --steps 0 --split 90,10,0 \
    --eval-steps 4 --eval-every 1 > "$tmp/c.log" 2>&1 || { cat "$tmp/c.log"; bad "--init-from"; }
v2=$(awk '/^step 0 \| val loss/ {print $6}' "$tmp/c.log")
[ "$v2" = "$v1" ] && ok "--init-from the saved model gives the same val loss ($v2)" || bad "--init-from val loss $v2 != $v1"

# a learning rate that blows the weights up: the run stops at the first non-finite step with a clear error,
# or, with --skip-nonfinite, skips such steps, counts them and goes on
blowup=(--data "$data" --model tests/fixtures/configs/train_small.json --batch-size 2 --seq-len 16 --steps 6 --lr 1e30
        --clip 0 --eval-every 0 --split 90,10,0)
$BIN_DIR/train "${blowup[@]}" > "$tmp/nf.log" 2> "$tmp/nf.err"; rc=$?
[ $rc -ne 0 ] && grep -q "not finite" "$tmp/nf.err" && ok "non-finite step stops the run: $(cat "$tmp/nf.err")" || bad "non-finite (exit $rc)"
$BIN_DIR/train "${blowup[@]}" --skip-nonfinite --out "$tmp/nf" > "$tmp/nf2.log" 2>&1; rc=$?
n=$(grep -c "skipped (non-finite)" "$tmp/nf2.log")
[ $rc -eq 0 ] && [ "$n" -ge 1 ] && grep -q '"skipped":[1-9]' "$tmp/nf/log.jsonl" && ok "--skip-nonfinite skipped $n steps and finished" || bad "--skip-nonfinite (exit $rc, $n skipped)"

# bad input: one line on stderr naming the problem, non-zero exit
expect_error() {  # name, expected substring (fixed text, not a pattern), command...
    local name=$1 needle=$2; shift 2
    "$@" > "$tmp/out" 2> "$tmp/err"; local rc=$?
    local lines; lines=$(wc -l < "$tmp/err")
    if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && grep -qF -- "$needle" "$tmp/err"; then ok "$name: $(cat "$tmp/err")"
    else bad "$name (exit $rc, $lines lines): $(cat "$tmp/err")"; fi
}
expect_error "missing data" "nope.idx" $BIN_DIR/train --data "$tmp/nope"
expect_error "unknown model_type" 'unknown model_type "bert"' $BIN_DIR/train --data "$data" --model tests/fixtures/configs/bad_model_type.json
expect_error "inconsistent heads" "not a multiple" $BIN_DIR/train --data "$data" --model tests/fixtures/configs/bad_heads.json
expect_error "malformed config" "bad_json.json:2:" $BIN_DIR/train --data "$data" --model tests/fixtures/configs/bad_json.json
expect_error "missing config key" 'missing key "intermediate_size"' $BIN_DIR/train --data "$data" --model tests/fixtures/configs/bad_missing.json
expect_error "size out of range" 'key "n_head" must be a whole number from 0 to 2^24' $BIN_DIR/train --data "$data" --model tests/fixtures/configs/bad_range.json
expect_error "unknown preset" "neither a preset" $BIN_DIR/train --data "$data" --model gpt9
expect_error "unknown flag" "unknown flag --bogus" $BIN_DIR/train --data "$data" --bogus 1
mkdir -p "$tmp/trunc"; cp "$final/config.json" "$tmp/trunc/"
head -c 5000 "$final/model.safetensors" > "$tmp/trunc/model.safetensors"
expect_error "truncated safetensors" "model.safetensors" $BIN_DIR/train --data "$data" --init-from "$tmp/trunc"
expect_error "vocab too small" "outside the model's vocabulary" $BIN_DIR/train --data "$data" --model tests/fixtures/models/llama/config.json
expect_error "a GPU flag to train" "is a flag of train_gpu" $BIN_DIR/train --data "$data" --zero 2
# token ids outside the vocabulary (an int32 .bin of 10 one-sequence documents of 20 tokens): found when the data is opened,
# in the sequences the run reads, wherever they are (the very last token is only ever a target)
. tests/lib/mmidx.sh
ids_data() {  # ids_data NAME ELEMENT ID: document ELEMENT / 20 holds ID at place ELEMENT % 20
    local ids=() i
    for ((i = 0; i < 200; i++)); do ids+=($(( (i * 37) % 1000 ))); done
    ids[$2]=$3
    make_idx 4 4 "$(printf '20 %.0s' {1..10})" "$(seq -s ' ' 1 10)" > "$tmp/$1.idx"
    make_bin 4 "${ids[@]}" > "$tmp/$1.bin"
}
ids_run=(--model tests/fixtures/configs/train_small.json --batch-size 2 --seq-len 8 --steps 1 --log-every 1)
ids_data neg 123 -5
expect_error "negative id" "train: $tmp/neg.bin: sequence 6, token 3: id -5 is outside the model's vocabulary [0, 50257)" \
    $BIN_DIR/train --data "$tmp/neg" "${ids_run[@]}" --split 100,0,0 --eval-every 0
ids_data last 199 -1
expect_error "negative id as the last target" "train: $tmp/last.bin: sequence 9, token 19: id -1 is outside" \
    $BIN_DIR/train --data "$tmp/last" "${ids_run[@]}" --split 100,0,0 --eval-every 0
ids_data big 185 50257
expect_error "id past the vocabulary in the validation split" "train: $tmp/big.bin: sequence 9, token 5: id 50257 is outside" \
    $BIN_DIR/train --data "$tmp/big" "${ids_run[@]}" --split 80,20,0 --eval-every 1
$BIN_DIR/train --data "$tmp/big" "${ids_run[@]}" --split 80,20,0 --eval-every 0 > "$tmp/out" 2>&1 \
    && $BIN_DIR/train --data "$tmp/big" "${ids_run[@]}" --split 80,10,10 --eval-every 1 > "$tmp/out" 2>&1 \
    && ok "a bad id in a split the run does not read is not refused" || bad "bad id outside the splits read: $(tail -1 "$tmp/out")"
# --data-order megatron (its windows are checked against megatron-core's in test_data): a 3-way blend trains;
# a seed numpy's RandomState cannot take, an unknown order and a blend too short for the run are refused
mg=tests/fixtures/megatron
$BIN_DIR/train --data "0.5 $mg/single 0.3 $mg/multi 0.2 $mg/third" --data-order megatron "${ids_run[@]}" --seed 42 \
    --eval-every 0 > "$tmp/out" 2>&1 && grep -q "^done: 1 steps" "$tmp/out" \
    && ok "--data-order megatron trains on a 3-way blend" || bad "--data-order megatron: $(tail -1 "$tmp/out")"
expect_error "megatron seed" "train: --seed 4294967296: --data-order megatron needs a seed below 2^32" \
    $BIN_DIR/train --data "$mg/single" --data-order megatron --seed 4294967296
expect_error "data order" "train: --data-order random: must be one of default|megatron" $BIN_DIR/train --data "$mg/single" --data-order random
# documents packed in windows (their losses are checked against HF in test_model): a run with both flags, on
# the multi-sequence dataset whose EOD (0) is the config's eos_token_id; a config without one is refused
sed 's/"eos_token_id": 50256/"eos_token_id": 0/' tests/fixtures/configs/train_small.json > "$tmp/eod0.json"
$BIN_DIR/train --data "$mg/multi" --model "$tmp/eod0.json" --reset-attention-mask --reset-position-ids --eod-mask-loss \
    --batch-size 2 --seq-len 16 --steps 2 --eval-every 0 > "$tmp/out" 2>&1 && grep -q "^done: 2 steps" "$tmp/out" \
    && ok "--reset-attention-mask --reset-position-ids train" || bad "reset flags: $(tail -1 "$tmp/out")"
sed 's/"hidden_act": "silu",/"hidden_act": "silu"/; /eos_token_id/d' tests/fixtures/configs/train_small.json > "$tmp/noeos.json"
expect_error "--reset-attention-mask without an EOD" "--reset-attention-mask needs eos_token_id" \
    $BIN_DIR/train --data "$mg/multi" --model "$tmp/noeos.json" --reset-attention-mask
expect_error "megatron blend too short" "samples (one epoch of each dataset, as Megatron builds it), fewer than the 2000" \
    $BIN_DIR/train --data "$mg/single $mg/third" --data-order megatron "${ids_run[@]}" --steps 1000 --eval-every 0
# every number is checked against its flag's range (flags.h): nothing wraps, nothing non-finite gets in
while read -r flag value range; do
    expect_error "$flag $value" "train: $flag $value: out of range $range" $BIN_DIR/train --data "$data" "$flag" "$value"
done <<'RANGES'
--sample-len -1 [1, 2147483646]
--sample-len 0 [1, 2147483646]
--lr nan [0, inf)
--lr inf [0, inf)
--lr -1 [0, inf)
--lr 1e39 [0, inf)
--min-lr -0.1 [0, inf)
--beta1 2 [0, 1)
--beta2 1 [0, 1)
--eps 0 (0, inf)
--clip -1 [0, inf) (0: off)
--weight-decay -inf [0, inf)
--warmup-steps -5 [0, 2147483647] (0: no warmup)
--decay-steps 0 [1, 2147483647]
--threads -1 [0, 1024] (0: all cores / --nproc)
--temperature -1 [0, inf) (0: the most likely token)
--eval-steps 0 [1, 2147483647]
--eval-every -1 [0, 2147483647] (0: off)
--log-every 0 [1, 2147483647]
--steps 4294967297 [0, 2147483647] (0: no training step)
--steps -1 [0, 2147483647] (0: no training step)
--batch-size 4294967297 [1, 2147483647]
--grad-accum 0 [1, 2147483647]
--top-k -1 [0, 2147483647] (0: all)
--nproc 65 [1, 64]
--seed -1 [0, 18446744073709551615]
--seed 18446744073709551616 [0, 18446744073709551615]
--max-shard-size -1 [0, 1073741824] (0: one file)
RANGES
expect_error "--steps 1.5" "train: --steps 1.5: not a whole number" $BIN_DIR/train --data "$data" --steps 1.5
expect_error "--lr abc" "train: --lr abc: not a number" $BIN_DIR/train --data "$data" --lr abc
expect_error "--lr-schedule" "train: --lr-schedule step: must be one of cosine|linear|constant" $BIN_DIR/train --data "$data" --lr-schedule step
expect_error "--norm" "train: --norm batchnorm: must be one of layernorm|rmsnorm" $BIN_DIR/train --data "$data" --norm batchnorm
expect_error "--positions" "train: --positions sinusoidal: must be one of learned|rope|none" $BIN_DIR/train --data "$data" --positions sinusoidal
expect_error "--mlp-bias" "train: --mlp-bias 2: out of range [0, 1]" $BIN_DIR/train --data "$data" --mlp-bias 2
expect_error "--steps without a value" "train: --steps needs a value" $BIN_DIR/train --data "$data" --steps
expect_error "tokens per step" "4294967296 tokens per step" $BIN_DIR/train --data "$data" --batch-size 65536 --seq-len 65536
# train_gpu (built wherever nvcc is) checks its flags before it looks for a GPU
if [ -x $BIN_DIR/train_gpu ]; then
    expect_error "train_gpu --zero 3" "train_gpu: --zero 3: out of range [1, 2]" $BIN_DIR/train_gpu --data "$data" --zero 3
    expect_error "train_gpu --overlap 2" "train_gpu: --overlap 2: out of range [0, 1]" $BIN_DIR/train_gpu --data "$data" --overlap 2
    expect_error "train_gpu --nccl-timeout -1" "train_gpu: --nccl-timeout -1: out of range [0, inf) (0: no time limit)" $BIN_DIR/train_gpu --data "$data" --nccl-timeout -1
    expect_error "train_gpu --dtype fp16" "train_gpu: --dtype fp16: must be one of bf16|fp32" $BIN_DIR/train_gpu --data "$data" --dtype fp16
    expect_error "train_gpu --master-port 70000" "train_gpu: --master-port 70000: out of range [1, 65535]" $BIN_DIR/train_gpu --data "$data" --master-port 70000
    expect_error "train_gpu --node-rank 1" "train_gpu: --node-rank 1: out of range [0, 0]" $BIN_DIR/train_gpu --data "$data" --node-rank 1
    expect_error "train_gpu --lr nan" "train_gpu: --lr nan: out of range [0, inf)" $BIN_DIR/train_gpu --data "$data" --lr nan
    expect_error "train_gpu --sample-len -1" "train_gpu: --sample-len -1: out of range [1, 2147483646]" $BIN_DIR/train_gpu --data "$data" --sample-len -1
    expect_error "train_gpu --nproc-per-node 0" "train_gpu: --nproc-per-node 0: out of range [1, 1024]" $BIN_DIR/train_gpu --data "$data" --nproc-per-node 0
    # config features its kernels do not implement are refused by key before any rank starts
    m=tests/fixtures/models
    expect_error "train_gpu sliding window" "config key use_sliding_window" $BIN_DIR/train_gpu --data "$data" --model $m/qwen2_window --seq-len 16
    expect_error "train_gpu layer-scaled attention" "config key scale_attn_by_inverse_layer_idx" $BIN_DIR/train_gpu --data "$data" --model $m/gpt2_layer_scaled --seq-len 16
    expect_error "train_gpu unscaled attention" "config key scale_attn_weights" $BIN_DIR/train_gpu --data "$data" --model $m/gpt2_unscaled --seq-len 16
    $BIN_DIR/train_gpu --help | grep -q -- "--zero 1|2" && ok "train_gpu --help lists the GPU flags" || bad "train_gpu --help"
fi
exit $fail
