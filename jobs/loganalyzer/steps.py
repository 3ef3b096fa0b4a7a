"""The pipeline's steps: what each KFP component of ``pipelines/cpt_finetune.py`` does, as plain functions.

Components are two-line wrappers around these, so the logic is tested without KFP and runs the same under the
local runner (``make demo``) and in the cluster. Every step takes the MLflow settings and the parent run id,
and exports them for the stage it runs (see ``loganalyzer.tracking``). Paths are on a filesystem shared by the
steps: ``run_dir`` locally, a PVC mount in the cluster.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("loganalyzer.steps")

TINY = "tiny"


def use_tracking(tracking_uri: str, experiment: str, parent_run_id: str) -> None:
    """Export the MLflow settings for the stage run in this process ('' leaves a setting unset)."""
    from loganalyzer.logs import setup_logging
    from loganalyzer.tracking import PARENT_ENV

    setup_logging()
    for key, value in (("MLFLOW_TRACKING_URI", tracking_uri), ("MLFLOW_EXPERIMENT_NAME", experiment),
                       (PARENT_ENV, parent_run_id)):
        if value:
            os.environ[key] = value


def start(run_name: str, params: dict, tracking_uri: str, experiment: str) -> str:
    """Open the pipeline's parent MLflow run; return its id ('' without tracking)."""
    from loganalyzer.tracking import start_parent

    use_tracking(tracking_uri, experiment, "")
    kfp_run = os.environ.get("KFP_RUN_ID", "")
    return start_parent(run_name, params, tags={"kfp.run_id": kfp_run} if kfp_run else None)


def finish(parent_run_id: str, tracking_uri: str, experiment: str, report_file: str) -> None:
    """Attach the evaluation report to the parent run and mark it finished."""
    import mlflow

    from loganalyzer.tracking import enabled, end_parent, numeric

    use_tracking(tracking_uri, experiment, "")
    if enabled() and parent_run_id:
        report = json.loads(Path(report_file).read_text())
        client = mlflow.tracking.MlflowClient()
        for name, value in numeric({m: {k: v for k, v in r.items() if k != "per_task"}
                                    for m, r in report.items()}).items():
            client.log_metric(parent_run_id, name, value)
        client.log_artifact(parent_run_id, report_file)
    end_parent(parent_run_id)


def chunk(logs: list[str], run_dir: str, max_chunks_per_file: int, seed: int) -> str:
    from loganalyzer.chunk import ChunkConfig, run

    out = Path(run_dir) / "chunks.jsonl"
    run(ChunkConfig(logs=logs, out=str(out), max_chunks_per_file=max_chunks_per_file or None, seed=seed))
    return str(out)


def base_model(base_model: str, run_dir: str, chunks: str) -> str:
    """``tiny``: build the tiny local Llama (tokenizer trained on the chunks); else the model dir or hub id as is."""
    if base_model != TINY:
        return base_model
    from loganalyzer.tiny_model import TinyModelConfig, build

    log.info("base model: building a tiny random-init Llama locally (no hub); its scores mean nothing")
    return str(build(TinyModelConfig(out=str(Path(run_dir) / "models" / "base"), corpus=[chunks])))


def synthesize(chunks: str, run_dir: str, teacher_base_url: str, teacher_model: str, local_teacher: str,
               tasks: list[str], concurrency: int, max_tokens: int, limit: int) -> str:
    """Run the teacher. With no ``OPENAI_API_KEY`` and no ``teacher_base_url``, ``local_teacher`` (a model dir)
    is served on loopback with ``loganalyzer serve`` and used as the teacher."""
    from loganalyzer.serve import local_server
    from loganalyzer.synthesize import DEFAULT_BASE_URL, SynthesizeConfig, run

    out = Path(run_dir) / "synth"
    kwargs = dict(chunks=chunks, out=str(out), tasks=tasks, concurrency=concurrency, max_tokens=max_tokens,
                  limit=limit or None)
    if teacher_base_url or os.environ.get("OPENAI_API_KEY"):
        run(SynthesizeConfig(base_url=teacher_base_url or DEFAULT_BASE_URL, model=teacher_model, **kwargs))
        return str(out)
    log.info("no OPENAI_API_KEY and no teacher URL: the teacher is %s served locally", local_teacher)
    with local_server(local_teacher, log_file=Path(run_dir) / "teacher-server.log") as url:
        run(SynthesizeConfig(base_url=url, model=local_teacher, **kwargs))
    return str(out)


def build_datasets(chunks: str, synth: str, run_dir: str, tokenizer: str, nlplog: list[str],
                   loghub_structured: list[str], val_size: int, test_size: int, max_seq_length: int) -> str:
    from loganalyzer.build_datasets import BuildDatasetsConfig, run

    out = Path(run_dir) / "datasets"
    run(BuildDatasetsConfig(chunks=chunks, synth=[synth], out=str(out), tokenizer=tokenizer, nlplog=nlplog,
                            loghub_structured=loghub_structured, val_size=val_size, test_size=test_size,
                            max_seq_length=max_seq_length))
    return str(out)


def train(recipe: str, model: str, train_file: str, eval_file: str, output_dir: str, overrides: dict) -> str:
    """Run a recipe in this process with the step's paths (and ``overrides``) set; return the model dir."""
    from loganalyzer.config import config_file, load_yaml
    from loganalyzer.train import TrainConfig, run

    values = {**load_yaml(config_file(recipe)), **overrides, "model_name_or_path": model,
              "train_file": train_file, "output_dir": output_dir}
    if eval_file:
        values["eval_file"] = eval_file
    else:
        values.pop("eval_file", None)
    run(TrainConfig(**values))
    return output_dir


def evaluate(test: str, models: dict[str, str], run_dir: str, max_new_tokens: int, limit: int) -> dict:
    from loganalyzer.evaluate import EvaluateConfig, run

    return run(EvaluateConfig(test=test, models=[f"{k}={v}" for k, v in models.items()],
                              out=str(Path(run_dir) / "eval"), max_new_tokens=max_new_tokens,
                              limit=limit or None))

