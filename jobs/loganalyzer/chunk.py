"""Stage 1 — chunk raw logs into contiguous, non-overlapping samples of ``min_lines``–``max_lines`` lines.

Output: JSON Lines, one chunk per row::

    {"id", "system", "source", "start_line" (1-based), "end_line" (inclusive), "num_lines", "content"}

``content`` is the chunk's lines joined by ``\\n`` (CRLF normalised to LF). Chunk lengths are drawn uniformly
from [min_lines, max_lines] with a RNG seeded by ``(seed, file name)``, so a rerun gives the same chunks.

Tail rule (documented contract): lines are cut into chunks of the drawn length while at least
``drawn + min_lines`` lines remain. The last ``r`` lines then form one chunk when ``min_lines <= r <= max_lines``,
or two near-equal chunks when ``r > max_lines`` (both within bounds whenever ``max_lines >= 2*min_lines - 1``).
So every line of a file lands in exactly one chunk, except: a file shorter than ``min_lines`` (dropped whole),
an unsplittable remainder when ``max_lines < 2*min_lines - 1``, and lines after ``max_chunks_per_file``. Each
such case is counted and written to the rejects file.

Memory is independent of file size: the file is read in 1 MiB blocks, at most one block plus ``2*max_lines``
lines are buffered, and a line longer than ``max_line_bytes`` is truncated (counted, rejected with its line
number). Invalid UTF-8 bytes become U+FFFD (counted); empty and binary files are rejected whole.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from loganalyzer.config import SEED, ConfigError, StageConfig, parse_config
from loganalyzer.io import JsonlWriter

log = logging.getLogger("loganalyzer.chunk")

BLOCK_BYTES = 1 << 20
LOG_SUFFIXES = (".log", ".txt", ".log.gz", ".txt.gz")


class ChunkConfig(StageConfig):
    """Chunk raw log files into 50–150-line samples (JSON Lines)."""

    logs: list[str] = Field(description="log files or directories (*.log, *.txt, optionally .gz)")
    out: str = Field(description="output JSON Lines file")
    rejects: str | None = Field(None, description="rejects file (default: <out>.rejects.jsonl)")
    min_lines: int = Field(50, ge=1, description="minimum lines per chunk")
    max_lines: int = Field(150, ge=1, description="maximum lines per chunk")
    seed: int = Field(SEED, description="seed for chunk lengths")
    max_chunks_per_file: int | None = Field(None, ge=1, description="stop a file after this many chunks")
    max_line_bytes: int = Field(65536, ge=64, description="truncate longer lines (counted as rejects)")

    @model_validator(mode="after")
    def _bounds(self) -> ChunkConfig:
        if self.min_lines > self.max_lines:
            raise ValueError(f"min_lines ({self.min_lines}) must be <= max_lines ({self.max_lines})")
        return self


def system_name(path: Path) -> str:
    """The log's system: the file name up to its first ``_`` or ``.`` (``Apache_2k.log`` -> ``Apache``)."""
    name = path.name
    for sep in ("_", "."):
        name = name.split(sep, 1)[0] or name
    return name


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, directories expanded (sorted, recursive) to their log files.

    Raises ConfigError (exit 2) for a path that does not exist or a directory with no log files.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(LOG_SUFFIXES))
            if not found:
                raise ConfigError(f"--logs {raw}: directory has no {'/'.join(LOG_SUFFIXES)} files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"--logs {raw}: no such file or directory")
    return out


class _FileStats:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rejects: list[dict] = []

    def reject(self, source: str, reason: str, **extra) -> None:
        self.counts[f"rejected_{reason.split(':')[0]}"] += 1
        self.rejects.append({"source": source, "reason": reason, **extra})


def _read_blocks(path: Path, cfg: ChunkConfig, stats: _FileStats,
                 progress: Callable[[int], object] | None = None) -> Iterator[tuple[bytes, np.ndarray]]:
    """Yield ``(data, ends)`` block by block: ``data`` holds complete lines, each ending in ``\\n``, CRLF already
    turned into LF and lines cut to ``max_line_bytes``; ``ends`` are the offsets of its ``\\n`` bytes.

    Everything per block runs in C or numpy (no Python object per line), which keeps chunking near
    line-reading speed; memory is bounded by the 1 MiB block and ``max_line_bytes``.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    source = str(path)
    with opener(path, "rb") as fh:
        carry = b""  # the start of a line whose end is not read yet (at most max_line_bytes)
        overflow = 0  # bytes of that line beyond max_line_bytes, dropped
        line_no = 0
        block = fh.read(BLOCK_BYTES)
        if not block:
            stats.reject(source, "empty: file has no bytes")
            return
        if b"\x00" in block[:8192]:
            stats.reject(source, "binary: NUL bytes in the first 8 KiB; not a text log")
            return
        while block or carry or overflow:
            if block and (cut := block.rfind(b"\n")) < 0:  # no line end in this block: the line keeps growing
                room = max(0, cfg.max_line_bytes - len(carry))
                carry += block[:room]
                overflow += len(block) - min(room, len(block))
                block = fh.read(BLOCK_BYTES)
                continue
            if block:
                data, carry = carry + block[: cut + 1], block[cut + 1:]
            else:  # end of file: the last line lacks its \n
                data, carry = carry + b"\n", b""
            first_overflow, overflow = overflow, 0
            if len(carry) > cfg.max_line_bytes:
                overflow, carry = len(carry) - cfg.max_line_bytes, carry[: cfg.max_line_bytes]
            if b"\r" in data:
                a = np.frombuffer(data, np.uint8)
                cr = np.flatnonzero(a == 13)  # never the last byte: data ends with \n
                data = data.translate(None, b"\r") if (a[cr + 1] == 10).all() else data.replace(b"\r\n", b"\n")
            ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
            lengths = np.diff(ends, prepend=-1) - 1
            if first_overflow or lengths.max() > cfg.max_line_bytes:
                data, ends = _truncate_lines(data, ends, lengths, first_overflow, line_no, source, cfg, stats)
            if progress:
                progress(len(block))
            yield data, ends
            line_no += len(ends)
            block = fh.read(BLOCK_BYTES) if block else b""


def _truncate_lines(data: bytes, ends: np.ndarray, lengths: np.ndarray, first_overflow: int, line_no: int,
                    source: str, cfg: ChunkConfig, stats: _FileStats) -> tuple[bytes, np.ndarray]:
    """Cut lines longer than ``max_line_bytes`` (at a UTF-8 character boundary) and record each as a reject."""
    lines = data.split(b"\n")[:-1]
    for i in np.flatnonzero(lengths > cfg.max_line_bytes).tolist() + ([0] if first_overflow else []):
        raw = lines[i]
        dropped = max(0, len(raw) - cfg.max_line_bytes) + (first_overflow if i == 0 else 0)
        if len(raw) > cfg.max_line_bytes:
            lines[i] = raw[: cfg.max_line_bytes].decode("utf-8", errors="ignore").encode("utf-8")
        stats.reject(source, f"line_truncated: line longer than max_line_bytes={cfg.max_line_bytes}",
                     line=line_no + i + 1, bytes_dropped=dropped)
    data = b"\n".join(lines) + b"\n"
    return data, np.flatnonzero(np.frombuffer(data, np.uint8) == 10)


def _decode(raw: bytes, first_line: int, source: str, stats: _FileStats) -> str:
    """UTF-8 text of a chunk; invalid bytes become U+FFFD, counted per line (first one logged)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = []
    for i, line in enumerate(raw.split(b"\n")):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("utf-8", errors="replace"))
            stats.counts["non_utf8_lines"] += 1
            if stats.counts["non_utf8_lines"] == 1:
                log.warning("%s:%d: not valid UTF-8; invalid bytes replaced with U+FFFD (counted)",
                            source, first_line + i)
    return "\n".join(lines)


