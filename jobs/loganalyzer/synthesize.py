"""Stage 2 — synthesize training data with a teacher: an LLM through any OpenAI-compatible endpoint
(``teacher: llm``, the default), or the offline grounded teacher (``teacher: grounded``: formulaic answers from a
Drain3 template profile of the chunk, see ``loganalyzer.grounded_teacher``; no endpoint, no key).

For every ``(chunk, task)`` the teacher is asked once (plus ``validation_retries`` re-asks for invalid
replies). Output directory:

- ``records.jsonl``: one accepted result per ``(chunk_id, task, model)``:
  ``{chunk_id, task, model, system, output, prompt_version, usage, latency_s}`` where ``output`` is a string
  for text tasks, a list of ``{role, content}`` messages for ``conversation`` and a list of NLPLog records
  ``{instruction, log, output, domain}`` for ``nlplog_qa``.
- ``rejects.jsonl``: every invalid or failed item ``{chunk_id, task, model, reason, ...}`` (append-only log).
- ``summary.json``: counts of this run, with ``redaction`` (mode, whether it ran, replacements per entity type).
- ``chunks.redacted.jsonl``: when redaction ran, the chunks exactly as the teacher saw them; give this file to
  ``build-datasets --chunks`` (each record's ``log_sha256`` is the hash of the log it was made from).

Redaction (``loganalyzer.redact``): with ``redact: auto`` (default) every chunk is redacted (secrets removed,
IPs / e-mails / card numbers pseudonymised consistently over the run) before it is sent to an endpoint that is
not on loopback; ``on`` always, ``off`` never (with a warning naming an external endpoint).

HTTP retries and re-asks after invalid replies: ``loganalyzer.openai_api``. Resumable: records are appended
and flushed one by one, a rerun skips every key already in ``records.jsonl`` (a torn last line from a
``kill -9`` is cut off first) and retries the rest, so nothing is lost or duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from loganalyzer.config import ConfigError, parse_config
from loganalyzer.io import JsonlWriter, read_jsonl
from loganalyzer.openai_api import (
    OPENAI_BASE_URL,
    InvalidReply,
    ask_validated,
    async_client,
    check_endpoint,
    parse_json_reply,
)
from loganalyzer.prompts import ALL_TASKS, load_prompts
from loganalyzer.redact import RedactionSettings

log = logging.getLogger("loganalyzer.synthesize")

class SynthesizeConfig(RedactionSettings):
    """Generate summary / root-cause / patterns / halves / conversation / NLPLog Q&A data with a teacher LLM."""

    chunks: str = Field(description="chunks JSON Lines from `loganalyzer chunk`")
    out: str = Field(description="output directory (records.jsonl, rejects.jsonl, summary.json)")
    tasks: list[str] = Field(list(ALL_TASKS), description="tasks to run")
    teacher: Literal["llm", "grounded"] = Field(
        "llm", description="llm: the model at base_url; grounded: the offline Drain3-profile teacher (not an LLM; "
                           "base_url, model and the sampling settings are then unused)")
    base_url: str = Field(OPENAI_BASE_URL, description="OpenAI-compatible endpoint (…/v1)")
    model: str = Field("gpt-4o-mini", description="teacher model name")
    concurrency: int = Field(16, ge=1, description="requests in flight")
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(1024, ge=1, description="completion token limit per request")
    timeout: float = Field(120.0, gt=0, description="seconds per HTTP request")
    max_retries: int = Field(6, ge=0, description="HTTP retries (429/5xx/timeouts) per request")
    validation_retries: int = Field(1, ge=0, description="re-asks after an invalid reply")
    conversation_turns: int = Field(10, ge=2, description="messages per conversation (user+assistant)")
    nlplog_items: int = Field(3, ge=1, description="NLPLog Q&A records asked per chunk")
    json_mode: bool = Field(False, description="send response_format=json_object for JSON tasks")
    limit: int | None = Field(None, ge=1, description="only the first N chunks")

    @field_validator("tasks", mode="before")
    @classmethod
    def _comma_separated(cls, v):
        """``--tasks a,b`` and ``--tasks a b`` both work."""
        return [t for item in ([v] if isinstance(v, str) else v) for t in str(item).split(",") if t]

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(ALL_TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {list(ALL_TASKS)}")
        return v


def validate_reply(task: str, text: str, chunk: dict, cfg: SynthesizeConfig) -> Any:
    """Return the record's ``output`` for a teacher reply, or raise InvalidReply with a reason.

    - text tasks: non-empty text;
    - ``conversation``: exactly ``conversation_turns`` messages alternating user/assistant from user;
    - ``nlplog_qa``: 1..``nlplog_items`` records with non-empty ``instruction``/``log``/``output`` whose ``log``
      occurs verbatim in the chunk (a grounding check).
    """
    text = (text or "").strip()
    if not text:
        raise InvalidReply("empty_reply")
    if task == "conversation":
        data = parse_json_reply(text)
        msgs = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(msgs, list):
            raise InvalidReply("bad_schema: expected {'messages': [...]}")
        if len(msgs) != cfg.conversation_turns:
            raise InvalidReply(f"wrong_turn_count: {len(msgs)} messages, expected {cfg.conversation_turns}")
        out = []
        for i, m in enumerate(msgs):
            role = "user" if i % 2 == 0 else "assistant"
            if not isinstance(m, dict) or m.get("role") != role:
                raise InvalidReply(f"bad_roles: message {i} should have role {role!r}")
            content = m.get("content")
            if not isinstance(content, str) or not content.strip():
                raise InvalidReply(f"empty_message: message {i}")
            out.append({"role": role, "content": content.strip()})
        return out
    if task == "nlplog_qa":
        data = parse_json_reply(text)
        recs = data.get("records") if isinstance(data, dict) else data
        if not isinstance(recs, list) or not recs:
            raise InvalidReply("bad_schema: expected {'records': [...]} with at least one record")
        out = []
        for i, r in enumerate(recs[: cfg.nlplog_items]):
            if not isinstance(r, dict) or not all(
                isinstance(r.get(k), str) and r[k].strip() for k in ("instruction", "log", "output")
            ):
                raise InvalidReply(f"bad_schema: record {i} needs non-empty instruction, log, output")
            if r["log"].strip() not in chunk["content"]:
                raise InvalidReply(f"ungrounded: record {i}'s log line is not in the chunk")
            out.append({"instruction": r["instruction"].strip(), "log": r["log"].strip(),
                        "output": r["output"].strip(), "domain": chunk.get("system", "")})
        return out
    return text


def _repair_tail(path: Path) -> int:
    """Cut a torn last line (no newline, e.g. after ``kill -9``); return the bytes removed."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return 0
        data_start = max(0, size - (1 << 20))
        fh.seek(data_start)
        tail = fh.read()
        keep = data_start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        fh.truncate(keep)
        return size - keep


