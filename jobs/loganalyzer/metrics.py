"""Evaluation metrics (the seed's six) with bootstrap confidence intervals, used by ``evaluate`` and ``score``.

Definitions (all on a 0–1 scale, higher is better):

- ``fuzzy_match``: mean over samples of ``rapidfuzz.fuzz.ratio(pred, ref) / 100`` (normalised Indel similarity).
- ``bleu``: corpus BLEU-4 (Papineni et al., 2002), uniform weights, no smoothing, brevity penalty
  ``exp(1 - ref_len/sys_len)``, tokenised with sacrebleu's ``13a`` tokenizer, case-sensitive — the definition of
  Hugging Face ``evaluate``'s ``bleu`` (which ports tensorflow/nmt ``compute_bleu``) and of
  ``sacrebleu.corpus_bleu(..., tokenize="13a", smooth_method="none") / 100``.
- ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``: ``rouge_score.RougeScorer`` F-measure, no stemmer,
  default tokenizer; ``rougeLsum`` splits summaries on newlines. Averaged over samples: the deterministic form
  of ``evaluate``'s ``rouge`` (``use_aggregator=False`` then mean), avoiding its bootstrap aggregator.

Confidence intervals: percentile bootstrap over samples (Efron & Tibshirani 1993), BLEU recomputed from
resampled corpus statistics. Paired comparison: paired bootstrap resampling (Koehn, 2004), two-sided p-value.
Per-sample scores that may be undefined for a sample (grounding, the LLM judge) are summarised by
``summarize_defined`` / ``paired_defined``: the same bootstrap over the samples where they are defined.
Backends: ``auto`` (default) takes BLEU and ROUGE point values from ``evaluate``'s ``bleu`` and ``rouge`` modules
when they load (hub or cache) and otherwise computes the same definitions offline (``builtin``); every result
says which one it used (``metrics_backend``). ``evaluate`` insists on the hub modules; ``builtin`` never tries.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache

import numpy as np

from loganalyzer.config import SEED

log = logging.getLogger("loganalyzer.metrics")

METRICS = ("fuzzy_match", "bleu", "rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BLEU_ORDER = 4


@lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def bleu_stats(prediction: str, reference: str) -> np.ndarray:
    """Sufficient statistics of one sample: ``[matches_1..4, totals_1..4, sys_len, ref_len]`` (shape (10,))."""
    tok = _tokenizer_13a()
    hyp, ref = tok(prediction).split(), tok(reference).split()
    out = np.zeros(2 * BLEU_ORDER + 2, dtype=np.int64)
    for n in range(1, BLEU_ORDER + 1):
        h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        out[n - 1] = sum(min(c, r[g]) for g, c in h.items())
        out[BLEU_ORDER + n - 1] = max(0, len(hyp) - n + 1)
    out[-2], out[-1] = len(hyp), len(ref)
    return out


def bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU (0–1) from summed statistics; ``stats`` has shape (..., 10), the result shape (...)."""
    matches, totals = stats[..., :BLEU_ORDER].astype(float), stats[..., BLEU_ORDER:2 * BLEU_ORDER].astype(float)
    sys_len, ref_len = stats[..., -2].astype(float), stats[..., -1].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_prec = np.where(matches > 0, np.log(np.where(totals > 0, matches / totals, 1.0)), -np.inf)
        geo = np.exp(log_prec.mean(axis=-1))
        bp = np.where(sys_len >= ref_len, 1.0, np.exp(1.0 - ref_len / np.maximum(sys_len, 1e-9)))
    return np.where(sys_len > 0, np.nan_to_num(geo * bp, nan=0.0), 0.0)


