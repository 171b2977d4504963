"""The device seam: the one module that calls `torch.cuda.*` (and the attention kernel choice).

Free memory, synchronisation, peak statistics, peak resets, seeded generators, the out-of-memory
type and the region where work happens on a device all go through here, so the rest of infdit
never asks the driver directly and a test can stand in a simulated card (`use`). The simulated
card in tests/test_fake_cuda.py runs every CUDA placement under FakeTensorMode on a machine
without a GPU: devices, dtypes and shapes flow through the real code, values are not computed.

A leaf module (torch only), so the model, the engine, the bench and the distributed layer can
all reach it without an upward import.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch
from torch import Tensor

OutOfMemoryError = torch.cuda.OutOfMemoryError  # what a full card raises (a RuntimeError)

F = TypeVar("F", bound=Callable[..., Any])


class Card:
    """The CUDA driver as infdit uses it. This one is the real driver; a test may `use` another."""

    def available(self) -> bool:
        return torch.cuda.is_available()

    def count(self) -> int:
        return torch.cuda.device_count()

    def select(self, index: int) -> None:
        torch.cuda.set_device(index)

    def index(self, device: torch.device) -> int:
        return device.index if device.index is not None else torch.cuda.current_device()

    def name(self, device: torch.device) -> str:
        return torch.cuda.get_device_properties(device).name

    def total_bytes(self, device: torch.device) -> int:
        return int(torch.cuda.get_device_properties(device).total_memory)

    def free_bytes(self, device: torch.device) -> int:
        """Free memory plus what our own caching allocator holds unused (it is ours to reuse)."""
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))

    def synchronize(self, device: torch.device) -> None:
        torch.cuda.synchronize(device)

    def reset_peak(self, device: torch.device) -> None:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    def peak_bytes(self, device: torch.device) -> int:
        return int(torch.cuda.max_memory_allocated(device))

    def release_cache(self) -> None:
        torch.cuda.empty_cache()

    def allocating(self, device: torch.device, nbytes: int) -> None:
        """Called before the engine's large device buffers (band, outputs, boundary columns); the
        real allocator needs no notice (it raises OutOfMemoryError itself)."""

    def generator_device(self, device: torch.device) -> torch.device:
        """Where a seeded generator for `device` draws (on the card itself: no host copy)."""
        return device

    def working_on(self, device: torch.device) -> AbstractContextManager[Any]:
        """Make `device` the current card for the region (ranks with one GPU each)."""
        return torch.cuda.device(device) if device.index is not None else contextlib.nullcontext()

    def host_region(self) -> AbstractContextManager[Any]:
        """A region whose new tensors live in host memory (nothing to do on a real machine)."""
        return contextlib.nullcontext()

    def inference(self) -> AbstractContextManager[Any]:
        return torch.inference_mode()

    def attention_kernels(self) -> AbstractContextManager[Any]:
        # cuDNN attention is ~1.6x faster than flash for head_dim 80 at these shapes (H200
        # measurement); torch falls back down the list when a backend cannot take the inputs.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
        return sdpa_kernel(order, set_priority=True)

    def version(self) -> str | None:
        return torch.version.cuda


_card: Card = Card()


def card() -> Card:
    """The card in use (the real driver unless a test stands in another)."""
    return _card


@contextlib.contextmanager
def use(replacement: Card) -> Iterator[Card]:
    """Stand in another card for the block (tests: a simulated GPU)."""
    global _card
    before, _card = _card, replacement
    try:
        yield replacement
    finally:
        _card = before


def _cuda(device: torch.device | str) -> torch.device | None:
    device = torch.device(device)
    return device if device.type == "cuda" else None


def cuda_available() -> bool:
    return _card.available()


def free_bytes(device: torch.device) -> int | None:
    """Bytes free for us on a CUDA device; None for other devices (the caller knows their memory)."""
    cuda = _cuda(device)
    return None if cuda is None else _card.free_bytes(cuda)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a clock reads finished work."""
    device = torch.device(device)
    if device.type == "cuda":
        _card.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak(device: torch.device) -> None:
    """Start a fresh allocator peak (per image, per bench row); nothing to do off CUDA."""
    cuda = _cuda(device)
    if cuda is not None:
        _card.reset_peak(cuda)


def peak_bytes(device: torch.device) -> int | None:
    """The allocator's peak since the last reset (CUDA); None where there is no allocator counter."""
    cuda = _cuda(device)
    return None if cuda is None else _card.peak_bytes(cuda)


def release_cache(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, before trying smaller."""
    if _cuda(device) is not None:
        _card.release_cache()


def pin_for(device: torch.device) -> bool:
    """Whether host buffers that feed `device` are pinned (page-locked: asynchronous copies)."""
    return torch.device(device).type == "cuda"


def _reserve(device: torch.device, shape: Sequence[int], dtype: torch.dtype) -> None:
    if device.type == "cuda":
        count = 1
        for s in shape:
            count *= int(s)
        _card.allocating(device, count * dtype.itemsize)


def buffer(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str, *, zero: bool = False,
           pin: bool = False) -> Tensor:
    """An engine buffer on `device` (pinned host memory with `pin`); the one place a card may refuse."""
    device = torch.device(device)
    _reserve(device, shape, dtype)
    make = torch.zeros if zero else torch.empty
    return make(tuple(shape), dtype=dtype, device=device, pin_memory=pin and device.type == "cpu")


def buffer_like(like: Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised buffer beside `like` (same device): a call's output where its input lives."""
    dtype = dtype or like.dtype
    _reserve(like.device, shape, dtype)
    return like.new_empty(tuple(shape), dtype=dtype)


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator for drawing tensors meant for `device` (see `randn`)."""
    return torch.Generator(device=_card.generator_device(torch.device(device))).manual_seed(seed)


def randn(shape: Sequence[int], gen: torch.Generator, device: torch.device | str,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """N(0, 1) drawn by `gen` where it lives, delivered on `device`."""
    out = torch.randn(tuple(shape), generator=gen, device=gen.device, dtype=dtype)
    return out.to(device)


def working_on(device: torch.device | str) -> AbstractContextManager[Any]:
    """The region in which work (and new tensors) happen on `device`: the sampler on the device
    that holds its state, a network call on the model's device."""
    device = torch.device(device)
    if device.type == "cuda":
        return _card.working_on(device)
    if device.type == "cpu":
        return _card.host_region()
    return contextlib.nullcontext()


def inference() -> AbstractContextManager[Any]:
    """No autograd: `torch.inference_mode` (a simulated card runs its fake kernels under no_grad)."""
    return _card.inference()


def inferring(fn: F) -> F:
    """Decorator: run `fn` under `inference()` (chosen at call time, so a stood-in card applies)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _card.inference():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def attention_kernels(q: Tensor) -> AbstractContextManager[Any]:
    """The scaled-dot-product attention backends for `q`'s device, fastest first (CUDA only)."""
    return _card.attention_kernels() if q.is_cuda else contextlib.nullcontext()


def select(index: int) -> None:
    """Make CUDA device `index` this process's own (one rank per GPU)."""
    _card.select(index)


def count() -> int:
    return _card.count()


def describe(device: torch.device) -> tuple[str, str, int, str | None]:
    """(cuda:i, marketing name, total memory, CUDA version) of a CUDA device."""
    return f"cuda:{_card.index(device)}", _card.name(device), _card.total_bytes(device), _card.version()
