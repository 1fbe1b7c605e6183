#!/usr/bin/env bash
# dev/gpu_check.sh — on a machine with an NVIDIA Hopper GPU: build train_gpu and test_gpu for sm_90, run the
# kernel/model tests, compute-sanitizer on the kernel tests and on short runs, determinism and resume checks,
# a 2-GPU run where there are 2 GPUs, and the benchmarks (GPT-2 124M at T=1024, LLaMA ~1B at T=2048, bf16); the
# last thing printed is a short table. ARCH=sm_80 etc. builds for another GPU.
#   bash dev/gpu_check.sh            (from anywhere; writes under out/gpu_check/)
set -uo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-sm_90}
OUT=out/gpu_check
mkdir -p "$OUT" tests/bin
NVFLAGS="-O3 -arch=$ARCH -std=c++17 -D_GNU_SOURCE -Xcompiler -fopenmp"
LIBS="prepro/tokenizer.c -lcublas -lcublasLt -lnccl -ljansson -lpcre2-8 -lm"
declare -a ROWS
row() { ROWS+=("$(printf '%-34s %s' "$1" "$2")"); }
say() { echo; echo "=== $*"; }

say "build ($ARCH)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if ! nvcc $NVFLAGS -o train_gpu train_gpu.cu $LIBS; then echo "build of train_gpu failed"; exit 1; fi
if ! nvcc $NVFLAGS -I. -o tests/bin/test_gpu tests/test_gpu.cu $LIBS; then echo "build of test_gpu failed"; exit 1; fi
row "build" "ok"

say "test_gpu: kernels vs llmtrain.h, model vs CPU, 20 steps vs CPU"
./tests/bin/test_gpu 2>&1 | tee "$OUT/test_gpu.log"
rc=${PIPESTATUS[0]}
row "test_gpu" "$(tail -n 1 "$OUT/test_gpu.log") (exit $rc)"
grep -E "^FAIL" "$OUT/test_gpu.log" | head -n 20

say "data: the bundled corpus as .bin/.idx"
DATA=out/tinyshakespeare_text_document
if [ ! -f "$DATA.idx" ]; then
  make prepro/prepro >/dev/null && ./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph \
    --tokenizer data/gpt2_tokenizer.json --output-prefix out/tinyshakespeare --append-eod || { echo "prepro failed"; exit 1; }
fi

say "compute-sanitizer (the kernel tests, then short runs)"
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck synccheck; do
    log="$OUT/sanitize_test_gpu_$tool.log"
    compute-sanitizer --tool "$tool" --error-exitcode 9 ./tests/bin/test_gpu --quick > "$log" 2>&1
    r=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)
    echo "$tool test_gpu --quick: exit $r ${summary} ($(tail -n 1 "$log"))"
    row "sanitizer $tool test_gpu --quick" "exit $r ${summary:-}"
  done
  for spec in "memcheck tiny-gpt2 tc" "memcheck tiny-llama tc" "memcheck tiny-qwen3 plain" "racecheck tiny-llama tc" \
              "synccheck tiny-gpt2 tc" "memcheck tiny-gpt2 tc --fuse-gelu 1"; do
    set -- $spec
    log="$OUT/sanitize_$1_$2_$3${4:+_fused}.log"
    compute-sanitizer --tool "$1" --error-exitcode 9 ./train_gpu --data "$DATA" --model "$2" --attention "$3" \
      --batch-size 2 --seq-len 80 --steps 2 --eval-every 0 --recompute 2 "${@:4}" > "$log" 2>&1
    r=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)
    echo "$1 $2 ($3 attention${4:+, $4 $5}): exit $r ${summary}"
    row "sanitizer $1 $2 $3${4:+ fused}" "exit $r ${summary:-}"
  done
else
  echo "compute-sanitizer not found"; row "sanitizer" "not found"
fi

say "training smoke run (tiny-gpt2, 200 steps, loss should fall)"
./train_gpu --data "$DATA" --model tiny-gpt2 --batch-size 8 --seq-len 64 --steps 200 --lr 3e-3 --warmup-steps 20 \
  --split 95,5,0 --eval-every 100 --eval-steps 8 --log-every 50 2>&1 | tee "$OUT/smoke.log"
row "smoke tiny-gpt2 val loss" "$(grep 'val loss' "$OUT/smoke.log" | awk '{print $6}' | tr '\n' ' ')"

# the step lines without the timing columns
steps_of() { grep -E '^step +[0-9]+/' "$1" | sed 's/ | [0-9.]* ms.*//'; }

say "determinism and resume (tiny-llama, bf16, 8 steps; then 4 steps + --resume to 8)"
det=(--data "$DATA" --model tiny-llama --batch-size 4 --seq-len 96 --steps 8 --decay-steps 8 --warmup-steps 2 --lr 3e-3
     --eval-every 0 --log-every 1)   # the schedule fixed, so the 4-step part runs the same steps
rm -rf "$OUT/det_a" "$OUT/det_b"
./train_gpu "${det[@]}" --out "$OUT/det_a" > "$OUT/det_a.log" 2>&1
./train_gpu "${det[@]}" > "$OUT/det_a2.log" 2>&1
if diff <(steps_of "$OUT/det_a.log") <(steps_of "$OUT/det_a2.log") > /dev/null && [ -n "$(steps_of "$OUT/det_a.log")" ]; then
  r="same losses and norms"; else r="DIFFERENT (see $OUT/det_a*.log)"; fi
