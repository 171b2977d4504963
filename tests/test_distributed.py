"""Scale-out with torch.distributed on CPU processes (gloo): files across ranks, one image across ranks,
resume after a kill, and lost or missing peers. Every process runs in its own session and is killed
in a `finally`; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from infdit_cli.cli import app
from infdit_cli.distributed.shard import balance
from infdit_cli.distributed.strips import SplitError, column_strips, split_block_batch
from infdit_cli.engine.stream import band_blocks

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """Processes started as torchrun starts its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""

    def __init__(self, world: int, args: list[str], ranks: list[int] | None = None, timeout_s: float = 10) -> None:
        port = free_port()
        self.procs: list[subprocess.Popen[str]] = []
        for rank in ranks if ranks is not None else range(world):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                       RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", INFDIT_DIST_TIMEOUT=str(timeout_s),
                       PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
            self.procs.append(subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, text=True,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))

    def wait(self, timeout_s: float = 90) -> list[tuple[int, str, str]]:
        deadline = time.monotonic() + timeout_s
        results = []
        for p in self.procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
        return results

    def kill(self, index: int) -> None:
        os.killpg(self.procs[index].pid, signal.SIGKILL)

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:  # never leave a process behind, whatever happened
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def upscale_args(*args: str) -> list[str]:
    return ["-m", "infdit_cli", "upscale", *args]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from infdit_cli.model import InfDiT
    from infdit_cli.weights import save_model
    from tests.distributed_worker import TINY

    folder = tmp_path_factory.mktemp("dist") / "model"
    save_model(InfDiT(TINY).init_random(1), folder)
    return folder


def write_image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# -- pure functions ---------------------------------------------------------------------------------

def test_balance_by_pixels_is_deterministic_and_even():
    weights = [100, 1, 50, 50, 30, 20]  # heaviest first, each to the least-loaded rank
    assert balance(weights, 2) == [0, 1, 1, 1, 0, 1]  # loads 130 and 121
    assert balance(weights, 1) == [0] * 6
    assert sorted(balance([5] * 9, 3)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_strips_are_group_aligned_contiguous_and_cover_the_grid():
    assert [(s.cols.start, s.cols.stop) for s in column_strips(7, 2, 3)] == [(0, 4), (4, 6), (6, 7)]
    assert [(s.cols.start, s.cols.stop) for s in column_strips(5, 1, 3)] == [(0, 2), (2, 4), (4, 5)]
    assert split_block_batch(4, 5, 2) == 2
    with pytest.raises(SplitError, match="fewer than the 3 ranks"):
        split_block_batch(1, 2, 3)


# -- one image across ranks -----------------------------------------------------------------------

def test_split_image_equals_single_process_bit_for_bit():
    """Three ranks, three grids (one block-row, several group-rows, ragged groups and a cropped edge);
    two ranks are covered end to end by the CLI test below."""
    from tests.distributed_worker import TINY

    world = 3

    with Ranks(world, ["-m", "tests.distributed_worker", "split"]) as ranks:
        results = ranks.wait()
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    cases = json.loads(results[0][1])["cases"]
    assert "read different pixels" in cases.pop("different pixels")
    assert cases.pop("block offset") is True
    for _, out, _ in results[1:]:  # the finished image goes to rank 0 only
        assert all(c["shape"] is None for k, c in json.loads(out)["cases"].items()
                   if k not in ("different pixels", "block offset"))
    expected_strips = {"1x5": [[0, 2], [2, 4], [4, 5]], "3x4": [[0, 2], [2, 3], [3, 4]],
                       "ragged 3x7 n=2, cropped": [[0, 4], [4, 6], [6, 7]]}
    per_block_column = TINY.num_layers * 2 * TINY.block_tokens**2 * TINY.hidden_size * 4  # K and V, float32
    for name, case in cases.items():
        assert case["equal"], f"{name}: split output differs from the single-process output"
        assert case["strips"] == expected_strips[name]
        rows = case["shape"][2] // TINY.block_size + (case["shape"][2] % TINY.block_size > 0)
        calls = 3  # heun-edm, 2 steps
        assert case["bytes_sent"] == calls * rows * per_block_column, name  # one boundary column per call
        # Rank 0 keeps the single-process band of its own strip only: one block-row across the strip, plus
        # the left column and the corner once the strip has several group-columns.
        width = case["strips"][0][1] - case["strips"][0][0]
        assert case["band_bytes"] == band_blocks((rows, width), case["n"]) * per_block_column, name


def test_split_cli_killed_peer_then_resumed_equals_single_process_png(tiny_model, tmp_path, one_thread):
    """A rank killed mid-image ends its peer with one line and no file; rerunning with the same
    --checkpoint resumes from the saved step and writes the single-process PNG, byte for byte."""
    src = write_image(tmp_path / "wide.png", 53, 21)
    common = [str(src), "--model", str(tiny_model), "--steps", "8", "--block-batch", "1", "-q"]
    res = CliRunner().invoke(app, ["upscale", *common, "-o", str(tmp_path / "single")])  # in this process, alone
    assert res.exit_code == 0, res.output
    reference = (tmp_path / "single" / "wide_x4.png").read_bytes()

    split = [*common, "-o", str(tmp_path / "split"), "--split-image", "--checkpoint", str(tmp_path / "ck")]
    with Ranks(2, upscale_args(*split)) as ranks:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill rank 1 once both ranks have saved step 3
            saved = list((tmp_path / "ck").glob("*/pass0-step3.rank*.safetensors"))
            if len(saved) == 2:
                break
            time.sleep(0.02)
        assert len(saved) == 2, "the ranks never saved step 3"
        ranks.kill(1)
        results = ranks.wait()
    rc0, _, err0 = results[0]
    assert rc0 != 0 and "Traceback" not in err0
    lines = error_lines(err0)
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "peer" in lines[0], err0
    assert not (tmp_path / "split").exists() or not any((tmp_path / "split").iterdir())

    with Ranks(2, upscale_args(*split, "--json")) as ranks:
        results = ranks.wait()
    assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert (tmp_path / "split" / "wide_x4.png").read_bytes() == reference
    assert json.loads(results[0][1])["outputs"][0]["network_calls"] < 15  # resumed: fewer than 2·8 − 1 calls
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())  # cleared once written


