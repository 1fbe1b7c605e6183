#!/usr/bin/env bash
# The GPU trainer's own code on the CPU, through the CUDA emulation (tests/cuda_emu/README.md):
#  1. test_gpu's kernel tests (--quick; EMU_FULL=1: the whole program, as `make test-gpu-emu` runs it);
#  2. train_gpu with 2 and 4 emulated ranks (the NCCL emulation across processes) gives the losses and grad
#     norms of `train -n 2` / `-n 4` on the same batches: tiny-llama and tiny-gpt2, ZeRO-1 with --overlap 0
#     and 1, ZeRO-2; fp32 within fp32 sum-order tolerance (2e-5 relative on the loss, 1e-3 on the norm), bf16
#     within 2e-2 relative on the loss and 5e-2 on the norm (bf16 activations; the CPU runs fp32); and both
#     models with packed documents (--eod-mask-loss --reset-attention-mask --reset-position-ids), 2 ranks fp32;
#     and two feature combinations (the feature flags), 1 rank fp32 against train;
#  3. tensor and sequence parallelism: train_gpu --tp N [--sp] gives the losses and grad norms of train with the
#     same flags (GPT-2; Qwen2 with its one k/v head shared; Qwen3 with q/k norms and an lm_head; -n 2 --tp 2,
#     -n 4 --tp 2 = 2 data-parallel x 2, -n 4 --tp 4), fp32 within the tolerances above and bf16 within bf16's, and
#     saves the whole model: train's checkpoint within fp32 tolerance (weights 1e-3 after 3 AdamW steps of 1e-3,
#     moments 1e-5); layouts the GPU does not run are refused by name;
#  4. only a machine without a GPU skips: a CUDA initialisation failure is an error.
set -u
cd "$(dirname "$0")/.."
# the sanitized pass (make test-sanitize) builds no emulated programs: these run in make test
if [ "${BIN_DIR:-.}" != . ]; then echo "skipped: the emulated GPU programs are not part of the sanitized build"; exit 0; fi
. tests/lib/common.sh
emu=tests/bin/emu
for b in "$emu/test_gpu_emu" "$emu/train_gpu_emu"; do [ -x "$b" ] || { bad "$b not built (make $b)"; exit 1; }; done

if [ "${EMU_FULL:-0}" = 1 ]; then "$emu/test_gpu_emu" > "$tmp/kernels.log" 2>&1; else "$emu/test_gpu_emu" --quick > "$tmp/kernels.log" 2>&1; fi
rc=$?
[ $rc -eq 0 ] && ok "test_gpu on the emulation: $(tail -n 1 "$tmp/kernels.log")" || { grep -v '^ok' "$tmp/kernels.log" | tail -n 20; bad "test_gpu on the emulation (exit $rc)"; }

CUDA_EMU_DEVICES=0 "$emu/test_gpu_emu" --quick > "$tmp/nodev.log" 2>&1 && grep -q 'no GPU: the device tests skipped' "$tmp/nodev.log" \
    && ok "no device: the device tests skip" || bad "no device: $(tail -n 2 "$tmp/nodev.log")"
CUDA_EMU_FAIL_INIT=1 "$emu/test_gpu_emu" --quick > "$tmp/init.log" 2>&1
rc=$?; [ $rc -ne 0 ] && grep -q 'CUDA initialisation failed: initialization error' "$tmp/init.log" \
    && ok "a CUDA initialisation failure fails test_gpu (exit $rc)" || bad "init failure: exit $rc, $(tail -n 2 "$tmp/init.log")"

shakespeare_data 30000
common=(--data "$tmp/shk_text_document" --seq-len 16 --lr 1e-3 --warmup-steps 1 --steps 3 --split 90,10,0
        --eval-every 0 --seed 5 --threads 1 --batch-size 1)
CUDA_EMU_FAIL_INIT=1 "$emu/train_gpu_emu" "${common[@]}" --model tiny-llama > "$tmp/tinit.log" 2>&1
rc=$?; [ $rc -ne 0 ] && grep -q 'CUDA initialisation failed' "$tmp/tinit.log" \
    && ok "a CUDA initialisation failure stops train_gpu (exit $rc)" || bad "train_gpu init failure: exit $rc, $(tail -n 2 "$tmp/tinit.log")"

