"""A light CLI: help and plugin listing never load torch, and errors.py is a leaf."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from typer.testing import CliRunner
from infdit_cli.cli import app
runner = CliRunner()
for args in {argv!r}:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


@pytest.mark.parametrize("argv", [
    [["--help"]],
    [["samplers"], ["samplers", "--json"]],
    [["upscale", "--help"], ["convert", "--help"], ["init-model", "--help"], ["eval", "--help"], ["train", "--help"]],
])
def test_help_and_samplers_do_not_import_torch(argv: list[list[str]]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", f"torch was imported by {argv}"


def test_bench_is_listed_without_importing_it() -> None:
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom infdit_cli.cli import app\n"
             "r = CliRunner().invoke(app, ['--help'])\n"
             "print('bench' in r.output, 'infdit_cli.cli_bench' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_errors_module_is_a_leaf() -> None:
    probe = "import sys, infdit_cli.errors\nprint(sorted(m for m in sys.modules if m.startswith('infdit_cli')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['infdit_cli', 'infdit_cli.errors']", out.stderr


def test_every_user_error_shares_one_base() -> None:
    from infdit_cli.errors import InfditError
    from infdit_cli.imageio import InputError, OutputError
    from infdit_cli.official import ConversionError
    from infdit_cli.pipeline import UpscaleError
    from infdit_cli.samplers import UnknownSamplerError
    from infdit_cli.weights import ModelError

    for cls in (InputError, OutputError, ConversionError, UpscaleError, UnknownSamplerError, ModelError):
        assert issubclass(cls, InfditError), cls


def test_lazy_bench_command_parses_and_runs_its_own_help() -> None:
    from typer.testing import CliRunner

    from infdit_cli.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--help"])
    assert res.exit_code == 0 and "--resolution" in res.output and "--block-batch" in res.output
    bad = runner.invoke(app, ["bench", "--no-such-option"])
    assert bad.exit_code == 2 and "No such option" in bad.output
