"""Many files across ranks: one authoritative pending list, a pixel-balanced share each, one summary.

Rank 0 decides what is pending (its view of `--skip-existing` and of existing outputs), so ranks
that start a few seconds apart can never disagree on the list while another rank is already
writing outputs; each rank then takes its share, and rank 0 gathers what every rank did.
"""

from __future__ import annotations

import datetime
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from infdit_cli.distributed.context import (
    Ranks,
    broadcast,
    peer_errors,
    rank_device,
    ranks_from_env,
    start,
)
from infdit_cli.distributed.shard import image_pixels, share

J = TypeVar("J")
SUMMARY_WAIT = datetime.timedelta(days=7)  # ranks finish their shares at different times


@dataclass
class RankReport:
    """What one rank did with its share (picklable, gathered to rank 0)."""

    rank: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)  # {"input": ..., "error": ...}
    skipped: int = 0


@dataclass
class Summary:
    """Every rank's reports merged: outputs in input order, failures with the rank that met them."""

    outputs: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    skipped: int
    ranks: int

    def line(self) -> str:
        """One line for stderr: what the whole job did, naming the files that failed and their ranks."""
        text = f"{len(self.outputs)} written, {len(self.failures)} failed, {self.skipped} skipped on {self.ranks} ranks"
        if self.failures:
            text += ": " + ", ".join(f"{Path(f['input']).name} (rank {f['rank']})" for f in self.failures[:5])
            text += ", ..." if len(self.failures) > 5 else ""
        return text

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"outputs": self.outputs, "failed": len(self.failures), "skipped": self.skipped}
        if self.ranks > 1:
            data["errors"] = self.failures
            data["ranks"] = self.ranks
        return data


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """torchrun stops the other ranks with SIGTERM when one fails: unwind like Ctrl-C, so no temporary
    output survives."""
    raise KeyboardInterrupt


@dataclass
class Session:
    """This process's rank, device and the channel its summary travels on."""

    ranks: Ranks
    device: torch.device
    summary_group: Any = None  # a gloo group with a long timeout: ranks finish their shares at different times

    def assign(self, jobs: Sequence[J], make: Callable[[Path, Path], J]) -> list[J]:
        """This rank's share of rank 0's pending jobs (objects with .source and .target paths)."""
        ranks = self.ranks
        if not ranks.distributed:
            return list(jobs)
        pending = None
        if ranks.is_root:
            pairs = [(str(j.source), str(j.target)) for j in jobs]  # type: ignore[attr-defined]
            pending = (pairs, [image_pixels(Path(s)) for s, _ in pairs])
        pairs, weights = broadcast(ranks, pending, "sharing the file list")
        return [make(Path(pairs[i][0]), Path(pairs[i][1])) for i in share(pairs, weights, ranks.rank, ranks.world)]

    def gather(self, report: RankReport, order: Sequence[str] | None = None) -> Summary | None:
        """All reports merged on rank 0 (None elsewhere), outputs in `order` of inputs."""
        ranks = self.ranks
        if not ranks.distributed:
            return Summary(report.outputs, report.failures, report.skipped, 1)
        import torch.distributed as dist

        reports: list[Any] = [None] * ranks.world
        with peer_errors(ranks, "gathering the summary"):
            dist.all_gather_object(reports, report, group=self.summary_group)
        if not ranks.is_root:
            return None
        position = {name: i for i, name in enumerate(order or [])}
        outputs = sorted((o for r in reports for o in r.outputs),
                         key=lambda o: position.get(o["input"], len(position)))
        failures = [dict(f, rank=r.rank) for r in reports for f in r.failures]
        return Summary(outputs, failures, sum(r.skipped for r in reports), ranks.world)


def join(device: torch.device) -> Session:
    """This process's rank and device; joins the process group when started by torchrun."""
    ranks = ranks_from_env()
    if not ranks.distributed:
        return Session(ranks, device)
    import torch.distributed as dist

    device = rank_device(device, ranks)
    start(ranks, device)
    with peer_errors(ranks, "opening the summary channel"):
        group = dist.new_group(backend="gloo", timeout=SUMMARY_WAIT)
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    return Session(ranks, device, group)


__all__ = ["RankReport", "Session", "Summary", "join"]
