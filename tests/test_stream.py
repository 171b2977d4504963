"""The streamed engine equals the whole-image path for every block batch, with a width-sized KV band."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.config import preset
from infdit_cli.engine import StreamedRunner, WholeImageRunner, block_noise, plan_block_batch
from infdit_cli.engine.memory import estimate_memory, parse_size
from infdit_cli.model import InfDiT
from tests.conftest import rel_err
from tests.models import small_block


def _inputs(cfg, rows: int, cols: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = rows * cfg.block_size, cols * cfg.block_size
    net_in = torch.randn(1, 6, h, w, generator=g)
    lr = torch.randn(1, 3, h // cfg.sr_scale, w // cfg.sr_scale, generator=g)
    vector = torch.randn(1, cfg.vector_dim, generator=g) if cfg.vector_dim else None
    return net_in, lr, vector, torch.tensor([0.1])


@pytest.fixture(scope="module", params=["golden", "random"])
def model(request):
    """The golden tiny weights (skipped without the golden folder), and a random small-block config
    (no CLIP, 4 heads of 16) that always runs, so streamed = whole is tested on every checkout."""
    if request.param == "golden":
        return request.getfixturevalue("golden_model")
    cfg = small_block(num_layers=2, num_heads=4, hidden_size=64, mlp_hidden=128)
    return InfDiT(cfg).init_random(7).eval()


@pytest.mark.parametrize(
    ("rows", "cols", "block_batches"),
    [(1, 1, [1, 2]), (1, 5, [1, 2, 3, 4]), (5, 1, [1, 2, 3, 4]), (3, 4, [1, 2, 3, 4]), (5, 7, [3])],
)
def test_streamed_equals_whole_image(model, rows, cols, block_batches):
    net_in, lr, vector, c_noise = _inputs(model.config, rows, cols)
    reference = WholeImageRunner(model, lr, vector)(net_in, c_noise)
    for n in block_batches:
        streamed = StreamedRunner(model, lr, vector, n)(net_in, c_noise)
        assert rel_err(streamed, reference) <= 1e-5, f"{rows}x{cols} blocks, n={n}"


def test_border_block_sees_four_copies_of_itself():
    """Block (0, 0) of a larger image computes exactly what a one-block image does."""
    model = InfDiT(small_block()).init_random(1).eval()
    net_in, lr, _, c_noise = _inputs(model.config, 2, 3)
    bs = model.config.block_size
    big = WholeImageRunner(model, lr, None)(net_in, c_noise)[..., :bs, :bs]
    single = WholeImageRunner(model, lr[..., : bs // 4, : bs // 4], None)(net_in[..., :bs, :bs], c_noise)
    # LR windows differ (the neighbours' LR is visible in the big image), so compare without cross-LR.
    model_nolr = InfDiT(small_block(cross_lr=False)).init_random(1).eval()
    big = WholeImageRunner(model_nolr, None, None)(net_in, c_noise)[..., :bs, :bs]
    single = WholeImageRunner(model_nolr, None, None)(net_in[..., :bs, :bs], c_noise)
    assert torch.equal(big, single)


def test_rope_positions_wrap_beyond_the_table():
    """One block wider than the RoPE table (released: 33 blocks, 4224 px, table 1024; here a 64-token
    table with 8-token blocks): positions wrap % table identically in both paths."""
    cfg = small_block(num_layers=1, cross_lr=False, rope_table=64)
    wrap = cfg.rope_table // cfg.block_tokens  # the block that starts at token column 0 again
    model = InfDiT(cfg).init_random(2).eval()
    net_in, lr, _, c_noise = _inputs(cfg, 1, wrap + 1)
    reference = WholeImageRunner(model, None, None)(net_in, c_noise)
    streamed = StreamedRunner(model, None, None, 4)(net_in, c_noise)
    assert rel_err(streamed, reference) <= 1e-5
    bs = cfg.block_size
    tile = net_in[..., :bs, :bs]
    same = torch.cat([tile] * (wrap + 1), dim=-1)
    out = StreamedRunner(model, None, None, 2)(same, c_noise)
    assert not torch.equal(out[..., :bs, (wrap - 1) * bs:wrap * bs], out[..., :bs, :bs])
    shifted = WholeImageRunner(model, None, None, token_offset=(0, cfg.rope_table))(same, c_noise)
    assert torch.equal(shifted, WholeImageRunner(model, None, None)(same, c_noise))


def test_kv_band_flat_in_height_and_linear_in_width():
    model = InfDiT(small_block(cross_lr=False, num_layers=1, mlp_hidden=64)).init_random(0).eval()

    def band(rows: int, cols: int) -> int:
        net_in, _, _, c_noise = _inputs(model.config, rows, cols)
        runner = StreamedRunner(model, None, None, 1)
        runner(net_in, c_noise)
        return runner.stats.peak_kv_bytes

    cfg = model.config
    per_block = cfg.num_layers * 2 * cfg.block_tokens**2 * cfg.hidden_size * 4  # K and V, float32
    assert band(3, 3) == band(6, 3)
    # The band is one block-row across the image plus the left column and the corner.
    assert band(3, 8) - band(3, 4) == 4 * per_block
    assert band(3, 4) == (4 + 1 + 1) * per_block


def test_block_noise_independent_of_layout():
    a = block_noise(5, 2, (1, 3, 256, 384), 128)
    b = block_noise(5, 2, (1, 3, 128, 128), 128)
    assert torch.equal(a[..., :128, :128], b)
    assert not torch.equal(block_noise(5, 3, (1, 3, 128, 128), 128), b)
    assert not torch.equal(a[..., :128, 128:256], b)


def test_planner_picks_larger_batches_with_more_memory():
    cfg = preset("x4")
    cpu = torch.device("cpu")
    small = plan_block_batch(cfg, (32, 32), torch.bfloat16, cpu, max_memory=parse_size("12GB"))
    big = plan_block_batch(cfg, (32, 32), torch.bfloat16, cpu, max_memory=parse_size("64GB"))
    assert 1 <= small.block_batch < big.block_batch
    assert small.estimated_bytes <= small.budget_bytes
    # Height changes only the image-sized pixel buffers (36 bytes per pixel); the network part is flat.
    assert estimate_memory(cfg, (16, 16), 2, torch.bfloat16) - estimate_memory(
        cfg, (8, 16), 2, torch.bfloat16) == 8 * 16 * 128 * 128 * 36
    assert estimate_memory(cfg, (8, 32), 2, torch.bfloat16) - estimate_memory(
        cfg, (8, 16), 2, torch.bfloat16) > 16 * 28 * 2 * 1024 * 1280 * 2  # KV band grows with width
    with pytest.raises(ValueError):
        parse_size("lots")
