"""Stage 4 — one entry for CPT (full fine-tune, packed NLPLog text) and SFT (LoRA, chat messages).

``loganalyzer train --config jobs/configs/<recipe>.yaml [key=value ...]`` runs a recipe in this process; the same
command under ``torchrun --nproc-per-node N`` (or a PyTorchJob) runs data-parallel / DeepSpeed ZeRO — world size
and DeepSpeed JSON come from the launcher and the recipe, never from this code.
``loganalyzer train --plan RECIPE`` prints a sizing report instead (see ``loganalyzer.plan``).

Built on TRL's ``SFTTrainer`` (+ peft LoRA, + the HF DeepSpeed integration). CPT packs ``text`` rows
(best-fit decreasing, overflow split, no token lost); SFT trains on assistant tokens only (TRL's assistant
mask from a ``{% generation %}`` chat template). Liger kernels and flash-attention are used when installed on a
GPU (packed rows without flash-attention: flex_attention, see ``attention_for``), SDPA otherwise. Checkpoints go
to ``<output_dir>/checkpoints`` every ``save_steps``; once every rank has written its part, rank 0 adds
``COMPLETE_MARKER``, and ``resume: auto`` continues from the newest checkpoint that has it (a pod killed mid-save
leaves one without: it is skipped, not resumed into a crash loop). The final model
(LoRA merged when ``merge_adapter``) is saved at ``<output_dir>`` with its tokenizer and original chat template,
loadable by ``AutoModelForCausalLM.from_pretrained``.

Errors: empty data, samples longer than ``max_length`` (``overlong: error``; ``drop`` writes them to
``<output_dir>/rejects.jsonl``), and a NaN/inf loss stop the run with a message saying what to change.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import resource
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from loganalyzer.config import SEED, ConfigError, StageConfig, config_file, parse_config

log = logging.getLogger("loganalyzer.train")


class TrainConfig(StageConfig):
    """Train a model from a recipe: CPT (full fine-tune on NLPLog text) or SFT (LoRA on chat messages)."""

    mode: Literal["cpt", "sft"] = Field(description="cpt: packed text, all tokens; sft: chat, assistant tokens")
    model_name_or_path: str = Field(description="base model dir or hub id")
    train_file: str = Field(description="JSON Lines: {text} for cpt, {messages} for sft")
    eval_file: str | None = Field(None, description="optional JSON Lines evaluated every eval_steps")
    output_dir: str = Field(description="final model here, checkpoints in <output_dir>/checkpoints")
    # Optimisation (defaults: the seed's CPT recipe)
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warmup")
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="stop after N optimizer steps (-1: epochs decide)")
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(2, ge=1)
    max_length: int = Field(8192, ge=16, description="tokens per sequence (packed length for cpt)")
    bf16: bool | Literal["auto"] = Field(
        True, description="bf16 mixed precision; auto: on a GPU, or on a CPU with AMX/AVX512-BF16 (else fp32)")
    model_dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto", description="dtype the weights are loaded in; auto: bfloat16 when bf16 is on a GPU or for LoRA "
                            "(frozen base), else float32 (full fine-tuning keeps fp32 master weights under autocast)")
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = SEED
    gradient_checkpointing: bool = True
    packing: bool = Field(False, description="pack samples into max_length sequences (cpt)")
    train_sampling_strategy: Literal["random", "group_by_length"] = Field(
        "random", description="group_by_length: batches of similar lengths (transformers' LengthGroupedSampler), "
                              "less padding when samples vary in length (sft)")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON (path, or a name in jobs/configs/deepspeed)")
    # LoRA (sft)
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: str | list[str] = "all-linear"
    merge_adapter: bool = Field(True, description="merge LoRA into the base weights for the saved model")
    # Runtime
    attn_implementation: str = Field("auto", description="auto: flash_attention_2 on GPU when installed, else "
                                                         "flex_attention for packed rows on GPU, else sdpa")
    use_liger_kernel: Literal["auto", True, False] = "auto"
    logging_steps: int = Field(10, ge=1)
    save_strategy: Literal["steps", "no"] = Field(
        "steps", description="steps: a checkpoint every save_steps and at the end (resumable); no: none")
    save_steps: int = Field(500, ge=1)
    save_total_limit: int = Field(2, ge=2, description="checkpoints kept; at least 2, so that a crash while the "
                                                       "newest is written still leaves a complete one")
    eval_steps: int | None = Field(None, ge=1)
    resume: str = Field("auto", description="auto (latest checkpoint), never, or a checkpoint path")
    overlong: Literal["error", "drop"] = "error"
    dataloader_num_workers: int = 0
    dataset_num_proc: int | None = Field(None, ge=1, description="processes for tokenizing/packing the data")
    report_to: list[str] = Field(["mlflow"], description="trainer integrations (mlflow, tensorboard, none)")
    run_name: str | None = None
    # Model registry (loganalyzer.registry; needs MLflow tracking)
    register_as: str | None = Field(None, description="register the saved model as a new version of this MLflow "
                                                      "registered model, with its lineage")
    storage_uri: str | None = Field(None, description="the version's source: where serving reads output_dir "
                                                      "(pvc://<claim>/<path>, s3://...); default output_dir as "
                                                      "file://, which only a local MLflow store accepts")
    register_tags: dict[str, str] = Field({}, description="more tags on the registered version (e.g. the recipe)")
    # Engine: who starts the ranks
    engine: Literal["torchrun", "ray"] = Field(
        "torchrun", description="torchrun: this process is one rank (1 process, torchrun or a PyTorchJob); "
                                "ray: Ray Train's TorchTrainer starts ray_workers ranks on a Ray cluster")
    ray_workers: int = Field(1, ge=1, description="engine=ray: training workers (ranks)")
    ray_use_gpu: bool = Field(False, description="engine=ray: one GPU per worker")
    ray_address: str | None = Field(None, description="engine=ray: cluster address (unset: RAY_ADDRESS, else a "
                                                      "local Ray on this machine)")


def deepspeed_config_path(value: str | None) -> str | None:
    """Resolve ``deepspeed``: a path, or a name in ``jobs/configs/deepspeed`` (``zero3``)."""
    return None if value is None else str(config_file(value, "deepspeed", ".json"))


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def effective(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every ``auto`` resolved to what this machine runs: ``bf16`` (GPU, or a bf16-capable CPU),
    ``model_dtype``, ``attn_implementation`` (``attention_for``) and
    ``use_liger_kernel`` (on a GPU when installed). This is the config that is logged and saved."""
    from loganalyzer.hardware import cpu_supports_bf16

    gpu = _on_gpu()
    bf16 = (gpu or cpu_supports_bf16()) if cfg.bf16 == "auto" else cfg.bf16
    dtype = cfg.model_dtype
    if dtype == "auto":
        dtype = "bfloat16" if bf16 and (gpu or cfg.lora) else "float32"
    attn = cfg.attn_implementation
    if attn == "auto":
        attn = attention_for(gpu, cfg.packing)
    # Liger under TRL 1.16: its fused RMSNorm, RoPE and SwiGLU kernels only. TRL turns Liger's fused linear
    # cross-entropy off (sft_trainer.py) because its own chunked LM head already computes the loss without the
    # full logits; `use_liger_kernel` is deprecated there (removal in TRL 2) in favour of Hub kernels, which an
    # air-gapped cluster cannot fetch. Whether the three kernels pay off is measured by bench_gpu_train.py.
    liger = cfg.use_liger_kernel
    if liger == "auto":
        liger = gpu and importlib.util.find_spec("liger_kernel") is not None
    return cfg.model_copy(update={"bf16": bf16, "model_dtype": dtype, "attn_implementation": attn,
                                  "use_liger_kernel": liger})


