"""Sampler discovery through the ``infdit.samplers`` entry-point group.

Built-in samplers are declared in our own pyproject and found exactly like third-party ones; when the
``infdit`` distribution is not installed (a bare source tree) the same declarations are read from the
tree's pyproject.toml, so they are written in one place only. A plugin that fails to import or
validate is recorded with its error and never breaks the others.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from infdit_cli.errors import InfditError
from infdit_cli.samplers.base import API_VERSION, Sampler, SamplerOptions

GROUP = "infdit.samplers"
DIST_NAME = "infdit"
SOURCE_PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


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
    if not own:  # not installed: the source tree's declarations, same loading path
        own = [EntryPoint(name=n, value=v, group=GROUP) for n, v in source_tree_entry_points().items()]
    return own + others


def source_tree_entry_points(pyproject: Path = SOURCE_PYPROJECT) -> dict[str, str]:
    """Our [project.entry-points."infdit.samplers"] read from pyproject.toml ({} without one, or on
    Python 3.10, which has no tomllib: install the package there)."""
    try:
        import tomllib
    except ImportError:
        return {}
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, ValueError):
        return {}
    return dict(data.get("project", {}).get("entry-points", {}).get(GROUP, {}))


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
