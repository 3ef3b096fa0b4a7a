"""Shared helpers for the benchmark scripts: locating Loghub samples and printing a figure table."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOGANALYZER_SHARED_DATA", ROOT.parent / "shared" / "data"))


def loghub_logs() -> list[Path]:
    """Every Loghub 2k sample available: ../shared/data/loghub (14 systems) or the 4 bundled in data/."""
    for base in (SHARED / "loghub", ROOT / "data" / "loghub"):
        logs = sorted(base.glob("*/*_2k.log"))
        if logs:
            return logs
    raise SystemExit("no Loghub samples found in ../shared/data/loghub or data/loghub")


def report(name: str, figures: dict) -> None:
    """Print the figures as JSON with the machine they were measured on."""
    print(json.dumps({"benchmark": name, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **figures},
                     indent=2))
