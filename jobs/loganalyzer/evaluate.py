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

``--eval-set [NAME=]FILE`` (repeatable) adds test sets in any of the same forms; each gets its own section:
``report[model]["eval_sets"][NAME]`` holds the scores of the top-level entry (metrics, CIs, per task, grounding,
judge, replicates, ``vs_sft*`` under ``cpt_sft``; not ``source``, ``dtype``, the timing) plus ``file``, and the
set's files go to ``eval_sets/NAME/``. Every model answers all
sets in one load. With ``--judge-endpoint URL --judge-model NAME`` an LLM judge grades every answer 1–5
(``loganalyzer.judge``): ``report[model]["judge"]`` and ``report["cpt_sft"]["vs_sft_judge"]``.
Each model entry also carries ``generate_s_per_100`` (seconds per 100 answers, all sets). A model named more than
once in ``--models`` has replicates: ``report[model]["replicates"]`` (mean ± sd over seeds) and
``report["cpt_sft"]["vs_sft_pooled"]`` (``loganalyzer.replicates``).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from loganalyzer import grounding, judge, replicates
from loganalyzer.config import SEED, ConfigError, parse_config
from loganalyzer.eval_sets import load_eval_set
from loganalyzer.io import JsonlWriter
from loganalyzer.judge import JudgeSettings
from loganalyzer.metrics import (
    METRICS,
    aggregate,
    paired_bootstrap,
    paired_bootstrap_pooled,
    paired_defined,
    per_sample,
    score,
    summarize_defined,
)
from loganalyzer.redact import RedactionSettings

log = logging.getLogger("loganalyzer.evaluate")


