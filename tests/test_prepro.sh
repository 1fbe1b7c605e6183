#!/usr/bin/env bash
# prepro end to end: the .idx/.bin bytes against files built here by hand (docs/formats.md sec. 1),
# the .txt modes, .jsonl / .json / .csv / directories, workers, and every class of bad input
# (one error line, non-zero exit, no output left behind). Needs ./prepro/prepro built; run from anywhere.
set -u
cd "$(dirname "$0")/.." || exit 1
PREPRO=${BIN_DIR:-.}/prepro/prepro   # BIN_DIR: see tests/run.sh
TOK=data/gpt2_tokenizer.json
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
checks=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { checks=$((checks + 1)); }

[ -x "$PREPRO" ] || { echo "FAIL: $PREPRO is not built (run make)"; exit 1; }

. tests/lib/mmidx.sh   # le, make_idx, make_bin

# run_ok NAME ARGS...: prepro must succeed; its stderr is kept in $T/NAME.err
run_ok() {
  local name=$1; shift
  if ! "$PREPRO" "$@" 2> "$T/$name.err"; then fail "$name: prepro failed: $(cat "$T/$name.err")"; return 1; fi
  ok
}
same() { # same NAME FILE1 FILE2
  if cmp -s "$2" "$3"; then ok; else fail "$1: $2 and $3 differ"; cmp "$2" "$3" | head -3; fi
}
doc_count() { # documents in an .idx: header field at byte 26, minus the leading 0
  echo $(($(od -An -t u8 -j 26 -N 8 "$1") - 1))
}

# ---- paragraph mode (the default run's mode), with --append-eod: exact .idx and .bin bytes
printf 'Hello world\n\n\nSecond doc\nline two\n  \t\nOne\n' > "$T/para.txt"
run_ok para --input "$T/para.txt" --tokenizer $TOK --output-prefix "$T/para" --append-eod --txt-mode paragraph --workers 2
make_idx 8 2 "3 6 2" "1 2 3" > "$T/want.idx"
make_bin 2 15496 995 50256 12211 2205 198 1370 734 50256 3198 50256 > "$T/want.bin"
same para "$T/want.idx" "$T/para_text_document.idx"
same para "$T/want.bin" "$T/para_text_document.bin"
grep -q '"documents": 3' "$T/para_text_document.json" && grep -q '"sha256": "[0-9a-f]\{64\}"' "$T/para_text_document.json" \
  && grep -q '"dtype": "uint16"' "$T/para_text_document.json" && ok || fail "para: metadata sidecar"
grep -q "^prepro: done: 3 documents, 11 tokens" "$T/para.err" && ok || fail "para: summary line: $(cat "$T/para.err")"

# ---- line mode: one document per non-blank line, no EOD
run_ok line --input "$T/para.txt" --tokenizer $TOK --output-prefix "$T/line" --txt-mode line
make_idx 8 2 "2 2 2 1" "1 2 3 4" > "$T/want.idx"
make_bin 2 15496 995 12211 2205 1370 734 3198 > "$T/want.bin"
same line "$T/want.idx" "$T/line_text_document.idx"
same line "$T/want.bin" "$T/line_text_document.bin"

# ---- file mode: the whole file is one document
run_ok file --input "$T/para.txt" --tokenizer $TOK --output-prefix "$T/file" --txt-mode file
[ "$(doc_count "$T/file_text_document.idx")" = 1 ] && ok || fail "file mode: want 1 document"

# ---- jsonl: a list value is one document of several sequences; empty documents are skipped and counted
cat > "$T/docs.jsonl" <<'EOF'
{"text": "Hello world"}
{"text": ["One", "Two words"], "id": 2}
{"text": ""}

{"text": "Hi", "id": 3}
EOF
run_ok jsonl --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$T/jsonl" --append-eod
make_idx 8 2 "3 1 3 2" "1 3 4" > "$T/want.idx"
make_bin 2 15496 995 50256 3198 7571 2456 50256 17250 50256 > "$T/want.bin"
same jsonl "$T/want.idx" "$T/jsonl_text_document.idx"
same jsonl "$T/want.bin" "$T/jsonl_text_document.bin"
grep -q "1 empty skipped" "$T/jsonl.err" && ok || fail "jsonl: empty document not counted: $(cat "$T/jsonl.err")"

