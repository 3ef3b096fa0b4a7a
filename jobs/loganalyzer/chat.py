"""``loganalyzer chat``: the log-analysis chatbot (Streamlit) on any OpenAI-compatible endpoint.

    loganalyzer chat [--endpoint URL] [--model NAME] [--port 8501]

Env: ``LOGANALYZER_ENDPOINT`` (default ``http://127.0.0.1:8000/v1``, i.e. ``loganalyzer serve``),
``LOGANALYZER_MODEL`` (unset: the first model the endpoint lists), ``OPENAI_API_KEY``. In the cluster the endpoint
is the KServe InferenceService's ``…/openai/v1`` URL. This module holds everything but the page
(``chat_app.py``): reading logs, the prompts (identical to training: the log goes after ``Log content:`` in the
first user message, see ``loganalyzer.prompts``), token budgeting, map-reduce over logs longer than the model's
context, streaming, error messages, and the Markdown export.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from loganalyzer.config import parse_config
from loganalyzer.prompts import TEXT_TASKS, load_prompts
from loganalyzer.redact import RedactionSettings

log = logging.getLogger("loganalyzer.chat")

DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"
# The buttons: the four single-answer tasks of the training data, in the seed app's order.
BUTTONS = {"summarize": "Summarize", "root_cause": "Find Root Cause", "find_patterns": "Find Patterns",
           "compare_halves": "Compare halves"}
assert set(BUTTONS) == set(TEXT_TASKS)
# Tokens kept free in each request besides the log: the question, chat-template tokens, history.
PROMPT_OVERHEAD_TOKENS = 512
CHARS_PER_TOKEN = 3.0  # conservative estimate for log text when no tokenizer is available


class ChatConfig(RedactionSettings):
    """Run the log-analysis chatbot (Streamlit) against an OpenAI-compatible endpoint."""

    endpoint: str = Field(default_factory=lambda: os.environ.get("LOGANALYZER_ENDPOINT", DEFAULT_ENDPOINT),
                          description="OpenAI-compatible base URL (…/v1); env LOGANALYZER_ENDPOINT")
    model: str = Field(default_factory=lambda: os.environ.get("LOGANALYZER_MODEL", ""),
                       description="served model name ('' = the first model the endpoint lists); env LOGANALYZER_MODEL")
    port: int = Field(8501, ge=1, le=65535, description="port of the web app")
    host: str = Field("127.0.0.1", description="bind address of the web app (0.0.0.0 in a container)")
    context_tokens: int = Field(8192, ge=1024, description="the model's context length (tokens)")
    max_tokens: int = Field(1024, ge=16, description="completion token limit per reply")
    temperature: float = Field(0.2, ge=0)
    tokenizer: str = Field("", description="tokenizer (model dir or hub id) to count log tokens exactly; '' = "
                                           f"estimate {CHARS_PER_TOKEN} characters per token")
    max_log_mb: float = Field(20.0, gt=0, description="largest log accepted (MB, after decompression)")
    timeout_s: float = Field(120.0, gt=0, description="seconds per request before it counts as failed")
    require_endpoint: bool = Field(True, description="check the endpoint (GET /models, 5 s, no retries) before "
                                   "starting and exit 2 when it fails; false: start anyway, the page shows what is "
                                   "wrong (the chatbot Deployment: its InferenceService may still be loading)")


class ChatError(RuntimeError):
    """A failure the user can act on; ``str()`` is the message the app shows (with a Retry button)."""


def read_log(name: str, data: bytes, max_mb: float) -> str:
    """Text of an uploaded or pasted log: ``.gz`` is decompressed, bytes are decoded as UTF-8 (invalid bytes
    replaced). Raises ChatError for binary content or more than ``max_mb`` MB."""
    limit = int(max_mb * 1e6)
    if name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                data = fh.read(limit + 1)
        except (OSError, EOFError) as exc:
            raise ChatError(f"{name}: not a valid gzip file ({exc})") from None
    if len(data) > limit:
        raise ChatError(f"{name}: larger than the {max_mb:g} MB limit; upload a smaller slice of the log "
                        f"(or raise --max-log-mb)")
    if b"\x00" in data[:65536]:
        raise ChatError(f"{name}: looks binary (NUL bytes), not a text log")
    return data.decode("utf-8", errors="replace")


class TokenCounter:
    """Counts tokens with the model's tokenizer when one is given, else estimates from characters."""

    def __init__(self, tokenizer: str = ""):
        self.exact = False
        self._tok = None
        if tokenizer:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(tokenizer)
            self.exact = True

    def __call__(self, text: str) -> int:
        if self._tok is not None:
            return len(self._tok(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / CHARS_PER_TOKEN)


def split_log(text: str, count: TokenCounter, budget: int) -> list[str]:
    """Consecutive parts of ``text``, whole lines each, of at most ``budget`` tokens (a single longer line is cut
    by characters). One part when the log fits."""
    if count(text) <= budget:
        return [text]
    parts, current, used = [], [], 0
    for line in text.splitlines(keepends=True):
        n = count(line)
        while n > budget:  # one enormous line: cut it
            cut = max(1, int(len(line) * budget / n))
            parts.append(line[:cut])
            line, n = line[cut:], count(line[cut:])
        if used + n > budget and current:
            parts.append("".join(current))
            current, used = [], 0
        current.append(line)
        used += n
    if current:
        parts.append("".join(current))
    return parts


def task_question(task: str) -> str:
    return load_prompts().question(task)


def first_user_message(text: str, log_text: str, task: str | None = None) -> str:
    """The first user message, formatted exactly as in training: a button's task question with the answer
    suffix (``user_turn``), or free text, followed by ``Log content:`` and the log."""
    prompts = load_prompts()
    if task:
        return prompts.user_turn(task, log_text)
    return prompts.with_log(text, log_text)


MERGE_INSTRUCTION = ("The log below was too long to read at once, so it was analysed in {n} consecutive parts. "
                     "Merge the partial answers into one answer to the original request, without repeating "
                     "yourself.\n\nOriginal request: {request}\n\n{partials}")


@dataclass
class Turn:
    """One exchange as shown: what the user asked, the reply, who answered, and any notice about the log."""

    user: str
    reply: str = ""
    model: str = ""
    endpoint: str = ""
    notice: str = ""
    redacted: str = ""  # what redaction replaced in this turn's request, in words
    error: str = ""
    request: dict = field(default_factory=dict)  # what to send again on Retry
    redaction_counts: Counter = field(default_factory=Counter)


class Chat:
    """The conversation and its client. ``messages`` is exactly what the model saw (the log inside the first user
    message, redacted when ``redacting``); ``turns`` is what the page shows.

    With redaction active (``cfg.redact``, see ``loganalyzer.redact``) the log and every question are redacted with
    one ``Redactor`` per conversation, so a host keeps its pseudonym from the log to a later question."""

    def __init__(self, cfg: ChatConfig, api_key: str | None = None, counter: TokenCounter | None = None):
        from openai import OpenAI

        self.cfg = cfg
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = OpenAI(base_url=cfg.endpoint, api_key=self._api_key, timeout=cfg.timeout_s, max_retries=1)
        self._endpoint_ok = False
        self.count = counter or TokenCounter(cfg.tokenizer)
        self.messages: list[dict] = []
        self.turns: list[Turn] = []
        self.log_text = ""
        self._model = cfg.model
        from loganalyzer.redact import redaction_active

        self.redacting = redaction_active(cfg.redact, cfg.endpoint, "chat")
        self._redactor = None

    def adopt(self, old: Chat) -> None:
        """Continue ``old``'s conversation on this connection; history that ``old`` sent unredacted is redacted
        now when this one redacts (it is sent again with every request)."""
        self.messages, self.turns, self.log_text, self._redactor = old.messages, old.turns, old.log_text, old._redactor
        if self.redacting and not old.redacting:
            self.messages = [{**m, "content": self._outgoing(m["content"], None)} for m in old.messages]

    def _outgoing(self, text: str, turn: Turn | None) -> str:
        """``text`` as it may leave: redacted when ``redacting``, the replacements added to ``turn``'s notice."""
        if not self.redacting:
            return text
        from loganalyzer.redact import Redactor, describe

        if self._redactor is None:
            self._redactor = Redactor(self.cfg.pii_entities)
        out, counts = self._redactor.redact(text)
        if turn is not None and counts:
            turn.redaction_counts.update(counts)
            turn.redacted = f"{describe(turn.redaction_counts)} replaced before sending to {self.cfg.endpoint}"
        return out

    # -- endpoint ---------------------------------------------------------------------------------------------
    def endpoint_problem(self) -> str:
        """What is wrong with the endpoint and how to fix it (``openai_api.check_endpoint``: refused, unknown host,
        TLS, stalled, 401/403, the model not served), or "" when it answers. A success is kept for this connection;
        a failure is checked again at the next call, so a model server that was still loading is seen coming up."""
        if self._endpoint_ok:
            return ""
        from loganalyzer.config import ConfigError
        from loganalyzer.openai_api import check_endpoint

        try:
            ids = check_endpoint(self.cfg.endpoint, [self.cfg.model] if self.cfg.model else [], "endpoint",
                                 key=self._api_key)
        except ConfigError as exc:
            return exc.message
        self._endpoint_ok = True
        self._model = self._model or (ids[0] if ids else "")
        return ""

    def model(self) -> str:
        """The configured model, else the first one the endpoint lists (ChatError when it lists none)."""
        if not self._model:
            ids = [m.id for m in self._call(self.client.models.list).data]
            if not ids:
                raise ChatError(f"{self.cfg.endpoint} lists no models: set the model name in the sidebar "
                                f"(--model / LOGANALYZER_MODEL)")
            self._model = ids[0]
        return self._model

    def _call(self, fn, *args, **kwargs):
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APITimeoutError:
            raise ChatError(f"{self.cfg.endpoint} did not answer within {self.cfg.timeout_s:g} s") from None
        except openai.APIConnectionError:
            raise ChatError(f"cannot reach {self.cfg.endpoint}: is the model server running?") from None
        except openai.APIStatusError as exc:
            detail = _error_detail(exc)
            raise ChatError(f"{self.cfg.endpoint} answered HTTP {exc.status_code}: {detail}") from None

    def _stream(self, messages: list[dict]) -> Iterator[str]:
        stream = self._call(self.client.chat.completions.create, model=self.model(), messages=messages,
                            stream=True, max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature)
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except Exception as exc:  # the connection dropped mid-stream
            raise ChatError(f"the reply from {self.cfg.endpoint} was cut off: {exc}") from None

    # -- conversation -----------------------------------------------------------------------------------------
    @property
    def log_budget(self) -> int:
        """Tokens of log that fit in one request next to the question and the reply."""
        return self.cfg.context_tokens - self.cfg.max_tokens - PROMPT_OVERHEAD_TOKENS

    def set_log(self, text: str) -> None:
        """Attach a log to the conversation; it goes into the next first user message."""
        self.log_text = text

    def ask(self, text: str = "", task: str | None = None) -> Turn:
        """Start a turn for a button ``task`` or free ``text``; ``reply_stream(turn)`` then yields the answer."""
        shown = BUTTONS[task] if task else text
        turn = Turn(user=shown, request={"text": text, "task": task})
        self.turns.append(turn)
        return turn

    def reply_stream(self, turn: Turn) -> Iterator[str]:
        """Stream the reply of ``turn`` (the last one); on success it joins the model's history. Raises ChatError
        (the turn keeps the message, so Retry sends the same request again)."""
        turn.error = turn.reply = turn.notice = turn.redacted = ""
        turn.redaction_counts.clear()
        text, task = turn.request["text"], turn.request["task"]
        text = self._outgoing(text, turn)
        first = not self.messages
        turn.model, turn.endpoint = self.model(), self.cfg.endpoint
        if first and self.log_text:
            log_text = self._outgoing(self.log_text, turn)
            parts = split_log(log_text, self.count, self.log_budget)
            if len(parts) > 1:
                yield from self._map_reduce(turn, parts, text, task)
                return
            user = first_user_message(text, log_text, task)
        else:
            user = task_question(task) + load_prompts().answer_suffix if task else text
        messages = [*self.messages, {"role": "user", "content": user}]
        for piece in self._stream(messages):
            turn.reply += piece
            yield piece
        self.messages = [*messages, {"role": "assistant", "content": turn.reply}]

    def _map_reduce(self, turn: Turn, parts: list[str], text: str, task: str | None) -> Iterator[str]:
        tokens = self.count(self.log_text)
        how = "counted with the model's tokenizer" if self.count.exact else "estimated"
        turn.notice = (f"The log has about {tokens:,} tokens ({how}), more than the {self.log_budget:,} that fit in "
                       f"one request, so it was analysed in {len(parts)} parts and the partial answers were merged.")
        partials = []
        for part in parts:
            partials.append("".join(self._stream([{"role": "user",
                                                   "content": first_user_message(text, part, task)}])))
        request = task_question(task) if task else text
        merged_prompt = MERGE_INSTRUCTION.format(n=len(parts), request=request, partials="\n\n".join(
            f"Part {i + 1}:\n{p}" for i, p in enumerate(partials)))
        messages = [{"role": "user", "content": merged_prompt}]
        for piece in self._stream(messages):
            turn.reply += piece
            yield piece
        # later turns see the merged answer, not the whole log
        self.messages = [{"role": "user", "content": first_user_message(text, "[log analysed in parts]", task)},
                         {"role": "assistant", "content": turn.reply}]

    def new_chat(self) -> None:
        """Start over: a new conversation, and a new pseudonym space."""
        self.messages, self.turns, self.log_text, self._redactor = [], [], "", None

    def to_markdown(self) -> str:
        """The conversation as Markdown (the download button)."""
        lines = ["# loganalyzer conversation", ""]
        if self.log_text:
            lines += ["## Log", "", "```", self.log_text.rstrip("\n"), "```", ""]
        for t in self.turns:
            lines += [f"**You:** {t.user}", ""]
            for note in (t.redacted, t.notice):
                if note:
                    lines += [f"> {note}", ""]
            if t.reply:
                lines += [f"**Assistant** ({t.model} at {t.endpoint}):", "", t.reply, ""]
            elif t.error:
                lines += [f"**Error:** {t.error}", ""]
        return "\n".join(lines)


def _error_detail(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(exc.message if hasattr(exc, "message") else exc)


APP = Path(__file__).with_name("chat_app.py")


def streamlit_command(cfg: ChatConfig) -> list[str]:
    """``streamlit run chat_app.py`` with the app's settings after ``--``."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(cfg.port),
            "--server.address", cfg.host, "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "viewer",
            "--", *(f"{k}={v}" for k, v in cfg.model_dump().items() if k not in ("port", "host"))]


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(ChatConfig, "chat", argv)
    if cfg.require_endpoint:
        from loganalyzer.openai_api import check_endpoint

        ids = check_endpoint(cfg.endpoint, [cfg.model] if cfg.model else [], "--endpoint")
        log.info("%s answers; it serves %s", cfg.endpoint, ", ".join(ids[:5]) or "no model list")
    log.info("chatbot at http://%s:%d (endpoint %s, model %s)", cfg.host, cfg.port, cfg.endpoint,
             cfg.model or "the first one listed")
    # Streamlit replaces this process (same PID): a pod's SIGTERM, or `kill`, reaches the server itself, which stops
    # at once; a child would outlive its parent and keep the port.
    sys.stdout.flush()
    sys.stderr.flush()
    cmd = streamlit_command(cfg)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
