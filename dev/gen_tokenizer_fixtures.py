#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/*: expected ids from the Hugging Face `tokenizers` package.

    pip install tokenizers
    python3 dev/gen_tokenizer_fixtures.py [--shared ../shared/data]

For each tokenizer family a cases file is written:
    tests/fixtures/tokenizer/<family>_cases.txt
The C test (tests/test_tokenizer.c) reads it. Line format:
    tokenizer PATH            tokenizer.json, relative to the repository root
    patch HEX                 (optional) a JSON object applied to that file before loading: each key
                              replaces the top-level key, a key ending in "+" appends to that array
    optional 0|1              1: skip the file (with a message) when PATH is absent
    case NAME                 starts a case
    text HEX                  the UTF-8 input, hex encoded
    ids ...                   encode(text, add_special_tokens=False).ids
    ids_special ...           encode(text, add_special_tokens=True).ids
    ids_plain ...             the same as ids, with encode_special_tokens=True (special tokens as plain text)
    decode HEX                decode(ids, skip_special_tokens=False)
    end
                              (ids_special and ids_plain are left out when they equal ids, and decode when
                              it equals the text)
    decode_case NAME          a decode-only case: ids then decode, then end
    bulk NAME PATH FORMAT MAX whole-corpus check; FORMAT is paragraphs (documents split on "\\n\\n"),
                              lines (split on "\\n"; empty documents dropped in both) or jsonl (the
                              "text" field of each line); MAX documents at most
    group FIRST COUNT NIDS HASH   documents [FIRST, FIRST+COUNT): total ids and the FNV-1a 64 hash of
                                  their ids (add_special_tokens=False) as little-endian int32 bytes
