"""The loganalyzer DAG, written once with the KFP v2 DSL.

    chunk -> base-model -> synthesize -> build-datasets -> cpt -> sft(cpt) ┐
                                                       └──> sft(base) ────┴-> evaluate -> finish

``make demo`` runs this definition with kfp's local runner (``SubprocessRunner(use_venv=False)``) through
``loganalyzer demo``; the Kubernetes work compiles the same DAG for a cluster. Each component is a thin wrapper
around ``loganalyzer.steps``; paths live on a filesystem shared by the steps (``run_dir``). MLflow: ``start``
opens one parent run, every stage logs a nested run under it, ``finish`` attaches the report and closes it.
"""

# No `from __future__ import annotations`: KFP reads the real type annotations of components.

import os

from kfp import dsl
from kfp.dsl import Metrics, Output

# The image holding the loganalyzer package (built by `make images`); the local runner ignores it.
JOBS_IMAGE = os.environ.get("LOGANALYZER_JOBS_IMAGE", "loganalyzer-jobs-python:0.1.0")


@dsl.component(base_image=JOBS_IMAGE)
def start(run_name: str, params: dict, tracking_uri: str, experiment: str) -> str:
    from loganalyzer import steps

    return steps.start(run_name, params, tracking_uri, experiment)


@dsl.component(base_image=JOBS_IMAGE)
def chunk(logs: list, run_dir: str, max_chunks_per_file: int, seed: int, tracking_uri: str, experiment: str,
          parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri, experiment, parent_run_id)
    return steps.chunk(logs, run_dir, max_chunks_per_file, seed)


@dsl.component(base_image=JOBS_IMAGE)
def base_model(base_model: str, run_dir: str, chunks: str) -> str:
    from loganalyzer import steps

    steps.use_tracking("", "", "")
    return steps.base_model(base_model, run_dir, chunks)


@dsl.component(base_image=JOBS_IMAGE)
def synthesize(chunks: str, run_dir: str, teacher_base_url: str, teacher_model: str, local_teacher: str,
               tasks: list, concurrency: int, max_tokens: int, limit: int, tracking_uri: str, experiment: str,
               parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri, experiment, parent_run_id)
    return steps.synthesize(chunks, run_dir, teacher_base_url, teacher_model, local_teacher, tasks, concurrency,
                            max_tokens, limit)


@dsl.component(base_image=JOBS_IMAGE)
def build_datasets(chunks: str, synth: str, run_dir: str, tokenizer: str, nlplog: list, loghub_structured: list,
                   val_size: int, test_size: int, max_seq_length: int, tracking_uri: str, experiment: str,
                   parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri, experiment, parent_run_id)
    return steps.build_datasets(chunks, synth, run_dir, tokenizer, nlplog, loghub_structured, val_size, test_size,
                                max_seq_length)


@dsl.component(base_image=JOBS_IMAGE)
def train(recipe: str, model: str, train_file: str, eval_file: str, output_dir: str, overrides: dict,
          tracking_uri: str, experiment: str, parent_run_id: str) -> str:
    from loganalyzer import steps

    steps.use_tracking(tracking_uri, experiment, parent_run_id)
    return steps.train(recipe, model, train_file, eval_file, output_dir, overrides)


@dsl.component(base_image=JOBS_IMAGE)
def evaluate(test: str, base: str, sft: str, cpt_sft: str, run_dir: str, max_new_tokens: int, limit: int,
             tracking_uri: str, experiment: str, parent_run_id: str, metrics: Output[Metrics]) -> str:
    from loganalyzer import steps
    from loganalyzer.metrics import METRICS

    steps.use_tracking(tracking_uri, experiment, parent_run_id)
    report = steps.evaluate(test, {"base": base, "sft": sft, "cpt_sft": cpt_sft}, run_dir, max_new_tokens, limit)
    for name in ("base", "sft", "cpt_sft"):  # KFP run comparison shows these side by side
        for m in METRICS:
            metrics.log_metric(f"{name}_{m}", round(report[name][m], 4))
    return f"{run_dir}/eval/report.json"


