import gzip
import json

import pytest
from conftest import loghub_file

from loganalyzer.chunk import ChunkConfig, _FileStats, chunk_file, main, run, system_name
from loganalyzer.io import read_jsonl


def _cfg(tmp_path, logs, **kw):
    return ChunkConfig(logs=[str(p) for p in logs], out=str(tmp_path / "chunks.jsonl"), **kw)


def _original_lines(path):
    text = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    return text.removesuffix("\n").split("\n")


@pytest.mark.parametrize("system", ["Linux", "HDFS", "Proxifier", "BGL"])
def test_real_loghub_every_line_lands_in_exactly_one_chunk(tmp_path, system):
    path = loghub_file(system)
    summary = run(_cfg(tmp_path, [path]))
    chunks = list(read_jsonl(tmp_path / "chunks.jsonl"))
    lines = _original_lines(path)
    assert summary["chunks"] == len(chunks) >= 13
    expected_start = 1
    for c in chunks:
        assert set(c) == {"id", "system", "source", "start_line", "end_line", "num_lines", "content"}
        assert c["system"] == system
        assert 50 <= c["num_lines"] <= 150
        assert c["start_line"] == expected_start
        assert c["end_line"] == c["start_line"] + c["num_lines"] - 1
        assert c["content"] == "\n".join(lines[c["start_line"] - 1:c["end_line"]])
        assert "\r" not in c["content"]
        expected_start = c["end_line"] + 1
    assert expected_start - 1 == len(lines) == summary["lines_chunked"]
    assert len({c["id"] for c in chunks}) == len(chunks)


def test_seeded_lengths_are_reproducible_and_seed_dependent(tmp_path):
    path = loghub_file("Apache")
    a = [c["num_lines"] for c in chunk_file(path, _cfg(tmp_path, [path]), _FileStats())]
    b = [c["num_lines"] for c in chunk_file(path, _cfg(tmp_path, [path]), _FileStats())]
    c = [c["num_lines"] for c in chunk_file(path, _cfg(tmp_path, [path], seed=7), _FileStats())]
    assert a == b and a != c
    assert len(set(a)) > 3  # random lengths, not a fixed stride


@pytest.mark.parametrize("n_lines", [49, 50, 120, 150, 151, 199, 200, 299, 1000, 1001])
def test_tail_rule_boundaries(tmp_path, n_lines):
    p = tmp_path / "sys_x.log"
    p.write_text("\n".join(f"line {i}" for i in range(1, n_lines + 1)) + "\n")
    stats = _FileStats()
    chunks = list(chunk_file(p, _cfg(tmp_path, [p]), stats))
    if n_lines < 50:
        assert chunks == [] and stats.counts["lines_dropped"] == n_lines
        assert stats.rejects[0]["reason"].startswith("file_too_short")
    else:
        assert sum(c["num_lines"] for c in chunks) == n_lines
        assert all(50 <= c["num_lines"] <= 150 for c in chunks)
        assert not stats.rejects


def test_tail_dropped_and_reported_when_bounds_cannot_split(tmp_path):
    p = tmp_path / "a.log"
    p.write_text("\n".join(str(i) for i in range(130)))
    stats = _FileStats()
    chunks = list(chunk_file(p, _cfg(tmp_path, [p], min_lines=100, max_lines=100), stats))
    assert [c["num_lines"] for c in chunks] == [100]
    assert stats.counts["lines_dropped"] == 30
    assert stats.rejects[0]["reason"].startswith("tail_unsplittable")


def test_max_chunks_per_file_stops_and_reports(tmp_path):
    path = loghub_file("HDFS")
    summary = run(_cfg(tmp_path, [path], max_chunks_per_file=3))
    assert summary["chunks"] == 3
    rejects = list(read_jsonl(tmp_path / "chunks.jsonl.rejects.jsonl"))
    assert rejects[0]["reason"].startswith("max_chunks_per_file")


def test_bad_inputs_are_counted_and_rejected(tmp_path):
    good = tmp_path / "Good_1.log"
    good.write_text("\n".join(f"ok {i}" for i in range(60)))
    empty = tmp_path / "Empty.log"
    empty.write_bytes(b"")
    binary = tmp_path / "Bin.log"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    latin = tmp_path / "Latin.log"
    latin.write_bytes(b"\n".join(b"caf\xe9 %d" % i for i in range(60)))
    huge = tmp_path / "Huge.log"
    huge.write_bytes(b"\n".join([b"x" * 3_000_000] + [b"y"] * 59))
    gz = tmp_path / "Zipped.log.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("\n".join(f"z {i}" for i in range(70)))
    summary = run(_cfg(tmp_path, [good, empty, binary, latin, huge, gz], max_line_bytes=1000))
    rejects = list(read_jsonl(tmp_path / "chunks.jsonl.rejects.jsonl"))
    reasons = {r["reason"].split(":")[0] for r in rejects}
    assert {"empty", "binary", "line_truncated"} <= reasons
    assert summary["non_utf8_lines"] == 60
    assert summary["chunks_per_system"] == {"Good": 1, "Latin": 1, "Huge": 1, "Zipped": 1}
    chunks = {c["system"]: c for c in read_jsonl(tmp_path / "chunks.jsonl")}
    assert len(chunks["Huge"]["content"].split("\n")[0]) == 1000
    assert "caf\ufffd 0" in chunks["Latin"]["content"]
    trunc = next(r for r in rejects if r["reason"].startswith("line_truncated"))
    assert trunc["line"] == 1 and trunc["bytes_dropped"] == 3_000_000 - 1000


def test_line_split_across_blocks_is_reassembled(tmp_path, monkeypatch):
    import loganalyzer.chunk as chunk_mod

    monkeypatch.setattr(chunk_mod, "BLOCK_BYTES", 7)  # lines straddle many blocks
    p = tmp_path / "Small.log"
    lines = [f"event {i} with some words \u00e9" for i in range(75)]
    p.write_bytes(("\r\n".join(lines)).encode())
    (c,) = list(chunk_file(p, _cfg(tmp_path, [p]), _FileStats()))
    assert c["content"] == "\n".join(lines)


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    from loganalyzer.cli import entry

    with pytest.raises(SystemExit) as e:
        entry(main, ["--logs", str(tmp_path / "missing.log"), "--out", str(tmp_path / "o.jsonl")])
    assert e.value.code == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        entry(main, ["--logs", "x", "--out", "y", "--min-lines", "200"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        entry(main, ["--logs", "x", "--out", "y", "bogus_key=1"])
    assert e.value.code == 2
    assert "unknown key" in capsys.readouterr().err


def test_directory_expansion_and_system_names(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    for name in ("Spark_2k.log", "notes.md"):
        (d / name).write_text("\n".join(str(i) for i in range(80)))
    summary = run(_cfg(tmp_path, [d]))
    assert summary["files"] == 1 and summary["chunks_per_system"] == {"Spark": 1}
    assert system_name(tmp_path / "kern.log") == "kern"
    json.dumps(summary)
