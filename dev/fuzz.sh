#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan) and runs each for a bounded time,
# one after the other, then prints a summary (runs, coverage, corpus, crashes). Exits 1 when a target
# crashed or failed to build.
#
#   bash dev/fuzz.sh                      every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 bash dev/fuzz.sh fuzz_idx fuzz_config     chosen targets
#   FUZZ_FORK=1 bash dev/fuzz.sh          keep fuzzing after a crash (libFuzzer -fork=1 -ignore_crashes=1)
#   FUZZ_REPLAY=1 bash dev/fuzz.sh        no fuzzing: run the seed corpora and tests/fuzz/crashes/<target>/*
#                                         once and tell which saved crashes still crash (with FUZZ_STRICT=1:
#                                         the checks of open issues that are off while fuzzing are on)
#
# Targets: fuzz_tokenizer, fuzz_tokenizer_json, fuzz_idx, fuzz_safetensors, fuzz_config (tests/fuzz/*.c).
# Seeds: tests/fuzz/corpus/<target>/ (made by tests/fuzz/make_seeds.py). Inputs found while fuzzing go to
# tests/fuzz/work/<target>/ and crashes to tests/fuzz/work/artifacts/<target>/ (both ignored by git);
# keep a crash worth keeping in tests/fuzz/crashes/<target>/.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
CC_FUZZ=${CC_FUZZ:-clang}
BIN=tests/fuzz/bin
WORK=tests/fuzz/work
ALL="fuzz_tokenizer fuzz_tokenizer_json fuzz_idx fuzz_safetensors fuzz_config"
TARGETS=${*:-$ALL}

# ---- toolchain: clang with the libFuzzer runtime
have_fuzzer() {
  command -v "$CC_FUZZ" >/dev/null 2>&1 || return 1
  local d; d=$(mktemp -d)
  printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' > "$d/t.c"
  "$CC_FUZZ" -fsanitize=fuzzer "$d/t.c" -o "$d/t" >/dev/null 2>&1; local rc=$?
  rm -rf "$d"; return $rc
}
if ! have_fuzzer; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "fuzz: installing clang and the libFuzzer runtime"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
  fi
  have_fuzzer || { echo "fuzz: $CC_FUZZ with -fsanitize=fuzzer is not available (apt-get install clang libclang-rt-14-dev)"; exit 1; }
fi

FLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fopenmp -D_GNU_SOURCE
       -Wno-pass-failed "-DFUZZ_ROOT=\"$ROOT\"" -I. -Itests/fuzz)
mkdir -p "$BIN" "$WORK"

build() {
  local t=$1 src=tests/fuzz/$1.c
  local extra=() libs=(-ljansson -lm)
  case $t in fuzz_tokenizer|fuzz_tokenizer_json) extra=(prepro/tokenizer.c); libs+=(-lpcre2-8) ;; esac
  local deps=("$src" tests/fuzz/fuzz_common.h llmtrain.h prepro/tokenizer.c prepro/tokenizer.h prepro/unicode_tables.h)
  local newer=0
  [ -x "$BIN/$t" ] || newer=1
  for f in "${deps[@]}"; do [ "$newer" = 1 ] || [ "$f" -nt "$BIN/$t" ] && newer=1; done
  [ "$newer" = 1 ] || return 0
  "$CC_FUZZ" "${FLAGS[@]}" -o "$BIN/$t" "$src" "${extra[@]}" "${libs[@]}" 2> "$WORK/$t.build.log" || {
    echo "fuzz: $t does not build:"; tail -n 20 "$WORK/$t.build.log"; return 1; }
}

opts_for() {
  case $1 in
    fuzz_tokenizer)      echo "-max_len=4096" ;;
    fuzz_tokenizer_json) echo "-max_len=65536 -dict=tests/fuzz/tokenizer_json.dict -len_control=20" ;;
    fuzz_idx)            echo "-max_len=8192" ;;
    fuzz_safetensors)    echo "-max_len=8192 -dict=tests/fuzz/safetensors.dict" ;;
    fuzz_config)         echo "-max_len=4096 -dict=tests/fuzz/config.dict" ;;
  esac
}

