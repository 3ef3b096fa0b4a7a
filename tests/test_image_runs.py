"""The built CPU images (``make images-local``: podman, a stand-in Debian base) run as the manifests run them.

Each stage runs in the jobs image with the pod spec kustomize renders for its Job (``manifests/base``): user 1000,
read-only root filesystem, every capability dropped, no privilege escalation, the Job's env and command line, the
data and models PVCs as host folders, /tmp as a tmpfs, the recipes ConfigMaps as a read-only folder. The chatbot
image serves its page with the Deployment's pod spec against a loopback ``loganalyzer serve``. A failure shows
the container's output.

Skipped where podman or the images are missing, unless LOGANALYZER_REQUIRE_IMAGES=1 (set by .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from container_helpers import ENGINE, config_maps, image_exists, podman_run_args, shared_folder
from kube_helpers import ROOT, helm_template, kustomize

from loganalyzer.k8s import UID
from loganalyzer.serve import free_port, local_server

TAG = "0.1.0"
JOBS, CHATBOT = f"localhost/loganalyzer-jobs:{TAG}", f"localhost/loganalyzer-chatbot:{TAG}"
pytestmark = [pytest.mark.integration, pytest.mark.heavy]


def _need(image: str) -> None:
    if not image_exists(image):
        message = f"{image} not built (make images-local)"
        if os.environ.get("LOGANALYZER_REQUIRE_IMAGES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module", params=["manifests", "chart"])
def rendered(request) -> dict:
    """The pod specs as shipped: kustomize's manifests/base (+ the serving component's chatbot), or the chart with
    its CI values (serving on)."""
    if request.param == "manifests":
        docs = kustomize(ROOT / "manifests" / "base")
        docs += [d for d in yaml.safe_load_all((ROOT / "manifests" / "components" / "serving" / "chatbot.yaml")
                                              .read_text()) if d]
    else:
        docs = helm_template(ROOT / "charts" / "loganalyzer", "-f",
                             str(ROOT / "charts" / "loganalyzer" / "ci" / "ci-values.yaml"))
    pods = {(d["kind"], d["metadata"]["name"]): d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Job", "Deployment")}
    return {"docs": docs, "jobs": {name: pod for (kind, name), pod in pods.items() if kind == "Job"},
            "chatbot": pods[("Deployment", "loganalyzer-chatbot")]}


@pytest.fixture
def pvcs(tmp_path) -> dict[str, Path]:
    root = tmp_path / "pvcs"
    return {"data": shared_folder(root / "data", UID), "models": shared_folder(root / "models", UID)}


def _claims(pod: dict, pvcs: dict[str, Path]) -> dict[str, Path]:
    """The pod's claims (whatever the rendering names them: the chart can use existing ones) by volume name."""
    return {v["persistentVolumeClaim"]["claimName"]: pvcs[v["name"]] for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v}


