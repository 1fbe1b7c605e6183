#!/usr/bin/env bash
# Pipeline parallelism on the CPU (train --pp P, 1F1B over --grad-accum micro-batches): GPT-2 (tied embeddings) and
# LLaMA tied and untied, 4 layers, with -n 2 --pp 2, -n 4 --pp 4, -n 4 --pp 2 --tp 2 (with and without --sp) and -n 4 --pp 2 (2 data-parallel
# pipelines), --grad-accum 4: the losses and grad norms of 6 steps are one rank's (fp32 sum-order tolerance), so are
# the validation loss and a sample (the same draws from the same logits), and the saved model is one rank's; one rank resumes a --pp checkpoint
# (with a line saying the layout changed) and its next step is the one-rank checkpoint's; a resume with the same
# layout is bit-exact; --pp-layers sets the stages; --pp-trace writes every rank's events and the run prints the
# measured bubble beside the theory; a rank killed mid-schedule stops every rank; bad layouts are refused.
set -u
cd "$(dirname "$0")/.."
. tests/lib/common.sh
shakespeare_data 60000
common=(--data "$tmp/shk_text_document" --seq-len 16 --lr 1e-2 --warmup-steps 2 --steps 6 --grad-accum 4 --split 90,10,0
        --eval-every 6 --eval-steps 2 --sample-every 6 --sample-len 12 --tokenizer data/gpt2_tokenizer.json
        --seed 5 --threads 1)
# step lines -> "loss norm"; compare A B: every step within 2e-5 (loss) and 1e-3 (norm) relative
losses() { grep -E '^step +[0-9]+/' "$1" | awk -F'|' '{ sub(/ *loss /, "", $2); sub(/ *norm /, "", $4); print $2, $4 }'; }
compare() {
    paste -d ' ' <(losses "$1") <(losses "$2") | awk '
        function rel(a, b) { d = a - b; if (d < 0) d = -d; return d / (b < 0 ? -b : b) }
        { n++; if (NF != 4 || rel($3, $1) > 2e-5 || rel($4, $2) > 1e-3) bad = 1; if (rel($3, $1) > w) w = rel($3, $1) }
        END { printf "%d steps, worst loss rel diff %.2g", n, w; exit !(n == 6 && !bad) }'
}
val() { grep -E '^step 6 \| val loss' "$1" | awk '{print $NF}'; }
sample() { sed -n '/^--- sample at step 6 ---$/,/^---$/p' "$1" | tr '\n' '|'; }
maxdiff() { $BIN_DIR/tests/bin/st_maxdiff "$1/step_000006/$3.safetensors" "$2/step_000006/$3.safetensors"; }

families=(pp_gpt2:"GPT-2 (tied)" pp_llama_tied:"LLaMA tied" pp_llama_untied:"LLaMA untied")
layouts=("-n 2 --pp 2 --batch-size 4" "-n 4 --pp 4 --batch-size 4" "-n 4 --pp 2 --tp 2 --batch-size 4"
         "-n 4 --pp 2 --tp 2 --sp --batch-size 4" "-n 4 --pp 2 --batch-size 2")
# TEST_SHORT (the sanitized pass, ~10x slower): the two LLaMAs, three layouts
if [ "${TEST_SHORT:-0}" = 1 ]; then
    families=(pp_llama_tied:"LLaMA tied" pp_llama_untied:"LLaMA untied")
    layouts=("-n 4 --pp 4 --batch-size 4" "-n 4 --pp 2 --tp 2 --sp --batch-size 4" "-n 4 --pp 2 --batch-size 2")
fi
for fam in "${families[@]}"; do
    cfg=tests/fixtures/configs/${fam%%:*}.json name=${fam#*:} d="$tmp/${fam%%:*}"
    mkdir -p "$d"
    $BIN_DIR/train "${common[@]}" --model "$cfg" --batch-size 4 --out "$d/one" > "$d/one.log" 2>&1 || { tail -n 5 "$d/one.log"; bad "$name: 1 rank"; continue; }
    for layout in "${layouts[@]}"; do
        out="$d/$(echo "$layout" | tr -d ' -')"
        # shellcheck disable=SC2086
        if ! $BIN_DIR/train "${common[@]}" --model "$cfg" $layout --out "$out" > "$out.log" 2>&1; then
            tail -n 5 "$out.log"; bad "$name: $layout"; continue
        fi
        r=$(compare "$d/one.log" "$out.log") && ok "$name: $layout == 1 rank: $r" || { bad "$name: $layout vs 1 rank: $r"; paste <(losses "$d/one.log") <(losses "$out.log"); }
        # the evaluation and the sample run on the first data-parallel pipeline with its --batch-size: compared where
        # that is the one-rank run's
        case "$layout" in *"--batch-size 4"*)
        v1=$(val "$d/one.log") v2=$(val "$out.log")
        awk -v a="$v1" -v b="$v2" 'BEGIN { d = a - b; exit !(a != "" && (d < 0 ? -d : d) <= 2e-4) }' && ok "$name: $layout val loss $v2 (1 rank $v1)" || bad "$name: $layout val loss $v2, 1 rank $v1"
        s1=$(sample "$d/one.log") s2=$(sample "$out.log")
        [ -n "$s1" ] && [ "$s1" = "$s2" ] && ok "$name: $layout sample as 1 rank's: $s2" || bad "$name: $layout sample '$s2' vs '$s1'"
        esac
        m=$(maxdiff "$d/one" "$out" model)
        awk -v m="$m" 'BEGIN { exit !(m != "" && m + 0 <= 1e-3) }' && ok "$name: $layout checkpoint == 1 rank's (max diff $m)" || bad "$name: $layout checkpoint max diff $m"
    done
