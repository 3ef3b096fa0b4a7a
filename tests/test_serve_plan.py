import json

import pytest
from conftest import ROOT

from loganalyzer.plan import PlanConfig, plan
from loganalyzer.serve import local_server


@pytest.mark.integration
def test_openai_client_streaming_and_not_against_loganalyzer_serve(tiny_env):
    from openai import OpenAI

    model = str(tiny_env["model"])
    with local_server(model) as url:
        client = OpenAI(base_url=url, api_key="x")
        msgs = [{"role": "user", "content": "Summarize this log.\n\nLog content:\n\nA\nB"}]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=6)
        assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens == 6
        chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=6, stream=True))
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(deltas) >= 2


def test_plan_for_the_seed_recipes():
    cpt = plan(PlanConfig(recipe=str(ROOT / "jobs/configs/cpt_full_zero3.yaml"), dataset_tokens=250_000_000,
                          tokens_per_second_per_gpu=3000, price_per_gpu_hour=2.5))
    assert cpt["parameters"] == 8_030_261_248  # Llama-3.1-8B
    assert cpt["zero_stage"] == 3 and cpt["gpus"] == 8
    assert cpt["max_tokens_per_optimizer_step"] == 8 * 2 * 8 * 8192
    # GPUs x hours x price: 250M tokens at 8 x 3000 tokens/s.
    hours = 250_000_000 / (3000 * 8) / 3600
    assert cpt["gpu_hours"] == pytest.approx(8 * hours, rel=1e-3)
    assert cpt["cost_usd"] == pytest.approx(8 * hours * 2.5, rel=1e-3)
    # ZeRO-3 shards 18 B/param over 8 GPUs: ~17 GiB + the largest layer.
    assert 16 < cpt["memory_per_gpu_gib"]["model_states"] < 22
    # activations of 8 x 8192 tokens with checkpointing: 2·s·b·h·32 + 34·s·b·h (~49 GiB), and TRL's chunked LM
    # head: a 0.5 GiB tile, 1 GiB of hidden-state gradient and 3 GiB for the trained head's gradient and gathered
    # weights, not the 31 GiB of full fp32 logits (4·s·b·V): TRL 1.16 sft_trainer.py always patches the model with
    # add_fused_lm_head and turns Liger's fused cross-entropy off (trl/kernels/chunked_logprob.py)
    sbh = 8 * 8192 * 4096
    kept = (2 * sbh * 32 + 34 * sbh) / 2**30
    assert kept + 4 < cpt["memory_per_gpu_gib"]["activations_rough"] < kept + 6
    sft = plan(PlanConfig(recipe=str(ROOT / "jobs/configs/sft_lora.yaml"), gpus_per_node=4, dataset_samples=8971,
                          dataset_tokens=40_000_000))
    assert sft["trainable_parameters"] == 41_943_040  # LoRA r16 on every linear layer of Llama-3.1-8B
    assert sft["optimizer_steps"] == 3 * -(-8971 // 64)


def test_train_plan_cli(capsys):
    from loganalyzer.train import main

    main(["--plan", str(ROOT / "jobs/configs/cpt_full_zero3.yaml"), "dataset_tokens=1000000"])
    assert json.loads(capsys.readouterr().out)["optimizer_steps"] == 1
    main(["--plan", "cpt_full_zero3", "dataset_tokens=1000000"])  # a recipe name, as `train --config` takes
    assert json.loads(capsys.readouterr().out)["recipe"] == "cpt_full_zero3"
