"""Grounding metrics: the checkable specifics an answer states, checked against the log and the reference.

Similarity metrics (``loganalyzer.metrics``) say how close an answer's wording is to the teacher's. These say
whether its details are real. ``SPECIFICS`` is the one definition of what counts as a specific:

==============  =================================================================================================
kind            matched as
==============  =================================================================================================
``ip``          dotted IPv4 addresses (each octet <= 255), without a ``:port``
``block``       HDFS block ids ``blk_[-]N``
``host``        host names with a dash and a number (``node-12``, ``ip-10-0-3-7``, ``R02-M1-N0``)
``user``        user names after ``user``, ``invalid user``, ``ruser=``/``user=``, sshd's ``for NAME from``
``pid``         ``[N]`` after a program name (syslog), ``pid N``/``pid=N``, ``process N``
``code``        hex codes ``0x…``, ``errno N``, exception and error class names (``IOException``, ``EACCES``)
``path``        absolute file paths with two or more parts (``/var/log/secure``)
``timestamp``   ``YYYY-MM-DD hh:mm[:ss]``, ``hh:mm:ss``, HDFS's ``yymmdd hhmmss``, syslog's ``Mon dd hh:mm:ss``
``count``       any other integer the text states (answers only; counts are derived, not quoted)
==============  =================================================================================================

- ``entity_precision`` of an answer: the share of its specifics (all kinds but ``count``) that occur in the log
  text it was given (case-insensitively). Low means invented hosts, users, ids. Undefined (``None``) for an
  answer that states none.
- ``entity_recall`` of an answer: the share of the reference's specifics (all kinds, ``count`` included) that the
  answer states too. Undefined for a reference that states none.

Both are averaged over the samples where they are defined, with percentile-bootstrap 95% CIs and a paired
bootstrap between two models over the samples where both are defined (as ``loganalyzer.metrics`` does for the
similarity metrics). The report gives the number of samples each one covers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import numpy as np

from loganalyzer.config import SEED
from loganalyzer.metrics import paired_defined, summarize_defined

GROUNDING_METRICS = ("entity_precision", "entity_recall")

_MON = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
# Order matters: a span taken by an earlier kind is not matched again (a timestamp's digits are not counts).
SPECIFICS: tuple[tuple[str, re.Pattern], ...] = tuple((k, re.compile(p)) for k, p in (
    ("timestamp", rf"\b\d{{4}}-\d{{2}}-\d{{2}}[ T]\d{{2}}:\d{{2}}(?::\d{{2}})?(?:[.,]\d+)?\b|\b{_MON} +\d{{1,2}} "
                  r"\d{2}:\d{2}:\d{2}\b|\b\d{6} \d{6}\b|\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"),
    ("ip", r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)"),
    ("block", r"\bblk_-?\d+\b"),
    ("path", r"(?<![\w.])(?:/[\w.@+-]+){2,}/?"),
    ("code", r"\b0x[0-9A-Fa-f]+\b|\berrno[ =:]*\d+\b|\b[A-Z]\w*(?:Exception|Error)\b|\bE[A-Z]{3,}\b"),
    ("user", r"(?i:\binvalid user |\buser[ =:]+|\bruser=|\bfor (?=\S+ from\b))(?P<v>[A-Za-z_][\w.-]{0,31})"),
    ("pid", r"(?<=[A-Za-z)])\[(?P<v>\d{2,})\]|(?i:\bpid[ =:#]*|\bprocess )(?P<v2>\d+)\b"),
    ("host", r"\b[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*-\d[A-Za-z0-9]*(?:-[A-Za-z0-9]+)*\b"),
    ("count", r"(?<![\w.:/-])\d+(?![\w.:/-]*\w)"),
))


def specifics(text: str) -> set[tuple[str, str]]:
    """``{(kind, value)}`` stated in ``text`` (see ``SPECIFICS``); values as written, users lower-cased."""
    found: set[tuple[str, str]] = set()
    taken = np.zeros(len(text) + 1, dtype=bool)
    for kind, rx in SPECIFICS:
        for m in rx.finditer(text):
            if taken[m.start():m.end()].any():
                continue
            value = next((m.group(g) for g in ("v", "v2") if g in rx.groupindex and m.group(g)), m.group(0))
            if kind == "ip" and not _is_ipv4(value):
                continue
            if kind == "path":  # a path that ends a sentence
                value = value.rstrip(".")
            taken[m.start():m.end()] = True
            found.add((kind, value.lower() if kind == "user" else value))
    return found


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def sample_scores(answer: str, reference: str, log_text: str) -> tuple[float, float]:
    """``(entity_precision, entity_recall)`` of one answer; NaN where undefined (see the module docstring)."""
    stated = specifics(answer)
    checkable = [v for k, v in stated if k != "count"]
    low = log_text.lower()
    precision = sum(v.lower() in low for v in checkable) / len(checkable) if checkable else float("nan")
    wanted = specifics(reference)
    recall = len(wanted & stated) / len(wanted) if wanted else float("nan")
    return precision, recall


def per_sample(answers: Iterable[str], references: Iterable[str], logs: Iterable[str]) -> dict[str, np.ndarray]:
    """``{metric: (n,) float array}`` with NaN where a metric is undefined for a sample."""
    rows = [sample_scores(a, r, lg) for a, r, lg in zip(answers, references, logs, strict=True)]
    arr = np.array(rows, dtype=float).reshape(-1, 2)
    return {"entity_precision": arr[:, 0], "entity_recall": arr[:, 1]}


def summarize(scores: dict[str, np.ndarray], n_boot: int = 1000, seed: int = SEED) -> dict:
    """``{metric: mean | None, metric + "_ci95": [lo, hi] | None, metric + "_n": samples where defined}``."""
    return summarize_defined(scores, GROUNDING_METRICS, n_boot, seed)


def paired(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = 1000, seed: int = SEED) -> dict:
    """Paired bootstrap of ``b`` vs ``a`` per metric over the samples where both are defined:
    ``{metric: {"delta", "p_value", "ci95", "n"}}`` (``None`` values when no sample has both)."""
    return paired_defined(a, b, GROUNDING_METRICS, n_boot, seed)
