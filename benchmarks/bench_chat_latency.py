"""Chatbot overhead: time to first token and total latency through the chatbot's request path vs direct streaming.

    python benchmarks/bench_chat_latency.py [--requests 20] [--max-tokens 32]

One `loganalyzer serve` with a tiny local model (built here; no hub). For each real Loghub chunk (60 lines), the
Summarize request is sent two ways, alternating so drift hits both: **direct**, `openai` streaming with the
training-format prompt; **chatbot**, `loganalyzer.chat.Chat` (log attached, token budgeting, prompt building, model
lookup, streaming and history bookkeeping; everything the page does except drawing; one `Chat` per session with New
Chat between requests, as on the page). Greedy decoding and the same `max_tokens`, so both generate the same
tokens. Prints medians and the chatbot/direct ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import loghub_logs, report


def chunks(n: int, lines: int = 60) -> list[str]:
    out = []
    for path in loghub_logs():
        text = path.read_text(errors="replace").splitlines()
        out += ["\n".join(text[i:i + lines]) for i in range(0, min(len(text), 4 * lines), lines)]
    return (out * (n // len(out) + 1))[:n]


def timed(stream) -> tuple[float, float]:
    """(seconds to the first non-empty piece, seconds to the end) of an iterator of text pieces."""
    t0 = time.perf_counter()
    first = None
    for piece in stream:
        if piece and first is None:
            first = time.perf_counter() - t0
    return (first if first is not None else float("nan")), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()

    from openai import OpenAI

    from loganalyzer.chat import Chat, ChatConfig
    from loganalyzer.prompts import load_prompts
    from loganalyzer.serve import local_server
    from loganalyzer.tiny_model import TinyModelConfig, build

    logs = chunks(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"  # the tokenizer trains on JSON Lines text fields
        corpus.write_text("".join(json.dumps({"text": log}) + "\n" for log in logs))
        model = str(build(TinyModelConfig(out=str(Path(tmp) / "model"), corpus=[str(corpus)])))
        with local_server(model, log_file=Path(tmp) / "server.log") as url:
            client = OpenAI(base_url=url, api_key="none")

            def direct(log: str):
                messages = [{"role": "user", "content": load_prompts().user_turn("summarize", log)}]
                for c in client.chat.completions.create(model=model, messages=messages, stream=True,
                                                        max_tokens=args.max_tokens, temperature=0):
                    if c.choices and c.choices[0].delta.content:
                        yield c.choices[0].delta.content

            # one Chat per browser session, as on the page: New Chat keeps its client and the looked-up model
            chat = Chat(ChatConfig(endpoint=url, model="", max_tokens=args.max_tokens, temperature=0))

            def chatbot(log: str):
                chat.new_chat()
                chat.set_log(log)
                yield from chat.reply_stream(chat.ask(task="summarize"))

            timed(direct(logs[0]))  # warm-up: model in memory, connections open
            timed(chatbot(logs[0]))
            results = {"direct": [], "chatbot": []}
            for i, log in enumerate(logs):
                order = ("direct", "chatbot") if i % 2 == 0 else ("chatbot", "direct")
                for name in order:
                    results[name].append(timed((direct if name == "direct" else chatbot)(log)))

    med = {name: (statistics.median(t for t, _ in r), statistics.median(total for _, total in r))
           for name, r in results.items()}
    report("chat_latency", {
        "requests": args.requests, "max_tokens": args.max_tokens,
        "direct_ttft_ms": round(med["direct"][0] * 1000, 1), "direct_total_ms": round(med["direct"][1] * 1000, 1),
        "chatbot_ttft_ms": round(med["chatbot"][0] * 1000, 1),
        "chatbot_total_ms": round(med["chatbot"][1] * 1000, 1),
        "ttft_ratio": round(med["chatbot"][0] / med["direct"][0], 3),
        "total_ratio": round(med["chatbot"][1] / med["direct"][1], 3),
    })


if __name__ == "__main__":
    main()
