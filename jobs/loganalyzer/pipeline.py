"""``loganalyzer pipeline``: compile the Kubeflow pipeline, or start a run of it on a KFP endpoint.

    loganalyzer pipeline compile [--out pipelines/cpt-finetune.yaml]
    loganalyzer pipeline run --host https://kubeflow.example.com/pipeline --experiment loganalyzer \\
        base_model_name=/models/base cpt_nodes=2 cpt_nproc_per_node=4

``compile`` writes the cluster target of ``pipelines/cpt_finetune.py`` in KFP's Kubernetes manifest format
(``Pipeline`` + ``PipelineVersion``, ``pipelines.kubeflow.org/v2beta1``), which ``kubectl apply -f`` registers
with a KFP installation in Kubernetes-native API mode. ``run`` compiles the same target and starts a run through
``kfp.Client`` (``create_run_from_pipeline_func``); ``param=value`` values are parsed as JSON, else YAML
(numbers, lists, dicts), and checked against the pipeline's parameters. Authentication: ``--token`` or env
``KF_PIPELINES_TOKEN`` (a bearer token), else kfp.Client's own (in-cluster ServiceAccount or kube context).
"""

from __future__ import annotations

import argparse
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

log = logging.getLogger("loganalyzer.pipeline")

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "pipelines" / "cpt_finetune.py"
COMPILED = REPO / "pipelines" / "cpt-finetune.yaml"


def load_definition() -> ModuleType:
    """Import ``pipelines/cpt_finetune.py`` (it lives beside the package in a clone, not inside it)."""
    if not DEFINITION.is_file():
        raise ConfigError(f"{DEFINITION} not found: run this from a clone of the repository")
    spec = importlib.util.spec_from_file_location("cpt_finetune", DEFINITION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_pipeline(out: Path = COMPILED) -> Path:
    load_definition().compile_cluster(str(out))
    log.info("wrote %s (kubectl apply -f %s registers it)", out, out)
    return out


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


def _value(raw: str):
    """JSON first (so 2e-5 is a number), then YAML (unquoted strings, [a, b] lists), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return yaml.safe_load(raw) if raw else ""


def run(host: str, experiment: str, arguments: list[str], run_name: str | None = None,
        namespace: str | None = None, service_account: str | None = None, token: str | None = None) -> str:
    """Start a run of the cluster pipeline on ``host``; return the run id."""
    import kfp

    pipeline_func = load_definition().build("cluster")
    args = parse_arguments(arguments, pipeline_func)
    client = kfp.Client(host=host, existing_token=token or os.environ.get("KF_PIPELINES_TOKEN"),
                        namespace=namespace or "kubeflow")
    result = client.create_run_from_pipeline_func(pipeline_func, arguments=args, run_name=run_name,
                                                  experiment_name=experiment, namespace=namespace,
                                                  service_account=service_account)
    log.info("started run %s in experiment %r: %s/#/runs/details/%s", result.run_id, experiment,
             host.rstrip("/"), result.run_id)
    return result.run_id


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(prog="loganalyzer pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write pipelines/cpt-finetune.yaml (Pipeline + PipelineVersion)")
    c.add_argument("--out", type=Path, default=COMPILED, help=f"output file (default {COMPILED})")
    r = sub.add_parser("run", help="start a run on a KFP endpoint through kfp.Client")
    r.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    r.add_argument("--experiment", default="loganalyzer", help="experiment name (created when missing)")
    r.add_argument("--run-name", help="run name (default: kfp's)")
    r.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    r.add_argument("--service-account", help="ServiceAccount the run's pods use (e.g. loganalyzer-pipeline)")
    r.add_argument("--token", help="bearer token (default: env KF_PIPELINES_TOKEN)")
    r.add_argument("arguments", nargs="*", metavar="param=value", help="pipeline parameters")
    args = parser.parse_args(argv)
    if args.command == "compile":
        compile_pipeline(args.out)
        return
    try:
        print(run(args.host, args.experiment, args.arguments, args.run_name, args.namespace, args.service_account,
                  args.token))
    except Exception as exc:  # the KFP API's errors (unreachable host, 4xx/5xx) end the command, not a traceback
        print(f"error: could not start the run on {args.host}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
