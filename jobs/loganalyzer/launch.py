"""Run a training recipe on the cluster as a Kubeflow **PyTorchJob** (or a KubeRay **RayJob**) and wait for it.

    loganalyzer launch --name cpt-1 --recipe cpt_full_zero3 --nodes 1 --nproc-per-node 8 \\
        --args train_file=/data/runs/1/datasets/cpt_train.jsonl output_dir=/data/runs/1/models/cpt

The job runs ``torchrun --module loganalyzer.train --config <recipe> <args>`` on every replica: one Master on one
node; ``nodes`` Workers with a c10d rendezvous on worker-0 (``elasticPolicy`` min = max = nodes) on several, so
that the operator adds no init container that Pod Security "restricted" would refuse. The Training Operator sets
``PET_NNODES``, ``PET_NPROC_PER_NODE`` and the master address or rendezvous endpoint, which torchrun reads, so the
same recipe runs on 1×8 or 2×4 GPUs with no change; the world size is never in training code. Created, watched
and deleted through ``kubeflow-training``'s ``TrainingClient``. The job is ``manifests/base/pytorchjob-cpt.yaml``
(shipped in the wheel) with only the run's fields set (``pytorchjob``): the hardened trainer pod is defined there.

``engine=ray`` creates a RayJob instead (through the Kubernetes API; ``manifests/components/ray-sft/rayjob-sft.yaml``
with the run's fields): a CPU head and ``nodes x nproc_per_node``
single-GPU workers, whose entrypoint runs the same recipe with ``engine=ray`` (Ray Train's ``TorchTrainer``, one
rank per worker). Its state comes from ``status.jobDeploymentStatus`` / ``jobStatus``.

Behaviour the pipeline relies on:
- re-running with the same ``name`` attaches to a job that is still running, returns at once for one that
  Succeeded and replaces one that Failed (a KFP retry continues from the recipe's ``resume: auto`` checkpoint);
- a PyTorchJob's master pod log is streamed to this process's stdout once it is Running (``follow_logs``),
  across restarts of its container;
- failed: exits 1 with the job's reason and message; no terminal state within ``timeout_s``: the job is deleted
  (its GPUs freed) and the launcher exits 1 naming the last state.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shlex
import sys
import threading
import time
from typing import Literal

import yaml
from kubernetes import client as k8s
from pydantic import Field

from loganalyzer import k8s as kube
from loganalyzer.config import StageConfig, parse_config
from loganalyzer.resources import shipped

log = logging.getLogger("loganalyzer.launch")

K8S_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class LaunchConfig(StageConfig):
    """Run ``loganalyzer.train`` with a recipe as a PyTorchJob (torchrun on every replica) or a RayJob, and wait.
    Fields left unset (None) keep what the shipped manifest (``TEMPLATES``) says."""

    name: str = Field(pattern=K8S_NAME, max_length=48,
                      description="PyTorchJob name (pods: <name>-master-0 on one node, <name>-worker-N on more)")
    recipe: str = Field(description="recipe name in the image's configs dir, or a path inside the image")
    args: list[str] = Field(default=[], description="key=value overrides passed to loganalyzer.train")
    namespace: str = Field(default="loganalyzer", description="namespace to create the job in")
    image: str = Field(default="loganalyzer-train:0.1.0", description="the train image (images/train)")
    nodes: int = Field(default=1, ge=1, description="replicas: 1 Master, or that many Workers (c10d rendezvous)")
    nproc_per_node: int = Field(default=8, ge=1, description="torchrun processes per replica")
    gpus_per_node: int | None = Field(default=None, ge=0,
                                      description="nvidia.com/gpu per replica (default: nproc_per_node; 0: CPU)")
    cpu: str | None = Field(default=None, description="CPU request per replica, e.g. '32' (unset: none)")
    memory: str | None = Field(default=None, description="memory request per replica, e.g. '512Gi'")
    data_pvc: str = Field(default=kube.DATA_PVC, description=f"PVC mounted at {kube.DATA_MOUNT} in every replica")
    models_pvc: str = Field(default=kube.MODELS_PVC,
                            description=f"PVC mounted at {kube.MODELS_MOUNT} in every replica")
    shm_size: str | None = Field(default=None, description="size of the memory-backed /dev/shm")
    node_selector: dict[str, str] | None = Field(default=None, description="pod nodeSelector")
    tolerations: list[dict] | None = Field(default=None, description="pod tolerations (Kubernetes field names)")
    env: dict[str, str] = Field(default={}, description="extra environment for every pod of the job (over the "
                                                        "manifest's)")
    secrets: list[str] | None = Field(default=None,
                                      description="Secrets whose keys become env vars (envFrom, optional)")
    config_maps: list[str] | None = Field(default=None,
                                          description="ConfigMaps whose keys become env vars (envFrom, optional)")
    service_account: str | None = Field(default=None, description="ServiceAccount of the trainer pods")
    backoff_limit: int | None = Field(default=None, ge=0, description="pod restarts before the job is Failed")
    ttl_s: int | None = Field(default=None, ge=0, description="delete the finished job after this many seconds")
    timeout_s: int = Field(default=7 * 86400, gt=0, description="give up (and delete the job) after this")
    poll_s: float = Field(default=30, gt=0, description="seconds between status checks")
    follow_logs: bool = Field(default=True, description="PyTorchJob: stream the master pod's log once Running")
    engine: Literal["pytorchjob", "ray"] = Field(
        default="pytorchjob", description="pytorchjob: torchrun in a PyTorchJob; ray: a KubeRay RayJob running "
                                          "the recipe with engine=ray, one single-GPU Ray worker per rank")


# Runtime as data: each job is the object in manifests/ (shipped in the wheel, loganalyzer.resources), with only
# the run's fields set here; the hardened trainer pod (security contexts, env, volumes, the recipes' ConfigMaps) is
# defined there once.
TEMPLATES = {"pytorchjob": "base/pytorchjob-cpt.yaml", "ray": "components/ray-sft/rayjob-sft.yaml"}
_VAR = re.compile(r"\$\((\w+)\)")


def template(engine: str) -> dict:
    """The shipped manifest a job of ``engine`` (``pytorchjob`` or ``ray``) is made from, as a dict."""
    return yaml.safe_load((shipped("manifests") / TEMPLATES[engine]).read_text())


def _example_vars(container: dict) -> set[str]:
    """The env vars the manifest's own example run uses in its args (``$(RUN_DIR)``...), with those they use."""
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    names = set(_VAR.findall(" ".join(container.get("args", []))))
    while extra := {v for n in names for v in _VAR.findall(env.get(n, ""))} - names:
        names |= extra
    return names


