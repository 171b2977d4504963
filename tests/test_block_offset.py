"""A model's block offset: the image starts `block_offset` LR pixels into the block grid (padded above and
left), so JPEG's 8×8 blocks fall mid-block. The output is still exactly the input ×4, every path alike,
and the training pairs carry the JPEG grid where inference will see it."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.degrade import clean_lr, jpeg_roundtrip
from infdit_cli.model import InfDiT
from infdit_cli.pipeline import UpscaleOptions, Upscaler
from infdit_cli.preprocess import crop, pad_to_multiple
from infdit_cli.train.data import offset_cut
from tests.models import small_block

OFFSET = 4  # LR pixels: half of a 32-px block ×4


def upscaler(offset: int) -> Upscaler:
    return Upscaler(InfDiT(small_block(block_offset=offset)).init_random(7).eval())


def lr_image(h: int, w: int) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))


def test_padding_leads_with_a_reflection_and_crop_undoes_it() -> None:
    x = torch.arange(2 * 11 * 6, dtype=torch.float32).view(1, 2, 11, 6)
    padded, (h, w) = pad_to_multiple(x, 8, lead=OFFSET)
    assert (h, w) == (11, 6) and padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[..., OFFSET - 1, OFFSET:OFFSET + 6], x[..., 1, :])  # reflected, not replicated
    assert torch.equal(crop(padded, h, w, OFFSET), x)
    tiny, _ = pad_to_multiple(torch.rand(1, 1, 2, 2), 8, lead=OFFSET)  # too small to reflect: replicated
    assert tiny.shape[-2:] == (8, 8)


def test_an_offset_model_upscales_the_padded_image_and_returns_exactly_the_input_times_four() -> None:
    """Same weights: the offset model's output is the plain model's output on the image padded by hand."""
    lr = lr_image(13, 10)
    options = UpscaleOptions(sampler="euler", steps=2, seed=3, block_batch=1)
    shifted = upscaler(OFFSET).upscale(lr, options).image
    assert shifted.shape[-2:] == (52, 40)
    by_hand, _ = pad_to_multiple(lr, 8, lead=OFFSET)
    plain = upscaler(0).upscale(by_hand, options).image
    assert torch.equal(shifted, crop(plain, 52, 40, 4 * OFFSET))
    assert not torch.equal(shifted, upscaler(0).upscale(lr, options).image)


@pytest.mark.parametrize("scale", [4, 8])
def test_out_of_core_and_block_batches_agree_with_an_offset(scale: int) -> None:
    """Bands start and end inside the padding (the first band holds 16 rows of the image, not 32)."""
    up, lr = upscaler(OFFSET), lr_image(11, 7)
    base = UpscaleOptions(scale=scale, sampler="heun-edm", steps=2, seed=2, block_batch=1)
    in_ram = up.upscale(lr, base).image
    assert in_ram.shape[-2:] == (11 * scale, 7 * scale)
    banded = up.upscale(lr, UpscaleOptions(scale=scale, sampler="heun-edm", steps=2, seed=2, block_batch=1,
                                           max_host_memory=1))
    assert all(p.host.banded for p in banded.passes) and torch.equal(in_ram, banded.image)
    assert torch.equal(in_ram, up.upscale(lr, UpscaleOptions(scale=scale, sampler="heun-edm", steps=2, seed=2,
                                                             block_batch=3)).image)


def test_offset_must_lie_inside_a_block() -> None:
    with pytest.raises(ValueError, match="block_offset"):
        small_block(block_offset=8)  # 32-px blocks ×4: 0..7 LR pixels


def test_training_pairs_carry_the_jpeg_grid_mid_block() -> None:
    """A JPEG'd training LR, cut as a model with the offset is trained: its 8×8 JPEG block edges fall at
    columns 4 mod 8, the middle of the model's 8-LR-pixel blocks, and the HR crop matches the LR."""
    g = torch.Generator().manual_seed(0)
    hr_big = torch.nn.functional.interpolate(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, size=128,
                                             mode="bilinear", align_corners=False)
    lr_big = torch.cat([jpeg_roundtrip(x, 30) for x in clean_lr(hr_big, 4).split(1)])
    hr, lr = offset_cut(hr_big, lr_big, 96, OFFSET, 4)
    assert hr.shape[-2:] == (96, 96) and lr.shape[-2:] == (24, 24)
    assert torch.equal(hr, hr_big[..., 16:112, 16:112])
    step = (lr[..., 1:] - lr[..., :-1]).abs().mean(dim=(0, 1, 2))  # step before column j + 1
    at = torch.arange(1, 24) % 8 == OFFSET
    assert step[at].mean() > 1.3 * step[~at].mean()
    assert offset_cut(hr_big, lr_big, 96, 0, 4) == (hr_big, lr_big)
