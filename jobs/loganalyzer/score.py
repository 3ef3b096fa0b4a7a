"""``loganalyzer score --predictions P.jsonl --references R.jsonl [--out F]``: the six metrics, with 95% CIs, as JSON.

Rows are ``{"id", "text"}``, joined by id; a missing, extra or duplicate id is an error (exit 2). Metric definitions:
``loganalyzer.metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from loganalyzer.config import SEED, ConfigError, StageConfig, parse_config
from loganalyzer.metrics import score


class ScoreConfig(StageConfig):
    """Score predictions against references: rows {"id", "text"} joined by id; prints the six metrics."""

    predictions: str = Field(description="JSON Lines of {id, text}")
    references: str = Field(description="JSON Lines of {id, text}")
    out: str | None = Field(None, description="also write the JSON here")
    n_boot: int = Field(1000, ge=1, description="bootstrap resamples for the CIs")
    seed: int = SEED
    backend: str = Field("auto", description="auto (evaluate's modules if they load, else builtin), evaluate, builtin")


def _load_texts(path: str, what: str) -> dict[str, str]:
    from loganalyzer.io import read_jsonl

    if not Path(path).is_file():
        raise ConfigError(f"--{what} {path}: no such file")
    rows: dict[str, str] = {}
    try:
        for r in read_jsonl(path, required=("id", "text")):
            key = str(r["id"])
            if key in rows:
                raise ConfigError(f"--{what} {path}: duplicate id {key!r}")
            if not isinstance(r["text"], str):
                raise ConfigError(f"--{what} {path}: id {key!r} has a non-string text")
            rows[key] = r["text"]
    except ValueError as exc:
        raise ConfigError(f"--{what}: {exc}") from None
    return rows


def join_by_id(preds: dict[str, str], refs: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """Align two id->text maps; raise ConfigError naming the missing/extra ids when they differ."""
    missing, extra = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
    if missing or extra:
        raise ConfigError(f"predictions and references differ: {len(missing)} id(s) without a prediction "
                          f"{missing[:5]}, {len(extra)} prediction id(s) without a reference {extra[:5]}")
    ids = sorted(refs)
    return ids, [preds[i] for i in ids], [refs[i] for i in ids]


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ScoreConfig, "score", argv)
    _, preds, refs = join_by_id(_load_texts(cfg.predictions, "predictions"),
                                _load_texts(cfg.references, "references"))
    result = score(preds, refs, n_boot=cfg.n_boot, seed=cfg.seed, backend=cfg.backend)
    text = json.dumps(result, indent=2)
    if cfg.out:
        Path(cfg.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
