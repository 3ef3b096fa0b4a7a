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
