"""What a run measured about memory: the process's resident-set growth (CPU) and the CUDA peak.

The device peak itself is kept by the runners (`EngineStats.peak_device_bytes`); here are the
process-level figures and the per-image reset, so each image of a batch reports its own peak.
"""

from __future__ import annotations

import torch

from infdit_cli.device import reset_peak


def _status() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class RssPeak:
    """Growth of the process's peak resident memory (VmHWM) over a region: a measured CPU figure.

    The kernel's peak counter is reset first (clear_refs 5) so earlier, bigger regions do not hide
    this one; the allocator may keep freed memory, so it is approximate (and a lower bound when the
    reset is not allowed). `growth` is None where /proc is not available.
    """

    def __init__(self) -> None:
        self.start = 0
        self.growth: int | None = None

    def __enter__(self) -> RssPeak:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.start = _status().get("VmRSS", 0)
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status().get("VmHWM")
        self.growth = None if hwm is None else max(0, hwm - self.start)


def reset_device_peak(device: torch.device) -> None:
    """Start a fresh CUDA peak (per image, per bench row); nothing to do elsewhere."""
    reset_peak(device)