# ---- .json array and .csv give the same files as the equivalent .jsonl
printf '[{"text": "Hello world"},\n {"text": ["One", "Two words"], "id": 2},\n {"text": ""},\n {"text": "Hi", "id": 3}\n]\n' > "$T/docs.json"
run_ok json --input "$T/docs.json" --tokenizer $TOK --output-prefix "$T/json" --append-eod
same json "$T/jsonl_text_document.idx" "$T/json_text_document.idx"
same json "$T/jsonl_text_document.bin" "$T/json_text_document.bin"
printf 'id,text\r\n1,Hello world\r\n2,"Say ""hi"", then\nnew line"\r\n3,Hi\r\n' > "$T/docs.csv"
printf '{"text": "Hello world"}\n{"text": "Say \\"hi\\", then\\nnew line"}\n{"text": "Hi"}\n' > "$T/csv_equiv.jsonl"
run_ok csv --input "$T/docs.csv" --tokenizer $TOK --output-prefix "$T/csv"
run_ok csv_equiv --input "$T/csv_equiv.jsonl" --tokenizer $TOK --output-prefix "$T/csv_equiv"
same csv "$T/csv_equiv_text_document.idx" "$T/csv_text_document.idx"
same csv "$T/csv_equiv_text_document.bin" "$T/csv_text_document.bin"
# .jsonl lines are read without jansson where they are plain (escapes decoded by prepro itself), the
# elements of a .json array by jansson: the same objects must give the same files (escapes, surrogate
# pairs, \u0000, nested values skipped; an escaped key and a repeated key fall back to jansson)
cat > "$T/esc.jsonl" <<'EOF'
{"id": 1, "meta": {"a": [1, -2.5, true, null, "x\"y", {}], "b": []}, "text": "caf\u00e9 \ud83d\ude00 \u4e2D\u6587 tab\tnl\nslash\/ q\" bs\\ \b\f\r end", "title": "t"}
{"text":"NUL\u0000byte \uD840\uDC00","title":"\u00C9t\u00e9"}
	{ "title" : "before" , "text" : "spaces around" }	
{"text": "dup", "title": "x", "text": "second wins"}
{"te\u0078t": "escaped key", "title": "y", "n": 1.5e3}
{"text": "plain 中文 text", "title": "n", "n": 0, "m": -0.25}
EOF
{ echo "["; sed '$!s/$/,/' "$T/esc.jsonl"; echo "]"; } > "$T/esc.json"
run_ok esc_jsonl --input "$T/esc.jsonl" --tokenizer $TOK --output-prefix "$T/escl" --json-keys text title
run_ok esc_json --input "$T/esc.json" --tokenizer $TOK --output-prefix "$T/escj" --json-keys text title
for k in text title; do
  same "esc $k idx" "$T/escj_${k}_document.idx" "$T/escl_${k}_document.idx"
  same "esc $k bin" "$T/escj_${k}_document.bin" "$T/escl_${k}_document.bin"
done

# ---- a .json array larger than the read buffer (1 MB): elements are parsed across refills
awk 'BEGIN { for (i = 1; i <= 12000; i++) printf "{\"text\": \"line %d of a long array, with some words to make it longer than a buffer\"}\n", i }' > "$T/big.jsonl"
{ echo "["; sed '$!s/$/,/' "$T/big.jsonl"; echo "]"; } > "$T/big.json"
run_ok big_jsonl --input "$T/big.jsonl" --tokenizer $TOK --output-prefix "$T/bigl" --append-eod
run_ok big_json --input "$T/big.json" --tokenizer $TOK --output-prefix "$T/bigj" --append-eod
same big_json "$T/bigl_text_document.bin" "$T/bigj_text_document.bin"
same big_json "$T/bigl_text_document.idx" "$T/bigj_text_document.idx"
[ "$(doc_count "$T/bigj_text_document.idx")" = 12000 ] && ok || fail "big json: want 12000 documents"

# ---- .gz input (zlib): the same files as the plain input; several gzip members in one file are fine
if command -v gzip > /dev/null; then
  gzip -c "$T/docs.jsonl" > "$T/docs.jsonl.gz"
  run_ok gz --input "$T/docs.jsonl.gz" --tokenizer $TOK --output-prefix "$T/gz" --append-eod
  same gz "$T/jsonl_text_document.idx" "$T/gz_text_document.idx"
  same gz "$T/jsonl_text_document.bin" "$T/gz_text_document.bin"
  { head -n 2 "$T/para.txt" | gzip -c; tail -n +3 "$T/para.txt" | gzip -c; } > "$T/para2.txt.gz"
  run_ok gz_members --input "$T/para2.txt.gz" --tokenizer $TOK --output-prefix "$T/gzm" --append-eod
  same gz_members "$T/para_text_document.bin" "$T/gzm_text_document.bin"
