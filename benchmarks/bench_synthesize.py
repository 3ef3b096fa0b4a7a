"""(b) Synthesis client throughput against a loopback OpenAI-compatible server with fixed latency.

Starts ``loganalyzer.testing.fake_openai`` in its own process (``--latency``, default 0.2 s per request), then
times, in the same run: ours = ``loganalyzer synthesize`` (async, ``--concurrency`` 64) and the seed's approach, a
16-thread pool of blocking ``openai`` calls. Prints requests/s, the ratio of ours to the ideal
``concurrency / latency`` (target >= 0.8 at 64) and to the thread pool.
Usage: ``python benchmarks/bench_synthesize.py [--requests 2560] [--concurrency 64] [--latency 0.2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import report

from loganalyzer.serve import free_port
from loganalyzer.synthesize import SynthesizeConfig, run


def wait_ready(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/models", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("fake server did not start")


def thread_pool_rps(base_url: str, prompts: list[str], threads: int) -> float:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="x")

    def ask(p: str) -> str:
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": p}],
                                              max_tokens=16).choices[0].message.content

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(ask, prompts))
    return len(prompts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2560)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--pool-threads", type=int, default=16)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "loganalyzer.testing.fake_openai", "--port", str(port),
                               "--latency", str(args.latency)], stdout=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(base_url)
        with tempfile.TemporaryDirectory() as tmp:
            chunks = Path(tmp) / "chunks.jsonl"
            chunks.write_text("".join(json.dumps({"id": f"c{i}", "system": "B", "content": f"line {i}\nnext"}) + "\n"
                                      for i in range(args.requests)))
            summary = run(SynthesizeConfig(chunks=str(chunks), out=str(Path(tmp) / "out"), tasks=["summarize"],
                                           base_url=base_url, model="m", concurrency=args.concurrency,
                                           max_tokens=16))
        ours = summary["accepted"] / summary["seconds"]
        pool_prompts = [f"pool {i}\n\nLog content:\n\nline {i}" for i in range(args.requests // 4)]
        pool = thread_pool_rps(base_url, pool_prompts, args.pool_threads)
    finally:
        server.terminate()
    ideal = args.concurrency / args.latency
    report("synthesize", {"requests": args.requests, "latency_s": args.latency, "concurrency": args.concurrency,
                          "accepted": summary["accepted"], "ours_requests_per_s": round(ours, 1),
                          "ideal_requests_per_s": round(ideal, 1), "ratio_to_ideal": round(ours / ideal, 2),
                          f"thread_pool_{args.pool_threads}_requests_per_s": round(pool, 1),
                          "ratio_to_thread_pool": round(ours / pool, 2), "targets": {"ratio_to_ideal": ">= 0.8"}})


if __name__ == "__main__":
    main()
