"""The CUDA path on a simulated card: every placement runs under FakeTensorMode on a machine with no GPU.

`SimulatedCard` stands in for the driver at the device seam (infdit_cli/device.py): tensors on `cuda`
are FakeTensors, so devices, dtypes and shapes flow through the real code (a cuda + cpu op raises
FakeTensorDeviceMismatchError) while no value is computed. The tests assert where things are: what
reaches the model is on the model's device in its dtype, what the sampler holds is where the plan
keeps it, boundary columns travel between ranks on the device, finished strips go to rank 0 only.
Values are checked elsewhere, on the CPU (test_stream, test_distributed, test_golden_*).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily

from infdit_cli import device as seam
from infdit_cli.distributed.checkpoint import Checkpoint
from infdit_cli.distributed.context import DistributedError, Ranks
from infdit_cli.distributed.split import SplitUpscale, agree_across
from infdit_cli.engine import StreamedRunner, plan_placement
from infdit_cli.engine.runner import DeviceMemoryError
from infdit_cli.engine.stream import StreamNeighbourhood
from infdit_cli.model import EDMDenoiser, InfDiT
from infdit_cli.pipeline import UpscaleOptions, Upscaler
from tests.models import TINY_CLIP, small_block

GB = 10**9
CUDA = torch.device("cuda", 0)


class SimulatedCard(seam.Card):
    """An 80 GB CUDA card that is not there: tensors on it are FakeTensors (one mode per thread)."""

    def __init__(self, free: int = 80 * GB) -> None:
        self.free = free
        self.fail_allocations = 0  # raise OutOfMemoryError on the next N buffers inside a network call
        self.full = False  # raise OutOfMemoryError as soon as a network call starts work on the card
        self.allocations: list[int] = []
        self.selected: list[int] = []
        self._local = threading.local()

    def mode(self) -> FakeTensorMode:
        if getattr(self._local, "mode", None) is None:
            self._local.mode = FakeTensorMode(allow_non_fake_inputs=True)
            self._local.depth = 0
        return self._local.mode

    @contextlib.contextmanager
    def __call__(self) -> Iterator[SimulatedCard]:
        """This thread's flow runs on the card: the card stands in at the seam, its fake mode is on.

        Rank threads share the process's seam: the test thread installs the card for them all."""
        installed = seam.use(self) if seam.card() is not self else contextlib.nullcontext()
        with installed, self.mode():
            yield self

    # -- the seam --------------------------------------------------------------------------------
    def available(self) -> bool:
        return True

    def count(self) -> int:
        return 2

    def select(self, index: int) -> None:
        self.selected.append(index)

    def index(self, device: torch.device) -> int:
        return device.index or 0

    def name(self, device: torch.device) -> str:
        return "Simulated H100"

    def total_bytes(self, device: torch.device) -> int:
        return 80 * GB

    def free_bytes(self, device: torch.device) -> int:
        return self.free

    def synchronize(self, device: torch.device) -> None:
        assert device.type == "cuda"

    def reset_peak(self, device: torch.device) -> None:
        self.allocations.clear()

    def peak_bytes(self, device: torch.device) -> int:
        return sum(self.allocations)  # an upper bound: nothing is freed in a simulation

    def release_cache(self) -> None:
        pass

    def allocating(self, device: torch.device, nbytes: int) -> None:
        assert device.type == "cuda"
        if self.fail_allocations and getattr(self._local, "depth", 0) > 0:
            self.fail_allocations -= 1
            raise seam.OutOfMemoryError("CUDA out of memory (simulated). Tried to allocate ...")
        self.allocations.append(nbytes)

    def generator_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu")  # a fake card has no generator: draw on the host, move to the card

    @contextlib.contextmanager
    def working_on(self, device: torch.device) -> Iterator[None]:
        if self.full:
            raise seam.OutOfMemoryError("CUDA out of memory (simulated): the card is full")
        with self.mode():
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1

    def host_region(self) -> contextlib.AbstractContextManager[Any]:
        return unset_fake_temporarily()  # host tensors stay real tensors, with values

    def inference(self) -> contextlib.AbstractContextManager[Any]:
        return torch.no_grad()  # under inference_mode some fake kernels take real-CUDA decompositions

    def attention_kernels(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # the kernel priority list queries the real driver

    def version(self) -> str | None:
        return "simulated"


def on_card(module: nn.Module, card: SimulatedCard, dtype: torch.dtype) -> nn.Module:
    """A module built on the host, its parameters and buffers moved to the card (a module's own
    `.to("cuda")` swaps tensors, which FakeTensors do not allow)."""
    with card.mode():
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[name] = nn.Parameter(p.detach().to(CUDA, dtype), requires_grad=False)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = b.to(CUDA, dtype if b.is_floating_point() else b.dtype)
    return module.eval()


def fake_model(card: SimulatedCard, dtype: torch.dtype = torch.bfloat16, **config: Any) -> InfDiT:
    with unset_fake_temporarily():  # built (and initialised) on the host
        net = InfDiT(small_block(**config))
    return on_card(net, card, dtype)  # type: ignore[return-value]


class Seen:
    """What reached the model and the sampler, recorded by wrapping their entry points."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.model_inputs: list[tuple[torch.device, torch.dtype]] = []  # embed(): the pixels after any move
        self.conditions: list[torch.device] = []  # c_noise as condition() got it
        self.sampler: list[tuple[torch.device, bool]] = []  # the denoiser's x: device, a real host tensor?
        self.bands: list[tuple[torch.device, torch.device]] = []  # (band store, compute device)
        embed, condition, denoise, nbh = InfDiT.embed, InfDiT.condition, EDMDenoiser.__call__, \
            StreamNeighbourhood.__init__

        def spy_embed(net: InfDiT, net_in: Tensor) -> Tensor:
            self.model_inputs.append((net_in.device, net.patch_embed.weight.dtype))
            return embed(net, net_in)

        def spy_condition(net: InfDiT, c_noise: Tensor, vector: Tensor | None = None) -> Any:
            self.conditions.append(c_noise.device)
            return condition(net, c_noise, vector)

        def spy_denoise(den: EDMDenoiser, x: Tensor, sigma: Any) -> Tensor:
            self.sampler.append((x.device, not isinstance(x, FakeTensor)))
            out = denoise(den, x, sigma)
            assert out.device == x.device
            return out

        def spy_band(nb: StreamNeighbourhood, *args: Any, **kwargs: Any) -> None:
            nbh(nb, *args, **kwargs)
            self.bands.append((nb.store, nb.device))

        monkeypatch.setattr(InfDiT, "embed", spy_embed)
        monkeypatch.setattr(InfDiT, "condition", spy_condition)
        monkeypatch.setattr(EDMDenoiser, "__call__", spy_denoise)
        monkeypatch.setattr(StreamNeighbourhood, "__init__", spy_band)

    def check(self, model_dtype: torch.dtype, state: str, band: str | None = None) -> None:
        assert self.model_inputs and all(d.type == "cuda" and t == model_dtype for d, t in self.model_inputs)
        assert self.conditions and all(d.type == "cuda" for d in self.conditions)
        on_host = state == "host"
        assert self.sampler and all(d.type == ("cpu" if on_host else "cuda") for d, _ in self.sampler)
        assert all(real == on_host for _, real in self.sampler), "a host state must stay host memory"
        if band is not None:
            assert self.bands and all(s.type == ("cuda" if band == "device" else "cpu") and d.type == "cuda"
                                      for s, d in self.bands)


class FakeClip:
    """A tiny open_clip image tower on the card (the real ClipEncoder code runs)."""

    @staticmethod
    def make(card: SimulatedCard, dtype: torch.dtype) -> Any:
        import open_clip

        from infdit_cli.clip import ClipEncoder

        with unset_fake_temporarily():
            torch.manual_seed(0)
            model = open_clip.create_model("ViT-L-14", pretrained=None, **TINY_CLIP)
        return ClipEncoder(on_card(model, card, dtype), "ViT-L-14", has_text=False)


@pytest.fixture
def card() -> SimulatedCard:
    return SimulatedCard()


def fixed_plans(up: Upscaler, size: tuple[int, int], options: UpscaleOptions, band: str, state: str) -> list:
    plans = up.plan(size, options)
    for p in plans:
        p.memory = replace(p.memory, band=band, state=state)
    return plans


# -- single process: every placement, dtypes, scales, CLIP ------------------------------------------

@pytest.mark.parametrize("band", ["device", "host"])
@pytest.mark.parametrize("state", ["device", "host"])
def test_single_process_every_placement(card, monkeypatch, band, state):
    """KV band on device / host × sampler state on device / host, bf16, ×4: the model is fed on the
    card, the band and the sampler's state are where the plan says, the image comes back whole."""
    seen = Seen(monkeypatch)
    image = torch.rand(1, 3, 24, 20)  # decoded pixels: host memory; 3x3 blocks (2x2 groups of n = 2)
    with card():
        up = Upscaler(fake_model(card), None, "cuda")
        options = UpscaleOptions(scale=4, steps=2, block_batch=2)
        plans = fixed_plans(up, (24, 20), options, band, state)
        result = up.upscale(image, options, plans=plans)
    assert result.image is not None and result.image.shape == (1, 3, 96, 80) and result.image.device.type == "cpu"
    seen.check(torch.bfloat16, state, band)
    assert len(seen.sampler) == 3  # heun-edm, 2 steps
    st = result.stats[0]
    assert st.placement == f"n=2, KV band on {band}, state on {state}"
    assert st.peak_device_source == "cuda_max_allocated"  # the allocator's peak, read through the seam
    assert (st.host_bytes > 0) == (band == "host" or state == "host")


@pytest.mark.parametrize(("dtype", "scale", "clip", "state"), [
    (torch.float16, 2, True, "host"),
    (torch.float16, 4, False, "device"),
    (torch.bfloat16, 2, False, "device"),
    (torch.bfloat16, 8, True, "host"),  # two passes (×4 then ×2)
])
def test_dtypes_scales_and_the_clip_vector(card, monkeypatch, dtype, scale, clip, state):
    """bf16 and fp16 models, ×2 (the ×4 model on a half-size LR), ×4 and ×8, with a CLIP image
    embedding (the real encoder on the card) and without."""
    seen = Seen(monkeypatch)
    vectors: list[Tensor] = []
    image = torch.rand(1, 3, 12, 20)
    with card():
        config = {"vector_dim": TINY_CLIP["embed_dim"]} if clip else {}
        up = Upscaler(fake_model(card, dtype, **config), FakeClip.make(card, dtype) if clip else None, "cuda")
        real = up.condition_vector
        monkeypatch.setattr(up, "condition_vector", lambda lr, o: vectors.append(lr) or real(lr, o))
        options = UpscaleOptions(scale=scale, steps=1, block_batch=2)
        result = up.upscale(image, options,
                            plans=fixed_plans(up, (12, 20), options, "device", state))
    assert result.image is not None and result.image.shape == (1, 3, 12 * scale, 20 * scale)
    seen.check(dtype, state)
    assert vectors and all(v.device.type == "cuda" for v in vectors)  # CLIP reads the LR on the card


# -- out of memory ----------------------------------------------------------------------------------

def test_out_of_memory_once_replans_smaller_and_finishes(card, monkeypatch):
    """The seam raises the OOM type once inside a call: the call reruns on the smaller plan."""
    seen = Seen(monkeypatch)
    with card():
        net = fake_model(card)
        lr = torch.rand(1, 3, 24, 32).to(CUDA, torch.bfloat16)
        plan = plan_placement(net.config, (4, 4), torch.bfloat16, "cuda", 80 * GB, block_batch=2, band="device",
                              state="device")
        runner = StreamedRunner(net, lr, None, plan)
        card.fail_allocations = 1  # the KV band's allocation fails
        out = runner(torch.rand(1, 6, 128, 128).to(CUDA), torch.tensor([0.1]).to(CUDA))
    assert out.device == CUDA and out.shape == (1, 3, 128, 128)
    assert runner.stats.oom_retries == 1 and runner.stats.calls == 1
    smaller = runner.plan
    assert smaller is not None and smaller.device_bytes < plan.device_bytes and smaller.state == "device"
    assert seen.model_inputs and card.fail_allocations == 0


def test_out_of_memory_on_the_smallest_plan_is_one_user_error(card):
    """When no smaller plan is left the error is an InfditError (a batch reports it and goes on)."""
    with card():
        net = fake_model(card)
        plan = plan_placement(net.config, (3, 5), torch.bfloat16, "cuda", 80 * GB, block_batch=2)
        runner = StreamedRunner(net, torch.rand(1, 3, 24, 40).to(CUDA, torch.bfloat16), None, plan)
        card.full = True
        with pytest.raises(DeviceMemoryError, match="out of device memory with the smallest plan"):
            runner(torch.rand(1, 6, 96, 160), torch.tensor([0.1]))
    assert runner.stats.oom_retries >= 1 and runner.stats.placement.endswith("state on host")


# -- one image across ranks: threads with a loopback link ----------------------------------------------

class Loopback:
    """In-process ranks (threads) with torch.distributed's semantics: rank-ordered collectives and
    ordered point-to-point messages, every wait bounded. Real tensors are copied; FakeTensors (one
    fake mode per thread) carry their device, dtype and shape only, which must match the receiver's."""

    def __init__(self, world: int, timeout_s: float = 60) -> None:
        self.world, self.timeout = world, timeout_s
        self.pipes = {(s, d): queue.Queue() for s in range(world) for d in range(world)}
        self.barrier = threading.Barrier(world, timeout=timeout_s)
        self.slots: list[Any] = [None] * world
        self.columns: list[tuple[int, torch.device, tuple[int, ...]]] = []  # (sender, device, shape)

    def peers(self, rank: int) -> LoopbackPeers:
        return LoopbackPeers(self, rank)


class LoopbackPeers:
    def __init__(self, hub: Loopback, rank: int) -> None:
        self.hub, self.ranks = hub, Ranks(rank, hub.world, rank)

    def _exchange(self, obj: Any) -> list[Any]:
        hub = self.hub
        hub.barrier.wait()
        hub.slots[self.ranks.rank] = obj
        hub.barrier.wait()
        everyone = list(hub.slots)
        hub.barrier.wait()
        return everyone

    def all_gather(self, obj: Any, what: str) -> list[Any]:
        return self._exchange(obj)

    def isend(self, tensor: Tensor, dst: int, what: str) -> Callable[[], None]:
        meta = (tensor.device, tensor.dtype, tensor.shape)  # read here: another thread's fake mode may be busy
        self.hub.columns.append((self.ranks.rank, tensor.device, tuple(tensor.shape)))
        self.hub.pipes[(self.ranks.rank, dst)].put((meta, None if isinstance(tensor, FakeTensor) else tensor))
        return lambda: None

    def recv(self, tensor: Tensor, src: int, what: str) -> None:
        try:
            meta, sent = self.hub.pipes[(src, self.ranks.rank)].get(timeout=self.hub.timeout)
        except queue.Empty:
            raise DistributedError(f"rank {self.ranks.rank}: {what} timed out") from None
        assert meta == (tensor.device, tensor.dtype, tensor.shape), what
        if sent is not None and not isinstance(tensor, FakeTensor):
            tensor.copy_(sent)

    def gather(self, tensor: Tensor, what: str, everyone: bool) -> list[Tensor] | None:
        assert tensor.device.type == "cpu", "strips are gathered in host memory"
        parts = self._exchange(tensor)
        return parts if everyone or self.ranks.rank == 0 else None


def run_ranks(card: SimulatedCard, world: int, work: Callable[[int, LoopbackPeers], Any]) -> list[Any]:
    """`work(rank, peers)` on `world` threads, on the card; the first failure is raised here."""
    hub, results, errors = Loopback(world), [None] * world, []

    def body(rank: int) -> None:
        try:
            results[rank] = work(rank, hub.peers(rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)
            hub.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    with seam.use(card):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a rank hung"
    results.append(hub)
    return results


def split_upscale(card: SimulatedCard, rank: int, peers: LoopbackPeers, options: UpscaleOptions, size: tuple[int, int],
                  sample: Any = None) -> tuple[Any, SplitUpscale]:
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))  # the same file on every rank
    with card():
        up = Upscaler(fake_model(card), None, "cuda")
        split = SplitUpscale(up, peers.ranks, peers=peers)  # type: ignore[arg-type]
        plans = fixed_plans(up, size, options, "device", "host")
        hook = sample(split, peers) if sample else None
        return split.upscale(image, options, plans, hook), split


