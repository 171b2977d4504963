"""From sampled block groups (or their first layers) to the seconds of a whole network call.

Sound because the work is regular: every n×n group runs the same layers on the same shapes (time
is linear in the number of blocks), and inside a group every layer after layer 0 costs the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from infdit_cli.config import ModelConfig
from infdit_cli.engine.cost import flops_per_call
from infdit_cli.engine.timing import GroupTiming


def extrapolate_call_seconds(timings: Sequence[GroupTiming], total_blocks: int, num_layers: int,
                             fixed_seconds: float = 0.0, tail_fraction: float = 0.0) -> float:
    """Seconds of a whole call from sampled groups: per-block rate × blocks, plus per-call work.

    Ragged edge groups are weighted by their block count, which is what their cost scales with.
    """
    blocks = sum(t.blocks for t in timings)
    if blocks == 0:
        raise ValueError("no sampled groups")
    seconds = sum(t.projected_seconds(num_layers, tail_fraction) for t in timings)
    return fixed_seconds + seconds / blocks * total_blocks


def layer_flops_per_token(config: ModelConfig) -> float:
    """One UniBA layer's FLOPs per token (the engine's own formula, differenced)."""
    base = replace(config, cross_lr=False)
    one = flops_per_call(replace(base, num_layers=1), (1, 1)) - flops_per_call(replace(base, num_layers=0), (1, 1))
    return one / config.block_tokens**2


def head_tail_fraction(config: ModelConfig) -> float:
    """Output head cost relative to one layer (about 0.2% for x4): added when layers are sampled."""
    head = 2 * config.hidden_size * config.patch_size**2 * config.image_channels
    return head / layer_flops_per_token(config)
