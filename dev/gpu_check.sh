#!/usr/bin/env bash
# dev/gpu_check.sh — on a machine with an NVIDIA Hopper GPU: build train_gpu and test_gpu for sm_90, run the
# kernel/model tests, compute-sanitizer on the kernel tests and on short runs, determinism, resume and NCCL-path
# checks, a 2-GPU run where there are 2 GPUs (phase "tests"); then the benchmarks: ours (GPT-2 124M at T=1024,
# LLaMA ~1B at T=2048, the attention kernels), PyTorch (dev/bench_torch_gpu.py) and llm.c's train_gpt2cu (from
# .peers/llm.c, see dev/device_kit.sh) side by side on the same GPU (phase "bench"). The last thing printed is a
# short table; out/gpu_check/summary.txt holds it.
#   bash dev/gpu_check.sh [tests|bench|all]     (default all; each phase fits a 10-minute call)
#   bash dev/gpu_check.sh build                 on the CPU machine, beforehand: builds train_gpu, tests/bin/test_gpu
#                                               and tests/bin/bench_attention with nvcc and stamps them with the
#                                               sources' checksum; carried to the GPU machine, they are used as they
#                                               are (no GPU minutes spent compiling) while the sources match
#   ARCH=sm_80 bash dev/gpu_check.sh            builds for another GPU
# First the driver: its version, and a stop with a clear line when it is too old for the CUDA 13 runtime. Every
# stage appends its line to out/gpu_check/summary.txt as soon as it is over, so a run cut off keeps what it did.
# A failure to prepare the data skips only the runs that need data (test_gpu needs none).
# Where the machine reaches no package registry, run dev/device_kit.sh first where it does, and take .devkit/
# (and .peers/) along: the libraries this script finds missing come from there.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-all}
ARCH=${ARCH:-sm_90}
RES=out/gpu_check
mkdir -p "$RES" tests/bin
declare -a ROWS
row() { ROWS+=("$(printf '%-36s %s' "$1" "$2")"); printf '%-36s %s\n' "$1" "$2" >> "$RES/summary.txt"; }
say() { echo; echo "=== $*"; }
[ "$PHASE" = build ] || : > "$RES/summary.txt"
# nvcc as the Makefile finds it
NVCC=${NVCC:-$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)}
# a heuristic or epilogue that cuBLASLt refuses is named on stderr, not only a status number
export CUBLASLT_LOG_LEVEL=1

# the prebuilt binaries and what they are built from: a stamp beside each holds the sources' checksum
SOURCES=(train_gpu.cu train_common.h flags.h llmtrain.h prepro/tokenizer.c prepro/tokenizer.h tests/test_gpu.cu
         dev/cuda/bench_attention.cu)
sources_sum() { cat "${SOURCES[@]}" 2>/dev/null | sha256sum | cut -d' ' -f1; }
# prebuilt BIN: present, and built from these sources (its stamp matches; without a stamp: newer than each source)
prebuilt() {
  [ -x "$1" ] || return 1
  if [ -f "$1.stamp" ]; then [ "$(cat "$1.stamp")" = "$(sources_sum)" ]; return; fi
  for f in "${SOURCES[@]}"; do [ ! -e "$f" ] || [ "$1" -nt "$f" ] || return 1; done
}

if [ "$PHASE" != build ]; then
  say "driver"
  drv=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
  cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9.]*' | grep -o '[0-9.]*$' | head -n 1)
  echo "driver ${drv:-none}, CUDA ${cuda:-unknown} supported"
  if [ -z "$drv" ]; then
    echo "FAIL: no NVIDIA driver answers (nvidia-smi): no GPU to check"; row "driver" "FAIL: nvidia-smi finds no driver"; exit 1
  fi
  # CUDA 13 needs a driver of the 580 series or later; nvidia-smi names the newest CUDA the driver supports
  if [ "${cuda%%.*}" -lt 13 ] 2>/dev/null || { [ -z "$cuda" ] && [ "${drv%%.*}" -lt 580 ]; }; then
    echo "FAIL: driver $drv supports CUDA ${cuda:-< 13} only: the CUDA 13 runtime of these binaries needs driver >= 580"
    row "driver" "FAIL: $drv (CUDA ${cuda:-?}) is older than CUDA 13 needs (>= 580)"; exit 1
  fi
  row "driver" "$drv (CUDA $cuda)"
