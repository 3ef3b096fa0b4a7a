"""Stage 3 — build the SFT chat splits and the CPT corpus from synthesized records (and NLPLog files).

Outputs in ``out``:

- ``sft_{train,val,test}.jsonl``: ``{id, chunk_id, task, system, messages}`` in chat form. Single-answer tasks:
  one user turn ``question + " Please answer in detail." + "\\n\\nLog content:\\n\\n" + log`` and the teacher's
  answer (the seed's format); ``conversation``: the teacher's messages with the log appended to the first user
  turn only.
- ``cpt_train.jsonl``: ``{"text": "Human: {instruction}\\nAssistant: {output}\\n"}`` (NLPLog format) from the
  given NLPLog JSON / JSON Lines files, log-parsing Q&A built from Loghub ground-truth templates
  (``loghub_structured``), and the ``nlplog_qa`` records **of train-split chunks only**, so CPT never sees a
  validation or test log.
- ``stats.json``: counts per task/system/split; token-length percentiles per dataset with the model's tokenizer
  (chat template applied to SFT rows) and the share above ``max_seq_length``. ``token_lengths.png``: histogram.
- ``rejects.jsonl``: records or NLPLog rows that could not be used, with the reason (``log_mismatch``: a record
  whose ``log_sha256`` is not that of its chunk in ``chunks``, e.g. synthesized from redacted chunks; pass the
  synthesize dir's ``chunks.redacted.jsonl`` then).

Splits are by chunk (no log in two splits), seeded and stratified by system: ``val_size`` and ``test_size`` count
chunks, and each chunk contributes one sample per task it has (the seed used 100 + 100 per task).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
from pydantic import Field

from loganalyzer.config import SEED, ConfigError, StageConfig, parse_config
from loganalyzer.io import JsonlWriter, read_jsonl
from loganalyzer.prompts import TEXT_TASKS, load_prompts
from loganalyzer.synthesize import log_sha256

log = logging.getLogger("loganalyzer.build_datasets")

SPLITS = ("train", "val", "test")
PERCENTILES = (50, 90, 95, 99)


class BuildDatasetsConfig(StageConfig):
    """Build SFT train/val/test (chat messages) and the CPT corpus (NLPLog text) with stats and a histogram."""

    chunks: str = Field(description="chunks JSON Lines (`loganalyzer chunk`)")
    synth: list[str] = Field([], description="synthesize output dirs (records.jsonl)")
    nlplog: list[str] = Field([], description="NLPLog JSON array or JSON Lines files for CPT")
    loghub_structured: list[str] = Field([], description="Loghub *_structured.csv files: template Q&A for CPT")
    out: str = Field(description="output directory")
    tokenizer: str | None = Field(None, description="model dir or hub id whose tokenizer measures lengths")
    max_seq_length: int = Field(8192, ge=16, description="report the share of samples above this length")
    val_size: int = Field(100, ge=0, description="chunks in the validation split")
    test_size: int = Field(100, ge=0, description="chunks in the test split")
    seed: int = SEED


def split_chunks(chunk_systems: dict[str, str], val_size: int, test_size: int, seed: int) -> dict[str, str]:
    """Assign chunk ids to splits: shuffle within each system, interleave systems, take test, then val.

    Raises ConfigError when ``val_size + test_size`` leaves no chunk for training.
    """
    if val_size + test_size >= len(chunk_systems):
        raise ConfigError(f"val_size ({val_size}) + test_size ({test_size}) must be below the number of chunks "
                          f"with records ({len(chunk_systems)}); lower them or synthesize more chunks")
    rng = random.Random(seed)
    by_system: dict[str, list[str]] = defaultdict(list)
    for cid in sorted(chunk_systems):
        by_system[chunk_systems[cid]].append(cid)
    for ids in by_system.values():
        rng.shuffle(ids)
    # Round-robin over systems so every split gets systems in proportion.
    order = [ids[i] for i in range(max(map(len, by_system.values()))) for ids in by_system.values() if i < len(ids)]
    return {cid: ("test" if i < test_size else "val" if i < test_size + val_size else "train")
            for i, cid in enumerate(order)}


def sft_messages(task: str, output, log_text: str) -> list[dict[str, str]]:
    """Chat messages of one SFT sample in the seed's format (see module docstring)."""
    prompts = load_prompts()
    if task in TEXT_TASKS:
        return [{"role": "user", "content": prompts.user_turn(task, log_text)},
                {"role": "assistant", "content": output}]
    if task == "conversation":
        msgs = [dict(m) for m in output]
        msgs[0]["content"] = prompts.with_log(msgs[0]["content"], log_text)
        return msgs
    raise ValueError(f"task {task!r} is not an SFT task")


def cpt_text(instruction: str, output: str) -> str:
    """The NLPLog CPT format: ``Human: {instruction}\\nAssistant: {output}\\n``."""
    return f"Human: {instruction}\nAssistant: {output}\n"