else
  echo "skip .gz checks: no gzip command to make the input"
fi
# ---- .zst input (libzstd): the same files as the plain input; several frames in one file are fine
if command -v zstd > /dev/null; then
  zstd -q -c "$T/docs.jsonl" > "$T/docs.jsonl.zst"
  run_ok zst --input "$T/docs.jsonl.zst" --tokenizer $TOK --output-prefix "$T/zst" --append-eod
  same zst "$T/jsonl_text_document.idx" "$T/zst_text_document.idx"
  same zst "$T/jsonl_text_document.bin" "$T/zst_text_document.bin"
  { head -n 2 "$T/para.txt" | zstd -q -c; tail -n +3 "$T/para.txt" | zstd -q -c; } > "$T/para2.txt.zst"
  run_ok zst_frames --input "$T/para2.txt.zst" --tokenizer $TOK --output-prefix "$T/zsf" --append-eod
  same zst_frames "$T/para_text_document.bin" "$T/zsf_text_document.bin"
else
  echo "skip .zst checks: no zstd command to make the input"
fi

# ---- .parquet (a string column; snappy/zstd/gzip pages, dictionary and plain encodings): the same files
# as a .jsonl of the same values (the fixture's expected values are one JSON string per line)
PQ=tests/fixtures/parquet
sed 's/^/{"text": /; s/$/}/' $PQ/values_required.jsonl > "$T/pq_equiv.jsonl"
run_ok pq_equiv --input "$T/pq_equiv.jsonl" --tokenizer $TOK --output-prefix "$T/pqe" --append-eod
for f in dict_gzip_v1_required plain_zstd_v1_required; do
  run_ok "pq_$f" --input $PQ/$f.parquet --tokenizer $TOK --output-prefix "$T/pq_$f" --append-eod
  same "parquet $f" "$T/pqe_text_document.bin" "$T/pq_${f}_text_document.bin"
  same "parquet $f" "$T/pqe_text_document.idx" "$T/pq_${f}_text_document.idx"
done
# nulls are empty documents: skipped and counted
run_ok pq_nulls --input $PQ/dict_snappy_v1.parquet --tokenizer $TOK --output-prefix "$T/pqn" --append-eod
grep -q "empty skipped" "$T/pq_nulls.err" && ! grep -q " 0 empty skipped" "$T/pq_nulls.err" && ok || fail "parquet nulls not counted: $(tail -1 "$T/pq_nulls.err")"

