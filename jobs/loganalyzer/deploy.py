"""Serve a trained model with a KServe **InferenceService** (create or update it) and wait until it is Ready.

    loganalyzer deploy --name loganalyzer-chat --storage-uri pvc://loganalyzer-data/runs/1/models/cpt_sft

The predictor uses KServe's Hugging Face serving runtime (``modelFormat: huggingface``; the vLLM backend with a GPU,
the transformers one without), which exposes the OpenAI-compatible API under ``<status.url>/openai/v1``; that URL
is printed and returned. Readiness and liveness probes use the runtime's ``/v2/health/*``; ``min_replicas`` /
``max_replicas`` / ``scale_target`` (concurrent requests per replica) bound the autoscaler.

Two modes: the merged model at ``storage_uri`` (default), or ``adapter_uri`` set: the base model at ``storage_uri``
with the LoRA adapter (``train`` writes it to ``<output_dir>/adapter``) served on top by vLLM (``--enable-lora``)
under ``served_model_name``. Both must then be ``pvc://`` paths on the same claim, which KServe mounts once.
Created, updated and watched through the ``kserve`` SDK's ``KServeClient``. An existing service of the same name is
replaced in place and the launcher waits for the new generation to be Ready. Not Ready within ``timeout_s``:
exits 1 with the Ready condition's reason and message. The URL returned is the cluster-local address
(``status.address.url``, what the chatbot and the pipeline use); the external ``status.url`` is logged.

Deployment mode (annotation ``serving.kserve.io/deploymentMode``, always set): ``Standard`` (default; a Deployment
and a Service ``<name>-predictor``; needs no Knative) runs ``min_replicas`` = ``max_replicas`` replicas with no
HPA (``serving.kserve.io/autoscalerClass: none``): KServe's HPA scales on CPU or memory only, which says nothing
about a GPU server's load. ``Knative`` (serverless) autoscales on concurrent requests (``scale_target``) and can
scale to zero. Knative's webhook refuses pod-level ``runAsUser``/``runAsGroup``/``runAsNonRoot``/``fsGroup``/
``seccompProfile`` unless the ``kubernetes.podspec-securitycontext`` feature is on (knative/serving
``pkg/apis/serving/fieldmask.go``), so in that mode the same identity goes on the container, whose fields Knative
allows; it also refuses ``nodeSelector``/``tolerations`` unless their features are on (a warning says so). KServe
refuses to change the mode of an existing service, so a service in the other mode is deleted and recreated.
``RawDeployment``/``Serverless``, the modes' former names, are accepted for older KServe releases.

Resources: KServe merges this container onto the ServingRuntime's (``pkg/utils/container_merge.go``, a strategic
merge key by key), and the Hugging Face runtime limits itself to 1 CPU / 2 GiB: ``cpu`` and ``memory`` are set as
both request and limit, so those defaults never survive.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

from kubernetes import client as k8s
from pydantic import Field, model_validator

from loganalyzer import k8s as kube
from loganalyzer.config import ConfigError, StageConfig, parse_config
from loganalyzer.launch import K8S_NAME

log = logging.getLogger("loganalyzer.deploy")


# The modes' names before KServe renamed them, still accepted by KServe v0.20 (and by older releases only).
LEGACY_MODES = {"RawDeployment": "Standard", "Serverless": "Knative"}


class DeployConfig(StageConfig):
    """Create or update the InferenceService serving a model and wait until it is Ready."""

    name: str = Field(pattern=K8S_NAME, max_length=45, description="InferenceService name")
    storage_uri: str = Field(description="model location: pvc://<claim>/<path>, s3://..., hf://..., or a registered "
                                         "version models:/NAME/VERSION | models:/NAME@ALIAS (MLflow Model Registry)")
    namespace: str = Field(default="loganalyzer", description="namespace of the InferenceService")
    served_model_name: str = Field(default="loganalyzer", description="model name clients send in requests")
    max_model_len: int = Field(default=8192, gt=0, description="context length the server allocates for")
    gpus: int = Field(default=1, ge=0, description="nvidia.com/gpu for the predictor (0: CPU backend)")
    cpu: str | None = Field(default=None, description="CPU request and limit, replacing the runtime's 1-CPU limit "
                                                      "(default 8 with a GPU, 2 without)")
    memory: str | None = Field(default=None, description="memory request and limit, replacing the runtime's 2Gi "
                                                         "(default 64Gi with a GPU: vLLM loads an 8B model in bf16 "
                                                         "through host memory; 8Gi without)")
    deployment_mode: Literal["Standard", "Knative", "RawDeployment", "Serverless"] = Field(
        default="Standard", description="KServe mode: Standard (Deployment + Service) or Knative (serverless; the "
                                        "security context moves to the container); RawDeployment / Serverless are "
                                        "their names before KServe renamed them")
    min_replicas: int = Field(default=1, ge=0, description="replicas (Standard), or Knative's autoscaling lower "
                                                           "bound (0: scale to zero)")
    max_replicas: int = Field(default=1, ge=1, description="Knative's autoscaling upper bound (Standard: = min)")
    scale_target: int = Field(default=8, ge=1, description="Knative: concurrent requests per replica before "
                                                           "scaling out")
    adapter_uri: str = Field(default="", description="LoRA mode: the adapter (pvc://<same claim>/<path>/adapter); "
                                                     "storage_uri is then the base model")
    runtime: str | None = Field(default=None, description="ServingRuntime name (unset: KServe picks by format)")
    args: list[str] = Field(default=[], description="extra arguments for the serving runtime")
    service_account: str | None = Field(default=None,
                                        description="predictor ServiceAccount (S3 credentials for s3:// URIs)")
    node_selector: dict[str, str] = Field(default={}, description="predictor nodeSelector")
    tolerations: list[dict] = Field(default=[], description="predictor tolerations")
    termination_grace_s: int = Field(
        default=60, ge=1, description="Standard mode: seconds a stopping predictor pod gets to finish the replies in "
                                      "flight before SIGKILL (Knative refuses the field: its grace is the revision "
                                      "timeout)")
    timeout_s: int = Field(default=1800, gt=0, description="fail when not Ready after this many seconds")
    poll_s: float = Field(default=10, gt=0, description="seconds between readiness checks")

    @property
    def knative(self) -> bool:
        return LEGACY_MODES.get(self.deployment_mode, self.deployment_mode) == "Knative"

    @model_validator(mode="after")
    def _standard_has_fixed_replicas(self):
        # KServe's HPA for Standard mode scales on CPU or memory only (hpa_reconciler.go): a concurrency target
        # would give an HPA with no metric, and nothing scales to zero. Request-driven scaling is Knative's.
        if not self.knative and not 1 <= self.min_replicas == self.max_replicas:
            raise ValueError(f"deployment_mode {self.deployment_mode} runs a fixed number of replicas: set "
                             f"min_replicas = max_replicas >= 1 (got {self.min_replicas}..{self.max_replicas}), or "
                             f"use deployment_mode=Knative for autoscaling on concurrent requests")
        return self


DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts storage_uri
PORT = 8080  # the Hugging Face runtime's HTTP port


def _pvc(uri: str) -> tuple[str, str]:
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    return claim, path.strip("/")


def runtime_args(cfg: DeployConfig) -> tuple[str, list[str]]:
    """(storageUri, runtime arguments) for the mode of ``cfg``. Raises ValueError for a LoRA pair that KServe
    cannot mount together."""
    backend = "vllm" if cfg.gpus else "huggingface"
    args = [f"--model_name={cfg.served_model_name}", f"--backend={backend}", f"--max-model-len={cfg.max_model_len}"]
    if not cfg.adapter_uri:
        return cfg.storage_uri, args + cfg.args
    if not (cfg.storage_uri.startswith("pvc://") and cfg.adapter_uri.startswith("pvc://")):
        raise ValueError("LoRA mode needs storage_uri and adapter_uri as pvc:// paths on one claim")
    (claim, base), (adapter_claim, adapter) = _pvc(cfg.storage_uri), _pvc(cfg.adapter_uri)
    if claim != adapter_claim or not cfg.gpus:
        raise ValueError(f"LoRA mode needs one claim for both ({claim} vs {adapter_claim}) and a GPU (vLLM)")
    return f"pvc://{claim}", args + [f"--model_dir={MOUNT}/{base}", "--enable-lora",
                                     f"--lora-modules={cfg.served_model_name}={MOUNT}/{adapter}", *cfg.args]


def inference_service(cfg: DeployConfig):
    """The ``V1beta1InferenceService`` for ``cfg``."""
    import kserve

    storage_uri, args = runtime_args(cfg)
    knative = cfg.knative
    requests = {"cpu": cfg.cpu or ("8" if cfg.gpus else "2"), "memory": cfg.memory or ("64Gi" if cfg.gpus else "8Gi")}
    limits = dict(requests)
    if cfg.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(cfg.gpus)
    volumes, mounts = kube.scratch_volumes(shm_size="16Gi" if cfg.gpus else None)

    def probe(path: str, failures: int) -> k8s.V1Probe:  # loading an 8B model takes minutes: be patient
        return k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path=path, port=PORT), initial_delay_seconds=30,
                           period_seconds=10, timeout_seconds=5, failure_threshold=failures)

    model = kserve.V1beta1ModelSpec(
        name="kserve-container", model_format=kserve.V1beta1ModelFormat(name="huggingface"), storage_uri=storage_uri,
        runtime=cfg.runtime, args=args,
        env=kube.env_list({"HOME": "/tmp", "HF_HUB_OFFLINE": "1"}),
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        readiness_probe=probe("/v2/health/ready", 60), liveness_probe=probe("/v2/health/live", 6),
        volume_mounts=mounts, security_context=kube.container_security_context(with_identity=knative))
    scaling = dict(scale_metric="concurrency", scale_target=cfg.scale_target) if knative else {}
    predictor = kserve.V1beta1PredictorSpec(
        model=model, min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas, volumes=volumes,
        service_account_name=cfg.service_account,
        security_context=None if knative else kube.pod_security_context(),
        termination_grace_period_seconds=None if knative else cfg.termination_grace_s,
        node_selector=cfg.node_selector or None, tolerations=kube.tolerations(cfg.tolerations) or None, **scaling)
    # Standard: a fixed replica count, so no HPA (autoscalerClass none) rather than one scaling GPUs on CPU load
    annotations = {DEPLOYMENT_MODE: cfg.deployment_mode, **({} if knative else {AUTOSCALER_CLASS: "none"})}
    return kserve.V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1", kind="InferenceService",
        metadata=k8s.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace, labels=kube.labels("serving"),
                                  annotations=annotations),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor))


class NotReady(RuntimeError):
    """The InferenceService did not become Ready in time."""



def _mode(isvc: dict) -> str | None:
    """The KServe mode an InferenceService runs in (``status.deploymentMode`` once reconciled, else its
    annotation), legacy names folded into the current ones; None when neither says."""
    mode = (isvc.get("status") or {}).get("deploymentMode") or (isvc["metadata"].get("annotations") or {}).get(
        DEPLOYMENT_MODE)
    return LEGACY_MODES.get(mode, mode)


def _exists(kc, cfg: DeployConfig) -> bool:
    try:
        kc.get(cfg.name, namespace=cfg.namespace)
    except RuntimeError:  # the SDK wraps "not found" like every other error
        return False
    return True


def resolve_registered(cfg: DeployConfig) -> DeployConfig:
    """``cfg`` with a ``models:/`` storage_uri replaced by the registered version's source
    (``loganalyzer.registry.resolve``). Raises ConfigError when tracking is off or the source is a local path,
    which KServe cannot read."""
    if not cfg.storage_uri.startswith("models:/"):
        return cfg
    from loganalyzer.registry import is_local_source, resolve

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(f"storage_uri={cfg.storage_uri}: set MLFLOW_TRACKING_URI to the registry's MLflow server")
    try:
        source = resolve(cfg.storage_uri)
    except Exception as exc:  # ValueError for the form, MlflowException for an unknown name/version/alias
        raise ConfigError(f"storage_uri={cfg.storage_uri}: {exc}") from None
    if is_local_source(source):
        raise ConfigError(f"storage_uri={cfg.storage_uri} is registered at the local path {source}, which KServe "
                          "cannot read; register it with storage_uri=pvc://... or s3://... (train's storage_uri)")
    log.info("deploy: %s -> %s", cfg.storage_uri, source)
    return cfg.model_copy(update={"storage_uri": source})


def run(cfg: DeployConfig, kserve_client=None) -> str:
    """Create or replace the InferenceService, wait for Ready; return its OpenAI-compatible base URL.

    Raises NotReady with the Ready condition's reason after ``timeout_s``.
    """
    from kserve import KServeClient

    kc = kserve_client or KServeClient()
    cfg = resolve_registered(cfg)
    isvc = inference_service(cfg)
    if cfg.knative and (cfg.node_selector or cfg.tolerations):
        log.warning("Knative refuses nodeSelector and tolerations unless its kubernetes.podspec-nodeselector and "
                    "kubernetes.podspec-tolerations features are on (config-features ConfigMap)")
    try:
        current = kc.get(cfg.name, namespace=cfg.namespace)
    except RuntimeError as exc:  # the SDK wraps every API error; only "not found" means "create it"
        if "Not Found" not in str(exc) and "404" not in str(exc):
            raise
        current = None
    if current is None:
        out = kc.create(isvc, namespace=cfg.namespace)
        log.info("created InferenceService %s/%s (%s)", cfg.namespace, cfg.name, cfg.storage_uri)
    elif _mode(current) not in (None, _mode(kube.to_dict(isvc))):
        # KServe's webhook refuses to change the mode of an existing service (inference_service_validation.go
        # validateDeploymentMode): replace it
        log.warning("InferenceService %s/%s runs in %s mode, %s asked: deleting and recreating it", cfg.namespace,
                    cfg.name, _mode(current), cfg.deployment_mode)
        kc.delete(cfg.name, namespace=cfg.namespace)
        if not kube.wait_deleted(lambda: _exists(kc, cfg), timeout_s=300, poll_s=min(cfg.poll_s, 2)):
            raise NotReady(f"InferenceService {cfg.namespace}/{cfg.name} was not deleted within 300s")
        out = kc.create(isvc, namespace=cfg.namespace)
    else:
        isvc.metadata.resource_version = current["metadata"]["resourceVersion"]
        out = kc.replace(cfg.name, isvc, namespace=cfg.namespace)
        log.info("updated InferenceService %s/%s to %s", cfg.namespace, cfg.name, cfg.storage_uri)
    generation = out["metadata"].get("generation")
    try:
        kc.wait_isvc_ready(cfg.name, namespace=cfg.namespace, timeout_seconds=cfg.timeout_s,
                           polling_interval=cfg.poll_s, expected_generation=generation)
    except RuntimeError:
        ready = kube.condition(kc.get(cfg.name, namespace=cfg.namespace), "Ready")
        why = f"{ready.get('reason') or ready.get('status')}: {ready.get('message') or '(no message)'}" \
            if ready else "no Ready condition reported (is KServe installed and a runtime for huggingface there?)"
        raise NotReady(f"InferenceService {cfg.namespace}/{cfg.name} not Ready after {cfg.timeout_s}s: "
                       f"{why}") from None
    status = kc.get(cfg.name, namespace=cfg.namespace)["status"]
    # address.url: the cluster-local Service (Standard: http://<name>-predictor.<ns>.svc.cluster.local); url: the
    # ingress host (http://<name>-<ns>.example.com unless KServe's ingress domain is configured).
    local = (status.get("address") or {}).get("url") or status.get("url", "")
    url = local.rstrip("/") + "/openai/v1"
    log.info("InferenceService %s/%s is Ready: %s in the cluster, %s outside (model %r)", cfg.namespace, cfg.name,
             url, status.get("url") or "no ingress URL", cfg.served_model_name)
    return url


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(DeployConfig, "deploy", argv)
    try:
        print(run(cfg))
    except NotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