def _fit_pod(template_: dict, cfg: LaunchConfig, gpus: int, args: list[str] | None = None) -> dict:
    """The manifest's pod template with this run's image, args, resources, PVCs, scheduling and env."""
    pod = copy.deepcopy(template_)
    pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **kube.labels("train"),
                                 "loganalyzer/job": cfg.name}
    spec = pod["spec"]
    if cfg.node_selector is not None:
        spec["nodeSelector"] = cfg.node_selector
    if cfg.tolerations is not None:  # through the client's model: a misspelt field is an error, not dropped
        spec["tolerations"] = kube.to_dict(kube.tolerations(cfg.tolerations))
    if cfg.service_account:
        spec["serviceAccountName"] = cfg.service_account
    claims = {"data": cfg.data_pvc, "models": cfg.models_pvc}
    for volume in spec.get("volumes", []):
        if volume["name"] in claims:
            volume["persistentVolumeClaim"]["claimName"] = claims[volume["name"]]
        if volume["name"] == "dshm" and cfg.shm_size:
            volume["emptyDir"]["sizeLimit"] = cfg.shm_size
    (container,) = spec["containers"]
    container["image"] = cfg.image
    dropped = set()
    if args is not None:
        dropped = _example_vars(container)
        container["args"] = args
    env = {e["name"]: e for e in container.get("env", []) if e["name"] not in dropped}
    container["env"] = list({**env, **{k: {"name": k, "value": str(v)} for k, v in cfg.env.items()}}.values())
    if cfg.secrets is not None or cfg.config_maps is not None:
        old = container.get("envFrom", [])
        maps = cfg.config_maps if cfg.config_maps is not None else [r["configMapRef"]["name"] for r in old
                                                                     if "configMapRef" in r]
        secrets = cfg.secrets if cfg.secrets is not None else [r["secretRef"]["name"] for r in old if "secretRef" in r]
        container["envFrom"] = kube.to_dict(kube.env_from(secrets, maps))
    resources = container.pop("resources", {})
    for kind in ("requests", "limits"):
        resources.setdefault(kind, {}).pop("nvidia.com/gpu", None)
        if gpus:
            resources[kind]["nvidia.com/gpu"] = str(gpus)
    resources["requests"].update({k: v for k, v in (("cpu", cfg.cpu), ("memory", cfg.memory)) if v})
    if resources := {k: v for k, v in resources.items() if v}:
        container["resources"] = resources
    return pod