# ---- .arrow (Arrow IPC stream and file formats; string and large_string columns beside other types;
# nulls; several record batches; zstd-compressed batches; a folder saved by Hugging Face datasets): the same documents as a .jsonl
AR=tests/fixtures/arrow
run_ok ar_equiv --input $AR/docs.jsonl --tokenizer $TOK --output-prefix "$T/are" --append-eod --json-keys text title
for f in stream_utf8 stream_large file_utf8 stream_zstd hf/data-00000-of-00001; do
  n=${f##*/}
  run_ok "ar_$n" --input $AR/$f.arrow --tokenizer $TOK --output-prefix "$T/ar_$n" --append-eod --json-keys text title
  for k in text title; do
    same "arrow $f $k" "$T/are_${k}_document.bin" "$T/ar_${n}_${k}_document.bin"
    same "arrow $f $k" "$T/are_${k}_document.idx" "$T/ar_${n}_${k}_document.idx"
  done
done
# the datasets folder (its dataset_info.json and state.json are not inputs), and the metadata's per-file counts
run_ok ar_hf_dir --input $AR/hf --tokenizer $TOK --output-prefix "$T/arhf" --append-eod
same "arrow datasets folder" "$T/are_text_document.bin" "$T/arhf_text_document.bin"
grep -q '"path": "tests/fixtures/arrow/hf/state.json"' "$T/arhf_text_document.json" && fail "arrow folder: state.json read as input" || ok
# a folder of mixed formats: each file read by its own format, in path order
mkdir -p "$T/mixed_dir"
head -n 100 $AR/docs.jsonl > "$T/mixed_dir/a.jsonl"
cp $AR/stream_utf8.arrow "$T/mixed_dir/b.arrow"
printf '{"text": "last", "title": "x"}\n' > "$T/mixed_dir/c.jsonl"
{ cat "$T/mixed_dir/a.jsonl" $AR/docs.jsonl "$T/mixed_dir/c.jsonl"; } > "$T/mixed_equiv.jsonl"
run_ok mixed_dir --input "$T/mixed_dir" --tokenizer $TOK --output-prefix "$T/mixd" --append-eod
run_ok mixed_equiv --input "$T/mixed_equiv.jsonl" --tokenizer $TOK --output-prefix "$T/mixe" --append-eod
same "mixed folder" "$T/mixe_text_document.bin" "$T/mixd_text_document.bin"
same "mixed folder" "$T/mixe_text_document.idx" "$T/mixd_text_document.idx"
# per input file: documents read (nulls and empty texts included; they are skipped later) and bad ones skipped
counts=$(tr -d ' \n' < "$T/mixd_text_document.json" | grep -o '"format":"[a-z]*","bytes":[0-9]*,"documents_read":[0-9]*,"bad_documents_skipped":[0-9]*' | sed 's/"bytes":[0-9]*,//' | tr '\n' ' ')
want='"format":"jsonl","documents_read":100,"bad_documents_skipped":0 "format":"arrow","documents_read":160,"bad_documents_skipped":0 "format":"jsonl","documents_read":1,"bad_documents_skipped":0 '
[ "$counts" = "$want" ] && ok || fail "per-file counts in the metadata: $counts"
printf '{"text": "bad \xff utf-8", "title": "x"}\n' >> "$T/mixed_dir/c.jsonl"
run_ok mixed_skip --input "$T/mixed_dir" --tokenizer $TOK --output-prefix "$T/mixs" --on-error skip
tr -d ' \n' < "$T/mixs_text_document.json" | grep -q '"path":"'"$T"'/mixed_dir/c.jsonl","format":"jsonl","bytes":[0-9]*,"documents_read":1,"bad_documents_skipped":1' && ok \
  || fail "per-file bad document count: $(tr -d ' \n' < "$T/mixs_text_document.json" | grep -o '"inputs.*')"

# ---- a directory: files in path order; several keys give one output each
mkdir -p "$T/dir/sub"
printf '{"text": "Hi", "title": "One"}\n' > "$T/dir/b.jsonl"
printf '{"text": "Hello world", "title": "Two words"}\n' > "$T/dir/a.jsonl"
printf '{"text": "One", "title": "Hi"}\n' > "$T/dir/sub/c.jsonl"
printf 'ignored\n' > "$T/dir/notes.md"
cp "$T/para_text_document.json" "$T/dir/old_text_document.json"   # an earlier run's sidecar: not an input
run_ok dir --input "$T/dir" --tokenizer $TOK --output-prefix "$T/dir_out" --json-keys text title
make_bin 2 15496 995 17250 3198 > "$T/want.bin"
same dir "$T/want.bin" "$T/dir_out_text_document.bin"
make_bin 2 7571 2456 3198 17250 > "$T/want.bin"
same dir "$T/want.bin" "$T/dir_out_title_document.bin"

# ---- --max-docs stops early
run_ok maxdocs --input "$T/big.jsonl" --tokenizer $TOK --output-prefix "$T/maxd" --max-docs 100
[ "$(doc_count "$T/maxd_text_document.idx")" = 100 ] && ok || fail "max-docs: want 100 documents"
# stopping inside a compressed or parquet file closes it (make test-sanitize finds what is left open)
if command -v gzip > /dev/null; then
  gzip -c "$T/big.jsonl" > "$T/big.jsonl.gz"
  run_ok maxdocs_gz --input "$T/big.jsonl.gz" --tokenizer $TOK --output-prefix "$T/maxdgz" --max-docs 100
  same maxdocs_gz "$T/maxd_text_document.bin" "$T/maxdgz_text_document.bin"
fi
run_ok maxdocs_pq --input $PQ/dict_gzip_v1_required.parquet --tokenizer $TOK --output-prefix "$T/maxdpq" --max-docs 5
run_ok maxdocs_pq_equiv --input "$T/pq_equiv.jsonl" --tokenizer $TOK --output-prefix "$T/maxdpqe" --max-docs 5
same maxdocs_parquet "$T/maxdpqe_text_document.bin" "$T/maxdpq_text_document.bin"
same maxdocs_parquet "$T/maxdpqe_text_document.idx" "$T/maxdpq_text_document.idx"

# ---- special tokens in the text: matched by default, plain text with --special-as-text
printf 'x<|endoftext|>y\n' > "$T/special.txt"
run_ok special --input "$T/special.txt" --tokenizer $TOK --output-prefix "$T/sp" --txt-mode line
make_bin 2 87 50256 88 > "$T/want.bin"
same special "$T/want.bin" "$T/sp_text_document.bin"
run_ok special_text --input "$T/special.txt" --tokenizer $TOK --output-prefix "$T/spt" --txt-mode line --special-as-text
make_bin 2 87 27 91 437 1659 5239 91 29 88 > "$T/want.bin"
same special_text "$T/want.bin" "$T/spt_text_document.bin"

# ---- vocab >= 65500: int32 tokens (dtype code 4)
printf 'abcab\n' > "$T/tiny.txt"
run_ok int32 --input "$T/tiny.txt" --tokenizer tests/fixtures/prepro/tiny_tokenizer.json --output-prefix "$T/i32" --append-eod
make_idx 4 4 "4" "1" > "$T/want.idx"
make_bin 4 3 2 3 70000 > "$T/want.bin"
same int32 "$T/want.idx" "$T/i32_text_document.idx"
same int32 "$T/want.bin" "$T/i32_text_document.bin"

# ---- workers: byte-identical output for every N (several batches: 1.1 MB, line mode)
for n in 1 2 3; do
  run_ok "workers$n" --input data/tinyshakespeare.txt --tokenizer $TOK --output-prefix "$T/w$n" --txt-mode line --append-eod --workers $n
done
for n in 2 3; do
  same "workers $n" "$T/w1_text_document.bin" "$T/w${n}_text_document.bin"
  same "workers $n" "$T/w1_text_document.idx" "$T/w${n}_text_document.idx"
done
[ "$(doc_count "$T/w1_text_document.idx")" = "$(grep -cv '^[[:space:]]*$' data/tinyshakespeare.txt)" ] && ok \
  || fail "workers: document count is not the number of non-blank lines"

# ---- a 100 MB single document (file mode) is tokenized whole
yes "the quick brown fox jumps over the lazy dog" | head -c 100000000 | tr '\n' ' ' > "$T/huge.txt"
run_ok huge --input "$T/huge.txt" --tokenizer $TOK --output-prefix "$T/huge" --txt-mode file
[ "$(doc_count "$T/huge_text_document.idx")" = 1 ] && ok || fail "100 MB document: want 1 document"
# each 44-byte repeat is 9 tokens, so 100 MB give about 20.45M tokens
[ "$(( $(stat -c %s "$T/huge_text_document.bin") / 2 ))" -ge 20400000 ] && ok || fail "100 MB document: too few tokens"
rm -f "$T/huge.txt" "$T"/huge_text_document.*

# ---- bad inputs: one error line naming the place, exit != 0, nothing left in the output folder
# expect_error NAME REGEX ARGS... (outputs go to $T/bad/out)
expect_error() {
  local name=$1 re=$2; shift 2
  rm -rf "$T/bad"; mkdir -p "$T/bad"
  "$PREPRO" "$@" > "$T/bad.out" 2> "$T/bad.err"
  local rc=$? lines
  lines=$(wc -l < "$T/bad.err")
  if [ $rc -eq 0 ]; then fail "$name: exit 0, want an error"
  elif [ "$lines" -ne 1 ]; then fail "$name: $lines stderr lines, want 1:"; sed 's/^/    /' "$T/bad.err"
  elif ! grep -Eq -- "$re" "$T/bad.err"; then fail "$name: error \"$(cat "$T/bad.err")\" does not match /$re/"
  elif [ -n "$(ls -A "$T/bad")" ]; then fail "$name: files left behind: $(ls -A "$T/bad")"
  else ok; fi
}
B="$T/bad/out"
expect_error missing_file "^prepro: $T/nope.jsonl: cannot open: No such file" --input "$T/nope.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": "ok"}\n{"text": "unterminated}\n' > "$T/malformed.jsonl"
expect_error malformed_json "^prepro: $T/malformed.jsonl:2:[0-9]+: malformed JSON" --input "$T/malformed.jsonl" --tokenizer $TOK --output-prefix "$B"
# lines jansson refuses must stay refused where the rest of the line looks plain (a \u0000 key, nested)
printf '{"text": "ok"}\n{"meta": {"a\\u0000b": 1}, "text": "x"}\n' > "$T/nulkey.jsonl"
expect_error nul_key "^prepro: $T/nulkey.jsonl:2:20: malformed JSON: NUL byte in object key" --input "$T/nulkey.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": "ok"}\n{"text": "x", "n": 1e999}\n' > "$T/bignum.jsonl"
expect_error big_number "^prepro: $T/bignum.jsonl:2:[0-9]+: malformed JSON: real number overflow" --input "$T/bignum.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": "ok"}\n{"content": "x", "id": 1}\n' > "$T/nokey.jsonl"
expect_error missing_key "^prepro: $T/nokey.jsonl:2: key \"text\" not found \(keys present: \"content\", \"id\"\)" --input "$T/nokey.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": 5}\n' > "$T/number.jsonl"
expect_error not_string "^prepro: $T/number.jsonl:1: key \"text\" is a number, expected a string" --input "$T/number.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": ["a", null]}\n' > "$T/listnull.jsonl"
expect_error list_not_string "^prepro: $T/listnull.jsonl:1: key \"text\"\[1\] is null" --input "$T/listnull.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": "ok"}\n{"text": "a\xffb"}\n' > "$T/utf8.jsonl"
expect_error utf8_jsonl "^prepro: $T/utf8.jsonl:2:12: invalid UTF-8 \(byte 0xFF\)" --input "$T/utf8.jsonl" --tokenizer $TOK --output-prefix "$B"
printf 'fine\nab\xe2\x82 cut\n' > "$T/utf8.txt"
expect_error utf8_txt "^prepro: $T/utf8.txt:2:3: invalid UTF-8" --input "$T/utf8.txt" --tokenizer $TOK --output-prefix "$B"
printf 'id,text\n1,"never closed\n2,x\n' > "$T/quote.csv"
expect_error csv_quote "^prepro: $T/quote.csv:2: unterminated quoted field" --input "$T/quote.csv" --tokenizer $TOK --output-prefix "$B"
printf 'id,body\n1,x\n' > "$T/nocol.csv"
expect_error csv_column "^prepro: $T/nocol.csv:1: column \"text\" not found \(columns: \"id\", \"body\"\)" --input "$T/nocol.csv" --tokenizer $TOK --output-prefix "$B"
printf 'id,text\n1,x\n2,y,z\n' > "$T/fields.csv"
expect_error csv_fields "^prepro: $T/fields.csv:3: record has 3 fields, the header has 2" --input "$T/fields.csv" --tokenizer $TOK --output-prefix "$B"
printf '{"text": "not an array"}\n' > "$T/object.json"
expect_error json_not_array "^prepro: $T/object.json:1:1: expected a JSON array" --input "$T/object.json" --tokenizer $TOK --output-prefix "$B"
printf '[{"text": "a"},\n {"text": "b"\n' > "$T/cut.json"
expect_error json_cut "^prepro: $T/cut.json:[0-9]+:[0-9]+: malformed JSON" --input "$T/cut.json" --tokenizer $TOK --output-prefix "$B"
printf '{"model": {"vocab": {"a": 0,}}}' > "$T/badtok.json"
expect_error bad_tokenizer "^prepro: $T/badtok.json:1:[0-9]+: " --input "$T/docs.jsonl" --tokenizer "$T/badtok.json" --output-prefix "$B"
expect_error no_output_dir "^prepro: $T/bad/missing/x_text_document.bin.tmp: cannot create" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$T/bad/missing/x"
mkdir -p "$T/emptydir"
expect_error empty_dir "^prepro: $T/emptydir: no .txt, .jsonl, .json, .csv, .parquet or .arrow files in this directory" --input "$T/emptydir" --tokenizer $TOK --output-prefix "$B"
expect_error unknown_flag "^prepro: unknown flag --bogus" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --bogus 1
expect_error eod_token "--eod-token \"<nope>\" is not a token" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --eod-token '<nope>'
expect_error txt_two_keys "two|2 --json-keys" --input "$T/para.txt" --tokenizer $TOK --output-prefix "$B" --json-keys a b
if command -v gzip > /dev/null; then
  head -c 40 "$T/docs.jsonl.gz" > "$T/cut.jsonl.gz"
  expect_error gz_cut "^prepro: $T/cut.jsonl.gz: gzip data is damaged or cut short" --input "$T/cut.jsonl.gz" --tokenizer $TOK --output-prefix "$B"
  printf '{"text": "plain"}\n' > "$T/plain.jsonl.gz"
  expect_error gz_not_gzip "^prepro: $T/plain.jsonl.gz: not gzip data" --input "$T/plain.jsonl.gz" --tokenizer $TOK --output-prefix "$B"
