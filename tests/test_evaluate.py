import json

import numpy as np
import pytest

from loganalyzer.config import ConfigError
from loganalyzer.evaluate import EvaluateConfig, prompt_and_reference, run
from loganalyzer.metrics import METRICS
from loganalyzer.testing.fake_openai import FakeOpenAI


def test_prompt_is_everything_before_the_last_assistant_turn():
    msgs = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert prompt_and_reference({"messages": msgs}) == (msgs[:3], "a2")
    with pytest.raises(ValueError):
        prompt_and_reference({"id": "x", "messages": msgs[:1]})


def test_endpoint_mode_report_shape_and_paired_comparison(tiny_env, tmp_path):
    out = tmp_path / "eval"
    with FakeOpenAI(also_serves=("m1", "m2", "m3")) as srv:
        report = run(EvaluateConfig(test=str(tiny_env["datasets"] / "sft_test.jsonl"), endpoint=srv.base_url,
                                    models=["base=m1", "sft=m2", "cpt_sft=m3"], out=str(out), n_boot=50))
    assert list(report) == ["base", "sft", "cpt_sft"]
    for r in report.values():
        assert set(METRICS) | {"n"} <= set(r) and r["n"] == 10
        assert all(r[m + "_ci95"][0] <= r[m] <= r[m + "_ci95"][1] for m in METRICS)
        assert set(r["per_task"]) == {"summarize", "root_cause", "find_patterns", "compare_halves", "conversation"}
    # The fake teacher answers deterministically, so every model scores the same: no difference.
    assert report["cpt_sft"]["vs_sft"]["rouge1"]["delta"] == 0 and report["cpt_sft"]["vs_sft"]["rouge1"]["p_value"] == 1
    # grounding: the fake teacher's answers quote the log's first and last lines, so every detail is in the log
    for r in report.values():
        assert r["grounding"]["entity_precision"] == 1.0 and r["grounding"]["entity_precision_n"] == 10
    assert report["cpt_sft"]["vs_sft_grounding"]["entity_precision"]["delta"] == 0
    assert "| model | entity_precision | n | entity_recall | n |" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text()) == report
    assert "| cpt_sft |" in (out / "report.md").read_text() and (out / "metrics.png").stat().st_size > 5000
    html = (out / "report.html").read_text()
    assert "<td>cpt_sft</td>" in html and "<th>rougeLsum</th>" in html and "data:image/png;base64,iVBOR" in html
    preds = [json.loads(x) for x in (out / "predictions_sft.jsonl").read_text().splitlines()]
    assert len(preds) == 10 and {"id", "task", "prediction", "reference"} <= set(preds[0])


@pytest.mark.integration
def test_in_process_generation_is_greedy_and_deterministic(tiny_env, tmp_path):
    cfg = dict(test=str(tiny_env["datasets"] / "sft_test.jsonl"), models=[f"base={tiny_env['model']}"],
               max_new_tokens=8, limit=3, n_boot=20, batch_size=2)
    a = run(EvaluateConfig(out=str(tmp_path / "a"), **cfg))
    b = run(EvaluateConfig(out=str(tmp_path / "b"), **cfg))
    assert a["base"].pop("generate_s_per_100") > 0 and b["base"].pop("generate_s_per_100") > 0  # timings
    assert a == b
    pred_a, pred_b = (tmp_path / d / "predictions_base.jsonl" for d in "ab")
    assert pred_a.read_text() == pred_b.read_text()


def test_missing_model_dir_is_a_usage_error(tiny_env, tmp_path):
    with pytest.raises(ConfigError, match="no such model dir"):
        run(EvaluateConfig(test=str(tiny_env["datasets"] / "sft_test.jsonl"), models=["base=/nope"],
                           out=str(tmp_path)))


@pytest.mark.heavy  # Presidio's spaCy pipeline and a loopback endpoint
def test_endpoint_prompts_and_references_are_redacted_alike(tmp_path):
    """`redact: on` (or auto toward a non-loopback endpoint): no secret reaches the endpoint, and the reference
    names the host by the pseudonym the model was shown."""
    log = "sshd[7]: Failed password for root from 10.3.4.5 port 22\nenv: password=hunter2hunter2"
    rows = [{"id": f"c{i}/summarize", "task": "summarize", "messages": [
        {"role": "user", "content": f"Summarize.\n\nLog content:\n\n{log}\nline {i}"},
        {"role": "assistant", "content": "Root login attempts from 10.3.4.5 failed."}]} for i in range(3)]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAI(also_serves=("fake",)) as srv:
        run(EvaluateConfig(test=str(test), endpoint=srv.base_url, models=["m=fake"], out=str(tmp_path / "e"),
                           n_boot=10, redact="on"))
        sent = json.dumps(srv.bodies)
    assert len(srv.bodies) == 3 and "10.3.4.5" not in sent and "hunter2hunter2" not in sent
    assert "192.0.2.1" in sent and "<SECRET:PASSWORD>" in sent
    preds = [json.loads(x) for x in (tmp_path / "e" / "predictions_m.jsonl").read_text().splitlines()]
    assert {p["reference"] for p in preds} == {"Root login attempts from 192.0.2.1 failed."}
    assert json.loads((tmp_path / "e" / "redaction.json").read_text())["counts"] == {"IP_ADDRESS": 6, "PASSWORD": 3}


