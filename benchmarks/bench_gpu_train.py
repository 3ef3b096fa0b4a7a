"""(d) GPU training throughput and MFU for the Llama-3.1-8B architecture (random init): packed vs unpacked.

Needs a CUDA GPU (H100/H200 class); without one it prints why and exits 0. For each of LoRA (r16, alpha 32, all
linear layers, 32 layers) and full fine-tuning (AdamW; ``--full-layers`` layers, default 8, since full Adam states of
all 32 layers do not fit on one GPU), it trains on the same random-length samples (log-normal, median
``--median-len`` tokens, at most ``--seq``) in bf16 with gradient checkpointing, two ways, in the same run:

- ours: samples packed into ``--seq``-token rows, ``position_ids`` restarting per sample (flash-attention 2 varlen
  when installed, else SDPA with a block-diagonal mask), as ``loganalyzer train`` does for CPT;
- baseline: plain HF, unpacked — each micro-batch padded to its longest sample with an attention mask.

Prints real (non-pad) tokens/s, MFU (``6N + 12·L·h·s`` FLOPs per token for full, ``4N + …`` for LoRA, over
``--peak-tflops``, default 989 = H100/H200 SXM dense bf16), peak memory, and ours/baseline.
Usage: ``python benchmarks/bench_gpu_train.py [--seq 8192] [--steps 6] [--modes lora,full]``
"""

from __future__ import annotations

import argparse
import importlib.util
import time

from _common import ROOT, report

CONFIG = ROOT / "jobs" / "configs" / "models" / "llama-3.1-8b-instruct.json"


def samples(n: int, median: int, seq: int, vocab: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 0.6, n).astype(int), 64, seq)
    return [rng.integers(0, vocab, size=int(k)) for k in lengths]


def packed_batches(seqs, seq: int, device):
    """First-fit rows of ``seq`` tokens with per-sample position_ids (one row per micro-batch)."""
    import numpy as np
    import torch

    rows, row, pos = [], [], []
    for s in seqs:
        if sum(map(len, row)) + len(s) > seq and row:
            rows.append((row, pos))
            row, pos = [], []
        row.append(s)
        pos.append(len(s))
    if row:
        rows.append((row, pos))
    for row, lens in rows:
        ids = torch.as_tensor(np.concatenate(row), device=device)[None]
        position_ids = torch.cat([torch.arange(k, device=device) for k in lens])[None]
        yield {"input_ids": ids, "position_ids": position_ids, "labels": ids}, int(ids.numel())


def padded_batches(seqs, seq: int, device, pad_id: int):
    """Micro-batches holding about ``seq`` real tokens, padded to their longest sample."""
    import torch

    batch = []
    for s in seqs + [None]:
        if s is None or (batch and (len(batch) + 1) * max(len(s), max(map(len, batch))) > seq):
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad_id, device=device)
            mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
            for i, b in enumerate(batch):
                ids[i, : len(b)] = torch.as_tensor(b, device=device)
                mask[i, : len(b)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum())
            batch = []
        if s is not None:
            batch.append(s)


def run_mode(mode: str, layout: str, args, seqs) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(CONFIG)
    if mode == "full":
        config.num_hidden_layers = args.full_layers
    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    batches = (packed_batches(seqs, args.seq, "cuda") if layout == "packed"
               else padded_batches(seqs, args.seq, "cuda", pad_id=0))
    torch.cuda.reset_peak_memory_stats()
    tokens, t0 = 0, None
    for step, (batch, real) in enumerate(batches):
        if step == args.warmup:
            torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += real
        if step + 1 == args.warmup + args.steps:
            break
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = tokens / dt
    flops = (4 if mode == "lora" else 6) * n_params + 12 * config.num_hidden_layers * config.hidden_size * args.seq
    out = {"layers": config.num_hidden_layers, "attention": attn, "tokens_per_s": round(tps),
           "mfu": round(tps * flops / (args.peak_tflops * 1e12), 3),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    del model, opt
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--median-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--full-layers", type=int, default=8)
    ap.add_argument("--modes", default="lora,full")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_train: skipped, no CUDA GPU on this machine (needs an H100/H200-class GPU)")
        return
    seqs = samples(4000, args.median_len, args.seq, 128256, seed=0)
    figures = {"gpu": torch.cuda.get_device_name(0), "seq": args.seq, "median_sample_len": args.median_len}
    for mode in args.modes.split(","):
        packed = run_mode(mode, "packed", args, seqs)
        unpacked = run_mode(mode, "unpacked", args, seqs)
        figures[mode] = {"packed": packed, "unpacked_hf_baseline": unpacked,
                         "ratio_packed_to_unpacked": round(packed["tokens_per_s"] / unpacked["tokens_per_s"], 2)}
    report("gpu_train", figures)


if __name__ == "__main__":
    main()