fi
if command -v zstd > /dev/null; then
  head -c 30 "$T/docs.jsonl.zst" > "$T/cut.jsonl.zst"
  expect_error zst_cut "^prepro: $T/cut.jsonl.zst: zstd data is cut short" --input "$T/cut.jsonl.zst" --tokenizer $TOK --output-prefix "$B"
  printf '{"text": "plain"}\n' > "$T/plain.jsonl.zst"
  expect_error zst_not_zstd "^prepro: $T/plain.jsonl.zst: zstd data is damaged" --input "$T/plain.jsonl.zst" --tokenizer $TOK --output-prefix "$B"
fi
expect_error parquet_column "^prepro: $PQ/plain_none_v1.parquet: no column \"body\" \(columns: " --input $PQ/plain_none_v1.parquet --tokenizer $TOK --output-prefix "$B" --json-keys body
expect_error parquet_cut "^prepro: $PQ/truncated.parquet: " --input $PQ/truncated.parquet --tokenizer $TOK --output-prefix "$B"
expect_error parquet_footer "^prepro: $PQ/corrupt_footer.parquet: " --input $PQ/corrupt_footer.parquet --tokenizer $TOK --output-prefix "$B"
expect_error arrow_column "^prepro: $AR/stream_utf8.arrow: no column \"body\" \(columns: \"id\", \"tags\", \"text\", \"meta\", \"title\"\)$" --input $AR/stream_utf8.arrow --tokenizer $TOK --output-prefix "$B" --json-keys body
expect_error arrow_type "^prepro: $AR/stream_utf8.arrow: column \"id\" has type Int, not a string" --input $AR/stream_utf8.arrow --tokenizer $TOK --output-prefix "$B" --json-keys id
expect_error arrow_cut "^prepro: $AR/bad_cut.arrow: record batch 3: .*outside the file" --input $AR/bad_cut.arrow --tokenizer $TOK --output-prefix "$B"
expect_error arrow_no_eos "^prepro: $AR/bad_no_eos.arrow: record batch 4: .*without the end-of-stream marker" --input $AR/bad_no_eos.arrow --tokenizer $TOK --output-prefix "$B"
expect_error arrow_lz4 "^prepro: $AR/bad_lz4.arrow: record batch 0: compressed \(LZ4_FRAME\)" --input $AR/bad_lz4.arrow --tokenizer $TOK --output-prefix "$B"
expect_error arrow_not_arrow "^prepro: $AR/bad_not_arrow.arrow: no message at byte 0" --input $AR/bad_not_arrow.arrow --tokenizer $TOK --output-prefix "$B"
# the error is found in a later batch, after output was written: the temps still go
python_free_big="$T/big.jsonl"
for i in $(seq 1 3000); do printf '{"text": "document number %d with some words in it"}\n' "$i"; done > "$python_free_big"
printf '{"txt": "late"}\n' >> "$python_free_big"
expect_error late_error "^prepro: $python_free_big:3001: key \"text\" not found" --input "$python_free_big" --tokenizer $TOK --output-prefix "$B" --workers 2

