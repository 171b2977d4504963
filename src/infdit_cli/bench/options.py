"""What a bench run is asked for: resolutions, block batches, dtypes, and the one-line error."""

from __future__ import annotations

import torch

from infdit_cli.errors import InfditError

BlockBatch = int | str  # an int n, or "auto" (what the upscaler's placement planner would pick)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class BenchError(InfditError):
    """Bench settings that cannot be measured (one line for the user)."""


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def parse_resolution(text: str) -> tuple[int, int]:
    """'4096' -> (4096, 4096); '2048x1024' -> (2048, 1024) as (width, height)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BenchError(f"invalid resolution {text!r} (use e.g. 4096 or 2048x1024)") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise BenchError(f"invalid resolution {text!r} (use e.g. 4096 or 2048x1024)")
    return (values[0], values[-1])


def parse_block_batch(text: str) -> BlockBatch:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise BenchError(f"invalid block batch {text!r} (use a positive integer or auto)") from None
    if n < 1:
        raise BenchError(f"block batch must be at least 1 (got {n})")
    return n