def attention_for(gpu: bool, packing: bool) -> str:
    """The attention implementation for ``attn_implementation: auto``.

    Packing makes TRL's collator padding-free (``sft_trainer.py``: on for ``bfd``/``bfd_split``): a micro-batch is
    one row of every packed token (8 x 8192 = 65,536 for CPT) with ``position_ids`` restarting per sample and no
    attention mask. flash-attention keeps the samples apart from the position ids alone. Without it,
    transformers' SDPA path (``masking_utils.py`` ``sdpa_mask``) materialises a dense (1, 1, N, N) block-diagonal
    mask (4 GiB of bools for that row) and computes all N² scores, while ``flex_attention`` builds a sparse
    ``BlockMask`` and skips the blocks between samples: the GPU choice without flash-attn. On CPU, torch 2.13's
    FlexAttention has no backward, so SDPA stays (the demo's rows are short).
    """
    if gpu and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "flex_attention" if gpu and packing else "sdpa"


LAST_TURN = "last_turn"
# Chat templates that TRL does not patch, and the packaged training variant (with {% generation %} markers) that
# renders each of them byte-identically for system/user/assistant messages (tested).
PACKAGED_TRAINING_TEMPLATES = {"llama3_1": "llama3_1_training.jinja", "smollm2.jinja": "smollm2_training.jinja"}