status=0
summary=()
for t in $TARGETS; do
  case " $ALL " in *" $t "*) ;; *) echo "fuzz: unknown target $t (targets: $ALL)"; status=1; continue ;; esac
  if ! build "$t"; then summary+=("$(printf '%-20s BUILD FAILED' "$t")"); status=1; continue; fi
  seeds=tests/fuzz/corpus/$t
  log=$WORK/$t.log
  if [ "${FUZZ_REPLAY:-0}" = 1 ]; then
    # seeds must pass; each saved crash is reported as fixed or still crashing
    if "$BIN/$t" -runs=0 $(opts_for "$t") "$seeds" > "$log" 2>&1; then line="seeds ok"; else line="SEEDS CRASH (see $log)"; status=1; fi
    still=0; fixed=0
    for c in tests/fuzz/crashes/"$t"/*; do
      [ -f "$c" ] || continue
      if FUZZ_STRICT=1 timeout 60 "$BIN/$t" -runs=1 "$c" > "$WORK/replay.log" 2>&1; then fixed=$((fixed+1)); echo "  fixed:    $c"
      else still=$((still+1)); echo "  crashing: $c ($(grep -a -m1 -E 'ERROR|runtime error|FUZZ_CHECK' "$WORK/replay.log" | cut -c1-150))"; fi
    done
    [ $still -gt 0 ] && status=1
    summary+=("$(printf '%-20s %s; saved crashes: %d still crash, %d fixed' "$t" "$line" "$still" "$fixed")")
    continue
  fi
  mkdir -p "$WORK/$t" "$WORK/artifacts/$t"
  fork=()
  [ "${FUZZ_FORK:-0}" = 1 ] && fork=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
  before=$(ls "$WORK/artifacts/$t" | wc -l)
  echo "fuzz: $t for ${FUZZ_SECONDS}s"
  start=$(date +%s)
  "$BIN/$t" -max_total_time="$FUZZ_SECONDS" -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 "${fork[@]}" \
      -artifact_prefix="$WORK/artifacts/$t/" $(opts_for "$t") "$WORK/$t" "$seeds" > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  after=$(ls "$WORK/artifacts/$t" | wc -l)
  # the last status line: "#RUNS ... cov: N ft: N corp: N/SIZE ... exec/s: N"
  last=$(grep -a -E '^#[0-9]+|cov: [0-9]+' "$log" | tail -n 1)
  runs=$(grep -a -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -n 1)
  [ -n "$runs" ] || runs=$(echo "$last" | sed -nE 's/^#([0-9]+).*/\1/p')
  cov=$(echo "$last" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
  ft=$(echo "$last" | sed -nE 's/.*ft: ([0-9]+).*/\1/p')
  corp=$(echo "$last" | sed -nE 's/.*corp: ([0-9]+(\/[0-9A-Za-z]+)?).*/\1/p')
  if [ "${FUZZ_FORK:-0}" = 1 ]; then
    # fork mode counts coverage its own way: measure the corpus once more as a plain run does
    last=$("$BIN/$t" -runs=0 $(opts_for "$t") "$WORK/$t" 2>&1 | grep -a -E 'INITED|DONE' | tail -n 1)
    cov=$(echo "$last" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
    ft=$(echo "$last" | sed -nE 's/.*ft: ([0-9]+).*/\1/p')
    corp=$(echo "$last" | sed -nE 's/.*corp: ([0-9]+(\/[0-9A-Za-z]+)?).*/\1/p')
  fi
  new=$((after - before))
  verdict=ok
  if [ "$new" -gt 0 ] || { [ $rc -ne 0 ] && [ "${FUZZ_FORK:-0}" != 1 ]; }; then
    verdict="CRASH ($new new file(s) in $WORK/artifacts/$t/; log $log)"
    grep -a -m3 -E 'ERROR: AddressSanitizer|runtime error|FUZZ_CHECK|ERROR: libFuzzer' "$log" | sed 's/^/    /'
    status=1
  fi
  summary+=("$(printf '%-20s %4ss  runs %-9s cov %-5s ft %-6s corpus %-10s %s' "$t" "$secs" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$verdict")")
done

echo
echo "fuzz summary (${FUZZ_SECONDS}s per target):"
for s in "${summary[@]}"; do echo "  $s"; done
exit $status
