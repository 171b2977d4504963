"""The one base class of the errors a user can cause, and how the CLI prints them.

Each layer subclasses `InfditError` where it raises (InputError/OutputError in the file layer,
ModelError in weights, ConversionError in official, UpscaleError in pipeline,
UnknownSamplerError in samplers, ...); the CLI catches the base class alone and prints one line.
This module is a leaf: it imports nothing of ours and nothing heavy, so any module (and
`infdit --help`) can import it for free.
"""

from __future__ import annotations

__all__ = ["InfditError", "one_line", "printable"]


class InfditError(ValueError):
    """Something the user can fix (a bad file, option or model); str() is the message for stderr.

    A ValueError because every such error is a bad value, so callers that catch ValueError keep working.
    """


def printable(text: object) -> str:
    """`text` with control characters escaped and undecodable file-name bytes shown as escapes."""
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in s)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
