"""A light CLI: help and plugin listing never load torch, and errors.py is a leaf."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize(("command", "shown"), [
    (["upscale"], ["[default: (the model's, else 20)]", "[default: (the model's, else heun-edm)]",
                   "[default: (the model's, else 0.002)]", "[default: (the model's, else 40)]",
                   "[default: (the model's, else 7)]", "[default: (the model's, else 0)]",
                   "org/name@rev", "<auto|fp32|bf16|fp16>", "[default: 4]"]),
    (["convert"], ["-o", "--output", "<auto|fp32|bf16|fp16>", "[required]"]),
    (["init-model"], ["-o", "--output", "<auto|fp32|bf16|fp16>", "[default: 0]"]),
])
def test_help_shows_every_default_and_choice(command: list[str], shown: list[str]) -> None:
    from typer.testing import CliRunner

    from infdit_cli.cli import app

    res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for text in shown:
        assert text in res.output, text
    assert not re.search(r"\w \.(\s|$)", res.output)  # "Sampler steps ." = a default eaten as rich markup


@pytest.mark.parametrize("command", [["upscale"], ["eval"], ["train"], ["bench"]])
def test_help_is_readable_in_80_columns(command: list[str]) -> None:
    """Every line fits, and every description starts by column 40 (rich's table left them ~18 columns)."""
    from typer.testing import CliRunner

    from infdit_cli.cli import app

    res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(map(len, lines)) <= 80
    rows = [re.match(r"  (-\w, )?--[\w-]+( / --[\w-]+)?( <[^>]*>)?\s{2,}(?=\S)", line) for line in lines]
    starts = [m.end() for m in rows if m]
    assert len(starts) >= 5 and max(starts) <= 40, starts
