"""One image across ranks: each rank streams its strip of block columns; boundaries flow left to right.

UniBA makes every block read only its left, upper and upper-left neighbours, so a strip needs from
the strip on its left exactly one block column per group-row (its K/V in every layer) and the
corner block above it, which is the bottom of the column received for the previous group-row.
Rank p receives that column before it starts a group-row and sends its own right column to rank
p+1 as soon as it finishes one (asynchronously), so after a lag of one group-row per rank all ranks
compute at once. A strip runner is the streamed engine (`StreamedRunner`) over the strip, whose
neighbourhood takes its left edge from the received column (`StreamNeighbourhood.receive_edge`):
the model sees exactly what the single-process stream serves it.

Nothing waits for more than the data needs: no barrier per call; a rank may run one network call
ahead of the rank on its right (the sends of the call before are awaited at the end of a call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from infdit_cli.device import buffer
from infdit_cli.distributed.context import Peers
from infdit_cli.distributed.strips import Strip
from infdit_cli.engine.placement import Plan
from infdit_cli.engine.runner import Group, StreamedRunner
from infdit_cli.engine.stream import StreamNeighbourhood
from infdit_cli.model.network import InfDiT


@dataclass
class LinkStats:
    """Traffic and waiting of one rank, for benchmarks and --verbose."""

    bytes_sent: int = 0
    bytes_received: int = 0
    wait_seconds: float = 0.0  # receiving (the left rank's compute not yet done) and completing sends
    waits: list[float] = field(default_factory=list)  # each receive's wait, in order (where the time goes)


class BoundaryLink:
    """Point-to-point boundary columns between neighbouring ranks (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.rank, self.world = peers.ranks.rank, peers.ranks.world
        self.stats = LinkStats()
        self._sending: list[tuple[Callable[[], None], Tensor]] = []  # this call's sends
        self._previous: list[tuple[Callable[[], None], Tensor]] = []  # the call before's

    @property
    def has_left(self) -> bool:
        return self.rank > 0

    @property
    def has_right(self) -> bool:
        return self.rank < self.world - 1

    def receive(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """The left rank's next column, received straight into a buffer on `device` (the compute device)."""
        buf = buffer(shape, dtype, device)
        start = time.perf_counter()
        self.peers.recv(buf, self.rank - 1, f"receiving a boundary column from rank {self.rank - 1}")
        waited = time.perf_counter() - start
        self.stats.wait_seconds += waited
        self.stats.waits.append(waited)
        self.stats.bytes_received += buf.numel() * buf.element_size()
        return buf

    def send(self, column: Tensor) -> None:
        """Start sending a column to the right rank; the tensor is kept until the send completes."""
        wait = self.peers.isend(column, self.rank + 1, f"sending a boundary column to rank {self.rank + 1}")
        self._sending.append((wait, column))
        self.stats.bytes_sent += column.numel() * column.element_size()

    def end_call(self) -> None:
        """Wait for the previous call's sends: at most two calls' columns are held, and a rank runs at
        most one call ahead of the rank on its right. No barrier: nothing else needs the ranks in step."""
        self._wait(self._previous)
        self._previous, self._sending = self._sending, []

    def flush(self) -> None:
        """Wait for every send (the end of a pass)."""
        self._wait(self._previous)
        self._wait(self._sending)

    def _wait(self, pending: list[tuple[Callable[[], None], Tensor]]) -> None:
        start = time.perf_counter()
        for wait, _column in pending:
            wait()
        pending.clear()
        self.stats.wait_seconds += time.perf_counter() - start


class StripRunner(StreamedRunner):
    """A NetworkCall over one rank's strip: (c_in-scaled strip input, c_noise) -> the strip's F.

    The streamed engine over the strip's block columns (every placement of the single-process
    stream: band and sampler state on the device or the host), with the strip's left edge received
    from the rank on the left and its right edge sent to the rank on the right, on the compute device.
    The block batch is the one every rank agreed on, so there is no out-of-memory re-plan here.
    """

    def __init__(self, net: InfDiT, lr: Tensor | None, vector: Tensor | None, block_batch: Plan | int,
                 strip: Strip, link: BoundaryLink, token_offset: tuple[int, int] = (0, 0),
                 on_group: Callable[[int], None] | None = None) -> None:
        super().__init__(net, lr, vector, block_batch, token_offset, on_group, first_col=strip.cols.start)
        self.strip, self.link = strip, link

    def _grid(self, net_in: Tensor) -> tuple[int, int]:
        grid = super()._grid(net_in)
        if net_in.shape[0] != 1 or grid[1] != self.strip.width:
            raise ValueError("a strip runner takes one image, exactly its strip wide")
        return grid

    def _shrink(self, grid: tuple[int, int]) -> bool:
        return False  # strips are whole groups of the agreed n: one rank alone cannot change it

    def _column_shape(self, rows: int) -> tuple[int, ...]:
        cfg = self.net.config
        return (cfg.num_layers, 2, 1, rows, cfg.block_tokens**2, cfg.num_heads, cfg.head_dim)

    def _begin_group(self, nbh: StreamNeighbourhood, group: Group) -> None:
        if group.cols.start != 0:
            return
        shape = self._column_shape(len(group.rows))  # a new group-row: its left edge, its outgoing column
        dtype = next(self.net.parameters()).dtype
        if self.link.has_left:
            nbh.receive_edge(self.link.receive(shape, dtype, self.device))
        nbh.send_edge(buffer(shape, dtype, self.device) if self.link.has_right else None)

    def _end_group(self, nbh: StreamNeighbourhood, group: Group) -> None:
        if group.last_col and nbh.outgoing is not None:
            self.link.send(nbh.outgoing)

    def _end_call(self) -> None:
        self.link.end_call()
