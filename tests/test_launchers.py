"""The PyTorchJob and InferenceService launchers against a real API server (kube-local), running with the
pipeline ServiceAccount's own token (so the shipped RBAC is enough). No operator runs there: the tests patch
``status`` the way the Training Operator and KServe would (Succeeded, Failed, stuck) and check what the
launchers report."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time

import pytest
import yaml
from kube_helpers import ROOT, kustomize

from loganalyzer.deploy import DeployConfig, NotReady
from loganalyzer.deploy import run as deploy
from loganalyzer.launch import JobFailed, LaunchConfig, _RayJobs
from loganalyzer.launch import run as launch

NS = f"loganalyzer-launch-{os.getpid()}"  # fresh per session: a reused kube-local keeps earlier objects
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")
RAYJOB = ("ray.io", "v1", "rayjobs")
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")


@pytest.fixture(scope="module")
def cluster(kube, tmp_path_factory):
    """(admin CustomObjectsApi, kubeconfig of the loganalyzer-pipeline ServiceAccount) in namespace NS."""
    from kubernetes import client, config

    docs = [d for d in kustomize(ROOT / "manifests" / "base")
            if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    for d in docs:
        d["metadata"]["namespace"] = NS
        for s in d.get("subjects", []):
            s["namespace"] = NS
    kube.ensure_namespace(NS)
    kube.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump_all(docs))
    admin = config.new_client_from_config(config_file=kube.kubeconfig)
    core = client.CoreV1Api(admin)
    deadline = time.monotonic() + 60
    while True:  # v1.20's token controller creates the ServiceAccount's token Secret
        secrets = core.list_namespaced_secret(NS, field_selector="type=kubernetes.io/service-account-token")
        token = next((s for s in secrets.items
                      if s.metadata.annotations.get("kubernetes.io/service-account.name") == "loganalyzer-pipeline"),
                     None)
        if token or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert token, "no token Secret for loganalyzer-pipeline"
    kc = yaml.safe_load(open(kube.kubeconfig))
    kc["users"] = [{"name": "sa", "user": {"token": base64.b64decode(token.data["token"]).decode()}}]
    for ctx in kc["contexts"]:
        ctx["context"]["user"] = "sa"
        ctx["context"]["namespace"] = NS
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    path.write_text(yaml.safe_dump(kc))
    yield client.CustomObjectsApi(admin), str(path)
    kube.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _in_thread(fn, *args):
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _wait_for(api, kind, name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return api.get_namespaced_custom_object(kind[0], kind[1], NS, kind[2], name)
        except Exception:
            time.sleep(0.1)
    raise AssertionError(f"{kind[2]}/{name} was never created")


def _conditions(*types, failed_reason=None):
    now = "2026-11-21T00:00:00Z"
    conds = [{"type": t, "status": "True", "reason": f"PyTorchJob{t}", "message": f"PyTorchJob is {t.lower()}.",
              "lastUpdateTime": now, "lastTransitionTime": now} for t in types]
    if failed_reason:
        conds[-1].update(reason=failed_reason[0], message=failed_reason[1])
    return {"status": {"conditions": conds}}


def _patch_status(api, kind, name, body):
    api.patch_namespaced_custom_object_status(kind[0], kind[1], NS, kind[2], name, body)


@pytest.fixture
def training_client(cluster):
    from kubeflow.training import TrainingClient

    return TrainingClient(config_file=cluster[1], namespace=NS)


def _launch_cfg(name, **kw):
    return LaunchConfig(**{"name": name, "namespace": NS, "recipe": "sft_lora", "nproc_per_node": 4, "poll_s": 0.1,
                           "args": ["train_file=/data/runs/t/datasets/sft_train.jsonl"], **kw})


def test_pytorchjob_succeeded(cluster, training_client):
    api, _ = cluster
    t, box = _in_thread(launch, _launch_cfg("t-ok", nodes=2), training_client)
    job = _wait_for(api, PYTORCHJOB, "t-ok")
    spec = job["spec"]
    assert spec["nprocPerNode"] == "4" and list(spec["pytorchReplicaSpecs"]) == ["Worker"]
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2 and spec["elasticPolicy"]["rdzvBackend"] == "c10d"
    container = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--config", "sft_lora", "train_file=/data/runs/t/datasets/sft_train.jsonl"]
    _patch_status(api, PYTORCHJOB, "t-ok", _conditions("Created", "Running"))
    time.sleep(0.5)
    assert t.is_alive(), box
    _patch_status(api, PYTORCHJOB, "t-ok", _conditions("Created", "Running", "Succeeded"))
    t.join(30)
    assert not t.is_alive() and "error" not in box, box
    assert box["result"]["metadata"]["name"] == "t-ok"


def test_pytorchjob_failed_reports_the_reason(cluster, training_client):
    api, _ = cluster
    t, box = _in_thread(launch, _launch_cfg("t-fail"), training_client)
    _wait_for(api, PYTORCHJOB, "t-fail")
    _patch_status(api, PYTORCHJOB, "t-fail", _conditions(
        "Created", "Running", "Failed",
        failed_reason=("PyTorchJobFailed", "PyTorchJob t-fail is failed because 1 Master replica(s) failed.")))
    t.join(30)
    assert isinstance(box.get("error"), JobFailed)
    assert "PyTorchJobFailed: PyTorchJob t-fail is failed because 1 Master replica(s) failed." in str(box["error"])


def test_pytorchjob_stuck_times_out_and_is_deleted(cluster, training_client):
    api, _ = cluster
    t, box = _in_thread(launch, _launch_cfg("t-stuck", timeout_s=3), training_client)
    _wait_for(api, PYTORCHJOB, "t-stuck")
    _patch_status(api, PYTORCHJOB, "t-stuck", _conditions("Created", "Running"))
    t.join(30)
    assert isinstance(box.get("error"), JobFailed)
    assert "did not finish within 3s" in str(box["error"]) and "PyTorchJobRunning" in str(box["error"])
    with pytest.raises(Exception, match="Not Found"):
        api.get_namespaced_custom_object(*PYTORCHJOB[:2], NS, PYTORCHJOB[2], "t-stuck")


def test_rerun_attaches_or_replaces(cluster, training_client):
    """A KFP retry: a Succeeded job is reused as is, a Failed one replaced by a fresh job."""
    api, _ = cluster
    t, _ = _in_thread(launch, _launch_cfg("t-rerun"), training_client)
    first = _wait_for(api, PYTORCHJOB, "t-rerun")
    _patch_status(api, PYTORCHJOB, "t-rerun", _conditions("Created", "Succeeded"))
    t.join(30)
    again = launch(_launch_cfg("t-rerun"), training_client)
    assert again["metadata"]["uid"] == first["metadata"]["uid"]

    _patch_status(api, PYTORCHJOB, "t-rerun", _conditions("Created", "Failed", failed_reason=("X", "y")))
    t, box = _in_thread(launch, _launch_cfg("t-rerun"), training_client)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = _wait_for(api, PYTORCHJOB, "t-rerun")
        if job["metadata"]["uid"] != first["metadata"]["uid"]:
            break
        time.sleep(0.1)
    assert job["metadata"]["uid"] != first["metadata"]["uid"] and not job.get("status")
    _patch_status(api, PYTORCHJOB, "t-rerun", _conditions("Created", "Succeeded"))
    t.join(30)
    assert "error" not in box, box


def test_launch_cli_exit_code(cluster):
    """`loganalyzer launch` as a KFP task runs it: a stuck job ends with exit 1 and the reason on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "loganalyzer.launch", "--name", "t-cli", "--namespace", NS, "--recipe", "sft_lora",
         "timeout_s=2", "poll_s=0.2", "follow_logs=false"],
        env={**os.environ, "KUBECONFIG": cluster[1]}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "did not finish within 2s" in result.stderr


