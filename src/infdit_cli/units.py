"""How every byte count and duration is written for people: one format, so figures read alike in
progress lines, summaries, pre-flight lines and bench tables."""

from __future__ import annotations

from rich.filesize import decimal

__all__ = ["format_bytes", "format_duration"]


def format_bytes(n: float | None) -> str:
    """'-' for unknown, else decimal units: '999 bytes', '12.3 kB', '1.5 GB' (rich.filesize)."""
    if n is None:
        return "-"
    return ("-" if n < 0 else "") + decimal(int(abs(n)))


def format_duration(seconds: float | None) -> str:
    """'-' for unknown, '0.0123 s' / '4.56 s' (a per-call time keeps its digits), '42 s',
    '3 min 05 s', '1 h 02 min'."""
    if seconds is None:
        return "-"
    if seconds < 9.995:
        return f"{max(0.0, seconds):.3g} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
