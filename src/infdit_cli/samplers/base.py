"""The sampler plugin protocol (api_version 1) and the bookkeeping every sampler shares.

A sampler is a class named by an ``infdit.samplers`` entry point and built as ``cls(options)``. It owns
the step loop; the schedule (``sigmas``), the denoiser and the noise come from the caller, so a solver
never decides discretisation, model precision or randomness (the streaming engine seeds noise per
block, which is why samplers must never call ``torch.randn`` themselves).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch is imported when a sampler runs, not when plugins are listed
    import torch
    from torch import Tensor

API_VERSION = 1

# D(x, sigma) -> estimate of the clean image; sigma arrives as a 0-d tensor in the arithmetic dtype.
Denoiser = Callable[["Tensor", "Tensor | float"], "Tensor"]
# noise(step_index) -> fresh N(0, 1) tensor shaped like x.
NoiseFn = Callable[[int], "Tensor"]


class _DtypeField:
    """A dataclass field whose default, torch.float32, is looked up only when read.

    `infdit samplers` builds every plugin with default options to list it; resolving the default
    lazily keeps that (and `infdit --help`) from importing torch.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default: "float32, resolved on read"
        value = obj.__dict__.get(self.slot)
        if value is None:
            import torch

            return torch.float32
        return value

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.slot] = value


@dataclass(frozen=True)
class SamplerOptions:
    """Solver options shared by all samplers (EDM Algorithm 2 names).

    ``arithmetic_dtype`` is the dtype of the sampler state and of its sigma values; bfloat16 rounds
    the schedule and every update to bf16, which is what the released Inf-DiT sampler does.
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    arithmetic_dtype: torch.dtype = _DtypeField()  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.s_churn >= 0:
            raise ValueError(f"s_churn must be >= 0, got {self.s_churn}")
        if not self.s_noise >= 0:
            raise ValueError(f"s_noise must be >= 0, got {self.s_noise}")
        if not self.s_tmin <= self.s_tmax:
            raise ValueError(f"s_tmin ({self.s_tmin}) must not exceed s_tmax ({self.s_tmax})")
        given = self.__dict__.get("_arithmetic_dtype")
        if given is not None:  # whoever passes a dtype has imported torch already
            import torch

            if not (isinstance(given, torch.dtype) and given.is_floating_point):
                raise ValueError(f"arithmetic_dtype must be a floating torch.dtype, got {given!r}")


@dataclass(frozen=True)
class StepInfo:
    """What a progress callback gets after each denoiser call (enough for an exact progress bar)."""

    step: int  # 0-based index of the step the call belongs to
    num_steps: int
    nfe: int  # denoiser calls done so far, this one included
    total_nfe: int
    sigma: float  # noise level the denoiser was just called at


StepCallback = Callable[[StepInfo], None]


@runtime_checkable
class Sampler(Protocol):
    """Structural protocol; plugins need not inherit from anything in this package."""

    name: str
    api_version: int

    def nfe(self, num_steps: int) -> int: ...

    def sample(
        self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseFn, callback: StepCallback | None = None
    ) -> Tensor: ...


def check_num_steps(num_steps: int) -> int:
    """Reject step counts that no schedule can have, with one message for every sampler."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    return num_steps


def churn_gamma(options: SamplerOptions, sigma: float, num_steps: int) -> float:
    """EDM's gamma_i: extra noise fraction, capped at sqrt(2) - 1, only inside [s_tmin, s_tmax]."""
    if options.s_churn <= 0 or not options.s_tmin <= sigma <= options.s_tmax:
        return 0.0
    return min(options.s_churn / num_steps, math.sqrt(2.0) - 1.0)


