"""The KFP pipeline definition: both targets' DAGs, the committed cluster YAML (fresh compile == committed, CRD
schemas, server-side dry-run), and ``loganalyzer pipeline run`` against a loopback KFP API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from kube_helpers import load_all, validate

from loganalyzer.pipeline import COMPILED, load_definition


@pytest.fixture
def definition(monkeypatch):
    for var in ("LOGANALYZER_IMAGE_REGISTRY", "LOGANALYZER_IMAGE_TAG"):
        monkeypatch.delenv(var, raising=False)
    return load_definition()


def _compile(pipeline, path):
    from kfp import compiler

    compiler.Compiler().compile(pipeline, str(path))
    return yaml.safe_load(path.read_text())


def _deps(spec):
    return {name: set(t.get("dependentTasks", [])) for name, t in spec["root"]["dag"]["tasks"].items()}


def test_local_dag(definition, tmp_path):
    spec = _compile(definition.build("local"), tmp_path / "p.yaml")
    deps = _deps(spec)
    assert set(deps) == {"paths", "start", "chunk", "base-model", "synthesize", "build-datasets", "train", "train-2",
                         "train-3", "evaluate", "finish"}
    assert "chunk" in deps["synthesize"] and "base-model" not in deps["synthesize"]  # teachers need no base model
    assert {"synthesize", "base-model"} <= deps["build-datasets"]
    assert "build-datasets" in deps["train"]  # CPT
    assert "train" in deps["train-2"]  # SFT on the CPT model
    assert "train" not in deps["train-3"] and "base-model" in deps["train-3"]  # SFT on the base model
    assert {"train-2", "train-3", "base-model"} <= deps["evaluate"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["base_model_name"]["defaultValue"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (params["teacher"]["defaultValue"], params["chunk_min_lines"]["defaultValue"],
            params["chunk_max_lines"]["defaultValue"]) == ("auto", 50, 150)
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == \
        {"metrics": "system.Metrics", "report_md": "system.Markdown", "report_html": "system.HTML"}
    assert "platforms" not in spec  # nothing Kubernetes-specific locally


def test_cluster_dag(definition, tmp_path):
    from kfp import compiler

    out = tmp_path / "c.yaml"
    compiler.Compiler().compile(definition.build("cluster"), str(out))
    spec, platform = yaml.safe_load_all(out.read_text())
    deps = _deps(spec)
    tasks = spec["root"]["dag"]["tasks"]
    names = {n: t["taskInfo"]["name"] for n, t in tasks.items()}
    assert {names[n] for n in ("launch-training", "launch-training-2", "launch-training-3")} == \
        {"cpt", "cpt-sft", "sft"}
    assert "train" not in deps
    engines = {names[n]: tasks[n]["inputs"]["parameters"]["engine"] for n in names if n.startswith("launch-training")}
    assert engines["cpt"] == {"runtimeValue": {"constant": "pytorchjob"}}
    assert engines["sft"] == engines["cpt-sft"] == {"componentInputParameter": "sft_engine"}
    # serves the cpt_sft model (or its adapter on the CPT model), after evaluation
    assert deps["deploy"] == {"evaluate", "launch-training", "launch-training-2"}
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-evaluate"]["container"]["image"].startswith("loganalyzer-train:")
    assert executors["exec-evaluate"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    assert all("pip install" not in " ".join(e["container"]["command"]) for e in executors.values())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(executors)
    for name, e in k8s.items():
        assert {(m["constant"], m["mountPath"]) for m in e["pvcMount"]} == \
            {("loganalyzer-data", "/data"), ("loganalyzer-models", "/models")}, name
        assert e["securityContext"]["runAsNonRoot"] is True
        secrets = {s["secretName"] for s in e["secretAsEnv"]}
        assert all(s["optional"] for s in e["secretAsEnv"])
        # the teacher's key reaches synthesize only
        assert ("loganalyzer-teacher" in secrets) == (name == "exec-synthesize"), name
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["cpt_nproc_per_node"]["defaultValue"] == 8 and defaults["sft_nproc_per_node"]["defaultValue"] == 4
    assert defaults["tracking_uri"]["defaultValue"] == "http://loganalyzer-mlflow:5000"


def test_committed_yaml_is_a_fresh_compile(definition, tmp_path):
    """`make pipeline` output is committed: this fails until it is rerun after a change to the definition."""
    fresh = tmp_path / "fresh.yaml"
    definition.compile_cluster(str(fresh))
    assert fresh.read_text() == COMPILED.read_text(), "pipelines/cpt-finetune.yaml is stale: run `make pipeline`"


def test_committed_yaml_is_a_pipeline_and_version():
    docs = load_all(COMPILED.read_text())
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("pipelines.kubeflow.org/v2beta1", "Pipeline"),
                                                           ("pipelines.kubeflow.org/v2beta1", "PipelineVersion")]
    assert docs[1]["spec"]["pipelineName"] == docs[0]["metadata"]["name"]
    assert validate(docs) == []


def test_committed_yaml_server_side_dry_run(kube):
    kube.ensure_namespace("kubeflow")
    result = kube.kubectl("apply", "--dry-run=server", "-n", "kubeflow", "-f", str(COMPILED), check=False)
    assert result.returncode == 0, result.stderr
    assert "pipeline.pipelines.kubeflow.org/loganalyzer-cpt-finetune created (server dry run)" in result.stdout


class _FakeKFP(BaseHTTPRequestHandler):
    """Just enough of the KFP v2beta1 REST API for kfp.Client to create an experiment and a run."""

    calls: list = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, None, self.headers.get("Authorization")))
        self._reply({})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.calls.append(("POST", self.path, body, self.headers.get("Authorization")))
        if self.path.endswith("/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        else:
            self._reply({"run_id": "run-42", "display_name": body["display_name"]})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    _FakeKFP.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKFP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _FakeKFP.calls
    server.shutdown()


def test_pipeline_run_starts_a_run(fake_kfp):
    host, calls = fake_kfp
    result = subprocess.run(
        [sys.executable, "-m", "loganalyzer.pipeline", "run", "--host", host, "--experiment", "nightly",
         "--token", "tkn", "cpt_nodes=2", "cpt_nproc_per_node=4", "logs=[/data/logs/hdfs]",
         'cpt_overrides={"learning_rate": 2e-5}'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "run-42"
    posts = {path: body for method, path, body, _ in calls if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "nightly"
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    params = run["runtime_config"]["parameters"]
    assert params["cpt_nodes"] == 2 and params["cpt_nproc_per_node"] == 4 and params["logs"] == ["/data/logs/hdfs"]
    assert params["cpt_overrides"] == {"learning_rate": 2e-5}
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])  # IR, with its platform spec
    assert "launch-training" in spec["root"]["dag"]["tasks"]
    assert all(auth == "Bearer tkn" for *_, auth in calls)


def test_pipeline_run_rejects_unknown_parameters(fake_kfp):
    host, calls = fake_kfp
    result = subprocess.run([sys.executable, "-m", "loganalyzer.pipeline", "run", "--host", host, "cpt_node=2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unknown pipeline parameter 'cpt_node'" in result.stderr
    assert calls == []


def test_pipeline_run_unreachable_host():
    result = subprocess.run([sys.executable, "-m", "loganalyzer.pipeline", "run", "--host", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "could not start the run on http://127.0.0.1:9" in result.stderr