@pytest.mark.parametrize(("world", "steps"), [(2, 2), (3, 1)])
def test_split_image_strip_runners_with_the_state_on_the_host(card, monkeypatch, world, steps):
    """2 and 3 simulated ranks, state on the host: each rank's model is fed on its card, boundary
    columns travel card to card, the sampler's strip stays in host memory, rank 0 alone gets the image."""
    seen = Seen(monkeypatch)
    options = UpscaleOptions(scale=4, steps=steps, block_batch=1)
    out = run_ranks(card, world, lambda rank, peers: split_upscale(card, rank, peers, options, (16, 24)))
    hub: Loopback = out[-1]
    results = [r for r, _ in out[:-1]]
    assert results[0].image is not None and results[0].image.shape == (1, 3, 64, 96)
    assert all(r.image is None for r in results[1:])
    seen.check(torch.bfloat16, "host", band="device")
    columns = [c for c in hub.columns]
    assert columns and all(d.type == "cuda" for _, d, _ in columns)  # boundary columns stay on the card
    # Per call each boundary carries one block column per block-row (n = 1: 2 rows); heun-edm: 2·steps − 1 calls.
    assert len(columns) == (world - 1) * (2 * steps - 1) * 2
    splits = [s for _, s in out[:-1]]
    assert all(s.link_stats[0].bytes_sent > 0 for s in splits[:-1]) and splits[-1].link_stats[0].bytes_sent == 0


