"""One upscale with its block columns split across ranks: `Upscaler`'s own passes over a strip each.

Each rank runs the single pass (`Upscaler.upscale` with `split=`): the same inputs, noise (restricted
to the strip's columns), preconditioning and sampler call, over its strip of block columns, with a
strip runner (`wavefront.py`) as the network call. Every built-in sampler update is elementwise and
the ranks compute the same schedule, so the strips together are the single-process image. After a
pass the strips are gathered: to every rank when another pass follows (its input), to rank 0 only
after the last one (rank 0 writes the file; nobody else holds the whole image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from infdit_cli.distributed.checkpoint import Agree
from infdit_cli.distributed.context import Peers, Ranks
from infdit_cli.distributed.strips import Strip, column_strips, split_block_batch
from infdit_cli.distributed.wavefront import BoundaryLink, LinkStats, StripRunner
from infdit_cli.pipeline import PassInputs, PassPlan, SampleHook, UpscaleOptions, Upscaler, UpscaleResult


def agree_across(peers: Peers) -> Agree:
    """Checkpoint agreement: the newest position that every rank can resume from."""

    def agree(mine: list[int]) -> int:
        everyone = peers.all_gather(mine, "agreeing on the checkpoint step")
        common = set(everyone[0]).intersection(*map(set, everyone[1:]))
        return max(common)

    return agree


def gather_columns(peers: Peers, strip_out: Tensor, widths: list[int], everyone: bool) -> Tensor | None:
    """The ranks' strips side by side, in host memory: on every rank, or on rank 0 only (None elsewhere).

    Strips are padded to one width for the collective.
    """
    if peers.ranks.world == 1:
        return strip_out.cpu()
    wide = max(widths)
    buf = torch.zeros(*strip_out.shape[:-1], wide, dtype=strip_out.dtype)
    buf[..., : strip_out.shape[-1]] = strip_out
    parts = peers.gather(buf, "gathering the image strips", everyone)
    if parts is None:
        return None
    return torch.cat([p[..., :w] for p, w in zip(parts, widths, strict=True)], dim=-1)


class SplitUpscale:
    """Upscale one image with its block columns spread over all ranks (rank-independent result)."""

    def __init__(self, upscaler: Upscaler, ranks: Ranks, on_blocks: Callable[[int], None] | None = None,
                 peers: Peers | None = None) -> None:
        self.upscaler = upscaler
        self.ranks = ranks
        self.peers = peers or Peers(ranks)
        self.on_blocks = on_blocks  # progress: called with the blocks of the whole image a group stands for
        self.link_stats: list[LinkStats] = []  # per pass
        self.band_bytes: list[int] = []  # per pass: the largest KV band this rank held
        self._pass: tuple[BoundaryLink, StripRunner, list[Strip]] | None = None

    def upscale(self, image: Tensor, options: UpscaleOptions, plans: list[PassPlan] | None = None,
                sample: SampleHook | None = None) -> UpscaleResult:
        """image: [1, 3, h, w] in [0, 1], the same on every rank. The result's image is on rank 0 only
        (None on the other ranks)."""
        return self.upscaler.upscale(image, options, self.on_blocks, plans, sample, split=self)

    def _progress(self, on_blocks: Callable[[int], None] | None, strips: list[Strip]) -> Callable[[int], None] | None:
        """This rank's blocks scaled to the whole image, so one rank's bar reaches the image's total."""
        if on_blocks is None:
            return None
        mine, total = strips[self.ranks.rank].width, sum(s.width for s in strips)
        done = [0.0, 0]

        def advance(blocks: int) -> None:
            done[0] += blocks * total / mine
            whole = int(done[0]) - done[1]
            done[1] += whole
            on_blocks(whole)

        return advance

    def strips(self, plan: PassPlan) -> tuple[int, list[Strip]]:
        """The block batch and the strips one pass runs with."""
        cols = plan.grid[1]
        # Ranks may have planned different n from their own free memory: all use the smallest.
        n = min(self.peers.all_gather(plan.memory.block_batch, "agreeing on the block batch"))
        n = split_block_batch(n, cols, self.ranks.world)
        return n, column_strips(cols, n, self.ranks.world)

    # -- the ColumnSplit protocol of Upscaler.upscale ------------------------------------------
    def strip_runner(self, upscaler: Upscaler, inputs: PassInputs, plan: PassPlan,
                     on_blocks: Callable[[int], None] | None) -> tuple[range, StripRunner]:
        """This rank's block columns of the pass and the network call over them."""
        n, strips = self.strips(plan)
        strip = strips[self.ranks.rank]
        link = BoundaryLink(self.peers)
        runner = StripRunner(upscaler.model, inputs.model_lr, inputs.vector, replace(plan.memory, block_batch=n),
                             strip, link, on_group=self._progress(on_blocks, strips))
        self._pass = (link, runner, strips)
        return strip.cols, runner

    def join(self, strip_out: Tensor, plan: PassPlan, last: bool) -> Tensor | None:
        """The pass's whole output: on every rank when a pass follows, on rank 0 after the last."""
        assert self._pass is not None, "join() before strip_runner()"
        link, runner, strips = self._pass
        link.flush()
        self.link_stats.append(link.stats)
        self.band_bytes.append(runner.stats.peak_kv_bytes)
        bs = self.upscaler.config.block_size
        return gather_columns(self.peers, strip_out, [s.width * bs for s in strips], everyone=not last)
