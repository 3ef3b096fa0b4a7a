"""Stage 5 — answer the SFT test split with each model (greedy) and score the answers.

``loganalyzer evaluate --test datasets/sft_test.jsonl --models base=DIR sft=DIR cpt_sft=DIR --out eval/``

The test set is ``build-datasets``' ``sft_test.jsonl`` or a published one in ShareGPT or Alpaca form
(``loganalyzer.eval_sets``). Each test row is scored on its last assistant message: the prompt is every message
before it (one user turn for single-answer tasks, the history for conversations). Decoding is fixed and greedy
(``do_sample=False``, ``max_new_tokens``), either in-process (batched HF generation, left padding) or, with
``--endpoint URL``, through any OpenAI-compatible server (``temperature=0``; ``name=MODEL`` then names the served
model). Toward an endpoint that is not on loopback the prompts are redacted first (``redact: auto``, see
``loganalyzer.redact``), and the references with the same pseudonyms, so that answers are scored against what the
model was shown; ``redaction.json`` then holds the counts.

Writes ``predictions_<name>.jsonl`` ({id, task, system, prediction, reference}), ``report.json``
(``{name: {six metrics, <metric>_ci95, n, per_task: {task: {n, six metrics}}}}`` (per-task values from the
builtin definitions), and for ``cpt_sft`` when ``sft`` is present
``vs_sft: {metric: {delta, p_value, ci95}}`` from a paired bootstrap; ``grounding`` per model and
``vs_sft_grounding``: entity precision against the log and recall against the reference, ``loganalyzer.grounding``),
``report.md`` (tables),
``metrics.png`` (bar chart with CIs) and ``report.html`` (both in one page).
Metric definitions: ``loganalyzer.metrics``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from loganalyzer import grounding
from loganalyzer.config import ConfigError, parse_config
from loganalyzer.eval_sets import load_eval_set
from loganalyzer.io import JsonlWriter
from loganalyzer.metrics import METRICS, aggregate, paired_bootstrap, per_sample, score
from loganalyzer.redact import RedactionSettings

log = logging.getLogger("loganalyzer.evaluate")


class EvaluateConfig(RedactionSettings):
    """Generate answers for the test split with each model and compare them (six metrics, CIs, p-value)."""

    test: str = Field(description="test set: build-datasets' sft_test.jsonl, or a ShareGPT or Alpaca JSON/JSON "
                                   "Lines file (loganalyzer.eval_sets)")
    models: list[str] = Field(description="name=model_dir (or name=served_model with --endpoint)")
    out: str = Field(description="output directory")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL (…/v1) instead of in-process")
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1, description="in-process generation batch")
    concurrency: int = Field(8, ge=1, description="requests in flight with --endpoint")
    limit: int | None = Field(None, ge=1, description="only the first N test rows")
    n_boot: int = Field(1000, ge=10)
    seed: int = 1309
    metrics_backend: str = Field("auto", description="auto (evaluate's modules if they load), evaluate, builtin")

    @field_validator("models")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        for item in v:
            if "=" not in item or not item.split("=", 1)[0]:
                raise ValueError(f"{item!r} is not name=model")
        if len({i.split('=', 1)[0] for i in v}) != len(v):
            raise ValueError("model names must be unique")
        return v


def prompt_and_reference(row: dict) -> tuple[list[dict], str]:
    """Split a chat sample into the prompt (all messages before the last assistant one) and its reference."""
    msgs = row["messages"]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError(f"test row {row.get('id')} has no assistant message")
    return msgs[:last], msgs[last]["content"]


def generate_local(model_dir: str, prompts: list[list[dict]], cfg: EvaluateConfig) -> list[str]:
    """Greedy answers from a model dir, batched by prompt length; order follows ``prompts``."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from loganalyzer.hardware import inference_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, inference_dtype())).to(device).eval()
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    lengths = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(texts)
    for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"generate {Path(model_dir).name}", unit="batch"):
        idx = order[start:start + cfg.batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=cfg.max_new_tokens,
                                 pad_token_id=tok.pad_token_id)
        for i, seq in zip(idx, out[:, enc["input_ids"].shape[1]:], strict=True):
            answers[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return answers


def generate_endpoint(model: str, prompts: list[list[dict]], cfg: EvaluateConfig) -> list[str]:
    """Greedy answers from an OpenAI-compatible endpoint (``temperature=0``), ``concurrency`` at a time."""
    import os

    from openai import OpenAI
    from tqdm import tqdm

    client = OpenAI(base_url=cfg.endpoint, api_key=os.environ.get("OPENAI_API_KEY", "not-needed"), max_retries=6)

    def ask(p: list[dict]) -> str:
        r = client.chat.completions.create(model=model, messages=p, temperature=0, max_tokens=cfg.max_new_tokens)
        return (r.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        return list(tqdm(pool.map(ask, prompts), total=len(prompts), desc=f"generate {model}", unit="req"))


def redact_for_endpoint(cfg: EvaluateConfig, prompts: list[list[dict]], refs: list[str],
                        out: Path) -> tuple[list[list[dict]], list[str]]:
    """Prompts and references redacted with one pseudonym space when ``cfg.redact`` is active toward
    ``cfg.endpoint`` (counts in ``out/redaction.json``); unchanged otherwise."""
    from loganalyzer.redact import Redactor, describe, redaction_active

    if not redaction_active(cfg.redact, cfg.endpoint, "evaluate"):
        return prompts, refs
    redactor = Redactor(cfg.pii_entities)
    new_prompts, new_refs = [], []
    for prompt, ref in zip(prompts, refs, strict=True):  # the prompt first: its pseudonyms carry to the reference
        new_prompts.append([{**m, "content": redactor.redact(m["content"])[0]} for m in prompt])
        new_refs.append(redactor.redact(ref)[0])
    counts = dict(sorted(redactor.counts.items()))
    (out / "redaction.json").write_text(json.dumps({"endpoint": cfg.endpoint, "counts": counts}, indent=2))
    log.info("evaluate: redacted before sending to %s: %s", cfg.endpoint, describe(counts) or "nothing to replace")
    return new_prompts, new_refs


def example(rows: list[dict], predictions: dict[str, list[str]]) -> dict:
    """One test question shown in full with the reference and every model's answer: the first ``summarize`` row
    (else the first row). The log itself is replaced by its line count."""
    from loganalyzer.prompts import load_prompts

    i = next((k for k, r in enumerate(rows) if r.get("task") == "summarize"), 0)
    prompt, reference = prompt_and_reference(rows[i])
    question, _, log_text = prompt[-1]["content"].partition(load_prompts().log_header)
    if log_text:
        question += f"\n\n[the log: {len(log_text.splitlines())} lines]"
    return {"id": rows[i]["id"], "question": question, "reference": reference,
            "answers": {name: preds[i] for name, preds in predictions.items()}}


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty answer)").splitlines())


def markdown_report(report: dict, shown: dict | None = None) -> str:
    names = list(report)
    lines = ["| model | n | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name in names:
        r = report[name]
        cells = [f"{r[m]:.4f} [{r[m + '_ci95'][0]:.3f}, {r[m + '_ci95'][1]:.3f}]" for m in METRICS]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    if "vs_sft" in report.get("cpt_sft", {}):
        lines += ["", "**cpt_sft vs sft** (paired bootstrap, two-sided):", "",
                  "| metric | delta | 95% CI of delta | p-value |", "|---|---|---|---|"]
        for m, c in report["cpt_sft"]["vs_sft"].items():
            lo, hi = c["ci95"]
            lines.append(f"| {m} | {c['delta']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {c['p_value']:.3f} |")
    lines += ["", "Grounding (`loganalyzer.grounding`): entity precision against the log (stated hosts, IPs, ids, "
              "users, ... that occur in it) and entity recall against the reference:", "",
              "| model | entity_precision | n | entity_recall | n |", "|---|---|---|---|---|"]
    for name in names:
        g = report[name].get("grounding", {})
        cells = [(f"{g[m]:.3f} [{g[m + '_ci95'][0]:.3f}, {g[m + '_ci95'][1]:.3f}]" if g.get(m) is not None else "-",
                  g.get(m + "_n", 0)) for m in grounding.GROUNDING_METRICS]
        lines.append(f"| {name} | " + " | ".join(f"{c} | {n}" for c, n in cells) + " |")
    for m, c in report.get("cpt_sft", {}).get("vs_sft_grounding", {}).items():
        if c["delta"] is not None:
            lines.append(f"\ncpt_sft vs sft, {m}: {c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], "
                         f"p = {c['p_value']:.3f} (paired, {c['n']} samples)")
    lines += ["", "Per task (ROUGE-1 / fuzzy match):", "", "| task | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for task in sorted({t for n in names for t in report[n]["per_task"]}):
        cells = [f"{report[n]['per_task'][task]['rouge1']:.3f} / {report[n]['per_task'][task]['fuzzy_match']:.3f}"
                 if task in report[n]["per_task"] else "-" for n in names]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if shown:
        lines += ["", f"**Example** (test row `{shown['id']}`)", "", "Question:", "", _quote(shown["question"]), "",
                  "Reference:", "", _quote(shown["reference"])]
        for name, answer in shown["answers"].items():
            lines += ["", f"{name}:", "", _quote(answer)]
    return "\n".join(lines) + "\n"


def html_report(report: dict, chart: Path, shown: dict | None = None) -> str:
    """The Markdown report as one self-contained HTML page with the metrics chart inlined (KFP's HTML viewer)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_report(report, shown))
    png = base64.b64encode(chart.read_bytes()).decode()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>loganalyzer evaluation</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px}"
            f"</style></head><body><h2>loganalyzer evaluation</h2>{body}"
            f"<img alt='metrics by model' src='data:image/png;base64,{png}'></body></html>\n")


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    x = np.arange(len(METRICS))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, name in enumerate(names):
        vals = np.array([report[name][m] for m in METRICS])
        ci = np.array([report[name][m + "_ci95"] for m in METRICS])
        err = np.clip(np.stack([vals - ci[:, 0], ci[:, 1] - vals]), 0, None)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, METRICS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (0-1), 95% bootstrap CI")
    ax.set_title(f"Test split (n={report[names[0]]['n']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: EvaluateConfig) -> dict:
    """Generate, score and write the report; return it."""
    from loganalyzer.tracking import stage_run

    if not Path(cfg.test).is_file():
        raise ConfigError(f"--test {cfg.test}: no such file")
    try:
        rows = load_eval_set(cfg.test)[: cfg.limit]
    except ValueError as exc:
        raise ConfigError(f"--test: {exc}") from None
    if not rows:
        raise ConfigError(f"--test {cfg.test}: no test rows")
    pairs = [prompt_and_reference(r) for r in rows]
    prompts, refs = [p for p, _ in pairs], [r for _, r in pairs]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.endpoint:
        prompts, refs = redact_for_endpoint(cfg, prompts, refs, out)
    models = dict(item.split("=", 1) for item in cfg.models)
    if not cfg.endpoint:  # a hub id ("org/name") is fine; a path that does not exist is not
        missing = {n: d for n, d in models.items()
                   if not Path(d).is_dir() and (d.startswith(("/", ".", "~")) or d.count("/") != 1)}
        if missing:
            raise ConfigError(f"--models: no such model dir(s) {missing} (give a model dir or a hub id org/name)")
    report: dict = {}
    samples: dict[str, dict] = {}
    grounding_samples: dict[str, dict] = {}
    predictions: dict[str, list[str]] = {}
    logs = ["\n".join(m["content"] for m in p) for p in prompts]  # what each answer may quote
    with stage_run("evaluate", cfg.model_dump()) as tracker:
        for name, src in models.items():
            preds = generate_endpoint(src, prompts, cfg) if cfg.endpoint else generate_local(src, prompts, cfg)
            with JsonlWriter(out / f"predictions_{name}.jsonl") as w:
                for row, p, r in zip(rows, preds, refs, strict=True):
                    w.write({"id": row["id"], "task": row.get("task"), "system": row.get("system"),
                             "prediction": p, "reference": r})
            predictions[name] = preds
            samples[name] = per_sample(preds, refs)  # computed once: CIs, per-task and paired bootstrap use it
            entry = score(preds, refs, n_boot=cfg.n_boot, seed=cfg.seed, backend=cfg.metrics_backend,
                          scores=samples[name])
            by_task: dict[str, list[int]] = defaultdict(list)
            for i, row in enumerate(rows):
                by_task[row.get("task", "all")].append(i)
            entry["per_task"] = {t: {"n": len(ix), **{m: float(v) for m, v in
                                                       aggregate(samples[name], np.array(ix)).items()}}
                                 for t, ix in sorted(by_task.items())}
            grounding_samples[name] = grounding.per_sample(preds, refs, logs)
            entry["grounding"] = grounding.summarize(grounding_samples[name], cfg.n_boot, cfg.seed)
            entry["source"] = f"{cfg.endpoint} {src}" if cfg.endpoint else src
            if not cfg.endpoint:
                from loganalyzer.hardware import inference_dtype

                entry["dtype"] = inference_dtype()
            report[name] = entry
            tracker.log_metrics({f"{name}.{m}": entry[m] for m in METRICS})
            tracker.log_metrics({f"{name}.{m}": entry["grounding"][m] for m in grounding.GROUNDING_METRICS
                                 if entry["grounding"][m] is not None})
            log.info("%s: %s", name, {m: round(entry[m], 4) for m in METRICS})
        if "cpt_sft" in samples and "sft" in samples:
            report["cpt_sft"]["vs_sft"] = paired_bootstrap(samples["sft"], samples["cpt_sft"], cfg.n_boot, cfg.seed)
            report["cpt_sft"]["vs_sft_grounding"] = grounding.paired(grounding_samples["sft"],
                                                                     grounding_samples["cpt_sft"], cfg.n_boot, cfg.seed)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        shown = example(rows, predictions)
        (out / "report.md").write_text(markdown_report(report, shown))
        plot_report(report, out / "metrics.png")
        (out / "report.html").write_text(html_report(report, out / "metrics.png", shown))
        tracker.log_artifact(out)
    return report


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(EvaluateConfig, "evaluate", argv)
    run(cfg)
    print((Path(cfg.out) / "report.md").read_text())


if __name__ == "__main__":
    main()
