"""The KFP pipeline definition: both targets' DAGs, the committed cluster YAML (fresh compile == committed, CRD
schemas, server-side dry-run), and ``loganalyzer pipeline run`` against a loopback KFP API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from kube_helpers import kustomize, load_all, validate

from loganalyzer.config import ConfigError
from loganalyzer.pipeline import COMPILED, bundle, compile_pipeline, load_definition


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
    assert set(deps) == {"paths", "start", "chunk", "redact", "base-model", "synthesize", "build-datasets", "train",
                         "replicate-runs", "replicate-runs-2", "for-loop-1", "for-loop-2", "evaluate", "finish"}
    # the teacher gets the redacted chunks, and so does everything after it (an answer describes the log it saw)
    assert "chunk" in deps["redact"] and {"redact"} == deps["synthesize"] - {"paths", "start"}
    assert "base-model" not in deps["synthesize"]  # teachers need no base model
    assert {"synthesize", "base-model", "redact"} <= deps["build-datasets"] and "redact" in deps["base-model"]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["redact"]["inputs"]["parameters"]["mode"] == {"componentInputParameter": "redact_mode"}
    assert tasks["synthesize"]["inputs"]["parameters"]["redact"] == {"componentInputParameter": "redact_mode"}
    assert "build-datasets" in deps["train"]  # CPT
    # each SFT once per replicate: a loop over replicate-runs' training runs (seed, model, files, dir, job name);
    # the SFT on the base model does not wait for CPT; evaluate collects both
    assert "train" in deps["replicate-runs"] and "train" not in deps["replicate-runs-2"]
    assert deps["for-loop-1"] == {"replicate-runs"} and deps["for-loop-2"] == {"replicate-runs-2"}
    assert {"for-loop-1", "for-loop-2", "base-model"} <= deps["evaluate"]
    for loop_name, trained in (("for-loop-1", "cpt-sft"), ("for-loop-2", "sft")):
        (inner,) = spec["components"][f"comp-{loop_name}"]["dag"]["tasks"].values()
        assert inner["taskInfo"]["name"] == trained
        for key in ("seed", "model", "output_dir", "train_file", "parent_run_id"):
            assert inner["inputs"]["parameters"][key]["parameterExpressionSelector"] == \
                f'parseJson(string_value)["{key}"]'
        # kfp 2.17's local runner hands the loop item to any outer task output a loop body reads: none may
        assert [k for k, v in tasks[loop_name]["inputs"]["parameters"].items() if "taskOutputParameter" in v] == \
            [tasks[loop_name]["parameterIterator"]["items"]["inputParameter"]]
        assert inner["inputs"]["parameters"]["register_as"] == {"runtimeValue": {"constant": f"loganalyzer-{trained}"}}
    runs = {t["inputs"]["parameters"]["name"]["runtimeValue"]["constant"]: t["inputs"]["parameters"]["model"]
            for n, t in tasks.items() if n.startswith("replicate-runs")}
    assert runs == {"cpt_sft": {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "train"}},
                    "sft": {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "base-model"}}}
    evaluate = tasks["evaluate"]["inputs"]["parameters"]
    assert {evaluate[k]["taskOutputParameter"]["producerTask"] for k in ("sft", "cpt_sft")} == \
        {"for-loop-1", "for-loop-2"}
    assert tasks["replicate-runs"]["inputs"]["parameters"]["replicates"] == {"componentInputParameter": "replicates"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["base_model_name"]["defaultValue"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (params["teacher"]["defaultValue"], params["chunk_min_lines"]["defaultValue"],
            params["chunk_max_lines"]["defaultValue"], params["redact_mode"]["defaultValue"],
            params["replicates"]["defaultValue"], params["judge_endpoint"]["defaultValue"]) == \
        ("auto", 50, 150, "auto", 1, "")
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
    loop = {k: v for n in (1, 2) for k, v in spec["components"][f"comp-for-loop-{n}"]["dag"]["tasks"].items()}
    names = {n: t["taskInfo"]["name"] for n, t in (*tasks.items(), *loop.items())}
    assert {names[n] for n in ("launch-training", "launch-training-2", "launch-training-3")} == \
        {"cpt", "cpt-sft", "sft"}
    assert "train" not in deps
    params = {n: t["inputs"]["parameters"] for n, t in (*tasks.items(), *loop.items())}
    engines = {names[n]: params[n]["engine"] for n in names if n.startswith("launch-training")}
    assert engines["cpt"] == {"runtimeValue": {"constant": "pytorchjob"}}
    assert engines["sft"] == engines["cpt-sft"] == {"componentInputParameter": "pipelinechannel--sft_engine"}
    jobs = {names[n]: params[n]["name"] for n in names if n.startswith("launch-training")}
    assert jobs["sft"]["parameterExpressionSelector"] == 'parseJson(string_value)["job"]'  # one per replicate
    # serves the first replicate's cpt_sft model (or its adapter on the CPT model), after evaluation
    assert deps["deploy"] == {"evaluate", "launch-training", "replicate-runs"}
    assert tasks["deploy"]["inputs"]["parameters"]["replicates"] == \
        {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "replicate-runs"}}
    assert tasks["deploy"]["inputs"]["parameters"]["deployment_mode"] == \
        {"componentInputParameter": "serve_deployment_mode"}
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-evaluate"]["container"]["image"] == \
        "registry.example.com/loganalyzer/loganalyzer-train:0.1.0"
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
        # the teacher's key reaches synthesize only, the judge's evaluate only
        assert ("loganalyzer-teacher" in secrets) == (name == "exec-synthesize"), name
        assert ("loganalyzer-judge" in secrets) == (name == "exec-evaluate"), name
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["cpt_nproc_per_node"]["defaultValue"] == 8 and defaults["sft_nproc_per_node"]["defaultValue"] == 4
    assert defaults["tracking_uri"]["defaultValue"] == "http://loganalyzer-mlflow:5000"


def test_committed_yaml_is_a_fresh_compile(definition, tmp_path):
    """`make pipeline` output is committed: this fails until it is rerun after a change to the definition."""
    fresh = tmp_path / "fresh.yaml"
    definition.compile_cluster(str(fresh))
    assert fresh.read_text() == COMPILED.read_text(), "pipelines/cpt-finetune.yaml is stale: run `make pipeline`"


def test_version_name_follows_the_spec(tmp_path):
    """KFP's PipelineVersion webhook refuses a changed spec under an existing name ("Pipeline spec is immutable";
    kubeflow/pipelines backend/src/apiserver/webhook/pipelineversion_webhook.go ValidateUpdate): a changed pipeline
    must get a new version name, and an unchanged one keep its name so re-applying it is a no-op."""
    names = {}
    for label, registry in (("a", "registry.test/one"), ("b", "registry.test/one"), ("c", "registry.test/two")):
        out = tmp_path / f"{label}.yaml"
        compile_pipeline(out, registry=registry)
        version = load_all(out.read_text())[1]
        names[label] = version["metadata"]["name"]
        assert version["spec"]["displayName"] == names[label]
        assert f"image: {registry}/loganalyzer-jobs:0.1.0" in out.read_text()
    assert names["a"] == names["b"] != names["c"]
    assert re.fullmatch(r"loganalyzer-cpt-finetune-0-1-0-[0-9a-f]{10}", names["a"]) and len(names["a"]) <= 63
    odd = tmp_path / "odd.yaml"  # a tag that is no DNS label still gives a valid, digest-carrying name
    compile_pipeline(odd, registry="registry.test/one", tag="1.0.0+rc.1-a-very-long-build-metadata-suffix")
    odd_name = load_all(odd.read_text())[1]["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", odd_name) and re.search(r"-[0-9a-f]{10}$", odd_name)
    committed = load_all(COMPILED.read_text())[1]
    assert committed["metadata"]["name"] not in names.values()  # the placeholder registry: another version
    assert "image: registry.example.com/loganalyzer/loganalyzer-jobs:0.1.0" in COMPILED.read_text()


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_bundle_installs_the_overlay_where_kfp_runs(tmp_path, overlay):
    """make deploy: the overlay moved into KFP's namespace with the registry's images; the namespace (KFP's or a
    profile's) is not ours, so no Namespace object and no Pod Security labels on it."""
    out = bundle(tmp_path / "b", overlay, "kubeflow", "registry.test/ml")
    docs = kustomize(out)
    assert "Namespace" not in {d["kind"] for d in docs}
    assert {d["metadata"].get("namespace") for d in docs} == {"kubeflow"}
    for d in docs:
        for s in d.get("subjects", []):
            assert s["namespace"] == "kubeflow"
    images = set(re.findall(r"image: (\S+)", yaml.safe_dump_all(docs)))
    assert images and all(i.startswith("registry.test/ml/loganalyzer-") for i in images), images
    pipeline = (out / "cpt-finetune.yaml").read_text()
    assert set(re.findall(r"^ +image: (\S+)$", pipeline, re.M)) == {"registry.test/ml/loganalyzer-jobs:0.1.0",
                                                           "registry.test/ml/loganalyzer-train:0.1.0"}
    with pytest.raises(ConfigError):
        bundle(tmp_path / "c", overlay, "kubeflow", "")


def test_bundle_server_side_dry_run(kube, tmp_path):
    out = bundle(tmp_path / "b", "production", "kubeflow", "registry.test/ml")
    kube.ensure_namespace("kubeflow")
    result = kube.dry_run(kustomize(out) + load_all((out / "cpt-finetune.yaml").read_text()), "kubeflow")
    assert result.returncode == 0, result.stderr


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

    multi_user = False

    def do_GET(self):
        self.calls.append(("GET", self.path, None, self.headers.get("Authorization")))
        self._reply({"multi_user": self.multi_user} if self.path.endswith("/healthz") else {})

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
    _FakeKFP.calls, _FakeKFP.multi_user = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKFP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _FakeKFP.calls
    server.shutdown()


REGISTRY = "registry.test/ml"


def _run_cli(host, *args, env=None):
    return subprocess.run([sys.executable, "-m", "loganalyzer.pipeline", "run", "--host", host, *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_pipeline_run_starts_a_run(fake_kfp):
    host, calls = fake_kfp
    result = _run_cli(host, "--experiment", "nightly", "--token", "tkn", "--namespace", "kubeflow",
                      "--image-registry", REGISTRY, "cpt_nodes=2", "cpt_nproc_per_node=4", "logs=[/data/logs/hdfs]",
                      'cpt_overrides={"learning_rate": 2e-5}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "run-42"
    posts = {path: body for method, path, body, _ in calls if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "nightly"
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    # standalone KFP: the run executes in KFP's namespace, as our ServiceAccount (template.go setDefaultServiceAccount
    # uses the request's service_account instead of pipeline-runner)
    assert run["service_account"] == "loganalyzer-pipeline"
    params = run["runtime_config"]["parameters"]
    assert params["cpt_nodes"] == 2 and params["cpt_nproc_per_node"] == 4 and params["logs"] == ["/data/logs/hdfs"]
    assert params["cpt_overrides"] == {"learning_rate": 2e-5} and params["namespace"] == "kubeflow"
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])  # IR, with its platform spec
    assert "launch-training" in spec["root"]["dag"]["tasks"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"{REGISTRY}/loganalyzer-jobs:0.1.0", f"{REGISTRY}/loganalyzer-train:0.1.0"}
    assert all(auth == "Bearer tkn" for *_, auth in calls)


def test_pipeline_run_multi_user_uses_the_profile_namespace(fake_kfp):
    host, calls = fake_kfp
    _FakeKFP.multi_user = True
    result = _run_cli(host, "--namespace", "team-a", "--image-registry", REGISTRY, "--service-account", "runner")
    assert result.returncode == 0, result.stderr
    posts = {path: body for method, path, body, _ in calls if method == "POST"}
    # multi-user KFP runs in the experiment's namespace (run_server.go GetValidExperimentNamespacePair)
    assert posts["/apis/v2beta1/experiments"]["namespace"] == "team-a"
    run = posts["/apis/v2beta1/runs"]
    assert run["service_account"] == "runner" and run["runtime_config"]["parameters"]["namespace"] == "team-a"


def test_pipeline_run_refuses_a_namespace_standalone_kfp_ignores(fake_kfp):
    host, calls = fake_kfp
    result = _run_cli(host, "--namespace", "loganalyzer", "--image-registry", REGISTRY)
    assert result.returncode == 2 and "standalone KFP runs every pipeline in its own namespace ('kubeflow'" in \
        result.stderr
    assert not [c for c in calls if c[0] == "POST"]


def test_pipeline_run_needs_a_registry(fake_kfp, monkeypatch):
    """An image name without a registry is pulled from Docker Hub's library (distribution/reference
    normalize.go: "loganalyzer-jobs:0.1.0" -> docker.io/library/loganalyzer-jobs:0.1.0), so a run refuses one, and
    the placeholder registry the committed YAML names."""
    host, calls = fake_kfp
    env = {k: v for k, v in os.environ.items() if k != "LOGANALYZER_IMAGE_REGISTRY"}
    for registry in ([], ["--image-registry", "registry.example.com/loganalyzer"]):
        result = _run_cli(host, "--namespace", "kubeflow", *registry, env=env)
        assert result.returncode == 2 and "no image registry" in result.stderr, result.stderr
    assert calls == []


def test_pipeline_run_rejects_unknown_parameters(fake_kfp):
    host, calls = fake_kfp
    result = _run_cli(host, "--namespace", "kubeflow", "--image-registry", REGISTRY, "cpt_node=2")
    assert result.returncode == 2 and "unknown pipeline parameter 'cpt_node'" in result.stderr
    assert calls == []


def test_pipeline_run_checks_constrained_values_before_starting(fake_kfp):
    host, calls = fake_kfp
    result = _run_cli(host, "--namespace", "kubeflow", "--image-registry", REGISTRY, "serve_deployment_mode=Knatvie")
    assert result.returncode == 2 and "serve_deployment_mode='Knatvie'" in result.stderr, result.stderr
    assert not [c for c in calls if c[0] == "POST"]


def test_pipeline_run_unreachable_host():
    result = _run_cli("http://127.0.0.1:9", "--namespace", "kubeflow", "--image-registry", REGISTRY)
    assert result.returncode == 1 and "could not start the run on http://127.0.0.1:9" in result.stderr


def test_redact_mode_parameter_stays_a_word_and_is_checked(definition):
    from loganalyzer.config import ConfigError
    from loganalyzer.pipeline import check_values, parse_arguments

    args = parse_arguments(["redact_mode=off", "synth_limit=5", "serve_lora=true"], definition.build("cluster"))
    assert args == {"redact_mode": "off", "synth_limit": 5, "serve_lora": True}  # not False: YAML 1.1's "off"
    check_values(args)
    with pytest.raises(ConfigError, match="redact_mode='of'"):
        check_values({"redact_mode": "of"})
    for bad, said in (({"replicates": 0}, "replicates=0: Input should be greater than or equal to 1"),
                      ({"judge_endpoint": "http://127.0.0.1:8000/v1"}, "judge_endpoint and judge_model go together")):
        with pytest.raises(ConfigError, match=re.escape(said)):
            check_values(bad)
    check_values({"replicates": 3, "judge_endpoint": "http://127.0.0.1:8000/v1", "judge_model": "m"})


def test_replicate_runs_name_each_seeds_dir_and_job():
    from loganalyzer import steps
    from loganalyzer.config import ConfigError

    kw = dict(model="/models/r/cpt", datasets="/data/runs/r/datasets", models_dir="/models/r", job_prefix="la-ab12",
              seed=7, parent_run_id="p1")
    (one,) = steps.replicate_runs(name="cpt_sft", replicates=1, **kw)
    assert one == {"seed": 7, "model": "/models/r/cpt", "train_file": "/data/runs/r/datasets/sft_train.jsonl",
                   "eval_file": "/data/runs/r/datasets/sft_val.jsonl", "output_dir": "/models/r/cpt_sft",
                   "job": "la-ab12-cpt-sft", "parent_run_id": "p1"}
    three = steps.replicate_runs(name="sft", replicates=3, **kw)
    assert [(r["seed"], r["output_dir"], r["job"]) for r in three] == [
        (7, "/models/r/sft_seed7", "la-ab12-sft-s7"), (8, "/models/r/sft_seed8", "la-ab12-sft-s8"),
        (9, "/models/r/sft_seed9", "la-ab12-sft-s9")]
    with pytest.raises(ConfigError):
        steps.replicate_runs(name="sft", replicates=0, **kw)
    assert steps.pvc_uri("/models/r/sft_seed7", "loganalyzer-models", "/models") == \
        "pvc://loganalyzer-models/r/sft_seed7"


def test_pipeline_defaults_are_the_stage_configs_defaults():
    """A pipeline parameter that sets a stage's field has that field's default (its one home), in the committed
    YAML that users apply, and the demo derives the same."""
    from loganalyzer.build_datasets import BuildDatasetsConfig
    from loganalyzer.chunk import ChunkConfig
    from loganalyzer.config import SEED
    from loganalyzer.demo import DemoConfig
    from loganalyzer.deploy import DeployConfig
    from loganalyzer.evaluate import EvaluateConfig
    from loganalyzer.launch import LaunchConfig
    from loganalyzer.synthesize import SynthesizeConfig
    from loganalyzer.train import TrainConfig

    homes = {"teacher_model": (SynthesizeConfig, "model"), "tasks": (SynthesizeConfig, "tasks"),
             "synth_concurrency": (SynthesizeConfig, "concurrency"), "synth_max_tokens": (SynthesizeConfig,
                                                                                          "max_tokens"),
             "redact_mode": (SynthesizeConfig, "redact"), "chunk_min_lines": (ChunkConfig, "min_lines"),
             "chunk_max_lines": (ChunkConfig, "max_lines"), "nlplog": (BuildDatasetsConfig, "nlplog"),
             "loghub_structured": (BuildDatasetsConfig, "loghub_structured"),
             "val_size": (BuildDatasetsConfig, "val_size"), "test_size": (BuildDatasetsConfig, "test_size"),
             "max_seq_length": (BuildDatasetsConfig, "max_seq_length"),
             "cpt_nproc_per_node": (LaunchConfig, "nproc_per_node"), "sft_engine": (LaunchConfig, "engine"),
             "serve_deployment_mode": (DeployConfig, "deployment_mode"),
             "eval_max_new_tokens": (EvaluateConfig, "max_new_tokens"), "seed": (ChunkConfig, "seed")}
    (version,) = [d for d in load_all(COMPILED.read_text()) if d["kind"] == "PipelineVersion"]
    params = version["spec"]["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    for param, (cls, field) in homes.items():
        assert params[param]["defaultValue"] == cls.default(field), f"{param} != {cls.__name__}.{field}"
    for cls in (ChunkConfig, BuildDatasetsConfig, EvaluateConfig, TrainConfig):  # one seed for every stage
        assert cls.default("seed") == SEED
    for field, home in (("teacher_model", "model"), ("synth_max_tokens", "max_tokens"), ("redact", "redact")):
        assert DemoConfig.default(field) == SynthesizeConfig.default(home)
    with pytest.raises(ValueError, match="required"):
        DeployConfig.default("name")


def test_stage_steps_take_keyword_arguments_only():
    """A step's many same-typed parameters (paths, names) cannot be swapped by position: every stage step of
    ``loganalyzer.steps`` that a component calls is keyword-only."""
    import ast
    import inspect

    from loganalyzer import steps
    from loganalyzer.pipeline import DEFINITION

    called = {node.func.attr for node in ast.walk(ast.parse(DEFINITION.read_text()))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "steps"}
    helpers = {"in_seed_order"}  # two lists in a fixed order, not stage wiring
    assert {"chunk", "synthesize", "train", "launch_training", "evaluate", "deploy"} <= called
    for name in sorted(called - helpers):
        kinds = {p.kind for p in inspect.signature(getattr(steps, name)).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, f"steps.{name} takes positional arguments"
