"""An out-of-core upscale: each pass band after band (engine/bands.py), the result as bands of rows.

`Upscaler.plan` marks a pass out of core (`PassPlan.host`) when its image-sized state does not fit the
host budget. Such a pass samples one band of block rows at a time: the band's bicubic start
(`upsample_lr_rows`), its block noise (the image's, block for block), the same sampler over a
`BandRunner`. The last pass's bands are yielded as they finish (`imageio.save_bands` writes them), so
host memory holds a band, the LR and the kept KV edges, not the image; an earlier pass of ×8/×16 is
gathered in RAM, since it is the next pass's LR (1/4 or 1/16 of the output's area).

Resumable (`checkpoint`): each band is an index of the `Checkpoint` (its steps saved as a band's state,
dropped once the band is done, when only its rows stay), and the KV edges live memory-mapped in the
checkpoint folder, so a rerun skips the finished bands (their rows are read back for the writer),
continues the band it stopped in at its last step, and reads that band's upper edge intact. Never more
than a band of state is written per step; the finished rows add up to the image once (float32).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infdit_cli.device import inferring, working_on
from infdit_cli.engine import EngineStats
from infdit_cli.engine.bands import BandRunner, EdgeStore, HostPlan
from infdit_cli.engine.measure import RssPeak
from infdit_cli.engine.region import sample_region
from infdit_cli.preprocess import upsample_lr_rows
from infdit_cli.samplers import get_sampler, uses_state


def is_banded(plans: list[Any]) -> bool:
    """Whether any pass of the plan runs out of core."""
    return any(p.host is not None and p.host.banded for p in plans)


class BandedUpscale:
    """Iterate to run the upscale: [1, 3, rows, W·s] bands in [0, 1] (CPU, float32), top to bottom, whose
    rows make the image; `stats` (per pass), `seconds` and `rss_growth_bytes` are set once the last band is
    out, as on an `UpscaleResult` (`Upscaler.upscale` gathers the bands into one; this module cannot import
    the pipeline, which calls it).

    `upscaler`: a `pipeline.Upscaler`; `options`: its `UpscaleOptions`; `plans`: its `plan()`.
    """

    def __init__(self, upscaler: Any, image: Tensor, options: Any, plans: list[Any],
                 on_blocks: Callable[[int], None] | None = None, checkpoint: Any | None = None) -> None:
        self.upscaler = upscaler
        self.checkpoint = checkpoint  # a distributed.checkpoint.Checkpoint: resumable band by band
        self.image = image
        self.options = upscaler.options(options)
        self.plans = plans
        self.on_blocks = on_blocks
        self.stats: list[EngineStats] = []
        self.seconds = 0.0
        self.rss_growth_bytes: int | None = None
        self.finished = False

    def __iter__(self) -> Iterator[Tensor]:
        start = time.perf_counter()
        x, stats = self.image.float(), []
        with RssPeak() as rss:
            for index, plan in enumerate(self.plans):
                st = EngineStats()
                bands = self._pass(x, plan, index, st)
                if index == len(self.plans) - 1:
                    yield from bands
                else:
                    x = torch.cat(list(bands), dim=-2)  # the next pass's LR
                stats.append(st)
        self.stats, self.seconds, self.rss_growth_bytes = stats, time.perf_counter() - start, rss.growth
        self.finished = True

    @inferring
    def _pass(self, image01: Tensor, plan: Any, index: int, stats: EngineStats) -> Iterator[Tensor]:
        up, options = self.upscaler, self.options
        cfg, bs, dev = up.config, up.config.block_size, up.state_device(plan)
        host = plan.host or HostPlan(plan.grid[0], plan.grid[0], 0, 0, False)
        inputs = up.pass_inputs(image01, plan, options, index)
        sampler = get_sampler(options.sampler, up._sampler_options(options))
        sigmas, seed, (h, w), lead = inputs.sigmas, inputs.seed, inputs.crop, inputs.lead
        scratch = Path(options.scratch) if options.scratch else None
        ckpt = self.checkpoint
        if ckpt is None:
            edges = EdgeStore(plan.nfe, cfg, plan.grid[1], up.dtype, _edge_folder(host, scratch))
        else:
            ckpt.require_disk(_checkpoint_bytes(plan, host, bs, uses_state(sampler)),
                              "finished bands, KV edges, a band's progress")
            edges = EdgeStore(plan.nfe, cfg, plan.grid[1], up.dtype, ckpt.folder / f"pass{index}-edges", keep=True)
        layout = {"bands (--max-host-memory)": f"{host.band_rows} of {host.rows} block rows"}
        try:
            for band, r0 in enumerate(range(0, plan.grid[0], host.band_rows)):
                r1 = min(plan.grid[0], r0 + host.band_rows)
                with working_on(dev):
                    lr_up = upsample_lr_rows(inputs.lr_pad, plan.factor, range(r0 * bs, r1 * bs))
                    runner = BandRunner(up.model, inputs.model_lr, inputs.vector, plan.memory, band, r0, edges,
                                        on_group=self.on_blocks)
                    hook = None if ckpt is None else _band_hook(ckpt, f"{index}-band{band}", runner, layout)
                    out = sample_region(sampler, runner, lr_up, sigmas, seed, bs, cfg.sigma_data, dev,
                                        first_row=r0, sample=hook, start_noise=options.start_noise).float()
                if ckpt is not None:
                    edges.flush()
                    ckpt.drop_progress(f"{index}-band{band}")
                _merge(stats, runner.stats, host)
                top, bottom = max(r0 * bs, lead), min(r1 * bs, lead + h)  # the real image's rows in this band
                if bottom > top:
                    band_rows = out[..., top - r0 * bs: bottom - r0 * bs, lead: lead + w]
                    yield ((band_rows + 1) / 2).clamp(0, 1).cpu()
        finally:
            edges.close()


def _checkpoint_bytes(plan: Any, host: HostPlan, block_size: int, state_mode: bool) -> int:
    """Disk a checkpointed out-of-core pass takes at most: every band's rows (float32), the two copies of
    the KV edges, and one band's progress (two states, or the call log of a sampler with hidden state)."""
    rows, cols = plan.grid
    band = 3 * 4 * host.band_rows * block_size * cols * block_size
    progress = (2 if state_mode else plan.nfe + 1) * band
    return 3 * 4 * rows * block_size * cols * block_size + 2 * host.edge_bytes + progress


