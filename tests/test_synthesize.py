import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import loghub_file
from endpoint_helpers import BAD_ENDPOINTS, bad_endpoint

from loganalyzer.chunk import ChunkConfig
from loganalyzer.chunk import run as run_chunk
from loganalyzer.io import read_jsonl
from loganalyzer.prompts import ALL_TASKS, load_prompts
from loganalyzer.synthesize import InvalidReply, SynthesizeConfig, run, validate_reply
from loganalyzer.testing.fake_openai import DEFAULT_SCHEDULE, FakeOpenAI


@pytest.fixture
def chunks(tmp_path):
    out = tmp_path / "chunks.jsonl"
    run_chunk(ChunkConfig(logs=[str(loghub_file("HDFS")), str(loghub_file("OpenSSH"))], out=str(out),
                          max_chunks_per_file=4))
    return out


def _cfg(tmp_path, chunks, srv, **kw):
    base = dict(chunks=str(chunks), out=str(tmp_path / "synth"), base_url=srv.base_url, model="fake-teacher",
                concurrency=8, timeout=0.5, max_retries=4)
    return SynthesizeConfig(**{**base, **kw})


def _keys(path):
    return [(r["chunk_id"], r["task"], r["model"]) for r in read_jsonl(path)]


@pytest.mark.heavy  # a loopback endpoint and real retry back-off
def test_faults_are_retried_validated_and_counted(tmp_path, chunks):
    with FakeOpenAI(schedule=DEFAULT_SCHEDULE, timeout_sleep_s=1.0, retry_after_ms=300) as srv:
        s = run(_cfg(tmp_path, chunks, srv, validation_retries=0))
        keys = _keys(tmp_path / "synth" / "records.jsonl")
        rejects = list(read_jsonl(tmp_path / "synth" / "rejects.jsonl"))
        assert s["asked"] == 8 * 6 == s["accepted"] + s["rejected"] == len(keys) + len(rejects)
        assert len(set(keys)) == len(keys)
        # With no validation re-asks, every malformed/bad-body reply is a reject, with its reason.
        reasons = Counter(r["reason"].split(":")[0] for r in rejects)
        assert reasons and set(reasons) <= {"malformed_json", "empty_reply", "bad_response_body"}
        assert all({"chunk_id", "task", "reason"} <= set(r) for r in rejects)
        # 429 carried Retry-After-Ms: 300; the client waited at least that long before its retry.
        gaps = [t[1] - t[0] for t in srv.times.values() if len(t) > 1]
        assert gaps and min(gaps) >= 0.25
        # A rerun asks only what is missing and completes it (faults for those prompts are used up).
        s2 = run(_cfg(tmp_path, chunks, srv, validation_retries=0))
        assert s2["skipped_done"] == len(keys) and s2["asked"] == len(rejects)
        keys2 = _keys(tmp_path / "synth" / "records.jsonl")
        assert len(keys2) == len(set(keys2)) == 48


def test_record_contents_per_task(tmp_path, chunks):
    with FakeOpenAI() as srv:
        run(_cfg(tmp_path, chunks, srv))
    rows = list(read_jsonl(tmp_path / "synth" / "records.jsonl"))
    by_task = {r["task"]: r for r in rows}
    assert set(by_task) == set(ALL_TASKS)
    conv = by_task["conversation"]["output"]
    assert len(conv) == 10 and [m["role"] for m in conv[:2]] == ["user", "assistant"]
    qa = by_task["nlplog_qa"]["output"]
    assert qa and set(qa[0]) == {"instruction", "log", "output", "domain"} and qa[0]["domain"] in ("HDFS", "OpenSSH")
    assert isinstance(by_task["summarize"]["output"], str)
    assert all(r["prompt_version"] == load_prompts().version for r in rows)


