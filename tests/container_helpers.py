"""Run a built image as a rendered Kubernetes pod spec runs it, with podman and no cluster.

``podman_run_args(pod, ...)`` turns one container of a pod spec (a Job's or a Deployment's, as kustomize renders
it) into ``podman run`` arguments that keep what the kubelet would enforce: the user and group, a read-only root
filesystem with no writable path but the pod's volumes, every capability dropped, no privilege escalation, the
env (``$(VAR)`` expanded as Kubernetes does, ConfigMap and Secret references resolved from given data) and the
command and args. Volumes: a PersistentVolumeClaim is a host folder, an emptyDir a tmpfs, a projected or
configMap volume a folder of the rendered ConfigMaps' files. Host networking stands for the pod network, so a
container reaches loopback servers of the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
# What this machine's kernel allows: crun cannot set rlimits here, cgroups are in hybrid mode.
ENGINE_ARGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
_VAR = re.compile(r"\$\((\w+)\)")


def image_exists(ref: str) -> bool:
    return shutil.which(ENGINE) is not None and subprocess.run(
        [ENGINE, "image", "exists", ref], capture_output=True).returncode == 0


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable is replaced, an undefined one stays as written."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def config_maps(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def _resolve_env(container: dict, data: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment: ``envFrom`` first, then ``env`` in order (later entries see earlier ones)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        if ref["name"] in data:
            env.update(data[ref["name"]])
        elif not ref.get("optional"):
            raise KeyError(f"envFrom {ref['name']} is required and not given")
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        ref = item["valueFrom"].get("configMapKeyRef") or item["valueFrom"].get("secretKeyRef")
        if ref["key"] in data.get(ref["name"], {}):
            env[item["name"]] = data[ref["name"]][ref["key"]]
        elif not ref.get("optional"):
            raise KeyError(f"env {item['name']}: {ref['name']}/{ref['key']} is required and not given")
    return env


def _write_projection(volume: dict, data: dict[str, dict[str, str]], into: Path) -> None:
    sources = volume["projected"]["sources"] if "projected" in volume else [{"configMap": volume["configMap"]}]
    into.mkdir(parents=True, exist_ok=True)
    for source in sources:
        cm = source["configMap"]
        items = cm.get("items") or [{"key": k, "path": k} for k in data[cm["name"]]]
        for item in items:
            path = into / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[cm["name"]][item["key"]])


def podman_run_args(pod: dict, image: str, *, claims: dict[str, Path], data: dict[str, dict[str, str]],
                    scratch: Path, container: str | None = None, env: dict[str, str] | None = None,
                    command: list[str] | None = None, args: list[str] | None = None,
                    detach_as: str | None = None) -> list[str]:
    """``podman run`` arguments for one container of ``pod`` (default: the first) in ``image``.

    ``claims`` maps PVC names to host folders; ``data`` holds ConfigMap and Secret data by name (what the
    cluster would have: the rendered ConfigMaps, plus the test's own values); ``scratch`` is where projected
    volumes are written. ``env`` overrides single variables as an overlay patch would; ``command``/``args``
    replace the container's (``None`` keeps the manifest's); ``detach_as`` runs it in the background under that
    name (stop it with ``podman stop``). Raises KeyError for a required reference that
    ``data`` lacks, ValueError for a volume kind this helper does not know.
    """
    spec = next(c for c in pod["containers"] if container in (None, c["name"]))
    pod_ctx, ctx = pod.get("securityContext", {}), spec.get("securityContext", {})
    user, group = ctx.get("runAsUser", pod_ctx.get("runAsUser")), ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    out = [ENGINE, "run", "--rm", "--network", "host", *ENGINE_ARGS]
    if detach_as:
        out += ["--detach", "--name", detach_as]
    if user is not None:
        out += ["--user", f"{user}:{group if group is not None else user}"]
    if pod_ctx.get("fsGroup") is not None:
        out += ["--group-add", str(pod_ctx["fsGroup"])]
    if ctx.get("readOnlyRootFilesystem"):
        out += ["--read-only", "--read-only-tmpfs=false"]  # podman's default adds writable /tmp, /run: a pod has none
    for cap in ctx.get("capabilities", {}).get("drop", []):
        out += ["--cap-drop", cap]
    if ctx.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    resolved = {**_resolve_env(spec, data), **(env or {})}
    for key, value in resolved.items():
        out += ["--env", f"{key}={value}"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in spec.get("volumeMounts", []):
        volume, ro = volumes[mount["name"]], ",ro" if mount.get("readOnly") else ""
        if "persistentVolumeClaim" in volume:
            out += ["--volume", f"{claims[volume['persistentVolumeClaim']['claimName']]}:{mount['mountPath']}{ro}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            out += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777" + (f",size={size}" if size else "")]
        elif "projected" in volume or "configMap" in volume:
            folder = scratch / mount["name"]
            _write_projection(volume, data, folder)
            out += ["--volume", f"{folder}:{mount['mountPath']}:ro"]
        else:
            raise ValueError(f"volume {mount['name']}: kind {sorted(volume)} not supported here")
    cmd = command if command is not None else spec.get("command")
    if cmd is not None:
        out += ["--entrypoint", json.dumps([expand(c, resolved) for c in cmd])]
    out.append(image)
    out += [expand(a, resolved) for a in (args if args is not None else spec.get("args", []))]
    return out


def shared_folder(path: Path, uid: int) -> Path:
    """A host folder a PVC stands for, owned by the pod's user as fsGroup would make it (root: chown; else 0777)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for p in (path, *path.rglob("*")):
            os.chown(p, uid, uid)
    else:
        path.chmod(0o777)
    return path
