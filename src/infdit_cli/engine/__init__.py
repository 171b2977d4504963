"""Running the network over an image: streamed n×n block groups (default) or the whole image at once."""

from infdit_cli.engine.cost import SpeedModel, flops_per_call
from infdit_cli.engine.memory import available_memory, parse_size
from infdit_cli.engine.noise import block_noise
from infdit_cli.engine.placement import Plan, budget_bytes, plan_placement
from infdit_cli.engine.runner import EngineStats, StreamedRunner, WholeImageRunner
from infdit_cli.engine.stream import StreamNeighbourhood

__all__ = [
    "EngineStats",
    "Plan",
    "SpeedModel",
    "StreamNeighbourhood",
    "StreamedRunner",
    "WholeImageRunner",
    "available_memory",
    "block_noise",
    "budget_bytes",
    "flops_per_call",
    "parse_size",
    "plan_placement",
]
