"""``loganalyzer train --plan RECIPE``: what a real run of a recipe needs, computed without a GPU.

- Parameters: the model's config instantiated on the ``meta`` device (no weights; the real Llama-3.1-8B config
  ships in ``jobs/configs/models``), and LoRA's trainable parameters for ``all-linear``.
- Memory per GPU, model states: DeepSpeed's own estimators (``estimate_zero3_model_states_mem_needs`` /
  ``estimate_zero2_model_states_mem_needs``) for the recipe's ZeRO stage and GPU count; without DeepSpeed,
  16 bytes/parameter for a full fine-tune (bf16 weights + grads, fp32 Adam) or bf16 weights + LoRA states.
- Activations per GPU (rough): Korthikanti et al. 2022, ``34·s·b·h`` bytes per layer with flash attention; with
  gradient checkpointing ``2·s·b·h`` per layer kept plus one layer recomputed; plus the LM head: TRL 1.16's
  SFTTrainer always computes the loss with its chunked LM head (``add_fused_lm_head``; the full ``s·b·V`` logits
  never exist, with or without Liger, whose fused cross-entropy TRL turns off): one fp32 tile of
  ``TOKEN_CHUNK_SIZE × chunk`` (4096 tokens × 32768 vocabulary entries, ``trl/kernels/chunked_logprob.py``; bf16
  under autocast, counted as fp32 to stay on the safe side), seven fp32 accumulators per token, the fp32 gradient
  of the hidden states ``4·s·b·h`` in backward, and for a full fine-tune the fp32 gradient of the head ``4·V·h``
  plus its bf16 weights gathered under ZeRO-3 ``2·V·h``.
- Tokens per optimizer step, steps for the dataset, training FLOPs (``6·N + 12·L·h·s`` per token for a full
  fine-tune, ``4·N + 12·L·h·s`` with LoRA), and for a given tokens/s per GPU and $/GPU-hour: wall time,
  GPU-hours (= GPUs × hours) and cost (= GPU-hours × price), and the MFU that throughput implies.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

from pydantic import Field

from loganalyzer.config import ConfigError, StageConfig, config_file, load_yaml, parse_config

KNOWN_CONFIGS = {"meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct.json",
                 "meta-llama/Llama-3.1-8B": "llama-3.1-8b-instruct.json"}
GiB = 2**30


class PlanConfig(StageConfig):
    """Size a training recipe: parameters, memory per GPU, tokens/steps, GPU-hours and cost."""

    recipe: str = Field(description="training recipe: a YAML file or a recipe name (cpt_full_zero3)")
    gpus_per_node: int = Field(8, ge=1)
    num_nodes: int = Field(1, ge=1)
    model_config_path: str | None = Field(None, description="config.json (default: from the recipe's model)")
    dataset_tokens: int | None = Field(None, ge=1, description="tokens in the training file (else counted)")
    dataset_samples: int | None = Field(None, ge=1, description="samples in the training file (else counted)")
    tokens_per_second_per_gpu: float | None = Field(None, gt=0, description="measured training throughput")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour")
    peak_tflops_per_gpu: float = Field(989.0, gt=0, description="dense bf16 peak (H100/H200 SXM: 989)")


def model_config_file(model: str, override: str | None) -> Path:
    """config.json for a recipe's model: an override, the packaged copy of a known model, or ``model/config.json``."""
    if override:
        p = Path(override)
    elif model in KNOWN_CONFIGS:
        p = config_file(KNOWN_CONFIGS[model], "models")
    else:
        p = Path(model) / "config.json"
    if not p.is_file():
        raise ConfigError(f"model config not found for {model!r} (looked at {p}); pass model_config_path=...")
    return p


