import json

import numpy as np
import pytest

from loganalyzer.evaluate import EvaluateConfig, run
from loganalyzer.judge import CRITERIA, JudgeSettings, conversation_text, judge, load_rubric, parse_verdict
from loganalyzer.openai_api import InvalidReply
from loganalyzer.testing.fake_openai import FakeOpenAI

LOG = "sshd[7]: Failed password for root from 10.3.4.5 port 22\nsshd[7]: Connection closed by 10.3.4.5"
REF = "Two failed root logins from 10.3.4.5; the connection was closed."


def _rows(n: int) -> list[dict]:
    return [{"id": f"c{i}/summarize", "task": "summarize", "messages": [
        {"role": "user", "content": f"Summarize.\n\nLog content:\n\n{LOG}\nline {i}"},
        {"role": "assistant", "content": REF}]} for i in range(n)]


def _cfg(url: str, **kw) -> EvaluateConfig:
    return EvaluateConfig(test="unused", models=["m=x"], out="unused", judge_endpoint=url, judge_model="judge",
                          **kw)


def test_verdicts_are_validated():
    ok = {"correctness": 4, "completeness": 3, "grounding": 5, "rationale": "fine"}
    assert parse_verdict(json.dumps(ok)) == ok
    assert parse_verdict("```json\n" + json.dumps(ok) + "\n```") == ok
    assert parse_verdict("Here is my grade: " + json.dumps(ok) + " Thanks.") == ok  # an object inside prose
    assert parse_verdict(json.dumps({**ok, "correctness": 4.0, "rationale": None}))["correctness"] == 4
    for bad, why in [({**ok, "correctness": 6}, "bad_score: correctness"), ({**ok, "grounding": 2.5}, "grounding"),
                     ({**ok, "completeness": True}, "completeness"), ({**ok, "correctness": "4"}, "correctness"),
                     ({"correctness": 3, "completeness": 3}, "grounding must be")]:
        with pytest.raises(InvalidReply, match=why):
            parse_verdict(json.dumps(bad))
    for v in ("NaN", "Infinity"):  # json.loads takes them; a score they are not
        with pytest.raises(InvalidReply, match="bad_score"):
            parse_verdict(f'{{"correctness": {v}, "completeness": 3, "grounding": 3}}')
    for text, why in [("[1, 2, 3]", "bad_schema"), ('{"correctness": 3', "malformed_json"), ("no", "malformed"),
                      ("", "empty_reply"), ("  \n", "empty_reply")]:
        with pytest.raises(InvalidReply, match=why):
            parse_verdict(text)


