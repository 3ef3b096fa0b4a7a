"""``loganalyzer demo`` (``make demo``): the whole pipeline on one machine, no cluster, GPU or API key.

Runs the DAG of ``pipelines/cpt_finetune.py`` with kfp's local runner (``SubprocessRunner(use_venv=False)``) on
the Loghub samples bundled in ``data/loghub`` (or ``--logs``), with a tiny Llama built locally as the base model
(``--base-model`` takes a model dir or hub id instead), the base model served locally as the teacher unless
``OPENAI_API_KEY`` is set (then gpt-4o-mini), the tiny CPU recipes, and MLflow in ``<out>/mlflow.db``.
Outputs under ``--out`` (default ``runs/demo``): ``chunks.jsonl``, ``synth/``, ``datasets/``,
``models/{base,cpt,sft,cpt_sft}/``, ``eval/report.{json,md}``, ``eval/metrics.png``, ``mlflow.db`` + ``mlartifacts/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from pydantic import Field

from loganalyzer.config import ConfigError, StageConfig, parse_config
from loganalyzer.pipeline import load_definition

log = logging.getLogger("loganalyzer.demo")

REPO = Path(__file__).resolve().parents[2]
DEMO_SYSTEMS = ("HDFS", "OpenSSH", "Linux", "Apache")


def bundled(kind: str) -> list[str]:
    """The bundled Loghub samples: ``log`` files or their ``structured`` CSVs."""
    suffix = "_2k.log" if kind == "log" else "_2k.log_structured.csv"
    return [str(REPO / "data" / "loghub" / s / f"{s}{suffix}") for s in DEMO_SYSTEMS]


class DemoConfig(StageConfig):
    """Run chunk -> synthesize -> build-datasets -> CPT -> SFT x2 -> evaluate locally with kfp's local runner."""

    out: str = Field("runs/demo", description="output directory (replaced)")
    logs: list[str] = Field(default_factory=lambda: bundled("log"), description="raw log files")
    loghub_structured: list[str] = Field(default_factory=lambda: bundled("structured"),
                                         description="Loghub structured CSVs: template Q&A for the CPT corpus")
    base_model: str = Field("tiny", description="tiny (built locally) or a model dir / hub id")
    teacher_base_url: str = Field("", description="teacher endpoint; '' = OpenAI with a key, else local")
    teacher_model: str = "gpt-4o-mini"
    max_chunks_per_file: int = 4
    synth_max_tokens: int = Field(48, description="teacher reply cap (small: the local teacher is a tiny model)")
    val_size: int = 2
    test_size: int = 3
    cpt_recipe: str = "cpt_tiny_cpu"
    sft_recipe: str = "sft_tiny_cpu"
    eval_max_new_tokens: int = 48


def run(cfg: DemoConfig) -> dict:
    from kfp import local

    missing = [p for p in cfg.logs + cfg.loghub_structured if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"input file(s) not found: {missing}")
    out = Path(cfg.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pipeline = load_definition().build("local")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"))
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    teacher = "OpenAI " + cfg.teacher_model if os.environ.get("OPENAI_API_KEY") and not cfg.teacher_base_url \
        else cfg.teacher_base_url or "the base model, served locally"
    log.info("demo: base model %s, teacher %s, %d log files -> %s", cfg.base_model, teacher, len(cfg.logs), out)
    t0 = time.time()
    pipeline(logs=[str(Path(p).resolve()) for p in cfg.logs], run_dir=str(out), base_model_name=cfg.base_model,
             teacher_base_url=cfg.teacher_base_url, teacher_model=cfg.teacher_model,
             max_chunks_per_file=cfg.max_chunks_per_file, synth_max_tokens=cfg.synth_max_tokens,
             loghub_structured=[str(Path(p).resolve()) for p in cfg.loghub_structured],
             val_size=cfg.val_size, test_size=cfg.test_size, cpt_recipe=cfg.cpt_recipe, sft_recipe=cfg.sft_recipe,
             eval_max_new_tokens=cfg.eval_max_new_tokens, tracking_uri=f"sqlite:///{out / 'mlflow.db'}",
             experiment="loganalyzer-demo")
    report = json.loads((out / "eval" / "report.json").read_text())
    log.info("demo finished in %.0f s", time.time() - t0)
    return report


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
    print(f"Outputs in {out}/. MLflow UI: mlflow ui --backend-store-uri sqlite:///{out.resolve()}/mlflow.db")
    if cfg.base_model == "tiny":
        print("Note: the base model is a tiny random-init Llama built offline and the teacher is that same model, "
              "so these scores only show that the pipeline runs end to end; they say nothing about log analysis.",
              file=sys.stderr)


if __name__ == "__main__":
    main()