def count_parameters(config_file: Path, lora_r: int | None) -> dict:
    """Total, largest-module and LoRA (all linear layers but the LM head) parameter counts, on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_file)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    lora = 0
    if lora_r:
        head = model.get_output_embeddings()
        lora = sum(lora_r * (m.in_features + m.out_features) for m in model.modules()
                   if isinstance(m, torch.nn.Linear) and m is not head)
    return {"config": config, "total": total, "largest_layer": largest, "lora": lora}


def zero_stage(recipe: dict) -> int:
    if not recipe.get("deepspeed"):
        return 0
    from loganalyzer.train import deepspeed_config_path

    return int(json.loads(Path(deepspeed_config_path(recipe["deepspeed"])).read_text())
               .get("zero_optimization", {}).get("stage", 0))


def model_state_bytes(stage: int, params: dict, lora: bool, gpus_per_node: int, num_nodes: int) -> tuple[int, int, str]:
    """(GPU bytes, CPU bytes, method) of model states per GPU."""
    n = params["total"]
    if lora:  # frozen bf16 base + fp32 master/Adam (16 B) for the adapter
        return 2 * n + 16 * params["lora"], 0, "bf16 base weights + 16 B/param for LoRA"
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(n, params["largest_layer"], gpus_per_node, num_nodes,
                                                            cpu_offload=False, cpu_offload_params=False)
        return gpu, cpu, "DeepSpeed estimate_zero3_model_states_mem_needs (no offload)"
    if stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        gpu, cpu = estimate_zero2_model_states_mem_needs(n, gpus_per_node, num_nodes, cpu_offload=False)
        return gpu, cpu, "DeepSpeed estimate_zero2_model_states_mem_needs (no offload)"
    return 16 * n, 0, "16 B/param (bf16 weights + grads, fp32 Adam states), no sharding"


def lm_head_bytes(tokens: int, vocab: int, hidden: int, head_trainable: bool) -> int:
    """Peak bytes of TRL's chunked LM head for ``tokens`` positions: one projection tile, the per-token fp32
    accumulators (running max, sums, target logit, ...), the fp32 gradient of the hidden states, and, when the head
    is trained, its fp32 gradient and gathered bf16 weights."""
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as VOCAB_CHUNK

    tile = 4 * min(tokens, TOKEN_CHUNK_SIZE) * min(vocab, VOCAB_CHUNK)
    head = (4 + 2) * vocab * hidden if head_trainable else 0
    return tile + 7 * 4 * tokens + 4 * tokens * hidden + head


def activation_bytes(config, micro_batch: int, seq: int, checkpointing: bool, head_trainable: bool) -> int:
    sbh = seq * micro_batch * config.hidden_size
    layers = config.num_hidden_layers
    act = (2 * sbh * layers + 34 * sbh) if checkpointing else 34 * sbh * layers
    return act + lm_head_bytes(seq * micro_batch, config.vocab_size, config.hidden_size, head_trainable)


def dataset_size(recipe: dict, cfg: PlanConfig) -> tuple[int | None, int | None]:
    """(tokens, samples) from the flags, else counted in the recipe's train_file with the model's tokenizer."""
    if cfg.dataset_tokens or cfg.dataset_samples:
        return cfg.dataset_tokens, cfg.dataset_samples
    path = Path(recipe.get("train_file", ""))
    if not path.is_file():
        return None, None
    from transformers import AutoTokenizer

    from loganalyzer.build_datasets import token_lengths
    from loganalyzer.io import read_jsonl

    rows = list(read_jsonl(path))
    tokenizer = AutoTokenizer.from_pretrained(recipe["model_name_or_path"])
    lengths = token_lengths(tokenizer, rows, chat=recipe["mode"] == "sft")
    return int(lengths.sum()), len(rows)


def plan(cfg: PlanConfig) -> dict:
    """The sizing report as a dict (see the module docstring for the formulas)."""
    recipe = load_yaml(config_file(cfg.recipe))
    from loganalyzer.train import TrainConfig

    train = TrainConfig(**recipe)  # validates the recipe
    lora = train.lora
    params = count_parameters(model_config_file(train.model_name_or_path, cfg.model_config_path),
                              train.lora_r if lora else None)
    config = params.pop("config")
    stage = zero_stage(recipe)
    gpus = cfg.gpus_per_node * cfg.num_nodes
    gpu_states, cpu_states, method = model_state_bytes(stage, params, lora, cfg.gpus_per_node, cfg.num_nodes)
    act = activation_bytes(config, train.per_device_train_batch_size, train.max_length, train.gradient_checkpointing,
                           head_trainable=not lora)
    seqs_per_step = train.per_device_train_batch_size * train.gradient_accumulation_steps * gpus
    report: dict = {
        "recipe": cfg.recipe, "model": train.model_name_or_path, "mode": train.mode, "zero_stage": stage,
        "gpus": gpus, "parameters": params["total"],
        "trainable_parameters": params["lora"] if lora else params["total"],
        "memory_per_gpu_gib": {"model_states": round(gpu_states / GiB, 1), "model_states_method": method,
                               "activations_rough": round(act / GiB, 1),
                               "total_rough": round((gpu_states + act) / GiB, 1)},
        "cpu_memory_per_node_gib": round(cpu_states / GiB, 1),
        "sequences_per_optimizer_step": seqs_per_step,
        "max_tokens_per_optimizer_step": seqs_per_step * train.max_length,
    }
    tokens, samples = dataset_size(recipe, cfg)
    epochs = train.num_train_epochs
    if tokens or samples:
        if train.packing and tokens:
            sequences = math.ceil(tokens / train.max_length)
        else:
            sequences = samples or math.ceil(tokens / train.max_length)
        steps = math.ceil(sequences / seqs_per_step) * epochs
        train_tokens = (tokens or sequences * train.max_length) * epochs
        flops_per_token = ((4 if lora else 6) * params["total"]
                           + 12 * config.num_hidden_layers * config.hidden_size * train.max_length)
        report.update({"dataset_tokens": tokens, "dataset_samples": samples, "optimizer_steps": math.ceil(steps),
                       "train_tokens": train_tokens, "train_flops": float(flops_per_token * train_tokens)})
        if cfg.tokens_per_second_per_gpu:
            hours = train_tokens / (cfg.tokens_per_second_per_gpu * gpus) / 3600
            report.update({"wall_hours": round(hours, 3), "gpu_hours": round(hours * gpus, 3),
                           "mfu": round(cfg.tokens_per_second_per_gpu * flops_per_token
                                        / (cfg.peak_tflops_per_gpu * 1e12), 3)})
            if cfg.price_per_gpu_hour is not None:
                report["cost_usd"] = round(hours * gpus * cfg.price_per_gpu_hour, 2)
    return report


def main(argv: list[str] | None = None) -> None:
    argv = list(argv or [])
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        argv = ["--recipe", argv[0], *argv[1:]]
    cfg = parse_config(PlanConfig, "plan", argv)
    # stdout is the report alone (for jq): DeepSpeed logs and its estimators print tables there
    with contextlib.redirect_stdout(sys.stderr):
        report = plan(cfg)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
