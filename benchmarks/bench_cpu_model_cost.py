"""Why ``make demo`` uses a tiny model: the CPU cost of a small real instruct model's architecture.

Builds a random-init Llama with SmolLM2-135M-Instruct's shape (no download: compute cost depends on the shape,
not the weights) and times, on this machine's CPU: one training step (forward + backward + AdamW) on
``--batch`` x ``--tokens`` tokens, the size of one demo SFT step, and one greedy teacher reply (``--tokens``
prompt + ``--new-tokens``). Then the same two for the demo's tiny model, and the demo totals for each (22 SFT
steps x 2 runs + ``--requests`` teacher replies).
Usage: ``python benchmarks/bench_cpu_model_cost.py [--tokens 3500] [--batch 2]``
"""

from __future__ import annotations

import argparse
import time

from _common import report

SHAPES = {
    "smollm2_135m_shape": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                               num_attention_heads=9, num_key_value_heads=3),
    "demo_tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2),
}


def measure(shape: dict, tokens: int, batch: int, new_tokens: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=16384, tie_word_embeddings=True))
    x = torch.randint(0, shape["vocab_size"], (batch, tokens))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    t0 = time.perf_counter()
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(x[:1], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        gen_s = time.perf_counter() - t0
    return {"parameters_m": round(model.num_parameters() / 1e6, 1), "train_step_s": round(train_s, 2),
            "teacher_reply_s": round(gen_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=3500, help="tokens per sample (a 50-150-line chunk)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--sft-steps", type=int, default=22, help="SFT steps per run in the demo")
    ap.add_argument("--requests", type=int, default=96, help="teacher requests in the demo")
    args = ap.parse_args()
    figures = {}
    for name, shape in SHAPES.items():
        m = measure(shape, args.tokens, args.batch, args.new_tokens)
        m["demo_minutes_two_sft_runs_plus_teacher"] = round(
            (2 * args.sft_steps * m["train_step_s"] + args.requests * m["teacher_reply_s"]) / 60, 1)
        figures[name] = m
    report("cpu_model_cost", {"tokens": args.tokens, "batch": args.batch, **figures})


if __name__ == "__main__":
    main()
