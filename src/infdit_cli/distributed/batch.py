"""Many files across ranks: one authoritative pending list, a pixel-balanced share each, one summary.

Rank 0 decides what is pending (its view of `--skip-existing` and of existing outputs), so ranks
that start a few seconds apart can never disagree on the list while another rank is already
writing outputs; each rank then takes its share, and rank 0 gathers what every rank did. Ranks
finish their shares hours apart if they must: each posts its report in the job's store and the
waits are on the posters' heartbeats (context.await_key), so a lost rank is noticed within
`INFDIT_DIST_TIMEOUT`, and a busy one is waited for.
"""

from __future__ import annotations

import atexit
import pickle
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from infdit_cli.distributed.checkpoint import Checkpoint, CheckpointError, image_checkpoint, tensor_digest
from infdit_cli.distributed.context import (
    DistributedError,
    Peers,
    Ranks,
    all_gather,
    await_key,
    broadcast,
    job_store,
    peer_errors,
    rank_device,
    ranks_from_env,
    start,
    stop,
)
from infdit_cli.distributed.shard import image_pixels, share
from infdit_cli.distributed.split import SplitUpscale, agree_across
from infdit_cli.pipeline import PassPlan, UpscaleOptions, Upscaler, UpscaleResult

J = TypeVar("J")


@dataclass
class RankReport:
    """What one rank did with its share (picklable, gathered to rank 0)."""

    rank: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)  # {"input": ..., "error": ...}
    skipped: int = 0


@dataclass
class Summary:
    """Every rank's reports merged on rank 0: outputs in input order; outputs and failures carry their rank."""

    outputs: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    skipped: int
    ranks: int


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: unwind like Ctrl-C, so no temporary
    output survives."""
    raise KeyboardInterrupt


@dataclass
class Session:
    """This process's rank and device."""

    ranks: Ranks
    device: torch.device

    def share(self, jobs: Sequence[J], make: Callable[[Path, Path], J], split_image: bool = False) -> list[J]:
        """This rank's jobs, from rank 0's pending list: a pixel-balanced share, or every job when each
        image is split across all ranks. Objects with .source and .target paths."""
        ranks = self.ranks
        if not ranks.distributed:
            return list(jobs)
        pending = None
        if ranks.is_root:
            pairs = [(str(j.source), str(j.target)) for j in jobs]  # type: ignore[attr-defined]
            pending = (pairs, [1 if split_image else image_pixels(Path(s)) for s, _ in pairs])
        pairs, weights = broadcast(ranks, pending, "sharing the file list")
        mine = range(len(pairs)) if split_image else share(pairs, weights, ranks.rank, ranks.world)
        return [make(Path(pairs[i][0]), Path(pairs[i][1])) for i in mine]

    def writes(self, split_image: bool) -> bool:
        """Whether this rank writes (and reports) its images: all ranks with shares, rank 0 for split images."""
        return self.ranks.is_root or not split_image

    def checkpoint(self, root: Path | None, target: Path, model_hash: str, split_image: bool) -> Checkpoint | None:
        """The resumable-sampling hook of one output (None without --checkpoint)."""
        if root is None:
            return None
        if split_image and self.ranks.distributed:
            return image_checkpoint(root, target, model_hash, self.ranks.rank, self.ranks.world,
                                    agree_across(Peers(self.ranks)))
        return image_checkpoint(root, target, model_hash)

    def upscale(self, upscaler: Upscaler, image: torch.Tensor, options: UpscaleOptions, plans: list[PassPlan],
                on_blocks: Callable[[int], None] | None, checkpoint: Checkpoint | None,
                split_image: bool) -> UpscaleResult:
        """One image: alone (or this rank's file), or split across every rank."""
        sample = None if checkpoint is None else checkpoint.sample
        if split_image and self.ranks.distributed:
            # Every rank must be on the same image with the same pixels, or the exchanges would pair
            # unrelated calls: check before the first one.
            seen = all_gather(self.ranks, tensor_digest(image), "starting an image")
            if len(set(seen)) > 1:
                raise DistributedError(f"rank {self.ranks.rank}: the ranks read different pixels for this image "
                                       "(a split image needs the same input file on every node)")
            try:
                return SplitUpscale(upscaler, self.ranks, on_blocks).upscale(image, options, plans, sample)
            except CheckpointError as exc:  # this rank's files only: its peers would wait for it forever
                raise DistributedError(f"rank {self.ranks.rank}: {exc}") from None
        return upscaler.upscale(image, options, on_blocks=on_blocks, plans=plans, sample=sample)

    def gather(self, report: RankReport) -> Summary | None:
        """All reports merged on rank 0 (None elsewhere), outputs in input order."""
        ranks = self.ranks
        if not ranks.distributed:
            return Summary(report.outputs, report.failures, report.skipped, 1)
        what = "gathering the summary"
        with peer_errors(ranks, what):
            job_store().set(f"infdit/report/{ranks.rank}", pickle.dumps(report))
        if not ranks.is_root:  # posted: rank 0 (which hosts the store, or torchrun's agent does) reads it
            stop()
            return None
        reports = [report] + [pickle.loads(await_key(ranks, f"infdit/report/{r}", r, what))
                              for r in range(1, ranks.world)]  # pickled by our own ranks
        stop()
        outputs = sorted((dict(o, rank=r.rank) for r in reports for o in r.outputs), key=lambda o: o["input"])
        failures = [dict(f, rank=r.rank) for r in reports for f in r.failures]
        return Summary(outputs, failures, sum(r.skipped for r in reports), ranks.world)


def join(device: torch.device) -> Session:
    """This process's rank and device; joins the process group when started by torchrun."""
    ranks = ranks_from_env()
    if not ranks.distributed:
        return Session(ranks, device)
    device = rank_device(device, ranks)
    start(ranks, device)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    atexit.register(stop)  # error paths: leave the group before the interpreter tears torch down
    return Session(ranks, device)


__all__ = ["RankReport", "Session", "Summary", "join"]
