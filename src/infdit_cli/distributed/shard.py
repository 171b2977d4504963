"""Which rank upscales which file: a deterministic split of the pending files balanced by pixel count.

Every rank must agree on the split without talking, so it is a pure function of the (ordered)
file list and the sizes: longest-processing-time-first greedy, ties broken by list position and
rank, which keeps the busiest rank within one image of the average.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def image_pixels(path: Path) -> int:
    """Width × height from the file header (no decoding); 1 for a file that is not a readable image.

    A bad file still goes to some rank, which reports it like any other run would.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return max(1, im.size[0] * im.size[1])
    except Exception:  # unreadable, truncated, not an image: the owner reports it when it loads it
        return 1


def balance(weights: Sequence[int], world: int) -> list[int]:
    """Owner rank of each item: heaviest first, each to the least-loaded rank (lowest rank on ties)."""
    if world < 1:
        raise ValueError("world size must be at least 1")
    loads = [0] * world
    owner = [0] * len(weights)
    for index in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[index] = rank
        loads[rank] += max(1, weights[index])
    return owner


def share(items: Sequence[object], weights: Sequence[int], rank: int, world: int) -> list[int]:
    """Indices (in list order) of the items that `rank` of `world` processes."""
    if len(items) != len(weights):
        raise ValueError("one weight per item")
    return [i for i, r in enumerate(balance(weights, world)) if r == rank]