def _run(pod: dict, image: str, rendered: dict, pvcs: dict, tmp_path: Path, *, timeout: int = 300,
         **kwargs) -> subprocess.CompletedProcess:
    data = config_maps(rendered["docs"])
    # the overlay's part: tracking goes to a sqlite store on the data PVC (no MLflow server in this test)
    data["loganalyzer-tracking"] = {**data["loganalyzer-tracking"],
                                    "MLFLOW_TRACKING_URI": "sqlite:////data/mlflow.db"}
    cmd = podman_run_args(pod, image, claims=_claims(pod, pvcs), data=data, scratch=tmp_path, **kwargs)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(cmd)}\nexit {result.returncode}\n--- container output ---\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def test_jobs_image_runs_the_stages_as_their_jobs(rendered, pvcs, tmp_path, tiny_env):
    _need(JOBS)
    jobs, data = rendered["jobs"], pvcs["data"]
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    shutil.copy(ROOT / "data" / "loghub" / "OpenSSH" / "OpenSSH_2k.log", logs)
    shutil.copytree(tiny_env["model"], pvcs["models"] / "base", dirs_exist_ok=True)
    for p in (data, pvcs["models"]):
        shared_folder(p, UID)
    run_dir = data / "runs" / "default"  # RUN_DIR as job-defaults.yaml sets it: /data/runs/$(RUN_ID)

    _run(jobs["loganalyzer-chunk"], JOBS, rendered, pvcs, tmp_path)
    chunks = [json.loads(line) for line in (run_dir / "chunks.jsonl").read_text().splitlines()]
    assert len(chunks) >= 10 and all(50 <= c["num_lines"] <= 150 for c in chunks)
    assert {c["source"] for c in chunks} == {"/data/logs/OpenSSH_2k.log"}

    _run(jobs["loganalyzer-redact"], JOBS, rendered, pvcs, tmp_path)
    redacted = [json.loads(line) for line in (run_dir / "chunks.redacted.jsonl").read_text().splitlines()]
    assert [c["id"] for c in redacted] == [c["id"] for c in chunks]
    changed = [c["id"] for c, r in zip(chunks, redacted, strict=True) if c["content"] != r["content"]]
    assert changed, "OpenSSH's client IPs are pseudonymised"

    # the offline teacher, set as the stage's env (LOGANALYZER_SYNTHESIZE_*) as an overlay would
    _run(jobs["loganalyzer-synthesize"], JOBS, rendered, pvcs, tmp_path,
         env={"LOGANALYZER_SYNTHESIZE_TEACHER": "grounded"})
    summary = json.loads((run_dir / "synth" / "summary.json").read_text())
    assert summary["teacher"] == "grounded" and summary["accepted"] == summary["asked"] > 0, summary

    _run(jobs["loganalyzer-build-datasets"], JOBS, rendered, pvcs, tmp_path,
         env={"LOGANALYZER_BUILD_DATASETS_VAL_SIZE": "2", "LOGANALYZER_BUILD_DATASETS_TEST_SIZE": "2"})
    stats = json.loads((run_dir / "datasets" / "stats.json").read_text())
    assert stats["sft"]["train"]["total"] > 0 and stats["cpt"]["total"] > 0 and stats["tokenizer"] == "/models/base"

    # commands without a Job of their own run in the same pod as the stages
    pod = jobs["loganalyzer-chunk"]
    test = run_dir / "datasets" / "sft_test.jsonl"
    refs = [{"id": json.loads(line)["id"], "text": json.loads(line)["messages"][-1]["content"]}
            for line in test.read_text().splitlines()]
    (run_dir / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    scored = _run(pod, JOBS, rendered, pvcs, tmp_path, command=["python", "-m", "loganalyzer", "score"],
                  args=["--predictions", "/data/runs/default/refs.jsonl", "--references",
                        "/data/runs/default/refs.jsonl", "--out", "/data/runs/default/score.json"])
    score = json.loads((run_dir / "score.json").read_text())
    assert score["fuzzy_match"] == pytest.approx(1.0) and score["metrics_backend"] == "builtin", scored.stdout

    plan = _run(pod, JOBS, rendered, pvcs, tmp_path, command=["python", "-m", "loganalyzer", "train"],
                args=["--plan", "--recipe", "cpt_full_zero3", "dataset_tokens=250000000"])
    report = json.loads(plan.stdout[plan.stdout.index("{"):])
    assert report["parameters"] == 8_030_261_248 and report["zero_stage"] == 3, plan.stdout  # Llama-3.1-8B

    _run(pod, JOBS, rendered, pvcs, tmp_path, command=["python", "-m", "loganalyzer", "pipeline"],
         args=["compile", "--out", "/data/cpt-finetune.yaml"])
    assert (data / "cpt-finetune.yaml").read_text() == (ROOT / "pipelines" / "cpt-finetune.yaml").read_text()

    # every stage logged its run where the tracking ConfigMap pointed, from a read-only root
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{data / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("loganalyzer").experiment_id])
    assert {"chunk", "redact", "synthesize", "build-datasets"} <= {r.info.run_name for r in runs}


def test_chatbot_image_serves_its_page_as_its_deployment(rendered, pvcs, tmp_path, tiny_env):
    import yaml


    _need(CHATBOT)
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "components" / "serving" / "chatbot.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod, port, name = deployment["spec"]["template"]["spec"], free_port(), f"loganalyzer-chatbot-test-{os.getpid()}"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--port") + 1] == "8501"
    args = [str(port) if a == "8501" else a for a in args]  # host networking: a free port instead of the pod's
    with local_server(str(tiny_env["model"]), log_file=tmp_path / "serve.log") as url:
        cmd = podman_run_args(pod, CHATBOT, claims=_claims(pod, pvcs), data=config_maps(rendered["docs"]),
                              scratch=tmp_path, args=args, detach_as=name,
                              env={"LOGANALYZER_ENDPOINT": url, "LOGANALYZER_MODEL": str(tiny_env["model"])})
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        try:
            status, health = None, None
            for _ in range(120):
                try:
                    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                    status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
                    break
                except OSError:
                    time.sleep(1)
            logs = subprocess.run([ENGINE, "logs", name], capture_output=True, text=True).stdout
            assert status == 200 and health == b"ok", f"the chatbot did not serve its page\n{logs[-4000:]}"
            # as a pod's stop: SIGTERM to the main process, which is the Streamlit server; SIGKILL after 10 s
            t0 = time.monotonic()
            subprocess.run([ENGINE, "stop", "--time", "10", name], capture_output=True, timeout=60)
            assert time.monotonic() - t0 < 8, "the chatbot ignored SIGTERM until the SIGKILL"
        finally:
            subprocess.run([ENGINE, "rm", "--force", name], capture_output=True, timeout=60)