# step lines: "step    1/3 | loss 10.8557 | lr ... | norm 3.490 | ..." -> "loss norm"
losses() { grep -E '^step +[0-9]+/' "$1" | awk -F'|' '{ sub(/ *loss /, "", $2); sub(/ *norm /, "", $4); print $2, $4 }'; }
# compare A B LOSS_TOL NORM_TOL [STEPS [FROM]]: every step's loss and norm within the relative tolerances, STEPS of
# them (default 3); FROM: A's steps from step FROM on (B's run started there)
compare() {
    paste -d ' ' <(losses "$1" | tail -n +"${6:-1}") <(losses "$2") | awk -v tl="$3" -v tn="$4" -v want="${5:-3}" '
        function rel(a, b) { d = a - b; if (d < 0) d = -d; return d / (b < 0 ? -b : b) }
        { n++; if (NF != 4 || rel($3, $1) > tl || rel($4, $2) > tn) bad = 1; if (rel($3, $1) > w) w = rel($3, $1) }
        END { printf "%d steps, worst loss rel diff %.2g", n, w; exit !(n == want && !bad) }'
}
# the runs: "model ranks dtype flags"; make test runs a subset that still covers every path with 2 and 4 ranks
all=()
for model in tiny-llama tiny-gpt2; do
    for n in 2 4; do
        for r in "fp32 --zero 1 --overlap 1" "fp32 --zero 1 --overlap 0" "fp32 --zero 2" "bf16 --zero 1 --overlap 1"; do
            all+=("$model $n $r")
        done
    done
done
quick=("tiny-llama 2 fp32 --zero 1 --overlap 1" "tiny-llama 2 fp32 --zero 1 --overlap 0" "tiny-llama 2 fp32 --zero 2"
       "tiny-llama 2 bf16 --zero 1 --overlap 1" "tiny-llama 4 fp32 --zero 2" "tiny-gpt2 2 fp32 --zero 1 --overlap 1"
       "tiny-gpt2 2 bf16 --zero 1 --overlap 1" "tiny-gpt2 4 fp32 --zero 1 --overlap 0")
[ "${EMU_FULL:-0}" = 1 ] && runs=("${all[@]}") || runs=("${quick[@]}")
for r in "${runs[@]}"; do
    set -- $r
    model=$1 n=$2 dtype=$3; shift 3
    cpu="$tmp/cpu_$model$n.log"
    if [ ! -e "$cpu" ]; then
        rm -rf "$tmp/cpu"
        ./train "${common[@]}" --model "$model" -n "$n" --out "$tmp/cpu" > "$cpu" 2>&1 || { tail -n 5 "$cpu"; bad "train -n $n $model"; continue; }
    fi
    log="$tmp/gpu.log"
    rm -rf "$tmp/gpu"
    CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${common[@]}" --model "$model" --nproc-per-node "$n" --dtype "$dtype" "$@" \
        --out "$tmp/gpu" > "$log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then grep -v '^step' "$log" | tail -n 8; bad "train_gpu $model $n ranks $dtype $* (exit $rc)"; continue; fi
    if [ "$dtype" = fp32 ]; then tl=2e-5; tn=1e-3; else tl=2e-2; tn=5e-2; fi
    if res=$(compare "$cpu" "$log" "$tl" "$tn"); then ok "train_gpu $model $n ranks $dtype $* == train -n $n: $res"
    else bad "train_gpu $model $n ranks $dtype $* vs train -n $n: $res"; paste <(losses "$cpu") <(losses "$log"); fi
done