def test_split_image_resumes_from_a_checkpoint_with_the_state_on_the_host(card, tmp_path, monkeypatch):
    """Two ranks stop after five network calls (steps 1 and 2 saved), then rerun with the same checkpoint: they agree on
    the newest common step, load it into host memory and finish on the card."""
    seen = Seen(monkeypatch)
    options = UpscaleOptions(scale=4, steps=4, block_batch=1)  # heun-edm: 7 calls

    class Stop(Exception):
        pass

    def hook(stop_after: int | None, calls: list[int]) -> Callable[..., Any]:
        def make(split: SplitUpscale, peers: LoopbackPeers) -> Any:
            ck = Checkpoint(tmp_path / "ck", "model", peers.ranks.rank, peers.ranks.world, agree_across(peers))

            def sample(sampler: Any, denoiser: Any, x0: Tensor, sigmas: Tensor, noise: Any, index: int) -> Tensor:
                def counted(x: Tensor, sigma: Any) -> Tensor:
                    if stop_after is not None and calls.count(peers.ranks.rank) >= stop_after:
                        raise Stop
                    calls.append(peers.ranks.rank)
                    return denoiser(x, sigma)

                out = ck.sample(sampler, counted, x0, sigmas, noise, index)
                split.resumed = ck.resumed_from  # type: ignore[attr-defined]
                return out
            return sample
        return make

    first: list[int] = []
    with pytest.raises(Stop):
        run_ranks(card, 2, lambda rank, peers: split_upscale(card, rank, peers, options, (8, 16), hook(5, first)))
    saved = sorted(p.name for p in (tmp_path / "ck").glob("pass0-step*"))
    assert saved == sorted(f"pass0-step{s}.rank{r}.safetensors" for r in (0, 1) for s in (1, 2))
    seen.sampler.clear()
    again: list[int] = []
    out = run_ranks(card, 2, lambda rank, peers: split_upscale(card, rank, peers, options, (8, 16), hook(None, again)))
    assert [s.resumed for _, s in out[:-1]] == [{0: 2}, {0: 2}]  # resumed at step 2 on both ranks
    assert len(again) == 2 * 3  # steps 2 and 3 of 4: 2 + 1 calls on each rank
    assert out[0][0].image is not None and out[0][0].image.shape == (1, 3, 32, 64) and out[1][0].image is None
    seen.check(torch.bfloat16, "host")


