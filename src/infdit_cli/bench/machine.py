"""What the numbers were measured on: CPU, device, memory, torch, load, matmul peak."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field

import torch

from infdit_cli.device import describe, generator, randn, synchronize
from infdit_cli.engine.memory import meminfo_bytes


@dataclass
class MachineInfo:
    """What the numbers were measured on; bench results are meaningless without it."""

    cpu_model: str
    cpu_cores: int
    torch_threads: int
    torch_version: str
    device: str  # "cpu", "cuda:0", ...
    device_name: str
    total_memory_bytes: int  # device memory on CUDA, RAM otherwise
    cuda_version: str | None = None
    matmul_peak_tflops: float | None = None  # CUDA: measured bf16 8192³ matmul
    load_average: float | None = None  # 1-min load when the bench started (other jobs skew CPU timings)
    os_platform: str = field(default_factory=platform.platform)


def cpu_model() -> str:
    """The CPU's marketing name (with family/model where the hypervisor hides the full name)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name") or platform.processor() or platform.machine()
    if len(name.split()) <= 2 and "cpu family" in info:  # e.g. a KVM guest reporting just "AMD EPYC"
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


def matmul_peak_tflops(device: torch.device, size: int = 8192, reps: int = 20) -> float:
    """Measured bf16 size³ matmul rate after warm-up: the practical peak the % column divides by."""
    g = generator(device, 0)
    a, b = (randn((size, size), g, device, torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e12


def machine_info(device: torch.device, measure_peak: bool = True) -> MachineInfo:
    cpu = cpu_model()
    info = MachineInfo(cpu_model=cpu, cpu_cores=os.cpu_count() or 1, torch_threads=torch.get_num_threads(),
                       torch_version=torch.__version__, device=device.type, device_name=cpu,
                       total_memory_bytes=meminfo_bytes("MemTotal") or 0,
                       load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    if device.type == "cuda":
        info.device, info.device_name, info.total_memory_bytes, info.cuda_version = describe(device)
        info.matmul_peak_tflops = matmul_peak_tflops(device) if measure_peak else None
    return info


def machine_slug(machine: MachineInfo) -> str:
    """'nvidia-h200', 'amd-epyc-2c': a file-name-safe label for result files."""
    if machine.device.startswith("cuda"):
        base = machine.device_name
    else:
        base = f"{machine.cpu_model.split('(')[0]} {machine.cpu_cores}c"
    keep = "".join(ch if ch.isalnum() else "-" for ch in base.lower())
    return "-".join(p for p in keep.split("-") if p) or "machine"