class SamplingRun:
    """State of one ``sample`` call: dtype casting, sigma tensors, NFE counting and the callback.

    Sigmas are kept as 0-d tensors on x's device in the arithmetic dtype, so that updates round
    exactly like the official tensor code (bf16 included); ``values`` holds the same rounded numbers
    as Python floats for control flow without device syncs.
    """

    def __init__(
        self,
        sampler: Sampler,
        options: SamplerOptions,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        callback: StepCallback | None,
    ) -> None:
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError(f"sigmas must be a 1-D schedule with at least 2 values, got shape {tuple(sigmas.shape)}")
        self.dtype = options.arithmetic_dtype
        self.out_dtype = x.dtype
        self.options = options
        host = sigmas.to(device="cpu", dtype=self.dtype)  # the rounded values, read once on the host
        self.values: list[float] = host.tolist()
        self.sigmas = host.detach().to(x.device)
        if self.values[-1] != 0 or not all(math.isfinite(v) and v > 0 for v in self.values[:-1]):
            raise ValueError("sigmas must be finite and positive with a trailing 0")
        self.num_steps = len(self.values) - 1
        self.total_nfe = sampler.nfe(self.num_steps)
        self.nfe = 0
        self.denoiser = denoiser
        self.callback = callback
        self.x = x.detach().to(self.dtype)

    def denoise(self, x: Tensor, sigma: Tensor, step: int) -> Tensor:
        """One counted denoiser call; the result is cast to the arithmetic dtype."""
        out = self.denoiser(x, sigma).to(self.dtype)
        self.nfe += 1
        if self.callback is not None:
            self.callback(StepInfo(step, self.num_steps, self.nfe, self.total_nfe, float(sigma)))
        return out

    def churn(self, x: Tensor, step: int, noise: NoiseFn) -> tuple[Tensor, Tensor]:
        """Return (x_hat, sigma_hat): x raised to sigma_hat = sigma·(1+gamma) with fresh noise."""
        sigma = self.sigmas[step]
        gamma = churn_gamma(self.options, self.values[step], self.num_steps)
        if gamma == 0.0:
            return x, sigma
        sigma_hat = sigma * (gamma + 1.0)
        eps = noise(step).to(device=x.device, dtype=self.dtype) * self.options.s_noise
        if eps.shape != x.shape:
            raise ValueError(f"noise({step}) has shape {tuple(eps.shape)}, expected {tuple(x.shape)}")
        return x + eps * (sigma_hat**2 - sigma**2) ** 0.5, sigma_hat

    def finish(self, x: Tensor) -> Tensor:
        """Check the NFE promise (the CLI sizes its progress bar from it) and restore x's dtype."""
        if self.nfe != self.total_nfe:
            raise RuntimeError(f"sampler made {self.nfe} denoiser calls but nfe() promised {self.total_nfe}")
        return x.to(self.out_dtype)


class BaseSampler:
    """Optional convenience base: stores options, declares the protocol attributes, and runs `steps`
    (the solver's own loop) between the shared checks, without autograd."""

    name: ClassVar[str] = ""
    api_version: ClassVar[int] = API_VERSION

    def __init__(self, options: SamplerOptions | None = None) -> None:
        self.options = options if options is not None else SamplerOptions()

    def nfe(self, num_steps: int) -> int:
        raise NotImplementedError

    def sample(
        self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, noise: NoiseFn, callback: StepCallback | None = None
    ) -> Tensor:
        import torch  # here, not at import: listing plugins must not load torch

        with torch.no_grad():
            run = self.start(denoiser, x, sigmas, callback)
            return run.finish(self.steps(run, noise))

    def steps(self, run: SamplingRun, noise: NoiseFn) -> Tensor:
        """The solver's step loop from `run.x` over `run.sigmas`, calling `run.denoise`; returns the last x."""
        raise NotImplementedError

    def start(self, denoiser: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None) -> SamplingRun:
        """Validate the inputs and open the per-call bookkeeping."""
        return SamplingRun(self, self.options, denoiser, x, sigmas, callback)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


# Built-in samplers whose state at a step start is x alone (resumable from a saved x; see `uses_state`).
STATE_SAMPLERS = frozenset({"infdit_cli.samplers.heun:HeunEDM", "infdit_cli.samplers.euler:Euler"})


def sampler_id(sampler: Any) -> str:
    """The sampler's class as module:qualname (what identifies it in a checkpoint)."""
    cls = type(sampler)
    return f"{cls.__module__}:{cls.__qualname__}"


def uses_state(sampler: Any) -> bool:
    """True when x alone is the sampler's state at a step start and a step's first call sees it, so a
    saved x resumes it exactly (else its denoiser outputs must be replayed)."""
    options = getattr(sampler, "options", None)
    if getattr(options, "s_churn", 0.0) != 0.0:  # churn: the first call sees x + noise, not x
        return False
    return sampler_id(sampler) in STATE_SAMPLERS or getattr(sampler, "resumable_from_state", False) is True
