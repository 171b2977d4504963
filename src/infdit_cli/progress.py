"""Progress of an upscale that moves: block groups × network calls, and layers inside a group.

The unit is one block through one network call (what `Upscaler.plan` counts). The engine reports
each finished group (`on_blocks`), which is exact; on a CPU the default plan is one big group per
call, so forward hooks on the transformer layers also move the bar by 1/L of the group after each
layer. On a terminal it is a rich bar with an ETA from the measured speed; elsewhere (logs, CI,
pipes) a plain line every `every` seconds; with `quiet` nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from infdit_cli.units import format_duration

__all__ = ["ImageProgress", "layer_ticks"]


class ImageProgress:
    """One progress display for a batch: an optional batch bar and one bar (or plain line) per image."""

    def __init__(self, console: Console, quiet: bool = False, every: float = 10.0, batch_total: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.quiet, self.every, self.clock = console, quiet, every, clock
        self.live = not quiet and console.is_terminal
        self._rich: Progress | None = None
        self._batch_task: Any = None
        self._task: Any = None
        self.name, self.total, self.done, self.partial = "", 0.0, 0.0, 0.0
        self._start = self._last_line = 0.0
        if self.live:
            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
            if batch_total > 1:
                self._batch_task = self._rich.add_task("batch", total=batch_total)

    def __enter__(self) -> ImageProgress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def start_image(self, name: str, total: int) -> None:
        """A new image of `total` units (blocks × network calls)."""
        self.name, self.total, self.done, self.partial = name, float(total), 0.0, 0.0
        self._start = self._last_line = self.clock()
        if self._rich is not None:
            self._task = self._rich.add_task(escape(name), total=total)

    def blocks_done(self, n: int) -> None:
        """A group of n blocks finished one network call (exact; resets the in-group layer ticks)."""
        self.done = min(self.total, self.done + n)
        self.partial = 0.0
        self._show()

    def layer_done(self, fraction_of_unit: float) -> None:
        """A layer finished inside a group: the bar moves by that share of the group's blocks."""
        self.partial += fraction_of_unit
        self._show()

    def end_image(self) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.remove_task(self._task)
            self._task = None
            if self._batch_task is not None:
                self._rich.advance(self._batch_task)

    @property
    def completed(self) -> float:
        return min(self.total, self.done + self.partial)

    def eta(self) -> float | None:
        """Seconds left at the speed measured so far on this image (None before any progress)."""
        elapsed = self.clock() - self._start
        if self.completed <= 0 or elapsed <= 0:
            return None
        return (self.total - self.completed) * elapsed / self.completed

    def line(self) -> str:
        """The plain progress line: name, percent, units, elapsed, ETA."""
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        eta = self.eta()
        left = "" if eta is None or self.completed >= self.total else f", ~{format_duration(eta)} left"
        return (f"{self.name}: {pct:.0f}% ({self.completed:.0f}/{self.total:.0f} block-calls), "
                f"{format_duration(self.clock() - self._start)} elapsed{left}")

    def _show(self) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            if self._task is not None:
                self._rich.update(self._task, completed=self.completed)
            return
        now = self.clock()
        if now - self._last_line >= self.every:
            self._last_line = now
            self.console.print(escape(self.line()), highlight=False, soft_wrap=True)


@contextmanager
def layer_ticks(model: Any, progress: ImageProgress) -> Iterator[None]:
    """Move `progress` after every transformer layer of `model` (forward hooks, removed on exit).

    A layer's output is [B, X, Y, T, C] for an X×Y group of blocks (see UniBALayer.forward), so
    each layer moves the bar by X·Y / L units.
    """
    blocks = list(getattr(model, "blocks", []))
    if progress.quiet or not blocks:
        yield
        return
    share = 1.0 / len(blocks)

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if getattr(out, "ndim", 0) == 5:
            progress.layer_done(out.shape[1] * out.shape[2] * share)

    handles = [blk.register_forward_hook(hook) for blk in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