@pytest.fixture
def ray_client(cluster):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(config_file=cluster[1]))


def _ray_status(job_status, deployment, reason="", message=""):
    return {"status": {"jobStatus": job_status, "jobDeploymentStatus": deployment, "reason": reason,
                       "message": message}}


def test_rayjob_succeeded(cluster, ray_client):
    api, _ = cluster
    cfg = _launch_cfg("t-ray", engine="ray", nodes=2, nproc_per_node=2)
    t, box = _in_thread(launch, cfg, ray_client)
    job = _wait_for(api, RAYJOB, "t-ray")
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("python -m loganalyzer.train --config sft_lora engine=ray ray_workers=4 ray_use_gpu=true")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 4
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "resources" not in head or "nvidia.com/gpu" not in (head["resources"].get("limits") or {})
    _patch_status(api, RAYJOB, "t-ray", _ray_status("RUNNING", "Running"))
    time.sleep(0.5)
    assert t.is_alive(), box
    _patch_status(api, RAYJOB, "t-ray", _ray_status("SUCCEEDED", "Complete"))
    t.join(30)
    assert "error" not in box and box["result"]["metadata"]["name"] == "t-ray", box


def test_rayjob_failed_and_stuck(cluster, ray_client):
    api, _ = cluster
    t, box = _in_thread(launch, _launch_cfg("t-ray-fail", engine="ray"), ray_client)
    _wait_for(api, RAYJOB, "t-ray-fail")
    _patch_status(api, RAYJOB, "t-ray-fail", _ray_status("FAILED", "Failed", "AppFailed",
                                                          "Job entrypoint command failed with exit code 1"))
    t.join(30)
    assert isinstance(box.get("error"), JobFailed)
    assert "RayJob" in str(box["error"]) and "AppFailed: Job entrypoint command failed with exit code 1" in \
        str(box["error"])

    t, box = _in_thread(launch, _launch_cfg("t-ray-stuck", engine="ray", timeout_s=2), ray_client)
    _wait_for(api, RAYJOB, "t-ray-stuck")
    _patch_status(api, RAYJOB, "t-ray-stuck", _ray_status("PENDING", "Initializing"))
    t.join(30)
    assert isinstance(box.get("error"), JobFailed) and "did not finish within 2s" in str(box["error"])
    with pytest.raises(Exception, match="Not Found"):
        api.get_namespaced_custom_object(*RAYJOB[:2], NS, RAYJOB[2], "t-ray-stuck")