def test_eval_sets_in_sharegpt_alpaca_and_our_format(tmp_path, shared_data):
    """A published test set is read as is: the seed's ShareGPT chat file (real records, read in place), Alpaca
    JSON Lines, our sft_test rows; a record without its reference field is an error naming the record."""
    from loganalyzer.eval_sets import load_eval_set

    seed = shared_data / "fpt_json_analysis" / "test_json.json"
    rows = load_eval_set(seed)
    raw = json.loads(seed.read_text())
    assert len(rows) == len(raw) == 100
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    assert prompt_and_reference(rows[0])[1] == raw[0]["conversations"][-1]["value"]
    assert "Log content:" in rows[0]["messages"][0]["content"]
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Summarize the log.", "input": "a\nb", "output": "Two lines."}) + "\n"
                      + json.dumps({"id": "x", "instruction": "Any errors?", "input": "", "output": "No."}) + "\n")
    assert [r["messages"] for r in load_eval_set(alpaca)] == [
        [{"role": "user", "content": "Summarize the log.\n\na\nb"}, {"role": "assistant", "content": "Two lines."}],
        [{"role": "user", "content": "Any errors?"}, {"role": "assistant", "content": "No."}]]
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"id": "c1/summarize", "task": "summarize", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    assert load_eval_set(ours)[0]["task"] == "summarize"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q2", "input": "x"}]))
    with pytest.raises(ValueError, match=r"bad.json record 1: Alpaca record without a string 'output'"):
        load_eval_set(bad)
    (tmp_path / "gpt.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "only a question"}]}]))
    with pytest.raises(ValueError, match="record 0: no assistant turn"):
        load_eval_set(tmp_path / "gpt.json")


def test_evaluate_on_the_seeds_sharegpt_test_file(tmp_path, shared_data):
    with FakeOpenAI(also_serves=("fake",)) as srv:
        report = run(EvaluateConfig(test=str(shared_data / "fpt_json_analysis" / "test_json.json"), limit=6,
                                    endpoint=srv.base_url, models=["m=fake"], out=str(tmp_path / "e"), n_boot=20))
    assert report["m"]["n"] == 6 and set(report["m"]["per_task"]) == {"all"}
    assert len(srv.bodies) == 6 and srv.bodies[0]["messages"][0]["content"].startswith("You are analyzing log")


def test_each_eval_set_gets_its_own_section(tmp_path, shared_data):
    """--eval-set FILE and NAME=FILE: the seed's ShareGPT file and an Alpaca file beside the test split, one
    section each in report.json and report.md, the files under eval_sets/NAME/; the top level is unchanged."""
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": f"Any errors in run {i}?", "input": "a\nb", "output": "No."})
                              + "\n" for i in range(3)))
    ours = tmp_path / "test.jsonl"
    ours.write_text(json.dumps({"id": "c1/summarize", "task": "summarize", "messages": [
        {"role": "user", "content": "Summarize.\n\nLog content:\n\nx"}, {"role": "assistant", "content": "a"}]}) + "\n")
    out = tmp_path / "e"
    with FakeOpenAI(also_serves=("a", "b")) as srv:
        report = run(EvaluateConfig(test=str(ours), endpoint=srv.base_url, models=["sft=a", "cpt_sft=b"], out=str(out),
                                    n_boot=20, limit=4, eval_set=[str(alpaca), "seed=" + str(
                                        shared_data / "fpt_json_analysis" / "test_json.json")]))
    assert len(srv.bodies) == 2 * (1 + 3 + 4)
    assert report["sft"]["n"] == 1 and set(report["sft"]["eval_sets"]) == {"alpaca", "seed"}
    seed = report["sft"]["eval_sets"]["seed"]
    assert seed["n"] == 4 and seed["file"].endswith("test_json.json") and "grounding" in seed
    assert report["cpt_sft"]["eval_sets"]["alpaca"]["vs_sft"]["rouge1"]["p_value"] == 1.0
    assert report["cpt_sft"]["eval_sets"]["alpaca"]["n"] == 3
    assert len((out / "eval_sets" / "seed" / "predictions_cpt_sft.jsonl").read_text().splitlines()) == 4
    md = (out / "report.md").read_text()
    assert "## Eval set `alpaca`" in md and "## Eval set `seed`" in md and md.count("| model | n | fuzzy_match") == 3
    for bad, why in [(["test=x.json"], "not 'test'"), (["a=x", "a=y"], "unique"), (["b c=x"], "letters")]:
        with pytest.raises(ValueError, match=why):
            EvaluateConfig(test=str(ours), models=["m=x"], out="o", eval_set=bad)
    with pytest.raises(ConfigError) as e:
        run(EvaluateConfig(test=str(ours), models=["m=x"], out=str(out), eval_set=[str(tmp_path / "nope.jsonl")]))
    assert e.value.message == f"--eval-set {tmp_path / 'nope.jsonl'}: no such file"


