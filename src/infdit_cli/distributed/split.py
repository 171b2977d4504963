"""One upscale with its block columns split across ranks: the same passes, strips of sampler state.

Each rank holds only its strip of x, of the upsampled LR and of the noise; the sampler runs on the
strip (every built-in update is elementwise), the ranks agree on sigma because they compute the same
schedule, and the network call is the wavefront in `wavefront.py`. After each pass the strips are
gathered so that every rank has the whole image (the next pass's input, rank 0's file).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from infdit_cli.distributed.checkpoint import Agree
from infdit_cli.distributed.context import Ranks, all_gather, peer_errors
from infdit_cli.distributed.strips import Strip, column_strips, split_block_batch
from infdit_cli.distributed.wavefront import BoundaryLink, LinkStats, StripRunner
from infdit_cli.engine.noise import block_seed
from infdit_cli.engine.runner import EngineStats
from infdit_cli.model import EDMDenoiser
from infdit_cli.pipeline import PassPlan, SampleHook, UpscaleOptions, Upscaler, UpscaleResult
from infdit_cli.samplers import get_sampler


def strip_noise(seed: int, step: int, shape: tuple[int, ...], strip: Strip, block_size: int,
                device: torch.device) -> Tensor:
    """`block_noise` of the whole image restricted to the strip's columns: the same numbers, block for block."""
    b, c, h, _ = shape
    out = torch.empty((b, c, h, strip.width * block_size), dtype=torch.float32)
    gen = torch.Generator()
    for i in range(h // block_size):
        for j, col in enumerate(strip.cols):
            gen.manual_seed(block_seed(seed, i, col, step))
            out[:, :, i * block_size:(i + 1) * block_size, j * block_size:(j + 1) * block_size] = torch.randn(
                (b, c, block_size, block_size), generator=gen)
    return out.to(device)


def agree_across(ranks: Ranks) -> Agree:
    """Checkpoint agreement: the newest position that every rank can resume from."""

    def agree(mine: list[int]) -> int:
        everyone = all_gather(ranks, mine, "agreeing on the checkpoint step")
        common = set(everyone[0]).intersection(*map(set, everyone[1:]))
        return max(common)

    return agree


def gather_columns(ranks: Ranks, strip_out: Tensor, widths: list[int]) -> Tensor:
    """Every rank's strip, left to right, on every rank (strips padded to one width for the collective)."""
    if not ranks.distributed:
        return strip_out
    import torch.distributed as dist

    wide = max(widths)
    buf = strip_out.new_zeros(*strip_out.shape[:-1], wide)
    buf[..., : strip_out.shape[-1]] = strip_out
    parts = [torch.empty_like(buf) for _ in range(ranks.world)]
    with peer_errors(ranks, "gathering the image strips"):
        dist.all_gather(parts, buf)
    return torch.cat([p[..., :w] for p, w in zip(parts, widths, strict=True)], dim=-1)


class SplitUpscale:
    """Upscale one image with its block columns spread over all ranks (rank-independent result)."""

    def __init__(self, upscaler: Upscaler, ranks: Ranks, on_blocks: Callable[[int], None] | None = None) -> None:
        self.upscaler = upscaler
        self.ranks = ranks
        self.on_blocks = on_blocks  # progress: called with the blocks of the whole image a group stands for
        self.link_stats: list[LinkStats] = []  # per pass
        self.band_bytes: list[int] = []  # per pass: the largest KV band (top row of the strip) this rank held

    def upscale(self, image: Tensor, options: UpscaleOptions, plans: list[PassPlan] | None = None,
                sample: SampleHook | None = None) -> UpscaleResult:
        """image: [1, 3, h, w] in [0, 1], the same on every rank; returns the whole result on every rank."""
        options.validate()
        if plans is None:
            plans = self.upscaler.plan(tuple(image.shape[-2:]), options)
        start = time.perf_counter()
        x, stats = image.float(), []
        for index, plan in enumerate(plans):
            x, st = self._one_pass(x, plan, options, index, sample)
            stats.append(st)
        return UpscaleResult(x.clamp(0, 1).cpu(), plans, stats, time.perf_counter() - start)

    def _progress(self, strips: list[Strip]) -> Callable[[int], None] | None:
        """This rank's blocks scaled to the whole image, so one rank's bar reaches the image's total."""
        if self.on_blocks is None:
            return None
        on_blocks, mine, total = self.on_blocks, strips[self.ranks.rank].width, sum(s.width for s in strips)
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
        n = min(all_gather(self.ranks, plan.memory.block_batch, "agreeing on the block batch"))
        n = split_block_batch(n, cols, self.ranks.world)
        return n, column_strips(cols, n, self.ranks.world)

    @torch.no_grad()
    def _one_pass(self, image01: Tensor, plan: PassPlan, options: UpscaleOptions, index: int,
                  sample: SampleHook | None) -> tuple[Tensor, EngineStats]:
        up = self.upscaler
        cfg, dev, bs = up.config, up.device, up.config.block_size
        inputs = up.pass_inputs(image01, plan, options, index)
        n, strips = self.strips(plan)
        strip = strips[self.ranks.rank]
        lr_up = inputs.lr_up[..., strip.cols.start * bs:strip.cols.stop * bs]
        link = BoundaryLink(self.ranks)
        runner = StripRunner(up.model, inputs.model_lr, inputs.vector, n, plan.grid[0], strip, link,
                             on_group=self._progress(strips))
        denoiser = EDMDenoiser(runner, lr_up, cfg.sigma_data)
        sampler = get_sampler(options.sampler, up._sampler_options(options))
        shape, sigmas, seed = tuple(inputs.lr_up.shape), inputs.sigmas, inputs.seed

        def noise(step: int) -> Tensor:
            return strip_noise(seed, step + 1, shape, strip, bs, dev)

        x0 = lr_up + sigmas[0] * strip_noise(seed, 0, shape, strip, bs, dev)
        if sample is None:
            out = sampler.sample(denoiser, x0, sigmas, noise)
        else:
            out = sample(sampler, denoiser, x0, sigmas, noise, index)
        out = gather_columns(self.ranks, out.float(), [s.width * bs for s in strips])
        h, w = inputs.crop
        out = out[..., :h, :w]
        self.link_stats.append(link.stats)
        self.band_bytes.append(runner.band_bytes)
        stats = EngineStats(calls=runner.calls, seconds=runner.seconds, peak_kv_bytes=runner.band_bytes,
                            block_batch=n)
        return ((out + 1) / 2).clamp(0, 1), stats
