"""Small JSON Lines helpers shared by every stage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line.

    Raises ValueError naming ``path:line`` for invalid JSON, a row that is not an object, or a row missing
    one of the ``required`` keys.
    """
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing key(s) {missing}")
            yield row


class JsonlWriter:
    """Write JSON Lines (UTF-8, ``orjson``) atomically: rows go to ``<path>.tmp``, which replaces ``path`` on a
    clean close.

    With ``append=True`` rows are appended and each is flushed to the OS at once (resumable outputs: a killed
    process keeps every row written; ``fsync`` on close guards against a machine crash too).
    """

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.append = append
        self._target = self.path if append else self.path.with_name(self.path.name + ".tmp")
        self._fh = open(self._target, "ab" if append else "wb")
        self.count = 0

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))
        self.count += 1
        if self.append:
            self._fh.flush()

    def close(self, ok: bool = True) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if not self.append:
            if ok:
                os.replace(self._target, self.path)
            else:
                self._target.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        self.close(ok=exc_type is None)
