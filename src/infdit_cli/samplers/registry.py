"""Sampler discovery through the ``infdit.samplers`` entry-point group.

Built-in samplers are declared in our own pyproject and found exactly like third-party ones; the
fallback table (same strings) is used only when the ``infdit`` distribution is not installed, e.g. when
running from a bare source tree. A plugin that fails to import or validate is recorded with its error
and never breaks the others.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from infdit_cli.errors import InfditError
from infdit_cli.samplers.base import API_VERSION, Sampler, SamplerOptions

GROUP = "infdit.samplers"
DIST_NAME = "infdit"
DEFAULT_SAMPLER = "heun-edm"
# Mirror of [project.entry-points."infdit.samplers"] in pyproject.toml.
BUILTIN_ENTRY_POINTS: dict[str, str] = {
    "heun-edm": "infdit_cli.samplers.heun:HeunEDM",
    "euler": "infdit_cli.samplers.euler:Euler",
}


class UnknownSamplerError(InfditError):
    """Unknown or unloadable sampler name; the message is one line, fit for a CLI error."""


@dataclass(frozen=True)
class SamplerInfo:
    """One declared sampler, loadable or not (what ``infdit samplers`` lists)."""

    name: str
    value: str  # entry-point value, "module:attr"
    dist: str | None  # declaring distribution; None for the source-tree fallback table
    version: str | None
    nfe_20: int | None  # denoiser calls for 20 steps; None when the plugin failed
    error: str | None  # "ModuleNotFoundError: No module named 'x'" etc.; None when usable

    @property
    def ok(self) -> bool:
        return self.error is None


def _normalize(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _dist_of(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else (None, None)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ordered_entry_points() -> list[EntryPoint]:
    """Our own declarations first (built-ins win name clashes), then third-party ones in path order."""
    found = list(entry_points(group=GROUP))
    own = [ep for ep in found if _normalize(_dist_of(ep)[0] or "") == DIST_NAME]
    others = [ep for ep in found if _normalize(_dist_of(ep)[0] or "") != DIST_NAME]
    if not own:  # not installed: same strings, same loading path
        own = [EntryPoint(name=n, value=v, group=GROUP) for n, v in BUILTIN_ENTRY_POINTS.items()]
    return own + others


def _validate(name: str, cls: object) -> int:
    """Check the protocol before anyone uses the plugin; return its NFE for 20 steps."""
    if not isinstance(cls, type):
        raise TypeError(f"entry point must name a class, got {type(cls).__name__}")
    version = getattr(cls, "api_version", None)
    if version != API_VERSION:
        raise TypeError(f"api_version is {version!r}, this infdit supports {API_VERSION}")
    instance = cls(SamplerOptions())
    if not isinstance(instance, Sampler):
        raise TypeError("instances lack name/api_version/nfe/sample")
    if instance.name != name:
        raise TypeError(f"class name attribute {instance.name!r} differs from entry-point name {name!r}")
    nfe = instance.nfe(20)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise TypeError(f"nfe(20) returned {nfe!r}, expected a positive int")
    return nfe


@lru_cache(maxsize=1)
def _load_all() -> tuple[dict[str, type], tuple[SamplerInfo, ...]]:
    loaded: dict[str, type] = {}
    taken: dict[str, str] = {}  # name -> entry-point value that claimed it first
    infos: list[SamplerInfo] = []
    for ep in _ordered_entry_points():
        dist, version = _dist_of(ep)
        if ep.name in taken:
            if taken[ep.name] != ep.value:
                error = f"name already provided by {taken[ep.name]}"
                infos.append(SamplerInfo(ep.name, ep.value, dist, version, None, error))
            continue
        taken[ep.name] = ep.value
        try:
            cls = ep.load()
            nfe_20: int | None = _validate(ep.name, cls)
            loaded[ep.name] = cls
            error = None
        except Exception as exc:  # a broken plugin must not take the others down
            nfe_20, error = None, _one_line(exc)
        infos.append(SamplerInfo(ep.name, ep.value, dist, version, nfe_20, error))
    infos.sort(key=lambda i: (i.name, i.error is not None))
    return loaded, tuple(infos)


def refresh_samplers() -> None:
    """Forget cached discovery (after installing a plugin, or in tests that fake distributions)."""
    _load_all.cache_clear()
    importlib.invalidate_caches()


def available_samplers() -> list[SamplerInfo]:
    """Every declared sampler, sorted by name, failures included (with their error)."""
    return list(_load_all()[1])


def sampler_names() -> list[str]:
    """Names that ``get_sampler`` accepts, sorted."""
    return sorted(_load_all()[0])


def get_sampler(name: str, options: SamplerOptions | None = None) -> Sampler:
    """Instantiate a sampler by entry-point name, or raise UnknownSamplerError with a one-line reason."""
    loaded, infos = _load_all()
    cls = loaded.get(name)
    if cls is None:
        errors = [i.error for i in infos if i.name == name and i.error]
        if errors:
            raise UnknownSamplerError(f"sampler {name!r} failed to load: {errors[0]}")
        available = ", ".join(sorted(loaded)) or "none"
        raise UnknownSamplerError(f"unknown sampler {name!r}; available: {available}")
    return cls(options if options is not None else SamplerOptions())
