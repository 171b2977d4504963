"""Placement end to end: the same seed gives the same PNG for any n and placement; `upscale --block-batch auto`
and `--json` report the plan and measured memory."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from infdit_cli.cli import app
from infdit_cli.config import preset
from infdit_cli.model import InfDiT
from infdit_cli.pipeline import UpscaleOptions, Upscaler
from tests.models import write_tiny_model


def _png(image01: torch.Tensor) -> bytes:
    pixels = (image01[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_png_for_any_block_batch_and_placement():
    upscaler = Upscaler(InfDiT(preset("tiny")).init_random(5).eval())
    image = torch.rand(1, 3, 48, 70, generator=torch.Generator().manual_seed(1))
    outs = {}
    for n in (1, 2, None):
        for state in ("device", "host"):
            options = UpscaleOptions(steps=2, seed=9, block_batch=n, state=state, sampler="euler")
            result = upscaler.upscale(image, options)
            assert result.passes[0].memory.state == state
            assert result.stats[0].block_batch == (n or result.passes[0].memory.block_batch)
            outs[(n, state)] = _png(result.image)
    assert len(set(outs.values())) == 1, [k for k in outs if outs[k] != outs[(1, "device")]]
    other = upscaler.upscale(image, UpscaleOptions(steps=2, seed=10, sampler="euler"))
    assert _png(other.image) != outs[(1, "device")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_upscale_block_batch_auto_and_memory_fields(model_dir, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 96, 3), dtype=np.uint8)).save(src)
    res = CliRunner().invoke(app, ["upscale", str(src), "--model", str(model_dir), "--block-batch", "auto",
                                   "--steps", "1", "--json", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "KV band on device, state on host" in res.stderr and "est. peak" in res.stderr
    (record,) = json.loads(res.stdout)["outputs"]
    for key in ("peak_memory_bytes", "planned_peak_bytes", "host_bytes", "rss_growth_bytes", "block_batch",
                "placement", "estimated_upscale_s"):
        assert key in record, key
    assert record["peak_memory_source"] == "accounting" and record["host_bytes"] > 0
    assert 0 < record["peak_memory_bytes"] <= record["planned_peak_bytes"]  # the plan carries allocator slack
    assert record["placement"][0].startswith(f"n={record['block_batch'][0]},")
    assert record["estimated_upscale_s"] > 0
    bad = CliRunner().invoke(app, ["upscale", str(src), "--model", str(model_dir), "--block-batch", "many"])
    assert bad.exit_code != 0 and "invalid --block-batch" in bad.output