# features over the family's (the feature flags): train_gpu 1 rank fp32 against train with the same flags; a 2-layer GPT-2
# with RMSNorm and SwiGLU (its MLP biases then have 2F entries), and a LLaMA with learned positions and every bias
feats=("tests/fixtures/configs/tiny_gpt2_2l.json|--norm rmsnorm --activation swiglu" "tests/fixtures/configs/tiny_llama_bias.json|--positions learned")
for f in "${feats[@]}"; do
    model=${f%%|*}; flags=(${f#*|})
    ./train "${common[@]}" --model "$model" "${flags[@]}" > "$tmp/cpu_feat.log" 2>&1 \
        || { tail -n 5 "$tmp/cpu_feat.log"; bad "train $model ${flags[*]}"; continue; }
    rm -rf "$tmp/gpu"
    CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${common[@]}" --model "$model" "${flags[@]}" --dtype fp32 --out "$tmp/gpu" \
        > "$tmp/gpu_feat.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then grep -v '^step' "$tmp/gpu_feat.log" | tail -n 8; bad "train_gpu $model ${flags[*]} (exit $rc)"; continue; fi
    if res=$(compare "$tmp/cpu_feat.log" "$tmp/gpu_feat.log" 2e-5 1e-3); then ok "train_gpu $model ${flags[*]} fp32 == train: $res"
    else bad "train_gpu $model ${flags[*]} fp32 vs train: $res"; paste <(losses "$tmp/cpu_feat.log") <(losses "$tmp/gpu_feat.log"); fi
done

# packed documents (--reset-attention-mask, --reset-position-ids, with --eod-mask-loss): 2 ranks fp32 against
# train -n 2 with the same flags, at --seq-len 32, where every step's windows hold EODs: the CPU losses with the
# resets differ from those with --eod-mask-loss alone at every step, else the runs would not test the resets
docs=("${common[@]}" --seq-len 32 --eod-mask-loss)
for model in tiny-gpt2 tiny-llama; do
    ./train "${docs[@]}" --model "$model" -n 2 > "$tmp/cpu_eod.log" 2>&1 || { tail -n 5 "$tmp/cpu_eod.log"; bad "train -n 2 $model --eod-mask-loss"; continue; }
    ./train "${docs[@]}" --reset-attention-mask --reset-position-ids --model "$model" -n 2 > "$tmp/cpu_docs.log" 2>&1 \
        || { tail -n 5 "$tmp/cpu_docs.log"; bad "train -n 2 $model with the resets"; continue; }
    differ=$(paste -d ' ' <(losses "$tmp/cpu_eod.log") <(losses "$tmp/cpu_docs.log") | awk '$1 != $3 { n++ } END { print n + 0 }')
    [ "$differ" = 3 ] && ok "the resets change train's loss at every step of $model (EODs inside the windows)" \
        || bad "the resets change only $differ of 3 losses of train $model: the data does not test them"
    rm -rf "$tmp/gpu"
    CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${docs[@]}" --reset-attention-mask --reset-position-ids --model "$model" \
        --nproc-per-node 2 --dtype fp32 --out "$tmp/gpu" > "$tmp/gpu_docs.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then grep -v '^step' "$tmp/gpu_docs.log" | tail -n 8; bad "train_gpu $model 2 ranks with the resets (exit $rc)"; continue; fi
    if res=$(compare "$tmp/cpu_docs.log" "$tmp/gpu_docs.log" 2e-5 1e-3); then
        ok "train_gpu $model 2 ranks fp32 --eod-mask-loss --reset-attention-mask --reset-position-ids == train -n 2: $res"
    else bad "train_gpu $model 2 ranks fp32 with the resets vs train -n 2: $res"; paste <(losses "$tmp/cpu_docs.log") <(losses "$tmp/gpu_docs.log"); fi
done
# tensor parallelism: "config ranks dtype flags" (the configs' per-rank slices keep the kernels' widths multiples of 8)
tp_all=()
for cfg in tp_gpt2 tp_qwen2 tp_qwen3; do
    for lay in "2 --tp 2" "4 --tp 2" "4 --tp 4"; do
        for r in "fp32" "fp32 --sp" "fp32 --sp --zero 2" "fp32 --overlap 0" "bf16 --sp"; do
            dtype=${r%% *}; set -- $lay; tp_all+=("$cfg $1 $dtype $2 $3 ${r#"$dtype"}")
        done
    done
done
tp_quick=("tp_gpt2 2 fp32 --tp 2" "tp_qwen2 4 fp32 --tp 2 --sp" "tp_qwen3 4 fp32 --tp 4 --sp --zero 2" "tp_gpt2 4 bf16 --tp 2 --sp --overlap 0")
[ "${EMU_FULL:-0}" = 1 ] && runs=("${tp_all[@]}") || runs=("${tp_quick[@]}")
tpc=(--data "$tmp/shk_text_document" --seq-len 16 --lr 1e-3 --warmup-steps 1 --steps 3 --split 90,10,0 --eval-every 0 --seed 5
     --threads 1 --batch-size 2)
for r in "${runs[@]}"; do
    set -- $r
    cfg=tests/fixtures/configs/$1.json n=$2 dtype=$3; shift 3
    name="${cfg##*/} -n $n $dtype $*"
    cpu_flags=$(echo "$*" | sed 's/--zero [12]//; s/--overlap [01]//')
    rm -rf "$tmp/cpu" "$tmp/gpu"
    [ "$r" = "tp_qwen2 4 fp32 --tp 2 --sp" ] && resume_from=("$cfg" "$n" "$@")
    # shellcheck disable=SC2086
    ./train "${tpc[@]}" --model "$cfg" -n "$n" $cpu_flags --out "$tmp/cpu" > "$tmp/cpu_tp.log" 2>&1 || { tail -n 5 "$tmp/cpu_tp.log"; bad "train $name"; continue; }
    CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${tpc[@]}" --model "$cfg" --nproc-per-node "$n" --dtype "$dtype" "$@" --out "$tmp/gpu" \
        > "$tmp/gpu_tp.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then grep -v '^step' "$tmp/gpu_tp.log" | tail -n 8; bad "train_gpu $name (exit $rc)"; continue; fi
    tpn=$(echo "$*" | sed -n 's/.*--tp \([0-9]*\).*/\1/p') sp=""
    case " $* " in *" --sp "*) sp=", sequence parallel" ;; esac
    grep -q "^tensor parallel: $tpn GPUs per group$sp (" "$tmp/gpu_tp.log" || bad "train_gpu $name: no 'tensor parallel: $tpn GPUs per group$sp' line"
    if [ "$dtype" = fp32 ]; then tl=2e-5; tn=1e-3; tw=1e-3; ts=1e-5; else tl=2e-2; tn=5e-2; tw=2e-2; ts=1e-3; fi
    if res=$(compare "$tmp/cpu_tp.log" "$tmp/gpu_tp.log" "$tl" "$tn"); then ok "train_gpu $name == train: $res"
    else bad "train_gpu $name vs train: $res"; paste <(losses "$tmp/cpu_tp.log") <(losses "$tmp/gpu_tp.log"); fi
    w=$(tests/bin/st_maxdiff "$tmp/cpu/step_000003/model.safetensors" "$tmp/gpu/step_000003/model.safetensors")
    st=$(tests/bin/st_maxdiff "$tmp/cpu/step_000003/train_state.safetensors" "$tmp/gpu/step_000003/train_state.safetensors")
    awk -v w="$w" -v s="$st" -v tw="$tw" -v ts="$ts" 'BEGIN { exit !(w != "" && s != "" && w + 0 <= tw && s + 0 <= ts) }' \
        && ok "train_gpu $name saves the whole model: train's within weights $w, moments $st" \
        || bad "train_gpu $name checkpoint vs train's: weights $w, moments $st"
    [ "$r" = "tp_qwen2 4 fp32 --tp 2 --sp" ] && { rm -rf "$tmp/cpu_r" "$tmp/gpu_r"; mv "$tmp/cpu" "$tmp/cpu_r"; mv "$tmp/gpu" "$tmp/gpu_r"; }
done

# a resume with --tp: each trainer goes on from its own 3-step checkpoint (the GPU slicing the whole model and its
# moments again) to step 4, with the same loss and norm
if [ -d "$tmp/gpu_r" ]; then
    set -- "${resume_from[@]}"
    cfg=$1 n=$2; shift 2
    ./train "${tpc[@]}" --model "$cfg" -n "$n" "$@" --steps 4 --resume --out "$tmp/cpu_r" > "$tmp/cpu_r.log" 2>&1 || bad "train resume $*"
    CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${tpc[@]}" --model "$cfg" --nproc-per-node "$n" --dtype fp32 "$@" --steps 4 --resume \
        --out "$tmp/gpu_r" > "$tmp/gpu_r.log" 2>&1 || { grep -v '^step' "$tmp/gpu_r.log" | tail -n 8; bad "train_gpu resume $*"; }
    a=$(losses "$tmp/cpu_r.log") b=$(losses "$tmp/gpu_r.log")
    if [ -n "$a" ] && [ "$(echo "$a" | wc -l)" = 1 ] && [ "$a" = "$b" ]; then ok "train_gpu ${cfg##*/} -n $n $* resumed at step 4: '$a', as train"
    else bad "train_gpu ${cfg##*/} -n $n $* resumed: '$b', train: '$a'"; fi
fi

# pipeline parallelism: train_gpu --pp P (1F1B over --grad-accum 4, ncclSend / ncclRecv between the stages) against
# train with the same flags: "config ranks dtype flags"; GPT-2 (tied embeddings: the first and last stage's copies)
# with the evaluation and a sample through the pipeline and --pp-trace, LLaMA untied in bf16 (then its resumes),
# 2 data-parallel pipelines with ZeRO-2, LLaMA tied with 2 stages x 2 tensor-parallel (--sp), evaluated and sampled;
# EMU_FULL adds 4 stages, --pp-layers with --overlap 0, bf16 with 2 pipelines and with --tp
ppc=(--data "$tmp/shk_text_document" --seq-len 16 --lr 1e-3 --warmup-steps 1 --split 90,10,0 --seed 5 --threads 1
     --grad-accum 4 --eval-every 0 --tokenizer data/gpt2_tokenizer.json)
pp_quick=("pp_gpt2 2 fp32 --pp 2 --batch-size 2 --steps 3 --eval-every 3 --eval-steps 2 --sample-every 3 --sample-len 8"
          "pp_llama_untied 2 bf16 --pp 2 --batch-size 2 --steps 4 --save-every 3"
          "pp_gpt2 4 fp32 --pp 2 --batch-size 1 --steps 3 --zero 2"
          "pp_llama_tied 4 fp32 --pp 2 --tp 2 --sp --batch-size 2 --steps 3 --eval-every 3 --eval-steps 2 --sample-every 3 --sample-len 8")
pp_more=("pp_llama_tied 4 fp32 --pp 4 --batch-size 2 --steps 3" "pp_llama_tied 2 fp32 --pp 2 --pp-layers 1,3 --batch-size 2 --steps 3 --overlap 0"
         "pp_llama_untied 4 bf16 --pp 2 --batch-size 1 --steps 3 --zero 1" "pp_gpt2 4 bf16 --pp 2 --tp 2 --batch-size 2 --steps 3 --overlap 0"
         "pp_llama_untied 4 fp32 --pp 2 --tp 2 --sp --batch-size 2 --steps 3 --zero 2")
[ "${EMU_FULL:-0}" = 1 ] && runs=("${pp_quick[@]}" "${pp_more[@]}") || runs=("${pp_quick[@]}")
val() { grep -E '^step [0-9]+ \| val loss' "$1" | tail -n 1 | awk '{print $NF}'; }
sample() { sed -n '/^--- sample at step/,/^---$/p' "$1" | tr '\n' '|'; }
for r in "${runs[@]}"; do
    set -- $r
    cfg=tests/fixtures/configs/$1.json n=$2 dtype=$3; shift 3
    name="${cfg##*/} -n $n $dtype $*"
    steps=$(echo "$*" | sed -n 's/.*--steps \([0-9]*\).*/\1/p')
    cpu_flags=$(echo "$*" | sed 's/--zero [12]//; s/--overlap [01]//')
    trace=()
    [ "$n" = 2 ] && case " $* " in *" --sample-every "*) trace=(--pp-trace "$tmp/trace.json") ;; esac
    rm -rf "$tmp/cpu" "$tmp/gpu" "$tmp"/trace.json.rank*
    # shellcheck disable=SC2086
    ./train "${ppc[@]}" --model "$cfg" -n "$n" $cpu_flags --out "$tmp/cpu" > "$tmp/cpu_pp.log" 2>&1 || { tail -n 5 "$tmp/cpu_pp.log"; bad "train $name"; continue; }
    CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${ppc[@]}" --model "$cfg" --nproc-per-node "$n" --dtype "$dtype" "$@" "${trace[@]}" \
        --out "$tmp/gpu" > "$tmp/gpu_pp.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then grep -v '^step' "$tmp/gpu_pp.log" | tail -n 8; bad "train_gpu $name (exit $rc)"; continue; fi
    ppn=$(echo "$*" | sed -n 's/.*--pp \([0-9]*\).*/\1/p')
    grep -q "^pipeline: $ppn stages, 1F1B over 4 micro-batches" "$tmp/gpu_pp.log" || bad "train_gpu $name: no 'pipeline: $ppn stages' line"
    if [ "$dtype" = fp32 ]; then tl=2e-5; tn=1e-3; tw=1e-3; ts=1e-5; else tl=2e-2; tn=5e-2; tw=2e-2; ts=1e-3; fi
    if res=$(compare "$tmp/cpu_pp.log" "$tmp/gpu_pp.log" "$tl" "$tn" "$steps"); then ok "train_gpu $name == train: $res"
    else bad "train_gpu $name vs train: $res"; paste <(losses "$tmp/cpu_pp.log") <(losses "$tmp/gpu_pp.log"); fi
    last=$(printf 'step_%06d' "$steps")
    w=$(tests/bin/st_maxdiff "$tmp/cpu/$last/model.safetensors" "$tmp/gpu/$last/model.safetensors")
    st=$(tests/bin/st_maxdiff "$tmp/cpu/$last/train_state.safetensors" "$tmp/gpu/$last/train_state.safetensors")
    awk -v w="$w" -v s="$st" -v tw="$tw" -v ts="$ts" 'BEGIN { exit !(w != "" && s != "" && w + 0 <= tw && s + 0 <= ts) }' \
        && ok "train_gpu $name saves the whole model: train's within weights $w, moments $st" \
        || bad "train_gpu $name checkpoint vs train's: weights $w, moments $st"
    case " $* " in *" --sample-every "*)
        v1=$(val "$tmp/cpu_pp.log") v2=$(val "$tmp/gpu_pp.log")
        awk -v a="$v1" -v b="$v2" 'BEGIN { d = a - b; exit !(a != "" && (d < 0 ? -d : d) <= 2e-4) }' \
            && ok "train_gpu $name: val loss through the pipeline $v2 (train $v1)" || bad "train_gpu $name: val loss $v2, train $v1"
        s1=$(sample "$tmp/cpu_pp.log") s2=$(sample "$tmp/gpu_pp.log")
        [ -n "$s1" ] && [ "$s1" = "$s2" ] && ok "train_gpu $name: the sample through the pipeline is train's: $s2" \
            || bad "train_gpu $name: sample '$s2' vs train's '$s1'"
    esac
    if [ ${#trace[@]} -gt 0 ]; then   # each rank: a forward and a backward of each micro-batch of each step
        events=$(cat "$tmp"/trace.json.rank* 2>/dev/null | grep -c '"cat":"[FB]"')
        [ "$events" = $((n * 2 * 4 * steps)) ] && ok "train_gpu $name --pp-trace: $events forwards and backwards in the ranks' files" \
            || bad "train_gpu $name --pp-trace: $events forward and backward events, want $((n * 2 * 4 * steps))"
    fi
    [ "$r" = "${pp_quick[1]}" ] && { rm -rf "$tmp/gpu_pr"; mv "$tmp/gpu" "$tmp/gpu_pr"; pr_cfg=$cfg; cp "$tmp/gpu_pp.log" "$tmp/gpu_pr.log"; }
done

# resumes of the bf16 LLaMA's step-3 checkpoint: with the same layout its step 4 is bit for bit the uninterrupted
# run's (weights, moments); with one rank (a whole model on one GPU) it says the layout changed and goes on from
# the same weights
if [ -d "$tmp/gpu_pr/step_000003" ]; then
    set -- ${pp_quick[1]}
    shift 3
    for lay in same one; do
        d="$tmp/gpu_pr_$lay"
        rm -rf "$d"; mkdir -p "$d"; cp -r "$tmp/gpu_pr/step_000003" "$d/"; echo step_000003 > "$d/latest"
        if [ $lay = same ]; then flags=(--nproc-per-node 2 "$@"); else flags=(--batch-size 2 --steps 4 --save-every 3); fi
        CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${ppc[@]}" --model "$pr_cfg" --dtype bf16 "${flags[@]}" --resume --out "$d" \
            > "$d.log" 2>&1 || { grep -v '^step' "$d.log" | tail -n 8; bad "train_gpu --pp resume ($lay layout)"; continue; }
        if [ $lay = same ]; then
            w=$(tests/bin/st_maxdiff "$tmp/gpu_pr/step_000004/model.safetensors" "$d/step_000004/model.safetensors")
            st=$(tests/bin/st_maxdiff "$tmp/gpu_pr/step_000004/train_state.safetensors" "$d/step_000004/train_state.safetensors")
            a=$(losses "$tmp/gpu_pr.log" | tail -n 1) b=$(losses "$d.log")
            [ "$w" = 0.000e+00 ] && [ "$st" = 0.000e+00 ] && [ -n "$a" ] && [ "$a" = "$b" ] \
                && ok "train_gpu --pp 2 bf16 resumed at step 4 with the same layout: '$b', bit for bit the uninterrupted run" \
                || bad "train_gpu --pp 2 bf16 resumed: '$b' (uninterrupted '$a'), weights $w, moments $st"
        else
            grep -q "^resume: the checkpoint was saved with --tp 1 --pp 2, this run has --tp 1 --pp 1" "$d.log" \
                && ok "train_gpu with one rank resumes the --pp 2 checkpoint, saying the layout changed" \
                || bad "train_gpu one-rank resume of a --pp 2 checkpoint: no layout line"
            res=$(compare "$tmp/gpu_pr.log" "$d.log" 2e-2 5e-2 1 4) && ok "train_gpu one rank from the --pp 2 checkpoint: step 4 as the pipeline's: $res" \
                || { bad "train_gpu one rank from the --pp 2 checkpoint vs the pipeline: $res"; losses "$d.log"; }
        fi
    done
fi

# what train_gpu refuses with --tp / --pp
refuse_gpu() {   # expected-message flags...
    local want=$1; shift
    if CUDA_EMU_DEVICES=4 "$emu/train_gpu_emu" "${tpc[@]}" --dtype fp32 "$@" > "$tmp/e.out" 2> "$tmp/e.err"; then bad "train_gpu accepted: $*"
    elif grep -q -- "$want" "$tmp/e.err"; then ok "train_gpu refused $*: $(head -n 1 "$tmp/e.err")"
    else bad "train_gpu refused $* without '$want': $(head -n 3 "$tmp/e.err")"; fi
}
refuse_gpu "--recompute 2" --model tests/fixtures/configs/tp_gpt2.json -n 2 --tp 2 --sp --recompute 2
refuse_gpu "does not divide num_attention_heads 4" --model tests/fixtures/configs/tp_gpt2.json -n 8 --tp 8
refuse_gpu "each rank's MLP width divisible by 8 (intermediate_size 344 / 2 = 172)" --model tiny-llama -n 2 --tp 2
refuse_gpu "--tp 1 x --pp 2 does not divide the 3 processes of -n" --model tests/fixtures/configs/pp_gpt2.json -n 3 --pp 2
refuse_gpu "--pp 5: 5 stages need at least as many layers (the model has 4)" --model tests/fixtures/configs/pp_gpt2.json -n 5 --pp 5
refuse_gpu "--pp-layers 1,2: give 3 positive layer counts" --model tests/fixtures/configs/pp_gpt2.json -n 3 --pp 3 --pp-layers 1,2
refuse_gpu "--pp 2: the stages' layers add up to 5, the model has 4" --model tests/fixtures/configs/pp_gpt2.json -n 2 --pp 2 --pp-layers 2,3
exit $fail
