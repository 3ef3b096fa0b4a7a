"""(i) Redaction speed, and its cost inside ``synthesize``.

1. Throughput on the Loghub 2k samples (14 systems from ../shared/data, else the 4 bundled), with one planted
   secret line every 200 lines: ours = ``loganalyzer.redact.Redactor.redact`` once per 100-line chunk (analysis
   *and* replacement) vs plain Presidio, ``AnalyzerEngine.analyze`` line by line with the same recognizers and a
   blank spaCy pipeline (Presidio's usual set-up without a downloaded model); also line by line with Presidio's
   ``NoOpNlpEngine``, to show where the gain comes from. Lines/s and MB/s; target ours >= 2x the baseline.
2. Redaction's share of ``synthesize`` wall time against a loopback teacher with ``--latency`` (1 s) at
   concurrency 16, on chunks of the same logs: ``redact=on`` vs ``redact=off`` in the same run, in both orders,
   each a fresh ``loganalyzer synthesize`` process; share = (on - off) / on. Also the ``redaction.seconds`` the
   summary reports (redaction's own time, which runs in a thread beside the requests). Target under 5%.
Usage: ``python benchmarks/bench_redact.py [--latency 1.0] [--skip-synthesize]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import loghub_logs, report

from loganalyzer.testing.secrets import planted_secrets


def corpus() -> list[str]:
    lines = [ln for p in loghub_logs() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    secrets = [line.replace("\n", " ") for _, _, line in planted_secrets()]
    for i in range(0, len(lines), 200):
        lines.insert(i, secrets[(i // 200) % len(secrets)])
    return lines


def presidio_line_by_line(lines: list[str], nlp: str) -> tuple[float, Counter]:
    """Seconds for ``AnalyzerEngine.analyze`` on every line, our recognizers, ``nlp`` = blank | noop; and the
    findings per entity type."""
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine, SpacyNlpEngine

    from loganalyzer.redact import DEFAULT_PII, _recognizers

    class BlankSpacy(SpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}]) if nlp == "blank" else \
        NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    engine.load()
    analyzer = AnalyzerEngine(registry=RecognizerRegistry(recognizers=_recognizers(DEFAULT_PII),
                                                          supported_languages=["en"]),
                              nlp_engine=engine, supported_languages=["en"])
    analyzer.analyze(text=lines[0], language="en")  # compile the patterns outside the timing
    t0 = time.perf_counter()
    results = [analyzer.analyze(text=line, language="en") for line in lines]
    seconds = time.perf_counter() - t0
    return seconds, Counter(r.entity_type for rs in results for r in rs)


def ours(lines: list[str]) -> tuple[float, Counter]:
    """Seconds for ``Redactor.redact`` on 100-line chunks, and the replacements per entity type."""
    from loganalyzer.redact import Redactor

    r = Redactor()
    r.redact(lines[0])
    r.counts.clear()
    t0 = time.perf_counter()
    for i in range(0, len(lines), 100):
        r.redact("\n".join(lines[i:i + 100]))
    return time.perf_counter() - t0, r.counts


def synthesize_share(latency: float) -> dict:
    """``loganalyzer synthesize`` in a fresh process per run (so ``on`` pays Presidio's import, as a real run
    does), against one loopback server; runs alternate off, on, on, off."""
    from loganalyzer.chunk import ChunkConfig
    from loganalyzer.chunk import run as chunk
    from loganalyzer.testing.fake_openai import FakeOpenAI

    tmp = Path(tempfile.mkdtemp(prefix="bench-redact-"))
    chunks = tmp / "chunks.jsonl"
    chunk(ChunkConfig(logs=[str(p) for p in loghub_logs()], out=str(chunks)))
    walls: dict[str, list[float]] = {"on": [], "off": []}
    inner = []
    with FakeOpenAI(latency_s=latency) as srv:
        for i, mode in enumerate(("off", "on", "on", "off")):
            out = tmp / f"s{i}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "loganalyzer", "synthesize", "--chunks", str(chunks), "--out",
                            str(out), "--base-url", srv.base_url, "--model", "fake-teacher", "--concurrency", "16",
                            f"redact={mode}"], check=True, stderr=subprocess.DEVNULL)
            walls[mode].append(time.perf_counter() - t0)
            s = json.loads((out / "summary.json").read_text())
            if mode == "on":
                inner.append(s["redaction"]["seconds"])
    on, off = (sum(walls[m]) / 2 for m in ("on", "off"))
    return {"chunks": s["chunks"], "requests_per_run": s["asked"], "latency_s": latency, "concurrency": 16,
            "wall_s_on": [round(w, 2) for w in walls["on"]], "wall_s_off": [round(w, 2) for w in walls["off"]],
            "share_of_wall_time": round((on - off) / on, 4), "redaction_seconds_in_summary": inner}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--skip-synthesize", action="store_true")
    args = ap.parse_args()
    lines = corpus()
    mb = sum(len(ln.encode()) + 1 for ln in lines) / 1e6
    t_ours, _ = ours(lines)
    t_blank, _ = presidio_line_by_line(lines, "blank")
    t_noop, _ = presidio_line_by_line(lines, "noop")
    figures = {"lines": len(lines), "mb": round(mb, 2),
               "ours_lines_per_s": round(len(lines) / t_ours), "ours_mb_per_s": round(mb / t_ours, 2),
               "presidio_blank_spacy_lines_per_s": round(len(lines) / t_blank),
               "presidio_noop_lines_per_s": round(len(lines) / t_noop),
               "ours_vs_presidio_blank_spacy": round(t_blank / t_ours, 2),
               "ours_vs_presidio_noop": round(t_noop / t_ours, 2)}
    if not args.skip_synthesize:
        figures["synthesize"] = synthesize_share(args.latency)
    report("redact", figures)


if __name__ == "__main__":
    main()
