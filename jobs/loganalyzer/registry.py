"""MLflow Model Registry: every model a training run saves becomes a version of a registered model, with its
lineage; ``evaluate`` adds its scores to that version as tags; ``deploy`` serves ``models:/NAME/VERSION`` or
``models:/NAME@ALIAS``.

- ``train ... register_as=NAME`` (the pipeline registers ``loganalyzer-cpt``, ``loganalyzer-sft`` and
  ``loganalyzer-cpt-sft``): after the final save, rank 0 creates version N of NAME with ``source`` =
  ``storage_uri`` (where serving reads the model: ``pvc://<claim>/<path>``, ``s3://…``; default the output dir as
  a ``file://`` URI, which a local store accepts and an MLflow server refuses, so the config check asks for
  ``storage_uri`` when tracking goes to a server), ``run_id`` = the training run, and lineage tags
  (``LINEAGE_TAGS``: base model, data files and their SHA-256, seed, mode, parent run, KFP run, plus
  ``register_tags`` such as the recipe). ``RECORD`` in the model dir names the version.
- ``evaluate`` (in process, tracking on) tags the version of every model dir it scored with ``eval.<metric>``
  (the six metrics, grounding, judge scores), ``eval.n`` and ``eval.test``.
- ``resolve`` turns a ``models:/`` URI into the version's ``source``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("loganalyzer.registry")

RECORD = "loganalyzer_registry.json"
LINEAGE_TAGS = ("base_model", "train_file", "train_file_sha256", "eval_file", "eval_file_sha256", "mode", "seed",
                "output_dir", "parent_run_id", "kfp.run_id")


def is_local_source(uri: str | None) -> bool:
    """A local path (``/…`` or ``file:``): what an MLflow server refuses as a source and KServe cannot read."""
    return not uri or uri.startswith(("file:", "/"))


def needs_remote_source(storage_uri: str | None) -> bool:
    """True when registering would be refused: tracking to an MLflow server and no non-local ``storage_uri``."""
    server = os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://", "databricks"))
    return server and is_local_source(storage_uri)


def _sha256(path: str | None) -> str:
    if not path or not Path(path).is_file():
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def register(name: str, model_dir: str | Path, storage_uri: str | None, run_id: str, lineage: dict[str, str],
             extra_tags: dict[str, str] | None = None) -> dict:
    """Create the next version of registered model ``name`` (created if missing) for ``model_dir``; write
    ``model_dir/RECORD`` and return it (``{name, version, source, run_id}``). ``lineage`` holds the
    ``LINEAGE_TAGS`` values known to the caller (file hashes are added here). Raises MlflowException as MLflow
    does (a refused source, no registry)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.tracking.MlflowClient()
    try:
        client.create_registered_model(name, description="loganalyzer: a model trained by the pipeline")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {k: str(v) for k, v in lineage.items() if v not in (None, "")}
    for key in ("train_file", "eval_file"):
        if digest := _sha256(lineage.get(key)):
            tags[f"{key}_sha256"] = digest
    tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
    source = storage_uri or Path(model_dir).resolve().as_uri()
    version = client.create_model_version(name, source, run_id=run_id or None, tags=tags,
                                          description=f"{lineage.get('mode', '')} of {lineage.get('base_model', '')}")
    record = {"name": name, "version": str(version.version), "source": source, "run_id": run_id}
    (Path(model_dir) / RECORD).write_text(json.dumps(record, indent=2))
    log.info("registered %s version %s (source %s)", name, version.version, source)
    return record


def tag_evaluation(model_dir: str, metrics: dict[str, float | None], extra: dict[str, str]) -> dict | None:
    """Set ``eval.<metric>`` tags (and ``extra``) on the version recorded in ``model_dir/RECORD``; None (nothing
    done) when the dir has no record. Undefined metrics (None) are left out."""
    path = Path(model_dir) / RECORD
    if not path.is_file():
        return None
    import mlflow

    record = json.loads(path.read_text())
    client = mlflow.tracking.MlflowClient()
    tags = {f"eval.{k}": f"{v:.6g}" for k, v in metrics.items() if v is not None} | extra
    for key, value in tags.items():
        client.set_model_version_tag(record["name"], record["version"], key, value)
    return record


def resolve(uri: str) -> str:
    """The ``source`` of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (a ``models:/NAME/latest`` is the
    highest version). Raises ValueError for another form and MlflowException for an unknown name, version or
    alias."""
    import mlflow

    body = uri.removeprefix("models:/")
    client = mlflow.tracking.MlflowClient()
    if "@" in body and "/" not in body:
        name, alias = body.split("@", 1)
        return client.get_model_version_by_alias(name, alias).source
    name, _, version = body.partition("/")
    if not (uri.startswith("models:/") and name and version and "/" not in version):
        raise ValueError(f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    if version == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"registered model {name!r} has no version")
        return max(versions, key=lambda v: int(v.version)).source
    return client.get_model_version(name, version).source
