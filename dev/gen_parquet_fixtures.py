#!/usr/bin/env python3
"""Writes tests/fixtures/parquet/*: small Parquet files from pyarrow, the values they hold, and broken files.

    pip install pyarrow
    python3 dev/gen_parquet_fixtures.py

Written:
    values_nulls.jsonl      300 strings or nulls (one JSON value a line): unicode from several scripts,
                            an empty string, a NUL byte, escapes, repeats (for dictionaries), long strings
    values_required.jsonl   200 strings, no nulls
    *.parquet               those values, one file per layout: PLAIN / dictionary / dictionary falling back
                            to PLAIN / DELTA_LENGTH_BYTE_ARRAY / DELTA_BYTE_ARRAY; UNCOMPRESSED, SNAPPY,
                            GZIP, ZSTD; data pages v1 and v2; several row groups and pages; nested columns
                            beside the string column; an empty file; files cut short or corrupted
    cases.json              what tests/test_columnar.c checks: for each case a file and a column, and either
                            the expected values (a .jsonl) or a piece of the expected error message
                            ("open_error": from parquet_open, "next_error": from parquet_next)

The page layout of every file is read back (a small thrift compact-protocol walker below) and checked
against what the case is meant to cover, so a pyarrow that writes differently fails loudly here.
"""
import io
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parquet")

WORDS = ["the", "a", "of", "data", "token", "model", "héllo", "wörld", "Привет", "мир", "你好", "世界", "こんにちは",
         "안녕하세요", "مرحبا", "שלום", "γειά", "σου", "नमस्ते", "🙂", "🚀", "👩‍💻", "e\u0301", "ﬁ", "Ω", "ß", "\t", "!"]
SPECIAL = ["", "hello", "Hello, world!", "a\u0000b", "line one\nline two\r\n", "quote \" backslash \\ slash /",
           "\u2028\u2029", "\U0010ffff", "x" * 1500]