# -- the bench driver and --compile ----------------------------------------------------------------

def test_bench_streamed_and_whole_rows_on_the_card(card, calibrate_once):
    """A full streamed row, a sampled (extrapolated) one and the whole-image row, measured on the card."""
    from infdit_cli.bench import run_bench

    with card():
        net = fake_model(card)
        full = run_bench(net, [(64, 96)], ["auto", 1], torch.bfloat16, "cuda", steps=1, include_whole=True,
                         time_budget_s=30, measure_peak=False, max_repeats=1)
        sampled = run_bench(net, [(96, 96)], [2], torch.bfloat16, "cuda", steps=1, include_whole=False,
                            time_budget_s=30, measure_peak=False, force_sample=2, sample_layers=1)
    assert full.machine.device == "cuda:0" and full.machine.device_name == "Simulated H100"
    paths = [r.path for r in full.rows]
    assert paths == ["streamed", "streamed", "whole"]
    for row in full.rows + sampled.rows:
        assert row.peak_memory_source == "cuda_max_allocated" and row.seconds_per_nfe and row.seconds_per_nfe > 0
    assert sampled.rows[0].extrapolated and sampled.rows[0].sample_groups == 2


def test_compile_is_refused_with_its_reason_when_no_compiler_is_there(card, monkeypatch):
    from infdit_cli.bench import BenchError, run_bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    with card():
        net = fake_model(card)
        with pytest.raises(BenchError, match="--compile is not available here: Triton is not installed"):
            run_bench(net, [(64, 64)], ["auto"], torch.bfloat16, "cuda", steps=1, include_whole=False,
                      time_budget_s=5, measure_peak=False, compile=True)
    assert not net.compiled


