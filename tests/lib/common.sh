# Shared by the shell tests: a temp folder removed on exit, ok/bad reporting, and a small dataset
# made by prepro from the head of the bundled corpus. Source it from the repository root.
# BIN_DIR (default .) is where train, prepro/prepro and tests/bin/ are (tests/run.sh).
BIN_DIR=${BIN_DIR:-.}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
ok()  { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }

# shakespeare_data BYTES: writes $tmp/shk_text_document.{bin,idx} from the first BYTES of the corpus
shakespeare_data() {
    head -c "$1" data/tinyshakespeare.txt > "$tmp/shk.txt"
    "$BIN_DIR"/prepro/prepro --input "$tmp/shk.txt" --txt-mode paragraph --tokenizer data/gpt2_tokenizer.json \
        --output-prefix "$tmp/shk" --append-eod 2> "$tmp/prepro.err" || { cat "$tmp/prepro.err"; bad "prepro"; exit 1; }
}

# kill_a_rank CMD...: runs a multi-process train in the background, kills one of its ranks after 2 s, and checks
# that rank 0 stops with an error within 20 s and no rank is left running
kill_a_rank() {
    "$@" > "$tmp/k.log" 2> "$tmp/k.err" &
    local pid=$! child end rc
    sleep 2
    child=$(pgrep -P $pid | tail -n 1)
    kill -KILL "$child" 2>/dev/null
    end=$((SECONDS + 20)); while kill -0 $pid 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if kill -0 $pid 2>/dev/null; then pkill -KILL -P $pid; kill -KILL $pid; bad "rank 0 still waiting after a peer died"
    else wait $pid; rc=$?; [ $rc -ne 0 ] && ok "a rank killed: rank 0 stopped (exit $rc): $(head -n 1 "$tmp/k.err")" || bad "rank 0 exit 0 after a peer died"; fi
    sleep 0.5; [ -z "$(pgrep -P $pid)" ] && ok "no rank left running" || bad "ranks left running"
}

# refuse WANT CMD...: CMD must fail with WANT in its error output
refuse() {
    local want=$1; shift
    if "$@" > "$tmp/e.out" 2> "$tmp/e.err"; then bad "accepted (wanted: $want): $*"
    elif grep -q -- "$want" "$tmp/e.err"; then ok "refused: $(head -n 1 "$tmp/e.err")"
    else bad "refused without '$want': $(cat "$tmp/e.err")"; fi
}
