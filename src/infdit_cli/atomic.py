"""Atomic file replacement: an output either exists complete or not at all (Ctrl-C, disk full, crash)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path in `path`'s folder; it is renamed over `path` only if the block
    completes, and removed on any exception, KeyboardInterrupt included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`, atomically (a JSON manifest or state beside its tensors)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
