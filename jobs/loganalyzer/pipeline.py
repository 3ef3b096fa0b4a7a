"""``loganalyzer pipeline``: compile the Kubeflow pipeline, or start a run of it on a KFP endpoint.

    loganalyzer pipeline compile [--out FILE] [--image-registry R] [--tag T]
    loganalyzer pipeline run --host https://kubeflow.example.com/pipeline --namespace NS \\
        --image-registry registry.acme.internal/ml base_model_name=/models/base cpt_nodes=2

``compile`` writes the cluster target of ``pipelines/cpt_finetune.py`` (default: over the committed
``pipelines/cpt-finetune.yaml`` in a checkout, ``./cpt-finetune.yaml`` from an installed wheel) in KFP's
Kubernetes manifest format (``Pipeline`` + ``PipelineVersion``, ``pipelines.kubeflow.org/v2beta1``), which
``kubectl apply -f`` registers with a KFP installation in Kubernetes-native API mode; the version's name carries a
digest of its spec. Without ``--image-registry`` the images name a placeholder registry (the committed file).
``run`` compiles the same target with the registry and starts a run through ``kfp.Client``
(``create_run_from_pipeline_func``); ``param=value`` values are parsed as JSON, else YAML (numbers, lists,
dicts), and checked against the pipeline's parameters.

Where the run executes (kubeflow/pipelines 2.17, ``backend/src/apiserver/resource/resource_manager.go``): in
multi-user KFP, in the experiment's (profile) namespace; in standalone KFP, always in KFP's own namespace
(``POD_NAMESPACE``, usually ``kubeflow``), whatever the request says. The suite (PVCs, ConfigMaps, Secrets, the
``loganalyzer-pipeline`` ServiceAccount, MLflow) must be installed in that namespace, so ``run`` needs
``--namespace`` and, on a standalone KFP (asked through its healthz API), refuses a namespace other than
``--kfp-namespace``. The run's pods use ``--service-account`` (default ``loganalyzer-pipeline``), not KFP's
default ``pipeline-runner`` / ``default-editor``. Authentication: ``--token`` or env ``KF_PIPELINES_TOKEN`` (a
bearer token), else kfp.Client's own (in-cluster ServiceAccount or kube context).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import yaml

from loganalyzer.config import ConfigError
from loganalyzer.resources import CHECKOUT, in_checkout, shipped

log = logging.getLogger("loganalyzer.pipeline")

DEFINITION = shipped("dag") / "cpt_finetune.py"
COMPILED = shipped("dag") / "cpt-finetune.yaml"  # the committed file; from a wheel, its copy inside the package
# compile's default output: the committed file in a checkout, else (an installed wheel) the working directory
DEFAULT_OUT = COMPILED if in_checkout() else Path(COMPILED.name)


def load_definition(registry: str | None = None, tag: str | None = None) -> ModuleType:
    """Import ``pipelines/cpt_finetune.py`` (shipped in the wheel as ``loganalyzer/dag``), its images named with
    ``registry`` and ``tag`` when given (else env ``LOGANALYZER_IMAGE_REGISTRY`` / ``_TAG``)."""
    env = {k: v for k, v in (("LOGANALYZER_IMAGE_REGISTRY", registry), ("LOGANALYZER_IMAGE_TAG", tag))
           if v is not None}
    with _environ(env):  # the definition reads them when its components are declared, at import
        spec = importlib.util.spec_from_file_location("cpt_finetune", DEFINITION)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compile_pipeline(out: Path = DEFAULT_OUT, registry: str | None = None, tag: str | None = None) -> Path:
    return _compile(load_definition(registry, tag), out)


def _compile(definition: ModuleType, out: Path) -> Path:
    version = definition.compile_cluster(str(out))
    if definition.REGISTRY == definition.PLACEHOLDER_REGISTRY:
        log.warning("the images name the placeholder registry %s: to run it, register the pipeline with "
                    "`make deploy IMAGE_REGISTRY=...` (or compile with --image-registry)", definition.REGISTRY)
    log.info("wrote %s, PipelineVersion %s (kubectl apply -n <KFP's namespace> -f %s registers it)", out, version,
             out)
    return out


def _with_registry(registry: str | None, tag: str | None) -> ModuleType:
    """The definition with its images in ``registry``; ConfigError when there is none but the placeholder."""
    definition = load_definition(registry, tag)
    if definition.REGISTRY == definition.PLACEHOLDER_REGISTRY:
        raise ConfigError(f"no image registry ({registry or 'none'} given; the placeholder does not count): pass "
                          "--image-registry (or env LOGANALYZER_IMAGE_REGISTRY), where `make images IMAGE_REGISTRY=...`"
                          " pushed loganalyzer-jobs and loganalyzer-train; without one the nodes would pull them "
                          "from Docker Hub")
    return definition


def parse_arguments(pairs: list[str], pipeline_func) -> dict:
    """``key=value`` pairs as pipeline arguments; unknown keys and malformed pairs raise ConfigError."""
    known = set(inspect.signature(pipeline_func.pipeline_func).parameters)
    args = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"argument {pair!r} is not param=value")
        if key not in known:
            raise ConfigError(f"unknown pipeline parameter {key!r}; parameters: {sorted(known)}")
        args[key] = _value(raw)
    return args


# Pipeline parameters whose values a stage config constrains: checked when the run starts, not hours later when
# the stage that reads them fails.
CHECKED_PARAMETERS = {"serve_deployment_mode": ("loganalyzer.deploy", "DeployConfig", "deployment_mode"),
                      "sft_engine": ("loganalyzer.launch", "LaunchConfig", "engine"),
                      "redact_mode": ("loganalyzer.synthesize", "SynthesizeConfig", "redact"),
                      "replicates": ("loganalyzer.demo", "DemoConfig", "replicates")}


def check_values(args: dict) -> None:
    """Validate the values of ``CHECKED_PARAMETERS`` against their stage config fields (type and constraints,
    such as ``replicates >= 1``) and the judge's endpoint/model pair; raise ConfigError."""
    import importlib
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError

    for key, (module, model, field) in CHECKED_PARAMETERS.items():
        if key in args:
            info = getattr(importlib.import_module(module), model).model_fields[field]
            typ = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            try:
                TypeAdapter(typ).validate_python(args[key])
            except ValidationError as exc:
                raise ConfigError(f"pipeline parameter {key}={args[key]!r}: {exc.errors()[0]['msg']}") from None
    if bool(args.get("judge_endpoint")) != bool(args.get("judge_model")):
        raise ConfigError("pipeline parameters judge_endpoint and judge_model go together: give both, or neither "
                          "for no LLM judge")