def values(n, null_rate, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < null_rate:
            out.append(None)
        elif i < len(SPECIAL):
            out.append(SPECIAL[i])
        elif rng.random() < 0.3:
            out.append(rng.choice(SPECIAL[:3] + ["repeated value", "another repeated value"]))
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
    return out


# ---- a minimal thrift compact-protocol walker: the page headers of a column chunk

def _varint(b, i):
    v = shift = 0
    while True:
        x = b[i]; i += 1
        v |= (x & 0x7f) << shift; shift += 7
        if not x & 0x80:
            return v, i


def _zz(v):
    return (v >> 1) ^ -(v & 1)


def _value(b, i, t):
    """Returns (value, next index); structs become {id: value}, lists become lists."""
    if t in (1, 2):
        return t == 1, i
    if t == 3:
        return b[i], i + 1
    if t in (4, 5, 6):
        v, i = _varint(b, i)
        return _zz(v), i
    if t == 7:
        return b[i:i + 8], i + 8
    if t == 8:
        n, i = _varint(b, i)
        return b[i:i + n], i + n
    if t in (9, 10):
        h = b[i]; i += 1
        n, et = h >> 4, h & 15
        if n == 15:
            n, i = _varint(b, i)
        out = []
        for _ in range(n):
            if et in (1, 2):
                out.append(b[i] == 1); i += 1
            else:
                v, i = _value(b, i, et); out.append(v)
        return out, i
    if t == 12:
        out, last = {}, 0
        while True:
            h = b[i]; i += 1
            if h == 0:
                return out, i
            ft, d = h & 15, h >> 4
            if d:
                fid = last + d
            else:
                v, i = _varint(b, i); fid = _zz(v)
            last = fid
            out[fid], i = _value(b, i, ft)
    raise ValueError("thrift type %d" % t)


def pages(path, column):
    """[(row group, page type, encoding, codec, header offset, header length, page size)] of COLUMN."""
    data = open(path, "rb").read()
    md = pq.ParquetFile(path).metadata
    ci = md.schema.names.index(column) if column in md.schema.names else None
    out = []
    for g in range(md.num_row_groups):
        cc = md.row_group(g).column(ci)
        start = cc.dictionary_page_offset if cc.has_dictionary_page else cc.data_page_offset
        pos, end = start, start + cc.total_compressed_size
        while pos < end:
            h, j = _value(data, pos, 12)
            ptype = h[1]
            sub = h.get(5) or h.get(7) or h.get(8) or {}
            enc = sub.get(4 if ptype == 3 else 2)
            out.append((g, ptype, enc, cc.compression, pos, j - pos, h[3]))
            pos = j + h[3]
    return out


def fixture_path(name):
    return os.path.join(OUT, name)


def write(name, table, **kw):
    kw.setdefault("store_schema", False)
    kw.setdefault("write_statistics", False)
    pq.write_table(table, fixture_path(name), **kw)
    return name


def check_layout(name, column, want_types=(), want_encodings=(), min_row_groups=1, min_data_pages=1):
    ps = pages(fixture_path(name), column)
    types = {p[1] for p in ps}
    encs = {p[2] for p in ps if p[1] in (0, 3)}
    groups = {p[0] for p in ps}
    ndata = sum(1 for p in ps if p[1] in (0, 3))
    for t in want_types:
        assert t in types, (name, "page type", t, types)
    for e in want_encodings:
        assert e in encs, (name, "encoding", e, encs)
    assert len(groups) >= min_row_groups, (name, "row groups", len(groups))
    assert ndata >= min_data_pages, (name, "data pages", ndata)
    return ps


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))
    opt = values(300, 0.12, 1)
    req = values(200, 0.0, 2)
    with open(fixture_path("values_nulls.jsonl"), "w") as f:
        f.writelines(json.dumps(v) + "\n" for v in opt)
    with open(fixture_path("values_required.jsonl"), "w") as f:
        f.writelines(json.dumps(v) + "\n" for v in req)
    t_opt = pa.table({"text": pa.array(opt, pa.string())})
    t_req = pa.table({"text": pa.array(req, pa.string())},
                     schema=pa.schema([pa.field("text", pa.string(), nullable=False)]))
    small = dict(row_group_size=120, data_page_size=1000, write_batch_size=32)
    cases = []

    def ok(name, expect, column="text", **layout):
        check_layout(name, column, **layout)
        cases.append({"file": name, "column": column, "expect": expect})

    DATA, DICT, DATA2 = 0, 2, 3
    PLAIN, PLAIN_DICT, DLBA, DBA, RLE_DICT = 0, 2, 6, 7, 8
    ok(write("plain_none_v1.parquet", t_opt, use_dictionary=False, compression="none", data_page_version="1.0", **small),
       "values_nulls.jsonl", want_types=[DATA], want_encodings=[PLAIN], min_row_groups=3, min_data_pages=6)
    ok(write("plain_snappy_v2.parquet", t_opt, use_dictionary=False, compression="snappy", data_page_version="2.0", **small),
       "values_nulls.jsonl", want_types=[DATA2], want_encodings=[PLAIN], min_row_groups=3, min_data_pages=6)
    small_dict = dict(row_group_size=120, data_page_size=40, write_batch_size=16)   # several index pages a chunk
    ok(write("dict_snappy_v1.parquet", t_opt, compression="snappy", data_page_version="1.0", **small_dict),
       "values_nulls.jsonl", want_types=[DICT, DATA], want_encodings=[RLE_DICT], min_row_groups=3, min_data_pages=9)
    ok(write("dict_zstd_v2.parquet", t_opt, compression="zstd", data_page_version="2.0", **small_dict),
       "values_nulls.jsonl", want_types=[DICT, DATA2], want_encodings=[RLE_DICT], min_row_groups=3, min_data_pages=9)
    ok(write("dict_gzip_v1_required.parquet", t_req, compression="gzip", data_page_version="1.0", **small_dict),
       "values_required.jsonl", want_types=[DICT, DATA], want_encodings=[RLE_DICT], min_row_groups=2, min_data_pages=4)
    ok(write("plain_zstd_v1_required.parquet", t_req, use_dictionary=False, compression="zstd", data_page_version="1.0"),
       "values_required.jsonl", want_types=[DATA], want_encodings=[PLAIN])
    # a dictionary that outgrows its limit: dictionary pages, then PLAIN pages in the same chunk
    ok(write("dict_fallback_none_v1.parquet", t_opt, compression="none", data_page_version="1.0",
             dictionary_pagesize_limit=600, data_page_size=800, write_batch_size=16, row_group_size=150),
       "values_nulls.jsonl", want_types=[DICT, DATA], want_encodings=[RLE_DICT, PLAIN], min_row_groups=2)
    ok(write("delta_length_zstd_v2.parquet", t_opt, use_dictionary=False, column_encoding={"text": "DELTA_LENGTH_BYTE_ARRAY"},
             compression="zstd", data_page_version="2.0", **small),
       "values_nulls.jsonl", want_types=[DATA2], want_encodings=[DLBA], min_row_groups=3, min_data_pages=6)
    ok(write("delta_byte_array_none_v1.parquet", t_opt, use_dictionary=False, column_encoding={"text": "DELTA_BYTE_ARRAY"},
             compression="none", data_page_version="1.0", **small),
       "values_nulls.jsonl", want_types=[DATA], want_encodings=[DBA], min_row_groups=3, min_data_pages=6)
    # beside other columns: the string column is the 6th leaf, after a list and a struct
    n = len(req)
    multi = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "tags": pa.array([[str(i), "t"] if i % 3 else None for i in range(n)], pa.list_(pa.string())),
        "meta": pa.array([{"a": i, "b": "m%d" % i} for i in range(n)], pa.struct([("a", pa.int32()), ("b", pa.string())])),
        "text": pa.array(req, pa.string()),
        "large": pa.array(opt[:n], pa.large_string()),
        "blob": pa.array([None] * n, pa.binary()),
    })
    ok(write("multi_column_snappy.parquet", multi, compression="snappy", store_schema=True, write_statistics=True,
             write_page_index=True, row_group_size=80),
       "values_required.jsonl", want_types=[DICT], min_row_groups=3)
    with open(fixture_path("values_all_null.jsonl"), "w") as f:
        f.writelines("null\n" for _ in range(n))
    check_layout("multi_column_snappy.parquet", "large")
    cases.append({"file": "multi_column_snappy.parquet", "column": "large", "expect": "values_nulls.jsonl", "count": n})
    ok("multi_column_snappy.parquet", "values_all_null.jsonl", column="blob")
    # no rows at all
    write("empty.parquet", pa.table({"text": pa.array([], pa.string())}))
    open(fixture_path("empty.jsonl"), "w").close()
    cases.append({"file": "empty.parquet", "column": "text", "expect": "empty.jsonl"})

    # ---- errors at open
    def open_error(name, column, msg):
        cases.append({"file": name, "column": column, "open_error": msg})

    open_error("multi_column_snappy.parquet", "nope", 'no column "nope" (columns: id, tags, meta, text, large, blob)')
    open_error("multi_column_snappy.parquet", "id", 'column "id" has type INT64, not a string (BYTE_ARRAY)')
    open_error("multi_column_snappy.parquet", "tags", 'column "tags" is a group')
    open_error("multi_column_snappy.parquet", "meta", 'column "meta" is a group')
    open_error("values_nulls.jsonl", "text", "not a Parquet file (it does not start with PAR1)")
    open_error("does_not_exist.parquet", "text", "cannot open")
    # the broken files start from a small good one
    base = write("small_dict_snappy_v1.parquet", pa.table({"text": pa.array(opt[:60], pa.string())}),
                 compression="snappy", data_page_version="1.0", row_group_size=20)
    check_layout(base, "text", want_types=[DICT, DATA], min_row_groups=3)
    good = open(fixture_path(base), "rb").read()
    flen = int.from_bytes(good[-8:-4], "little")
    # cut short: no PAR1 at the end
    cases.append({"file": base, "column": "text", "expect": "values_nulls.jsonl", "count": 60})
    open(fixture_path("truncated.parquet"), "wb").write(good[: len(good) * 6 // 10])
    open_error("truncated.parquet", "text", "no PAR1 at the end of the file")
    # the footer's bytes overwritten
    b = bytearray(good)
    fstart = len(good) - 8 - flen
    for k in range(fstart + 4, fstart + 20):
        b[k] = 0xFF
    open(fixture_path("corrupt_footer.parquet"), "wb").write(b)
    open_error("corrupt_footer.parquet", "text", "corrupt footer (thrift FileMetaData")
    # the footer ends early: its length says less than it is
    b = bytearray(good)
    b[-8:-4] = (flen // 2).to_bytes(4, "little")
    open(fixture_path("footer_cut.parquet"), "wb").write(b)
    open_error("footer_cut.parquet", "text", "corrupt footer")
    # the footer length larger than the file
    b = bytearray(good)
    b[-8:-4] = (0x7FFFFFF0).to_bytes(4, "little")
    open(fixture_path("footer_len.parquet"), "wb").write(b)
    open_error("footer_len.parquet", "text", "footer length 2147483632 is larger than the file")
    # 300 bytes of data gone from the middle, footer intact: column chunks point past the data
    mid = len(good) // 3
    assert mid + 300 < fstart
    open(fixture_path("cut_middle.parquet"), "wb").write(good[:mid] + good[mid + 300:])
    open_error("cut_middle.parquet", "text", "row group 2: the column chunk (500 bytes at byte 964) lies outside the data")

    # ---- errors while reading (the footer is fine)
    def next_error(name, msg):
        cases.append({"file": name, "column": "text", "next_error": msg})

    ps = pages(fixture_path(base), "text")
    first_data = next(p for p in ps if p[1] == DATA)        # row group 0, page 1 (after the dictionary)
    b = bytearray(good)
    b[first_data[4]] = 0xFF                                 # the header's first field: type 15 does not exist
    open(fixture_path("corrupt_page_header.parquet"), "wb").write(b)
    next_error("corrupt_page_header.parquet", "row group 0, page 1: corrupt page header")
    b = bytearray(good)
    body = first_data[4] + first_data[5]
    b[body:body + 5] = b"\xff\xff\xff\xff\x0f"              # snappy's leading length: 4 GB
    open(fixture_path("corrupt_snappy.parquet"), "wb").write(b)
    next_error("corrupt_snappy.parquet", "row group 0, page 1: SNAPPY data is corrupt")
    # the third row group's dictionary index bit width: 40 (at most 32)
    t_small = pa.table({"text": pa.array(req[20:80], pa.string())}, schema=t_req.schema)
    req_dict = write("small_dict_none_v1_required.parquet", t_small, compression="none", data_page_version="1.0", row_group_size=20)
    check_layout(req_dict, "text", want_types=[DICT, DATA], want_encodings=[RLE_DICT], min_row_groups=2)
    ps = pages(fixture_path(req_dict), "text")
    g1 = [p for p in ps if p[0] == 1 and p[1] == DATA]
    b = bytearray(open(fixture_path(req_dict), "rb").read())
    b[g1[0][4] + g1[0][5]] = 40
    open(fixture_path("bad_bit_width.parquet"), "wb").write(b)
    os.remove(fixture_path(req_dict))
    pg = ps.index(g1[0]) - sum(1 for p in ps if p[0] == 0)
    next_error("bad_bit_width.parquet", "row group 1, page %d: dictionary index bit width 40 is over 32" % pg)

    # page checksums: a changed byte in a page's data is caught
    crc = write("small_crc_zstd_v2.parquet", pa.table({"text": pa.array(opt[:60], pa.string())}), compression="zstd",
                data_page_version="2.0", row_group_size=20, write_page_checksum=True)
    cases.append({"file": crc, "column": "text", "expect": "values_nulls.jsonl", "count": 60})
    ps = pages(fixture_path(crc), "text")
    g2 = [p for p in ps if p[0] == 2]
    b = bytearray(open(fixture_path(crc), "rb").read())
    b[g2[1][4] + g2[1][5] + g2[1][6] - 1] ^= 1              # the last byte of row group 2's data page
    open(fixture_path("bad_checksum.parquet"), "wb").write(b)
    next_error("bad_checksum.parquet", "row group 2, page 1: page checksum mismatch")

    with open(fixture_path("cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    total = 0
    for name in sorted(os.listdir(OUT)):
        size = os.path.getsize(fixture_path(name))
        total += size
        print("%8d  %s" % (size, name))
    print("%8d  total" % total)


if __name__ == "__main__":
    main()
