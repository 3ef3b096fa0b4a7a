"""The GPU benchmark's FLOP accounting, and its CPU smoke mode (so the script works when a GPU is lent)."""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = importlib.import_module("bench_gpu_train")


def test_flops_per_token_counts_model_flops_only():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(bench.CONFIG)
    n = 7_504_924_672  # Llama-3.1-8B without its input embedding (8,030,261,248 - 128,256 x 4096)
    # one 8192-token sample, full fine-tuning: 6N + causal attention 6·L·h·ℓ
    assert bench.flops_per_token(config, [8192], lora=False, dense_params=n) == 6 * n + 6 * 32 * 4096 * 8192
    # LoRA: no weight gradients for the frozen base
    assert bench.flops_per_token(config, [8192], lora=True, dense_params=n) == 4 * n + 6 * 32 * 4096 * 8192
    # packed short samples attend within themselves only: the attention term follows their lengths, not the row
    short = bench.flops_per_token(config, [2048] * 4, lora=False, dense_params=n)
    assert short == 6 * n + 6 * 32 * 4096 * 2048
    # the old formula (6·all parameters + 12·L·h·row) overstated a packed row of 2048-token samples by ~30%
    old = 6 * 8_030_261_248 + 12 * 32 * 4096 * 8192
    assert 1.25 < old / short < 1.4


@pytest.mark.integration
def test_cpu_smoke_runs_both_layouts_on_the_same_samples(tmp_path):
    figures = bench.main(["--cpu-smoke", "--out", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text()) == figures
    for mode in ("lora", "full"):
        f = figures[mode]
        assert f["packed"]["real_tokens"] == f["unpacked"]["real_tokens"] > 0
        assert f["packed"]["micro_batches"] < f["unpacked"]["micro_batches"]  # rows hold several samples
        assert f["ratio_packed_to_unpacked"] == round(f["packed"]["tokens_per_s"] / f["unpacked"]["tokens_per_s"], 2)
    assert figures["full"]["flops_per_token"] > figures["lora"]["flops_per_token"]
    # the recipe's own path (TRL's SFTTrainer with the shipped recipes' settings)
    full, lora = figures["full"]["recipe"], figures["lora"]["recipe"]
    assert (full["recipe"], full["packing"], lora["recipe"], lora["sampling"]) == \
        ("cpt_full_zero3", True, "sft_lora", "group_by_length")
    assert full["timed_optimizer_steps"] == lora["timed_optimizer_steps"] == 3 and full["real_tokens"] > 0


@pytest.mark.integration
def test_device_check_cpu_smoke(tmp_path):
    """The lent-GPU command, in its CPU mode: every step passes, the files the device tool returns are written."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(["bash", str(root / "benchmarks" / "device_check.sh"), "--cpu-smoke", "--out",
                             str(tmp_path)], env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {k: v["status"] for k, v in summary["steps"].items()} == {"gpu_tests": "passed", "gpu_train": "passed"}
    assert summary["gpu_train"]["full"]["packed"]["real_tokens"] > 0 and summary["versions"]["trl"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu_tests.log", "gpu_train.json", "gpu_train.log", "summary.json"]  # at most 8 come back
    assert "2 skipped" in (tmp_path / "gpu_tests.log").read_text()  # no CUDA here: the GPU tests skip


def test_device_wheels_carry_what_the_image_lacks_at_our_pins():
    wheels = importlib.import_module("device_wheels")
    carried = wheels.closure(wheels.NEEDED)
    assert {"trl", "datasets", "pydantic", "pydantic-core", "liger-kernel", "transformers"} <= carried
    assert not carried & {"torch", "triton", "numpy", "pyarrow", "pandas", "tokenizers"}  # in the image
    assert carried <= set(wheels.pins())  # every one pinned in constraints.txt


def test_redaction_benchmark_arms_run_on_the_same_corpus():
    """bench_redact's corpus carries a planted secret every 200 lines, and both arms find the same things in it
    (timings are the benchmark's business, not asserted)."""
    from loganalyzer.testing.secrets import planted_secrets

    redact_bench = importlib.import_module("bench_redact")
    lines = redact_bench.corpus()[:600]
    planted = planted_secrets()
    assert [i for i, ln in enumerate(lines) if any(s in ln for _, s, _ in planted)] == [0, 200, 400]
    _, ours = redact_bench.ours(lines)
    _, presidio = redact_bench.presidio_line_by_line(lines, "blank")
    expected = Counter(t for t, _, _ in planted[:3])  # AWS_KEY x2, GCP_API_KEY
    assert {t: ours[t] for t in expected} == {t: presidio[t] for t in expected} == dict(expected)
    assert ours["IP_ADDRESS"] > 0 and presidio["IP_ADDRESS"] >= ours["IP_ADDRESS"]  # line by line keeps kept IPs
