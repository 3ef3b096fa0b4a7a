"""The GPU benchmark's FLOP accounting, and its CPU smoke mode (so the script works when a GPU is lent)."""

from __future__ import annotations

import importlib
import json
import sys
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