def _packaged(name: str) -> str:
    return resources.files("loganalyzer.chat_templates").joinpath(name).read_text()


def _known_originals() -> dict[str, str]:
    """Original chat template -> its packaged training variant."""
    from trl.chat_template_utils import llama3_1_chat_template

    return {llama3_1_chat_template if key == "llama3_1" else _packaged(key): _packaged(training)
            for key, training in PACKAGED_TRAINING_TEMPLATES.items()}


def training_chat_template(tokenizer) -> str | None:
    """How SFT masks the loss for this tokenizer's chat template.

    Returns a template with ``{% generation %}`` markers for assistant-only loss over every assistant turn: the
    tokenizer's own when it has markers (returned as is), the packaged training variant for Llama 3.1 and
    SmolLM2's ChatML (``PACKAGED_TRAINING_TEMPLATES``: TRL patches neither), or TRL's patched one for the templates
    TRL knows. Returns ``LAST_TURN`` for any other template: samples then train as prompt/completion pairs (TRL's
    completion-only loss), so only each sample's final assistant turn is learned.
    Raises ConfigError when the tokenizer has no chat template at all.
    """
    from trl.chat_template_utils import get_training_chat_template

    template = tokenizer.chat_template
    if not template:
        raise ConfigError("SFT needs a tokenizer with a chat template (tokenizer_config.json: chat_template)")
    if "{% generation %}" in template.replace("{%- generation %}", "{% generation %}"):
        return template
    packaged = _known_originals().get(template)
    if packaged:
        return packaged
    try:
        return get_training_chat_template(tokenizer) or template
    except ValueError:
        log.warning("the chat template has no {%% generation %%} markers and TRL cannot patch it: SFT trains on the "
                    "last assistant turn of each sample only (prompt/completion, completion-only loss)")
        return LAST_TURN


def to_prompt_completion(ds):
    """``{"messages"}`` -> conversational ``{"prompt": messages[:-1], "completion": [last message]}``."""
    return ds.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                  remove_columns=["messages"], desc="Prompt/completion split")


def load_rows(path: str, mode: str):
    """The train/eval file as a ``datasets.Dataset`` with just the column the mode trains on."""
    from datasets import load_dataset

    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file")
    column = "text" if mode == "cpt" else "messages"
    empty_msg = f"{path}: the dataset is empty; build it with `loganalyzer build-datasets`"
    with open(path, "rb") as fh:  # read only up to the first non-blank byte
        while (block := fh.read(1 << 16)) and not block.strip():
            pass
    if not block.strip():
        raise ConfigError(empty_msg)
    try:
        ds = load_dataset("json", data_files=path, split="train")
    except Exception as exc:  # datasets raises many types for unreadable JSON
        raise ConfigError(f"{path}: cannot read as JSON Lines ({type(exc).__name__}: {exc})") from None
    if len(ds) == 0:
        raise ConfigError(empty_msg)
    if column not in ds.column_names:
        raise ConfigError(f"{path}: mode {mode} needs a {column!r} column, found {ds.column_names}")
    return ds.select_columns([column])


