"""Timing one block group of the real engine, whole or through its first few layers.

Shared by the pre-flight estimate (estimate.py) and `infdit bench`: the work is regular (every
group runs the same layers on the same shapes, and every layer after layer 0 costs the same),
so a group's time, or a few layers of it, stands for the rest.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from infdit_cli.device import synchronize
from infdit_cli.model.network import InfDiT

Clock = Callable[[], float]


class StopForward(Exception):
    """Raised from a forward hook to end a layer-limited timing run."""


def sync(device: torch.device) -> None:
    """Wait for queued device work, so the clock reads finished work."""
    synchronize(device)


class LayerClock:
    """Per-layer timestamps from forward hooks; with `limit`, stops the forward after that many layers."""

    def __init__(self, net: InfDiT, device: torch.device, clock: Clock, limit: int | None) -> None:
        self.net, self.device, self.clock, self.limit = net, device, clock, limit
        self.starts: dict[int, float] = {}
        self.ends: dict[int, float] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> LayerClock:
        if self.limit is None:
            return self
        for i, blk in enumerate(self.net.blocks):
            self._handles.append(blk.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(blk.register_forward_hook(self._post_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre_hook(self, i: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any) -> None:
            sync(self.device)
            self.starts[i] = self.clock()
        return hook

    def _post_hook(self, i: int) -> Callable[..., None]:
        def hook(_module: Any, _args: Any, _out: Any) -> None:
            sync(self.device)
            self.ends[i] = self.clock()
            if self.limit is not None and i + 1 >= self.limit:
                raise StopForward
        return hook

    def layer_seconds(self) -> list[float]:
        return [self.ends[i] - self.starts[i] for i in sorted(self.ends)]


@dataclass(frozen=True)
class GroupTiming:
    """One timed group: the whole forward, or the embedding and the first few layers."""

    blocks: int
    seconds: float | None = None  # every layer ran
    embed_seconds: float = 0.0  # layer-limited: patch embedding, RoPE tables, LR windows
    layer_seconds: tuple[float, ...] = ()  # layer-limited: layers 0..L-1

    def projected_seconds(self, num_layers: int, tail_fraction: float = 0.0) -> float:
        """The group's full forward: layer 0 (with cross-LR) + the mean later layer × the rest.

        tail_fraction: the output head's cost as a fraction of one layer (it is never timed here).
        """
        if self.seconds is not None:
            return self.seconds
        if not self.layer_seconds:
            raise ValueError("a layer-limited timing needs at least one layer")
        later = self.layer_seconds[1:] or self.layer_seconds[:1]
        per_layer = statistics.fmean(later)
        return (self.embed_seconds + self.layer_seconds[0] + (num_layers - 1) * per_layer
                + tail_fraction * per_layer)


def time_group(net: InfDiT, run: Callable[[], object], blocks: int, device: torch.device, clock: Clock,
               layers: int | None = None) -> GroupTiming:
    """Time `run` (one group through the network); with `layers`, only through that many layers."""
    limit = layers if layers is not None and layers < net.config.num_layers else None
    sync(device)
    start = clock()
    with LayerClock(net, device, clock, limit) as lc:
        try:
            run()
        except StopForward:
            pass
    sync(device)
    end = clock()
    if limit is None:
        return GroupTiming(blocks, seconds=end - start)
    return GroupTiming(blocks, embed_seconds=lc.starts[0] - start, layer_seconds=tuple(lc.layer_seconds()))