fi

# ---- toolchain: jansson and PCRE2 from the system or .devkit/; NCCL from the system, CUDA's folder, the
# nvidia-nccl Python package, or .devkit/nccl.h with whatever libnccl.so.2 the machine has
INC=""; LIBP=""
if [ -d .devkit ] && ! echo '#include <jansson.h>
#include <pcre2.h>' | cc -DPCRE2_CODE_UNIT_WIDTH=8 -E -x c - > /dev/null 2>&1; then
  KIT=/tmp/llmtrain_devkit
  mkdir -p "$KIT"
  for f in .devkit/*.deb; do [ -e "$f" ] && dpkg -x "$f" "$KIT"; done
  INC="-I$KIT/usr/include"; LIBP="-L$KIT/usr/lib/x86_64-linux-gnu"
  export LD_LIBRARY_PATH="$KIT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "toolchain: jansson and PCRE2 from .devkit"
fi
PYNCCL=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null || true)
NCCL_INC=""
for d in /usr/include /usr/local/cuda/include /usr/local/include ${PYNCCL:+"$PYNCCL/include"} .devkit; do
  if [ -f "$d/nccl.h" ]; then NCCL_INC=$d; break; fi
done
NCCL_LIB=""
for d in /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/lib ${PYNCCL:+"$PYNCCL/lib"}; do
  if [ -f "$d/libnccl.so" ]; then NCCL_LIB="-L$d -lnccl"; break; fi
  if [ -f "$d/libnccl.so.2" ]; then NCCL_LIB="-L$d -l:libnccl.so.2"; export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done
[ -n "$NCCL_INC" ] && [ "$NCCL_INC" != /usr/include ] && INC="$INC -I$NCCL_INC"
echo "toolchain: NCCL header in ${NCCL_INC:-(none)}, library ${NCCL_LIB:-(none)}; nvcc ${NVCC:-(none)}"
NVFLAGS="-O3 -arch=$ARCH -std=c++17 -D_GNU_SOURCE -Xcompiler -fopenmp $INC"
LIBS="prepro/tokenizer.c $LIBP -lcublas -lcublasLt $NCCL_LIB -ljansson -lpcre2-8 -lm"

# build_one BIN SOURCE [FLAGS]: the prebuilt binary when it matches the sources, else nvcc (stamped)
build_one() {
  bin=$1 src=$2; shift 2
  if [ "$PHASE" != build ] && prebuilt "$bin"; then echo "$bin: prebuilt, used as it is"; return 0; fi
  [ -n "$NVCC" ] || { echo "$bin: no nvcc, and no prebuilt binary for these sources"; return 1; }
  [ -n "$NCCL_INC" ] && [ -n "$NCCL_LIB" ] || { echo "$bin: NCCL not found (header: ${NCCL_INC:-none}, library: ${NCCL_LIB:-none})"; return 1; }
  "$NVCC" $NVFLAGS "$@" -o "$bin" "$src" $LIBS && sources_sum > "$bin.stamp"
}

say "build ($ARCH)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
if ! build_one train_gpu train_gpu.cu; then echo "build of train_gpu failed"; row "build" "FAILED: train_gpu"; exit 1; fi
if ! build_one tests/bin/test_gpu tests/test_gpu.cu -Itests -I.; then echo "build of test_gpu failed"; row "build" "FAILED: test_gpu"; exit 1; fi
build_one tests/bin/bench_attention dev/cuda/bench_attention.cu -I. || echo "build of bench_attention failed"
if [ "$PHASE" = build ]; then echo "built and stamped: train_gpu tests/bin/test_gpu tests/bin/bench_attention"; exit 0; fi
row "build" "ok ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"

# the bundled corpus as .bin/.idx: from .devkit (made by dev/device_kit.sh), else made here
DATA=.devkit/tinyshakespeare_text_document
if [ ! -f "$DATA.idx" ]; then
  DATA=out/tinyshakespeare_text_document
  if [ ! -f "$DATA.idx" ]; then
    make prepro/prepro >/dev/null && ./prepro/prepro --input data/tinyshakespeare.txt --txt-mode paragraph \
      --tokenizer data/gpt2_tokenizer.json --output-prefix out/tinyshakespeare --append-eod || true
  fi
fi
if [ -f "$DATA.idx" ]; then HAVE_DATA=1; row "data" "$DATA"
else HAVE_DATA=0; echo "data preparation failed: the runs that need data are skipped"; row "data" "FAILED: runs skipped"; fi

# the step lines without the timing columns
steps_of() { grep -E '^step +[0-9]+/' "$1" | sed 's/ | [0-9.]* ms.*//'; }
same_steps() {   # name, reference log, log: the step lines must agree
  if diff <(steps_of "$2") <(steps_of "$3") > /dev/null && [ -n "$(steps_of "$3")" ]; then r="same losses and norms"
  else r="DIFFERENT (see $3)"; fi
  echo "$1: $r"; row "$1" "$r"
}