def chunk_file(path: Path, cfg: ChunkConfig, stats: _FileStats,
               progress: Callable[[int], object] | None = None) -> Iterator[dict]:
    """Yield the chunks of one file following the module's tail rule; ``progress(n)`` gets bytes read."""
    system = system_name(path)
    rng = random.Random(f"{cfg.seed}:{path.name}")
    pend = b""  # lines read but not all emitted; pend[off:] starts at line `start`
    ends = np.empty(0, dtype=np.int64)  # offsets in `pend` of each line's \n; ends[li:] are pending
    off = li = 0
    start = 1
    emitted = 0
    target = rng.randint(cfg.min_lines, cfg.max_lines)
    id_prefix, source = f"{system}-{path.name}-L", str(path)

    def emit(n: int) -> dict:
        nonlocal off, li, start, emitted
        last = int(ends[li + n - 1])
        content = _decode(pend[off:last], start, source, stats)
        off, li = last + 1, li + n
        chunk = {"id": f"{id_prefix}{start}", "system": system, "source": source, "start_line": start,
                 "end_line": start + n - 1, "num_lines": n, "content": content}
        start += n
        emitted += 1
        return chunk

    def limit_reached() -> bool:
        return cfg.max_chunks_per_file is not None and emitted >= cfg.max_chunks_per_file

    for data, new_ends in _read_blocks(path, cfg, stats, progress):
        rest = pend[off:]
        ends = np.concatenate((ends[li:] - off, new_ends + len(rest)))
        pend, off, li = rest + data, 0, 0
        while len(ends) - li >= target + cfg.max_lines and not limit_reached():
            yield emit(target)
            target = rng.randint(cfg.min_lines, cfg.max_lines)
        if limit_reached():
            stats.counts["files_stopped_at_max_chunks"] += 1
            stats.reject(source, f"max_chunks_per_file: stopped after {emitted} chunks",
                         first_line_not_chunked=start)
            return
    # End of file: at most target + max_lines - 1 lines remain.
    while len(ends) > li and not limit_reached():
        r = len(ends) - li
        if r >= target + cfg.min_lines:
            yield emit(target)
            target = rng.randint(cfg.min_lines, cfg.max_lines)
        elif cfg.min_lines <= r <= cfg.max_lines:
            yield emit(r)
        elif r > cfg.max_lines and r >= 2 * cfg.min_lines:
            yield emit(r - r // 2)
            yield emit(r // 2)
        elif r > cfg.max_lines:
            yield emit(cfg.max_lines)
        else:
            reason = "file_too_short" if emitted == 0 else "tail_unsplittable"
            stats.counts["lines_dropped"] += r
            stats.reject(source, f"{reason}: {r} lines left, fewer than min_lines={cfg.min_lines}",
                         start_line=start, end_line=start + r - 1)
            li = len(ends)
    if len(ends) > li:
        stats.reject(source, f"max_chunks_per_file: stopped after {emitted} chunks", first_line_not_chunked=start)


def run(cfg: ChunkConfig) -> dict:
    """Chunk every file of ``cfg.logs`` into ``cfg.out``; return the summary counts (also logged)."""
    files = expand_paths(cfg.logs)
    rejects_path = cfg.rejects or f"{cfg.out}.rejects.jsonl"
    stats = _FileStats()
    per_system: Counter[str] = Counter()
    from tqdm import tqdm

    # Bytes read (decompressed for .gz, so the bar may pass 100% of the on-disk size there).
    bar = tqdm(total=sum(p.stat().st_size for p in files), desc="chunk", unit="B", unit_scale=True)
    with JsonlWriter(cfg.out) as out, bar:
        for path in files:
            n_before = out.count
            for chunk in chunk_file(path, cfg, stats, bar.update):
                out.write(chunk)
                per_system[chunk["system"]] += 1
                stats.counts["lines_chunked"] += chunk["num_lines"]
            stats.counts["files_read"] += 1
            if out.count == n_before:
                stats.counts["files_without_chunks"] += 1
    with JsonlWriter(rejects_path) as rej:
        for r in stats.rejects:
            rej.write(r)
    summary = {"chunks": sum(per_system.values()), "files": len(files), **dict(stats.counts),
               "rejects": len(stats.rejects), "chunks_per_system": dict(per_system),
               "out": cfg.out, "rejects_file": rejects_path}
    log.info("chunk summary: %s", json.dumps(summary))
    from loganalyzer.tracking import log_stage

    log_stage("chunk", cfg.model_dump(), summary, [rejects_path])
    if summary["chunks"] == 0:
        raise SystemExit(f"error: no chunks produced from {len(files)} file(s); see {rejects_path}")
    return summary


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    cfg = parse_config(ChunkConfig, "chunk", argv)
    summary = run(cfg)
    print(json.dumps(summary, indent=2), file=sys.stderr)


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
