"""Input expansion, output naming and pre-flight output checks of infdit_cli.inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from infdit_cli import inputs
from infdit_cli.inputs import (
    InputError,
    OutputError,
    check_output,
    collect_inputs,
    image_extensions,
    output_path,
    plan_outputs,
)


def img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".bmp": "BMP", ".gif": "GIF"}
    Image.new("RGB", (2, 2)).save(path, fmt.get(path.suffix.lower(), "PNG"))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a.png", "b.JPG", "img10.webp", "img2.tif", "sub/c.bmp", "sub/deep/d.gif", ".hidden.png",
                 ".cache/e.png", "sub/.f.png"):
        img(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "Thumbs.db").write_bytes(b"\0" * 8)
    return tmp_path


def names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_extensions_cover_common_formats_but_not_eps() -> None:
    exts = image_extensions()
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= exts
    assert ".eps" not in exts and ".pdf" not in exts


def test_folder_flat_sorted_naturally_images_only(tree: Path) -> None:
    got = collect_inputs([str(tree)], recursive=False)
    assert names(got, tree) == ["a.png", "b.JPG", "img2.tif", "img10.webp"]


def test_folder_recursive_skips_hidden(tree: Path) -> None:
    got = collect_inputs([str(tree)], recursive=True)
    assert names(got, tree) == ["a.png", "b.JPG", "img2.tif", "img10.webp", "sub/c.bmp", "sub/deep/d.gif"]


def test_files_globs_and_duplicates(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    got = collect_inputs(["a.png", "./a.png", "img*", str(tree / "a.png"), "sub/**/*.gif"], recursive=False)
    assert [p.as_posix() for p in got] == ["a.png", "img2.tif", "img10.webp", "sub/deep/d.gif"]


def test_explicit_file_is_kept_whatever_its_name(tree: Path) -> None:
    assert collect_inputs([str(tree / "notes.txt")], recursive=False) == [tree / "notes.txt"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder") as exc:
        collect_inputs([str(tmp_path / "nope.png")], recursive=False)
    assert "\n" not in str(exc.value) and "nope.png" in str(exc.value)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    img(tmp_path / "sub" / "x.png")
    with pytest.raises(InputError, match="no images in this folder .add --recursive") as exc:
        collect_inputs([str(tmp_path)], recursive=False)
    assert "\n" not in str(exc.value)
    assert collect_inputs([str(tmp_path)], recursive=True) == [tmp_path / "sub" / "x.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images in this folder$"):
        collect_inputs([str(empty)], recursive=True)


def test_glob_matching_nothing(tree: Path) -> None:
    with pytest.raises(InputError, match="no images match this pattern"):
        collect_inputs([str(tree / "*.cr2")], recursive=False)
    with pytest.raises(InputError, match="no images match"):
        collect_inputs([str(tree / "*.txt")], recursive=False)  # matches, but not images


def test_empty_spec_is_an_error() -> None:
    with pytest.raises(InputError, match="empty input path"):
        collect_inputs([""], recursive=False)


def test_previous_outputs_and_output_folder_are_skipped(tmp_path: Path) -> None:
    for name in ("a.png", "a_x4.png", "lonely_x2.png", "out/z.png"):
        img(tmp_path / name)
    got = collect_inputs([str(tmp_path)], recursive=True, exclude=tmp_path / "out")
    assert names(got, tmp_path) == ["a.png", "lonely_x2.png"]  # lonely_x2 has no source beside it
    assert len(collect_inputs([str(tmp_path)], recursive=True, skip_outputs=False)) == 4
    assert collect_inputs([str(tmp_path / "a_x4.png")], recursive=False) == [tmp_path / "a_x4.png"]


# ----------------------------------------------------------------------------- output names


def test_output_beside_input(tmp_path: Path) -> None:
    assert output_path(tmp_path / "p.JPG", 4) == tmp_path / "p_x4.JPG"
    assert output_path(tmp_path / "p.gif", 2) == tmp_path / "p_x2.png"  # GIF cannot hold an upscale well
    assert output_path(tmp_path / "p.png", 4, fmt="webp") == tmp_path / "p_x4.webp"
    assert output_path(tmp_path / "p.png", 4, fmt="JPEG") == tmp_path / "p_x4.jpeg"


def test_output_into_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert output_path(tmp_path / "p.png", 4, out, single_input=False) == out / "p_x4.png"
    new = tmp_path / "not-yet"  # no image suffix: a folder to create
    assert output_path(tmp_path / "p.png", 2, new) == new / "p_x2.png"
    sub = tmp_path / "in" / "trip" / "p.png"
    assert output_path(sub, 4, out, single_input=False, root=tmp_path / "in") == out / "trip" / "p_x4.png"


def test_output_exact_file(tmp_path: Path) -> None:
    assert output_path(tmp_path / "p.png", 4, tmp_path / "big.tiff") == tmp_path / "big.tiff"
    assert output_path(tmp_path / "p.png", 4, tmp_path / "big.jpg", fmt="jpeg") == tmp_path / "big.jpg"
    with pytest.raises(OutputError, match="several inputs"):
        output_path(tmp_path / "p.png", 4, tmp_path / "big.png", single_input=False)
    with pytest.raises(OutputError, match="disagrees with --format"):
        output_path(tmp_path / "p.png", 4, tmp_path / "big.png", fmt="jpg")
    with pytest.raises(OutputError, match="cannot write"):
        output_path(tmp_path / "p.png", 4, tmp_path / "big.gif")
    with pytest.raises(OutputError, match="cannot write"):
        output_path(tmp_path / "p.png", 4, fmt="gif")


def test_output_never_replaces_its_input(tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    with pytest.raises(OutputError, match="own input"):
        output_path(src, 4, src)


def test_plan_mirrors_tree_and_detects_clashes(tmp_path: Path) -> None:
    a, b = img(tmp_path / "in" / "a.png"), img(tmp_path / "in" / "trip" / "a.png")
    plan = plan_outputs([a, b], 4, tmp_path / "out")
    assert plan == {a: tmp_path / "out" / "a_x4.png", b: tmp_path / "out" / "trip" / "a_x4.png"}
    assert plan_outputs([a], 4) == {a: tmp_path / "in" / "a_x4.png"}
    c = img(tmp_path / "in" / "a.jpg")
    with pytest.raises(OutputError, match="would both be written"):
        plan_outputs([a, c], 4, fmt="png")


# ----------------------------------------------------------------------------- output checks


def test_existing_output(tmp_path: Path) -> None:
    out = img(tmp_path / "p_x4.png")
    with pytest.raises(OutputError, match="already exists .use --overwrite") as exc:
        check_output(out, overwrite=False, skip_existing=False)
    assert "\n" not in str(exc.value)
    assert check_output(out, overwrite=False, skip_existing=True) == "skip"
    assert check_output(out, overwrite=True, skip_existing=False) == "write"
    assert check_output(tmp_path / "new" / "q.png", overwrite=False, skip_existing=False) == "write"
    with pytest.raises(OutputError, match="exclude each other"):
        check_output(out, overwrite=True, skip_existing=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, overwrite=True, skip_existing=False)


def test_output_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file") as exc:
        check_output(blocker / "sub" / "p.png", overwrite=False, skip_existing=False)
    assert "\n" not in str(exc.value)


def test_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(inputs.os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(OutputError, match="not writable"):
        check_output(locked / "p.png", overwrite=False, skip_existing=False)
    with pytest.raises(OutputError, match="cannot create folders"):
        check_output(locked / "new" / "p.png", overwrite=False, skip_existing=False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permission bits")
def test_unwritable_folder_for_real(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output(locked / "p.png", overwrite=False, skip_existing=False)
    finally:
        locked.chmod(0o755)


def test_output_spelling_of_folders_and_refused_formats(tmp_path: Path) -> None:
    assert output_path(tmp_path / "p.png", 4, str(tmp_path / "odd.png") + "/") == tmp_path / "odd.png" / "p_x4.png"
    with pytest.raises(OutputError, match="cannot write"):
        output_path(tmp_path / "p.png", 4, tmp_path / "scan.pdf")
