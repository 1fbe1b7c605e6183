#!/usr/bin/env python3
"""Writes tests/fixtures/arrow/*: small Arrow IPC files from pyarrow and Hugging Face `datasets`, the
values they hold, the same documents as .jsonl, and broken files.

    pip install pyarrow datasets
    python3 dev/gen_arrow_fixtures.py

Written:
    values_nulls.jsonl      the "text" values, one JSON value a line (a string or null: unicode from several
                            scripts, an empty string, a NUL byte, long strings; as for the Parquet fixtures)
    values_title.jsonl      the "title" values, strings only
    docs.jsonl              the same rows as documents {"text": ..., "title": ...}, a null text as "" (prepro
                            reads a null text as an empty document, as for .parquet)
    stream_utf8.arrow       the IPC stream format (as `datasets` writes): an int64 "id", a list<int32>
                            "tags", "text" (string, with nulls), a struct "meta", "title" (string);
                            record batches of 40, 0, 60 and the rest rows
    stream_large.arrow      the same with large_string columns, batches of 37 rows
    file_utf8.arrow         the IPC file format (ARROW1 magic and footer), batches of 50 rows
    stream_zstd.arrow       the stream with ZSTD-compressed record batches of 64 rows
    hf/                     datasets.Dataset.save_to_disk: data-00000-of-00001.arrow (one record batch),
                            dataset_info.json, state.json
    bad_*.arrow             files cut short, without the end-of-stream marker, LZ4-compressed, with a
                            dictionary-encoded column, not Arrow at all
    cases.json              what tests/test_columnar.c checks for .arrow files: a file and a column, and
                            either the expected values or a piece of the expected error
"""
import importlib.util
import json
import os
import shutil

import pyarrow as pa
import pyarrow.ipc as ipc

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "arrow")

_spec = importlib.util.spec_from_file_location("gen_parquet_fixtures", os.path.join(HERE, "gen_parquet_fixtures.py"))
_pq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pq)


def path(name):
    return os.path.join(OUT, name)


def table(text, title, string_type):
    n = len(text)
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "tags": pa.array([[i, i + 1] if i % 3 else None for i in range(n)], pa.list_(pa.int32())),
        "text": pa.array(text, string_type),
        "meta": pa.array([{"a": i, "b": str(i)} for i in range(n)], pa.struct([("a", pa.int64()), ("b", pa.string())])),
        "title": pa.array(title, string_type),
    })


def batches(t, sizes):
    out, at = [], 0
    for s in sizes:
        out.append(t.slice(at, s).to_batches()[0] if s else pa.RecordBatch.from_pylist([], schema=t.schema))
        at += s
    if at < t.num_rows:
        out.extend(t.slice(at).to_batches(max_chunksize=t.num_rows))
    return out


def write_stream(name, t, sizes, **opts):
    with ipc.new_stream(path(name), t.schema, options=ipc.IpcWriteOptions(**opts)) as w:
        for b in batches(t, sizes):
            w.write_batch(b)


