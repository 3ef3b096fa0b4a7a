"""(c) CPT data preparation throughput: tokenize + pack, as ``loganalyzer train`` does it, vs raw tokenization.

Corpus: NLPLog-format texts made from the Loghub samples' chunks (``Human: …\\nAssistant: <log>\\n``), repeated to
``--texts``; tokenizer: a byte-level BPE trained on them (offline). Times, in the same run: baseline = raw
``tokenizers`` ``encode_batch`` of the texts (Rust, all cores); ours = ``loganalyzer.train.build_trainer`` for the CPT
recipe: reading the JSON Lines file, batched tokenization (``pretokenize_text``, ``dataset_num_proc`` processes,
default: all cores), TRL's best-fit-decreasing packing into ``--max-length`` sequences. Prints tokens/s of each and
their ratio (target >= 0.5).
Usage: ``python benchmarks/bench_pack.py [--texts 2000] [--max-length 8192] [--num-proc N]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import loghub_logs, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--max-length", type=int, default=8192)
    # raw encode_batch uses every core (Rayon), so by default ours may too
    ap.add_argument("--num-proc", type=int, default=os.cpu_count(), help="dataset_num_proc of the recipe")
    args = ap.parse_args()
    import datasets

    from loganalyzer.chunk import ChunkConfig
    from loganalyzer.chunk import run as chunk
    from loganalyzer.config import config_file, load_yaml
    from loganalyzer.io import read_jsonl
    from loganalyzer.tiny_model import TinyModelConfig, build
    from loganalyzer.train import TrainConfig, build_trainer

    datasets.disable_caching()  # measure the work, not the cache
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chunk(ChunkConfig(logs=[str(p) for p in loghub_logs()], out=str(tmp / "chunks.jsonl")))
        contents = [c["content"] for c in read_jsonl(tmp / "chunks.jsonl")]
        texts = [f"Human: Explain this log.\nAssistant: {contents[i % len(contents)]}\n" for i in range(args.texts)]
        (tmp / "cpt.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        model = build(TinyModelConfig(out=str(tmp / "model"), corpus=[str(tmp / "chunks.jsonl")]))
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(model).backend_tokenizer
        t0 = time.perf_counter()
        tokens = sum(len(e.ids) for e in backend.encode_batch(texts))
        raw_s = time.perf_counter() - t0
        cfg = TrainConfig(**{**load_yaml(config_file("cpt_tiny_cpu")), "model_name_or_path": str(model),
                             "train_file": str(tmp / "cpt.jsonl"), "output_dir": str(tmp / "out"),
                             "max_length": args.max_length, "report_to": ["none"],
                             "dataset_num_proc": args.num_proc})
        t0 = time.perf_counter()
        trainer, _, _ = build_trainer(cfg)
        ours_s = time.perf_counter() - t0
        packed = trainer.train_dataset
    report("cpt_pack", {"texts": len(texts), "tokens": tokens, "packed_sequences": len(packed),
                        "max_length": args.max_length, "raw_tokenizers_tokens_per_s": round(tokens / raw_s),
                        "tokenize_and_pack_tokens_per_s": round(tokens / ours_s),
                        "ratio_to_raw_tokenizers": round(raw_s / ours_s, 2), "targets": {"ratio": ">= 0.5"}})


if __name__ == "__main__":
    main()
