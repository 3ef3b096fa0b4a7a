"""Run a training recipe on the cluster as a Kubeflow **PyTorchJob** and wait for it.

    loganalyzer launch --name cpt-1 --recipe cpt_full_zero3 --nodes 1 --nproc-per-node 8 \\
        --args train_file=/data/runs/1/datasets/cpt_train.jsonl output_dir=/data/runs/1/models/cpt

The job runs ``torchrun --module loganalyzer.train --config <recipe> <args>`` on every replica (one Master plus
``nodes - 1`` Workers). The Training Operator sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` and
the master address, which torchrun reads, so the same recipe runs on 1×8 or 2×4 GPUs with no change; the world
size is never in training code. Created, watched and deleted through ``kubeflow-training``'s ``TrainingClient``.

Behaviour the pipeline relies on:
- re-running with the same ``name`` attaches to a job that is still running, returns at once for one that
  Succeeded and replaces one that Failed (a KFP retry continues from the recipe's ``resume: auto`` checkpoint);
- the master pod's log is streamed to this process's stdout once the job is Running (``follow_logs``);
- Failed: exits 1 with the job's reason and message; no terminal state within ``timeout_s``: the job is deleted
  (its GPUs freed) and the launcher exits 1 naming the last condition.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from kubernetes import client as k8s
from pydantic import Field

from loganalyzer import k8s as kube
from loganalyzer.config import StageConfig, parse_config

log = logging.getLogger("loganalyzer.launch")

K8S_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class LaunchConfig(StageConfig):
    """Run ``loganalyzer.train`` with a recipe as a PyTorchJob (torchrun on every replica) and wait for it."""

    name: str = Field(pattern=K8S_NAME, max_length=48,
                      description="PyTorchJob name (pods are <name>-master-0, <name>-worker-N)")
    recipe: str = Field(description="recipe name in the image's configs dir, or a path inside the image")
    args: list[str] = Field(default=[], description="key=value overrides passed to loganalyzer.train")
    namespace: str = Field(default="loganalyzer", description="namespace to create the job in")
    image: str = Field(default="loganalyzer-train:0.1.0", description="the train image (images/train)")
    nodes: int = Field(default=1, ge=1, description="replicas: 1 Master + nodes-1 Workers")
    nproc_per_node: int = Field(default=8, ge=1, description="torchrun processes per replica")
    gpus_per_node: int | None = Field(default=None, ge=0,
                                      description="nvidia.com/gpu per replica (default: nproc_per_node; 0: CPU)")
    cpu: str | None = Field(default=None, description="CPU request per replica, e.g. '32' (unset: none)")
    memory: str | None = Field(default=None, description="memory request per replica, e.g. '512Gi'")
    data_pvc: str = Field(default="loganalyzer-data", description="PVC mounted at /data in every replica")
    models_pvc: str = Field(default="loganalyzer-models", description="PVC mounted at /models in every replica")
    shm_size: str = Field(default="64Gi", description="size of the memory-backed /dev/shm")
    node_selector: dict[str, str] = Field(default={}, description="pod nodeSelector")
    tolerations: list[dict] = Field(default=[], description="pod tolerations (Kubernetes field names)")
    env: dict[str, str] = Field(default={}, description="extra environment for the trainer")
    secrets: list[str] = Field(default=["loganalyzer-mlflow", "loganalyzer-hf"],
                               description="Secrets whose keys become env vars (envFrom, optional)")
    config_maps: list[str] = Field(default=["loganalyzer-tracking"],
                                   description="ConfigMaps whose keys become env vars (envFrom, optional)")
    service_account: str = Field(default="loganalyzer-train",
                                 description="ServiceAccount of the trainer pods (needs no API access)")
    backoff_limit: int = Field(default=3, ge=0, description="pod restarts before the job is Failed")
    ttl_s: int = Field(default=86400, ge=0, description="delete the finished job after this many seconds")
    timeout_s: int = Field(default=7 * 86400, gt=0, description="give up (and delete the job) after this")
    poll_s: float = Field(default=30, gt=0, description="seconds between status checks")
    follow_logs: bool = Field(default=True, description="stream the master pod's log once Running")


# Environment every trainer pod gets (NCCL: fail fast on a hung collective instead of hanging a node for hours).
TRAIN_ENV = {
    "HOME": "/tmp",
    "LOGANALYZER_CONFIGS_DIR": kube.CONFIGS_PATH,
    "HF_HOME": f"{kube.DATA_MOUNT}/hf-cache",
    "TRITON_CACHE_DIR": "/tmp/triton",
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "PYTHONUNBUFFERED": "1",
}


def pytorchjob(cfg: LaunchConfig):
    """The ``KubeflowOrgV1PyTorchJob`` for ``cfg`` (container ``pytorch``, restartPolicy OnFailure)."""
    from kubeflow.training import (
        KubeflowOrgV1PyTorchJob,
        KubeflowOrgV1PyTorchJobSpec,
        KubeflowOrgV1ReplicaSpec,
        KubeflowOrgV1RunPolicy,
    )

    gpus = cfg.nproc_per_node if cfg.gpus_per_node is None else cfg.gpus_per_node
    requests = {k: v for k, v in (("cpu", cfg.cpu), ("memory", cfg.memory)) if v}
    limits = {}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    volumes, mounts = kube.scratch_volumes(cfg.shm_size)
    for name, claim, path in (("data", cfg.data_pvc, kube.DATA_MOUNT), ("models", cfg.models_pvc, kube.MODELS_MOUNT)):
        volumes.append(k8s.V1Volume(name=name, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=claim)))
        mounts.append(k8s.V1VolumeMount(name=name, mount_path=path))
    configs, configs_mount = kube.configs_volume()
    volumes.append(configs)
    mounts.append(configs_mount)
    container = k8s.V1Container(
        name="pytorch", image=cfg.image,
        command=["torchrun", "--module", "loganalyzer.train"],
        args=["--config", cfg.recipe, *cfg.args],
        env=kube.env_list({**TRAIN_ENV, **cfg.env}), env_from=kube.env_from(cfg.secrets, cfg.config_maps),
        resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
        volume_mounts=mounts, security_context=kube.container_security_context())
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=kube.labels("train", **{"loganalyzer/job": cfg.name})),
        spec=k8s.V1PodSpec(containers=[container], volumes=volumes, service_account_name=cfg.service_account,
                           automount_service_account_token=False,
                           security_context=kube.pod_security_context(), node_selector=cfg.node_selector or None,
                           tolerations=kube.tolerations(cfg.tolerations) or None))
    replicas = {"Master": KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=pod)}
    if cfg.nodes > 1:
        replicas["Worker"] = KubeflowOrgV1ReplicaSpec(replicas=cfg.nodes - 1, restart_policy="OnFailure",
                                                      template=pod)
    return KubeflowOrgV1PyTorchJob(
        api_version="kubeflow.org/v1", kind="PyTorchJob",
        metadata=k8s.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace, labels=kube.labels("train")),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(cfg.nproc_per_node), pytorch_replica_specs=replicas,
            run_policy=KubeflowOrgV1RunPolicy(backoff_limit=cfg.backoff_limit, clean_pod_policy="None",
                                              ttl_seconds_after_finished=cfg.ttl_s)))


class JobFailed(RuntimeError):
    """The PyTorchJob ended Failed, or reached no terminal state within the timeout."""


def _conditions(job) -> dict[str, dict]:
    return {c["type"]: c for c in (kube.to_dict(job).get("status") or {}).get("conditions") or []
            if c.get("status") == "True"}


def _reason(cond: dict | None) -> str:
    if not cond:
        return "no condition reported"
    return f"{cond.get('reason') or cond['type']}: {cond.get('message') or '(no message)'}"


def run(cfg: LaunchConfig, training_client=None) -> dict:
    """Create (or attach to) the PyTorchJob and wait for ``Succeeded``; return the final job as a dict.

    Raises JobFailed with the operator's reason on Failed, or after ``timeout_s`` (the job is then deleted).
    """
    from kubeflow.training import TrainingClient

    tc = training_client or TrainingClient(namespace=cfg.namespace, job_kind="PyTorchJob")
    existing = _get(tc, cfg)
    if existing is not None:
        conds = _conditions(existing)
        if "Succeeded" in conds:
            log.info("PyTorchJob %s/%s already Succeeded: nothing to do", cfg.namespace, cfg.name)
            return kube.to_dict(existing)
        if "Failed" in conds:
            log.warning("PyTorchJob %s/%s had Failed (%s): replacing it", cfg.namespace, cfg.name,
                        _reason(conds["Failed"]))
            _delete_and_wait(tc, cfg)
            existing = None
        else:
            log.info("PyTorchJob %s/%s exists and is not finished: attaching to it", cfg.namespace, cfg.name)
    if existing is None:
        tc.create_job(job=pytorchjob(cfg), namespace=cfg.namespace)
        log.info("created PyTorchJob %s/%s: %d node(s) x %d process(es), image %s", cfg.namespace, cfg.name,
                 cfg.nodes, cfg.nproc_per_node, cfg.image)

    logs = _LogFollower(tc, cfg) if cfg.follow_logs else None
    deadline = time.monotonic() + cfg.timeout_s
    last: dict[str, dict] = {}
    while True:
        job = tc.get_job(cfg.name, namespace=cfg.namespace)
        conds = _conditions(job)
        if conds.keys() != last.keys():
            log.info("PyTorchJob %s/%s: %s", cfg.namespace, cfg.name, ", ".join(conds) or "no conditions yet")
            last = conds
        if "Succeeded" in conds:
            if logs:
                logs.join()
            return kube.to_dict(job)
        if "Failed" in conds:
            if logs:
                logs.join()
            raise JobFailed(f"PyTorchJob {cfg.namespace}/{cfg.name} failed: {_reason(conds['Failed'])}")
        if logs and "Running" in conds:
            logs.start()
        if time.monotonic() >= deadline:
            latest = list(conds.values())[-1] if conds else None  # operators append conditions in order
            tc.delete_job(cfg.name, namespace=cfg.namespace)
            raise JobFailed(f"PyTorchJob {cfg.namespace}/{cfg.name} did not finish within {cfg.timeout_s}s "
                            f"(last condition {_reason(latest)}); deleted it to free its GPUs")
        time.sleep(cfg.poll_s)


def _get(tc, cfg: LaunchConfig):
    try:
        return tc.get_job(cfg.name, namespace=cfg.namespace)
    except RuntimeError as exc:  # TrainingClient wraps every API error; only "not found" is expected here
        if "Not Found" in str(exc) or "404" in str(exc):
            return None
        raise


def _delete_and_wait(tc, cfg: LaunchConfig, timeout_s: float = 120) -> None:
    tc.delete_job(cfg.name, namespace=cfg.namespace)
    deadline = time.monotonic() + timeout_s
    while _get(tc, cfg) is not None:
        if time.monotonic() > deadline:
            raise JobFailed(f"PyTorchJob {cfg.namespace}/{cfg.name} was not deleted within {timeout_s}s")
        time.sleep(1)


class _LogFollower:
    """Streams the master pod's log in a daemon thread (started once, when the job is Running)."""

    def __init__(self, tc, cfg: LaunchConfig):
        self._tc, self._cfg, self._thread = tc, cfg, None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        try:
            self._tc.get_job_logs(self._cfg.name, namespace=self._cfg.namespace, follow=True)
        except Exception as exc:  # logs are a convenience: never fail the launch over them
            log.warning("could not stream the logs of %s: %s", self._cfg.name, exc)

    def join(self, timeout: float = 30) -> None:
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
    main()
