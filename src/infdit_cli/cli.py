"""The `infdit` command line: thin Typer commands over the library."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from infdit_cli import __version__, errors
from infdit_cli.cli_common import Dtype, cli_errors, fail, info, out, parse_dtype, report_error
from infdit_cli.cli_train import eval_command, train_command
from infdit_cli.cli_upscale import upscale_command
from infdit_cli.samplers.schedules import RELEASED

# Commands whose modules import torch when loaded: imported only when run (or asked for --help),
# so `infdit --help` and the light commands start in well under a second.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {"bench": ("infdit_cli.cli_bench", "bench_command")}
# Rich help puts each option's description in a fourth column, about 18 characters wide on an
# 80-column terminal; Click's plain help gives it about 45. Below this width the help is plain.
RICH_HELP_COLUMNS = 100


def _help_markup() -> str | None:
    """Rich help on a terminal at least `RICH_HELP_COLUMNS` wide, plain help below (read when shown)."""
    return "rich" if shutil.get_terminal_size().columns >= RICH_HELP_COLUMNS else None


class _Command(TyperCommand):
    """Typer's command, with its help plain on a narrow terminal."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.rich_markup_mode = _help_markup()  # type: ignore[assignment]
        super().format_help(ctx, formatter)


def _first_doc_line(module: str, function: str) -> str:
    """A function's docstring summary read from source, without importing (or running) its module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
    return ""


class _LazyCommand(click.Command):
    """Stands in for a command in the listing; parsing and running go to the real one, built on first use."""

    def __init__(self, name: str, module: str, function: str) -> None:
        super().__init__(name, help=_first_doc_line(module, function))
        self.module, self.function = module, function
        self._real: click.Command | None = None

    def real(self) -> click.Command:
        if self._real is None:
            single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
            single.command(self.name, cls=_Command)(getattr(importlib.import_module(self.module), self.function))
            self._real = typer.main.get_command(single)
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return self.real().make_context(info_name, args, parent=parent, **extra)


class _Group(TyperGroup):
    """Typer's group plus the lazily imported commands of LAZY_COMMANDS; help as `_Command`'s."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.rich_markup_mode = _help_markup()  # type: ignore[assignment]
        super().format_help(ctx, formatter)

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return names[:1] + list(LAZY_COMMANDS) + names[1:]  # upscale, bench, then the rest

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            return _LazyCommand(cmd_name, *LAZY_COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)


app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Inf-DiT ultra-high-resolution image upscaler.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"infdit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Inf-DiT super-resolution: any size, memory that grows with the width, not the area."""


app.command("upscale", cls=_Command)(upscale_command)
app.command("train", cls=_Command)(train_command)
app.command("eval", cls=_Command)(eval_command)


@app.command("convert", cls=_Command)
@cli_errors
def convert_command(
    src: Annotated[Path, typer.Argument(
        help="Official mp_rank_00_model_states.pt (or its folder, or a safetensors file with the official keys).")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output model folder (or a .safetensors file).", show_default=False)],
    dtype: Annotated[Dtype, typer.Option(
        help="auto (keep the checkpoint's dtype), fp32, bf16 or fp16.")] = Dtype.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at the output.")] = False,
) -> None:
    """Convert the official Inf-DiT checkpoint into infdit's safetensors format (done once)."""
    target = output if output.suffix == ".safetensors" else output / "model.safetensors"
    if target.exists() and not overwrite:
        raise fail(f"{target} already exists (use --overwrite)")
    from infdit_cli.convert import convert_checkpoint

    cast = None if dtype == Dtype.auto else parse_dtype(dtype, "cpu")
    report = convert_checkpoint(src, output, cast, log=info)
    cfg = report.config
    info(f"model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads, "
         f"CLIP vector {cfg.vector_dim or 'off'}")
    print(report.model_path)
    if report.clip_path:
        print(report.clip_path)


@app.command("init-model", cls=_Command)
@cli_errors
def init_model_command(
    preset_name: Annotated[str, typer.Argument(
        metavar="PRESET", help="Preset architecture (x4, base, small, tiny, tiny-clip).")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Output model folder (or .safetensors file).", show_default=False)],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    dtype: Annotated[Dtype, typer.Option(help="auto (fp32), fp32, bf16 or fp16.")] = Dtype.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model.")] = False,
) -> None:
    """Write a random-initialised model of a preset (benchmarks, plugin tests, bug reports)."""
    from infdit_cli.config import preset
    from infdit_cli.model import InfDiT
    from infdit_cli.weights import save_model

    try:
        config = preset(preset_name)
    except KeyError as exc:
        raise fail(errors.one_line(exc).strip("'\"")) from None
    target = output if output.suffix == ".safetensors" else output / "model.safetensors"
    if target.exists() and not overwrite:
        raise fail(f"{target} already exists (use --overwrite)")
    model = InfDiT(config).init_random(seed).to(parse_dtype(dtype, "cpu"))
    path = save_model(model, output, {"random_init_seed": str(seed), "preset": preset_name})
    info(f"{preset_name}: {model.num_parameters():,} parameters, random weights (seed {seed})")
    print(path)


@app.command("samplers", cls=_Command)
@cli_errors
def samplers_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")] = False,
    steps: Annotated[int, typer.Option(help="Step count for the network-call column.")] = RELEASED.steps,
) -> None:
    """List every sampler plugin, built-in or third-party, with its package and cost."""
    from infdit_cli.samplers import SamplerOptions, available_samplers, get_sampler

    rows = []
    for entry in available_samplers():
        nfe = None
        if entry.error is None:
            nfe = get_sampler(entry.name, SamplerOptions()).nfe(steps)
        rows.append({"name": entry.name, "package": entry.dist, "version": entry.version,
                     "entry_point": entry.value, "nfe": nfe, "error": entry.error})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"Samplers (network calls for {steps} steps)")
    for col in ("name", "package", "version", "NFE", "status"):
        table.add_column(col)
    for r in rows:
        status = "[green]ok[/]" if r["error"] is None else f"[red]error: {r['error']}[/]"
        table.add_row(r["name"], r["package"] or "-", r["version"] or "-",
                      "-" if r["nfe"] is None else str(r["nfe"]), status)
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        report_error("interrupted")
        sys.exit(130)
