"""Which files `infdit upscale` reads and where it writes: input expansion, output naming, pre-flight checks.

Everything here runs before any model is loaded, so a typo, a full-of-nothing folder or an
existing output is reported in one line within milliseconds, not after minutes of compute.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from PIL import Image

from infdit_cli.imageio import InputError, OutputError, check_header, check_output_size, output_format, read_formats

__all__ = [
    "InputError", "OutputError", "image_extensions", "collect_inputs", "gather_inputs", "check_input",
    "output_path", "plan_outputs", "check_output", "check_output_size",
]

_GLOB_CHARS = re.compile(r"[*?\[]")
_OUTPUT_STEM = re.compile(r"(.+)_x(\d+)")


def image_extensions() -> frozenset[str]:
    """Lower-case suffixes ('.png', ...) of every format Pillow reads here (EPS and stub formats excluded)."""
    readable = set(read_formats())
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in readable)


def _is_image_name(path: Path, exts: frozenset[str] | None = None) -> bool:
    return path.suffix.lower() in (exts if exts is not None else image_extensions())


def _has_image_suffix(path: Path) -> bool:
    """Any suffix Pillow knows, readable or not: 'out.pdf' names a file we refuse, not a folder to create."""
    Image.init()
    return path.suffix.lower() in image_extensions() or path.suffix.lower() in Image.registered_extensions()


def _hidden(name: str) -> bool:
    # Also covers our own temporary files (".name.pid.tmp.png") and macOS "._name.jpg" forks.
    return name.startswith(".")


def collect_inputs(
    specs: Sequence[str | Path], recursive: bool = False, *, exclude: Path | None = None, skip_outputs: bool = True
) -> list[Path]:
    """Expand files, folders and globs into a sorted, de-duplicated list of image files.

    Files named explicitly are always kept (load_image reports them if they are not images).
    Folders and globs contribute only files with an image suffix, never hidden files or folders;
    folders are searched below their top level only with `recursive`. `exclude` (the output
    folder) is left out, and with `skip_outputs` so are `name_x4.png`-style files that sit beside
    their `name.*` source: re-running on a folder must not upscale the previous run's results.
    A spec that matches nothing raises InputError.
    """
    exts = image_extensions()
    explicit: list[Path] = []
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        if not text.strip():
            raise InputError("empty input path")
        path = Path(os.path.expanduser(text))
        if path.is_dir():
            files = list(_scan(path, recursive, exts))
            if not files:
                hint = "" if recursive or not _has_subfolders(path) else " (add --recursive to search subfolders)"
                raise InputError(f"{text}: no images in this folder{hint}")
            found += files
        elif path.exists():
            explicit.append(path)
        elif _GLOB_CHARS.search(text):
            files = list(_expand_glob(os.path.expanduser(text), recursive, exts))
            if not files:
                raise InputError(f"{text}: no images match this pattern")
            found += files
        else:
            raise InputError(f"{text}: no such file or folder")

    if exclude is not None:
        root = os.path.abspath(exclude) + os.sep
        found = [p for p in found if not os.path.abspath(p).startswith(root)]
    if skip_outputs:
        found = _without_previous_outputs(found)
    unique: dict[str, Path] = {}
    for p in explicit + found:
        unique.setdefault(os.path.normcase(os.path.abspath(p)), p)
    return sorted(unique.values(), key=lambda p: _natural_key(os.path.abspath(p)))


def gather_inputs(
    specs: Sequence[str | Path], recursive: bool = False, *, exclude: Path | None = None
) -> tuple[list[Path], list[tuple[str, InputError]]]:
    """`collect_inputs` for a batch: the files of every usable spec, plus (spec, InputError) for each spec
    that matched nothing (missing file, empty folder, ...), so one typo does not cancel the whole batch."""
    files: list[Path] = []
    problems: list[tuple[str, InputError]] = []
    for spec in specs:
        try:
            files += collect_inputs([spec], recursive, exclude=exclude)
        except InputError as exc:
            problems.append((str(spec), exc))
    if len(specs) > 1:  # de-duplicate and order across specs as one collect_inputs call would
        unique = {os.path.normcase(os.path.abspath(p)): p for p in reversed(files)}
        files = sorted(unique.values(), key=lambda p: _natural_key(os.path.abspath(p)))
    return files, problems


def check_input(path: Path) -> None:
    """InputError unless `path` is a readable file whose header Pillow recognises (within the pixel limit).

    Cheap (no pixel decoding): a batch checks every input this way before loading the model.
    Truncated pixel data is only found by the full decode later.
    """
    check_header(Path(path))


def _scan(folder: Path, recursive: bool, exts: frozenset[str]) -> Iterable[Path]:
    if not recursive:
        for entry in os.scandir(folder):
            if entry.is_file() and not _hidden(entry.name) and _is_image_name(Path(entry.name), exts):
                yield folder / entry.name
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in filenames:
            if not _hidden(name) and _is_image_name(Path(name), exts):
                yield Path(dirpath) / name


def _has_subfolders(folder: Path) -> bool:
    return any(e.is_dir() and not _hidden(e.name) for e in os.scandir(folder))


def _expand_glob(pattern: str, recursive: bool, exts: frozenset[str]) -> Iterable[Path]:
    for match in glob.glob(pattern, recursive=True):
        path = Path(match)
        if path.is_dir():
            if recursive:
                yield from _scan(path, True, exts)
        elif path.is_file() and not _hidden(path.name) and _is_image_name(path, exts):
            yield path


def _without_previous_outputs(paths: list[Path]) -> list[Path]:
    stems = {(os.path.abspath(p.parent), p.stem) for p in paths}
    keep = []
    for p in paths:
        m = _OUTPUT_STEM.fullmatch(p.stem)
        if m and (os.path.abspath(p.parent), m[1]) in stems:
            continue
        keep.append(p)
    return keep


def _natural_key(text: str) -> tuple[list[tuple[int, int | str]], str]:
    """Sort 'img2' before 'img10' and 'B' after 'a', as file managers do."""
    parts = [(0, int(p)) if p.isdigit() else (1, p.casefold()) for p in re.split(r"(\d+)", text) if p]
    return parts, text


def _default_suffix(input: Path, fmt: str | None) -> str:
    if fmt:
        output_format(fmt)  # validates
        return "." + fmt.lower().lstrip(".")
    suffix = input.suffix
    try:
        output_format(suffix)
    except OutputError:
        return ".png"  # GIF, PPM, PSD, ...: lossless, keeps alpha and 16 bits
    return suffix  # keep the user's spelling: photo.JPG -> photo_x4.JPG


def output_path(
    input: Path,
    scale: int,
    output: Path | str | None = None,
    fmt: str | None = None,
    single_input: bool = True,
    *,
    root: Path | None = None,
) -> Path:
    """Where the result for `input` goes: `{stem}_x{scale}.{ext}` beside it, or under an output folder.

    `output` is a folder when it is one, or when it does not exist and has no image suffix (it is
    created on save); it is the exact file when it has an image suffix and there is a single
    input. With `root`, the input's folder below `root` is mirrored under the output folder.
    The extension is the input's when we can write that format, else `.png`; `fmt` overrides it.
    """
    input = Path(input)
    name = f"{input.stem}_x{scale}{_default_suffix(input, fmt)}"
    if output is None:
        result = input.parent / name
    else:
        as_folder = str(output).endswith(("/", os.sep))  # "out.png/" names a folder
        output = Path(os.path.expanduser(str(output)))
        if output.is_dir() or (as_folder and not output.exists()):
            result = output / _mirrored(input, root) / name
        elif output.exists() or _has_image_suffix(output):
            if output.exists() and not output.is_file():
                raise OutputError(f"{output}: exists and is neither a file nor a folder")
            if not _has_image_suffix(output):
                raise OutputError(f"{output}: is an existing file without an image suffix; give a folder or an "
                                  "image file name")
            if not single_input:
                raise OutputError(f"{output}: names one file but there are several inputs; give a folder")
            out_fmt = output_format(output.suffix)
            if fmt and output_format(fmt) != out_fmt:
                raise OutputError(f"{output}: suffix disagrees with --format {fmt}")
            result = output
        else:
            result = output / _mirrored(input, root) / name
    if _same_file(result, input):
        raise OutputError(f"{result}: would overwrite its own input")
    return result


def _mirrored(input: Path, root: Path | None) -> Path:
    if root is None:
        return Path()
    rel = os.path.relpath(os.path.abspath(input.parent), os.path.abspath(root))
    return Path() if rel == os.curdir or rel.startswith(os.pardir) else Path(rel)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def plan_outputs(
    inputs: Sequence[Path], scale: int, output: Path | None = None, fmt: str | None = None,
    failed: dict[Path, OutputError] | None = None,
) -> dict[Path, Path]:
    """Output path for every input, mirroring the input tree under an output folder; OutputError on clashes.

    With an output folder, each input's folder is kept relative to the deepest folder holding all
    inputs, so `photos/a.png` and `photos/trip/a.png` do not overwrite each other. Two inputs
    that would still land on one file (`a.png` and `a.jpg` with --format png) are an error.
    With `failed`, an input whose output cannot be planned is recorded there and left out
    instead of raising, so the rest of a batch goes on.
    """
    parents = [os.path.abspath(Path(p).parent) for p in inputs]
    try:
        root = Path(os.path.commonpath(parents)) if parents else None
    except ValueError:  # Windows: inputs on different drives share no folder
        root = None
    plan: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for p in inputs:
        p = Path(p)
        try:
            out = output_path(p, scale, output, fmt, single_input=len(inputs) == 1, root=root)
            key = os.path.normcase(os.path.abspath(out))
            if key in seen:
                raise OutputError(f"{seen[key]} and {p} would both be written to {out}; "
                                  "use --format or separate runs")
        except OutputError as exc:
            if failed is None:
                raise
            failed[p] = exc
            continue
        seen[key] = p
        plan[p] = out
    return plan


def check_output(path: Path, overwrite: bool = False, skip_existing: bool = False) -> Literal["write", "skip"]:
    """Decide, before any compute, whether `path` will be written ('write') or skipped ('skip').

    An existing file is skipped with `skip_existing`, replaced with `overwrite`, else an error.
    The target folder (or the nearest existing folder above it, for folders still to be
    created) must be writable. Raises OutputError with one line.
    """
    path = Path(path)
    if overwrite and skip_existing:
        raise OutputError("--overwrite and --skip-existing exclude each other")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    if path.exists() or path.is_symlink():
        if skip_existing:
            return "skip"
        if not overwrite:
            raise OutputError(f"{path}: already exists (use --overwrite to replace it or --skip-existing to keep it)")
    _check_folder_writable(path)
    return "write"


def _check_folder_writable(path: Path) -> None:
    folder = Path(os.path.abspath(path.parent))
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{path}: cannot create its folder, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "folder is not writable" if existing == folder else f"cannot create folders in {existing}"
        raise OutputError(f"{path}: {what} (permission denied)")