# numbers are checked against each flag's range (flags.h), choices against their list
expect_error workers_range "^prepro: --workers 0: out of range \[1, 1024\]" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --workers 0
expect_error workers_wrap "^prepro: --workers 4294967298: out of range \[1, 1024\]" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --workers 4294967298
expect_error max_docs_range "^prepro: --max-docs -5: out of range \[1, 9007199254740992\]" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --max-docs -5
expect_error seq_len_range "^prepro: --seq-len 4294967297: out of range \[1, 1073741824\]" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --pack --seq-len 4294967297
expect_error log_interval_nan "^prepro: --log-interval nan: out of range \(0, inf\)" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --log-interval nan
expect_error workers_text "^prepro: --workers two: not a whole number" --input "$T/docs.jsonl" --tokenizer $TOK --output-prefix "$B" --workers two
expect_error txt_mode_choice "^prepro: --txt-mode pages: must be one of file\|line\|paragraph" --input "$T/para.txt" --tokenizer $TOK --output-prefix "$B" --txt-mode pages
# no documents at all (an empty file; only empty documents): an error unless --allow-empty
: > "$T/empty.txt"
expect_error empty_file "^prepro: $T/empty.txt: no documents \(0 empty, 0 bad skipped\); --allow-empty" --input "$T/empty.txt" --tokenizer $TOK --output-prefix "$B"
printf '{"text": ""}\n{"text": ""}\n' > "$T/empty.jsonl"
expect_error only_empty_docs "^prepro: $T/empty.jsonl: no documents \(2 empty, 0 bad skipped\)" --input "$T/empty.jsonl" --tokenizer $TOK --output-prefix "$B"
printf '{"text": "", "title": "T"}\n' > "$T/empty_text.jsonl"
expect_error empty_key "^prepro: $T/empty_text.jsonl and the other inputs: no documents for key \"text\" \(2 empty" --input "$T/empty_text.jsonl" "$T/empty_text.jsonl" --tokenizer $TOK --output-prefix "$B" --json-keys text title
run_ok allow_empty --input "$T/empty.jsonl" --tokenizer $TOK --output-prefix "$T/allow_empty" --allow-empty
[ "$(doc_count "$T/allow_empty_text_document.idx")" = 0 ] && ok || fail "--allow-empty: want a dataset of 0 documents"

