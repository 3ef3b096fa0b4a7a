"""Logging setup shared by the stages: one format, level from ``LOGANALYZER_LOG_LEVEL`` (default INFO)."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOGANALYZER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "filelock", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