def read_nlplog(path: str) -> tuple[list[dict], list[dict]]:
    """Rows of an NLPLog file (JSON array or JSON Lines) and rejects for rows without instruction/output."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--nlplog {path}: no such file")
    with open(p, encoding="utf-8") as fh:
        first = fh.read(1)
        while first.isspace():
            first = fh.read(1)
    try:  # orjson parses the 599 MB NLPLog array from bytes, several times faster and leaner than json
        rows = orjson.loads(p.read_bytes()) if first == "[" else list(read_jsonl(p))
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise ConfigError(f"--nlplog {path}: not a JSON array or JSON Lines file ({exc})") from None
    good, bad = [], []
    for i, r in enumerate(rows):
        if isinstance(r, dict) and all(isinstance(r.get(k), str) and r[k].strip() for k in ("instruction", "output")):
            good.append(r)
        else:
            bad.append({"source": path, "index": i, "reason": "nlplog_row: needs non-empty instruction and output"})
    return good, bad


def loghub_template_qa(path: str) -> list[dict]:
    """NLPLog-style log-parsing Q&A from a Loghub ``*_structured.csv`` (ground-truth ``EventTemplate`` per line).

    One record per distinct event template, using its first occurrence: the question quotes the message, the
    answer gives the template and the values of its ``<*>`` parameters (by matching the template as a regex).
    Raises ConfigError for a missing file or one without ``Content``/``EventTemplate`` columns.
    """
    import csv
    import re

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--loghub-structured {path}: no such file")
    from loganalyzer.chunk import system_name

    system = system_name(p)
    seen: set[str] = set()
    out = []
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"Content", "EventTemplate"} <= set(reader.fieldnames or []):
            raise ConfigError(f"--loghub-structured {path}: needs Content and EventTemplate columns")
        for row in reader:
            template, content = row["EventTemplate"], row["Content"]
            if template in seen:
                continue
            seen.add(template)
            pattern = "^" + "(.*?)".join(re.escape(part) for part in template.split("<*>")) + "$"
            m = re.match(pattern, content, re.S)
            values = [v for v in (m.groups() if m else ())]
            where = f" from the {row['Component']} component" if row.get("Component") else ""
            answer = f"The event template of this {system} message{where} is:\n{template}\n"
            if values:
                answer += ("The parts shown as <*> are variable parameters that change between occurrences; "
                           "here they are: " + ", ".join(f"'{v}'" for v in values) + ". ")
            answer += "Everything else is the constant text the program logs for this event."
            out.append({"instruction": f"What is the event template of the {system} log message '{content}'? "
                                       f"Identify its variable parameters.",
                        "log": content, "output": answer, "domain": system})
    return out


def token_lengths(tokenizer, rows: list[dict], chat: bool) -> np.ndarray:
    """Token counts of SFT rows (chat template applied) or CPT rows (``text``), batched."""
    if not rows:
        return np.zeros(0, dtype=int)
    texts = ([tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows] if chat
             else [r["text"] for r in rows])
    lengths = []
    for i in range(0, len(texts), 256):
        enc = tokenizer(texts[i:i + 256], add_special_tokens=not chat)["input_ids"]
        lengths.extend(len(x) for x in enc)
    return np.array(lengths)


def length_stats(lengths: np.ndarray, max_seq_length: int) -> dict:
    if not len(lengths):
        return {"n": 0}
    return {"n": int(len(lengths)), "mean": float(lengths.mean()), "max": int(lengths.max()),
            **{f"p{q}": float(np.percentile(lengths, q)) for q in PERCENTILES},
            "share_above_max_seq_length": float((lengths > max_seq_length).mean())}


def plot_histogram(lengths: dict[str, np.ndarray], max_seq_length: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: v for k, v in lengths.items() if len(v)}
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    for ax, (name, v) in zip(axes[0], shown.items(), strict=True):
        ax.hist(v, bins=min(50, max(5, len(v) // 3)), color="#4472c4")
        ax.axvline(max_seq_length, color="#c00000", linestyle="--", label=f"max_seq_length={max_seq_length}")
        ax.set_title(f"{name} (n={len(v)}, p95={np.percentile(v, 95):.0f})")
        ax.set_xlabel("tokens per sample")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: BuildDatasetsConfig) -> dict:
    """Write the datasets, stats and histogram to ``cfg.out``; return the stats."""
    if not cfg.synth and not cfg.nlplog and not cfg.loghub_structured:
        raise ConfigError("give --synth (synthesize output dirs), --nlplog or --loghub-structured files")
    if not Path(cfg.chunks).is_file():
        raise ConfigError(f"--chunks {cfg.chunks}: no such file")
    chunks = {c["id"]: c for c in read_jsonl(cfg.chunks, required=("id", "content"))}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rejects: list[dict] = []
    records: list[dict] = []
    for d in cfg.synth:
        path = Path(d) / "records.jsonl"
        if not path.is_file():
            raise ConfigError(f"--synth {d}: no records.jsonl (run `loganalyzer synthesize` first)")
        mismatched, kept = 0, len(records)
        for r in read_jsonl(path, required=("chunk_id", "task", "output")):
            if r["chunk_id"] not in chunks:
                rejects.append({"chunk_id": r["chunk_id"], "task": r["task"],
                                "reason": "unknown_chunk: record's chunk_id is not in --chunks"})
            elif r.get("log_sha256") not in (None, log_sha256(chunks[r["chunk_id"]])):
                mismatched += 1
                rejects.append({"chunk_id": r["chunk_id"], "task": r["task"],
                                "reason": "log_mismatch: the teacher saw another text of this chunk (redacted?)"})
            else:
                records.append(r)
        if mismatched:
            hint = (f"the teacher saw the chunks of {Path(d) / 'chunks.redacted.jsonl'}: pass that file as --chunks "
                    "(an answer must be paired with the log it describes)")
            if kept == len(records):
                raise ConfigError(f"--synth {d}: none of its records were made from the logs in --chunks "
                                  f"{cfg.chunks}; {hint}")
            log.warning("--synth %s: %d records rejected (log_mismatch); %s", d, mismatched, hint)

    sft_chunk_systems = {r["chunk_id"]: chunks[r["chunk_id"]].get("system", "") for r in records}
    split_of = split_chunks(sft_chunk_systems, cfg.val_size, cfg.test_size, cfg.seed) if records else {}
    sft: dict[str, list[dict]] = {s: [] for s in SPLITS}
    cpt: list[dict] = []
    counts: Counter[str] = Counter()
    for r in records:
        chunk, split = chunks[r["chunk_id"]], split_of[r["chunk_id"]]
        if r["task"] == "nlplog_qa":
            if split == "train":
                cpt.extend({"text": cpt_text(q["instruction"], q["output"]), "source": "nlplog_qa",
                            "chunk_id": r["chunk_id"]} for q in r["output"])
                counts["cpt_from_nlplog_qa"] += len(r["output"])
            else:
                counts[f"nlplog_qa_held_out_{split}"] += len(r["output"])
            continue
        sft[split].append({"id": f"{r['chunk_id']}/{r['task']}", "chunk_id": r["chunk_id"], "task": r["task"],
                           "system": chunk.get("system", ""),
                           "messages": sft_messages(r["task"], r["output"], chunk["content"])})
    for path in cfg.nlplog:
        good, bad = read_nlplog(path)
        rejects.extend(bad)
        cpt.extend({"text": cpt_text(g["instruction"], g["output"]), "source": Path(path).name} for g in good)
        counts[f"cpt_from_{Path(path).name}"] += len(good)
    for path in cfg.loghub_structured:
        rows = loghub_template_qa(path)
        cpt.extend({"text": cpt_text(r["instruction"], r["output"]), "source": Path(path).name} for r in rows)
        counts[f"cpt_from_{Path(path).name}"] += len(rows)

    for split, rows in sft.items():
        rows.sort(key=lambda r: r["id"])
        with JsonlWriter(out / f"sft_{split}.jsonl") as w:
            for row in rows:
                w.write(row)
    with JsonlWriter(out / "cpt_train.jsonl") as w:
        for row in cpt:
            w.write(row)
    with JsonlWriter(out / "rejects.jsonl") as w:
        for row in rejects:
            w.write(row)

    per = {split: {"total": len(rows), "by_task": dict(Counter(r["task"] for r in rows)),
                   "by_system": dict(Counter(r["system"] for r in rows)),
                   "chunks": len({r["chunk_id"] for r in rows})} for split, rows in sft.items()}
    stats: dict = {"sft": per, "cpt": {"total": len(cpt)}, "counts": dict(counts), "rejects": len(rejects),
                   "max_seq_length": cfg.max_seq_length}
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        lengths = {f"sft_{s}": token_lengths(tokenizer, sft[s], chat=True) for s in SPLITS}
        lengths["cpt_train"] = token_lengths(tokenizer, cpt, chat=False)
        stats["token_lengths"] = {k: length_stats(v, cfg.max_seq_length) for k, v in lengths.items()}
        stats["tokenizer"] = cfg.tokenizer
        plot_histogram({"SFT train": lengths["sft_train"], "CPT corpus": lengths["cpt_train"]},
                       cfg.max_seq_length, out / "token_lengths.png")
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    log.info("build-datasets: sft train/val/test = %d/%d/%d, cpt = %d, rejects = %d",
             *(len(sft[s]) for s in SPLITS), len(cpt), len(rejects))
    from loganalyzer.tracking import log_stage

    log_stage("build-datasets", cfg.model_dump(), stats,
              [out / "stats.json", out / "token_lengths.png", out / "rejects.jsonl"])
    if not sft["train"] and not cpt:
        raise SystemExit("error: no usable SFT or CPT rows; see " + str(out / "rejects.jsonl"))
    return stats


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    stats = run(parse_config(BuildDatasetsConfig, "build-datasets", argv))
    print(json.dumps({k: stats[k] for k in ("sft", "cpt", "rejects")}, indent=2), file=sys.stderr)


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