class EvaluateConfig(RedactionSettings, JudgeSettings):
    """Generate answers for the test split with each model and compare them (six metrics, CIs, p-value)."""

    test: str = Field(description="test set: build-datasets' sft_test.jsonl, or a ShareGPT or Alpaca JSON/JSON "
                                   "Lines file (loganalyzer.eval_sets)")
    eval_set: list[str] = Field([], description="more test sets in the same forms, one report section each: "
                                                 "FILE or NAME=FILE (NAME defaults to the file's stem)")
    models: list[str] = Field(description="name=model_dir (or name=served_model with --endpoint); a repeated name is "
                                          "another replicate of that model (loganalyzer.replicates)")
    out: str = Field(description="output directory")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL (…/v1) instead of in-process")
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1, description="in-process generation batch")
    concurrency: int = Field(8, ge=1, description="requests in flight with --endpoint")
    limit: int | None = Field(None, ge=1, description="only the first N test rows")
    n_boot: int = Field(1000, ge=10)
    seed: int = SEED
    metrics_backend: str = Field("auto", description="auto (evaluate's modules if they load), evaluate, builtin")

    @field_validator("models")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        for item in v:
            if "=" not in item or not item.split("=", 1)[0]:
                raise ValueError(f"{item!r} is not name=model")
        replicates.expand(v)  # replicate names must not clash with given names
        return v

    @field_validator("eval_set")
    @classmethod
    def _named_sets(cls, v: list[str]) -> list[str]:
        named = [item if "=" in item else f"{Path(item).stem}={item}" for item in v]
        names = [item.split("=", 1)[0] for item in named]
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", n)]
        if bad:
            raise ValueError(f"eval set name(s) {bad} must be letters, digits, '_' or '-' (name a set: NAME=FILE)")
        if len(set(names)) != len(names) or "test" in names:
            raise ValueError(f"eval set names {names} must be unique and not 'test' (name them: NAME=FILE)")
        return named


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
    from openai import OpenAI
    from tqdm import tqdm

    from loganalyzer.openai_api import api_key

    client = OpenAI(base_url=cfg.endpoint, api_key=api_key(cfg.endpoint, "--endpoint"), max_retries=6)

    def ask(p: list[dict]) -> str:
        r = client.chat.completions.create(model=model, messages=p, temperature=0, max_tokens=cfg.max_new_tokens)
        return (r.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        return list(tqdm(pool.map(ask, prompts), total=len(prompts), desc=f"generate {model}", unit="req"))


def redact_for_endpoint(cfg: EvaluateConfig, prompts: list[list[dict]], refs: list[str],
                        out: Path) -> tuple[list[list[dict]], list[str]]:
    """Prompts and references redacted with one pseudonym space when ``cfg.redact`` is active toward
    ``cfg.endpoint`` (counts in ``out/redaction.json``); unchanged otherwise."""
    from loganalyzer.redact import redact_together, redaction_active

    if not redaction_active(cfg.redact, cfg.endpoint, "evaluate"):
        return prompts, refs
    # per sample the prompt first: its pseudonyms carry to the reference
    rows, counts = redact_together([[m["content"] for m in p] + [r] for p, r in zip(prompts, refs, strict=True)],
                                   cfg.pii_entities, f"evaluate's endpoint {cfg.endpoint}")
    (out / "redaction.json").write_text(json.dumps({"endpoint": cfg.endpoint, "counts": counts}, indent=2))
    return ([[{**m, "content": t} for m, t in zip(p, row, strict=False)] for p, row in zip(prompts, rows, strict=True)],
            [row[-1] for row in rows])


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


def _ci(value: float | None, ci: list | None, fmt: str = ".3f") -> str:
    return "-" if value is None else f"{value:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _set_tables(report: dict) -> list[str]:
    """The Markdown tables of one test set's ``{model: entry}``."""
    names = list(report)
    lines = ["| model | n | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name in names:
        r = report[name]
        lines.append(f"| {name} | {r['n']} | " + " | ".join(_ci(r[m], r[m + "_ci95"], ".4f") for m in METRICS) + " |")
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
        cells = [(_ci(g.get(m), g.get(m + "_ci95")), g.get(m + "_n", 0)) for m in grounding.GROUNDING_METRICS]
        lines.append(f"| {name} | " + " | ".join(f"{c} | {n}" for c, n in cells) + " |")
    lines += _paired_lines(report, "vs_sft_grounding")
    if any("judge" in report[n] for n in names):
        j = next(report[n]["judge"] for n in names if "judge" in report[n])
        lines += ["", f"LLM judge (`loganalyzer.judge`, rubric v{j['rubric_version']}, judge `{j['judge_model']}`): "
                  "1-5, mean [95% CI] over the answers judged; rejects could not be judged:", "",
                  "| model | " + " | ".join(judge.CRITERIA) + " | judged | rejects |",
                  "|---|" + "---|" * (len(judge.CRITERIA) + 2)]
        for name in names:
            j = report[name].get("judge", {})
            cells = [_ci(j.get(c), j.get(c + "_ci95"), ".2f") for c in judge.CRITERIA]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {j.get(judge.CRITERIA[0] + '_n', 0)} | "
                         f"{j.get('rejects', '-')} |")
        lines += _paired_lines(report, "vs_sft_judge")
    if any("replicates" in report[n] for n in names):
        lines += ["", "Replicates (`loganalyzer.replicates`; the tables above show the first): mean ± sd over seeds:",
                  "", "| model | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for name in names:
            rep = report[name].get("replicates")
            if rep:
                lines.append(f"| {name} | {rep['n']} | " + " | ".join(
                    f"{rep[m]['mean']:.4f} ± {rep[m]['sd']:.4f}" for m in METRICS) + " |")
        for c in report.get("cpt_sft", {}).get("vs_sft_pooled", {}).values():
            lines += ["", "- " + c["words"]]
    lines += ["", "Per task (ROUGE-1 / fuzzy match):", "", "| task | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for task in sorted({t for n in names for t in report[n]["per_task"]}):
        cells = [f"{report[n]['per_task'][task]['rouge1']:.3f} / {report[n]['per_task'][task]['fuzzy_match']:.3f}"
                 if task in report[n]["per_task"] else "-" for n in names]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _paired_lines(report: dict, key: str) -> list[str]:
    return [f"\ncpt_sft vs sft, {m}: {c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}], "
            f"p = {c['p_value']:.3f} (paired, {c['n']} samples)"
            for m, c in report.get("cpt_sft", {}).get(key, {}).items() if c["delta"] is not None]


def markdown_report(report: dict, shown: dict | None = None) -> str:
    """Tables of the test set, the example, then one section per ``--eval-set``."""
    lines = _set_tables(report)
    if shown:
        lines += ["", f"**Example** (test row `{shown['id']}`)", "", "Question:", "", _quote(shown["question"]), "",
                  "Reference:", "", _quote(shown["reference"])]
        for name, answer in shown["answers"].items():
            lines += ["", f"{name}:", "", _quote(answer)]
    first = next(iter(report.values()))
    for set_name, entry in first.get("eval_sets", {}).items():
        lines += ["", f"## Eval set `{set_name}` ({entry['file']}, n = {entry['n']})", ""]
        lines += _set_tables({name: r["eval_sets"][set_name] for name, r in report.items()})
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


@dataclass
class EvalSet:
    """One test set: its rows, the prompts and references as the models see them, and where its files go."""

    name: str
    file: str
    out: Path
    rows: list[dict]
    prompts: list[list[dict]]
    refs: list[str]
    predictions: dict[str, list[str]] = field(default_factory=dict)


def load_set(name: str, file: str, out: Path, limit: int | None, flag: str) -> EvalSet:
    """Read a test set (``loganalyzer.eval_sets``); raises ConfigError naming ``flag`` and the file."""
    if not Path(file).is_file():
        raise ConfigError(f"{flag} {file}: no such file")
    try:
        rows = load_eval_set(file)[:limit]
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if not rows:
        raise ConfigError(f"{flag} {file}: no test rows")
    pairs = [prompt_and_reference(r) for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    return EvalSet(name, file, out, rows, [p for p, _ in pairs], [r for _, r in pairs])


def score_set(cfg: EvaluateConfig, s: EvalSet, tracker, groups: dict[str, list[str]], prefix: str = "") -> dict:
    """``{model: entry}`` for one set (see the module docstring); writes its predictions and judge files.
    ``groups``: each model's replicate runs (``replicates.expand``); later replicates fold into the first's entry."""
    report: dict = {}
    samples: dict[str, dict] = {}
    grounding_samples: dict[str, dict] = {}
    logs = ["\n".join(m["content"] for m in p) for p in s.prompts]  # what each answer may quote
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(s.rows):
        by_task[row.get("task", "all")].append(i)
    for name, preds in s.predictions.items():
        with JsonlWriter(s.out / f"predictions_{name}.jsonl") as w:
            for row, p, r in zip(s.rows, preds, s.refs, strict=True):
                w.write({"id": row["id"], "task": row.get("task"), "system": row.get("system"),
                         "prediction": p, "reference": r})
        samples[name] = per_sample(preds, s.refs)  # computed once: CIs, per-task and paired bootstrap use it
        entry = score(preds, s.refs, n_boot=cfg.n_boot, seed=cfg.seed, backend=cfg.metrics_backend,
                      scores=samples[name])
        entry["per_task"] = {t: {"n": len(ix), **{m: float(v) for m, v in
                                                   aggregate(samples[name], np.array(ix)).items()}}
                             for t, ix in sorted(by_task.items())}
        grounding_samples[name] = grounding.per_sample(preds, s.refs, logs)
        entry["grounding"] = grounding.summarize(grounding_samples[name], cfg.n_boot, cfg.seed)
        report[name] = entry
        tracker.log_metrics({f"{prefix}{name}.{m}": entry[m] for m in METRICS})
        tracker.log_metrics({f"{prefix}{name}.{m}": entry["grounding"][m] for m in grounding.GROUNDING_METRICS
                             if entry["grounding"][m] is not None})
        log.info("%s%s: %s", prefix, name, {m: round(entry[m], 4) for m in METRICS})
    judge_scores = {}
    if cfg.judge_endpoint:
        judge_scores, info = judge.judge(cfg, [r["id"] for r in s.rows], s.prompts, s.refs, s.predictions, s.out)
        per_100 = round(100 * info["seconds"] / max(1, len(s.rows) * len(s.predictions)), 2)
        for name, scores in judge_scores.items():
            report[name]["judge"] = {**summarize_defined(scores, judge.CRITERIA, cfg.n_boot, cfg.seed),
                                     "rejects": info["rejects"][name], "judge_model": info["judge_model"],
                                     "endpoint": info["endpoint"], "rubric_version": info["rubric_version"],
                                     "s_per_100_answers": per_100, "redaction": info["redaction"]}
            tracker.log_metrics({f"{prefix}{name}.judge_{c}": report[name]["judge"][c] for c in judge.CRITERIA
                                 if report[name]["judge"][c] is not None})
    if "cpt_sft" in samples and "sft" in samples:
        report["cpt_sft"]["vs_sft"] = paired_bootstrap(samples["sft"], samples["cpt_sft"], cfg.n_boot, cfg.seed)
        report["cpt_sft"]["vs_sft_grounding"] = grounding.paired(grounding_samples["sft"],
                                                                 grounding_samples["cpt_sft"], cfg.n_boot, cfg.seed)
        if judge_scores:
            report["cpt_sft"]["vs_sft_judge"] = paired_defined(judge_scores["sft"], judge_scores["cpt_sft"],
                                                               judge.CRITERIA, cfg.n_boot, cfg.seed)
    for name, runs in groups.items():
        if len(runs) > 1:
            report[name]["replicates"] = replicates.summary([report[r] for r in runs], runs)
    pair = groups.get("sft", []), groups.get("cpt_sft", [])
    if len(pair[0]) > 1 and len(pair[0]) == len(pair[1]):
        pooled = paired_bootstrap_pooled([samples[r] for r in pair[0]], [samples[r] for r in pair[1]], cfg.n_boot,
                                         cfg.seed)
        report["cpt_sft"]["vs_sft_pooled"] = replicates.seed_verdict(pooled, report["sft"]["replicates"],
                                                                     report["cpt_sft"]["replicates"])
    for runs in groups.values():
        for r in runs[1:]:
            del report[r]
    return report


def run(cfg: EvaluateConfig) -> dict:
    """Generate, score and write the report; return it."""
    import time

    from loganalyzer.tracking import stage_run

    out = Path(cfg.out)
    sets = [load_set("test", cfg.test, out, cfg.limit, "--test")]
    for item in cfg.eval_set:
        name, file = item.split("=", 1)
        sets.append(load_set(name, file, out / "eval_sets" / name, cfg.limit, "--eval-set"))
    models, groups = replicates.expand(cfg.models)
    from loganalyzer.openai_api import check_endpoint

    if cfg.endpoint:  # wrong endpoints fail here in seconds, before hours of generation
        check_endpoint(cfg.endpoint, list(models.values()), "--endpoint")
    if cfg.judge_endpoint:
        check_endpoint(cfg.judge_endpoint, [cfg.judge_model], "--judge-endpoint")
    if cfg.endpoint:
        for s in sets:
            s.prompts, s.refs = redact_for_endpoint(cfg, s.prompts, s.refs, s.out)
    if len(groups.get("sft", [])) != len(groups.get("cpt_sft", [])) and max(map(len, groups.values())) > 1:
        log.warning("evaluate: %d sft and %d cpt_sft replicates: no pooled comparison (it needs as many of each)",
                    len(groups.get("sft", [])), len(groups.get("cpt_sft", [])))
    if not cfg.endpoint:  # a hub id ("org/name") is fine; a path that does not exist is not
        missing = {n: d for n, d in models.items()
                   if not Path(d).is_dir() and (d.startswith(("/", ".", "~")) or d.count("/") != 1)}
        if missing:
            raise ConfigError(f"--models: no such model dir(s) {missing} (give a model dir or a hub id org/name)")
    prompts = [p for s in sets for p in s.prompts]
    with stage_run("evaluate", cfg.model_dump()) as tracker:
        seconds: dict[str, float] = {}
        for name, src in models.items():  # one model load answers every set
            t0 = time.perf_counter()
            preds = generate_endpoint(src, prompts, cfg) if cfg.endpoint else generate_local(src, prompts, cfg)
            seconds[name] = time.perf_counter() - t0
            start = 0
            for s in sets:
                s.predictions[name], start = preds[start:start + len(s.rows)], start + len(s.rows)
        reports = [score_set(cfg, s, tracker, groups, "" if s.name == "test" else f"{s.name}.") for s in sets]
        report = reports[0]
        for name, runs in groups.items():
            src = models[name]
            report[name]["source"] = f"{cfg.endpoint} {src}" if cfg.endpoint else src
            report[name]["generate_s_per_100"] = round(100 * seconds[name] / len(prompts), 2)
            if len(runs) > 1:
                report[name]["replicates"]["sources"] = [models[r] for r in runs]
            if not cfg.endpoint:
                from loganalyzer.hardware import inference_dtype

                report[name]["dtype"] = inference_dtype()
            for s, r in zip(sets[1:], reports[1:], strict=True):
                report[name].setdefault("eval_sets", {})[s.name] = {"file": s.file, **r[name]}
        (out / "report.json").write_text(json.dumps(report, indent=2))
        if not cfg.endpoint:
            tag_registered_versions(cfg, report, groups, models)
        shown = example(sets[0].rows, sets[0].predictions)
        (out / "report.md").write_text(markdown_report(report, shown))
        plot_report(report, out / "metrics.png")
        (out / "report.html").write_text(html_report(report, out / "metrics.png", shown))
        tracker.log_artifact(out)
    return report


def tag_registered_versions(cfg: EvaluateConfig, report: dict, groups: dict[str, list[str]],
                            models: dict[str, str]) -> None:
    """Each model dir registered by ``train`` (``loganalyzer.registry.RECORD``) gets its own scores on the test
    set as ``eval.*`` tags on its registry version (tracking on)."""
    from loganalyzer import registry
    from loganalyzer.tracking import enabled

    if not enabled():
        return
    for name, runs in groups.items():
        entry = report[name]
        values = ({m: v["values"] for m, v in entry["replicates"].items() if isinstance(v, dict) and "values" in v}
                  if "replicates" in entry else replicates.metric_values([entry]))
        for i, run_name in enumerate(runs):
            try:
                record = registry.tag_evaluation(models[run_name], {m: v[i] for m, v in values.items()},
                                                 {"eval.n": str(entry["n"]), "eval.test": cfg.test,
                                                  "eval.report": str(Path(cfg.out).resolve() / "report.json")})
            except Exception as exc:  # the report stands without the tags
                log.error("%s: could not tag its registry version with the scores (%s: %s)", run_name,
                          type(exc).__name__, exc)
                continue
            if record:
                log.info("%s: scores tagged on %s version %s", run_name, record["name"], record["version"])


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(EvaluateConfig, "evaluate", argv)
    run(cfg)
    print((Path(cfg.out) / "report.md").read_text())


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
