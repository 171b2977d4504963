"""`infdit bench`: report schema, memory laws (flat in height vs area), estimates against the allocator,
extrapolation arithmetic (with a fake clock, so no timing assertions), and the CLI's table and JSON."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from infdit_cli import bench
from infdit_cli.bench import (
    BenchError,
    GroupTiming,
    driver,
    extrapolate_call_seconds,
    head_tail_fraction,
    machine_slug,
    parse_block_batch,
    parse_resolution,
    random_model,
    run_bench,
)
from infdit_cli.cli_bench import bench_command
from infdit_cli.config import preset
from infdit_cli.engine import StreamedRunner, WholeImageRunner, flops_per_call
from infdit_cli.engine.memory import group_activation_bytes, kv_band_bytes, stream_kv_bytes, whole_image_memory_bytes
from infdit_cli.model import InfDiT
from infdit_cli.units import format_bytes

ROW_FIELDS = {
    "resolution", "grid", "block_batch", "path", "dtype", "seconds_per_nfe", "nfe", "projected_run_seconds",
    "peak_memory_bytes", "peak_memory_source", "kv_bytes", "kv_source", "activation_bytes",
    "io_bytes", "rss_growth_bytes", "flops_per_nfe", "planned_peak_bytes", "host_bytes", "placement",
    "estimated_seconds_per_nfe", "tflops", "pct_of_peak", "estimated", "extrapolated",
    "sample_groups", "total_groups", "sample_layers",
}
MACHINE_FIELDS = {"cpu_model", "cpu_cores", "torch_version", "device", "device_name", "total_memory_bytes",
                  "matmul_peak_tflops"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread


class FakeClock:
    """Every reading is one second after the previous one: timings become exact arithmetic."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def allocator_peak(fn) -> int:
    """Peak bytes the CPU allocator handed out while fn ran (torch profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        tree = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError:
        pytest.skip("this torch has no profiler event tree")

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    allocs = [n.extra_fields for n in walk(tree) if type(n.extra_fields).__name__ == "_ExtraFields_Allocation"]
    if not allocs:
        pytest.skip("the profiler recorded no allocations")
    return max(a.total_allocated for a in allocs)


def _inputs(cfg, rows: int, cols: int):
    g = torch.Generator().manual_seed(0)
    net_in = torch.randn(1, 6, rows * cfg.block_size, cols * cfg.block_size, generator=g)
    lr = torch.randn(1, 3, rows * cfg.block_size // 4, cols * cfg.block_size // 4, generator=g)
    return net_in, lr if cfg.cross_lr else None, torch.tensor([0.1])


# -- parsing and small helpers -----------------------------------------------------------------
def test_parse_resolution_and_block_batch():
    assert parse_resolution("4096") == (4096, 4096)
    assert parse_resolution("2048x1024") == (2048, 1024)
    assert parse_block_batch("auto") == "auto" and parse_block_batch("4") == 4
    for bad in ("abc", "0", "1x2x3", "-128"):
        with pytest.raises(BenchError):
            parse_resolution(bad)
    with pytest.raises(BenchError):
        parse_block_batch("0")


def test_machine_slug_is_file_safe():
    m = bench.machine_info(torch.device("cpu"))
    slug = machine_slug(m)
    assert slug and all(ch.isalnum() or ch == "-" for ch in slug)
    assert slug.endswith(f"{m.cpu_cores}c")


def test_bench_models_use_the_models_own_random_init():
    """No initialiser of the bench's own: the same values as `InfDiT.init_random`, in the bench dtype."""
    cfg = preset("tiny-clip")
    net = random_model(cfg, torch.bfloat16, torch.device("cpu"), seed=3)
    reference = InfDiT(cfg).init_random(3)
    theirs = dict(reference.named_parameters())
    for name, p in net.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, theirs[name].to(torch.bfloat16)), name


# -- memory laws --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "grid"), [("tiny", (2, 3)), ("small", (1, 2))])
def test_whole_image_estimate_matches_the_allocator(name, grid):
    """The analytic whole-image activations (all blocks, four-view K/V etc.) against a measured call."""
    cfg = preset(name)
    net = InfDiT(cfg).init_random(0).eval()
    net_in, lr, c_noise = _inputs(cfg, *grid)
    runner = WholeImageRunner(net, lr, None)
    runner(net_in, c_noise)  # warm: later allocations only
    measured = allocator_peak(lambda: runner(net_in, c_noise))
    bs = cfg.block_size
    estimate = group_activation_bytes(cfg, *grid, torch.float32) + 3 * 4 * grid[0] * grid[1] * bs * bs  # + output
    assert 0.85 <= measured / estimate <= 1.1, (measured, estimate)