def _band_hook(ckpt: Any, name: str, runner: BandRunner, layout: dict[str, str]) -> Any:
    """The checkpoint's resumable sampling for one band; the runner's calls (its KV edge slots) start where
    the checkpoint resumes."""

    def resume_at(calls: int) -> None:
        runner.call = calls

    def hook(sampler: Any, denoiser: Any, x0: Tensor, sigmas: Tensor, noise: Any, _index: int) -> Tensor:
        return ckpt.sample(sampler, denoiser, x0, sigmas, noise, name, on_resume=resume_at, extra=layout)

    return hook


def _edge_folder(host: HostPlan, scratch: Path | None) -> Path | None:
    if not host.edges_on_disk:
        return None
    import tempfile

    return scratch if scratch is not None else Path(tempfile.gettempdir())


def _merge(total: EngineStats, band: EngineStats, host: HostPlan) -> None:
    """One pass's figures from its bands': every band makes the pass's calls; work and time add up."""
    total.calls = max(total.calls, band.calls)
    total.tokens += band.tokens
    total.flops += band.flops
    total.seconds += band.seconds
    total.peak_kv_bytes = max(total.peak_kv_bytes, band.peak_kv_bytes)
    total.peak_device_bytes = max(total.peak_device_bytes, band.peak_device_bytes)
    total.peak_device_source = band.peak_device_source
    total.host_bytes = max(total.host_bytes, band.host_bytes)
    total.block_batch = band.block_batch
    total.placement = f"{band.placement}, {host.name}"
    total.oom_retries += band.oom_retries
