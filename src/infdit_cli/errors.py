"""The errors a user can cause, each printed as one line on stderr by the CLI."""

from __future__ import annotations

from infdit_cli.imageio import InputError, OutputError
from infdit_cli.official import ConversionError
from infdit_cli.pipeline import UpscaleError
from infdit_cli.samplers import UnknownSamplerError
from infdit_cli.weights import ModelError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConversionError, ModelError, UpscaleError, UnknownSamplerError, InputError, OutputError,
)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
