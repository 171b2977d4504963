"""How one image's block columns are cut into contiguous strips, one per rank.

Strips are whole group-columns (n blocks wide, the last one ragged), so every rank runs exactly the
groups a single process would run, with the same shapes: that is what makes a split image equal
the single-process one bit for bit. Group-columns are dealt out so that strip widths in blocks
differ by at most one group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infdit_cli.errors import InfditError


class SplitError(InfditError):
    """An image that cannot be split across this many ranks (one line for the user)."""


@dataclass(frozen=True)
class Strip:
    """The block columns [cols.start, cols.stop) of the image that one rank computes."""

    rank: int
    cols: range

    @property
    def width(self) -> int:
        return len(self.cols)


def split_block_batch(n: int, grid_cols: int, world: int) -> int:
    """The largest n' ≤ n that gives at least one group-column per rank."""
    if grid_cols < world:
        raise SplitError(f"the image is {grid_cols} block(s) wide, fewer than the {world} ranks that would "
                         "split it; run without --split-image")
    return max(1, min(n, grid_cols // world))


def column_strips(grid_cols: int, n: int, world: int) -> list[Strip]:
    """Contiguous group-aligned strips, left to right, in rank order."""
    group_cols = math.ceil(grid_cols / n)
    if group_cols < world:
        raise SplitError(f"{group_cols} group-column(s) of {n} blocks cannot feed {world} ranks")
    base, extra = divmod(group_cols, world)
    strips, g = [], 0
    for rank in range(world):
        count = base + (1 if rank < extra else 0)
        start, stop = g * n, min(grid_cols, (g + count) * n)
        strips.append(Strip(rank, range(start, stop)))
        g += count
    return strips
