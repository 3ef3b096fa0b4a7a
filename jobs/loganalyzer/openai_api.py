"""Requests to OpenAI-compatible chat endpoints, shared by ``synthesize`` (the teacher) and ``evaluate``'s LLM
judge: one client setup and one ask-validate-re-ask loop.

HTTP retries (429, 408, 409, 5xx, connection errors, timeouts) are the ``openai`` client's: exponential backoff
with jitter, honouring ``Retry-After``; ``max_retries`` sets how many. A reply that arrives but does not satisfy
the caller's format (``validate`` raises ``InvalidReply``) is asked again ``validation_retries`` times, then
returned as a reject with the last reason.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

OPENAI_BASE_URL = "https://api.openai.com/v1"


class InvalidReply(ValueError):
    """The endpoint answered, but the reply does not satisfy the expected format."""


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_json_reply(text: str) -> Any:
    """JSON from a reply, with or without a Markdown code fence; raises InvalidReply(``malformed_json: …``)."""
    m = _FENCE.match(text)
    try:
        return json.loads(m.group(1) if m else text)
    except json.JSONDecodeError as exc:
        raise InvalidReply(f"malformed_json: {exc.msg} at char {exc.pos}") from None


def api_key(base_url: str, flag: str = "--base-url") -> str:
    """``OPENAI_API_KEY``, or a placeholder for endpoints other than the OpenAI API (vLLM, ``loganalyzer serve``,
    ``transformers serve`` ignore it). Raises ConfigError when the OpenAI API is the endpoint and no key is set
    (``flag`` names the option to change in the message)."""
    from loganalyzer.config import ConfigError

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        if base_url.rstrip("/") == OPENAI_BASE_URL:
            raise ConfigError(f"OPENAI_API_KEY is not set; set it, or point {flag} at another endpoint")
        key = "not-needed"
    return key


def async_client(base_url: str, timeout: float, max_retries: int, flag: str = "--base-url"):
    """An ``openai.AsyncOpenAI`` for ``base_url`` with the key of ``api_key``."""
    from openai import AsyncOpenAI, DefaultAioHttpClient

    key = api_key(base_url, flag)
    # aiohttp transport: the SDK's documented choice for high concurrency (its default pool scans every
    # connection per request, which costs more CPU than the request itself at concurrency 64).
    return AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries,
                       http_client=DefaultAioHttpClient(timeout=timeout))


CHECK_TIMEOUT_S = 5.0


def _connection_cause(exc: BaseException) -> tuple[str, str]:
    """(what happened, how to fix it) for a connection that failed, from the chain of causes under the SDK's
    APIConnectionError."""
    import socket
    import ssl

    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused (nothing listens there)", "check the host and port, and that the server runs"
    if any(isinstance(e, socket.gaierror) for e in chain) or "Name or service not known" in text:
        return "unknown host (the name does not resolve)", "check the host name"
    if any(isinstance(e, ssl.SSLError) for e in chain) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"TLS error ({chain[-1]})", "check http:// against https://, or give the CA bundle that signs its "
                "certificate (SSL_CERT_FILE)")
    return f"connection failed ({chain[-1]})", "check the URL and the network path to it"


def check_endpoint(base_url: str, models: list[str] | tuple[str, ...] = (), flag: str = "--base-url",
                   timeout_s: float = CHECK_TIMEOUT_S, key: str | None = None) -> list[str]:
    """Ask ``GET {base_url}/models`` once, with no retries, before any real request, so that a wrong endpoint
    fails in seconds instead of after every chunk's retries. Returns the ids the endpoint lists. ``key``: the API
    key to send (None: that of ``api_key``).

    Raises ConfigError naming ``flag`` and the endpoint, the cause as it happened and the fix, for: a refused
    connection, an unknown host, a TLS error, no answer within ``timeout_s`` (a stalled server), HTTP 401/403 (the
    key), another HTTP error, and a name in ``models`` that the endpoint does not list. An endpoint that does not
    implement ``/models`` (HTTP 404) passes with a warning: its model names cannot be checked.
    """
    import logging

    from openai import (
        APIConnectionError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        NotFoundError,
        OpenAI,
        PermissionDeniedError,
    )

    from loganalyzer.config import ConfigError

    where = f"{flag} {base_url}"
    client = OpenAI(base_url=base_url, api_key=key or api_key(base_url, flag), timeout=timeout_s, max_retries=0)
    try:
        ids = [m.id for m in client.models.list()]
    except APITimeoutError:
        raise ConfigError(f"{where}: no answer to GET /models within {timeout_s:g} s (it accepts connections but "
                          "stalls); check that the server is up and not overloaded") from None
    except APIConnectionError as exc:
        cause, fix = _connection_cause(exc)
        raise ConfigError(f"{where}: {cause}; {fix}") from None
    except (AuthenticationError, PermissionDeniedError) as exc:
        raise ConfigError(f"{where}: HTTP {exc.status_code}, the key was refused ({exc.message}); set "
                          "OPENAI_API_KEY to a key this endpoint accepts") from None
    except NotFoundError:
        logging.getLogger("loganalyzer.openai_api").warning(
            "%s does not list its models (GET /models: 404); model names are not checked", where)
        return []
    except APIStatusError as exc:
        raise ConfigError(f"{where}: GET /models answered HTTP {exc.status_code} ({exc.message})") from None
    unknown = [m for m in models if m and m not in ids]
    if unknown:
        listed = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "") or "nothing"
        raise ConfigError(f"{where}: model {', '.join(unknown)} is not served there (it lists: {listed}); "
                          "give one of those")
    return ids


@dataclass
class Reply:
    """What one ask ended with: ``value`` (the validated output) or ``reason`` (why not) and ``reply`` (the start
    of the last invalid reply), after ``attempts``."""

    value: Any = None
    reason: str = ""
    reply: str = ""
    attempts: int = 0
    usage: dict | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reason


async def ask_validated(client, body: dict, validate: Callable[[str], Any], validation_retries: int) -> Reply:
    """POST ``body`` to ``/chat/completions``; return the first reply ``validate`` accepts, re-asking after an
    invalid reply or a failed request (after the client's own HTTP retries) up to ``validation_retries`` times."""
    import openai

    reason, reply = "", ""
    for attempt in range(validation_retries + 1):
        t0 = time.perf_counter()
        try:
            # The SDK's documented raw `post`: its retries and Retry-After handling, without the per-request
            # params transform and response model building that cost ~3 ms of CPU a request.
            data = orjson.loads(await client.post("/chat/completions", cast_to=bytes, body=body))
            text = (data["choices"][0]["message"]["content"] if data.get("choices") else "") or ""  # null: refused
        except openai.APIStatusError as exc:
            reason = f"http_{exc.status_code}: {str(exc)[:200]}"
            continue
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            reason = f"bad_response_body: {type(exc).__name__} {str(exc)[:100]}"
            continue
        try:
            value = validate(text)
        except InvalidReply as exc:
            reason, reply = str(exc), text[:300]
            continue
        return Reply(value=value, attempts=attempt + 1, usage=data.get("usage"),
                     latency_s=round(time.perf_counter() - t0, 3))
    return Reply(reason=reason, reply=reply, attempts=validation_retries + 1)