def test_streamed_accounting_matches_the_allocator():
    cfg = preset("tiny")
    net = InfDiT(cfg).init_random(0).eval()
    rows, cols, n = 4, 5, 2
    net_in, lr, c_noise = _inputs(cfg, rows, cols)
    runner = StreamedRunner(net, lr, None, n)
    runner(net_in, c_noise)
    measured = allocator_peak(lambda: runner(net_in, c_noise))  # what the call allocates: band, activations, out
    held_before = bench.weight_bytes(net) + net_in.numel() * 4  # weights and the input exist before the call
    accounted = runner.stats.peak_device_bytes - held_before
    assert runner.stats.peak_kv_bytes == stream_kv_bytes(cfg, (rows, cols), n, torch.float32)
    assert 0.85 <= measured / accounted <= 1.15, (measured, accounted)


@pytest.mark.parametrize(("rows", "cols", "n"), [(7, 5, 2), (3, 8, 1), (9, 4, 3), (1, 3, 1), (3, 5, 2),
                                              (2, 6, 4), (5, 3, 3), (4, 1, 1)])
def test_calculated_kv_band_equals_the_engine_peak(rows, cols, n):
    """stream_kv_bytes (used for extrapolated rows) is what the engine measures over a full call."""
    cfg = preset("tiny", cross_lr=False)
    net = InfDiT(cfg).init_random(0).eval()
    runner = StreamedRunner(net, None, None, n)
    runner(*_inputs(cfg, rows, cols)[::2])
    assert runner.stats.peak_kv_bytes == stream_kv_bytes(cfg, (rows, cols), n, torch.float32)
    if rows >= 3 * n and cols > n:  # tall: the steady state, independent of the height
        assert runner.stats.peak_kv_bytes == kv_band_bytes(cfg, cols, n, torch.float32)


def test_streamed_working_memory_is_flat_in_height_measured():
    """What a streamed call allocates (the allocator's peak) beyond its image-sized output is the same
    at 4× the height: the band and one group's activations, nothing that grows with the image."""
    cfg = preset("tiny")
    net = InfDiT(cfg).init_random(0).eval()
    working = []
    for rows in (4, 16):  # several group-rows each, so the band is at its steady size
        net_in, lr, c_noise = _inputs(cfg, rows, 3)
        runner = StreamedRunner(net, lr, None, 2)
        runner(net_in, c_noise)  # warm: later allocations only
        output = 3 * net_in.shape[-2] * net_in.shape[-1] * 4
        working.append(allocator_peak(lambda: runner(net_in, c_noise)) - output)  # noqa: B023
    assert working[1] <= 1.02 * working[0], working


def test_bench_rows_keep_the_state_on_the_host_and_whole_grows_with_area():
    """The bench's reported figures: state planned on the host (host bytes grow, not the device's)."""
    report = run_bench("tiny", [(768, 512), (768, 1536)], [2], include_whole=True, time_budget_s=600,
                       measure_peak=False, max_repeats=1)
    streamed = [r for r in report.rows if r.path == "streamed"]
    whole = [r for r in report.rows if r.path == "whole"]
    assert [r.kv_source for r in streamed] == ["measured", "measured"]  # full calls, engine-allocated band
    assert all("state on host" in r.placement for r in streamed)
    assert streamed[1].host_bytes > 2.5 * streamed[0].host_bytes  # the state went to the host instead
    forced = run_bench("tiny", [(768, 512), (768, 1536)], [2], include_whole=False, time_budget_s=600,
                       measure_peak=False, max_repeats=1, state="device").rows
    assert forced[1].peak_memory_bytes - forced[0].peak_memory_bytes == 768 * 1024 * 36  # pixels on the device
    assert whole[1].peak_memory_bytes > 1.8 * whole[0].peak_memory_bytes
    assert whole[1].peak_memory_bytes > 3 * streamed[1].peak_memory_bytes


def test_estimated_whole_row_when_it_does_not_fit(monkeypatch):
    monkeypatch.setattr(driver, "available_memory", lambda device: 1)
    report = run_bench("tiny", (256, 256), [1], time_budget_s=30, measure_peak=False)
    whole = report.rows[-1]
    assert whole.path == "whole" and whole.estimated and whole.estimate_reason == "memory"
    assert whole.seconds_per_nfe is None and whole.peak_memory_source == "analytic"
    grid = (2, 2)
    assert whole.peak_memory_bytes == whole_image_memory_bytes(
        preset("tiny"), grid, torch.float32, bench.weight_bytes(InfDiT(preset("tiny")))
    )


# -- extrapolation ----------------------------------------------------------------------------
def test_group_projection_and_ragged_extrapolation():
    full = GroupTiming(blocks=4, seconds=2.0)
    assert full.projected_seconds(28) == 2.0
    sampled = GroupTiming(blocks=4, embed_seconds=0.5, layer_seconds=(3.0, 1.0, 2.0))
    assert sampled.projected_seconds(28, tail_fraction=0.5) == pytest.approx(0.5 + 3.0 + 27 * 1.5 + 0.75)
    ragged = GroupTiming(blocks=1, seconds=0.6)  # an edge group: one block of an n=2 grid
    # (2.0 + 0.6) s over 5 blocks -> 0.52 s per block × 9 blocks + 1 s per call.
    assert extrapolate_call_seconds([full, ragged], 9, 28, fixed_seconds=1.0) == pytest.approx(1.0 + 0.52 * 9)


