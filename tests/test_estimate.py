"""The calibrated time estimate: the warm-up's two timings fix the speed model's two unknowns."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.config import preset
from infdit_cli.engine import SpeedModel, flops_per_call
from infdit_cli.engine.estimate import TimeEstimator
from infdit_cli.model import InfDiT


@pytest.mark.parametrize(("device_type", "slope"), [("cpu", 0.1), ("cpu", -0.05), ("cuda", -0.08)])
def test_calibration_recovers_rate_group_cost_and_size_slope(monkeypatch, device_type, slope):
    """Three timed group sizes fix the three unknowns: a busy CPU (negative slope) or a cache-bound one."""
    cfg = preset("tiny")
    est = TimeEstimator(InfDiT(cfg).init_random(0).eval())
    truth = SpeedModel(2e10, 0.003, device_type == "cuda", size_slope=slope)
    per_block = flops_per_call(cfg, (1, 1))

    def measured(side: int, layers: int | None = None) -> float:  # what a machine with `truth` would time
        return cfg.num_layers * truth.group_seconds + side**2 * per_block / (
            truth.flops_per_s * truth.efficiency(side**2))

    monkeypatch.setattr(est, "time_square", measured)
    monkeypatch.setattr(type(est), "device", property(lambda self: torch.device(device_type)))
    monkeypatch.setattr("infdit_cli.engine.estimate.block_noise", lambda *a, **k: None)
    speed = est.calibration.speed
    assert speed.flops_per_s == pytest.approx(2e10) and speed.group_seconds == pytest.approx(0.003)
    assert speed.size_slope == pytest.approx(slope)
    for grid, n in (((3, 5), 2), ((8, 8), 8), ((1, 7), 3)):
        assert est.call_seconds(grid, n) == pytest.approx(truth.call_seconds(cfg, grid, n))
    noise = est.calibration.noise_seconds_per_block
    assert est.run_seconds((3, 5), 2, nfe=7, steps=4) == pytest.approx(7 * truth.call_seconds(cfg, (3, 5), 2)
                                                                       + noise * 15 * 5)


def test_calibration_on_this_machine_is_sane():
    """A real warm-up: positive figures, and a bigger group is not estimated faster than a smaller one."""
    est = TimeEstimator(InfDiT(preset("tiny")).init_random(0).eval())
    cal = est.calibration
    assert cal.speed.flops_per_s > 0 and cal.speed.group_seconds >= 0 and cal.block_seconds > 0
    assert est.call_seconds((4, 4), 4) > 0 and est.call_seconds((8, 8), 2) > est.call_seconds((4, 4), 2)
