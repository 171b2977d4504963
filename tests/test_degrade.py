"""Real-world degradations: JPEG really applied (4:2:0, the quality asked), draws fixed by the seed,
strength labels on one scale, and the JPEG quality read back from a file's own tables."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from infdit_cli.degrade import (
    DegradeError,
    Recipe,
    auto_strength,
    degrade_lr,
    estimate_jpeg_quality,
    jpeg_bytes,
    jpeg_roundtrip,
    parse_degradation,
    strength_for_quality,
)
from infdit_cli.train.data import make_training_lr, step_generator


def _photo_like(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus texture, in [-1, 1]: something JPEG visibly changes."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([x, y, x * y]) * 0.6
    return (base + 0.3 * torch.rand(3, h, w, generator=g) - 0.15).clamp(-1, 1)[None]


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_quality_estimate_from_tables_of_files_written_at_known_qualities(tmp_path, quality):
    arr = ((_photo_like(48, 48)[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    path = tmp_path / "a.jpg"
    Image.fromarray(arr).save(path, quality=quality)
    with Image.open(path) as im:
        est = estimate_jpeg_quality(im.quantization[0])
    assert abs(est - quality) <= 1
    assert auto_strength(path) == pytest.approx(strength_for_quality(est))


def test_auto_strength_is_clean_for_lossless_files_and_grows_as_quality_falls(tmp_path):
    arr = np.zeros((16, 16, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert auto_strength(tmp_path / "a.png") == 0.0
    strengths = []
    for q in (95, 75, 50, 30):
        Image.fromarray(arr).save(tmp_path / f"q{q}.jpg", quality=q)
        strengths.append(auto_strength(tmp_path / f"q{q}.jpg"))
    assert strengths[0] == 0.0 and strengths[-1] == 1.0
    assert strengths == sorted(strengths) and len(set(strengths)) == 4


def test_jpeg_is_really_applied_with_420_chroma():
    x = _photo_like()
    data = jpeg_bytes(((x[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), 40)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.layer[0][1:3] == (2, 2)  # luma sampled 2×2 = 4:2:0
    y = jpeg_roundtrip(x, 40)
    err40 = (y - x).abs().mean().item()
    err90 = (jpeg_roundtrip(x, 90) - x).abs().mean().item()
    assert err40 > 2 / 255 and err90 < err40  # lossy, and less so at a higher quality


def test_degradations_are_a_function_of_the_seed_and_labelled():
    hr = torch.cat([_photo_like(seed=i) for i in range(8)])
    a, sa = make_training_lr(hr, 4, step_generator(3, 7), Recipe())
    b, sb = make_training_lr(hr, 4, step_generator(3, 7), Recipe())
    c, _ = make_training_lr(hr, 4, step_generator(3, 8), Recipe())
    assert torch.equal(a, b) and torch.equal(sa, sb) and not torch.equal(a, c)
    assert a.shape == (8, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose((a + 1) * 127.5, ((a + 1) * 127.5).round(), atol=1e-4)  # 8-bit like a file
    assert ((sa >= 0) & (sa <= 1)).all()


def test_clean_share_is_plain_bicubic_and_degraded_ones_differ():
    hr = _photo_like()
    clean, s0 = degrade_lr(hr, 4, torch.Generator().manual_seed(0), Recipe(p_clean=1.0))
    clean_ref, _ = make_training_lr(hr, 4, torch.Generator(), None)
    assert s0 == 0.0 and torch.equal(clean, clean_ref)
    heavy = Recipe(p_clean=0.0, p_noise=1.0, p_jpeg=1.0, noise_levels=(12.0, 12.0), jpeg_quality=(30, 30))
    lr, s1 = degrade_lr(hr, 4, torch.Generator().manual_seed(0), heavy)
    assert s1 == 1.0 and (lr - clean).abs().mean() > 4 / 255


def test_eval_degradation_specs():
    assert parse_degradation("jpeg:75").label == "jpeg:75"
    assert parse_degradation("noise:5").amount == 5
    for bad in ("jpeg", "jpeg:0", "jpeg:7.5", "blur:2", "noise:x"):
        with pytest.raises(DegradeError):
            parse_degradation(bad)