def _value(raw: str):
    """JSON first (so 2e-5 is a number), then ``config.parse_value`` (unquoted strings, [a, b] lists; on/off stay
    words)."""
    from loganalyzer.config import parse_value

    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return parse_value(raw)


IMAGES = ("jobs", "train", "chatbot")


def bundle(out: Path, overlay: str, namespace: str, registry: str, tag: str | None = None) -> Path:
    """Write an install bundle to ``out`` for ``make deploy``: ``kustomization.yaml`` (the overlay, moved into
    ``namespace`` with the images from ``registry``) and ``cpt-finetune.yaml`` (the pipeline compiled with them).

    The namespace is KFP's (standalone) or a profile's (multi-user): it exists and is not the suite's to own, so
    the overlay's Namespace object (and its Pod Security labels) is left out. Raises ConfigError for an unknown
    overlay or a missing registry.
    """
    if not in_checkout():
        raise ConfigError("pipeline bundle needs the repository's manifests/overlays: run it in a checkout "
                          "(make deploy)")
    src = CHECKOUT / "manifests" / "overlays" / overlay
    if not (src / "kustomization.yaml").is_file():
        raise ConfigError(f"no overlay {overlay!r} in {src.parent}: "
                          f"{sorted(p.name for p in src.parent.iterdir())}")
    definition = _with_registry(registry, tag)
    out.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [os.path.relpath(src, out)],
        "images": [{"name": name, "newName": f"{definition.REGISTRY}/loganalyzer-{i}", "newTag": definition.TAG}
                   for i in IMAGES for name in _image_names(src, i)],
        "patches": [{"target": {"kind": "Namespace"},
                     "patch": "$patch: delete\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: any\n"}],
    }
    (out / "kustomization.yaml").write_text("# written by `loganalyzer pipeline bundle` (make deploy)\n"
                                            + yaml.safe_dump(kustomization, sort_keys=False))
    _compile(definition, out / "cpt-finetune.yaml")
    return out


def _image_names(overlay: Path, image: str) -> list[str]:
    """The names ``loganalyzer-<image>`` has after ``overlay``: its own, and the ``newName`` the overlay gives it
    (an images transformer matches names, so the bundle must name what the overlay produced)."""
    names = [f"loganalyzer-{image}"]
    for entry in yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("images") or []:
        if entry.get("name") == names[0] and entry.get("newName", names[0]) != names[0]:
            names.append(entry["newName"])
    return names


DEFAULT_SERVICE_ACCOUNT = "loganalyzer-pipeline"


