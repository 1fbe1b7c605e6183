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