def test_replicates_give_mean_sd_and_a_verdict_against_seed_noise(tmp_path, monkeypatch):
    """A repeated model name is another replicate (another seed). Hand-built answers: cpt_sft's replicates all
    copy the reference, sft's replicates half of it, differently per seed: the difference is beyond seed noise;
    two alike sets of replicates are within it."""
    from loganalyzer.replicates import expand

    refs = [f"host node-{i} failed to write block blk_{i} after {i} retries" for i in range(8)]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"id": f"r{i}", "task": "summarize", "messages": [
        {"role": "user", "content": f"Summarize.\n\nLog content:\n\n{r}"}, {"role": "assistant", "content": r}]})
        + "\n" for i, r in enumerate(refs)))
    answers = {"good": refs, "half1": [" ".join(r.split()[:5]) for r in refs],
               "half2": [" ".join(r.split()[:4]) for r in refs], "half3": [" ".join(r.split()[:6]) for r in refs]}
    dirs = {}
    for name, preds in answers.items():  # each "model" answers from a file
        (tmp_path / name).write_text(json.dumps(preds))
        dirs[name] = str(tmp_path / name)

    import loganalyzer.evaluate as ev

    monkeypatch.setattr(ev, "generate_endpoint", lambda src, prompts, cfg: json.loads(open(src).read()))
    monkeypatch.setattr("loganalyzer.openai_api.check_endpoint", lambda *a, **k: [])  # no endpoint: answers from files

    def evaluate(models, out):
        return run(EvaluateConfig(test=str(test), endpoint="http://127.0.0.1:9/v1", out=str(tmp_path / out),
                                  n_boot=200, models=models))

    report = evaluate([f"sft={dirs['half1']}", f"sft={dirs['half2']}", f"sft={dirs['half3']}",
                       f"cpt_sft={dirs['good']}", f"cpt_sft={dirs['good']}", f"cpt_sft={dirs['good']}"], "a")
    same = evaluate([f"sft={dirs['half1']}", f"sft={dirs['half2']}", f"sft={dirs['half3']}",
                     f"cpt_sft={dirs['half2']}", f"cpt_sft={dirs['half3']}", f"cpt_sft={dirs['half1']}"], "b")
    assert list(report) == ["sft", "cpt_sft"]  # later replicates fold into the first's entry
    rep = report["sft"]["replicates"]
    assert rep["n"] == 3 and rep["runs"] == ["sft", "sft_r2", "sft_r3"] and rep["sources"][1] == dirs["half2"]
    vals = rep["fuzzy_match"]["values"]
    assert vals[0] == report["sft"]["fuzzy_match"] and rep["fuzzy_match"]["mean"] == pytest.approx(sum(vals) / 3)
    assert rep["fuzzy_match"]["sd"] == pytest.approx(float(np.std(vals, ddof=1)))
    assert report["cpt_sft"]["replicates"]["rouge1"] == {"mean": 1.0, "sd": 0.0, "values": [1.0, 1.0, 1.0]}
    verdict = report["cpt_sft"]["vs_sft_pooled"]["rouge1"]
    assert verdict["distinguishable"] and verdict["delta"] > 0.3 and "beyond seed noise" in verdict["words"]
    pooled = same["cpt_sft"]["vs_sft_pooled"]["rouge1"]
    assert pooled["delta"] == pytest.approx(0) and not pooled["distinguishable"]
    assert "within seed noise" in pooled["words"] and pooled["welch_p"] == pytest.approx(1.0)
    md = (tmp_path / "a" / "report.md").read_text()
    assert "| sft | 3 |" in md and "- rouge1: cpt_sft - sft = +" in md
    assert (tmp_path / "a" / "predictions_sft_r3.jsonl").is_file()
    with pytest.raises(ValueError, match="'sft_r2' is both given"):
        expand(["sft=a", "sft=b", "sft_r2=c"])


def test_two_seeds_are_too_few_to_weigh_against_seed_noise():
    from loganalyzer.replicates import seed_verdict

    pooled = {"rouge1": {"delta": 0.3, "p_value": 0.001, "ci95": [0.2, 0.4]}}
    two = seed_verdict(pooled, {"rouge1": {"values": [0.5, 0.52]}}, {"rouge1": {"values": [0.8, 0.83]}})["rouge1"]
    assert two["distinguishable"] is None and "2 seeds are too few (replicates >= 3)" in two["words"]
    three = seed_verdict(pooled, {"rouge1": {"values": [0.5, 0.52, 0.51]}},
                         {"rouge1": {"values": [0.8, 0.83, 0.81]}})["rouge1"]
    assert three["distinguishable"] is True and three["welch_p"] < 0.05 and "beyond seed noise" in three["words"]