done

d="$tmp/pp_llama_tied"
# one rank resumes the -n 4 --pp 4 checkpoint: its step 7 is the one-rank checkpoint's
cp -r "$d/n4pp4batchsize4" "$d/resume1"; cp -r "$d/one" "$d/resume0"
for x in 1 0; do
    $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_llama_tied.json --batch-size 4 --steps 7 --resume \
        --eval-every 0 --sample-every 0 --out "$d/resume$x" > "$d/r$x.log" 2>&1 || { tail -n 3 "$d/r$x.log"; bad "1 rank resuming (resume$x)"; }
done
grep -q "saved with --tp 1 --pp 4, this run has --tp 1 --pp 1" "$d/r1.log" && ok "a resume across layouts says so" || bad "no layout note on resume"
a=$(losses "$d/r1.log" | tail -n 1) b=$(losses "$d/r0.log" | tail -n 1)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "the --pp checkpoint in one rank: step 7 '$a' as the one-rank checkpoint's" || bad "step 7 from the --pp checkpoint '$a', from the one-rank one '$b'"

# the same layout: 3 steps, then a resume to 6, is bit-exact with 6 straight steps
lay=(-n 4 --pp 2 --tp 2 --batch-size 4 --eval-every 0 --sample-every 0)
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_llama_tied.json "${lay[@]}" --out "$d/full" > "$d/f.log" 2>&1 || bad "6 steps"
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_llama_tied.json "${lay[@]}" --steps 3 --decay-steps 6 --out "$d/half" > "$d/h1.log" 2>&1 || bad "3 steps"
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_llama_tied.json "${lay[@]}" --resume --out "$d/half" > "$d/h2.log" 2>&1 || { tail -n 3 "$d/h2.log"; bad "resume to 6"; }
for f in model train_state; do
    x=$(maxdiff "$d/full" "$d/half" $f)
    [ "$x" = "0.000e+00" ] && ok "-n 4 --pp 2 --tp 2: 3 steps + resume == 6 steps: $f.safetensors identical" || bad "resume with the same layout: $f differs by $x"
done

# --pp-layers, the trace and the bubble
$BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_llama_tied.json -n 2 --pp 2 --pp-layers 1,3 --batch-size 4 \
    --pp-trace "$tmp/trace" --eval-every 0 --sample-every 0 --out "$tmp/lay" > "$tmp/lay.log" 2>&1 || { tail -n 3 "$tmp/lay.log"; bad "--pp-layers 1,3"; }
r=$(compare "$tmp/pp_llama_tied/one.log" "$tmp/lay.log") && ok "--pp-layers 1,3 == 1 rank: $r" || bad "--pp-layers 1,3: $r"
grep -q "layers 0-0 on rank 0" "$tmp/lay.log" && ok "--pp-layers 1,3: stage 0 has layer 0" || bad "--pp-layers: $(grep pipeline: "$tmp/lay.log")"
for rk in 0 1; do
    f="$tmp/trace.rank$rk"
    nf=$(grep -c '"cat":"F"' "$f" 2>/dev/null) nb=$(grep -c '"cat":"B"' "$f" 2>/dev/null)
    [ "$nf" = 24 ] && [ "$nb" = 24 ] && ok "trace of rank $rk: 24 forwards and 24 backwards (6 steps x 4)" || bad "trace of rank $rk: $nf forwards, $nb backwards"
done
# 1F1B on 2 stages, 4 micro-batches: stage 0 runs F0 F1 B0 F2 B1 F3 B2 B3; stage 1 F0 B0 F1 B1 ...
o0=$(grep -E '"cat":"[FB]"' "$tmp/trace.rank0" | head -n 8 | sed 's/.*"name":"\([FB][0-9]\)".*/\1/' | tr '\n' ' ')
o1=$(grep -E '"cat":"[FB]"' "$tmp/trace.rank1" | head -n 8 | sed 's/.*"name":"\([FB][0-9]\)".*/\1/' | tr '\n' ' ')
[ "$o0" = "F0 F1 B0 F2 B1 F3 B2 B3 " ] && [ "$o1" = "F0 B0 F1 B1 F2 B2 F3 B3 " ] && ok "1F1B order: stage 0 '$o0', stage 1 '$o1'" || bad "schedule: stage 0 '$o0', stage 1 '$o1'"
grep -qE 'pipeline bubble: measured [0-9.]+ \(mean of the stages\), theory 0.200' "$tmp/lay.log" && ok "$(grep -m1 'pipeline bubble' "$tmp/lay.log")" || bad "no bubble line"

# a rank killed mid-run: every group stops with an error
kill_a_rank $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_gpt2.json -n 4 --pp 2 --tp 2 --batch-size 4 --steps 100000 \
    --eval-every 0 --sample-every 0

refuse "4 stages need at least as many layers (the model has 2)" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/tp_gpt2.json -n 4 --pp 4
refuse "add up to 3, the model has 4" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_gpt2.json -n 2 --pp 2 --pp-layers 1,2
refuse "give 2 positive layer counts" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_gpt2.json -n 2 --pp 2 --pp-layers 4
refuse "does not divide the 3 processes" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_gpt2.json -n 3 --pp 2
refuse "--pp-trace needs --pp 2 or more" $BIN_DIR/train "${common[@]}" --model tests/fixtures/configs/pp_gpt2.json --pp-trace "$tmp/x"
exit $fail
