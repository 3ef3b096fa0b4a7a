"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Tracking is on when ``MLFLOW_TRACKING_URI`` is set (a server URL, ``sqlite:///…`` or a directory; the demo sets a
local store under its output dir). The experiment is ``MLFLOW_EXPERIMENT_NAME`` (default ``loganalyzer``). A
stage started with ``LOGANALYZER_PARENT_RUN_ID`` set becomes a nested run of that parent; the pipeline passes
the parent's id to every stage. Only the rank-0 process of a distributed job logs. With tracking off, every
call is a no-op, so stages run the same without MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("loganalyzer.tracking")

PARENT_ENV = "LOGANALYZER_PARENT_RUN_ID"
KFP_RUN_TAG = "kfp.run_id"


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) and int(os.environ.get("RANK", "0")) == 0


def _experiment() -> None:
    """Select the experiment; a new one on a local ``sqlite:///DIR/x.db`` store keeps artifacts in
    ``DIR/mlartifacts`` (not ``./mlruns`` in whatever the working directory is)."""
    import mlflow

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "loganalyzer")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
        mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(name)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists as dotted keys with string values (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = (json.dumps(v) if isinstance(v, (list, tuple)) else str(v))[:6000]
    return out


class Tracker:
    """Thin facade over the active MLflow run; every method is a no-op when tracking is off."""

    def __init__(self, active: bool):
        self.active = active

    @property
    def run_id(self) -> str | None:
        if not self.active:
            return None
        import mlflow

        return mlflow.active_run().info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if self.active:
            import mlflow

            mlflow.log_params(flatten(params))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            import mlflow

            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path)
            else:
                mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            import mlflow

            mlflow.set_tags(tags)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any] | None = None, system_metrics: bool = False) -> Iterator[Tracker]:
    """A nested run named ``stage`` under ``$LOGANALYZER_PARENT_RUN_ID`` (or a top-level run without it).

    ``system_metrics``: MLflow samples CPU, memory, disk, network and (with ``nvidia-ml-py``, in the train image)
    GPU utilisation and memory into the run as ``system/*`` metrics while it is open, every
    ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (MLflow's default 10)."""
    if not enabled():
        yield Tracker(False)
        return
    import mlflow

    _experiment()
    parent = os.environ.get(PARENT_ENV)
    # A stage run carries its pipeline run's KFP run id (a tag of the parent), so either finds the other.
    inherited = {k: v for k, v in mlflow.get_run(parent).data.tags.items() if k == KFP_RUN_TAG} if parent else {}
    with mlflow.start_run(run_name=stage, parent_run_id=parent or None, nested=bool(parent),
                          log_system_metrics=system_metrics):
        tracker = Tracker(True)
        tracker.set_tags({"loganalyzer.stage": stage, **inherited})
        if params:
            tracker.log_params({"cfg": params})  # prefixed: the HF callback logs TrainingArguments too
        yield tracker


def start_parent(run_name: str, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> str:
    """Create the pipeline's parent run (left open for the stages) and return its id ('' when tracking is off)."""
    if not enabled():
        return ""
    import mlflow

    _experiment()
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"loganalyzer.stage": "pipeline", **(tags or {})})
        if params:
            mlflow.log_params(flatten(params))
    # Closing the context marked it FINISHED; mark it RUNNING until end_parent.
    mlflow.tracking.MlflowClient().update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def end_parent(run_id: str, status: str = "FINISHED") -> None:
    if enabled() and run_id:
        import mlflow

        mlflow.tracking.MlflowClient().set_terminated(run_id, status=status)


def numeric(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested summary dict, as dotted metric names."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(numeric(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def log_stage(stage: str, params: dict[str, Any], summary: dict[str, Any],
              artifacts: list[str | Path] = ()) -> None:
    """Record a finished quick stage as one nested run: params, the summary's numbers, artifacts."""
    with stage_run(stage, params) as tracker:
        tracker.log_metrics({k.replace(":", "_"): v for k, v in numeric(summary).items()})
        for a in artifacts:
            tracker.log_artifact(a)