def done_keys(records_path: Path) -> set[tuple[str, str, str]]:
    """``(chunk_id, task, model)`` of every accepted record, after repairing a torn tail."""
    cut = _repair_tail(records_path)
    if cut:
        log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", records_path, cut)
    if not records_path.exists():
        return set()
    return {(r["chunk_id"], r["task"], r["model"]) for r in read_jsonl(records_path)}


async def _ask(client, cfg: SynthesizeConfig, task: str, chunk: dict) -> dict:
    """One item: ask (and re-ask after invalid replies); return a record or a reject row."""
    prompts = load_prompts()
    messages = prompts.teacher_messages(task, chunk["content"], cfg.conversation_turns, cfg.nlplog_items)
    body: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                            "max_tokens": cfg.max_tokens}
    if cfg.json_mode and prompts.tasks[task]["format"] == "json":
        body["response_format"] = {"type": "json_object"}
    base = {"chunk_id": chunk["id"], "task": task, "model": cfg.model}
    reply = await ask_validated(client, body, lambda text: validate_reply(task, text, chunk, cfg),
                                cfg.validation_retries)
    if not reply.ok:
        return {**base, "reason": reply.reason, "attempts": reply.attempts, "rejected": True}
    return {**base, "system": chunk.get("system", ""), "output": reply.value, "log_sha256": log_sha256(chunk),
            "prompt_version": prompts.version, "attempts": reply.attempts, "usage": reply.usage,
            "latency_s": reply.latency_s}