# -- benchmarks/gpu_check.py's flow -----------------------------------------------------------------

def test_gpu_check_flow_runs_on_the_card(card, monkeypatch, tmp_path, calibrate_once):
    """gpu-check.sh's last step on bench JSON written by the bench on the card, sizes shrunk; the
    compiler and the value read-back are stood in (no kernels run on a simulated card)."""
    from infdit_cli.bench import run_bench

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    compared: list[tuple[torch.device, torch.Size]] = []

    def rel_err(a: Tensor, b: Tensor) -> float:  # values are not computed on a simulated card
        assert a.device == b.device == CUDA and a.shape == b.shape
        compared.append((a.device, a.shape))
        return 0.0

    monkeypatch.setattr(gpu_check, "rel_err", rel_err)
    monkeypatch.setattr(gpu_check, "random_model", lambda cfg, dtype, device: fake_model(card, dtype))
    monkeypatch.setattr(InfDiT, "compile_layers", lambda self: setattr(self, "compiled", True) or self)
    released = {(64, 64): [4096, 4096], (128, 32): [16384, 1024], (64, 32): [1024, 512],
                (64, 128): [1024, 2048]}  # the script's targets name the released sizes: shrunk stand-ins
    with card():
        report = run_bench(fake_model(card), list(released), ["auto"], torch.bfloat16, "cuda", steps=1,
                           include_whole=False, time_budget_s=30, measure_peak=False, max_repeats=1)
        doc = report.to_dict()
        for row in doc["rows"]:
            row["resolution"] = released[tuple(row["resolution"])]
        path = tmp_path / "matrix.json"  # one run stands for the script's four (eager, compile, band, flat)
        path.write_text(json.dumps({"machine": doc["machine"], "runs": [doc]}))
        md = gpu_check.check([str(path)] * 4, CUDA, tmp_path / "results", config=small_block(), size=64,
                             ns=(1, 2), compiled_n=2)
    verdict = json.loads(md.with_suffix(".json").read_text())
    assert set(verdict) == {"streamed_equals_whole_bf16", "4096_eager", "4096_compile", "band_16384x1024",
                            "flat_in_height", "plan_16384_square"}
    assert verdict["streamed_equals_whole_bf16"]["ok"] and len(compared) == 3  # n = 1, 2 and compiled n = 2
    assert verdict["flat_in_height"]["source"] == "cuda_max_allocated"
    assert verdict["plan_16384_square"]["budget_bytes"] == int(gpu_check.TARGET_PEAK_16384)
    assert md.name.startswith("simulated-h100-") and "Simulated H100" in md.read_text()


