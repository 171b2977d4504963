"""Memory planning: the largest block batch n whose weights + KV band + group activations fit.

The estimate is deliberately simple and conservative; `infdit bench` reports it beside what was
measured so it can be checked on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from infdit_cli.config import ModelConfig


@dataclass(frozen=True)
class MemoryPlan:
    block_batch: int
    estimated_bytes: int
    budget_bytes: int
    fits: bool  # False: even n = 1 exceeds the budget (we still run with n = 1)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kv_band_bytes(config: ModelConfig, grid_cols: int, n: int, dtype: torch.dtype) -> int:
    """K and V of one block-row across the image, plus the left column and corner, for every layer."""
    t = config.block_tokens**2
    per_block = 2 * t * config.hidden_size * _element_size(dtype)
    return config.num_layers * (grid_cols + min(n, grid_cols) + 1) * per_block


def activation_bytes(config: ModelConfig, n_rows: int, n_cols: int, dtype: torch.dtype, device_type: str) -> int:
    """Working memory of one group of n_rows × n_cols blocks inside a layer (the peak, roughly)."""
    s = _element_size(dtype)
    t = config.block_tokens**2
    c, blocks = config.hidden_size, n_rows * n_cols
    padded = (n_rows + 1) * (n_cols + 1)
    per_token = (
        4 * c  # residual, normed/modulated input, attention output, projection
        + 3 * c  # q, k, v
        + 2 * 4 * c  # the four-view keys and values
        + 2 * config.mlp_hidden  # MLP hidden and its activation
    )
    total = blocks * t * per_token * s + padded * t * 2 * c * s
    if config.cross_lr:
        total += blocks * (3 * config.lr_block_tokens) ** 2 * 3 * c * s
    if device_type != "cuda":  # the CPU attention kernel may materialise the score matrix
        total += blocks * config.num_heads * t * 4 * t * 4
    return int(total * 1.25)  # allocator slack


def weights_bytes(config: ModelConfig, dtype: torch.dtype, num_parameters: int | None = None) -> int:
    if num_parameters is None:
        from infdit_cli.weights import expected_shapes

        num_parameters = sum(math.prod(s) for s in expected_shapes(config).values())
    return num_parameters * _element_size(dtype)


def estimate_memory(
    config: ModelConfig, grid: tuple[int, int], n: int, dtype: torch.dtype, device_type: str,
    num_parameters: int | None = None,
) -> int:
    """Peak bytes of one streamed network call with block batch n on an X×Y block grid."""
    rows, cols = grid
    image = 4 * 3 * rows * cols * config.block_size**2 * 6  # x, lr_up, net input, output, noise (fp32)
    return (weights_bytes(config, dtype, num_parameters) + kv_band_bytes(config, cols, n, dtype)
            + activation_bytes(config, min(n, rows), min(n, cols), dtype, device_type) + image)


def available_memory(device: torch.device) -> int:
    """Bytes free for us: CUDA free memory, or the system's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def plan_block_batch(
    config: ModelConfig, grid: tuple[int, int], dtype: torch.dtype, device: torch.device,
    max_memory: int | None = None, num_parameters: int | None = None,
) -> MemoryPlan:
    """The largest n (1..max(grid)) whose estimate fits 90% of the free memory or the user's budget."""
    budget = int(available_memory(device) * 0.9)
    if max_memory is not None:
        budget = min(budget, max_memory)
    best = 1
    for n in range(1, max(grid) + 1):
        if estimate_memory(config, grid, n, dtype, device.type, num_parameters) <= budget:
            best = n
        else:
            break
    est = estimate_memory(config, grid, best, dtype, device.type, num_parameters)
    return MemoryPlan(best, est, budget, est <= budget)


def parse_size(text: str) -> int:
    """'6GB', '512MiB', '2e9' -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"invalid memory size {text!r} (use e.g. 6GB or 512MiB)") from None
    if unit not in units or value <= 0:
        raise ValueError(f"invalid memory size {text!r} (use e.g. 6GB or 512MiB)")
    return int(value * units[unit])
