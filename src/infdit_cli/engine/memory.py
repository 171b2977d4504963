"""Closed-form memory of one network call: weights, KV band, group activations, image-sized state.

Every figure is arithmetic on the config and the grid (no simulation of the engine), so the
placement planner can price every block batch in microseconds; `infdit bench` reports the
figures beside what was measured so they can be checked on any machine.
"""

from __future__ import annotations

import functools

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.device import free_bytes
from infdit_cli.engine.stream import band_blocks


def kv_block_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    """K and V of one block in every layer: the band's unit."""
    return config.num_layers * 2 * config.block_tokens**2 * config.hidden_size * dtype.itemsize


def stream_kv_bytes(config: ModelConfig, grid: tuple[int, int], n: int, dtype: torch.dtype) -> int:
    """The KV band of one streamed call on an X×Y block grid (closed form, what the engine allocates)."""
    return band_blocks(grid, n) * kv_block_bytes(config, dtype)


def kv_band_bytes(config: ModelConfig, grid_cols: int, n: int, dtype: torch.dtype) -> int:
    """Steady-state KV band of a tall image: one block-row across the image, the left column and the corner."""
    return (grid_cols + min(n, grid_cols) + 1) * kv_block_bytes(config, dtype)


def kv_staging_bytes(config: ModelConfig, grid: tuple[int, int], n: int, dtype: torch.dtype) -> int:
    """A host-resident band's entries one layer of one group reads on the device (top row, left column, corner)."""
    per_layer = kv_block_bytes(config, dtype) // config.num_layers
    return (min(n, grid[1]) + min(n, grid[0]) + 1) * per_layer


def group_activation_bytes(config: ModelConfig, rows: int, cols: int, dtype: torch.dtype) -> int:
    """Peak live activations of one forward over a rows×cols block group (the whole image is one group).

    Read off `UniBALayer.forward`, which frees each intermediate once used: the peak is the largest
    of the projections (the layer's input, QKV, normed and rotated q/k), the gather (input, q, k, v
    and the four-segment keys and values, 8·C per token), the attention (input, q, keys, values,
    output), the MLP (the layer's input, new x, modulated input, fc1 and GELU outputs) and layer 0's
    LR cross attention; the LR windows live through every layer. Attention kernels that never build
    the score matrix are assumed (CPU flash, CUDA flash/cuDNN). Checked against the allocator in
    tests/test_bench.py.
    """
    s, t = dtype.itemsize, config.block_tokens**2
    c, m = config.hidden_size, config.mlp_hidden
    tok = rows * cols * t
    w = (3 * config.lr_block_tokens) ** 2 * rows * cols if config.cross_lr else 0  # LR window tokens
    held = w * c * s
    project = tok * s * 9 * c
    gather = tok * s * 12 * c
    attend = tok * s * 11 * c
    mlp = tok * s * (4 * c + 2 * m)
    cross = tok * s * 6 * c + 3 * w * c * s if config.cross_lr else 0  # + the window K/V and normed K
    return int(held + max(project, gather, attend, mlp, cross))


def io_bytes(width: int, height: int) -> int:
    """One call's own pixels: the fp32 6-channel network input and the 3-channel output (O(area))."""
    return width * height * (6 + 3) * 4


# x, the upsampled LR, the noise and the sampler's denoised/derivative/next-x tensors: about eight
# fp32 RGB images besides the call's own input and output (Heun-EDM; one-step Euler holds fewer).
SAMPLER_IMAGES = 8


def state_bytes(width: int, height: int) -> int:
    """The sampler's image-sized state for one pass (fp32), including one call's input and output."""
    return width * height * 3 * 4 * SAMPLER_IMAGES + io_bytes(width, height)


def accounted_device_bytes(config: ModelConfig, grid: tuple[int, int], n: int, band: str, state: str,
                           dtype: torch.dtype, weights: int) -> int:
    """What a streamed call holds on the compute device, as the engine accounts it on a CPU (no slack).

    Weights + the band if it lives there + one group's activations (the gathered K/V included)
    + the image-sized state if it lives there, else one group's pixels in and out.
    """
    rows, cols = grid
    bs = config.block_size
    g_rows, g_cols = min(n, rows), min(n, cols)
    held = weights + group_activation_bytes(config, g_rows, g_cols, dtype)
    held += stream_kv_bytes(config, grid, n, dtype) if band == "device" else 0
    held += io_bytes(cols * bs, rows * bs) if state == "device" else io_bytes(g_cols * bs, g_rows * bs)
    return held


@functools.lru_cache(maxsize=32)
def parameter_count(config: ModelConfig) -> int:
    """Parameters of the network a config builds (counted on the meta device, once per config)."""
    from infdit_cli.model.network import InfDiT

    with torch.device("meta"):
        return InfDiT(config).num_parameters()


def weights_bytes(config: ModelConfig, dtype: torch.dtype, num_parameters: int | None = None) -> int:
    return (num_parameters if num_parameters is not None else parameter_count(config)) * dtype.itemsize


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
    free = free_bytes(device)
    if free is not None:
        return free
    available = meminfo_bytes("MemAvailable")
    return available if available is not None else 8 << 30


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