if [ "$PHASE" = tests ] || [ "$PHASE" = all ]; then
  say "test_gpu: kernels vs llmtrain.h, model vs CPU, 20 steps vs CPU, NCCL paths on one rank"
  timeout 300 ./tests/bin/test_gpu 2>&1 | tee "$RES/test_gpu.log"
  rc=${PIPESTATUS[0]}
  row "test_gpu" "$(tail -n 1 "$RES/test_gpu.log") (exit $rc)"
  grep -E "^FAIL" "$RES/test_gpu.log" | head -n 20
  grep -i "cublaslt" "$RES/test_gpu.log" | grep -iv "^ok" | head -n 5
fi

SAN=$(command -v compute-sanitizer 2>/dev/null || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ "$PHASE" = tests ] || [ "$PHASE" = all ]; then
  say "compute-sanitizer on the kernel tests (no data needed)"
  if [ -n "$SAN" ]; then
    for tool in memcheck racecheck synccheck; do
      log="$RES/sanitize_test_gpu_$tool.log"
      timeout 240 "$SAN" --tool "$tool" --error-exitcode 9 ./tests/bin/test_gpu --quick > "$log" 2>&1
      r=$?
      summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)
      echo "$tool test_gpu --quick: exit $r ${summary}"
      row "sanitizer $tool test_gpu --quick" "exit $r ${summary:-}"
    done
  else
    echo "compute-sanitizer not found"; row "sanitizer" "not found"
  fi
fi

if { [ "$PHASE" = tests ] || [ "$PHASE" = all ]; } && [ "$HAVE_DATA" = 0 ]; then
  row "runs with data" "skipped: no data"