def pretokenize_text(ds, tokenizer, num_proc: int | None = None):
    """``{"text"}`` rows -> ``{"input_ids", "labels"}``, exactly TRL's language-modeling preprocessing
    (``tokenizer(text + eos_token)``: BOS and EOS added; every token is a label) but batched: the fast tokenizer
    encodes 1000 texts per call in parallel and the Arrow columns are built from numpy offsets (one array shared
    by both columns) instead of Python lists per row. TRL skips its own tokenization and label building for
    such datasets and packs them as usual."""
    import numpy as np
    import pyarrow as pa

    eos = tokenizer.eos_token

    def encode(batch: pa.Table) -> pa.Table:
        texts = [t if t.endswith(eos) else t + eos for t in batch.column("text").to_pylist()]
        ids = tokenizer(texts)["input_ids"]
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)  # a batch stays far below 2**31 tokens
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        column = pa.ListArray.from_arrays(offsets, np.concatenate([np.asarray(x, dtype=np.int32) for x in ids]))
        return pa.table({"input_ids": column, "labels": column})

    return ds.with_format("arrow").map(encode, batched=True, batch_size=1000, remove_columns=["text"],
                                       num_proc=num_proc, desc="Tokenizing CPT text").with_format(None)


def check_lengths(ds, tokenizer, cfg: TrainConfig, chat_template: str | None, what: str,
                  write_rejects: bool = True):
    """Apply the ``overlong`` policy to SFT samples longer than ``max_length`` tokens (``write_rejects``: this
    process writes ``rejects.jsonl``, rank 0 only)."""
    if cfg.mode == "cpt":  # packed with overflow split: long texts are cut into sequences, never truncated
        return pretokenize_text(ds, tokenizer, cfg.dataset_num_proc)
    template = None if chat_template == LAST_TURN else chat_template
    lengths = [len(x) for x in tokenizer.apply_chat_template(
        list(ds["messages"]), tokenize=True, chat_template=template, return_dict=True)["input_ids"]]
    over = [i for i, n in enumerate(lengths) if n > cfg.max_length]
    if not over:
        return ds
    if cfg.overlong == "error":
        raise ConfigError(
            f"{what}: {len(over)} of {len(ds)} samples exceed max_length={cfg.max_length} tokens (longest "
            f"{max(lengths)}; first rows {over[:5]}) and would lose their answers to truncation. Raise max_length, "
            f"chunk logs smaller, or set overlong=drop to skip them (listed in <output_dir>/rejects.jsonl).")
    from loganalyzer.io import JsonlWriter

    if write_rejects:
        with JsonlWriter(Path(cfg.output_dir) / "rejects.jsonl") as w:
            for i in over:
                w.write({"file": what, "row": i, "tokens": lengths[i], "reason": f"overlong: > {cfg.max_length}"})
    log.warning("%s: dropped %d of %d samples longer than %d tokens", what, len(over), len(ds), cfg.max_length)
    keep = set(range(len(ds))) - set(over)
    if not keep:
        raise ConfigError(f"{what}: every sample is longer than max_length={cfg.max_length}")
    return ds.select(sorted(keep))


