import json

import pytest
from conftest import loghub_file

from loganalyzer.demo import DemoConfig, run, stage_summary
from loganalyzer.metrics import METRICS


@pytest.mark.integration
def test_whole_dag_on_the_kfp_local_runner(tmp_path, monkeypatch):
    """chunk -> synthesize (grounded teacher) -> build-datasets -> CPT -> SFT x2 -> evaluate, 2 Loghub systems, on the
    tiny model with the tiny recipes (the real demo model is tested in test_demo_model.py), with 2 replicates."""
    import mlflow

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    logs = [loghub_file("HDFS"), loghub_file("OpenSSH")]
    out = tmp_path / "run"
    report = run(DemoConfig(out=str(out), logs=[str(p) for p in logs],
                            loghub_structured=[str(p.with_name(p.name + "_structured.csv")) for p in logs],
                            base_model="tiny", cpt_recipe="cpt_tiny_cpu", sft_recipe="sft_tiny_cpu",
                            tasks=["summarize", "root_cause", "find_patterns", "compare_halves", "conversation",
                                   "nlplog_qa"], chunk_min_lines=50, chunk_max_lines=150,
                            max_chunks_per_file=3, val_size=1, test_size=2, eval_max_new_tokens=8, replicates=2))
    for path in ("chunks.jsonl", "synth/records.jsonl", "synth/rejects.jsonl", "datasets/sft_train.jsonl",
                 "datasets/cpt_train.jsonl", "datasets/stats.json", "datasets/token_lengths.png",
                 "models/base/config.json", "models/cpt/model.safetensors", "models/sft_seed1309/model.safetensors",
                 "models/cpt_sft_seed1310/model.safetensors", "eval/report.json", "eval/report.md", "eval/metrics.png",
                 "eval/predictions_cpt_sft_r2.jsonl"):
        assert (out / path).is_file(), path
    # the evaluate task's KFP artifacts: the table (Markdown) and table + chart (HTML) for the run's UI
    (md,) = (out / "kfp").glob("*/evaluate/report_md")
    (html,) = (out / "kfp").glob("*/evaluate/report_html")
    assert "| cpt_sft |" in md.read_text() and "<table>" in html.read_text()
    assert list(report) == ["base", "sft", "cpt_sft"]
    assert all(report[m]["n"] == 2 * 5 and set(METRICS) <= set(report[m]) for m in report)  # 4 text tasks + dialog
    assert "vs_sft" in report["cpt_sft"] and "distinguishable" in report["cpt_sft"]["vs_sft_pooled"]["rouge1"]
    for name in ("sft", "cpt_sft"):  # each replicate trained with its own seed, in its own dir
        rep = report[name]["replicates"]
        assert rep["n"] == 2 and [s.rsplit("_seed", 1)[1] for s in rep["sources"]] == ["1309", "1310"]
        seeds = [json.loads((out / "models" / f"{name}_seed{s}" / "loganalyzer_train.json").read_text())["seed"]
                 for s in (1309, 1310)]
        assert seeds == [1309, 1310]
    summary = json.loads((out / "synth" / "summary.json").read_text())
    assert summary["asked"] == summary["accepted"] == 6 * 6 and summary["teacher"] == "grounded"
    assert "**Example**" in (out / "eval" / "report.md").read_text()
    assert stage_summary(out).startswith("chunks: 6\n")
    timings = json.loads((out / "timings.json").read_text())
    assert {"train (cpt)", "train (sft_seed1309)", "train (cpt_sft_seed1310)", "evaluate"} <= set(timings)

    # MLflow: one finished parent run, a nested run per stage, the report's metrics on the parent.
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("loganalyzer-demo")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("loganalyzer.stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    pid = parents[0].info.run_id
    stages = sorted(r.data.tags["loganalyzer.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == pid)
    assert stages == ["build-datasets", "chunk", "evaluate", "synthesize", "train-cpt"] + ["train-sft"] * 4
    assert "cpt_sft.rouge1" in parents[0].data.metrics
    # every trained model is a version in the Model Registry, the evaluated ones tagged with their own scores
    versions = {n: client.search_model_versions(f"name = '{n}'")
                for n in ("loganalyzer-cpt", "loganalyzer-sft", "loganalyzer-cpt-sft")}
    assert {n: len(v) for n, v in versions.items()} == \
        {"loganalyzer-cpt": 1, "loganalyzer-sft": 2, "loganalyzer-cpt-sft": 2}
    for v in versions["loganalyzer-sft"] + versions["loganalyzer-cpt-sft"]:
        run_name = "sft" if v.name == "loganalyzer-sft" else "cpt_sft"
        i = report[run_name]["replicates"]["sources"].index(v.tags["output_dir"])
        assert float(v.tags["eval.rouge1"]) == pytest.approx(report[run_name]["replicates"]["rouge1"]["values"][i],
                                                             rel=1e-5)
        assert v.tags["seed"] == str(1309 + i) and v.tags["recipe"] == "sft_tiny_cpu"
    assert versions["loganalyzer-cpt"][0].tags["base_model"] == str(out / "models" / "base")
    train_runs = [r for r in runs if r.data.tags.get("loganalyzer.stage", "").startswith("train-")]
    assert all("train_tokens_per_s" in r.data.metrics and "loss" in r.data.metrics for r in train_runs)
