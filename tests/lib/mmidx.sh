# Megatron MMIDIDX files written byte by byte from the format (docs/formats.md sec. 1), for the shell tests.

# little-endian bytes of an integer (a negative one in two's complement)
le() {
  local v=$1 n=$2 i
  for ((i = 0; i < n; i++)); do printf "\\x$(printf %02x $(((v >> (8 * i)) & 255)))"; done
}
# make_idx DTYPE_CODE ITEMSIZE "seq lengths" "document boundaries (sequence counts, without the leading 0)"
make_idx() {
  local code=$1 item=$2 lens=($3) docs=($4) l d p=0
  printf 'MMIDIDX\x00\x00'; le 1 8; le "$code" 1; le ${#lens[@]} 8; le $((${#docs[@]} + 1)) 8
  for l in "${lens[@]}"; do le "$l" 4; done
  for l in "${lens[@]}"; do le $p 8; p=$((p + l * item)); done
  le 0 8
  for d in "${docs[@]}"; do le "$d" 8; done
}
# make_bin ITEMSIZE ids...
make_bin() { local item=$1 v; shift; for v in "$@"; do le "$v" "$item"; done; }
