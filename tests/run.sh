#!/usr/bin/env bash
# Runs every test binary in tests/bin and every tests/test_*.sh script from the repository root;
# each exits 0 on success. Prints one line per test and a closing "N passed, N failed" line.
# BIN_DIR (default .) is where the programs are: BIN_DIR/train, BIN_DIR/prepro/prepro, BIN_DIR/tests/bin/*;
# `make test-sanitize` points it at the sanitized build.
cd "$(dirname "$0")/.." || exit 1
export BIN_DIR=${BIN_DIR:-.}
pass=0; fail=0; failed=""
for t in "$BIN_DIR"/tests/bin/test_* tests/test_*.sh; do
  [ -e "$t" ] || continue
  start=$(date +%s)
  if [ "${t%.sh}" != "$t" ]; then bash "$t" > "tests/tmp_$$.log" 2>&1; else "$t" > "tests/tmp_$$.log" 2>&1; fi
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then pass=$((pass+1)); echo "ok   $t (${secs}s)"
  else fail=$((fail+1)); failed="$failed $t"; echo "FAIL $t (exit $rc, ${secs}s)"; sed 's/^/    /' "tests/tmp_$$.log" | tail -n 40; fi
done
rm -f "tests/tmp_$$.log"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
