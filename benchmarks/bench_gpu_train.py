"""(d) GPU training throughput and MFU for the Llama-3.1-8B architecture (random init): packed vs unpacked.

For each of LoRA (r16, alpha 32, all linear layers, all 32 layers) and full fine-tuning (AdamW; ``--full-layers``
layers, default 8, since full Adam states of all 32 layers do not fit on one GPU), with and without Liger's
kernels when installed, it trains on one fixed set of random-length samples (log-normal, median ``--median-len``
tokens, at most ``--seq``) in bf16 with gradient checkpointing, in two layouts, in the same run:

- packed (ours for CPT): first-fit rows of ``--seq`` tokens, ``position_ids`` restarting per sample and no
  attention mask (TRL's padding-free rows), attention as ``loganalyzer.train.attention_for`` picks it;
- baseline: plain HF, unpacked: micro-batches of about ``--seq`` real tokens, padded to their longest sample,
  with an attention mask, SDPA.

Both layouts see the same samples (every one of them, after a warm-up on other samples), so their tokens/s
compare the same work. A third arm, ``recipe``, is what a user's run gets: TRL's SFTTrainer with the recipe's
own settings (``run_recipe``). Figures: real (non-pad) tokens/s, MFU, peak memory, ratios to the baseline.

MFU = tokens/s × FLOPs per token / peak FLOP/s, with model FLOPs only (gradient-checkpointing recompute and
padding are not useful work; PaLM, Chowdhery et al. 2022, appendix B):
- dense: ``k·N`` per token, N = the parameters outside the input embedding (a lookup, no FLOPs; the untied LM
  head is a matmul and counts), k = 6 for full fine-tuning (forward 2N, backward 4N) and 4 for LoRA (no weight
  gradients for the frozen base);
- attention: for a sample of ℓ tokens, causal, QKᵀ and AV cost ``2·2·ℓ²·h/2`` per layer forward, three times
  that with backward, so ``6·L·h·ℓ`` per token of that sample (``flops_per_token``), from the real sample lengths.
The peak is ``--peak-tflops`` (default 989: H100/H200 SXM dense bf16, NVIDIA's datasheet).

``--cpu-smoke``: the same code on a tiny Llama on CPU, a few steps, to keep the script working between GPU lends
(CI runs it); its MFU is meaningless. Without CUDA and without ``--cpu-smoke`` it prints why and exits 0.
Usage: ``python benchmarks/bench_gpu_train.py [--seq 8192] [--samples 48] [--modes lora,full] [--out F.json]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from _common import ROOT, report

sys.path.insert(0, str(ROOT / "jobs"))
CONFIG = ROOT / "jobs" / "configs" / "models" / "llama-3.1-8b-instruct.json"
# --cpu-smoke: a Llama small enough for a CPU, same code path
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 1024}


def samples(n: int, median: int, seq: int, vocab: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 0.6, n).astype(int), 16, seq)
    return [rng.integers(0, vocab, size=int(k)) for k in lengths]


def flops_per_token(config, lengths: list[int], lora: bool, dense_params: int) -> float:
    """Model FLOPs per trained token (see the module docstring): ``k·N`` plus the causal attention of each sample,
    averaged over the tokens of ``lengths``."""
    k = 4 if lora else 6
    attention = sum(6 * config.num_hidden_layers * config.hidden_size * n * n for n in lengths) / sum(lengths)
    return k * dense_params + attention


def packed_batches(seqs, seq: int, device):
    """First-fit rows of ``seq`` tokens with per-sample position_ids (one row per micro-batch)."""
    import numpy as np
    import torch

    rows, row = [], []
    for s in seqs:
        if row and sum(map(len, row)) + len(s) > seq:
            rows.append(row)
            row = []
        row.append(s)
    if row:
        rows.append(row)
    for row in rows:
        ids = torch.as_tensor(np.concatenate(row), device=device)[None]
        position_ids = torch.cat([torch.arange(len(s), device=device) for s in row])[None]
        labels = ids.clone()
        labels[position_ids == 0] = -100  # no sample predicts the first token of the next one
        yield {"input_ids": ids, "position_ids": position_ids, "labels": labels}, int(ids.numel())


def padded_batches(seqs, seq: int, device, pad_id: int):
    """Micro-batches holding about ``seq`` real tokens, padded to their longest sample."""
    import torch

    batch = []
    for s in [*seqs, None]:
        if batch and (s is None or (len(batch) + 1) * max(len(s), max(map(len, batch))) > seq):
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad_id, device=device)
            mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
            for i, b in enumerate(batch):
                ids[i, : len(b)] = torch.as_tensor(b, device=device)
                mask[i, : len(b)] = 1
            yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}, \
                int(mask.sum())
            batch = []
        if s is not None:
            batch.append(s)


def build_model(mode: str, args, device: str, liger: bool, attn: str):
    """The random-init model in bf16 with gradient checkpointing (+ LoRA, + Liger); returns it, its config and N."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**TINY) if args.cpu_smoke else AutoConfig.from_pretrained(CONFIG)
    if mode == "full" and not args.cpu_smoke:
        config.num_hidden_layers = args.full_layers
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    model.config.use_cache = False
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False)  # as TRL 1.16 leaves it
    model.gradient_checkpointing_enable()
    dense = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model, config, dense


