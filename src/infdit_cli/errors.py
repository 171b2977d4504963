"""The errors a user can cause, each printed as one line on stderr by the CLI."""

from __future__ import annotations

from infdit_cli.official import ConversionError
from infdit_cli.pipeline import UpscaleError
from infdit_cli.samplers import UnknownSamplerError
from infdit_cli.weights import ModelError

USER_ERRORS: tuple[type[Exception], ...] = (ConversionError, ModelError, UpscaleError, UnknownSamplerError)


def register(*errors: type[Exception]) -> None:
    """Let other modules (image I/O, training) add their user-facing error types."""
    global USER_ERRORS
    USER_ERRORS = tuple(dict.fromkeys(USER_ERRORS + errors))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
