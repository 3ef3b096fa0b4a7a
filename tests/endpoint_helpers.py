"""Loopback endpoints that fail before any answer, one per cause that ``openai_api.check_endpoint`` tells apart, and
the words each must be reported with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loganalyzer.serve import free_port
from loganalyzer.testing.fake_openai import FakeOpenAI

# cause -> what the error message must say (the model asked for is never "llama-3.1-8b")
BAD_ENDPOINTS = {
    "refused": "connection refused",
    "401": "HTTP 401, the key was refused",
    "403": "HTTP 403, the key was refused",
    "unknown_model": "is not served there (it lists: llama-3.1-8b)",
    "stalled": "no answer to GET /models within 5 s",
    "tls": "TLS error",
}


@contextmanager
def bad_endpoint(cause: str) -> Iterator[str]:
    """The ``…/v1`` URL of an endpoint failing by ``cause`` (a key of BAD_ENDPOINTS): a closed port, a server
    answering 401 or 403 to everything, one that serves only llama-3.1-8b, one that never answers, and https://
    to a plain-HTTP server."""
    if cause == "refused":
        yield f"http://127.0.0.1:{free_port()}/v1"
        return
    broken = {"401": "401", "403": "403", "stalled": "stall"}.get(cause, "")
    with FakeOpenAI(model="llama-3.1-8b", broken=broken) as srv:
        yield srv.base_url.replace("http://", "https://") if cause == "tls" else srv.base_url