# -- a batch and one image's final out-of-memory (CPU: the CLI path is device-independent) -----------

def test_a_batch_survives_one_images_final_out_of_memory(tmp_path, monkeypatch):
    """The middle image runs out of memory on every plan down to n = 1: one line names it, the
    batch writes the other two and exits 1 (an OOM used to end the whole run with a traceback)."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from infdit_cli.cli import app
    from tests.models import write_tiny_model

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a": (16, 12), "big": (40, 24), "c": (12, 16)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    real = StreamedRunner._stream

    def stream(self: StreamedRunner, net_in: Tensor, c_noise: Tensor, grid: tuple[int, int], out: Tensor) -> int:
        if grid[1] * self.net.config.block_size >= 160:  # the big image, whatever the plan
            raise seam.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.\nmore lines")
        return real(self, net_in, c_noise, grid, out)

    monkeypatch.setattr(StreamedRunner, "_stream", stream)
    from infdit_cli.engine import estimate
    from infdit_cli.engine.cost import SpeedModel

    prior = estimate.Calibration(SpeedModel.for_device("cpu"), 1e-3, 1e-5, 0.0)  # no timing: not under test
    monkeypatch.setattr(estimate.TimeEstimator, "_calibrate", lambda self: prior)
    res = CliRunner().invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "out"), "--model",
                                   str(write_tiny_model(tmp_path / "model")), "--steps", "1", "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "c_x4.png"]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "big.png" in errors[0] and "out of device memory with the smallest plan" in errors[0]
    assert res.stderr.splitlines()[-1].startswith("2 written, 0 skipped, 1 failed of 3")
