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
    """Steady-state KV band: K and V of one block-row across the image, the left column and the corner."""
    t = config.block_tokens**2
    per_block = 2 * t * config.hidden_size * _element_size(dtype)
    return config.num_layers * (grid_cols + min(n, grid_cols) + 1) * per_block


def stream_kv_bytes(config: ModelConfig, grid: tuple[int, int], n: int, dtype: torch.dtype) -> int:
    """Peak KV band of one streamed call on an X×Y block grid, without running the network.

    Tall images (3+ group-rows, 2+ group-columns) reach the steady state `kv_band_bytes`; for the
    rest the engine's own `StreamNeighbourhood` is driven with one-element stand-in blocks and its
    byte count scaled up, so short images are not charged for a band they never hold.
    """
    from infdit_cli.engine.stream import StreamNeighbourhood

    rows, cols = grid
    group_rows, group_cols = math.ceil(rows / n), math.ceil(cols / n)
    if group_rows >= 3 and group_cols >= 2:
        return kv_band_bytes(config, cols, n, dtype)
    nbh = StreamNeighbourhood(config.num_layers, cols)
    stand_in = torch.zeros(1, 1, 1, 1, 1, 1)
    for gi in range(group_rows):
        r = range(gi * n, min(rows, (gi + 1) * n))
        for gj in range(group_cols):
            c = range(gj * n, min(cols, (gj + 1) * n))
            nbh.begin_group(r, c, last_row=gi == group_rows - 1, last_col=gj == group_cols - 1)
            block = stand_in.expand(1, len(r), len(c), 1, 1, 1).contiguous()
            for layer in range(config.num_layers):
                nbh.pad(layer, block, block)
    per_tensor = config.block_tokens**2 * config.hidden_size * _element_size(dtype)  # K or V of one block
    return nbh.peak_cached_bytes // stand_in.element_size() * per_tensor


def group_activation_bytes(config: ModelConfig, rows: int, cols: int, dtype: torch.dtype) -> int:
    """Peak live activations of one forward over a rows×cols block group (the whole image is one group).

    Read off `UniBALayer.forward`, which frees each intermediate once used: the peak is while the
    four-view keys and values are built and attended to, or in the MLP (its input, fc1 and GELU
    outputs), or in layer 0's LR cross attention. Attention kernels that never build the score
    matrix are assumed (CPU flash, CUDA flash/cuDNN: what PyTorch picks for these shapes).
    Checked against the allocator in tests/test_bench.py.
    """
    s, t = _element_size(dtype), config.block_tokens**2
    c, m = config.hidden_size, config.mlp_hidden
    tok = rows * cols * t
    pad = (rows + 1) * (cols + 1) * t * c * s  # one padded K or V grid
    rope = tok * config.head_dim * 2 * (4 + (s if s != 4 else 0))  # fp32 cos/sin (+ their casts)
    w = (3 * config.lr_block_tokens) ** 2 * rows * cols if config.cross_lr else 0  # LR window tokens
    held = rope + w * c * s  # cos/sin and the LR windows live through every layer
    build_keys = tok * s * (2 * c + 4 * c) + 2 * pad  # x, q, keys, and both padded grids
    build_values = tok * s * (2 * c + 8 * c) + pad  # x, q, keys, values, and the V grid
    attend = tok * s * 11 * c  # x, q, keys, values, attention output
    mlp = tok * s * (3 * c + 2 * m)  # the layer's input, new x, modulated input, fc1 and GELU outputs
    cross = tok * s * 6 * c + 3 * w * c * s if config.cross_lr else 0  # + the window K/V and normed K
    return int(held + max(build_keys, build_values, attend, mlp, cross))


def io_bytes(width: int, height: int) -> int:
    """The call's own pixels: the fp32 6-channel network input and the 3-channel output (O(area))."""
    return width * height * (6 + 3) * 4


def weights_bytes(config: ModelConfig, dtype: torch.dtype, num_parameters: int | None = None) -> int:
    if num_parameters is None:
        from infdit_cli.weights import expected_shapes

        num_parameters = sum(math.prod(s) for s in expected_shapes(config).values())
    return num_parameters * _element_size(dtype)


def estimate_memory(
    config: ModelConfig, grid: tuple[int, int], n: int, dtype: torch.dtype, device_type: str = "cuda",
    num_parameters: int | None = None,
) -> int:
    """Peak bytes of one streamed network call with block batch n on an X×Y block grid.

    Weights + KV band + one group's activations (+25% allocator slack) + the call's pixels.
    `device_type` is kept for callers; the estimate is the same on every device.
    """
    rows, cols = grid
    act = group_activation_bytes(config, min(n, rows), min(n, cols), dtype)
    return (weights_bytes(config, dtype, num_parameters) + stream_kv_bytes(config, grid, n, dtype)
            + int(act * 1.25) + io_bytes(cols * config.block_size, rows * config.block_size))


def whole_image_memory_bytes(config: ModelConfig, grid: tuple[int, int], dtype: torch.dtype, weights: int) -> int:
    """Peak bytes of one whole-image call: weights + every block's activations at once + pixels."""
    rows, cols = grid
    bs = config.block_size
    return weights + group_activation_bytes(config, rows, cols, dtype) + io_bytes(cols * bs, rows * bs)


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field (e.g. "MemAvailable") in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory(device: torch.device) -> int:
    """Bytes free for us: CUDA free memory, or the system's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    available = meminfo_bytes("MemAvailable")
    return available if available is not None else 8 << 30


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
