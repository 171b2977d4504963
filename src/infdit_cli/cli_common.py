"""What every `infdit` command shares: consoles, one-line errors, device and dtype choice, and one
vocabulary of options.

The vocabulary (every command that has the idea spells it this way; new commands follow it):

- `-o/--output PATH`   where results are written (a file or a folder; never a positional argument,
                       never `--out`).
- `--dtype {auto,fp32,bf16,fp16}`   weight/activation precision, `Dtype`; `auto` is bf16 on
                       CUDA and fp32 elsewhere (for `convert`: the checkpoint's own dtype).
- `--device {auto,cpu,cuda,mps}`   `DEVICE_HELP`; `auto` picks CUDA, then MPS, then the CPU.
- `--block-batch N|auto`   the streamed group side n (`bench` and `upscale`; `-n` in bench).
- `--steps N`          sampler steps only (a training length is `--max-steps`).
- `--sampler NAME`, `--seed N`, `--model PATH_OR_REPO`, `--clip PATH_OR_REPO`   as in upscale.
- `--json`             a machine-readable summary on stdout (human lines stay on stderr).
- `-q/--quiet`, `-v/--verbose`   less / more on stderr.
- Defaults are visible in every `--help`: a default that is not a plain value gets
  `show_default="..."` (Typer prints it as `[default: ...]`); never write `[default: ...]` into
  help text, where rich reads it as markup and drops it.
- `-r` is `--recursive` (inputs); nothing else takes `-r`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from infdit_cli import errors
from infdit_cli.samplers.schedules import RELEASED


class OptionError(errors.InfditError):
    """An option value no command can use (unknown device or dtype)."""


class Dtype(str, Enum):
    """--dtype values (a str Enum: Typer lists and checks the choices; members compare equal to their names)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class SamplerDtype(str, Enum):
    """--sampler-dtype values: the sampler state in fp32, or in bf16 as the official code keeps it."""

    fp32 = "fp32"
    bf16 = "bf16"


DTYPE_HELP = "Precision: auto (bf16 on CUDA, fp32 elsewhere), fp32, bf16 or fp16."
DEVICE_HELP = "Device: auto (CUDA, then MPS, then CPU), cpu, cuda or mps."

# Options that `upscale` and `eval` share, spelt once (defaults None = the model's own, else ours).
ModelOption = Annotated[str | None, typer.Option(
    help="Model: a local folder or file, or a hub repo org/name (or org/name@rev).",
    show_default="the shipped model")]
StepsOption = Annotated[int | None, typer.Option(
    help="Sampler steps.", show_default=f"the model's, else {RELEASED.steps}")]
SamplerOption = Annotated[str | None, typer.Option(
    help="Sampler plugin (see `infdit samplers`).", show_default=f"the model's, else {RELEASED.sampler}")]
SigmaMinOption = Annotated[float | None, typer.Option(
    help="Smallest noise level.", show_default=f"the model's, else {RELEASED.sigma_min:g}")]
SigmaMaxOption = Annotated[float | None, typer.Option(
    help="Largest noise level.", show_default=f"the model's, else {RELEASED.sigma_max:g}")]
RhoOption = Annotated[float | None, typer.Option(
    help="Karras schedule exponent.", show_default=f"the model's, else {RELEASED.rho:g}")]
ChurnOption = Annotated[float | None, typer.Option(
    help="EDM stochastic churn (0 = deterministic).", show_default=f"the model's, else {RELEASED.churn:g}")]
BlockBatchOption = Annotated[str | None, typer.Option(
    help="Blocks per group side n, or auto (the fastest plan that fits the memory).", show_default="auto")]
MaxMemoryOption = Annotated[str | None, typer.Option(
    help="Memory budget, e.g. 6GB.", show_default="free device memory")]
DenoiseOption = Annotated[str, typer.Option(
    help="Artefact removal 0..1 (0 keeps every detail, 1 removes heavy JPEG/noise), or auto: a JPEG's "
         "own quality sets it, other formats 0. Models with a denoise input only.")]


def parse_denoise(text: str) -> float | None:
    """--denoise: a strength in 0..1, or auto (None: per file, `degrade.auto_strength`)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise fail(f"invalid --denoise {text!r} (use a number in 0..1 or auto)") from None
    if not 0.0 <= value <= 1.0:
        raise fail(f"--denoise must be within 0..1 (got {text})")
    return value


def parse_block_batch(text: str | None) -> int | None:
    """--block-batch: N, or auto (None: the placement planner picks the fastest plan that fits)."""
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise fail(f"invalid --block-batch {text!r} (use a positive integer or auto)") from None
    if n < 1:
        raise fail("--block-batch must be at least 1")
    return n


err = Console(stderr=True)
out = Console()


def report_error(message: str) -> None:
    """One red line on stderr, never wrapped, whatever the terminal width."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def info(message: str, style: str | None = None) -> None:
    """A diagnostic line on stderr (results go to stdout), not wrapped, not parsed as markup."""
    err.print(escape(message), style=style, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    report_error(message)
    return typer.Exit(code)


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one red line and exit 1; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except errors.InfditError as exc:
            raise fail(errors.one_line(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def parse_dtype(name: str, device_type: str) -> Any:
    """The torch dtype for a --dtype value (Dtype or its name)."""
    import torch

    name = getattr(name, "value", name)
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    if name not in table:
        raise OptionError(f"unknown dtype {name!r}; use auto, bf16, fp16 or fp32")
    return table[name]


def pick_device(name: str) -> Any:
    import torch

    from infdit_cli.device import cuda_available

    if name == "auto":
        if cuda_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not cuda_available():
        raise OptionError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionError("--device mps: MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise OptionError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)
