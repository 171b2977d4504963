"""Entry-point discovery: built-ins as plugins, fake third-party distributions, the example plugin."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from importlib.metadata import EntryPoints, PackageNotFoundError, distribution
from pathlib import Path

import pytest
import torch

from infdit_cli.samplers import (
    SamplerOptions,
    UnknownSamplerError,
    available_samplers,
    get_sampler,
    refresh_samplers,
    registry,
    sampler_names,
)
from infdit_cli.samplers.registry import source_tree_entry_points
from tests.test_samplers import convergence_ratios, gaussian_case, gaussian_denoiser, no_noise

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugins" / "infdit-dpmpp" / "src"

# The README's minimal plugin, written without any infdit base class.
FAKE_MODULE = """
import torch
from infdit_cli.samplers import StepInfo


class ToyEuler:
    name = "toy-euler"
    api_version = 1

    def __init__(self, options):
        self.options = options

    def nfe(self, num_steps):
        return num_steps

    @torch.no_grad()
    def sample(self, denoiser, x, sigmas, noise, callback=None):
        n = len(sigmas) - 1
        dtype = self.options.arithmetic_dtype
        x, sigmas = x.to(dtype), sigmas.to(x.device, dtype)
        for i in range(n):
            denoised = denoiser(x, sigmas[i]).to(dtype)
            if callback:
                callback(StepInfo(i, n, i + 1, n, float(sigmas[i])))
            x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
        return x


class FutureApi(ToyEuler):
    name = "future"
    api_version = 2
