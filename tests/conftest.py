"""Shared fixtures: the official golden folder (INFDIT_GOLDEN_DIR) and models converted from it.

The golden case ships in tests/golden/ (a trimmed copy of the official data), so every clone runs the
parity tests; a parity test that skips fails the run (tests/parity_guard.py).
"""

from __future__ import annotations

import os

# Tests never reach the hub: huggingface_hub reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from infdit_cli.config import ModelConfig
from infdit_cli.model import InfDiT
from infdit_cli.official import convert_state_dict, infer_config
from infdit_cli.weights import expected_shapes

pytest_plugins = ["tests.parity_guard", "pytester"]

DEFAULT_GOLDEN = Path(__file__).resolve().parent / "golden" / "official-tiny"
CORE_FILES = ("weights.safetensors", "inputs.safetensors", "denoise.safetensors", "sample.safetensors")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def one_thread():
    """Torch on one thread: two threads on two shared cores (and beside other test processes) make
    every small op wait for a descheduled thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = Path(os.environ.get("INFDIT_GOLDEN_DIR", DEFAULT_GOLDEN))
    assert path.is_dir(), f"golden folder {path} not found (INFDIT_GOLDEN_DIR; the default ships in tests/golden/)"
    return path


class Golden:
    """Lazy access to a golden folder's tensors, by name, across its files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tensors: dict[str, torch.Tensor] = {}
        for name in ("weights", "inputs", "denoise", "sample", "debug"):
            f = path / f"{name}.safetensors"
            if f.is_file():
                data = load_file(str(f))
                if name == "weights":
                    self.weights = data
                else:
                    self.tensors.update(data)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def keys_like(self, prefix: str) -> list[str]:
        return sorted(k for k in self.tensors if k.startswith(prefix))


@pytest.fixture(scope="session")
def golden(golden_dir: Path) -> Golden:
    missing = [f for f in CORE_FILES if not (golden_dir / f).is_file()]
    assert not missing, f"golden folder {golden_dir} lacks core files {missing}"
    g = Golden(golden_dir)
    for key in ("lr_image", "concat_lr_image", "noise", "denoise_sigmas", "sample_full_steps4"):
        assert key in g, f"golden folder lacks core tensor {key}"
    assert g.keys_like("denoise_full_s"), "golden folder has no denoise_full_s* tensors"
    return g


@pytest.fixture(scope="session")
def golden_config(golden: Golden) -> ModelConfig:
    return infer_config(golden.weights)


@pytest.fixture(scope="session")
def golden_model(golden: Golden, golden_config: ModelConfig) -> InfDiT:
    """The golden official-layout weights converted with the same code as `infdit convert`, float32."""
    result = convert_state_dict(golden.weights, golden_config, expected_shapes(golden_config))
    model = InfDiT(golden_config)
    model.load_state_dict(result.state_dict)
    return model.eval()


@pytest.fixture(scope="module")
def calibrate_once():
    """Measure each model's speed once per test module instead of once per `infdit upscale` run.

    The CLI tests run `upscale` dozens of times on the same tiny model; the pre-flight calibration
    (a few timed network calls) is then about 90 % of each run. The calibration still runs for real,
    once per (config, device, dtype); engine/estimate.py's own tests use it uncached.
    """
    from infdit_cli.engine import estimate

    real = getattr(getattr(estimate, "TimeEstimator", None), "_calibrate", None)
    if real is None:  # the estimator changed shape: run uncached rather than guess
        yield
        return
    cache: dict[object, object] = {}

    def cached(self: Any) -> Any:
        key = (self.net.config, str(self.device), next(self.net.parameters()).dtype)
        if key not in cache:
            cache[key] = real(self)
        return cache[key]

    patch = pytest.MonkeyPatch()
    patch.setattr(estimate.TimeEstimator, "_calibrate", cached)
    yield
    patch.undo()