def _gpus(cfg: LaunchConfig) -> int:
    return cfg.nproc_per_node if cfg.gpus_per_node is None else cfg.gpus_per_node


def _fit_job(job: dict, cfg: LaunchConfig) -> dict:
    job["metadata"] = {"name": cfg.name, "namespace": cfg.namespace,
                       "labels": {**job["metadata"].get("labels", {}), **kube.labels("train")}}
    return job


def pytorchjob(cfg: LaunchConfig):
    """The ``KubeflowOrgV1PyTorchJob`` for ``cfg``: ``manifests/base/pytorchjob-cpt.yaml`` with the run's recipe
    and args, topology, resources and names, not suspended. One node: a Master; several: that many Workers with
    torchrun's c10d rendezvous (``elasticPolicy`` min = max = nodes)."""
    from kubeflow.training import KubeflowOrgV1PyTorchJob
    from kubeflow.training.api_client import ApiClient

    job = _fit_job(template("pytorchjob"), cfg)
    spec = job["spec"]
    (master,) = spec["pytorchReplicaSpecs"].values()
    pod = _fit_pod(master["template"], cfg, _gpus(cfg), ["--config", cfg.recipe, *cfg.args])
    spec["nprocPerNode"] = str(cfg.nproc_per_node)
    run_policy = spec["runPolicy"]
    run_policy.pop("suspend", None)
    for key, value in (("backoffLimit", cfg.backoff_limit), ("ttlSecondsAfterFinished", cfg.ttl_s)):
        if value is not None:
            run_policy[key] = value
    if cfg.nodes == 1:
        spec["pytorchReplicaSpecs"] = {"Master": {**master, "replicas": 1, "template": pod}}
    else:
        # Workers only, with torchrun's c10d rendezvous on worker-0 (PET_RDZV_*, PET_NNODES=n:n): the operator
        # injects its init-pytorch container (alpine, no securityContext) into the Workers of a job that has a
        # Master (training-operator v1.9 pkg/controller.v1/pytorch/initcontainer.go), which Pod Security
        # "restricted" forbids; without a Master it injects none, and worker-0 takes the master role (logs).
        spec["pytorchReplicaSpecs"] = {"Worker": {**master, "replicas": cfg.nodes, "template": pod}}
        spec["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": cfg.nodes, "maxReplicas": cfg.nodes}

    class _Response:  # what ApiClient.deserialize reads: the JSON the API server would return
        data = json.dumps(job)

    return ApiClient().deserialize(_Response(), KubeflowOrgV1PyTorchJob.__name__)


def rayjob(cfg: LaunchConfig) -> dict:
    """The KubeRay ``RayJob`` for ``cfg``: ``manifests/components/ray-sft/rayjob-sft.yaml`` with a CPU head and
    ``nodes x nproc_per_node`` workers with one GPU each (CPU workers when ``gpus_per_node`` is 0), running the
    recipe with ``engine=ray`` (one Ray Train rank per worker), not suspended."""
    workers = cfg.nodes * cfg.nproc_per_node
    gpu = 1 if _gpus(cfg) else 0
    job = _fit_job(template("ray"), cfg)
    spec = job["spec"]
    spec.pop("suspend", None)
    spec["entrypoint"] = shlex.join(["python", "-m", "loganalyzer.train", "--config", cfg.recipe, "engine=ray",
                                     f"ray_workers={workers}", f"ray_use_gpu={str(bool(gpu)).lower()}", *cfg.args])
    for key, value in (("backoffLimit", cfg.backoff_limit), ("ttlSecondsAfterFinished", cfg.ttl_s)):
        if value is not None:
            spec[key] = value
    spec["submitterPodTemplate"] = _fit_pod(spec["submitterPodTemplate"], cfg, 0)
    cluster = spec["rayClusterSpec"]
    cluster["headGroupSpec"]["template"] = _fit_pod(cluster["headGroupSpec"]["template"], cfg, 0)
    (group,) = cluster["workerGroupSpecs"]
    group.update(replicas=workers, minReplicas=workers, maxReplicas=workers,
                 template=_fit_pod(group["template"], cfg, gpu))
    return job


