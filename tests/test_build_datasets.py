import json

import pytest
from conftest import LOGHUB, loghub_file

from loganalyzer.build_datasets import BuildDatasetsConfig, loghub_template_qa, run, split_chunks
from loganalyzer.config import ConfigError
from loganalyzer.io import read_jsonl
from loganalyzer.prompts import load_prompts


def test_split_is_by_chunk_seeded_and_stratified():
    systems = {f"{s}-{i}": s for s in ("A", "B", "C") for i in range(20)}
    split = split_chunks(systems, val_size=6, test_size=9, seed=1)
    assert split == split_chunks(systems, val_size=6, test_size=9, seed=1)
    assert split != split_chunks(systems, val_size=6, test_size=9, seed=2)
    test = [c for c, s in split.items() if s == "test"]
    assert len(test) == 9 and {systems[c] for c in test} == {"A", "B", "C"}
    assert sum(s == "val" for s in split.values()) == 6
    with pytest.raises(ConfigError):
        split_chunks(systems, val_size=30, test_size=30, seed=1)


def test_sft_format_is_the_seeds_and_splits_do_not_share_logs(tiny_env):
    ds = tiny_env["datasets"]
    chunks = {c["id"]: c for c in read_jsonl(tiny_env["chunks"])}
    prompts = load_prompts()
    seen = {}
    for split in ("train", "val", "test"):
        for row in read_jsonl(ds / f"sft_{split}.jsonl"):
            assert seen.setdefault(row["chunk_id"], split) == split, "a chunk appears in two splits"
            log = chunks[row["chunk_id"]]["content"]
            first = row["messages"][0]
            if row["task"] == "conversation":
                assert len(row["messages"]) == 10
                assert first["content"].endswith("\n\nLog content:\n\n" + log)
                assert all("Log content:" not in m["content"] for m in row["messages"][1:])
            else:
                assert first == {"role": "user", "content": prompts.question(row["task"])
                                 + " Please answer in detail.\n\nLog content:\n\n" + log}
                assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert {s for s in seen.values()} == {"train", "val", "test"}


def test_cpt_corpus_uses_train_chunks_only(tiny_env):
    ds = tiny_env["datasets"]
    train_chunks = {r["chunk_id"] for r in read_jsonl(ds / "sft_train.jsonl")}
    cpt = list(read_jsonl(ds / "cpt_train.jsonl"))
    assert cpt and all(r["chunk_id"] in train_chunks for r in cpt if r["source"] == "nlplog_qa")
    assert all(r["text"].startswith("Human: ") and "\nAssistant: " in r["text"] and r["text"].endswith("\n")
               for r in cpt)
    stats = json.loads((ds / "stats.json").read_text())
    assert stats["counts"]["nlplog_qa_held_out_test"] > 0
    assert stats["token_lengths"]["sft_train"]["n"] == stats["sft"]["train"]["total"]
    assert 0 <= stats["token_lengths"]["sft_train"]["share_above_max_seq_length"] <= 1
    assert (ds / "token_lengths.png").stat().st_size > 5000


def test_nlplog_files_and_rejects(tmp_path, tiny_env):
    good = {"instruction": "What is X?", "log": "x", "output": "X is x.", "domain": "Android"}
    (tmp_path / "n.json").write_text(json.dumps([good, {"instruction": "", "output": "?"}]))
    (tmp_path / "n.jsonl").write_text(json.dumps(good) + "\n")
    stats = run(BuildDatasetsConfig(chunks=str(tiny_env["chunks"]), out=str(tmp_path / "o"),
                                    nlplog=[str(tmp_path / "n.json"), str(tmp_path / "n.jsonl")]))
    assert stats["cpt"]["total"] == 2 and stats["rejects"] == 1
    cpt = list(read_jsonl(tmp_path / "o" / "cpt_train.jsonl"))
    assert cpt[0]["text"] == "Human: What is X?\nAssistant: X is x.\n"
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ConfigError, match="bad.json"):
        run(BuildDatasetsConfig(chunks=str(tiny_env["chunks"]), out=str(tmp_path / "o2"),
                                nlplog=[str(tmp_path / "bad.json")]))


def test_seed_nlplog_schema_example_is_accepted(tmp_path, shared_data, tiny_env):
    stats = run(BuildDatasetsConfig(chunks=str(tiny_env["chunks"]), out=str(tmp_path / "o"),
                                    nlplog=[str(shared_data / "nlplog" / "nlplog_schema_example_1record.json")]))
    assert stats["cpt"]["total"] == 1


def test_loghub_template_qa_extracts_parameters():
    csv = loghub_file("OpenSSH").with_name("OpenSSH_2k.log_structured.csv")
    if not csv.exists():
        csv = LOGHUB / "OpenSSH" / "OpenSSH_2k.log_structured.csv"
    rows = loghub_template_qa(str(csv))
    templates = {r["output"].split("\n")[1] for r in rows}
    assert len(rows) == len(templates) >= 20  # one record per distinct event template
    r = next(r for r in rows if "POSSIBLE BREAK-IN ATTEMPT" in r["log"])
    assert "reverse mapping checking getaddrinfo for <*> [<*>]" in r["output"]
    assert "'173.234.31.186'" in r["output"] and r["domain"] == "OpenSSH"
