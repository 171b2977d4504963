"""Per-block noise: each 128-px block's noise depends only on (seed, block row, block column, step).

So the same seed gives the same image whatever the block batch size, the order of processing or
the free memory. Noise is drawn on the CPU (bitwise identical across machines) into pinned memory
when it goes to a GPU, and moved without blocking. One seeded generator per block keeps every
shipped result reproducible; a vectorised counter-based generator would change every image.
"""

from __future__ import annotations

import hashlib
import struct

import torch
from torch import Tensor

from infdit_cli.device import buffer, pin_for


def block_seed(seed: int, row: int, col: int, step: int) -> int:
    """A 63-bit generator seed mixing the four integers (stable across Python versions)."""
    digest = hashlib.blake2b(struct.pack("<qqqq", seed, row, col, step), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def block_noise(
    seed: int, step: int, shape: tuple[int, ...], block_size: int,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, first_col: int = 0, first_row: int = 0,
) -> Tensor:
    """N(0, 1) noise of `shape` [B, C, H, W] (H, W multiples of block_size), built block by block.

    first_col: the image's block column that the tensor's first column is (a strip of columns:
    the same numbers as the whole image's noise there, block for block); first_row likewise (a band of rows).
    """
    b, c, h, w = shape
    if h % block_size or w % block_size:
        raise ValueError(f"noise shape {w}x{h} is not a multiple of the block size {block_size}")
    device = torch.device(device)
    out = buffer(shape, torch.float32, "cpu", pin=pin_for(device))
    gen = torch.Generator()
    for i in range(h // block_size):
        for j in range(w // block_size):
            gen.manual_seed(block_seed(seed, first_row + i, first_col + j, step))
            out[:, :, i * block_size:(i + 1) * block_size, j * block_size:(j + 1) * block_size] = torch.randn(
                (b, c, block_size, block_size), generator=gen)
    return out.to(device=device, dtype=dtype, non_blocking=True)