@dsl.component(base_image=JOBS_IMAGE)
def finish(parent_run_id: str, tracking_uri: str, experiment: str, report_file: str):
    from loganalyzer import steps

    steps.finish(parent_run_id, tracking_uri, experiment, report_file)


@dsl.pipeline(name="loganalyzer-cpt-finetune",
              description="Chunk Loghub logs, synthesize data with a teacher LLM, CPT + LoRA SFT, evaluate.")
def cpt_finetune(
    logs: list,
    run_dir: str,
    base_model_name: str = "meta-llama/Llama-3.1-8B-Instruct",
    teacher_base_url: str = "",
    teacher_model: str = "gpt-4o-mini",
    tasks: list = ["summarize", "root_cause", "find_patterns", "compare_halves", "conversation", "nlplog_qa"],
    max_chunks_per_file: int = 300,
    synth_limit: int = 0,
    synth_concurrency: int = 16,
    synth_max_tokens: int = 1024,
    nlplog: list = [],
    loghub_structured: list = [],
    val_size: int = 100,
    test_size: int = 100,
    max_seq_length: int = 8192,
    cpt_recipe: str = "cpt_full_zero3",
    sft_recipe: str = "sft_lora",
    cpt_overrides: dict = {},
    sft_overrides: dict = {},
    eval_max_new_tokens: int = 512,
    eval_limit: int = 0,
    seed: int = 1309,
    tracking_uri: str = "",
    experiment: str = "loganalyzer",
):
    track = dict(tracking_uri=tracking_uri, experiment=experiment)
    parent = start(run_name="cpt-finetune", params={"base_model": base_model_name, "teacher": teacher_model,
                                                    "cpt_recipe": cpt_recipe, "sft_recipe": sft_recipe},
                   **track).set_display_name("mlflow-start")
    pid = parent.output
    chunks = chunk(logs=logs, run_dir=run_dir, max_chunks_per_file=max_chunks_per_file, seed=seed,
                   parent_run_id=pid, **track)
    base = base_model(base_model=base_model_name, run_dir=run_dir, chunks=chunks.output)
    synth = synthesize(chunks=chunks.output, run_dir=run_dir, teacher_base_url=teacher_base_url,
                       teacher_model=teacher_model, local_teacher=base.output, tasks=tasks,
                       concurrency=synth_concurrency, max_tokens=synth_max_tokens, limit=synth_limit,
                       parent_run_id=pid, **track)
    data = build_datasets(chunks=chunks.output, synth=synth.output, run_dir=run_dir, tokenizer=base.output,
                          nlplog=nlplog, loghub_structured=loghub_structured, val_size=val_size,
                          test_size=test_size, max_seq_length=max_seq_length, parent_run_id=pid, **track)
    cpt = train(recipe=cpt_recipe, model=base.output, train_file=f"{data.output}/cpt_train.jsonl", eval_file="",
                output_dir=f"{run_dir}/models/cpt", overrides=cpt_overrides, parent_run_id=pid,
                **track).set_display_name("cpt")
    sft_args = dict(recipe=sft_recipe, train_file=f"{data.output}/sft_train.jsonl",
                    eval_file=f"{data.output}/sft_val.jsonl", overrides=sft_overrides, parent_run_id=pid, **track)
    cpt_sft = train(model=cpt.output, output_dir=f"{run_dir}/models/cpt_sft", **sft_args).set_display_name("sft-cpt")
    sft = train(model=base.output, output_dir=f"{run_dir}/models/sft", **sft_args).set_display_name("sft-base")
    report = evaluate(test=f"{data.output}/sft_test.jsonl", base=base.output, sft=sft.output,
                      cpt_sft=cpt_sft.output, run_dir=run_dir, max_new_tokens=eval_max_new_tokens,
                      limit=eval_limit, parent_run_id=pid, **track)
    finish(parent_run_id=pid, report_file=report.outputs["Output"], **track)