def test_extrapolated_rows_follow_the_arithmetic_with_a_fake_clock():
    """Each group spans exactly one tick, conditioning one tick: seconds_per_nfe is exact."""
    report = run_bench("tiny", [(512, 512), (384, 384)], [2], include_whole=False, clock=FakeClock(),
                       force_sample=2, measure_peak=False)
    a, b = report.rows
    assert a.extrapolated and a.sample_groups == 2 and a.total_groups == 4 and a.sample_layers == 2
    assert a.seconds_per_nfe == pytest.approx(1 + 2 / 8 * 16)  # 2 full groups of 4 blocks, 16 blocks
    assert a.kv_source == "calculated" and a.kv_bytes == stream_kv_bytes(preset("tiny"), (4, 4), 2, torch.float32)
    # 3×3 blocks: the interior group (1, 1) is a single ragged block, then the full group (0, 0).
    assert b.sample_groups == 2 and b.seconds_per_nfe == pytest.approx(1 + 2 / 5 * 9)
    assert a.projected_run_seconds == pytest.approx(a.seconds_per_nfe * report.settings["nfe"])


def test_layer_sampling_with_a_fake_clock():
    """Stopping after layer 0: embed, layer 0 and the end each take one tick."""
    report = run_bench("tiny", (512, 512), [4], include_whole=False, clock=FakeClock(), force_sample=1,
                       sample_layers=1, measure_peak=False)
    (row,) = report.rows
    assert row.extrapolated and row.sample_layers == 1 and row.sample_groups == 1
    tail = head_tail_fraction(preset("tiny"))
    # embed 1 + layer 0 1 + one more layer at layer 0's pace + tail; one group of all 16 blocks; cond 1.
    assert row.seconds_per_nfe == pytest.approx(1 + (1 + 1 + 1 + tail))


# -- the report and the CLI ---------------------------------------------------------------------
def test_report_schema():
    report = run_bench("tiny", (256, 384), [1, "auto"], time_budget_s=30, measure_peak=False,
                       max_repeats=1).to_dict()
    assert MACHINE_FIELDS <= set(report["machine"])
    assert report["model"]["random_weights"] is True
    assert [r["path"] for r in report["rows"]] == ["streamed", "streamed", "whole"]
    for row in report["rows"]:
        assert ROW_FIELDS <= set(row)
        assert row["resolution"] == [256, 384] and row["grid"] == [3, 2]
        assert row["peak_memory_source"] == "accounting" and row["pct_of_peak"] is None
    assert report["rows"][1]["block_batch_requested"] == "auto"
    json.dumps(report)


@pytest.fixture()
def app(monkeypatch):
    """The command on its own Typer app, with a fake clock so two runs give identical figures."""
    monkeypatch.setattr(bench, "run_bench", functools.partial(bench.run_bench, clock=FakeClock()))
    application = typer.Typer()
    application.command("bench")(bench_command)

    @application.callback()
    def _root() -> None:
        pass

    return application


def test_cli_table_and_json_agree(app, monkeypatch):
    args = ["bench", "--preset", "tiny", "--resolution", "384x256", "-n", "1", "-n", "2", "--time-budget", "3"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    monkeypatch.setattr(bench, "run_bench", functools.partial(bench.run_bench.func, clock=FakeClock()))
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"machine", "rows"} <= set(report)
    assert "random weights" in table.stdout and "memory 384x256 fp32: streamed" in table.stdout
    for row in report["rows"]:
        line = next(ln for ln in table.stdout.splitlines()
                    if ln.split()[:3] == ["384x256", row["path"], str(row["block_batch"] or "-")])
        assert format_bytes(row["peak_memory_bytes"]) in line
        assert row["seconds_per_nfe"] is None or f"{row['seconds_per_nfe']:.3g} s" in line
        assert ("extrap." in line) == row["extrapolated"] and ("est." in line) == row["estimated"]


@pytest.mark.parametrize(("args", "message"), [
    (["--resolution", "300"], "not a multiple"),
    (["--resolution", "abc"], "invalid resolution"),
    (["--model", "x", "--preset", "tiny"], "either --model or --preset"),
    (["-n", "zero"], "invalid block batch"),
])
def test_cli_errors_are_one_line(app, args, message):
    result = CliRunner().invoke(app, ["bench", "--preset", "tiny", *args] if "--preset" not in args
                                else ["bench", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_layer_flops_add_up_to_the_call():
    """The per-layer split used to scale sampled layers accounts for almost every FLOP of x4 at 4096²."""
    cfg = preset("x4")
    total = flops_per_call(cfg, (32, 32))
    assert 1.7e15 < total < 1.9e15  # the reference's 1805 TFLOP
    layers = bench.layer_flops_per_token(cfg) * cfg.num_layers * 32 * 32 * cfg.block_tokens**2
    assert 0.97 < layers / total <= 1.0
    assert 0 < head_tail_fraction(cfg) < 0.01
