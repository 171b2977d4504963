"""Parity of our network (converted with `infdit convert`'s code) with the official implementation."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.engine import StreamedRunner, WholeImageRunner
from infdit_cli.model import EDMDenoiser, edm_coefficients
from infdit_cli.preprocess import clip_pixels, upsample_lr
from tests.conftest import Golden, rel_err


def _denoise(model, golden: Golden, k: int, runner_cls=WholeImageRunner, dtype=torch.float32, **kw) -> torch.Tensor:
    lr, lr_up = golden["lr_image"], golden["concat_lr_image"]
    vector = golden["vector"] if "vector" in golden else None
    sigma = golden["denoise_sigmas"][k]
    x = lr_up + sigma * golden["noise"]
    runner = runner_cls(model, lr.to(dtype), None if vector is None else vector.to(dtype), **kw)
    with torch.no_grad():
        return EDMDenoiser(runner, lr_up)(x, sigma)


def _sigma_indices(golden: Golden) -> list[int]:
    return [int(k.rsplit("_s", 1)[1]) for k in golden.keys_like("denoise_full_s")]


def test_denoiser_matches_official_full(golden, golden_model):
    for k in _sigma_indices(golden):
        out = _denoise(golden_model, golden, k)
        assert rel_err(out, golden[f"denoise_full_s{k}"]) <= 1e-5, f"sigma index {k}"


def test_official_ar2_outputs_equal_full(golden, golden_model):
    """The official ar2 data (patched) are the trained function too: we must meet them."""
    keys = golden.keys_like("denoise_ar2_")
    if not keys:
        pytest.skip("golden folder has no ar2 outputs")
    for key in keys:
        k = int(key.rsplit("_s", 1)[1])
        assert rel_err(_denoise(golden_model, golden, k), golden[key]) <= 1e-5, key


def test_streamed_denoiser_matches_official_for_every_n(golden, golden_model):
    bs = golden_model.config.block_size
    rows, cols = (s // bs for s in golden["concat_lr_image"].shape[-2:])
    for n in range(1, max(rows, cols) + 1):
        for k in _sigma_indices(golden):
            out = _denoise(golden_model, golden, k, StreamedRunner, block_batch=n)
            assert rel_err(out, golden[f"denoise_full_s{k}"]) <= 1e-5, f"n={n}, sigma index {k}"


def test_bf16_weights_and_activations_within_tolerance(golden, golden_model):
    model = type(golden_model)(golden_model.config)
    model.load_state_dict(golden_model.state_dict())
    model = model.to(torch.bfloat16).eval()
    for k in _sigma_indices(golden):
        out = _denoise(model, golden, k, dtype=torch.bfloat16)
        assert rel_err(out.float(), golden[f"denoise_full_s{k}"]) <= 2e-2, f"sigma index {k}"


def test_preprocessing_matches_official(golden):
    lr = golden["lr_image"]
    scale = golden["concat_lr_image"].shape[-1] // lr.shape[-1]
    assert rel_err(upsample_lr(lr, scale), golden["concat_lr_image"]) <= 1e-5
    if "clip_pixel_values" in golden:
        assert rel_err(clip_pixels(lr), golden["clip_pixel_values"]) <= 1e-5
    if "lr_image_uint8" in golden:
        assert torch.equal(golden["lr_image_uint8"].float() / 255 * 2 - 1, lr)


def test_debug_intermediates(golden, golden_model):
    """Finer-grained checks where the folder has them: they localise a failure."""
    if "debug_s1_model_out" not in golden:
        pytest.skip("golden folder has no debug tensors")
    sigma = golden["denoise_sigmas"][1:2]
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    for name, ours in (("c_skip", c_skip), ("c_out", c_out), ("c_in", c_in), ("c_noise", c_noise)):
        if f"debug_s1_{name}" in golden:
            assert rel_err(ours, golden[f"debug_s1_{name}"]) <= 1e-6, name
    model = golden_model
    if "debug_s1_time_embed" in golden:
        assert rel_err(model.t_embed(c_noise), golden["debug_s1_time_embed"]) <= 1e-5
    x = golden["concat_lr_image"] + sigma * golden["noise"]
    net_in = torch.cat([x, golden["concat_lr_image"]], 1) * c_in
    vector = golden["vector"] if model.clip_embed is not None else None
    with torch.no_grad():
        out = model(net_in, c_noise, vector, golden["lr_image"])
    assert rel_err(out, golden["debug_s1_model_out"]) <= 1e-5
