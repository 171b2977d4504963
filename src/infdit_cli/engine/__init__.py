"""Running the network over an image: streamed n×n block groups (default) or the whole image at once."""

from infdit_cli.engine.memory import MemoryPlan, available_memory, estimate_memory, plan_block_batch
from infdit_cli.engine.noise import block_noise
from infdit_cli.engine.runner import EngineStats, StreamedRunner, WholeImageRunner, flops_per_call
from infdit_cli.engine.stream import StreamNeighbourhood

__all__ = [
    "EngineStats",
    "MemoryPlan",
    "StreamNeighbourhood",
    "StreamedRunner",
    "WholeImageRunner",
    "available_memory",
    "block_noise",
    "estimate_memory",
    "flops_per_call",
    "plan_block_batch",
]
