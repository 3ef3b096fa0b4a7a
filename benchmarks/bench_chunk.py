"""(a) Chunking throughput and memory on a large log built from the Loghub samples.

Builds a ~1 GiB log (``--size-mb``) by concatenating the Loghub 2k samples, then times in the same run, each in
a child process: two baselines, plain text line reading (``for line in open(path)``: UTF-8 decoding and newline
translation, the work a chunker must do too) and raw binary line iteration (no decoding); ours = ``loganalyzer
chunk`` writing chunks.jsonl. Prints MB/s, ratios (target >= 0.5 of plain line reading) and the chunker's peak
RSS (target < 300 MB). Usage: ``python benchmarks/bench_chunk.py [--size-mb 1024] [--workdir /tmp/la-bench]``
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import loghub_logs, report

BASELINE = "import sys\nn = 0\nwith open(sys.argv[1], {mode}) as f:\n    for line in f:\n        n += 1\nprint(n)"
TEXT, BINARY = BASELINE.format(mode="encoding='utf-8'"), BASELINE.format(mode="'rb'")


def build_log(path: Path, size_mb: int) -> int:
    samples = b"".join(p.read_bytes().rstrip(b"\r\n") + b"\r\n" for p in loghub_logs())
    target = size_mb * 2**20
    with open(path, "wb") as f:
        written = 0
        while written < target:
            f.write(samples)
            written += len(samples)
    return written


def timed_child(cmd: list[str]) -> float:
    """Wall seconds of a child process."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of a child, measured by GNU time when present, else by the children's max RSS."""
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if out.returncode == 0 and out.stderr.strip().splitlines()[-1].isdigit():
        return int(out.stderr.strip().splitlines()[-1]) / 1024
    subprocess.run(cmd, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--workdir", default="/tmp/loganalyzer-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "Big_bench.log"
    size = build_log(log, args.size_mb)
    mb = size / 2**20
    ours = [sys.executable, "-m", "loganalyzer.chunk", "--logs", str(log), "--out", str(work / "chunks.jsonl")]
    timed_child([sys.executable, "-c", BINARY, str(log)])  # warm the page cache
    # Best of 2 for each, interleaved, so a noisy neighbour hurts all three alike.
    text_s, binary_s, ours_s = (min(t) for t in zip(*[(timed_child([sys.executable, "-c", TEXT, str(log)]),
                                                         timed_child([sys.executable, "-c", BINARY, str(log)]),
                                                         timed_child(ours)) for _ in range(2)], strict=True))
    report("chunk", {"input_mb": round(mb), "text_line_reading_mb_s": round(mb / text_s, 1),
                     "binary_line_iteration_mb_s": round(mb / binary_s, 1), "chunk_mb_s": round(mb / ours_s, 1),
                     "ratio_to_text_line_reading": round(text_s / ours_s, 2),
                     "ratio_to_binary_line_iteration": round(binary_s / ours_s, 2),
                     "chunk_peak_rss_mb": round(peak_rss_mb(ours), 1),
                     "targets": {"ratio_to_text_line_reading": ">= 0.5", "chunk_peak_rss_mb": "< 300"}})
    log.unlink()
    (work / "chunks.jsonl").unlink()


if __name__ == "__main__":
    main()
