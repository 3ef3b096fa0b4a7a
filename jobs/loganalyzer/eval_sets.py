"""Test sets for ``evaluate``, in the formats people publish them in, read into our test rows
``{id, task, system, messages}`` (the last assistant message is the reference, everything before it the prompt).

Accepted, as a JSON array or JSON Lines, detected per record:

- **ours**: ``build-datasets``' ``sft_test.jsonl`` rows (``messages`` with ``role``/``content``);
- **ShareGPT**: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}`` (the seed's chat
  files; ``user``/``assistant`` are accepted as ``from`` too);
- **Alpaca**: ``{"instruction", "input", "output"}``; the user turn is the instruction, then the input after a
  blank line when there is one (the Alpaca template's order), and ``output`` is the reference.

A record that fits none, or lacks a field, is an error naming the file and the record's index.
"""

from __future__ import annotations

import json
from pathlib import Path

from loganalyzer.io import read_jsonl

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _records(path: Path) -> list:
    """A JSON array, or JSON Lines (``io.read_jsonl``: one object per line, errors naming ``path:line``)."""
    if path.read_bytes().lstrip()[:1] != b"[":
        return list(read_jsonl(path))
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def _messages(rec, where: str) -> list[dict]:
    """The chat messages of one record in any of the accepted formats."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        msgs = rec["messages"]
        if not (isinstance(msgs, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs)):
            raise ValueError(f"{where}: 'messages' must be a list of {{role, content}}")
        return msgs
    if "conversations" in rec:
        turns = rec["conversations"]
        msgs = []
        for i, t in enumerate(turns if isinstance(turns, list) else []):
            if not isinstance(t, dict) or t.get("from") not in SHAREGPT_ROLES or not isinstance(t.get("value"), str):
                raise ValueError(f"{where}: conversations[{i}] needs 'from' ({'/'.join(SHAREGPT_ROLES)}) and a "
                                 "string 'value'")
            msgs.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
        if not msgs:
            raise ValueError(f"{where}: 'conversations' is empty or not a list")
        return msgs
    if "instruction" in rec or "output" in rec:
        missing = [k for k in ("instruction", "output") if not isinstance(rec.get(k), str)]
        if missing:
            raise ValueError(f"{where}: Alpaca record without a string {missing[0]!r}")
        user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    raise ValueError(f"{where}: not a test record: expected 'messages' (ours), 'conversations' (ShareGPT) or "
                     f"'instruction'/'output' (Alpaca); keys: {sorted(rec)}")


def load_eval_set(path: str | Path) -> list[dict]:
    """The test rows of ``path`` (see the module docstring). Raises ValueError naming the file and record for a
    malformed record, and for a record whose last message is not the assistant's (nothing to score against)."""
    path = Path(path)
    data = _records(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records or JSON Lines")
    rows = []
    for n, rec in enumerate(data):
        where = f"{path} record {n}"
        messages = _messages(rec, where)
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{where}: no assistant turn to use as the reference")
        rows.append({"id": rec.get("id", f"row-{n}"), "task": rec.get("task") or "all",
                     "system": rec.get("system") or "", "messages": messages})
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate record ids")
    return rows