echo "two runs: $r"; row "determinism" "$r"
./train_gpu "${det[@]}" --steps 4 --out "$OUT/det_b" > "$OUT/det_b1.log" 2>&1
./train_gpu "${det[@]}" --resume --out "$OUT/det_b" > "$OUT/det_b2.log" 2>&1
if diff <(steps_of "$OUT/det_a.log" | tail -n 4) <(steps_of "$OUT/det_b2.log") > /dev/null && [ -n "$(steps_of "$OUT/det_b2.log")" ]; then
  r="steps 5-8 as in the uninterrupted run"; else r="DIFFERENT (see $OUT/det_b2.log)"; fi
echo "resume: $r"; row "resume" "$r"

say "the NCCL path on one GPU (--nccl 1: per-layer reduces overlapped, or one reduce-scatter) == no NCCL"
for ov in 1 0; do
  ./train_gpu "${det[@]}" --nccl 1 --overlap $ov > "$OUT/nccl1_ov$ov.log" 2>&1
  if diff <(steps_of "$OUT/det_a.log") <(steps_of "$OUT/nccl1_ov$ov.log") > /dev/null && [ -n "$(steps_of "$OUT/nccl1_ov$ov.log")" ]; then
    r="same losses and norms"; else r="DIFFERENT (see $OUT/nccl1_ov$ov.log)"; fi
  echo "--nccl 1 --overlap $ov: $r"; row "NCCL 1 rank, overlap $ov" "$r"
done
./train_gpu "${det[@]}" --zero 2 > "$OUT/zero2.log" 2>&1
if diff <(steps_of "$OUT/det_a.log") <(steps_of "$OUT/zero2.log") > /dev/null && [ -n "$(steps_of "$OUT/zero2.log")" ]; then
  r="same losses and norms"; else r="DIFFERENT (see $OUT/zero2.log)"; fi
echo "--zero 2 (one rank): $r"; row "ZeRO-2 1 rank" "$r"

ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$ngpu" -ge 2 ]; then
  say "2 GPUs (ZeRO-1 over NCCL): tiny-llama, 100 steps, loss should fall"
  ./train_gpu --data "$DATA" --model tiny-llama --nproc-per-node 2 --batch-size 4 --seq-len 128 --steps 100 \
    --lr 3e-3 --warmup-steps 10 --eval-every 100 --eval-steps 8 --log-every 25 2>&1 | tee "$OUT/dp2.log"
  row "2 GPUs tiny-llama val loss" "$(grep 'val loss' "$OUT/dp2.log" | awk '{print $6}' | tr '\n' ' ')"
  ./train_gpu "${det[@]}" --nproc-per-node 2 --batch-size 2 > "$OUT/dp2_ov1.log" 2>&1
  ./train_gpu "${det[@]}" --nproc-per-node 2 --batch-size 2 --overlap 0 > "$OUT/dp2_ov0.log" 2>&1
  if diff <(steps_of "$OUT/dp2_ov1.log") <(steps_of "$OUT/dp2_ov0.log") > /dev/null && [ -n "$(steps_of "$OUT/dp2_ov1.log")" ]; then
    r="same losses and norms"; else r="DIFFERENT (see $OUT/dp2_ov*.log)"; fi
  echo "2 GPUs, overlapped reduces vs reduce-scatter: $r"; row "2 GPUs overlap 1 vs 0" "$r"
fi

# mean tok/s and MFU over the steps after the first 5, and the peak memory, from the step lines
bench() {
  name=$1; shift
  log="$OUT/bench_$name.log"
  ./train_gpu --data "$DATA" --eval-every 0 --log-every 1 "$@" > "$log" 2>&1
  r=$?
  stats=$(grep -E '^step +[0-9]+/' "$log" | awk -F'|' 'NR > 5 {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /tok\/s/) { split($i, a, " "); tps += a[1]; n++ }
        if ($i ~ /MFU/) { split($i, b, " "); sub("%", "", b[2]); mfu += b[2] }
        if ($i ~ /mem/) { split($i, c, " "); mem = c[2] }
      } }
      END { if (n) printf "%.0f tok/s  MFU %.1f%%  mem %s GiB", tps / n, mfu / n, mem; else printf "no steps" }')
  [ $r -eq 0 ] || stats="FAILED (exit $r): $(tail -n 1 "$log")"
  echo "$name: $stats"
  row "bench $name" "$stats"
}

say "benchmarks"
if nvcc $NVFLAGS -I. -o "$OUT/bench_attention" dev/cuda/bench_attention.cu $LIBS; then
  "$OUT/bench_attention" | tee "$OUT/bench_attention.log"
  while read -r line; do row "attention ${line:0:16}" "${line:37}"; done < <(grep -v skipped "$OUT/bench_attention.log")
fi
bench gpt2-124m-T1024-bf16 --model gpt2-124m --batch-size 32 --seq-len 1024 --steps 30 --recompute 0
bench gpt2-124m-T1024-bf16-rc1 --model gpt2-124m --batch-size 32 --seq-len 1024 --steps 30 --recompute 1
bench llama-1b-T2048-bf16 --model llama-1b --batch-size 8 --seq-len 2048 --steps 20 --recompute 1

echo
echo "=== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"
for r in "${ROWS[@]}"; do echo "$r"; done
