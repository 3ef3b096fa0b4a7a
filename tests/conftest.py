"""Shared fixtures: real Loghub samples from ../shared/data (skipped when absent), tiny-model builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOGANALYZER_SHARED_DATA", ROOT.parent / "shared" / "data"))
LOGHUB = SHARED / "loghub"
BUNDLED = ROOT / "data" / "loghub"


def loghub_file(system: str) -> Path:
    """A real Loghub 2k sample: the copy bundled in data/ first, else ../shared/data; skip if neither."""
    for base in (BUNDLED, LOGHUB):
        p = base / system / f"{system}_2k.log"
        if p.is_file():
            return p
    pytest.skip(f"Loghub sample {system} not found in {BUNDLED} or {LOGHUB}")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED
