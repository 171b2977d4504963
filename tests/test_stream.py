"""The streamed engine equals the whole-image path for every block batch, with a width-sized KV band."""

from __future__ import annotations

import pytest
import torch

from infdit_cli.config import preset
from infdit_cli.engine import Plan, StreamedRunner, WholeImageRunner, block_noise, plan_placement
from infdit_cli.engine.cost import SpeedModel
from infdit_cli.engine.memory import parameter_count, parse_size
from infdit_cli.engine.placement import plan_bytes
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


@pytest.fixture(scope="module")
def random_model() -> InfDiT:
    """A random small-block config (no CLIP, 4 heads of 16): runs on every checkout, golden folder or not."""
    cfg = small_block(num_layers=2, num_heads=4, hidden_size=64, mlp_hidden=128)
    return InfDiT(cfg).init_random(7).eval()


GRIDS = [(1, 1, [1, 2]), (1, 5, [1, 2, 3, 4]), (5, 1, [1, 2, 3, 4]), (3, 4, [1, 2, 3, 4]), (5, 7, [3])]


@pytest.mark.parametrize(("rows", "cols", "block_batches"), GRIDS)
def test_streamed_equals_whole_image(random_model, rows, cols, block_batches):
    _check_streamed_equals_whole(random_model, rows, cols, block_batches)


@pytest.mark.parametrize(("rows", "cols", "block_batches"), [GRIDS[0], GRIDS[3]])
def test_streamed_equals_whole_image_golden_weights(golden_model, rows, cols, block_batches):
    """The same with the official golden weights (128-px blocks, CLIP on): two grids suffice here, as
    test_golden_network holds every n against the official code."""
    _check_streamed_equals_whole(golden_model, rows, cols, block_batches)


def _check_streamed_equals_whole(model, rows, cols, block_batches):
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


def test_host_band_and_host_state_give_the_same_result():
    """The band in host memory (copied per layer) and pixels moved per group: bitwise the device result."""
    cfg = preset("tiny")
    model = InfDiT(cfg).init_random(3).eval()
    net_in, lr, _, c_noise = _inputs(cfg, 5, 4)
    device = StreamedRunner(model, lr, None, 2)(net_in, c_noise)
    for band, state in (("host", "device"), ("device", "host"), ("host", "host")):
        plan = Plan(2, band, state, 0, 0, 0, 0.0, True)
        runner = StreamedRunner(model, lr, None, plan)
        assert torch.equal(runner(net_in, c_noise), device), (band, state)
        assert runner.stats.placement == plan.name
        if band == "host" or state == "host":
            assert runner.stats.host_bytes > 0


def test_planner_picks_larger_batches_with_more_memory():
    cfg = preset("x4")
    small = plan_placement(cfg, (32, 32), torch.bfloat16, "cuda", budget=parse_size("12GB"))
    big = plan_placement(cfg, (32, 32), torch.bfloat16, "cuda", budget=parse_size("64GB"))
    assert 1 <= small.block_batch < big.block_batch
    assert small.fits and small.device_bytes <= small.budget_bytes
    # Height changes only the image-sized state, which the plan keeps on the host: the device part is flat.
    short = plan_bytes(cfg, (8, 16), 2, "device", "host", torch.bfloat16)
    tall = plan_bytes(cfg, (16, 16), 2, "device", "host", torch.bfloat16)
    assert short[0] == tall[0] and tall[1] > short[1]
    wide = plan_bytes(cfg, (8, 32), 2, "device", "host", torch.bfloat16)
    assert wide[0] - short[0] == 16 * 28 * 2 * 1024 * 1280 * 2  # KV band: 16 more columns of K and V
    with pytest.raises(ValueError):
        parse_size("lots")


def test_planner_is_not_fooled_by_a_non_monotonic_estimate():
    """x4 bf16, 16384 wide × 512 high, 21 GB: n=2 and n=3 carry a 128-column band, n=4 none at all.

    A scan that stops at the first n that does not fit (n=3) returned n=2 here.
    """
    cfg = preset("x4")
    grid = (4, 128)
    budget = parse_size("21GB")
    peaks = {n: plan_bytes(cfg, grid, n, "device", "host", torch.bfloat16)[0] for n in (1, 2, 3, 4)}
    assert peaks[3] > budget > peaks[4] and peaks[2] > peaks[4]  # not monotonic in n
    assert next(n for n in peaks if peaks[n] > budget) < 4  # a scan that stops at the first misfit misses n=4
    plan = plan_placement(cfg, grid, torch.bfloat16, "cuda", budget)
    assert plan.block_batch >= 4 and plan.fits and plan.band == "device"


def test_planner_prefers_the_fastest_plan_that_fits():
    grid = (6, 6)
    cpu = SpeedModel(50e9, 0.0, cuda=False)  # large groups spill out of the caches
    gpu = SpeedModel(300e12, 2e-4, cuda=True)  # small groups leave the GPU idle
    small, x4 = preset("small"), preset("x4")
    fast_cpu = plan_placement(small, grid, torch.float32, "cpu", parse_size("64GB"), speed=cpu)
    assert fast_cpu.block_batch == 1 and fast_cpu.state == "host"
    every = {n: cpu.call_seconds(small, grid, n) for n in range(1, 7)}
    assert fast_cpu.seconds_per_call == min(every.values())
    # Timed on a busy CPU where big groups run better per block: the largest timed group wins, no larger.
    busy = SpeedModel(50e9, 0.01, cuda=False, measured=((1, 0.05), (4, 0.12), (16, 0.4)))
    assert plan_placement(small, grid, torch.float32, "cpu", parse_size("64GB"), speed=busy).block_batch == 4
    fast_gpu = plan_placement(x4, grid, torch.bfloat16, "cuda", parse_size("64GB"), speed=gpu)
    best = min(gpu.call_seconds(x4, grid, n) for n in range(1, 7))
    assert fast_gpu.seconds_per_call <= 1.03 * best  # within the GPU tie, the smallest peak
    assert fast_gpu.device_bytes < plan_bytes(x4, grid, 6, "device", "device", torch.bfloat16)[0]
    assert fast_gpu.block_batch > 1  # one block per group leaves the GPU idle
    # A budget just below it: the fastest of what is left.
    tight = plan_placement(x4, grid, torch.bfloat16, "cuda", fast_gpu.device_bytes - 1, speed=gpu)
    assert tight.fits and tight.device_bytes < fast_gpu.device_bytes
    assert tight.seconds_per_call >= fast_gpu.seconds_per_call
    # Nothing fits: the smallest plan, flagged.
    none = plan_placement(x4, grid, torch.bfloat16, "cuda", 1, speed=gpu)
    assert not none.fits and none.block_batch == 1 and none.band == "host" and none.state == "host"


def test_planning_a_16384_square_image_is_closed_form(monkeypatch):
    """Every n is priced by formula, once per placement: no simulated streaming, no tensors
    (a 16384² plan once took 2.4 s; `benchmarks/` reports the time, this checks the work)."""
    import infdit_cli.engine.placement as placement

    cfg = preset("x4")
    plan_placement(cfg, (128, 128), torch.bfloat16, "cuda", parse_size("24GB"))  # imports, meta model
    params = parameter_count(cfg)
    priced = []
    real_bytes = placement.plan_bytes
    monkeypatch.setattr(placement, "plan_bytes", lambda *a, **k: priced.append(a[2]) or real_bytes(*a, **k))

    def no_tensors(*args, **kwargs):
        raise AssertionError("the planner allocated a tensor")

    for factory in ("empty", "zeros", "randn", "ones"):
        monkeypatch.setattr(torch, factory, no_tensors)
    plan = plan_placement(cfg, (128, 128), torch.bfloat16, "cuda", parse_size("24GB"),
                          num_parameters=params)
    assert plan.fits and plan.state == "host"  # 805 M pixels of sampler state cannot sit on the card
    assert set(priced) == set(range(1, 129)) and len(priced) <= 128 * 2 * 3  # n × band × (state probe + states)


def test_out_of_memory_retries_with_a_smaller_plan(monkeypatch):
    """A CUDA OOM (simulated) reruns the call with a smaller plan; the result does not change."""
    cfg = preset("tiny")
    model = InfDiT(cfg).init_random(4).eval()
    net_in, lr, _, c_noise = _inputs(cfg, 4, 4)
    reference = StreamedRunner(model, lr, None, 1)(net_in, c_noise)
    plan = plan_placement(cfg, (4, 4), torch.float32, "cpu", parse_size("64GB"), block_batch=4)
    runner = StreamedRunner(model, lr, None, plan)
    real = runner._stream
    calls = []

    def failing(*args):
        calls.append(runner.block_batch)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(*args)

    monkeypatch.setattr(runner, "_stream", failing)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    out = runner(net_in, c_noise)
    assert calls[0] == 4 and calls[1] < 4
    assert runner.stats.oom_retries == 1 and runner.stats.block_batch == calls[1]
    assert rel_err(out, reference) <= 1e-5