def _callbacks():
    from transformers import TrainerCallback

    class NaNGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {state.global_step}: lower learning_rate, check the data for empty "
                    f"targets, or use bf16 instead of fp16")

    class Throughput(TrainerCallback):
        """tokens/s, step time and peak memory, logged to MLflow next to the trainer's loss/lr/grad_norm."""

        t = None  # set when training begins; an evaluate() before that logs no throughput

        def on_train_begin(self, args, state, control, **kw):
            self.t, self.tokens, self.step = time.perf_counter(), state.num_input_tokens_seen, state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            import torch

            if self.t is None:
                return
            now, dt = time.perf_counter(), time.perf_counter() - self.t
            steps = state.global_step - self.step
            if dt <= 0 or steps <= 0 or not state.is_world_process_zero:
                return
            world = int(os.environ.get("WORLD_SIZE", "1"))
            metrics = {"train_tokens_per_s": (state.num_input_tokens_seen - self.tokens) / dt,
                       "train_step_time_s": dt / steps}
            if torch.cuda.is_available():
                metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            metrics["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            metrics["train_tokens_per_s_per_device"] = metrics["train_tokens_per_s"] / world
            self.t, self.tokens, self.step = now, state.num_input_tokens_seen, state.global_step
            log.info("step %d: %s", state.global_step, {k: round(v, 3) for k, v in metrics.items()})
            from loganalyzer import tracking

            if tracking.enabled():  # mlflow is imported only when tracking is on (the GPU device check has none)
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.log_metrics(metrics, step=state.global_step)

    class MarkComplete(TrainerCallback):
        """After the Trainer saved a checkpoint (model, optimizer shards of every rank, trainer state): wait for
        every rank, then write the marker atomically on rank 0."""

        def on_save(self, args, state, control, **kw):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_marker(ckpt, {"global_step": state.global_step, "world_size": args.world_size})

    return [NaNGuard(), Throughput(), MarkComplete()]


COMPLETE_MARKER = "loganalyzer-checkpoint-complete.json"


def write_marker(ckpt: Path, content: dict) -> None:
    """Write ``COMPLETE_MARKER`` into ``ckpt`` through a temporary file, fsynced and renamed: it exists only whole."""
    tmp = ckpt / f".{COMPLETE_MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / COMPLETE_MARKER)


# How a recipe reaches trl.SFTConfig and peft.LoraConfig: one explicit mapping (test_train checks that every
# TrainConfig field is in exactly one place). Trainer fields pass as they are or renamed (transformers>=5 names);
# output_dir, deepspeed, eval_file and eval_steps are derived; the rest are this recipe's own (data, weights, LoRA,
# resuming, registry, engine). SFT_FIXED: trainer settings a recipe does not choose.
SFT_FIELDS = ("learning_rate", "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length", "bf16", "weight_decay",
              "max_grad_norm", "seed", "packing", "train_sampling_strategy", "use_liger_kernel", "logging_steps",
              "save_strategy", "save_steps", "save_total_limit", "dataloader_num_workers", "dataset_num_proc",
              "report_to", "run_name")
SFT_RENAMES = {"warmup_ratio": "warmup_steps",  # transformers>=5: a float in [0, 1) is a ratio of total steps
               "gradient_checkpointing": "activation_checkpointing"}
SFT_DERIVED = ("output_dir", "deepspeed", "eval_file", "eval_steps")
SFT_FIXED = {
    "packing_strategy": "bfd_split",  # best-fit decreasing; a sample longer than max_length is split, not cut
    "dataset_text_field": "text",
    "include_num_input_tokens_seen": True,  # tokens/s and train_tokens_seen
    # Every trainable parameter (all weights, or LoRA's A/B on every linear layer) is used in every forward:
    # no search for unused ones. transformers would turn it on for a PeftModel (not a PreTrainedModel).
    "ddp_find_unused_parameters": False,
}
LORA_FIELDS = {"lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
               "lora_target_modules": "target_modules"}
OWN_FIELDS = ("mode", "model_name_or_path", "train_file", "model_dtype", "attn_implementation", "lora",
              "merge_adapter", "resume", "overlong", "register_as", "storage_uri", "register_tags", "engine",
              "ray_workers", "ray_use_gpu", "ray_address")


def sft_config(cfg: TrainConfig, assistant_only_loss: bool):
    """The ``trl.SFTConfig`` of a recipe resolved by ``effective`` (``build_trainer`` and the GPU benchmark):
    ``SFT_FIELDS`` and ``SFT_RENAMES`` from ``cfg``, checkpoints in ``output_dir/checkpoints``, the data order
    seeded by ``seed``, evaluation every ``eval_steps`` (default ``save_steps``) when there is an ``eval_file``,
    and ``SFT_FIXED``."""
    from trl import SFTConfig

    return SFTConfig(
        **{name: getattr(cfg, name) for name in SFT_FIELDS},
        **{trl_name: getattr(cfg, name) for name, trl_name in SFT_RENAMES.items()},
        output_dir=str(Path(cfg.output_dir) / "checkpoints"), data_seed=cfg.seed,
        deepspeed=deepspeed_config_path(cfg.deepspeed),
        eval_strategy="steps" if cfg.eval_file else "no", eval_steps=cfg.eval_steps or cfg.save_steps,
        assistant_only_loss=assistant_only_loss, use_cpu=not _on_gpu(), **SFT_FIXED)


def lora_config(cfg: TrainConfig):
    """The ``peft.LoraConfig`` of an SFT recipe (``LORA_FIELDS``), or None without ``lora``."""
    from peft import LoraConfig

    if not cfg.lora:
        return None
    return LoraConfig(**{peft_name: getattr(cfg, name) for name, peft_name in LORA_FIELDS.items()},
                      task_type="CAUSAL_LM")


def build_trainer(cfg: TrainConfig):
    """Tokenizer, datasets, model and a configured ``trl.SFTTrainer`` for the recipe (resolved by ``effective``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    cfg = effective(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    chat_template = training_chat_template(tokenizer) if cfg.mode == "sft" else None
    original_template = tokenizer.chat_template
    last_turn_only = chat_template == LAST_TURN
    args = sft_config(cfg, assistant_only_loss=cfg.mode == "sft" and not last_turn_only)
    # The datasets cache lives on shared storage (HF_HOME): global rank 0 reads and tokenizes first, the other
    # ranks then load its cache instead of writing the same files at once. The process group exists from here.
    with args.main_process_first(local=False, desc="reading and tokenizing the datasets"):
        writes = args.process_index == 0
        train = check_lengths(load_rows(cfg.train_file, cfg.mode), tokenizer, cfg, chat_template, cfg.train_file,
                              writes)
        evalset = (check_lengths(load_rows(cfg.eval_file, cfg.mode), tokenizer, cfg, chat_template,
                                 cfg.eval_file, writes) if cfg.eval_file else None)
        log.info("rank %d: datasets ready (%d train rows)", args.process_index, len(train))
    if last_turn_only:
        train = to_prompt_completion(train)
        evalset = to_prompt_completion(evalset) if evalset is not None else None
    elif chat_template:  # TRL builds the assistant mask from the tokenizer's template
        tokenizer.chat_template = chat_template
    # Loaded after SFTConfig on purpose: with a ZeRO-3 config alive, from_pretrained partitions the weights across
    # ranks while loading (deepspeed.zero.Init) instead of materialising the whole model in every process.
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, dtype=getattr(torch, cfg.model_dtype),
                                                 attn_implementation=cfg.attn_implementation)
    # No KV cache in training forward passes: with one, packed/padding-free rows (position_ids, no attention mask)
    # are no longer isolated and a sample attends to the one before it (save_final turns it back on).
    model.config.use_cache = False
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evalset,
                         processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=_callbacks())
    return trainer, tokenizer, original_template


def resume_checkpoint(cfg: TrainConfig) -> str | None:
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        if not Path(cfg.resume).is_dir():
            raise ConfigError(f"resume: checkpoint {cfg.resume} not found")
        return cfg.resume
    return last_complete_checkpoint(Path(cfg.output_dir) / "checkpoints")


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The highest-numbered ``checkpoint-N`` in ``ckpt_dir`` that holds ``COMPLETE_MARKER``, or None. Newer ones
    without it (the pod died while saving) are skipped with a warning; transformers' ``get_last_checkpoint``
    would take them."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((int(d.name.removeprefix("checkpoint-")), d) for d in ckpt_dir.glob("checkpoint-*")
                   if d.is_dir() and d.name.removeprefix("checkpoint-").isdigit())
    for _, ckpt in reversed(found):
        if (ckpt / COMPLETE_MARKER).is_file():
            log.info("resume: auto -> continuing from %s", ckpt)
            return str(ckpt)
        log.warning("resume: skipping %s: no %s (not completely written)", ckpt, COMPLETE_MARKER)
    return None


ADAPTER_DIR = "adapter"
# What ran, beside the saved model and in the MLflow run: the recipe resolved by ``effective``, and the SFTConfig
TRAIN_CONFIG, TRAINER_ARGS = "loganalyzer_train.json", "trainer_args.json"


def save_final(trainer, tokenizer, original_template: str | None, cfg: TrainConfig) -> Path:
    """Save the final (merged) model with the tokenizer and its original chat template at ``output_dir``; with LoRA
    the adapter alone also goes to ``output_dir/adapter`` (KServe's LoRA mode serves it on top of the base)."""
    out = Path(cfg.output_dir)
    tokenizer.chat_template = original_template
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True  # for generation with the saved model
    if cfg.lora:
        trainer.save_model(str(out / ADAPTER_DIR))  # every rank calls it: the Trainer gathers and rank 0 writes
    if cfg.lora and cfg.merge_adapter:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.is_world_process_zero():
            merged = model.merge_and_unload()
            merged.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(out)
        (out / TRAIN_CONFIG).write_text(json.dumps(cfg.model_dump(), indent=2))
        (out / TRAINER_ARGS).write_text(trainer.args.to_json_string())  # the SFTConfig that ran
    return out


def run(cfg: TrainConfig) -> dict:
    """Train the recipe; return the final train metrics (also logged to MLflow)."""
    if cfg.engine == "ray":  # Ray Train starts the ranks, each of which comes back here with engine=torchrun
        from loganalyzer.ray_train import run_on_ray

        return run_on_ray(cfg)
    from loganalyzer.tracking import stage_run

    cfg = effective(cfg)
    check_registration(cfg)
    log.info("train %s: bf16=%s, weights %s, attention %s, liger %s", cfg.mode, cfg.bf16, cfg.model_dtype,
             cfg.attn_implementation, cfg.use_liger_kernel)
    with stage_run(f"train-{cfg.mode}", cfg.model_dump(), system_metrics=True) as tracker:
        trainer, tokenizer, original_template = build_trainer(cfg)
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(cfg))
        out = save_final(trainer, tokenizer, original_template, cfg)
        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        metrics["train_tokens_seen"] = float(trainer.state.num_input_tokens_seen)
        metrics["world_size"] = float(trainer.args.world_size)
        tracker.log_metrics(metrics)
        if trainer.is_world_process_zero():
            tracker.log_artifact(plot_loss(trainer.state.log_history, out / "loss_curve.png"))
            for name in (TRAIN_CONFIG, TRAINER_ARGS):
                tracker.log_artifact(out / name)
            if cfg.register_as and tracker.active:
                try:
                    register_model(cfg, out, tracker.run_id)
                except Exception as exc:  # the model is saved; the run must not fail for its registry entry
                    log.error("train: the model at %s was saved but not registered as %s (%s: %s); register it "
                              "later with mlflow's create_model_version", out, cfg.register_as,
                              type(exc).__name__, exc)
    log.info("train %s done -> %s %s", cfg.mode, out, metrics)
    return metrics


def check_registration(cfg: TrainConfig) -> None:
    """Before training: a registration that would be refused at the end is a config error now, and a registry
    record an earlier run left in ``output_dir`` goes (``evaluate`` would tag that old version otherwise)."""
    from loganalyzer.registry import RECORD, needs_remote_source
    from loganalyzer.tracking import enabled

    if int(os.environ.get("RANK", "0")) != 0:
        return
    (Path(cfg.output_dir) / RECORD).unlink(missing_ok=True)
    if not cfg.register_as:
        return
    if not enabled():
        log.warning("register_as=%s: MLFLOW_TRACKING_URI is not set, so the model will not be registered",
                    cfg.register_as)
    elif needs_remote_source(cfg.storage_uri):
        raise ConfigError(f"register_as={cfg.register_as}: an MLflow server refuses a local path as the version's "
                          "source; set storage_uri to where serving reads output_dir (pvc://<claim>/<path>, s3://...)")


def register_model(cfg: TrainConfig, out: Path, run_id: str) -> dict:
    """Register the saved model (``loganalyzer.registry.register``) with the run's lineage."""
    import mlflow

    from loganalyzer.registry import register
    from loganalyzer.tracking import KFP_RUN_TAG, PARENT_ENV

    parent = os.environ.get(PARENT_ENV, "")
    lineage = {"base_model": cfg.model_name_or_path, "train_file": cfg.train_file, "eval_file": cfg.eval_file,
               "mode": cfg.mode, "seed": cfg.seed, "output_dir": str(out.resolve()), "parent_run_id": parent,
               KFP_RUN_TAG: mlflow.get_run(run_id).data.tags.get(KFP_RUN_TAG, "")}
    return register(cfg.register_as, out, cfg.storage_uri, run_id, lineage, cfg.register_tags)


def plot_loss(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if steps:
        ax.plot(*zip(*steps, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--plan" in argv:
        from loganalyzer import plan

        plan.main([a for a in argv if a != "--plan"])
        return
    run(parse_config(TrainConfig, "train", argv))


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