# ---- --on-error skip: bad documents are counted, the rest is written
cat "$T/docs.jsonl" "$T/nokey.jsonl" "$T/number.jsonl" "$T/utf8.jsonl" > "$T/mixed.jsonl"
run_ok skip --input "$T/mixed.jsonl" --tokenizer $TOK --output-prefix "$T/skip" --on-error skip
grep -q "3 bad skipped" "$T/skip.err" && ok || fail "skip: summary: $(tail -1 "$T/skip.err")"
[ "$(grep -c '(document skipped)' "$T/skip.err")" = 3 ] && ok || fail "skip: want 3 skipped-document lines"
[ "$(doc_count "$T/skip_text_document.idx")" = 5 ] && ok || fail "skip: want 5 documents"

# ---- other tokenizer families, when their files are present (never committed)
QWEN=../shared/data/tokenizers/qwen2/tokenizer.json
if [ -f $QWEN ]; then
  run_ok qwen --input "$T/docs.jsonl" --tokenizer $QWEN --output-prefix "$T/qwen" --append-eod
  [ "$(od -An -t u1 -j 17 -N 1 "$T/qwen_text_document.idx" | tr -d ' ')" = 4 ] && ok || fail "qwen: want int32 (dtype code 4)"
  grep -q '"eod_id": 151643' "$T/qwen_text_document.json" && ok || fail "qwen: eod id"