def run_layout(model, layout: str, seqs, warmup, args, device):
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda")

    def batches(data):
        return (packed_batches(data, args.seq, device) if layout == "packed"
                else padded_batches(data, args.seq, device, pad_id=0))

    def step(batch):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch, _ in batches(warmup):
        step(batch)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    tokens, count, t0 = 0, 0, time.perf_counter()
    for batch, real in batches(seqs):
        step(batch)
        tokens, count = tokens + real, count + 1
    sync()
    dt = time.perf_counter() - t0
    out = {"micro_batches": count, "real_tokens": tokens, "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt)}
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def run_recipe(mode: str, liger: bool, args, device: str) -> dict:
    """The recipe's own path: TRL's SFTTrainer with the SFTConfig ``loganalyzer.train`` builds from
    ``cpt_full_zero3.yaml`` (full: packed, padding-free) or ``sft_lora.yaml`` (LoRA: padded, length-grouped
    batches), its gradient accumulation, optimizer and chunked LM head, on pre-tokenized samples of the same
    length distribution, sized to ``--recipe-steps`` optimizer steps after ``--recipe-warmup``. One GPU, so no
    DeepSpeed. Tokens are the non-padding ones TRL counts."""
    import tempfile

    import datasets
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTTrainer

    from loganalyzer.config import load_yaml
    from loganalyzer.train import TrainConfig, effective, sft_config

    recipe = "cpt_full_zero3" if mode == "full" else "sft_lora"
    steps = args.recipe_warmup + args.recipe_steps
    over = {"model_name_or_path": "random-init", "train_file": "-", "eval_file": None, "deepspeed": None,
            "output_dir": tempfile.mkdtemp(prefix="bench-recipe-"), "report_to": ["none"], "save_strategy": "no",
            "use_liger_kernel": liger, "max_length": args.seq, "max_steps": steps, "logging_steps": 1,
            "dataset_num_proc": None, "bf16": True}
    if args.cpu_smoke:
        over.update(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    cfg = effective(TrainConfig(**{**load_yaml(ROOT / "jobs" / "configs" / f"{recipe}.yaml"), **over}))
    rows = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * steps
    n = int(rows * args.seq / args.median_len * 1.3) + 8 if cfg.packing else rows + 8
    vocab = TINY["vocab_size"] if args.cpu_smoke else 128256
    data = samples(n, args.median_len, args.seq, vocab, seed=2)
    model, config, dense = build_model(mode, args, device, False, cfg.attn_implementation)
    trainer_args = sft_config(cfg, assistant_only_loss=False)
    trainer_args.include_num_input_tokens_seen = "non_padding"
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    pad = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=pad, pad_token="<pad>", eos_token="<eos>")
    trainer = SFTTrainer(model=model, args=trainer_args, processing_class=tokenizer, callbacks=[Clock()],
                         train_dataset=datasets.Dataset.from_dict({"input_ids": [d.tolist() for d in data]}))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, k0), (t1, k1) = marks[args.recipe_warmup - 1], marks[-1]
    fpt = flops_per_token(config, [len(d) for d in data], lora=mode == "lora", dense_params=dense)
    out = {"recipe": recipe, "attention": cfg.attn_implementation, "packing": cfg.packing,
           "sampling": cfg.train_sampling_strategy, "batch": cfg.per_device_train_batch_size,
           "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "timed_optimizer_steps": len(marks) -
           args.recipe_warmup, "real_tokens": int(k1 - k0), "seconds": round(t1 - t0, 3),
           "tokens_per_s": round((k1 - k0) / (t1 - t0))}
    out["mfu"] = round(out["tokens_per_s"] * fpt / (args.peak_tflops * 1e12), 4)
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del trainer, model
    return out


