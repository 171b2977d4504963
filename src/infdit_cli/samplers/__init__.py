"""Samplers: the plugin protocol, built-in solvers, noise schedules and the entry-point registry."""

from infdit_cli.samplers.base import (
    API_VERSION,
    BaseSampler,
    Denoiser,
    NoiseFn,
    Sampler,
    SamplerOptions,
    SamplingRun,
    StepCallback,
    StepInfo,
    check_num_steps,
    churn_gamma,
    sampler_id,
    uses_state,
)
from infdit_cli.samplers.registry import (
    GROUP,
    SamplerInfo,
    UnknownSamplerError,
    available_samplers,
    get_sampler,
    refresh_samplers,
    sampler_names,
)
from infdit_cli.samplers.schedules import (
    RELEASED,
    Sampling,
    exponential_sigmas,
    karras_sigmas,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "RELEASED",
    "BaseSampler",
    "Denoiser",
    "NoiseFn",
    "Sampler",
    "SamplerInfo",
    "SamplerOptions",
    "Sampling",
    "SamplingRun",
    "StepCallback",
    "StepInfo",
    "UnknownSamplerError",
    "available_samplers",
    "check_num_steps",
    "churn_gamma",
    "exponential_sigmas",
    "get_sampler",
    "karras_sigmas",
    "refresh_samplers",
    "sampler_id",
    "sampler_names",
    "uses_state",
]