class JobFailed(RuntimeError):
    """The job ended Failed, or reached no terminal state within the timeout."""


class _PyTorchJobs:
    """PyTorchJobs through kubeflow-training's TrainingClient. ``state`` maps the operator's conditions."""

    kind = "PyTorchJob"

    def __init__(self, cfg: LaunchConfig, client=None):
        from kubeflow.training import TrainingClient

        self.cfg = cfg
        self.client = client or TrainingClient(namespace=cfg.namespace, job_kind="PyTorchJob")
        self._logs = _LogFollower(self.client, cfg) if cfg.follow_logs else None

    def get(self) -> dict | None:
        try:
            return kube.to_dict(self.client.get_job(self.cfg.name, namespace=self.cfg.namespace))
        except RuntimeError as exc:  # TrainingClient wraps every API error; only "not found" is expected here
            if "Not Found" in str(exc) or "404" in str(exc):
                return None
            raise

    def create(self) -> None:
        self.client.create_job(job=pytorchjob(self.cfg), namespace=self.cfg.namespace)

    def delete(self) -> None:
        self.client.delete_job(self.cfg.name, namespace=self.cfg.namespace)

    def state(self, job: dict) -> tuple[str, str]:
        conds = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
        by_type = {c["type"]: c for c in conds}
        for terminal, name in (("Succeeded", "succeeded"), ("Failed", "failed")):
            if terminal in by_type:
                return name, _reason(by_type[terminal])
        if "Running" in by_type and self._logs:
            self._logs.start()
        # operators append conditions in order: the last one is the current state
        return ("running" if "Running" in by_type else "pending"), _reason(conds[-1] if conds else None)

    def finished(self) -> None:
        if self._logs:
            self._logs.join()


class _RayJobs:
    """KubeRay RayJobs through the Kubernetes API (``status.jobDeploymentStatus`` / ``jobStatus``)."""

    kind = "RayJob"
    _api = ("ray.io", "v1", "rayjobs")

    def __init__(self, cfg: LaunchConfig, client=None):
        if client is None:
            from kubernetes import config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self.cfg = cfg
        self.client = client or k8s.CustomObjectsApi()

    def get(self) -> dict | None:
        try:
            return self.client.get_namespaced_custom_object(*self._api[:2], self.cfg.namespace, self._api[2],
                                                            self.cfg.name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self) -> None:
        self.client.create_namespaced_custom_object(*self._api[:2], self.cfg.namespace, self._api[2], rayjob(self.cfg))

    def delete(self) -> None:
        self.client.delete_namespaced_custom_object(*self._api[:2], self.cfg.namespace, self._api[2], self.cfg.name)

    def state(self, job: dict) -> tuple[str, str]:
        """KubeRay v1.7 (``apis/ray/v1/rayjob_types.go``): only ``Complete`` and ``Failed`` deployment statuses are
        terminal. With retries left a failed attempt reads ``jobStatus=FAILED`` + ``Retrying`` and KubeRay starts a
        new cluster, so that is still running. ``ValidationFailed`` is never left (the controller has no case for
        it): it is a failure here, or the launcher would poll until its timeout."""
        st = job.get("status") or {}
        deployment, status = st.get("jobDeploymentStatus", ""), st.get("jobStatus", "")
        detail = f"{st.get('reason') or deployment or 'no status yet'}: {st.get('message') or f'job {status}'}"
        if st.get("failed"):
            detail += f" (failed attempts: {st['failed']})"
        if deployment == "Complete" and status == "SUCCEEDED":
            return "succeeded", detail
        if deployment in ("Complete", "Failed", "ValidationFailed"):
            return "failed", detail
        if deployment == "Retrying":
            return "running", f"retrying after a failed attempt: {detail}"
        return ("running" if status == "RUNNING" else "pending"), detail

    def finished(self) -> None:
        pass


def _reason(cond: dict | None) -> str:
    if not cond:
        return "no condition reported"
    return f"{cond.get('reason') or cond['type']}: {cond.get('message') or '(no message)'}"