class _FakeCore:
    """CoreV1Api for the log follower: the master pod's container logs, one list per stream opened. A stream ends
    when the container exits (restart) or the connection drops; the follower must reopen it."""

    def __init__(self, streams):
        self.streams, self.opened = list(streams), 0

    def list_namespaced_pod(self, namespace, label_selector):
        from kubernetes.client import V1ObjectMeta, V1Pod, V1PodList, V1PodStatus

        assert "training.kubeflow.org/job-role=master" in label_selector
        return V1PodList(items=[V1Pod(metadata=V1ObjectMeta(name="t-logs-master-0"),
                                      status=V1PodStatus(phase="Running"))])

    def read_namespaced_pod_log(self, name, namespace, container, timestamps, follow=False,
                                _preload_content=True, **kw):
        """Like CoreV1Api's. kubernetes.watch streams a log when the docstring says
        :param bool follow: Follow the log stream of the pod.
        """
        import io

        assert timestamps and container == "pytorch"
        lines = self.streams[min(self.opened, len(self.streams) - 1)]
        self.opened += 1
        return _Resp(io.BytesIO("".join(f"{line}\n" for line in lines).encode()))


class _Resp:
    def __init__(self, body):
        self.body = body

    def stream(self, *a, **kw):
        yield from iter(lambda: self.body.read(7), b"")

    def read_chunked(self, *a, **kw):
        yield from self.stream()

    def release_conn(self):
        pass

    def close(self):
        pass


