"""A loopback OpenAI-compatible chat server with deterministic fault injection, for tests and benchmarks.

``POST /v1/chat/completions`` answers each task's prompt with a valid reply (a text analysis, a conversation of
the requested length, or NLPLog records quoting a real line of the log), after ``latency_s``. Faults are keyed
by the request's prompt: attempt ``n`` of a prompt gets ``plan[n]`` of the fault plan chosen for it
(``schedule[hash(prompt) % len(schedule)]``), then succeeds. Faults: ``429`` (with ``Retry-After-Ms``), ``500``,
``timeout`` (sleeps ``timeout_sleep_s`` before answering), ``malformed`` (invalid JSON content for JSON tasks,
an empty reply for text tasks) and ``bad_body`` (an HTTP 200 whose body is not JSON).

Not for production: it exists so that retries, validation and resume are tested against real HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_SCHEDULE: list[list[str]] = [[], ["429"], ["500", "500"], ["timeout"], ["malformed"], ["bad_body"],
                                     ["429", "malformed"], []]


def _reply_for(prompt: str) -> str:
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


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # clients that time out hang up: expected
        pass


class FakeOpenAI:
    """Run the server on ``127.0.0.1:<port>`` in a background thread (``port=0`` picks a free one).

    Attributes: ``base_url`` (``http://127.0.0.1:<port>/v1``), ``requests`` (count), ``attempts`` (per prompt
    key), ``times`` (per prompt key: arrival timestamps, to check backoff), ``max_in_flight``.
    """

    def __init__(self, latency_s: float = 0.0, schedule: list[list[str]] | None = None,
                 timeout_sleep_s: float = 2.0, retry_after_ms: int = 50, model: str = "fake-teacher",
                 port: int = 0):
        self.latency_s = latency_s
        self.schedule = schedule if schedule is not None else [[]]
        self.timeout_sleep_s = timeout_sleep_s
        self.retry_after_ms = retry_after_ms
        self.model = model
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: dict[str, int] = defaultdict(int)
        self.times: dict[str, list[float]] = defaultdict(list)
        self._server = _QuietServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fault(self, key: str) -> str:
        with self.lock:
            n = self.attempts[key]
            self.attempts[key] += 1
            self.times[key].append(time.monotonic())
        h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
        plan = self.schedule[h % len(self.schedule)]
        return plan[n] if n < len(plan) else "ok"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": fake.model, "object": "model", "owned_by": "fake"}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with fake.lock:
                    fake.requests += 1
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._complete(body)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _complete(self, body: dict) -> None:
                prompt = body["messages"][-1]["content"]
                fault = fake._fault(prompt)
                if fake.latency_s:
                    time.sleep(fake.latency_s)
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                                      {"Retry-After-Ms": str(fake.retry_after_ms)})
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if fault == "timeout":
                    time.sleep(fake.timeout_sleep_s)
                if fault == "bad_body":
                    return self._send(200, b'{"id": "x", "choices": [ this is not json')
                content = _reply_for(prompt)
                if fault == "malformed":
                    content = content[: len(content) // 2] if content.startswith("{") else ""
                resp = {"id": f"chatcmpl-{fake.requests}", "object": "chat.completion",
                        "created": int(time.time()), "model": body.get("model", fake.model),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                                  "total_tokens": (len(prompt) + len(content)) // 4}}
                try:
                    self._send(200, json.dumps(resp).encode())
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
                    pass

        return Handler


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
