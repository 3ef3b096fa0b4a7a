"""Kubernetes pieces shared by the launchers (``launch``: PyTorchJobs and RayJobs from the shipped manifests,
``deploy``: InferenceServices).

The trainer jobs are the manifests' (their hardened pods are defined there); the InferenceService's pod built here
gets the same hardened security context as the pods in ``manifests/`` and the Helm chart: non-root UID 1000, no
privilege escalation, all capabilities dropped, seccomp ``RuntimeDefault`` and a read-only root filesystem (writable
``/tmp`` and ``/dev/shm`` come from emptyDirs).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubernetes import client as k8s

# The suite's cluster constants, defined here once (the launchers, the pipeline; manifests/ and the chart name the
# same, checked by tests/test_manifests.py). The UID is the images' `USER 1000`.
APP = "loganalyzer"
UID = 1000
# The two PVCs and where every pod mounts them: data (logs, chunks, datasets, reports) and models (weights,
# checkpoints, trained models).
DATA_PVC, MODELS_PVC = "loganalyzer-data", "loganalyzer-models"
DATA_MOUNT = "/data"
MODELS_MOUNT = "/models"


def labels(component: str, **extra: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io`` labels for an object of ``component``."""
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "loganalyzer", **extra}


def pod_security_context() -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=UID, run_as_group=UID, fs_group=UID,
                                    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"))


def container_security_context(with_identity: bool = False) -> k8s.V1SecurityContext:
    """The hardened container security context; ``with_identity`` adds the user, group and seccomp profile that
    ``pod_security_context`` otherwise sets, for pods that may carry no pod-level context (Knative Services)."""
    identity = dict(run_as_user=UID, run_as_group=UID,
                    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")) if with_identity else {}
    return k8s.V1SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True,
                                 run_as_non_root=True, capabilities=k8s.V1Capabilities(drop=["ALL"]), **identity)


def scratch_volumes(shm_size: str | None) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    """emptyDirs for ``/tmp`` (HOME and caches; the root filesystem is read-only) and, when ``shm_size`` is set,
    a memory-backed ``/dev/shm`` of that size (NCCL and DataLoader workers need far more than the 64 MiB default).
    """
    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    if shm_size:
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                                        size_limit=shm_size)))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    return volumes, mounts


def env_list(env: dict[str, str]) -> list[k8s.V1EnvVar]:
    return [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted(env.items())]


def env_from(secrets: list[str], config_maps: list[str]) -> list[k8s.V1EnvFromSource]:
    """``envFrom`` references to Secrets and ConfigMaps, all optional (a missing one leaves its variables unset
    instead of keeping the pod from starting). Secret values never appear in an object the suite creates."""
    return ([k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=n, optional=True))
             for n in config_maps]
            + [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=n, optional=True)) for n in secrets])


def tolerations(items: list[dict]) -> list[k8s.V1Toleration]:
    return [k8s.V1Toleration(**{_snake(k): v for k, v in t.items()}) for t in items]


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def to_dict(obj) -> dict:
    """A kubernetes/kubeflow model as the plain JSON-ready dict the API server receives."""
    return k8s.ApiClient().sanitize_for_serialization(obj)


def condition(obj: dict, kind: str) -> dict | None:
    """The status condition of type ``kind`` of a custom resource dict, or None."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def wait_deleted(exists: Callable[[], bool], timeout_s: float, poll_s: float = 1) -> bool:
    """Poll ``exists`` every ``poll_s`` seconds until it returns False; False if it still exists after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
