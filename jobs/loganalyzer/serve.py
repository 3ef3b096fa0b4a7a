"""Stage 6 (local) — an OpenAI-compatible server for a model dir: ``transformers serve`` on loopback.

``loganalyzer serve --model DIR [--port 8000] [--host 127.0.0.1]`` preloads the model and serves
``POST /v1/chat/completions`` (streaming and not), ``GET /v1/models`` (the served model first) and ``GET /health``
until interrupted. Any
``openai`` client reaches it at ``http://HOST:PORT/v1``; the demo uses it as the teacher when no
``OPENAI_API_KEY`` is set. In the cluster KServe serves the same model (see the serving manifests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from loganalyzer.cli import STOP_SIGNALS
from loganalyzer.config import ConfigError, StageConfig, parse_config

log = logging.getLogger("loganalyzer.serve")


class ServeConfig(StageConfig):
    """Serve a model dir with an OpenAI-compatible API (transformers serve)."""

    model: str = Field(description="model directory (or hub id)")
    port: int = Field(8000, ge=1, le=65535)
    host: str = Field("127.0.0.1", description="bind address; loopback by default")
    device: str = Field("auto", description="auto, cpu, cuda:0 ...")
    dtype: str = Field("auto")
    shutdown_timeout_s: float = Field(
        5.0, gt=0, description="on SIGTERM/SIGINT, seconds to let requests in flight finish before they are "
        "cancelled (a client that gave up leaves its generation running until then)")


def command(cfg: ServeConfig) -> list[str]:
    """The ``transformers serve`` argument list for ``cfg``."""
    return ["serve", cfg.model, "--host", cfg.host, "--port", str(cfg.port), "--device", cfg.device,
            "--dtype", cfg.dtype]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    """Poll ``url`` until it answers 200. Raises RuntimeError (with the tail of ``log_path``) when ``proc`` exits
    first, or when ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not healthy after {timeout_s}s; log: {log_path}")
        time.sleep(0.5)


@contextlib.contextmanager
def local_server(model: str, port: int | None = None, startup_timeout_s: float = 300.0,
                 log_file: str | Path | None = None) -> Iterator[str]:
    """Run ``loganalyzer serve`` for ``model`` in a subprocess on loopback; yield its ``…/v1`` base URL.

    Raises RuntimeError (with the server's log tail) when it exits or is not healthy within the timeout.
    """
    port = port or free_port()
    log_path = Path(log_file) if log_file else Path(f"/tmp/loganalyzer-serve-{port}.log")
    with open(log_path, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "loganalyzer.serve", "--model", str(model), "--port",
                                 str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, startup_timeout_s, log_path)
        log.info("local model server for %s at http://127.0.0.1:%d/v1 (log %s)", model, port, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def exit_at_once(signum: int, _frame) -> None:
    """Exit 128 + ``signum`` without the interpreter's shutdown (threads still running are not waited for)."""
    log.info("stopped by %s", signal.Signals(signum).name)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(ServeConfig, "serve", argv)
    if "/" in cfg.model and not Path(cfg.model).exists() and cfg.model.startswith((".", "/")):
        raise ConfigError(f"--model {cfg.model}: no such directory")
    from huggingface_hub import constants
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.transformers import main as transformers_cli

    # `GET /v1/models` scans the hub cache and answers 500 when the directory does not exist.
    Path(constants.HF_HUB_CACHE).mkdir(parents=True, exist_ok=True)
    # ...and it never lists the preloaded model, which is the only one this server answers with: list it first,
    # as vLLM and KServe do, so clients can take "the first model the endpoint lists".
    cached = ModelManager.get_gen_models
    served = {"id": cfg.model, "object": "model", "created": 0, "owned_by": "loganalyzer"}
    ModelManager.get_gen_models = staticmethod(lambda cache_dir=None: [served, *cached(cache_dir)])

    log.info("serving %s at http://%s:%d/v1", cfg.model, cfg.host, cfg.port)
    # uvicorn stops on SIGTERM/SIGINT, then raises the signal again with the handler it found: this one. Generations
    # cancelled by the shutdown bound below still run in their threads, inside torch, and an interpreter exit under
    # them aborts (SIGABRT, "terminate called without an active exception"): end the process at once, with the
    # status a shell gives that signal (143/130). Python's own SIGINT handler would give "Aborted!" and exit 1.
    for sig in STOP_SIGNALS:
        signal.signal(sig, exit_at_once)
    # transformers serve builds uvicorn's Config without a graceful-shutdown bound, so a stop waited for every
    # generation in flight, abandoned ones included (over a minute seen here): bound it.
    import uvicorn

    class BoundedShutdownConfig(uvicorn.Config):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("timeout_graceful_shutdown", cfg.shutdown_timeout_s)
            super().__init__(*args, **kwargs)

    uvicorn.Config = BoundedShutdownConfig
    sys.argv = ["transformers", *command(cfg)]
    transformers_cli()


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