def check_batches(name, want_batches):
    with open(path(name), "rb") as f:
        head = f.read(6)
    r = ipc.open_file(path(name)) if head == b"ARROW1" else ipc.open_stream(path(name))
    n = r.num_record_batches if head == b"ARROW1" else sum(1 for _ in r)
    assert n >= want_batches, f"{name}: {n} record batches, expected at least {want_batches}"


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    text = _pq.values(160, 0.1, 1)
    title = [f"title {i}: " + (t or "")[:20] for i, t in enumerate(text)]
    assert any(v is None for v in text)
    with open(path("values_nulls.jsonl"), "w") as f:
        f.writelines(json.dumps(v) + "\n" for v in text)
    with open(path("values_title.jsonl"), "w") as f:
        f.writelines(json.dumps(v) + "\n" for v in title)
    with open(path("docs.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": v if v is not None else "", "title": t}) + "\n" for v, t in zip(text, title))

    cases = []

    def ok(name, column="text", expect="values_nulls.jsonl"):
        cases.append({"file": name, "column": column, "expect": expect})

    write_stream("stream_utf8.arrow", table(text, title, pa.string()), [40, 0, 60])
    check_batches("stream_utf8.arrow", 4)
    ok("stream_utf8.arrow")
    ok("stream_utf8.arrow", "title", "values_title.jsonl")
    write_stream("stream_large.arrow", table(text, title, pa.large_string()), [37] * 4)
    check_batches("stream_large.arrow", 4)
    ok("stream_large.arrow")
    ok("stream_large.arrow", "title", "values_title.jsonl")
    t = table(text, title, pa.string())
    with ipc.new_file(path("file_utf8.arrow"), t.schema) as w:
        for b in t.to_batches(max_chunksize=50):
            w.write_batch(b)
    check_batches("file_utf8.arrow", 4)
    ok("file_utf8.arrow")
    write_stream("stream_zstd.arrow", table(text, title, pa.string()), [64, 64], compression="zstd")
    ok("stream_zstd.arrow")
    ok("stream_zstd.arrow", "title", "values_title.jsonl")

    # Hugging Face datasets: the stream format, in a folder with its own .json files
    import datasets
    ds = datasets.Dataset.from_dict({"id": list(range(len(text))), "text": text, "title": title})
    tmp = path("hf_tmp")
    ds.save_to_disk(tmp)
    os.makedirs(path("hf"))
    for name in sorted(os.listdir(tmp)):
        shutil.copy(os.path.join(tmp, name), path("hf"))
    shutil.rmtree(tmp)
    data = [n for n in os.listdir(path("hf")) if n.endswith(".arrow")]
    assert data == ["data-00000-of-00001.arrow"], data
    with open(path("hf/" + data[0]), "rb") as f:
        assert f.read(4) == b"\xff\xff\xff\xff", "datasets no longer writes the stream format"
    ok("hf/data-00000-of-00001.arrow")

    # broken files
    def open_error(name, column, msg):
        cases.append({"file": name, "column": column, "open_error": msg})

    def next_error(name, msg):
        cases.append({"file": name, "column": "text", "next_error": msg})

    open_error("stream_utf8.arrow", "body", 'no column "body" (columns: "id", "tags", "text", "meta", "title")')
    open_error("stream_utf8.arrow", "id", 'column "id" has type Int')
    good = open(path("stream_utf8.arrow"), "rb").read()
    with open(path("bad_not_arrow.arrow"), "wb") as f:
        f.write(b'{"text": "a json line, not Arrow"}\n')
    open_error("bad_not_arrow.arrow", "text", "expected the continuation marker 0xFFFFFFFF")
    with open(path("bad_schema_cut.arrow"), "wb") as f:
        f.write(good[:100])
    open_error("bad_schema_cut.arrow", "text", "outside the file")
    # cut inside the third record batch; cut exactly before the end-of-stream marker
    with open(path("bad_cut.arrow"), "wb") as f:
        f.write(good[:len(good) * 2 // 3])
    next_error("bad_cut.arrow", "outside the file")
    assert good[-8:] == b"\xff\xff\xff\xff\x00\x00\x00\x00"
    with open(path("bad_no_eos.arrow"), "wb") as f:
        f.write(good[:-8])
    next_error("bad_no_eos.arrow", "without the end-of-stream marker")
    write_stream("bad_lz4.arrow", table(text, title, pa.string()), [64], compression="lz4")
    next_error("bad_lz4.arrow", "compressed (LZ4_FRAME) record batches are not supported")
    dt = pa.table({"text": pa.array(text, pa.string()).dictionary_encode()})
    with ipc.new_stream(path("bad_dictionary.arrow"), dt.schema) as w:
        w.write_table(dt)
    open_error("bad_dictionary.arrow", "text", "dictionary-encoded")

    with open(path("cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1, ensure_ascii=False)
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {len(cases)} cases, {total} bytes to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