def test_a_silent_peer_ends_the_summary_wait_within_the_timeout():
    """A rank that stops answering (SIGSTOP: its sockets stay open) while rank 0 waits for its report:
    rank 0 gives up after INFDIT_DIST_TIMEOUT seconds with one line naming it (the wait was 7 days)."""
    with Ranks(2, ["-m", "tests.distributed_worker", "frozen-summary"], timeout_s=2) as ranks:
        out, _ = ranks.procs[0].communicate(timeout=60)
    result = json.loads(out)
    assert result["error"] and "rank 1 has not answered for 2 s" in result["error"], result
    assert result["seconds"] < 30


def test_missing_rank_ends_with_one_line_and_no_files(tiny_model, tmp_path, monkeypatch, one_thread):
    """Rank 0 of 2 started alone (in this process): the rendezvous times out with one line, no file."""
    src = write_image(tmp_path / "p.png", 16, 16)
    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", RANK="0",
                           LOCAL_RANK="0", INFDIT_DIST_TIMEOUT="1").items():
        monkeypatch.setenv(key, value)
    res = CliRunner().invoke(app, ["upscale", str(src), "--model", str(tiny_model), "--steps", "1",
                                   "-o", str(tmp_path / "out")])
    assert res.exit_code != 0 and res.stdout == "" and "Traceback" not in res.output
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and "joining the job" in lines[0] and "1/2" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


# -- files across ranks ---------------------------------------------------------------------------

def test_torchrun_shares_files_by_pixels_skips_done_ones_and_reports_a_bad_one(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"a": (40, 24), "b": (64, 16), "c": (20, 20), "d": (53, 21), "e": (8, 8), "f": (12, 30)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        write_image(folder / f"{name}.png", w, h, seed=i)
    # A JPEG with a good header and truncated pixels: it passes rank 0's up-front check (a cut PNG would
    # fail there, on its chunk checksums) and fails only when the rank it went to decodes it.
    whole = write_image(tmp_path / "whole.jpg", 64, 17).read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    out.mkdir()
    (out / "e_x4.png").write_bytes(b"done by an earlier run")  # a restarted job: kept, not redone
    port = str(free_port())
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", port,
           "-m", "infdit_cli", "upscale", str(folder), "-o", str(out), "--model", str(tiny_model), "--steps", "1",
           "--skip-existing", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", INFDIT_DIST_TIMEOUT="30",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 1, stderr  # one bad file: reported, the rest written, exit 1
    summary = json.loads(stdout)
    done = [Path(o["input"]).stem for o in summary["outputs"]]
    assert sorted(done) == ["a", "b", "c", "d", "f"]  # each pending file once: none twice, none lost
    assert {o["rank"] for o in summary["outputs"]} == {0, 1}
    assert summary["skipped"] == 1 and (out / "e_x4.png").read_bytes() == b"done by an earlier run"
    # The second-largest file by header size goes to rank 1, which reports it to rank 0's summary.
    assert summary["failed"] == 1 and summary["failures"][0]["rank"] == 1
    assert "broken.jpg" in summary["failures"][0]["input"] and "error: rank 1:" in stderr
    assert summary["ranks"] == 2
    for name in done:
        w, h = sizes[name]
        assert Image.open(out / f"{name}_x4.png").size == (4 * w, 4 * h)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert "6 written" not in stderr and "5 written, 1 skipped, 1 failed of 7" in stderr