Also written: tests/fixtures/tokenizer/stress.jsonl, random text over scripts, whitespace kinds,
combining marks, emoji and special-token strings (a bulk corpus of every family), and
tests/fixtures/tokenizer/nfc.jsonl, text dense in what Unicode normalization changes.
"""
import argparse
import json
import os
import random
import struct

from tokenizers import Tokenizer

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for b in struct.pack("<%di" % len(ids), *ids):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def hexs(s):
    return s.encode("utf-8").hex()


def zh_sample(shared, n):
    p = os.path.join(shared, "corpora", "zh", "zh_classics.jsonl")
    with open(p, encoding="utf-8") as f:
        return json.loads(f.readline())["text"][:n]


def cases(shared):
    c = []
    add = lambda name, text: c.append((name, text))
    add("empty", "")
    add("hello", "Hello world")
    add("sentence", "Hello, world! How's it going? I'm fine; they'll've done it, we'd say.")
    add("contractions_upper", "I'M HE'LL WE'VE THEY'RE IT'S DON'T SHE'D 'S 'T")
    add("contractions_odd", "'s's 'll'll '' ' 's x'ſ 'ſ ’s ‘quoted’")
    add("code_python", "def f(x):\n    return x ** 2  # square\n\n\tif x>0:\n\t\tprint(f\"{x!r}\")\n")
    add("code_c", "int main(void) {\n  for (int i = 0; i < 10; i++) { printf(\"%d\\n\", i); }\n  return 0;\n}\n")
    add("spaces_leading", "   leading spaces")
    add("spaces_trailing", "trailing spaces   ")
    add("spaces_runs", "a  b   c    d     e")
    add("only_spaces", "     ")
    add("newlines", "\n\n\n")
    add("mixed_ws", " \n \n\t \r\n  x\r\n\r\ny \t\t\n")
    add("crlf", "line one\r\nline two\r\n\r\nline four")
    add("tabs", "\t\tx\ty\t\t")
    add("emoji", "Hi 👋🌍! family: 👨‍👩‍👧‍👦 flag 🇺🇸 thumbs 👍🏽 heart ❤️ 🫠")
    add("chinese", zh_sample(shared, 300))
    add("chinese_mixed", "中文English混合123，标点！「引号」？")
    add("japanese", "こんにちは世界。カタカナとひらがな、漢字。")
    add("korean", "안녕하세요 세계! 한국어 텍스트")
    add("numbers", "1234567890 3.14159 1,000,000 -42 0x1F 1e-9 ²³ ½ Ⅻ ٣٤٥ १२३ １２３")
    add("eot_inside", "Hello<|endoftext|>World")
    add("eot_spaces", "end. <|endoftext|> Next doc")
    add("eot_twice", "<|endoftext|><|endoftext|>")
    add("eot_partial", "<|endoftext| <|endoftext <endoftext|> <|ENDOFTEXT|>")
    add("llama_specials", "<|begin_of_text|>hi<|eot_id|><|start_header_id|>user<|end_header_id|>")
    add("qwen_specials", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    add("sp_specials", "<s>hello</s> <unk> <0x0A> ▁word")
    add("combining", "café cafe\u0301 e\u0301\u0301 \u1e9b\u0323 A\u030a \u212b \u212a \u2126 a\u0328\u0301")
    add("hangul_jamo", "\u1100\u1161\u11a8 \u1112\u1161\u11ab")
    add("cjk_compat", "\uf900\uf901 \u2f800")
    add("rtl_hebrew", "שלום עולם, מה שלומך?")
    add("rtl_arabic", "مرحبا بالعالم! كيف حالك؟ ١٢٣")
    add("bidi_mixed", "abc שלום def مرحبا 123")
    add("cyrillic_greek", "Привет мир! Καλημέρα κόσμε.")
    add("thai_devanagari", "สวัสดีครับ नमस्ते दुनिया")
    add("unicode_spaces", "a\u00a0b a\u0085b a\u180eb x\u3000 y a\u2028b a\u2029b a\u200bb a\u202fb a\u205fb")
    add("nel_runs", "\u0085\u0085b \u0085 \u0085x")
    add("long_letters", "a" * 1000)
    add("long_spaces", " " * 300 + "x")
    add("long_newlines", "\n" * 50 + "end")
    add("ascii_printable", "".join(chr(i) for i in range(32, 127)))
    add("control_chars", "a\x00b\x01c\x7fd\x1b[0m")
    add("metaspace_char", "▁ ▁▁x ▁start")
    add("replacement_char", "bad \ufffd char")
    add("private_use", "\ue000\U000f0000 x")
    # for the added-token options (see ADDED_PATCH / QWEN_ADDED_PATCH)
    add("added_lstrip", "a <mask> b x  <mask> <mask>y \u3000<mask>\u3000")
    add("added_rstrip", "[R]   z [R]\n\ny [R]")
    add("added_single_word", "cat concat cat. category (cat) _cat cat_ \u00e9cat cat\u00e9 1cat cat")
    add("added_overlap", "<|endoftext|>x <|endoftext|>y <|endoftext|")
    add("added_both_strip", "a pad b  pad  c pad")
    add("added_normalized", "caf\u00e9! cafe\u0301! \u212b A\u030a \u00c5")
    return c


# GPT-2 with added tokens exercising lstrip, rstrip, single_word, normalized, overlaps, and a token
# the model vocab already has ("cat": HF keeps the vocab id)
ADDED_PATCH = {"added_tokens+": [
    {"id": 50257, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False, "special": True},
    {"id": 50258, "content": "[R]", "single_word": False, "lstrip": False, "rstrip": True, "normalized": True, "special": False},
    {"id": 50259, "content": "cat", "single_word": True, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
    {"id": 50260, "content": "<|endoftext|>x", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True},
    {"id": 50261, "content": " pad", "single_word": False, "lstrip": True, "rstrip": True, "normalized": False, "special": True}]}
# Qwen2 (NFC) with normalized added tokens: matched after NFC
QWEN_ADDED_PATCH = {"added_tokens+": [
    {"id": 151646, "content": "caf\u00e9!", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
    {"id": 151647, "content": "\u212b", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": True}]}
# Llama-2 "legacy" layout (transformers LlamaConverter): no pre-tokenizer, the normalizer prepends
# U+2581 and turns spaces into U+2581; built on the Mistral file, which has the same model format
LEGACY_PATCH = {"pre_tokenizer": None, "normalizer": {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}}


def apply_patch(j, patch):
    for k, v in patch.items():
        if k.endswith("+"):
            j[k[:-1]] = (j.get(k[:-1]) or []) + v
        else:
            j[k] = v
    return j


def stress_docs(seed=1234, ndocs=150):
    rnd = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789", "0123456789", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "     ", "\t\n\r", "\u00a0\u0085\u180e\u2028\u2029\u3000\u200b\u202f\u205f\u1680\u2000\u200a",
        "éèêëàâäôöûüçñÅåøæœßÿ", "\u0300\u0301\u0302\u0308\u0323\u0327\u0328\u030a\u0345",
        "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ", "абвгдежзийклмнопрстуфхцчшщъыьэюяЖЩ",
        "אבגדהוזחטיכלמנסעפצקרשת", "ابتثجحخدذرزسشصضطظعغفقكلمنهوي", "०१२३४५६७८९कखगघनमयरलवशसह",
        "กขคงจฉชซญดตถทนบปผพฟภมยรลวศสหอฮ", "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
        "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん",
        "アイウエオカキクケコサシスセソ", "가나다라마바사아자차카타파하한국어", "\u1100\u1161\u11a8\u1112\u1173",
        "😀😂🥲👍🏽👨\u200d👩\u200d👧❤\ufe0f🇺🇸🫠🚀", "٠١٢٣٤٥٦٧٨٩１２３４５６７８９０²³½¼Ⅻⅻ",
        "\uf900\uf901\u212b\u212a\u2126\u1e9b\u0387\u037e\u0340\u0341", "ſſ'sS'ST'tLL'll'LL'Ve'RE'M'D",
    ]
    specials = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<unk>", "<0x41>"]
    docs = []
    for _ in range(ndocs):
        parts = []
        for _ in range(rnd.randint(1, 40)):
            if rnd.random() < 0.04:
                parts.append(rnd.choice(specials))
                continue
            pool = rnd.choice(pools)
            parts.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 12))))
            if rnd.random() < 0.5:
                parts.append(" ")
        docs.append("".join(parts))
    return docs


def nfc_docs(seed=11, ndocs=400):
    """Text dense in characters NFC/NFD change: decomposable letters, combining marks in every
    order, Hangul syllables and jamo, singletons (CJK compatibility ideographs, Angstrom sign)."""
    import unicodedata
    marks, decomposable = [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if unicodedata.combining(ch):
            marks.append(ch)
        elif unicodedata.normalize("NFD", ch) != ch:
            decomposable.append(ch)
    jamo = [chr(c) for c in list(range(0x1100, 0x1113)) + list(range(0x1161, 0x1176)) + list(range(0x11A8, 0x11C3))]
    base = list("aeiouAEIOUnNcCsS ") + ["\uac00", "\ud7a3", "\uac01"]
    rnd = random.Random(seed)
    docs = []
    for _ in range(ndocs):
        out = []
        for _ in range(rnd.randint(1, 30)):
            r = rnd.random()
            pool = marks if r < 0.4 else decomposable if r < 0.7 else jamo if r < 0.8 else base
            out.append(rnd.choice(pool))
        docs.append("".join(out))
    return docs


def load_bulk_docs(path, fmt, maxdocs):
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "paragraphs":
            docs = [d for d in f.read().split("\n\n") if d]
        elif fmt == "lines":
            docs = [d for d in f.read().split("\n") if d]
        else:
            docs = [json.loads(line)["text"] for line in f if line.strip()]
    return docs[:maxdocs]


def write_family(name, tok_path, optional, bulks, shared, group_size=50, patch=None):
    full_tok = os.path.join(ROOT, tok_path) if not os.path.isabs(tok_path) else tok_path
    if not os.path.exists(full_tok):
        print("skip %s: %s absent" % (name, tok_path))
        return
    lines = ["# generated by dev/gen_tokenizer_fixtures.py with tokenizers (HF); do not edit",
             "tokenizer " + tok_path]
    if patch:
        with open(full_tok, encoding="utf-8") as f:
            tok = Tokenizer.from_str(json.dumps(apply_patch(json.load(f), patch)))
        lines.append("patch " + hexs(json.dumps(patch)))
    else:
        tok = Tokenizer.from_file(full_tok)
    lines.append("optional %d" % optional)
    for cname, text in cases(shared):
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        dec = tok.decode(ids, skip_special_tokens=False)
        lines += ["case " + cname, "text " + hexs(text), "ids " + " ".join(map(str, ids))]
        if ids_special != ids:
            lines.append("ids_special " + " ".join(map(str, ids_special)))
        if ids_plain != ids:
            lines.append("ids_plain " + " ".join(map(str, ids_plain)))
        if dec != text:
            lines.append("decode " + hexs(dec))
        lines.append("end")
    # decode-only cases: partial UTF-8 byte tokens, random ids, special tokens
    rnd = random.Random(7)
    n = tok.get_vocab_size(with_added_tokens=True)
    dcases = [("first_ids", list(range(0, 40))), ("last_ids", list(range(max(0, n - 20), n))),
              ("random_ids", [rnd.randrange(n) for _ in range(300)])]
    for i in range(20):
        dcases.append(("random_short_%d" % i, [rnd.randrange(min(n, 300)) for _ in range(rnd.randint(1, 4))]))
    for dname, ids in dcases:
        lines += ["decode_case " + dname, "ids " + " ".join(map(str, ids)),
                  "decode " + hexs(tok.decode(ids, skip_special_tokens=False)), "end"]
    for bname, bpath, fmt, maxdocs in bulks:
        full = bpath if os.path.isabs(bpath) else os.path.join(ROOT, bpath)
        if not os.path.exists(full):
            print("  (bulk %s skipped: %s absent)" % (bname, bpath))
            continue
        docs = load_bulk_docs(full, fmt, maxdocs)
        lines.append("bulk %s %s %s %d" % (bname, bpath, fmt, maxdocs))
        total = 0
        for g in range(0, len(docs), group_size):
            ids = []
            for d in docs[g:g + group_size]:
                ids += tok.encode(d, add_special_tokens=False).ids
            total += len(ids)
            lines.append("group %d %d %d %016x" % (g, len(docs[g:g + group_size]), len(ids), fnv1a64(ids)))
        print("  bulk %s: %d docs, %d ids" % (bname, len(docs), total))
    out = os.path.join(OUT, name + "_cases.txt")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args()
    shared = os.path.normpath(args.shared)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "stress.jsonl"), "w", encoding="utf-8") as f:
        for d in stress_docs():
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "nfc.jsonl"), "w", encoding="utf-8") as f:
        for d in nfc_docs():
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    nfcb = ("nfc", "tests/fixtures/tokenizer/nfc.jsonl", "jsonl", 100000)
    rel = lambda p: os.path.relpath(p, ROOT)
    zh = rel(os.path.join(shared, "corpora", "zh", "zh_classics.jsonl"))
    stress = ("stress", "tests/fixtures/tokenizer/stress.jsonl", "jsonl", 100000)
    shakes = ("shakespeare", "data/tinyshakespeare.txt", "paragraphs", 100000)
    wiki = ("wikitext", rel(os.path.join(shared, "corpora", "wikitext-2", "valid.txt")), "lines", 1500)
    zhb = ("zh", zh, "jsonl", 12)
    tk = lambda *p: rel(os.path.join(shared, "tokenizers", *p))
    write_family("gpt2", "data/gpt2_tokenizer.json", 0, [stress, shakes, wiki, zhb], shared)
    write_family("qwen2", tk("qwen2", "tokenizer.json"), 1, [stress, shakes, zhb], shared)
    write_family("llama3", tk("llama3", "tokenizer.json"), 1, [stress, shakes, zhb], shared)
    write_family("mistral", tk("llama2", "mistral-7b-v0.1", "tokenizer.json"), 1, [stress, shakes, zhb], shared)
    write_family("gpt2_added", "data/gpt2_tokenizer.json", 0, [stress], shared, patch=ADDED_PATCH)
    write_family("qwen2_added", tk("qwen2", "tokenizer.json"), 1, [stress], shared, patch=QWEN_ADDED_PATCH)
    # byte-level GPT-2 with an NFC / NFD normalizer: the ids spell out the normalized text exactly
    write_family("gpt2_nfc", "data/gpt2_tokenizer.json", 0, [nfcb, stress], shared, patch={"normalizer": {"type": "NFC"}})
    write_family("gpt2_nfd", "data/gpt2_tokenizer.json", 0, [nfcb], shared, patch={"normalizer": {"type": "NFD"}})
    write_family("llama2_legacy", tk("llama2", "mistral-7b-v0.1", "tokenizer.json"), 1, [stress, shakes], shared,
                 patch=LEGACY_PATCH)


if __name__ == "__main__":
    main()