def test_rubric_and_settings():
    rubric = load_rubric()
    assert rubric.version >= 1
    msgs = rubric.messages("Q and log", "the reference", "")
    assert msgs[0]["role"] == "system" and all(c in msgs[1]["content"] for c in CRITERIA)
    assert msgs[1]["content"].rstrip().endswith("### Answer to grade\n(no answer)")
    history = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
               {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert conversation_text(history) == "user: a\n\nassistant: b\n\nuser: c"
    with pytest.raises(ValueError, match="go together"):
        JudgeSettings(judge_endpoint="http://127.0.0.1:1/v1")


@pytest.mark.heavy  # a loopback endpoint and real retry back-off
def test_scores_follow_the_answers_and_late_429_and_500_replies_are_retried(tmp_path):
    prompts = [r["messages"][:1] for r in _rows(4)]
    answers = {"good": [REF] * 4, "bad": ["The disk is full on node-9."] * 4}
    # every request: a 429, then a reply slower than the client's timeout, then a 500, then the verdict
    with FakeOpenAI(schedule=[["429", "timeout", "500"]], timeout_sleep_s=3) as srv:
        scores, info = judge(_cfg(srv.base_url, judge_timeout=1, judge_max_retries=3), [f"r{i}" for i in range(4)],
                             prompts, [REF] * 4, answers, tmp_path)
    assert srv.requests == 8 * 4 and info["rejects"] == {"good": 0, "bad": 0}
    assert all((scores["good"][c] == 5).all() for c in CRITERIA)  # identical to the reference
    assert all((scores["bad"][c] <= 2).all() for c in CRITERIA)
    rows = [json.loads(x) for x in (tmp_path / "judge_good.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"] and rows[0]["correctness"] == 5
    assert (tmp_path / "judge_rejects.jsonl").read_text() == ""
    assert info["rubric_version"] == load_rubric().version and not info["redaction"]["active"]


def test_invalid_replies_are_asked_again_then_counted_as_rejects(tmp_path):
    prompts = [r["messages"][:1] for r in _rows(3)]
    with FakeOpenAI(schedule=[["malformed"]]) as srv:  # one invalid reply each: the re-ask succeeds
        scores, info = judge(_cfg(srv.base_url), ["a", "b", "c"], prompts, [REF] * 3, {"m": [REF] * 3}, tmp_path)
    assert srv.requests == 6 and info["rejects"] == {"m": 0}
    assert [json.loads(x)["attempts"] for x in (tmp_path / "judge_m.jsonl").read_text().splitlines()] == [2, 2, 2]
    with FakeOpenAI(schedule=[["malformed"] * 3]) as srv:  # more invalid replies than re-asks: rejects
        scores, info = judge(_cfg(srv.base_url, judge_validation_retries=1), ["a", "b", "c"], prompts, [REF] * 3,
                             {"m": [REF] * 3}, tmp_path)
    assert srv.requests == 6 and info["rejects"] == {"m": 3} and np.isnan(scores["m"]["correctness"]).all()
    rejects = [json.loads(x) for x in (tmp_path / "judge_rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["model"], r["attempts"]) for r in rejects] == [("a", "m", 2), ("b", "m", 2), ("c", "m", 2)]
    assert all(r["reason"].startswith("malformed_json") and r["reply"].startswith('{"correctness"') for r in rejects)
    assert (tmp_path / "judge_m.jsonl").read_text() == ""


def test_evaluate_reports_judge_scores_with_cis_and_the_paired_test(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in _rows(6)))
    out = tmp_path / "e"
    with FakeOpenAI(also_serves=("a", "b", "judge")) as srv:
        report = run(EvaluateConfig(test=str(test), endpoint=srv.base_url, models=["sft=a", "cpt_sft=b"],
                                    out=str(out), n_boot=50, judge_endpoint=srv.base_url, judge_model="judge"))
        judge_bodies = [b for b in srv.bodies if b["model"] == "judge"]
    assert len(judge_bodies) == 12 and all(b["temperature"] == 0 for b in judge_bodies)
    for name in ("sft", "cpt_sft"):
        j = report[name]["judge"]
        assert j["correctness_n"] == 6 and j["rejects"] == 0 and 1 <= j["correctness"] <= 5
        assert j["correctness_ci95"][0] <= j["correctness"] <= j["correctness_ci95"][1]
        assert j["judge_model"] == "judge" and j["s_per_100_answers"] > 0
    # the fake model answers both alike, so the judge sees no difference
    assert report["cpt_sft"]["vs_sft_judge"]["correctness"] == {"delta": 0.0, "p_value": 1.0, "ci95": [0.0, 0.0],
                                                                "n": 6}
    md = (out / "report.md").read_text()
    assert "| model | correctness | completeness | grounding | judged | rejects |" in md
    assert "cpt_sft vs sft, correctness: +0.000" in md
    assert json.loads((out / "report.json").read_text()) == report


def test_nothing_secret_reaches_an_external_judge(tmp_path):
    """`redact: on` (auto does the same toward a non-loopback judge): the judge sees pseudonyms, consistently."""
    rows = _rows(2)
    for r in rows:
        r["messages"][0]["content"] += "\nenv: password=hunter2hunter2"
    with FakeOpenAI() as srv:
        scores, info = judge(_cfg(srv.base_url, redact="on"), ["a", "b"], [r["messages"][:1] for r in rows],
                             [REF] * 2, {"m": [REF, "10.3.4.5 again"]}, tmp_path)
        sent = json.dumps(srv.bodies)
    assert "10.3.4.5" not in sent and "hunter2hunter2" not in sent and "192.0.2.1 again" in sent
    # IPs: 2 in each log, 1 in each reference, 1 in each answer
    assert info["redaction"] == {"active": True, "counts": {"IP_ADDRESS": 8, "PASSWORD": 2}}
    assert (scores["m"]["correctness"][0] == 5) and info["rejects"] == {"m": 0}


@pytest.mark.integration
@pytest.mark.real_model
def test_loganalyzer_serve_as_the_judge(smollm2, tmp_path):
    """End to end: the demo's real model, served by `loganalyzer serve`, judges two answers. A 135M model often
    writes no valid verdict: every answer is then judged or a reject with its reason, never lost."""
    from loganalyzer.serve import local_server

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    with FakeOpenAI(also_serves=("fake",)) as srv, local_server(str(smollm2)) as judge_url:
        report = run(EvaluateConfig(test=str(test), endpoint=srv.base_url, models=["m=fake"], out=str(tmp_path / "e"),
                                    n_boot=20, judge_endpoint=judge_url, judge_model=str(smollm2),
                                    judge_max_tokens=64, judge_validation_retries=1))
    j = report["m"]["judge"]
    judged = (tmp_path / "e" / "judge_m.jsonl").read_text().splitlines()
    rejects = [json.loads(x) for x in (tmp_path / "e" / "judge_rejects.jsonl").read_text().splitlines()]
    assert j["correctness_n"] == len(judged) and j["rejects"] == len(rejects) and len(judged) + len(rejects) == 2
    assert all(r["reason"] and r["attempts"] == 2 for r in rejects)
    assert all(1 <= json.loads(x)["correctness"] <= 5 for x in judged)