else
  echo "skip qwen2 checks: $QWEN absent"
fi
# BOS from the TemplateProcessing post-processor (Mistral: <s> = 1), dropped by --no-bos
MISTRAL=../shared/data/tokenizers/llama2/mistral-7b-v0.1/tokenizer.json
if [ -f $MISTRAL ]; then
  run_ok bos --input "$T/docs.jsonl" --tokenizer $MISTRAL --output-prefix "$T/bos" --append-eod
  run_ok nobos --input "$T/docs.jsonl" --tokenizer $MISTRAL --output-prefix "$T/nobos" --append-eod --no-bos
  first_tok() { od -An -t u2 -N 2 "$1" | tr -d ' '; }
  [ "$(first_tok "$T/bos_text_document.bin")" = 1 ] && ok || fail "mistral: first token should be BOS 1"
  [ "$(first_tok "$T/nobos_text_document.bin")" != 1 ] && ok || fail "mistral --no-bos: BOS still there"
  # one BOS per sequence: 4 sequences, so the files differ by exactly 4 tokens
  [ $(($(stat -c %s "$T/bos_text_document.bin") - $(stat -c %s "$T/nobos_text_document.bin"))) = 8 ] && ok \
    || fail "mistral: want one BOS per sequence"
  grep -q '"bos_id": 1' "$T/bos_text_document.json" && grep -q '"eod_id": 2' "$T/bos_text_document.json" && ok \
    || fail "mistral: metadata bos/eod ids"
else
  echo "skip mistral checks: $MISTRAL absent"
fi

echo "$checks checks, $fails failures"
[ $fails -eq 0 ]
