"""Make tests/golden/official-tiny from the full golden folder: only the tensors the tests read.

Run from the repository root: `python tests/golden/trim.py ../shared/golden/official-tiny`.
The tensors are copied bit for bit (safetensors, float32); README.md gains a note of what was left
out, config.json's manifest and sha256 list describe the trimmed files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
# Tensors no test reads: the official `ar` mode (a different function, not reproduced), the ar2
# samples (bitwise equal to the full ones), per-layer hidden states and unused inputs.
DROP = ("denoise_ar_s", "sample_ar_steps", "sample_ar2_", "debug_s1_layer", "debug_s1_cond_embed",
        "rope_position_ids", "clip_raw_embedding")
NOTE = """
> **Trimmed copy** (made by `tests/golden/trim.py` from the full folder described below): the
> tensors no test reads are left out: {dropped}. Every kept tensor is bit for bit the original;
> `config.json` -> `manifest` and `file_sha256` describe the trimmed files, `trimmed_from_sha256` the
> full ones.

"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trim(src: Path, dst: Path) -> list[str]:
    """Copy `src` to `dst` without the DROP tensors; returns the dropped names."""
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    dropped: list[str] = []
    for name in config["file_sha256"]:
        tensors = load_file(str(src / name))
        keep = {k: v for k, v in tensors.items() if not k.startswith(DROP)}
        dropped += sorted(set(tensors) - set(keep))
        save_file(keep, str(dst / name))
        config["manifest"][name] = {k: v for k, v in config["manifest"][name].items() if k in keep}
    config["trimmed_from_sha256"] = config["file_sha256"]
    config["file_sha256"] = {name: sha256(dst / name) for name in config["file_sha256"]}
    (dst / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    readme = (src / "README.md").read_text()
    title, rest = readme.split("\n", 1)
    note = NOTE.format(dropped=", ".join(f"`{d}`" for d in dropped))
    (dst / "README.md").write_text(title + "\n" + note + rest.lstrip("\n"))
    keys = src.parent / "official-x4-keys.json"
    if keys.is_file():
        shutil.copyfile(keys, dst.parent / keys.name)
    return dropped


if __name__ == "__main__":
    print("dropped:", ", ".join(trim(Path(sys.argv[1]), HERE / "official-tiny")))