def test_log_follower_survives_a_restart_and_a_reconnect(capsys):
    """kubeflow-training's TrainingClient.get_job_logs(follow=True) (sdk/python/kubeflow/training/api/
    training_client.py) opens one stream per pod and stops when it ends, i.e. at the first container restart."""
    from loganalyzer.launch import _LogFollower

    first = ["2026-12-01T10:00:00.000000001Z step 1", "2026-12-01T10:00:01.000000000Z step 2"]
    reconnect = first + ["2026-12-01T10:00:02.000000000Z step 3"]  # same container: the whole log again
    restarted = ["2026-12-01T10:05:00.000000000Z resume: auto -> continuing from checkpoint-2"]
    core = _FakeCore([first, reconnect, restarted])
    follower = _LogFollower(type("TC", (), {"core_api": core})(), _launch_cfg("t-logs"), retry_s=0.05)
    follower.start()
    deadline = time.monotonic() + 10
    while core.opened < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    follower.join(5)
    out = capsys.readouterr().out.splitlines()
    assert out == ["[t-logs-master-0] step 1", "[t-logs-master-0] step 2", "[t-logs-master-0] step 3",
                   "[t-logs-master-0] resume: auto -> continuing from checkpoint-2"]

@pytest.mark.parametrize("job_status, deployment, failed, expected", [
    ("RUNNING", "Running", 0, "running"),
    # KubeRay v1.7 rayjob_controller.go checkBackoffLimitAndUpdateStatusIfNeeded: a failed attempt with retries
    # left is written as jobStatus=FAILED + Retrying, then the cluster is recreated (New, Initializing, Running)
    ("FAILED", "Retrying", 1, "running"),
    ("", "New", 1, "pending"),
    ("FAILED", "Failed", 3, "failed"),
    ("SUCCEEDED", "Complete", 1, "succeeded"),
    ("STOPPED", "Complete", 0, "failed"),
    # rayjob_types.go: ValidationFailed is not in IsJobDeploymentTerminal, and the controller never leaves it
    ("", "ValidationFailed", 0, "failed"),
    ("PENDING", "Initializing", 0, "pending"),
])
def test_rayjob_states_follow_kuberay(job_status, deployment, failed, expected):
    jobs = _RayJobs(_launch_cfg("t", engine="ray"), client=object())
    state, detail = jobs.state({"status": {"jobStatus": job_status, "jobDeploymentStatus": deployment,
                                           "failed": failed}})
    assert state == expected, detail
    if deployment == "Retrying":
        assert "retrying" in detail and "failed attempts: 1" in detail


def test_rayjob_retrying_is_waited_for(cluster, ray_client):
    api, _ = cluster
    t, box = _in_thread(launch, _launch_cfg("t-ray-retry", engine="ray"), ray_client)
    _wait_for(api, RAYJOB, "t-ray-retry")
    _patch_status(api, RAYJOB, "t-ray-retry", {"status": {"jobStatus": "FAILED", "jobDeploymentStatus": "Retrying",
                                                           "failed": 1}})
    time.sleep(0.5)
    assert t.is_alive(), box  # KubeRay is retrying on the GPUs: the launcher keeps watching
    _patch_status(api, RAYJOB, "t-ray-retry", _ray_status("SUCCEEDED", "Complete"))
    t.join(30)
    assert "error" not in box, box


def _deploy_cfg(name, **kw):
    return DeployConfig(**{"name": name, "namespace": NS, "storage_uri": "pvc://loganalyzer-models/t/cpt_sft",
                           "poll_s": 0.2, **kw})


# What KServe's Standard mode reports (kube_ingress_reconciler.go): url from the ingress domain template, address
# the predictor's cluster-local Service, which is what the chatbot and the pipeline reach.
EXTERNAL, LOCAL = "http://t-chat-loganalyzer.example.com", "http://t-chat-predictor.loganalyzer.svc.cluster.local"


def _ready(status: str, generation: int, reason: str = "", message: str = ""):
    cond = {"type": "Ready", "status": status, "lastTransitionTime": "2026-11-21T00:00:00Z"}
    if reason:
        cond.update(reason=reason, message=message)
    return {"status": {"conditions": [cond], "url": EXTERNAL, "address": {"url": LOCAL},
                       "observedGeneration": generation}}


@pytest.fixture
def kserve_client(cluster):
    from kserve import KServeClient

    return KServeClient(config_file=cluster[1])