elif [ "$PHASE" = tests ] || [ "$PHASE" = all ]; then

  say "determinism, resume, the NCCL paths (tiny-llama, bf16, 8 steps)"
  det=(--data "$DATA" --model tiny-llama --batch-size 4 --seq-len 96 --steps 8 --decay-steps 8 --warmup-steps 2 --lr 3e-3
       --eval-every 0 --log-every 1)   # the schedule fixed, so a 4-step part runs the same steps
  rm -rf "$RES/det_a" "$RES/det_b"
  ./train_gpu "${det[@]}" --out "$RES/det_a" > "$RES/det_a.log" 2>&1
  ./train_gpu "${det[@]}" > "$RES/det_a2.log" 2>&1
  same_steps "determinism (two runs)" "$RES/det_a.log" "$RES/det_a2.log"
  ./train_gpu "${det[@]}" --steps 4 --out "$RES/det_b" > "$RES/det_b1.log" 2>&1
  ./train_gpu "${det[@]}" --resume --out "$RES/det_b" > "$RES/det_b2.log" 2>&1
  if diff <(steps_of "$RES/det_a.log" | tail -n 4) <(steps_of "$RES/det_b2.log") > /dev/null && [ -n "$(steps_of "$RES/det_b2.log")" ]; then
    r="steps 5-8 as in the uninterrupted run"; else r="DIFFERENT (see $RES/det_b2.log)"; fi
  echo "resume: $r"; row "resume" "$r"
  for ov in 1 0; do
    ./train_gpu "${det[@]}" --nccl 1 --overlap $ov > "$RES/nccl1_ov$ov.log" 2>&1
    same_steps "NCCL 1 rank, overlap $ov" "$RES/det_a.log" "$RES/nccl1_ov$ov.log"
  done
  ./train_gpu "${det[@]}" --zero 2 > "$RES/zero2.log" 2>&1
  same_steps "ZeRO-2, 1 rank" "$RES/det_a.log" "$RES/zero2.log"

  say "training smoke run (tiny-gpt2, 200 steps, loss should fall)"
  ./train_gpu --data "$DATA" --model tiny-gpt2 --batch-size 8 --seq-len 64 --steps 200 --lr 3e-3 --warmup-steps 20 \
    --split 95,5,0 --eval-every 100 --eval-steps 8 --log-every 50 2>&1 | tee "$RES/smoke.log"
  row "smoke tiny-gpt2 val loss" "$(grep 'val loss' "$RES/smoke.log" | awk '{print $6}' | tr '\n' ' ')"

  ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
  if [ "$ngpu" -ge 2 ]; then
    say "2 GPUs (ZeRO over NCCL): tiny-llama"
    ./train_gpu --data "$DATA" --model tiny-llama --nproc-per-node 2 --batch-size 4 --seq-len 128 --steps 100 \
      --lr 3e-3 --warmup-steps 10 --eval-every 100 --eval-steps 8 --log-every 25 2>&1 | tee "$RES/dp2.log"
    row "2 GPUs tiny-llama val loss" "$(grep 'val loss' "$RES/dp2.log" | awk '{print $6}' | tr '\n' ' ')"
    ./train_gpu "${det[@]}" --nproc-per-node 2 --batch-size 2 > "$RES/dp2_ov1.log" 2>&1
    ./train_gpu "${det[@]}" --nproc-per-node 2 --batch-size 2 --overlap 0 > "$RES/dp2_ov0.log" 2>&1
    ./train_gpu "${det[@]}" --nproc-per-node 2 --batch-size 2 --zero 2 > "$RES/dp2_z2.log" 2>&1
    same_steps "2 GPUs overlap 1 vs 0" "$RES/dp2_ov0.log" "$RES/dp2_ov1.log"
    same_steps "2 GPUs ZeRO-2 vs ZeRO-1" "$RES/dp2_ov0.log" "$RES/dp2_z2.log"
  fi

  say "compute-sanitizer on short runs"
  if [ -n "$SAN" ]; then
    for spec in "memcheck tiny-gpt2 tc" "memcheck tiny-llama tc" "memcheck tiny-qwen3 plain" "racecheck tiny-llama tc" \
                "synccheck tiny-gpt2 tc" "memcheck tiny-gpt2 tc --fuse-gelu 1" "memcheck tiny-llama tc --zero 2"; do
      set -- $spec
      log="$RES/sanitize_$1_$2_$3${4:+_$4_$5}.log"
      timeout 120 "$SAN" --tool "$1" --error-exitcode 9 ./train_gpu --data "$DATA" --model "$2" --attention "$3" \
        --batch-size 2 --seq-len 80 --steps 2 --eval-every 0 --recompute 2 "${@:4}" > "$log" 2>&1
      r=$?
      summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1)
      echo "$1 $2 ($3 attention${4:+, $4 $5}): exit $r ${summary}"
      row "sanitizer $1 $2 $3${4:+ $4 $5}" "exit $r ${summary:-}"
    done
  else
    echo "compute-sanitizer not found"; row "sanitizer" "not found"
  fi
fi

if { [ "$PHASE" = bench ] || [ "$PHASE" = all ]; } && [ "$HAVE_DATA" = 0 ]; then
  row "benchmarks" "skipped: no data"