def per_sample(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-sample scores: ``fuzzy_match`` and ROUGE as (n,) floats, ``bleu_stats`` as (n, 10) ints.

    Raises ValueError when the lists differ in length or are empty.
    """
    from rapidfuzz import fuzz

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    if not predictions:
        raise ValueError("no samples to score")
    scorer = _rouge_scorer()
    rouge = {k: np.empty(len(predictions)) for k in ROUGE_TYPES}
    for i, (p, r) in enumerate(zip(predictions, references, strict=True)):
        s = scorer.score(r, p)
        for k in ROUGE_TYPES:
            rouge[k][i] = s[k].fmeasure
    return {
        "fuzzy_match": np.array([fuzz.ratio(p, r) / 100.0 for p, r in zip(predictions, references, strict=True)]),
        "bleu_stats": np.stack([bleu_stats(p, r) for p, r in zip(predictions, references, strict=True)]),
        **rouge,
    }


def aggregate(scores: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The six metrics for index sets ``idx`` of shape (..., n) (default: all samples once)."""
    n = len(scores["fuzzy_match"])
    idx = np.arange(n) if idx is None else idx
    out = {"bleu": bleu_from_stats(scores["bleu_stats"][idx].sum(axis=-2))}
    for k in ("fuzzy_match", *ROUGE_TYPES):
        out[k] = scores[k][idx].mean(axis=-1)
    return {k: out[k] for k in METRICS}


_EVALUATE_MODULES: tuple | Exception | None = None  # loaded once per process; a failure is remembered too


def _evaluate_modules() -> tuple:
    """``evaluate``'s bleu and rouge modules; raises (the remembered) load error when they are not available."""
    global _EVALUATE_MODULES
    if _EVALUATE_MODULES is None:
        try:
            import evaluate

            _EVALUATE_MODULES = (evaluate.load("bleu"), evaluate.load("rouge"))
        except Exception as exc:  # offline, no cache, hub error: all mean "not available"
            _EVALUATE_MODULES = exc
            log.info("evaluate's hub metric modules are not available (%s: %s); computing the same definitions "
                     "with sacrebleu and rouge_score", type(exc).__name__, str(exc)[:120])
    if isinstance(_EVALUATE_MODULES, Exception):
        raise _EVALUATE_MODULES
    return _EVALUATE_MODULES


def _evaluate_values(predictions: list[str], references: list[str]) -> dict[str, float]:
    bleu_mod, rouge_mod = _evaluate_modules()
    out = {"bleu": float(bleu_mod.compute(predictions=predictions, references=[[r] for r in references])["bleu"])}
    r = rouge_mod.compute(predictions=predictions, references=references, use_aggregator=False)
    out.update({k: float(np.mean(r[k])) for k in ROUGE_TYPES})
    return out


def score(predictions: list[str], references: list[str], n_boot: int = 1000, seed: int = SEED,
          backend: str = "auto", scores: dict[str, np.ndarray] | None = None) -> dict:
    """Six metrics with 95% bootstrap CIs: ``{metric: value, metric + "_ci95": [lo, hi], "n": n,
    "metrics_backend": "evaluate" | "builtin"}``; CIs always come from the builtin per-sample scores
    (``scores``: ``per_sample(predictions, references)`` when the caller has them already).

    Raises ValueError for an unknown backend, and with ``backend="evaluate"`` the modules' load error.
    """
    if backend not in ("auto", "evaluate", "builtin"):
        raise ValueError(f"unknown metrics backend {backend!r} (auto, evaluate or builtin)")
    scores = per_sample(predictions, references) if scores is None else scores
    point = {k: float(v) for k, v in aggregate(scores).items()}
    used = "builtin"
    if backend != "builtin":
        try:
            point.update(_evaluate_values(predictions, references))
            used = "evaluate"
        except Exception:
            if backend == "evaluate":
                raise
    out: dict = {"metrics_backend": used}
    boot = bootstrap(scores, n_boot, seed)
    for k in METRICS:
        out[k] = point[k]
        out[k + "_ci95"] = [float(np.percentile(boot[k], 2.5)), float(np.percentile(boot[k], 97.5))]
    out["n"] = len(predictions)
    return out


def bootstrap(scores: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Metric values over ``n_boot`` resamples of the samples with replacement: {metric: (n_boot,)}."""
    n = len(scores["fuzzy_match"])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return aggregate(scores, idx)


def paired_bootstrap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = 1000,
                     seed: int = SEED) -> dict[str, dict[str, float]]:
    """Paired bootstrap (Koehn 2004) of system ``b`` vs ``a`` on the same samples.

    Returns ``{metric: {"delta": b - a, "p_value": two-sided p, "ci95": [lo, hi] of the delta}}``; the p-value is
    ``2 * min(P(delta* <= 0), P(delta* >= 0))`` over resamples, capped at 1.
    """
    return paired_bootstrap_pooled([a], [b], n_boot, seed)


def paired_bootstrap_pooled(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]], n_boot: int = 1000,
                            seed: int = SEED) -> dict[str, dict[str, float]]:
    """``paired_bootstrap`` pooled over replicates: ``a[r]`` and ``b[r]`` are replicate ``r`` of each system (for
    example trained with seed ``r``) on the same ``n`` test samples. A resample draws ``n`` test samples and takes
    every replicate's answers to them, so the test sample stays the unit of resampling and every resample holds
    all replicates (the seeds are not resampled: ``loganalyzer.replicates`` weighs them separately); each metric
    is computed over the pooled ``R * n`` answers (BLEU from pooled statistics).
    With one replicate this is ``paired_bootstrap``. Raises ValueError for different sample or replicate counts.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"pooled paired bootstrap needs as many replicates of each system ({len(a)} vs {len(b)})")
    n = len(a[0]["fuzzy_match"])
    if any(len(x["fuzzy_match"]) != n for x in (*a, *b)):
        raise ValueError("paired bootstrap needs the same samples for both systems")
    pool_a, pool_b = ({k: np.concatenate([x[k] for x in runs]) for k in runs[0]} for runs in (a, b))
    rows = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    idx = (rows[:, None, :] + n * np.arange(len(a))[None, :, None]).reshape(n_boot, len(a) * n)
    ra, rb = aggregate(pool_a, idx), aggregate(pool_b, idx)
    pa, pb = aggregate(pool_a), aggregate(pool_b)
    return {k: _delta(float(pb[k] - pa[k]), rb[k] - ra[k]) for k in METRICS}


def _delta(delta: float, boot: np.ndarray) -> dict:
    """``{delta, p_value, ci95}`` of a paired difference from its bootstrap distribution ``boot``: two-sided
    ``p = 2 * min(P(d* <= 0), P(d* >= 0))`` capped at 1, percentile 95% CI."""
    p = min(1.0, 2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return {"delta": delta, "p_value": p, "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def summarize_defined(scores: dict[str, np.ndarray], names: tuple[str, ...], n_boot: int = 1000,
                      seed: int = SEED) -> dict:
    """Means of per-sample scores that are NaN where undefined, with percentile-bootstrap 95% CIs over the
    defined samples: ``{name: mean | None, name + "_ci95": [lo, hi] | None, name + "_n": samples defined}``."""
    out: dict = {}
    for k in names:
        x = np.asarray(scores[k], dtype=float)
        v = x[~np.isnan(x)]
        out[k + "_n"] = len(v)
        if not len(v):
            out[k], out[k + "_ci95"] = None, None
            continue
        boot = v[np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
        out[k] = float(v.mean())
        out[k + "_ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return out


def paired_defined(a: dict[str, np.ndarray], b: dict[str, np.ndarray], names: tuple[str, ...],
                   n_boot: int = 1000, seed: int = SEED) -> dict:
    """Paired bootstrap of ``b`` vs ``a`` per score over the samples where both are defined (not NaN):
    ``{name: {"delta", "p_value", "ci95", "n"}}``, p two-sided as in ``paired_bootstrap``; ``None`` values when no
    sample has both. Raises ValueError when ``a`` and ``b`` have different lengths."""
    out = {}
    for k in names:
        x, y = np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"{k}: paired samples differ in number ({len(x)} vs {len(y)})")
        both = ~np.isnan(x) & ~np.isnan(y)
        if not both.any():
            out[k] = {"delta": None, "p_value": None, "ci95": None, "n": 0}
            continue
        d = y[both] - x[both]
        boot = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
        out[k] = {**_delta(float(d.mean()), boot), "n": int(both.sum())}
    return out