def test_validation_rules():
    cfg = SynthesizeConfig(chunks="c", out="o", conversation_turns=4, nlplog_items=2)
    chunk = {"id": "x", "system": "HDFS", "content": "alpha line\nbeta line"}
    ok = json.dumps({"messages": [{"role": r, "content": "hi"} for r in ["user", "assistant"] * 2]})
    assert len(validate_reply("conversation", "```json\n" + ok + "\n```", chunk, cfg)) == 4
    for bad, why in [
        (json.dumps({"messages": [{"role": "user", "content": "x"}] * 4}), "bad_roles"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
         "wrong_turn_count"),
        ('{"messages": [', "malformed_json"),
    ]:
        with pytest.raises(InvalidReply, match=why):
            validate_reply("conversation", bad, chunk, cfg)
    rec = {"instruction": "What is it?", "log": "beta line", "output": "A beta event."}
    assert validate_reply("nlplog_qa", json.dumps({"records": [rec]}), chunk, cfg)[0]["domain"] == "HDFS"
    with pytest.raises(InvalidReply, match="ungrounded"):
        validate_reply("nlplog_qa", json.dumps({"records": [{**rec, "log": "invented"}]}), chunk, cfg)
    with pytest.raises(InvalidReply, match="empty_reply"):
        validate_reply("summarize", "  ", chunk, cfg)


def test_unknown_task_and_missing_key_are_usage_errors(tmp_path, chunks, monkeypatch):
    from loganalyzer.cli import entry
    from loganalyzer.synthesize import main

    with pytest.raises(SystemExit) as e:
        entry(main, ["--chunks", str(chunks), "--out", str(tmp_path), "--tasks", "summarize", "poetry"])
    assert e.value.code == 2
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        entry(main, ["--chunks", str(chunks), "--out", str(tmp_path)])
    assert e.value.code == 2


@pytest.mark.heavy  # a synthesize subprocess, killed and started again
def test_kill_9_and_resume_loses_nothing_and_duplicates_nothing(tmp_path, chunks):
    out = tmp_path / "synth"
    with FakeOpenAI(latency_s=0.15, schedule=[[], ["429"], ["500"]]) as srv:
        cmd = [sys.executable, "-m", "loganalyzer.synthesize", "--chunks", str(chunks), "--out", str(out),
               "--base-url", srv.base_url, "--model", "fake-teacher", "--concurrency", "4"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OPENAI_API_KEY": "x"})
        records = out / "records.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and (not records.exists() or records.read_text().count("\n") < 10):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = _keys(records)
        assert 10 <= len(before) < 48, "the kill should land mid-run"
        # Simulate a torn write at the moment of the kill.
        with open(records, "a") as fh:
            fh.write('{"chunk_id": "torn')
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "x"})
        assert done.returncode == 0, done.stderr
        after = _keys(records)
        assert len(after) == len(set(after)) == 48
        assert set(before) <= set(after)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["skipped_done"] == len(before) and summary["accepted"] == 48 - len(before)


def test_tasks_flag_takes_commas_or_spaces():
    from loganalyzer.config import parse_config

    for argv in (["--tasks", "summarize,root_cause"], ["--tasks", "summarize", "root_cause"],
                 ["tasks=summarize,root_cause"]):
        cfg = parse_config(SynthesizeConfig, "synthesize", ["--chunks", "c", "--out", "o", *argv])
        assert cfg.tasks == ["summarize", "root_cause"]


@pytest.mark.parametrize("cause", BAD_ENDPOINTS)
def test_a_bad_endpoint_fails_in_seconds_with_its_cause_and_no_rejects(cause, tmp_path, chunks):
    """Before the first real request, synthesize lists the endpoint's models once, with no retries: each cause is
    reported as it happened (a refused connection is not a timeout), with the endpoint and the fix, in under 10 s,
    and nothing is written to the rejects file. (Before: 82 s of retries for 23 chunks, reported as timeouts.)"""
    from loganalyzer.config import ConfigError

    out = tmp_path / "synth"
    with bad_endpoint(cause) as url:
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as err:
            run(SynthesizeConfig(chunks=str(chunks), out=str(out), base_url=url, model="gpt-4o-mini"))
        assert time.monotonic() - t0 < 10
    assert str(err.value).startswith(f"--base-url {url}: ") and BAD_ENDPOINTS[cause] in str(err.value), err.value
    assert cause != "unknown_model" or "model gpt-4o-mini is not served there" in str(err.value)
    assert "timeout" not in str(err.value).lower() or cause == "stalled"
    rejects = out / "rejects.jsonl"
    assert not rejects.exists() or rejects.read_text() == ""


def test_a_refused_endpoint_exits_2_from_the_command_line(tmp_path, chunks):
    from loganalyzer.serve import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    result = subprocess.run([sys.executable, "-m", "loganalyzer", "synthesize", "--chunks", str(chunks), "--out",
                             str(tmp_path / "s"), "--base-url", url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"error: --base-url {url}: connection refused" in result.stderr, result.stderr
