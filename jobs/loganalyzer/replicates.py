"""Replicates: the same model trained with ``N`` seeds and evaluated on the same test set, so that a difference
between two models can be weighed against the difference seeds alone make.

``evaluate --models sft=DIR1 sft=DIR2 cpt_sft=DIR3 cpt_sft=DIR4``: a repeated name is another replicate of that
model, in order; its answers are scored as runs ``sft``, ``sft_r2``, ``sft_r3``... The report keeps the first
replicate at ``report[name]`` (every key as with one replicate) and adds ``report[name]["replicates"]``
(``summary``); with replicates of both ``sft`` and ``cpt_sft``, ``report["cpt_sft"]["vs_sft_pooled"]`` holds the
paired comparison pooled over replicates and the verdict of ``seed_verdict``.

The verdict, per metric: the difference is *distinguishable from seed noise* when both the paired bootstrap pooled
over replicates (``loganalyzer.metrics.paired_bootstrap_pooled``: test samples resampled, every replicate's
answers kept) and Welch's t-test between the replicates' metric values (the seeds as the samples; ``scipy``)
give p < ``ALPHA``, with at least ``MIN_SEEDS`` seeds (fewer: ``distinguishable`` is None, "too few seeds").
The first alone says the test set is large enough to see a difference between these
particular trained models; the second says that retraining with other seeds would likely keep it.
"""

from __future__ import annotations

import numpy as np

from loganalyzer.judge import CRITERIA
from loganalyzer.metrics import METRICS

ALPHA = 0.05
MIN_SEEDS = 3  # Welch's test on 2 values per side has about one degree of freedom: it can hardly reject


def expand(models: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``name=source`` items into ``({run: source}, {name: [runs]})``; the k-th repeat of a name is run
    ``name_rk``. Raises ValueError when a run name is also given as a model name."""
    runs: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for item in models:
        name, src = item.split("=", 1)
        group = groups.setdefault(name, [])
        run = name if not group else f"{name}_r{len(group) + 1}"
        if run in runs or (group and run in (i.split("=", 1)[0] for i in models)):
            raise ValueError(f"model name {run!r} is both given and the name of replicate {len(group) + 1} of {name!r}")
        group.append(run)
        runs[run] = src
    return runs, groups


def metric_values(entries: list[dict]) -> dict[str, list[float | None]]:
    """``{metric: [value per entry]}`` for the six metrics, ``grounding.<metric>`` and ``judge.<criterion>``."""
    out = {m: [e[m] for e in entries] for m in METRICS}
    for key, names in (("grounding", ("entity_precision", "entity_recall")), ("judge", CRITERIA)):
        if all(key in e for e in entries):
            out.update({f"{key}.{m}": [e[key][m] for e in entries] for m in names})
    return out


def summary(entries: list[dict], runs: list[str]) -> dict:
    """``{"n": R, "runs": [...], metric: {"mean", "sd", "values"}}`` over replicate entries, for the six metrics,
    ``grounding.<metric>`` and ``judge.<criterion>`` (sd with ``ddof=1``, ``None`` for one replicate; a replicate
    where a value is undefined is left out of its mean)."""
    out: dict = {"n": len(entries), "runs": runs}
    for m, vals in metric_values(entries).items():
        v = np.array([x for x in vals if x is not None], dtype=float)
        out[m] = {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                  "values": vals}
    return out


def seed_verdict(pooled: dict, sft: dict, cpt_sft: dict) -> dict:
    """Per metric ``{delta, p_value, ci95}`` of the pooled paired bootstrap plus ``seed_sd`` (pooled sd between
    seeds), ``welch_p`` (Welch's t-test, cpt_sft vs sft replicate values), ``distinguishable`` (bool, or None below
    ``MIN_SEEDS``) and ``words``."""
    from scipy import stats

    out = {}
    for m, c in pooled.items():
        a, b = np.array(sft[m]["values"], dtype=float), np.array(cpt_sft[m]["values"], dtype=float)
        seed_sd = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
        if seed_sd == 0:  # seeds changed nothing: any difference is beyond seed noise
            welch_p = 1.0 if a.mean() == b.mean() else 0.0
        else:
            welch_p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
        yes = c["p_value"] < ALPHA and welch_p < ALPHA if len(a) >= MIN_SEEDS else None
        verdict = {True: "beyond seed noise", False: "within seed noise",
                   None: f"not weighed against seed noise: {len(a)} seeds are too few (replicates >= {MIN_SEEDS})"}
        words = (f"{m}: cpt_sft - sft = {c['delta']:+.4f}, {verdict[yes]} "
                 f"(pooled paired bootstrap p = {c['p_value']:.3f}; across {len(a)} seeds Welch's t-test "
                 f"p = {welch_p:.3f}, sd between seeds {seed_sd:.4f})")
        out[m] = {**c, "seed_sd": seed_sd, "welch_p": welch_p, "distinguishable": yes, "words": words}
    return out