def run(cfg: LaunchConfig, client=None) -> dict:
    """Create (or attach to) the job and wait until it succeeds; return the final job as a dict.

    ``client``: a ``TrainingClient`` (PyTorchJob) or ``CustomObjectsApi`` (RayJob); default from the in-cluster
    or kubeconfig credentials. Raises JobFailed with the operator's reason on failure, or after ``timeout_s``
    (the job is then deleted).
    """
    jobs = (_RayJobs if cfg.engine == "ray" else _PyTorchJobs)(cfg, client)
    where = f"{jobs.kind} {cfg.namespace}/{cfg.name}"
    existing = jobs.get()
    if existing is not None:
        state, detail = jobs.state(existing)
        if state == "succeeded":
            log.info("%s already succeeded: nothing to do", where)
            return existing
        if state == "failed":
            log.warning("%s had failed (%s): replacing it", where, detail)
            _delete_and_wait(jobs, where)
            existing = None
        else:
            log.info("%s exists and is not finished: attaching to it", where)
    if existing is None:
        jobs.create()
        log.info("created %s: %d node(s) x %d process(es), image %s", where, cfg.nodes, cfg.nproc_per_node,
                 cfg.image)
    try:
        return _wait(jobs, cfg, where)
    finally:
        jobs.finished()  # stops the log follower on every way out


def _wait(jobs, cfg: LaunchConfig, where: str) -> dict:
    deadline = time.monotonic() + cfg.timeout_s
    last = None
    while True:
        job = jobs.get()
        if job is None:
            raise JobFailed(f"{where} was deleted while it ran")
        state, detail = jobs.state(job)
        if (state, detail) != last:
            log.info("%s: %s (%s)", where, state, detail)
            last = (state, detail)
        if state == "succeeded":
            return job
        if state == "failed":
            raise JobFailed(f"{where} failed: {detail}")
        if time.monotonic() >= deadline:
            jobs.delete()
            raise JobFailed(f"{where} did not finish within {cfg.timeout_s}s (last state {state}, {detail}); "
                            f"deleted it to free its GPUs")
        time.sleep(cfg.poll_s)


def _delete_and_wait(jobs, where: str, timeout_s: float = 120) -> None:
    jobs.delete()
    if not kube.wait_deleted(lambda: jobs.get() is not None, timeout_s):
        raise JobFailed(f"{where} was not deleted within {timeout_s}s")


class _LogFollower:
    """Streams the log of the job's master pod (``<name>-master-0``, or ``<name>-worker-0`` on several nodes) in a
    daemon thread, started once the job is Running, until the job finishes.

    The SDK's ``TrainingClient.get_job_logs(follow=True)`` opens one stream per pod and ends it when the container
    exits, so a pod restarted by ``restartPolicy: OnFailure`` (the resume path) would go silent. Here the stream is
    reopened whenever it ends before the job does; lines carry the API server's timestamps, and those already
    printed are skipped, so a reconnect to the same container prints nothing twice.
    """

    def __init__(self, tc, cfg: LaunchConfig, retry_s: float = 5):
        self._core, self._cfg, self._retry_s = tc.core_api, cfg, retry_s
        self._thread, self._done = None, threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()

    def _master_pod(self) -> str | None:
        pods = self._core.list_namespaced_pod(
            self._cfg.namespace, label_selector=f"training.kubeflow.org/job-name={self._cfg.name},"
                                                "training.kubeflow.org/job-role=master").items
        running = [p for p in pods if p.status and p.status.phase not in ("Pending", None)]
        return running[0].metadata.name if running else None

    def _follow(self) -> None:
        from kubernetes import watch

        last, seen = "", None  # RFC 3339 timestamp of the last line printed (they sort as strings), and when
        while not self._done.is_set():
            try:
                pod = self._master_pod()
                if pod:
                    # reopened streams start shortly before the last line, not at the container's first one
                    since = {"since_seconds": int(time.monotonic() - seen) + 2} if seen else {}
                    for line in watch.Watch().stream(self._core.read_namespaced_pod_log, name=pod,
                                                     namespace=self._cfg.namespace, container="pytorch",
                                                     timestamps=True, **since):
                        stamp, _, text = line.partition(" ")
                        if stamp > last:
                            print(f"[{pod}] {text}", flush=True)
                            last, seen = stamp, time.monotonic()
            except Exception as exc:  # logs are a convenience: never fail the launch over them
                log.warning("log stream of %s interrupted (%s); retrying", self._cfg.name, exc)
            self._done.wait(self._retry_s)

    def join(self, timeout: float = 30) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout)


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(LaunchConfig, "launch", argv)
    try:
        run(cfg)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