def _ask_grounded(cfg: SynthesizeConfig, task: str, chunk: dict) -> dict:
    """One item from the grounded teacher, validated like an LLM reply; bad input becomes a reject row."""
    from loganalyzer import grounded_teacher

    base = {"chunk_id": chunk["id"], "task": task, "model": cfg.model}
    t0 = time.perf_counter()
    try:
        text = grounded_teacher.reply(task, chunk["content"], chunk.get("system", ""), chunk["id"],
                                      cfg.conversation_turns, cfg.nlplog_items)
        output = validate_reply(task, text, chunk, cfg)
    except (ValueError, InvalidReply) as exc:  # InvalidReply is a ValueError too
        return {**base, "reason": f"{'invalid' if isinstance(exc, InvalidReply) else 'bad_input'}: {exc}",
                "attempts": 1, "rejected": True}
    return {**base, "system": chunk.get("system", ""), "output": output, "log_sha256": log_sha256(chunk),
            "prompt_version": f"{grounded_teacher.NAME}-{grounded_teacher.VERSION}", "attempts": 1, "usage": None,
            "latency_s": round(time.perf_counter() - t0, 3)}


def log_sha256(chunk: dict) -> str:
    """Hex SHA-256 of a chunk's ``content`` (UTF-8): which text of the log a record was made from."""
    return hashlib.sha256(chunk["content"].encode()).hexdigest()


class _Redaction:
    """The run's redaction (see the module docstring): ``__call__`` turns each chunk, in chunk order, into what is
    sent; ``finish`` writes ``chunks.redacted.jsonl`` and returns the summary's ``redaction`` entry."""

    def __init__(self, cfg: SynthesizeConfig):
        from loganalyzer.redact import redaction_active

        self.cfg, self.endpoint = cfg, cfg.base_url if cfg.teacher == "llm" else ""
        self.active = redaction_active(cfg.redact, self.endpoint, "synthesize")
        self.redactor, self.sent, self.seconds = None, [], 0.0

    def __call__(self, chunk: dict) -> dict:
        if not self.active:
            return chunk
        from loganalyzer.redact import Redactor, redact_row

        t0 = time.perf_counter()
        if self.redactor is None:
            self.redactor = Redactor(self.cfg.pii_entities)
        self.sent.append(redact_row(chunk, self.redactor))
        self.seconds += time.perf_counter() - t0
        return self.sent[-1]

    def finish(self, out: Path) -> dict:
        if not self.active:
            return {"mode": self.cfg.redact, "active": False}
        from loganalyzer.redact import changed, describe

        path = out / "chunks.redacted.jsonl"
        ids = {r["id"] for r in self.sent}
        # chunks an earlier run sent (a larger `limit`) keep their rows: their records still need them
        earlier = [r for r in read_jsonl(path) if r["id"] not in ids] if path.is_file() else []
        with JsonlWriter(path) as fh:
            for row in (*self.sent, *earlier):
                fh.write(row)
        counts = dict(sorted(self.redactor.counts.items())) if self.redactor else {}
        info = {"mode": self.cfg.redact, "active": True, "pii_entities": self.cfg.pii_entities,
                "chunks_changed": sum(map(changed, self.sent)), "counts": counts,
                "replaced": sum(counts.values()), "seconds": round(self.seconds, 3)}
        log.info("synthesize: redacted before sending to %s: %d of %d chunks changed (%s); the chunks as sent: %s",
                 self.endpoint or "the in-process teacher", info["chunks_changed"], len(self.sent),
                 describe(counts) or "nothing to replace", out / "chunks.redacted.jsonl")
        return info


def _write(row: dict, task: str, records: JsonlWriter, rejects: JsonlWriter, counts: Counter) -> None:
    if row.pop("rejected", False):
        rejects.write(row)
        counts[f"rejected:{row['reason'].split(':')[0]}"] += 1
    else:
        records.write(row)
        counts[f"accepted:{task}"] += 1


def _run_grounded(cfg: SynthesizeConfig, chunks: list[dict], todo, redaction: _Redaction, total: int,
                  records: JsonlWriter, rejects: JsonlWriter, counts: Counter) -> None:
    from tqdm import tqdm

    with tqdm(total=total, desc="synthesize (grounded)", unit="item", disable=not total) as bar:
        for chunk in chunks:
            sent = redaction(chunk)
            for task in todo(chunk):
                _write(_ask_grounded(cfg, task, sent), task, records, rejects, counts)
                bar.update(1)


