"""A loopback OpenAI-compatible chat server with deterministic fault injection, for tests and benchmarks.

``POST /v1/chat/completions`` answers each task's prompt with a valid reply (a text analysis, a conversation of
the requested length, NLPLog records quoting a real line of the log, or for the judge's rubric a verdict whose
three scores are ``1 + round(4 * difflib ratio(answer, reference))``), after ``latency_s``. Faults are keyed
by the request's prompt: attempt ``n`` of a prompt gets ``plan[n]`` of the fault plan chosen for it
(``schedule[hash(prompt) % len(schedule)]``), then succeeds. Faults: ``429`` (with ``Retry-After-Ms``), ``500``,
``timeout`` (sleeps ``timeout_sleep_s`` before answering), ``malformed`` (invalid JSON content for JSON tasks,
an empty reply for text tasks) and ``bad_body`` (an HTTP 200 whose body is not JSON). ``"stream": true`` gets the
reply as server-sent ``chat.completion.chunk`` events, one per word, then ``data: [DONE]``.

Not for production: it exists so that retries, validation and resume are tested against real HTTP.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import re
import threading
import time
from collections import defaultdict

DEFAULT_SCHEDULE: list[list[str]] = [[], ["429"], ["500", "500"], ["timeout"], ["malformed"], ["bad_body"],
                                     ["429", "malformed"], []]


def _reply_for(prompt: str) -> str:
    if _JUDGED in prompt:  # the judge's rubric (loganalyzer.judge): scores from the answer's likeness to the reference
        head, answer = prompt.rsplit(_JUDGED, 1)
        reference = head.rsplit("### Reference answer\n", 1)[-1]
        score = 1 + round(4 * difflib.SequenceMatcher(None, answer.strip(), reference.strip()).ratio())
        return json.dumps({"correctness": score, "completeness": score, "grounding": score,
                           "rationale": "fake judge: scored by likeness to the reference"})
    log_part = prompt.split("Log content:\n\n", 1)[-1]
    lines = [ln for ln in log_part.split("\n") if ln.strip()] or ["(empty)"]
    if '{"messages"' in prompt:
        n = int(re.search(r"exactly (\d+) messages", prompt).group(1))
        msgs = [{"role": "user" if i % 2 == 0 else "assistant",
                 "content": f"Turn {i + 1} about: {lines[i % len(lines)][:80]}"} for i in range(n)]
        return json.dumps({"messages": msgs})
    if '{"records"' in prompt:
        n = int(re.search(r"Write (\d+) interpretable", prompt).group(1))
        recs = [{"instruction": f"What does the log line '{ln}' mean? Explain thoroughly.", "log": ln,
                 "output": f"The line '{ln[:60]}' records an event of the system."} for ln in lines[:n]]
        return json.dumps({"records": recs})
    return (f"The log has {len(lines)} lines. It starts with: {lines[0][:100]}. "
            f"It ends with: {lines[-1][:100]}.")


_JUDGED = "### Answer to grade\n"
_REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error"}


class FakeOpenAI:
    """Run the server on ``host:port`` (default ``127.0.0.1``) in a background thread (``port=0`` picks a free one).

    One asyncio event loop serves every connection (HTTP/1.1 keep-alive), so hundreds of concurrent requests
    with latency cost almost no CPU and the server is never the bottleneck of a client benchmark.
    Attributes: ``base_url`` (``http://127.0.0.1:<port>/v1``, on loopback whatever ``host`` is bound), ``requests``
    (count), ``attempts`` (per prompt key), ``times`` (per prompt key: arrival timestamps, to check backoff),
    ``max_in_flight``, ``bodies`` (every chat request body).

    ``broken`` makes every request, ``GET /models`` included, fail the same way: ``"401"`` or ``"403"`` (a refused
    key), or ``"stall"`` (read and never answered: a server that accepts connections but hangs). ``schedule``
    instead injects faults into chat completions, per prompt.
    """

    def __init__(self, latency_s: float = 0.0, schedule: list[list[str]] | None = None,
                 timeout_sleep_s: float = 2.0, retry_after_ms: int = 50, model: str = "fake-teacher",
                 port: int = 0, host: str = "127.0.0.1", also_serves: tuple[str, ...] = (), broken: str = ""):
        if broken not in ("", "401", "403", "stall"):
            raise ValueError(f"broken={broken!r}: expected '', '401', '403' or 'stall'")
        self.broken = broken
        self.latency_s = latency_s
        self.schedule = schedule if schedule is not None else [[]]
        self.timeout_sleep_s = timeout_sleep_s
        self.retry_after_ms = retry_after_ms
        self.model = model
        self.also_serves = also_serves  # more ids for GET /models (a chat request may name any model)
        self.port = port
        self.host = host
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: dict[str, int] = defaultdict(int)
        self.bodies: list[dict] = []  # every chat request body, in arrival order
        self.times: dict[str, list[float]] = defaultdict(list)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def __exit__(self, *_: object) -> None:
        async def close_connections() -> None:  # keep-alive connections: end them while the loop still runs
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close_connections(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, self.host, self.port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def _fault(self, key: str) -> str:
        n = self.attempts[key]  # one event loop: no lock needed
        self.attempts[key] += 1
        self.times[key].append(time.monotonic())
        h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        plan = self.schedule[h % len(self.schedule)]
        return plan[n] if n < len(plan) else "ok"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(1)
            if first == b"\x16":  # a TLS ClientHello: answer it as any plain-HTTP server does
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            while True:
                head = first + await reader.readuntil(b"\r\n\r\n")
                first = b""
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                code, payload, extra = await self._respond(method, path, body)
                status = f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\n"
                hdrs = {"Content-Type": "application/json", "Content-Length": str(len(payload)), **extra}
                writer.write((status + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode()
                             + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # the client closed the connection (or timed out and went away)
        finally:
            writer.close()

    async def _respond(self, method: str, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        if self.broken == "stall":
            await asyncio.Event().wait()  # until __exit__ cancels it
        if self.broken:
            return int(self.broken), json.dumps({"error": {"message": "Incorrect API key provided",
                                                           "type": "invalid_request_error"}}).encode(), {}
        if method == "GET":
            if path.rstrip("/").endswith("/models"):
                return 200, json.dumps({"object": "list", "data": [
                    {"id": m, "object": "model", "owned_by": "fake"} for m in (self.model, *self.also_serves)]
                }).encode(), {}
            return 404, b'{"error": {"message": "not found"}}', {}
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._complete(json.loads(body))
        finally:
            self.in_flight -= 1

    async def _complete(self, body: dict) -> tuple[int, bytes, dict[str, str]]:
        self.bodies.append(body)
        prompt = body["messages"][-1]["content"]
        fault = self._fault(prompt)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault == "429":
            return (429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                    {"Retry-After-Ms": str(self.retry_after_ms)})
        if fault == "500":
            return 500, b'{"error": {"message": "internal error"}}', {}
        if fault == "timeout":
            await asyncio.sleep(self.timeout_sleep_s)
        if fault == "bad_body":
            return 200, b'{"id": "x", "choices": [ this is not json', {}
        content = _reply_for(prompt)
        if fault == "malformed":
            content = content[: len(content) // 2] if content.startswith("{") else ""
        if body.get("stream"):
            return 200, _sse(content, body.get("model", self.model), self.requests), {
                "Content-Type": "text/event-stream"}
        resp = {"id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                          "total_tokens": (len(prompt) + len(content)) // 4}}
        return 200, json.dumps(resp).encode(), {}


def _sse(content: str, model: str, n: int) -> bytes:
    """A streamed reply: one ``chat.completion.chunk`` per word, a final chunk with ``finish_reason``, [DONE]."""
    base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    words = re.findall(r"\S+\s*", content) or [""]
    events = [{**base, "choices": [{"index": 0, "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": w},
                                    "finish_reason": None}]} for i, w in enumerate(words)]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m loganalyzer.testing.fake_openai --port P [--latency S]``: run until interrupted."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--latency", type=float, default=0.0)
    args = p.parse_args(argv)
    with FakeOpenAI(latency_s=args.latency, port=args.port) as srv:
        print(f"serving on {srv.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