def run(host: str, experiment: str, arguments: list[str], namespace: str, registry: str,
        run_name: str | None = None, service_account: str = DEFAULT_SERVICE_ACCOUNT, kfp_namespace: str = "kubeflow",
        token: str | None = None, tag: str | None = None) -> str:
    """Start a run of the cluster pipeline on ``host`` in ``namespace``; return the run id.

    Raises ConfigError for a missing or placeholder registry, unknown parameters, or a standalone KFP asked to run
    outside its own namespace (``kfp_namespace``).
    """
    import kfp

    pipeline_func = _with_registry(registry, tag).build("cluster")
    args = {"namespace": namespace, **parse_arguments(arguments, pipeline_func)}
    check_values(args)
    client = kfp.Client(host=host, existing_token=token or os.environ.get("KF_PIPELINES_TOKEN"),
                        namespace=namespace)
    multi_user = bool(getattr(client.get_kfp_healthz(sleep_duration=1), "multi_user", False))
    if not multi_user and namespace != kfp_namespace:
        raise ConfigError(
            f"standalone KFP runs every pipeline in its own namespace ({kfp_namespace!r}; resource_manager.go), not "
            f"in {namespace!r}: install the suite there (make deploy NAMESPACE={kfp_namespace}) and pass "
            f"--namespace {kfp_namespace} (make run NAMESPACE={kfp_namespace}), or set --kfp-namespace to where "
            f"KFP runs")
    log.info("%s KFP: the run executes in namespace %s as ServiceAccount %s",
             "multi-user" if multi_user else "standalone", namespace, service_account)
    result = client.create_run_from_pipeline_func(pipeline_func, arguments=args, run_name=run_name,
                                                  experiment_name=experiment,
                                                  namespace=namespace if multi_user else None,
                                                  service_account=service_account)
    log.info("started run %s in experiment %r: %s/#/runs/details/%s", result.run_id, experiment,
             host.rstrip("/"), result.run_id)
    return result.run_id


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(prog="loganalyzer pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help=f"write {DEFAULT_OUT} (Pipeline + PipelineVersion)")
    c.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    for p in (c, sub.add_parser("run", help="start a run on a KFP endpoint through kfp.Client")):
        p.add_argument("--image-registry", default=os.environ.get("LOGANALYZER_IMAGE_REGISTRY"),
                       help="registry of the loganalyzer images (env LOGANALYZER_IMAGE_REGISTRY; compile: "
                            "default a placeholder)")
        p.add_argument("--tag", default=os.environ.get("LOGANALYZER_IMAGE_TAG"), help="image tag (default 0.1.0)")
    b = sub.add_parser("bundle", help="write an install bundle (kustomization + compiled pipeline) for make deploy")
    b.add_argument("--overlay", default="dev", help="manifests/overlays/<name> (default dev)")
    b.add_argument("--namespace", required=True, help="where KFP runs the pipeline (KFP's or a profile's)")
    b.add_argument("--image-registry", default=os.environ.get("LOGANALYZER_IMAGE_REGISTRY"),
                   help="registry of the loganalyzer images")
    b.add_argument("--tag", default=os.environ.get("LOGANALYZER_IMAGE_TAG"), help="image tag (default 0.1.0)")
    b.add_argument("--out", type=Path, default=Path(".build/deploy"), help="bundle directory (default .build/deploy)")
    r = sub.choices["run"]
    r.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    r.add_argument("--namespace", required=True,
                   help="namespace the suite is installed in and the run executes in: the profile namespace "
                        "(multi-user KFP) or KFP's own (standalone)")
    r.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help=f"ServiceAccount of the run's pods (default {DEFAULT_SERVICE_ACCOUNT})")
    r.add_argument("--kfp-namespace", default="kubeflow",
                   help="standalone KFP: the namespace it runs in (default kubeflow)")
    r.add_argument("--experiment", default="loganalyzer", help="experiment name (created when missing)")
    r.add_argument("--run-name", help="run name (default: kfp's)")
    r.add_argument("--token", help="bearer token (default: env KF_PIPELINES_TOKEN)")
    r.add_argument("arguments", nargs="*", metavar="param=value", help="pipeline parameters")
    args = parser.parse_args(argv)
    if args.command == "compile":
        compile_pipeline(args.out, args.image_registry, args.tag)
        return
    if args.command == "bundle":
        print(bundle(args.out, args.overlay, args.namespace, args.image_registry, args.tag))
        return
    try:
        print(run(args.host, args.experiment, args.arguments, args.namespace, args.image_registry,
                  run_name=args.run_name, service_account=args.service_account, kfp_namespace=args.kfp_namespace,
                  token=args.token, tag=args.tag))
    except ConfigError:
        raise
    except Exception as exc:  # the KFP API's errors (unreachable host, 4xx/5xx) end the command, not a traceback
        print(f"error: could not start the run on {args.host}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