async def _run_async(cfg: SynthesizeConfig, chunks: list[dict], todo, redaction: _Redaction, total: int,
                     records: JsonlWriter, rejects: JsonlWriter, counts: Counter) -> None:
    """Workers send what a producer thread queues: it redacts the chunks in order (one pseudonym space, the same
    on every rerun) while earlier requests are in flight, so redaction stays off the critical path."""
    from tqdm.asyncio import tqdm

    client = async_client(cfg.base_url, cfg.timeout, cfg.max_retries)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    n_workers = min(cfg.concurrency, max(1, total))
    bar = tqdm(total=total, desc="synthesize", unit="req", disable=not total)

    stop = threading.Event()  # a worker failed: stop redacting what will not be sent

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                sent = redaction(chunk)
                for task in todo(chunk):
                    loop.call_soon_threadsafe(queue.put_nowait, (task, sent))
        finally:
            for _ in range(n_workers):
                loop.call_soon_threadsafe(queue.put_nowait, None)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            task, chunk = item
            _write(await _ask(client, cfg, task, chunk), task, records, rejects, counts)
            bar.update(1)

    try:
        await asyncio.gather(loop.run_in_executor(None, produce), *(worker() for _ in range(n_workers)))
    finally:
        stop.set()
        bar.close()
        await client.close()


def run(cfg: SynthesizeConfig) -> dict:
    """Synthesize every missing ``(chunk, task)``; return and write the run's summary counts."""
    if not Path(cfg.chunks).is_file():
        raise ConfigError(f"--chunks {cfg.chunks}: no such file (run `loganalyzer chunk` first)")
    if cfg.teacher == "grounded":  # what ran, in the records, the summary and MLflow
        from loganalyzer.grounded_teacher import NAME

        cfg = cfg.model_copy(update={"model": NAME, "base_url": "", "json_mode": False})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path, rejects_path = out / "records.jsonl", out / "rejects.jsonl"
    done = done_keys(records_path)
    _repair_tail(rejects_path)
    chunks = list(read_jsonl(cfg.chunks, required=("id", "content")))
    if cfg.limit:
        chunks = chunks[: cfg.limit]
    if not chunks:
        raise ConfigError(f"--chunks {cfg.chunks}: no chunks in the file")
    t0 = time.perf_counter()

    def todo(chunk: dict) -> list[str]:
        return [t for t in cfg.tasks if (chunk["id"], t, cfg.model) not in done]

    asked = sum(len(todo(c)) for c in chunks)
    skipped = len(chunks) * len(cfg.tasks) - asked
    log.info("synthesize: %d chunks x %d tasks with %s at %s; %d done already, %d to ask (concurrency %d)",
             len(chunks), len(cfg.tasks), cfg.model, cfg.base_url or "(in process)", skipped, asked,
             cfg.concurrency)
    if cfg.teacher == "llm" and asked:  # a wrong endpoint fails here in seconds, before any reject is written
        check_endpoint(cfg.base_url, [cfg.model])
    counts: Counter[str] = Counter()
    redaction = _Redaction(cfg)
    try:
        with JsonlWriter(records_path, append=True) as records, JsonlWriter(rejects_path, append=True) as rejects:
            runner = _run_grounded if cfg.teacher == "grounded" else lambda *a: asyncio.run(_run_async(*a))
            runner(cfg, chunks, todo, redaction, asked, records, rejects, counts)
    except BaseException:  # the records written so far were made from these chunks: keep them pairable
        try:
            redaction.finish(out)
        except Exception:
            log.exception("synthesize: could not write %s after the failure below", out / "chunks.redacted.jsonl")
        raise
    redaction_info = redaction.finish(out)
    accepted = sum(v for k, v in counts.items() if k.startswith("accepted:"))
    summary = {"teacher": cfg.teacher, "model": cfg.model, "base_url": cfg.base_url, "chunks": len(chunks),
               "tasks": cfg.tasks,
               "skipped_done": skipped, "asked": asked, "accepted": accepted,
               "rejected": asked - accepted, "counts": dict(sorted(counts.items())),
               "records_total": len(done) + accepted, "seconds": round(time.perf_counter() - t0, 2),
               "redaction": redaction_info}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("synthesize summary: %s", json.dumps(summary))
    from loganalyzer.tracking import log_stage

    log_stage("synthesize", cfg.model_dump(), summary, [out / "summary.json", rejects_path])
    return summary


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(SynthesizeConfig, "synthesize", argv)
    summary = run(cfg)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    if summary["records_total"] == 0:
        raise SystemExit(f"error: the teacher produced no valid record; see {cfg.out}/rejects.jsonl")


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