"""


@pytest.fixture(autouse=True)
def fresh_registry():
    """Discovery is cached; every test starts and ends with a clean cache."""
    refresh_samplers()
    yield
    refresh_samplers()


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """A distribution 'fake-samplers' on sys.path: one good plugin, three broken ones, one clash."""
    module = "fake_infdit_samplers"
    info = tmp_path / "fake_samplers-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-samplers\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
        [infdit.samplers]
        toy-euler = {module}:ToyEuler
        broken = {module}_missing:Nope
        future = {module}:FutureApi
        misnamed = {module}:ToyEuler
        euler = {module}:ToyEuler
        """)
    )
    (tmp_path / f"{module}.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    refresh_samplers()
    yield tmp_path
    sys.modules.pop(module, None)


def _info(name: str, dist: str | None = None):
    matches = [i for i in available_samplers() if i.name == name and (dist is None or i.dist == dist)]
    assert matches, f"{name} not listed: {available_samplers()}"
    return matches[0]


def test_builtins_are_discovered_as_entry_points():
    declared = source_tree_entry_points()  # pyproject.toml: the one place they are written
    assert declared == {"heun-edm": "infdit_cli.samplers.heun:HeunEDM", "euler": "infdit_cli.samplers.euler:Euler"}
    for name in ("heun-edm", "euler"):
        info = _info(name)
        assert info.ok and info.value == declared[name]
    assert _info("heun-edm").nfe_20 == 39 and _info("euler").nfe_20 == 20
    try:
        distribution("infdit")
    except PackageNotFoundError:
        pytest.skip("infdit is not installed: built-ins came from the source tree's pyproject.toml")
    assert _info("heun-edm").dist == "infdit" and _info("heun-edm").version


def test_source_tree_declarations_when_not_installed(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", lambda group: EntryPoints(()))
    refresh_samplers()
    assert sampler_names() == ["euler", "heun-edm"]
    assert all(i.dist is None and i.ok for i in available_samplers())
    assert get_sampler("heun-edm").nfe(20) == 39


def test_fake_distribution_good_and_broken_plugins(fake_dist):
    toy = _info("toy-euler")
    assert toy.ok and toy.dist == "fake-samplers" and toy.version == "0.3" and toy.nfe_20 == 20
    broken = _info("broken")
    assert not broken.ok and broken.nfe_20 is None and "ModuleNotFoundError" in broken.error
    assert "api_version" in _info("future").error
    assert "differs from entry-point name" in _info("misnamed").error
    clash = _info("euler", dist="fake-samplers")
    assert "already provided by infdit_cli.samplers.euler:Euler" in clash.error
    assert {"toy-euler", "euler", "heun-edm"} <= set(sampler_names())
    assert "broken" not in sampler_names()

    x, sigmas, exact = gaussian_case(64)
    out = get_sampler("toy-euler", SamplerOptions(arithmetic_dtype=torch.float64)).sample(
        gaussian_denoiser, x, sigmas, no_noise
    )
    assert ((out - exact).norm() / exact.norm()).item() < 0.1
    assert type(get_sampler("euler")).__module__ == "infdit_cli.samplers.euler"  # built-in wins the clash
    assert get_sampler("heun-edm").nfe(4) == 7


def test_loading_a_broken_plugin_fails_in_one_line(fake_dist):
    with pytest.raises(UnknownSamplerError, match="'broken' failed to load: ModuleNotFoundError") as err:
        get_sampler("broken")
    assert "\n" not in str(err.value)
    with pytest.raises(UnknownSamplerError, match="failed to load: TypeError: api_version is 2"):
        get_sampler("future")


def test_unknown_name_lists_available():
    with pytest.raises(UnknownSamplerError) as err:
        get_sampler("does-not-exist")
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert message.startswith("unknown sampler 'does-not-exist'; available: ")
    assert all(name in message for name in sampler_names())


def test_discovery_is_cached_until_refresh(fake_dist, monkeypatch):
    before = available_samplers()
    monkeypatch.setattr(registry, "entry_points", lambda group: EntryPoints(()))
    assert available_samplers() == before
    refresh_samplers()
    assert {i.name for i in available_samplers()} == {"euler", "heun-edm"}


def test_options_reach_the_instance():
    sampler = get_sampler("heun-edm", SamplerOptions(s_churn=0.5))
    assert sampler.options.s_churn == 0.5


# --- the example plugin in plugins/infdit-dpmpp ------------------------------------------------------


@pytest.fixture
def dpmpp_cls(monkeypatch):
    """The plugin class, from the installed package or else straight from its source folder."""
    if importlib.util.find_spec("infdit_dpmpp") is None:
        monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    from infdit_dpmpp.sampler import DPMPP2M

    return DPMPP2M


def test_installed_example_plugin_is_listed_and_works():
    try:
        dist = distribution("infdit-dpmpp")
    except PackageNotFoundError:
        pytest.skip("example plugin not installed (pip install --no-deps -e plugins/infdit-dpmpp)")
    info = _info("dpmpp-2m")
    assert info.ok and info.dist == "infdit-dpmpp" and info.version == dist.version and info.nfe_20 == 20
    x, sigmas, exact = gaussian_case(16)
    calls: list[int] = []
    out = get_sampler("dpmpp-2m", SamplerOptions(arithmetic_dtype=torch.float64)).sample(
        gaussian_denoiser, x, sigmas, no_noise, callback=lambda i: calls.append(i.nfe)
    )
    assert torch.isfinite(out).all() and calls == list(range(1, 17))
    assert ((out - exact).norm() / exact.norm()).item() < 0.1


def test_example_plugin_is_second_order(dpmpp_cls):
    errs = []
    for n in (32, 64, 128):
        x, sigmas, exact = gaussian_case(n)
        out = dpmpp_cls(SamplerOptions(arithmetic_dtype=torch.float64)).sample(gaussian_denoiser, x, sigmas, no_noise)
        errs.append(((out - exact).norm() / exact.norm()).item())
    assert all(r > 3.5 for r in convergence_ratios(errs)), errs


def test_example_plugin_rejects_churn(dpmpp_cls):
    with pytest.raises(ValueError, match="churn"):
        dpmpp_cls(SamplerOptions(s_churn=1.0))