def test_inferenceservice_create_then_update(cluster, kserve_client):
    api, _ = cluster
    t, box = _in_thread(deploy, _deploy_cfg("t-chat"), kserve_client)
    isvc = _wait_for(api, ISVC, "t-chat")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"].startswith("pvc://")
    assert model["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "8", "memory": "64Gi"}
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    _patch_status(api, ISVC, "t-chat", _ready("True", isvc["metadata"]["generation"]))
    t.join(30)
    assert box.get("result") == f"{LOCAL}/openai/v1", box

    # update in place: the old generation's Ready must not count
    t, box = _in_thread(deploy, _deploy_cfg("t-chat", storage_uri="pvc://loganalyzer-models/t2/cpt_sft"),
                        kserve_client)
    deadline = time.monotonic() + 30
    while (isvc := _wait_for(api, ISVC, "t-chat"))["metadata"]["generation"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://loganalyzer-models/t2/cpt_sft"
    time.sleep(1)
    assert t.is_alive(), box
    _patch_status(api, ISVC, "t-chat", _ready("True", isvc["metadata"]["generation"]))
    t.join(30)
    assert box.get("result") == f"{LOCAL}/openai/v1", box


def test_inferenceservice_in_another_mode_is_recreated(cluster, kserve_client):
    """KServe refuses to change an existing service's mode ("update rejected: deploymentMode cannot be changed";
    kserve v0.20 inference_service_validation.go validateDeploymentMode): deploy deletes and recreates it."""
    api, _ = cluster
    t, box = _in_thread(deploy, _deploy_cfg("t-mode", deployment_mode="Knative"), kserve_client)
    old = _wait_for(api, ISVC, "t-mode")
    _patch_status(api, ISVC, "t-mode", {**_ready("True", old["metadata"]["generation"]),
                                        "status": {**_ready("True", 1)["status"], "deploymentMode": "Knative"}})
    t.join(30)
    assert "error" not in box, box
    t, box = _in_thread(deploy, _deploy_cfg("t-mode"), kserve_client)
    deadline = time.monotonic() + 30
    while (new := _wait_for(api, ISVC, "t-mode"))["metadata"]["uid"] == old["metadata"]["uid"]:
        assert time.monotonic() < deadline, "not recreated"
        time.sleep(0.1)
    assert new["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    _patch_status(api, ISVC, "t-mode", _ready("True", new["metadata"]["generation"]))
    t.join(30)
    assert box.get("result") == f"{LOCAL}/openai/v1", box

def test_inferenceservice_lora_mode():
    from loganalyzer.deploy import runtime_args

    uri, args = runtime_args(DeployConfig(name="x", storage_uri="pvc://models/r1/cpt",
                                          adapter_uri="pvc://models/r1/cpt_sft/adapter", served_model_name="la"))
    assert uri == "pvc://models"  # one mount holds the base and the adapter
    assert args[-3:] == ["--model_dir=/mnt/models/r1/cpt", "--enable-lora",
                         "--lora-modules=la=/mnt/models/r1/cpt_sft/adapter"]
    assert "--backend=vllm" in args
    with pytest.raises(ValueError, match="one claim"):
        runtime_args(DeployConfig(name="x", storage_uri="pvc://a/base", adapter_uri="pvc://b/adapter"))
    with pytest.raises(ValueError, match="pvc://"):
        runtime_args(DeployConfig(name="x", storage_uri="s3://bucket/base", adapter_uri="pvc://b/adapter"))
    assert "--backend=huggingface" in runtime_args(DeployConfig(name="x", storage_uri="pvc://a/m", gpus=0))[1]


def test_inferenceservice_not_ready_reports_the_reason(cluster, kserve_client):
    api, _ = cluster
    t, box = _in_thread(deploy, _deploy_cfg("t-broken", timeout_s=2), kserve_client)
    isvc = _wait_for(api, ISVC, "t-broken")
    _patch_status(api, ISVC, "t-broken", _ready("False", isvc["metadata"]["generation"], "RevisionFailed",
                                                "Revision t-broken-predictor-00001 failed with message: OOMKilled"))
    t.join(30)
    assert isinstance(box.get("error"), NotReady), box
    assert "RevisionFailed: Revision t-broken-predictor-00001 failed with message: OOMKilled" in str(box["error"])
