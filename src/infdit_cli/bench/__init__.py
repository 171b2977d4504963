"""`infdit bench`: seconds per network call (NFE), memory and FLOP rate of both UniBA paths.

A call too slow to time in full is *extrapolated* from sampled block groups (extrapolate.py); a
path too big to run is *estimated* analytically. Rows say which of the three they are. Memory
never needs extrapolating: the KV band and the activations follow from the grid and the group
size (engine/memory.py), checked against measurements in the tests.

Modules: `machine` (what it ran on), `options` (what was asked), `driver` (planning, timing,
measuring), `extrapolate` (sampled groups to whole calls), `report` (rows).
"""

from infdit_cli.bench.driver import BENCH_SIGMA, BenchInputs, random_inputs, random_model, run_bench, weight_bytes
from infdit_cli.bench.extrapolate import extrapolate_call_seconds, head_tail_fraction, layer_flops_per_token
from infdit_cli.bench.machine import MachineInfo, cpu_model, machine_info, machine_slug
from infdit_cli.bench.options import DTYPES, BenchError, BlockBatch, dtype_name, parse_block_batch, parse_resolution
from infdit_cli.bench.report import BenchReport, BenchRow, how_measured, memory_ratios
from infdit_cli.engine.timing import GroupTiming

__all__ = [
    "BENCH_SIGMA", "DTYPES", "BenchError", "BenchInputs", "BenchReport", "BenchRow", "BlockBatch", "GroupTiming",
    "MachineInfo", "cpu_model", "dtype_name", "extrapolate_call_seconds", "head_tail_fraction", "how_measured",
    "layer_flops_per_token", "machine_info", "machine_slug", "memory_ratios",
    "parse_block_batch", "parse_resolution", "random_inputs", "random_model", "run_bench", "weight_bytes",
]
