"""LLM judge for ``evaluate``: any OpenAI-compatible model grades each answer 1–5 for correctness, completeness
and grounding against the log and the reference, with the packaged, versioned rubric ``prompts/judge.yaml``.

``loganalyzer evaluate ... --judge-endpoint URL --judge-model NAME`` (off when no endpoint is given).

- Each answer is one request (``temperature=0``, ``judge_concurrency`` in flight). The reply must be a JSON
  object with an integer 1..5 for each of ``CRITERIA`` and an optional ``rationale``; a JSON object inside prose
  or a code fence is taken too. An invalid reply is asked again ``judge_validation_retries`` times; HTTP retries
  (429, 5xx, timeouts) are the ``openai`` client's (``judge_max_retries``), as in ``synthesize``
  (``loganalyzer.openai_api``). What still fails is a reject: written to ``judge_rejects.jsonl`` with its reason
  and counted in the report, never dropped silently; its scores are undefined (NaN), so means and CIs cover the
  judged answers only and say how many (``<criterion>_n``).
- Toward an endpoint that is not on loopback the conversation, the reference and every answer are redacted
  first (``redact: auto``; one pseudonym space per judged test set, so the same IP reads the same in all three).
- Scores are averaged with percentile-bootstrap 95% CIs and compared between models with the paired bootstrap
  (``loganalyzer.metrics.summarize_defined`` / ``paired_defined``), like the grounding metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from pydantic import Field, model_validator

from loganalyzer.config import StageConfig
from loganalyzer.io import JsonlWriter
from loganalyzer.openai_api import InvalidReply, ask_validated, async_client, parse_json_reply

log = logging.getLogger("loganalyzer.judge")

CRITERIA = ("correctness", "completeness", "grounding")


class JudgeSettings(StageConfig):
    """The LLM-judge fields of ``evaluate``."""

    judge_endpoint: str | None = Field(None, description="OpenAI-compatible base URL (…/v1) of an LLM judge that "
                                                         "grades every answer 1-5; no judge when unset")
    judge_model: str | None = Field(None, description="the judge's model name (needed with judge_endpoint)")
    judge_concurrency: int = Field(8, ge=1, description="judge requests in flight")
    judge_timeout: float = Field(120.0, gt=0, description="seconds per judge request")
    judge_max_retries: int = Field(6, ge=0, description="HTTP retries (429/5xx/timeouts) per judge request")
    judge_validation_retries: int = Field(2, ge=0, description="re-asks after an invalid judge reply")
    judge_max_tokens: int = Field(300, ge=16, description="completion token limit per judge reply")

    @model_validator(mode="after")
    def _endpoint_and_model(self):
        if bool(self.judge_endpoint) != bool(self.judge_model):
            raise ValueError("judge_endpoint and judge_model go together: give both, or neither for no judge")
        return self


@dataclass(frozen=True)
class Rubric:
    version: int
    system: str
    template: str

    def messages(self, conversation: str, reference: str, answer: str) -> list[dict[str, str]]:
        user = self.template.format(conversation=conversation, reference=reference, answer=answer or "(no answer)")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


@lru_cache(maxsize=1)
def load_rubric() -> Rubric:
    """The packaged ``prompts/judge.yaml``."""
    data = yaml.safe_load(resources.files("loganalyzer.prompts").joinpath("judge.yaml").read_text("utf-8"))
    return Rubric(int(data["version"]), data["system"], data["template"])


def conversation_text(prompt: list[dict]) -> str:
    """The messages before the graded answer as the judge reads them: a single question as is, a longer history
    as ``role: content`` blocks (system messages left out)."""
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


def parse_verdict(text: str) -> dict:
    """``{criterion: int 1..5, "rationale": str}`` from a judge reply; raises InvalidReply with the reason
    (``empty_reply``, ``malformed_json``, ``bad_schema``, ``bad_score``)."""
    if not text.strip():
        raise InvalidReply("empty_reply")
    try:
        data = parse_json_reply(text)
    except InvalidReply:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise
        data = parse_json_reply(text[start:end + 1])
    if not isinstance(data, dict):
        raise InvalidReply(f"bad_schema: expected a JSON object, got {type(data).__name__}")
    verdict: dict = {}
    for c in CRITERIA:
        v = data.get(c)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v) \
                or not 1 <= v <= 5:
            raise InvalidReply(f"bad_score: {c} must be an integer from 1 to 5, got {v!r}")
        verdict[c] = int(v)
    rationale = data.get("rationale", "")
    verdict["rationale"] = rationale.strip() if isinstance(rationale, str) else json.dumps(rationale)
    return verdict


def _redacted(cfg, conversations: list[str], references: list[str],
              answers: dict[str, list[str]]) -> tuple[list[str], list[str], dict[str, list[str]], dict]:
    from loganalyzer.redact import redact_together, redaction_active

    if not redaction_active(cfg.redact, cfg.judge_endpoint, "the judge"):
        return conversations, references, answers, {"active": False}
    names = list(answers)
    # per sample: the log first, so its pseudonyms carry to the reference and the answers
    rows, counts = redact_together([[c, r, *(answers[n][i] for n in names)]
                                    for i, (c, r) in enumerate(zip(conversations, references, strict=True))],
                                   cfg.pii_entities, f"the judge at {cfg.judge_endpoint}")
    return ([row[0] for row in rows], [row[1] for row in rows],
            {n: [row[2 + k] for row in rows] for k, n in enumerate(names)}, {"active": True, "counts": counts})


def judge(cfg, ids: list[str], prompts: list[list[dict]], references: list[str], answers: dict[str, list[str]],
          out: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Grade every model's answers; ``cfg`` is a ``JudgeSettings`` with the redaction fields (``EvaluateConfig``).

    Writes ``out/judge_<model>.jsonl`` (``{id, <criteria>, rationale, attempts, latency_s}`` per judged answer)
    and ``out/judge_rejects.jsonl`` (``{id, model, reason, attempts, reply}``: ``reply`` is the start of the last
    invalid reply, empty when the request itself failed). Returns ``{model: {criterion: (n,) float
    array, NaN for rejects}}`` and the run's info ``{judge_model, endpoint, rubric_version, rejects: {model: k},
    seconds, redaction}``.
    """
    from tqdm.asyncio import tqdm

    rubric = load_rubric()
    convs, refs, answ, redaction = _redacted(cfg, [conversation_text(p) for p in prompts], references, answers)
    jobs = [(name, i) for name in answ for i in range(len(ids))]
    verdicts: dict[tuple[str, int], object] = {}

    async def run_all() -> None:
        client = async_client(cfg.judge_endpoint, cfg.judge_timeout, cfg.judge_max_retries, "--judge-endpoint")
        gate = asyncio.Semaphore(cfg.judge_concurrency)

        async def one(name: str, i: int) -> None:
            body = {"model": cfg.judge_model, "messages": rubric.messages(convs[i], refs[i], answ[name][i]),
                    "temperature": 0, "max_tokens": cfg.judge_max_tokens}
            async with gate:
                verdicts[name, i] = await ask_validated(client, body, parse_verdict, cfg.judge_validation_retries)

        try:
            await tqdm.gather(*(one(n, i) for n, i in jobs), desc=f"judge ({cfg.judge_model})", unit="answer")
        finally:
            await client.close()

    t0 = time.perf_counter()
    asyncio.run(run_all())
    scores = {name: {c: np.full(len(ids), np.nan) for c in CRITERIA} for name in answ}
    rejects: dict[str, int] = {name: 0 for name in answ}
    with JsonlWriter(out / "judge_rejects.jsonl") as rejected:
        for name in answ:
            with JsonlWriter(out / f"judge_{name}.jsonl") as judged:
                for i, row_id in enumerate(ids):
                    reply = verdicts[name, i]
                    if not reply.ok:
                        rejected.write({"id": row_id, "model": name, "reason": reply.reason,
                                        "attempts": reply.attempts, "reply": reply.reply})
                        rejects[name] += 1
                        continue
                    for c in CRITERIA:
                        scores[name][c][i] = reply.value[c]
                    judged.write({"id": row_id, **reply.value, "attempts": reply.attempts,
                                  "latency_s": reply.latency_s})
    info = {"judge_model": cfg.judge_model, "endpoint": cfg.judge_endpoint, "rubric_version": rubric.version,
            "rejects": rejects, "seconds": round(time.perf_counter() - t0, 2), "redaction": redaction}
    if any(rejects.values()):
        log.warning("judge: %d of %d answers could not be judged (reasons in %s)", sum(rejects.values()),
                    len(jobs), out / "judge_rejects.jsonl")
    return scores, info