def measure(mode: str, liger: bool, args, seqs, warmup, device) -> dict:
    """Both layouts, each on a freshly built model: packed with the recipe's attention, unpacked with SDPA."""
    import torch

    from loganalyzer.train import attention_for

    figures = {"liger": liger}
    for layout, attn in (("packed", attention_for(device == "cuda", packing=True)), ("unpacked", "sdpa")):
        model, config, dense = build_model(mode, args, device, liger, attn)
        fpt = flops_per_token(config, [len(s) for s in seqs], lora=mode == "lora", dense_params=dense)
        figures.update(layers=config.num_hidden_layers, dense_params=dense, flops_per_token=round(fpt))
        r = {"attention": attn, **run_layout(model, layout, seqs, warmup, args, device)}
        r["mfu"] = round(r["tokens_per_s"] * fpt / (args.peak_tflops * 1e12), 4)
        figures[layout] = r
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    figures["ratio_packed_to_unpacked"] = round(figures["packed"]["tokens_per_s"] /
                                                figures["unpacked"]["tokens_per_s"], 2)
    if args.recipe_steps:
        figures["recipe"] = run_recipe(mode, liger, args, device)
        figures["ratio_recipe_to_unpacked"] = round(figures["recipe"]["tokens_per_s"] /
                                                    figures["unpacked"]["tokens_per_s"], 2)
        if device == "cuda":
            torch.cuda.empty_cache()
    return figures


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=8192, help="tokens per packed row / per padded micro-batch")
    ap.add_argument("--median-len", type=int, default=2048, help="median sample length (log-normal)")
    ap.add_argument("--samples", type=int, default=48, help="timed samples, the same for both layouts")
    ap.add_argument("--warmup-samples", type=int, default=8, help="untimed samples before each layout")
    ap.add_argument("--full-layers", type=int, default=8, help="layers for full fine-tuning (memory)")
    ap.add_argument("--modes", default="lora,full")
    ap.add_argument("--liger", choices=["auto", "on", "off"], default="auto",
                    help="auto: with and without Liger when it is installed, else without")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of the GPU")
    ap.add_argument("--recipe-steps", type=int, default=3, help="timed optimizer steps of the recipe's own path "
                                                                 "(TRL SFTTrainer; 0: skip it)")
    ap.add_argument("--recipe-warmup", type=int, default=1, help="untimed optimizer steps before them")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny Llama on CPU, a few samples (CI)")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    import torch

    if args.cpu_smoke:
        device, args.seq, args.median_len = "cpu", 256, 64
        args.samples, args.warmup_samples = min(args.samples, 12), 2
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("bench_gpu_train: skipped, no CUDA GPU on this machine (needs an H100/H200-class GPU); "
              "--cpu-smoke runs the same code on a tiny model")
        return None
    vocab = TINY["vocab_size"] if args.cpu_smoke else 128256
    seqs = samples(args.samples, args.median_len, args.seq, vocab, seed=0)
    warmup = samples(args.warmup_samples, args.median_len, args.seq, vocab, seed=1)
    has_liger = importlib.util.find_spec("liger_kernel") is not None and device == "cuda"
    ligers = {"auto": [False, True] if has_liger else [False], "on": [True], "off": [False]}[args.liger]
    figures = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke: MFU meaningless)",
               "seq": args.seq, "median_sample_len": args.median_len, "samples": args.samples,
               "peak_tflops": args.peak_tflops, "torch": torch.__version__}
    for mode in args.modes.split(","):
        for liger in ligers:
            figures[f"{mode}{'_liger' if liger else ''}"] = measure(mode, liger, args, seqs, warmup, device)
    report("gpu_train", figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
