import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import loghub_file, running_cmdline

from loganalyzer import tracking
from loganalyzer.chunk import ChunkConfig
from loganalyzer.chunk import run as chunk
from loganalyzer.redact import RedactConfig
from loganalyzer.redact import run as redact
from loganalyzer.serve import free_port


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback with a sqlite store."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}", "--artifacts-destination", str(root / "art")],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail((root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    else:
        pytest.fail("mlflow server did not start")
    yield url
    # As a pod stop: SIGTERM, and the server with its workers must be gone well inside the Deployment's grace
    # period (test_manifests' STOP_BOUNDS_S)
    import psutil

    family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    t0 = time.monotonic()
    proc.terminate()
    proc.wait(timeout=30)
    took = time.monotonic() - t0
    time.sleep(0.5)
    left = [cmd for cmd in map(running_cmdline, family) if cmd]
    assert took < 10 and not left, (took, left)


def test_parent_and_nested_stage_runs_on_a_real_server(mlflow_server, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-tracking")
    parent = tracking.start_parent("pipeline", {"base_model": "tiny"}, tags={"kfp.run_id": "kfp-run-123"})
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    chunk(ChunkConfig(logs=[str(loghub_file("HDFS"))], out=str(tmp_path / "c.jsonl"), max_chunks_per_file=2))
    redacted = redact(RedactConfig(chunks=str(tmp_path / "c.jsonl"), out=str(tmp_path / "r.jsonl")))
    tracking.end_parent(parent)
    client = mlflow.tracking.MlflowClient()
    assert client.get_run(parent).info.status == "FINISHED"
    exp = client.get_experiment_by_name("test-tracking")
    children = {r.data.tags["loganalyzer.stage"]: r for r in
                client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")}
    assert set(children) == {"chunk", "redact"}
    # the redaction counts per entity type are metrics of the redact stage's run (HDFS lines name DataNode IPs)
    assert redacted["counts"]["IP_ADDRESS"] > 0
    assert children["redact"].data.metrics["counts.IP_ADDRESS"] == redacted["counts"]["IP_ADDRESS"]
    assert json.loads(children["redact"].data.params["cfg.pii_entities"]) == ["IP_ADDRESS", "EMAIL_ADDRESS",
                                                                               "CREDIT_CARD"]
    child = children["chunk"]
    assert child.data.tags["loganalyzer.stage"] == "chunk" and child.data.tags["kfp.run_id"] == "kfp-run-123"
    assert child.data.metrics["chunks"] == 2 and child.data.params["cfg.max_chunks_per_file"] == "2"
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["c.jsonl.rejects.jsonl"]


def test_tracking_is_a_no_op_without_a_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.start_parent("x") == ""
    with tracking.stage_run("chunk", {"a": 1}) as t:
        t.log_metrics({"m": 1.0})
        assert t.run_id is None


def test_only_rank_zero_logs(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    monkeypatch.setenv("RANK", "3")
    assert not tracking.enabled()
    assert not os.path.exists("unused.db")


def test_a_training_stage_run_records_system_metrics(mlflow_server, monkeypatch):
    """Training runs sample CPU and memory (and GPU, with nvidia-ml-py) into MLflow while they are open."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-system-metrics")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    with tracking.stage_run("train-sft", {"mode": "sft"}, system_metrics=True):
        run_id = mlflow.active_run().info.run_id
        time.sleep(3.5)
    with tracking.stage_run("chunk", {}):
        plain = mlflow.active_run().info.run_id
    client = mlflow.tracking.MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0 and metrics["system/system_memory_usage_megabytes"] > 0
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 2
    assert not [m for m in client.get_run(plain).data.metrics if m.startswith("system/")]


@pytest.mark.integration
def test_trained_models_are_registered_with_lineage_scored_and_deployable(mlflow_server, monkeypatch, tiny_env,
                                                                          tmp_path):
    """train register_as=... -> a version with its lineage (real server); evaluate tags it with its scores;
    deploy resolves models:/NAME/VERSION and models:/NAME@ALIAS to the source it serves."""
    import mlflow

    from loganalyzer.config import ConfigError, config_file, load_yaml
    from loganalyzer.deploy import DeployConfig, resolve_registered
    from loganalyzer.evaluate import EvaluateConfig
    from loganalyzer.evaluate import run as evaluate
    from loganalyzer.registry import RECORD
    from loganalyzer.train import TrainConfig
    from loganalyzer.train import run as train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-registry")
    parent = tracking.start_parent("pipeline", tags={"kfp.run_id": "kfp-run-7"})
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    data = tiny_env["datasets"]
    recipe = {**load_yaml(config_file("sft_tiny_cpu")), "model_name_or_path": str(tiny_env["model"]),
              "train_file": str(data / "sft_train.jsonl"), "output_dir": str(tmp_path / "sft"),
              "register_as": "loganalyzer-sft", "register_tags": {"recipe": "sft_tiny_cpu"}, "save_strategy": "no"}
    # an MLflow server refuses a local path as a version's source: said before training, not after it
    with pytest.raises(ConfigError, match="set storage_uri"):
        train(TrainConfig(**recipe))
    assert not (tmp_path / "sft").exists()
    train(TrainConfig(**recipe, storage_uri="pvc://loganalyzer-models/run-1/sft"))
    record = json.loads((tmp_path / "sft" / RECORD).read_text())
    assert record["name"] == "loganalyzer-sft" and record["version"] == "1"
    client = mlflow.tracking.MlflowClient()
    version = client.get_model_version("loganalyzer-sft", "1")
    assert version.source == "pvc://loganalyzer-models/run-1/sft" and version.run_id == record["run_id"]
    tags = version.tags
    assert tags["base_model"] == str(tiny_env["model"]) and tags["mode"] == "sft" and tags["seed"] == "1309"
    assert tags["recipe"] == "sft_tiny_cpu" and tags["parent_run_id"] == parent and tags["kfp.run_id"] == "kfp-run-7"
    assert tags["train_file_sha256"] == hashlib.sha256((data / "sft_train.jsonl").read_bytes()).hexdigest()
    assert client.get_run(version.run_id).data.tags["loganalyzer.stage"] == "train-sft"

    report = evaluate(EvaluateConfig(test=str(data / "sft_test.jsonl"), models=[f"sft={tmp_path / 'sft'}"],
                                     out=str(tmp_path / "eval"), max_new_tokens=4, limit=2, n_boot=20))
    tags = client.get_model_version("loganalyzer-sft", "1").tags
    assert float(tags["eval.rouge1"]) == pytest.approx(report["sft"]["rouge1"], rel=1e-5)
    assert tags["eval.n"] == "2" and tags["eval.test"] == str(data / "sft_test.jsonl")
    assert "eval.grounding.entity_recall" in tags or report["sft"]["grounding"]["entity_recall"] is None

    client.set_registered_model_alias("loganalyzer-sft", "champion", "1")
    for uri in ("models:/loganalyzer-sft/1", "models:/loganalyzer-sft@champion", "models:/loganalyzer-sft/latest"):
        assert resolve_registered(DeployConfig(name="chat", storage_uri=uri)).storage_uri == "pvc://loganalyzer-models/run-1/sft"
    for uri, why in (("models:/loganalyzer-sft/9", "loganalyzer-sft"), ("models:/nope@x", "nope"),
                     ("models:/a/b/c", "not models:/NAME/VERSION")):
        with pytest.raises(ConfigError, match=why):
            resolve_registered(DeployConfig(name="chat", storage_uri=uri))
    tracking.end_parent(parent)