elif [ "$PHASE" = bench ] || [ "$PHASE" = all ]; then
  # mean tok/s and MFU over the steps after the first 5, and the peak memory, from our step lines
  bench() {
    name=$1; shift
    log="$RES/bench_$name.log"
    timeout 300 ./train_gpu --data "$DATA" --eval-every 0 --log-every 1 "$@" > "$log" 2>&1
    r=$?
    stats=$(grep -E '^step +[0-9]+/' "$log" | awk -F'|' 'NR > 5 {
        for (i = 1; i <= NF; i++) {
          if ($i ~ /tok\/s/) { split($i, a, " "); tps += a[1]; n++ }
          if ($i ~ /MFU/) { split($i, b, " "); sub("%", "", b[2]); mfu += b[2] }
          if ($i ~ /mem/) { split($i, c, " "); mem = c[2] }
        } }
        END { if (n) printf "%.0f tok/s  MFU %.1f%%  mem %s GiB", tps / n, mfu / n, mem; else printf "no steps" }')
    [ $r -eq 0 ] || stats="FAILED (exit $r): $(tail -n 1 "$log")"
    echo "ours $name: $stats"
    row "ours $name" "$stats"
  }
  say "benchmarks: ours"
  if [ -x tests/bin/bench_attention ]; then
    tests/bin/bench_attention | tee "$RES/bench_attention.log"
    while read -r line; do row "ours attention ${line:0:26}" "${line:37}"; done < <(grep -v skipped "$RES/bench_attention.log")
  fi
  bench gpt2-124m-T1024-B32-rc0 --model gpt2-124m --batch-size 32 --seq-len 1024 --steps 30 --recompute 0
  bench gpt2-124m-T1024-B32-rc1 --model gpt2-124m --batch-size 32 --seq-len 1024 --steps 30 --recompute 1
  bench gpt2-124m-T1024-B32-fgelu --model gpt2-124m --batch-size 32 --seq-len 1024 --steps 30 --recompute 0 --fuse-gelu 1
  bench llama-1b-T2048-B8-rc1 --model llama-1b --batch-size 8 --seq-len 2048 --steps 20 --recompute 1

  say "benchmarks: PyTorch (torch.compile, SDPA, bf16 autocast, fused AdamW) on the same GPU"
  if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    for spec in "gpt2-124m 32 1024 30" "llama-1b 8 2048 20"; do
      set -- $spec
      log="$RES/torch_$1.log"
      timeout 420 python3 dev/bench_torch_gpu.py train --model "$1" --batch-size "$2" --seq-len "$3" --steps "$4" > "$log" 2>&1
      r=$?
      res=$(grep "^torch $1:" "$log" | sed "s/^torch $1: //")
      [ $r -eq 0 ] || res="FAILED (exit $r): $(tail -n 1 "$log")"
      echo "torch $1 B$2 T$3: $res"; row "torch $1-T$3-B$2" "$res"
    done
    timeout 120 python3 dev/bench_torch_gpu.py attention 2>&1 | tee "$RES/torch_attention.log"
    while read -r line; do row "torch attention ${line:0:26}" "${line:37}"; done < <(grep sdpa "$RES/torch_attention.log")
  else
    echo "no PyTorch with CUDA here"; row "torch" "not available"
  fi

  say "benchmarks: llm.c train_gpt2cu (GPT-2 124M from scratch, d12) on the same GPU and data"
  if [ -f .peers/llm.c/train_gpt2.cu ]; then
    if make -C .peers/llm.c train_gpt2cu NO_MULTI_GPU=1 USE_CUDNN=0 > "$RES/llmc_build.log" 2>&1 &&
       python3 dev/to_llmc_bin.py "$DATA" "$RES/llmc_tokens.bin" > /dev/null; then
      tok=$(realpath "$RES/llmc_tokens.bin")
      for rc in 0 1; do
        log="$RES/llmc_rc$rc.log"
        logabs=$(realpath -m "$log")
        (cd .peers/llm.c && timeout 300 ./train_gpt2cu -i "$tok" -j "$tok" -e d12 -b 32 -t 1024 -x 30 -v 100000 -m 1 \
           -s 0 -r $rc -l 6e-4 > "$logabs" 2>&1)
        r=$?
        # per-step time (its tok/s column is smoothed): B*T / ms, MFU as it prints it, after the first 5 steps
        stats=$(grep -E '^step +[0-9]+/' "$log" | awk -F'|' 'NR > 5 {
            for (i = 1; i <= NF; i++) {
              if ($i ~ / ms/) { split($i, a, " "); ms += a[1]; n++ }
              if ($i ~ /MFU/) { split($i, b, " "); sub("%", "", b[1]); mfu += b[1] }
            } }
            END { if (n) printf "%.0f tok/s  MFU(llm.c count) %.1f%%", 32 * 1024 / (ms / n / 1000), mfu / n; else printf "no steps" }')
        [ $r -eq 0 ] || stats="FAILED (exit $r): $(tail -n 1 "$log")"
        echo "llm.c recompute $rc: $stats"; row "llm.c gpt2-124m-T1024-B32-rc$rc" "$stats"
      done
    else
      echo "llm.c build failed (see $RES/llmc_build.log)"; row "llm.c" "build failed"
    fi
  else
    echo "no .peers/llm.c (dev/device_kit.sh LLMC_GIT_DIR puts llm.c's sources there)"; row "llm.c" "not here"
  fi
fi

echo
echo "=== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1))"
for r in "${ROWS[@]}"; do echo "$r"; done
