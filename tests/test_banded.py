"""Out of core (banded.py, engine/bands.py): band after band, the same image bit for bit as in RAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infdit_cli.banded import BandedUpscale
from infdit_cli.engine.bands import HostPlan, plan_host
from infdit_cli.engine.memory import state_bytes
from infdit_cli.model import InfDiT
from infdit_cli.pipeline import UpscaleOptions, Upscaler
from tests.models import small_block

TINY_RAM = 1  # bytes: forces the smallest bands


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler(InfDiT(small_block()).init_random(3).eval())


def image(h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(h * 1000 + w)
    return torch.rand(1, 3, h, w, generator=g)


@pytest.mark.parametrize("sampler, steps, churn, n", [("heun-edm", 2, 0.0, 1), ("euler", 2, 1.0, 2),
                                                      ("dpmpp-2m", 3, 0.0, 1)])
def test_out_of_core_is_bit_identical(upscaler: Upscaler, sampler: str, steps: int, churn: float, n: int) -> None:
    """A tall image (ragged last band, cropped padding) in bands of one group-row, as small as they get."""
    if sampler == "dpmpp-2m":
        pytest.importorskip("infdit_dpmpp")
    lr = image(29, 13)
    if n:
        base = UpscaleOptions(sampler=sampler, steps=steps, churn=churn, block_batch=n, seed=5)
        in_ram = upscaler.upscale(lr, base)
        assert all(p.host is not None and not p.host.banded for p in in_ram.passes)
        tight = UpscaleOptions(sampler=sampler, steps=steps, churn=churn, block_batch=n, seed=5,
                               max_host_memory=TINY_RAM)
        banded = upscaler.upscale(lr, tight)
        assert all(p.host is not None and p.host.banded for p in banded.passes)
        assert torch.equal(in_ram.image, banded.image)
        assert banded.stats[0].calls == in_ram.stats[0].calls


def test_out_of_core_two_passes_and_disk_edges(upscaler: Upscaler, tmp_path) -> None:
    """×8 (two passes, the first gathered as the second's LR) with the KV edges memory-mapped on disk."""
    lr = image(17, 5)
    base = UpscaleOptions(scale=8, sampler="heun-edm", steps=2, seed=1, block_batch=2)
    tight = UpscaleOptions(scale=8, sampler="heun-edm", steps=2, seed=1, block_batch=2, max_host_memory=TINY_RAM,
                           scratch=tmp_path)
    banded = upscaler.upscale(lr, tight)
    assert all(p.host.edges_on_disk for p in banded.passes)
    assert torch.equal(upscaler.upscale(lr, base).image, banded.image)
    assert list(tmp_path.iterdir()) == []  # the scratch files are gone


def test_bands_stream_in_raster_order(upscaler: Upscaler) -> None:
    lr = image(24, 8)
    options = UpscaleOptions(sampler="euler", steps=1, block_batch=1, max_host_memory=TINY_RAM)
    plans = upscaler.plan((24, 8), options)
    run = BandedUpscale(upscaler, lr, options, plans)
    heights = [b.shape[-2] for b in run]
    assert len(heights) > 1 and sum(heights) == 96 and run.finished and run.stats[0].calls == 1
    assert heights[0] == plans[0].host.band_rows * upscaler.config.block_size


def test_banded_plan_counts_a_band_on_the_host(upscaler: Upscaler) -> None:
    """The pre-flight "+N host" of an out-of-core plan is its band and edges, not the whole image's state."""
    roomy = upscaler.plan((64, 8), UpscaleOptions(sampler="euler", steps=1, block_batch=1))[0]
    tight = upscaler.plan((64, 8), UpscaleOptions(sampler="euler", steps=1, block_batch=1,
                                                  max_host_memory=TINY_RAM))[0]
    assert tight.host.banded and tight.memory.host_bytes == tight.host.host_bytes  # CPU: KV band in "device" RAM
    assert roomy.memory.host_bytes == state_bytes(8 * 4, 64 * 4) > 4 * tight.memory.host_bytes


def test_host_plan_closed_form() -> None:
    cfg = small_block()
    grid = (512, 64)  # 16384 x 2048 px
    roomy = plan_host(cfg, grid, 4, 3, torch.float32, None)
    assert roomy == HostPlan(512, 512, state_bytes(2048, 16384), 0, False) and not roomy.banded
    budget = 1 << 30
    tight = plan_host(cfg, grid, 4, 3, torch.float32, budget)
    assert tight.banded and tight.band_rows % 4 == 0 and tight.host_bytes <= budget
    # The state of a band grows with its width only: twice the height, the same plan.
    assert plan_host(cfg, (1024, 64), 4, 3, torch.float32, budget).band_rows == tight.band_rows
    tiny = plan_host(cfg, grid, 4, 3, torch.float32, 1)
    assert tiny.edges_on_disk and tiny.disk_bytes > 0 and tiny.band_rows == 4
    assert np.isfinite(tiny.host_bytes)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.models import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.mark.usefixtures("calibrate_once")
@pytest.mark.parametrize("ext, sampler", [("png", "heun-edm"), ("tif", "euler"), ("png", "dpmpp-2m")])
def test_cli_out_of_core_writes_the_same_file(model_dir, tmp_path, ext: str, sampler: str) -> None:
    """`--max-host-memory` past the state: the pre-flight line says so, bands are written as they finish
    (alpha too), and the file is the in-RAM run's, byte for byte; JPEG is refused before the run."""
    from PIL import Image
    from typer.testing import CliRunner

    from infdit_cli.cli import app

    rgba = np.random.default_rng(4).integers(0, 256, (27, 9, 4), dtype=np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(src)
    if sampler == "dpmpp-2m":
        pytest.importorskip("infdit_dpmpp")
    common = ["upscale", str(src), "--model", str(model_dir), "--steps", "2", "--sampler", sampler,
              "--block-batch", "1"]
    cli = CliRunner()
    whole = cli.invoke(app, [*common, "-o", str(tmp_path / f"whole.{ext}")])
    assert whole.exit_code == 0, whole.output
    banded = cli.invoke(app, [*common, "-o", str(tmp_path / f"banded.{ext}"), "--max-host-memory", "1B",
                              "--scratch", str(tmp_path / "scratch")])
    assert banded.exit_code == 0, banded.output
    assert "out of core" in banded.output and "scratch disk" in banded.output
    with Image.open(tmp_path / f"whole.{ext}") as a, Image.open(tmp_path / f"banded.{ext}") as b:
        assert a.size == b.size == (36, 108) and a.mode == "RGBA"
    assert (tmp_path / f"whole.{ext}").read_bytes() == (tmp_path / f"banded.{ext}").read_bytes()
    refused = cli.invoke(app, [*common, "-o", str(tmp_path / "out.jpg"), "--max-host-memory", "1B"])
    assert refused.exit_code != 0 and "use --format tiff or png" in refused.output
    assert not (tmp_path / "out.jpg").exists()


class Stop(Exception):
    """Stands in for the process being killed."""


@pytest.mark.parametrize("sampler, churn", [("heun-edm", 0.0), ("euler", 1.0)])  # state mode, log mode
def test_out_of_core_resumes_after_any_call(upscaler: Upscaler, tmp_path, monkeypatch, sampler: str,
                                            churn: float) -> None:
    """Killed after call k of a banded run (every k: inside a band, at a band's end) and rerun on the same
    checkpoint: the bands are the uninterrupted in-RAM image bit for bit, finished bands are not rerun,
    and each band keeps only its rows once done."""
    from infdit_cli.distributed.checkpoint import Checkpoint
    from infdit_cli.model import precond

    lr = image(20, 5)
    options = UpscaleOptions(sampler=sampler, steps=2, churn=churn, block_batch=1, seed=3)
    reference = upscaler.upscale(lr, options).image
    tight = UpscaleOptions(sampler=sampler, steps=2, churn=churn, block_batch=1, seed=3, max_host_memory=TINY_RAM)
    plans = upscaler.plan((20, 5), tight)
    bands = -(-plans[0].grid[0] // plans[0].host.band_rows)
    total = bands * plans[0].nfe
    assert bands >= 3
    real_call = precond.EDMDenoiser.__call__
    for k in range(1, total):
        calls = [0]

        def killed(self, x, sigma, limit=k, calls=calls):
            calls[0] += 1
            if calls[0] > limit:
                raise Stop
            return real_call(self, x, sigma)

        ck = Checkpoint(tmp_path / f"ck{k}", "model")
        monkeypatch.setattr(precond.EDMDenoiser, "__call__", killed)
        with pytest.raises(Stop):
            list(BandedUpscale(upscaler, lr, tight, plans, checkpoint=ck))
        done_bands = k // plans[0].nfe
        assert len(list(ck.folder.glob("pass0-band*-done.safetensors"))) == done_bands
        assert not list(ck.folder.glob(f"pass0-band{max(0, done_bands - 1)}-step*")) or done_bands == 0
        monkeypatch.setattr(precond.EDMDenoiser, "__call__", real_call)
        counted = [0]

        def counting(self, x, sigma, counted=counted):
            counted[0] += 1
            return real_call(self, x, sigma)

        monkeypatch.setattr(precond.EDMDenoiser, "__call__", counting)
        resumed = BandedUpscale(upscaler, lr, tight, plans, checkpoint=Checkpoint(tmp_path / f"ck{k}", "model"))
        out = torch.cat(list(resumed), dim=-2)
        monkeypatch.setattr(precond.EDMDenoiser, "__call__", real_call)
        assert torch.equal(out, reference), f"killed after call {k}"
        assert counted[0] <= total - done_bands * plans[0].nfe


@pytest.mark.usefixtures("calibrate_once")
def test_cli_out_of_core_checkpoint_resumes_to_the_same_file(model_dir, tmp_path, monkeypatch) -> None:
    """Ctrl-C in the second band of a streamed run with --checkpoint, then the same command: the file is
    byte for byte the in-RAM run's, and the checkpoint is cleared."""
    from PIL import Image
    from typer.testing import CliRunner

    from infdit_cli.cli import app
    from infdit_cli.model import precond

    rgb = np.random.default_rng(6).integers(0, 256, (24, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    common = ["upscale", str(tmp_path / "in.png"), "--model", str(model_dir), "--steps", "2", "--sampler",
              "heun-edm", "--block-batch", "1", "-q"]
    cli = CliRunner()
    assert cli.invoke(app, [*common, "-o", str(tmp_path / "whole.png")]).exit_code == 0
    real_call, calls = precond.EDMDenoiser.__call__, [0]

    def interrupted(self, x, sigma):
        calls[0] += 1
        if calls[0] > 5:  # heun, 2 steps: 3 calls a band; call 6 is the second band's last
            raise KeyboardInterrupt
        return real_call(self, x, sigma)

    banded = [*common, "-o", str(tmp_path / "banded.png"), "--max-host-memory", "1B", "--checkpoint",
              str(tmp_path / "ck")]
    monkeypatch.setattr(precond.EDMDenoiser, "__call__", interrupted)
    res = cli.invoke(app, banded)
    assert res.exit_code == 130 and not (tmp_path / "banded.png").exists()
    monkeypatch.setattr(precond.EDMDenoiser, "__call__", real_call)
    res = cli.invoke(app, [*[arg for arg in banded if arg != "-q"], "--json"])
    assert res.exit_code == 0, res.output
    assert "KV edges in the checkpoint" in res.stderr
    assert (tmp_path / "banded.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    assert not any((tmp_path / "ck").iterdir())


def test_out_of_core_checkpoint_refuses_a_disk_without_room(upscaler: Upscaler, tmp_path, monkeypatch) -> None:
    """Before any band runs: finished bands (float32), KV edges and a band's progress must fit the free disk."""
    import shutil
    from collections import namedtuple

    from infdit_cli.distributed.checkpoint import Checkpoint, CheckpointError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    tight = UpscaleOptions(sampler="euler", steps=1, block_batch=1, seed=3, max_host_memory=TINY_RAM)
    plans = upscaler.plan((20, 5), tight)
    ck = Checkpoint(tmp_path / "ck", "model")
    with pytest.raises(CheckpointError, match=r"needs \d[\d.]* [kM]?B more .* 1\.0 kB free"):
        list(BandedUpscale(upscaler, image(20, 5), tight, plans, checkpoint=ck))
    assert not list((tmp_path / "ck").rglob("*.bin"))
