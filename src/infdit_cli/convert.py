"""`infdit convert`: the official SAT/DeepSpeed checkpoint -> our safetensors format.

Pickled checkpoints are read with `torch.load(weights_only=True)` and an explicit allow-list of
the few non-tensor types DeepSpeed/SAT store beside the weights (numpy RNG state, argparse
namespace). Nothing outside the list is ever unpickled.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from infdit_cli.config import ModelConfig
from infdit_cli.official import ConversionError, ConversionResult, convert_state_dict, infer_config
from infdit_cli.weights import CLIP_FILE, MODEL_FILE, expected_shapes, save_state_dict, write_safetensors_atomic


def _numpy_allow_list() -> list[object]:
    import numpy as np

    allowed: list[object] = [np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray._reconstruct)
    allowed.append(core.multiarray.scalar)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def safe_globals() -> list[object]:
    """Non-tensor types a SAT/DeepSpeed checkpoint may hold; constructing any of them runs no code."""
    return [argparse.Namespace, *_numpy_allow_list()]


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The official state dict from `mp_rank_00_model_states.pt` (its ['module']) or a safetensors file."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    if path.is_dir():
        candidates = sorted(path.rglob("mp_rank_00_model_states.pt"))
        if not candidates:
            raise ConversionError(f"{path}: folder holds no mp_rank_00_model_states.pt")
        path = candidates[0]
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConversionError(f"{path}: not a readable safetensors file ({exc})") from None
    if not zipfile.is_zipfile(path):
        raise ConversionError(f"{path}: not a torch checkpoint (expected a zip-format .pt or .safetensors)")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the unpickler reports disallowed globals as UnpicklingError/RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: refused to load safely: {first}") from None
    if isinstance(data, dict) and "module" in data and isinstance(data["module"], dict):
        data = data["module"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path}: no state dict found (expected a dict with a 'module' state dict)")
    return data


@dataclass
class ConvertReport:
    config: ModelConfig
    model_path: Path
    clip_path: Path | None
    result: ConversionResult


def convert_checkpoint(
    src: str | Path, dst: str | Path, dtype: torch.dtype | None = None, base: ModelConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> ConvertReport:
    """Convert an official checkpoint into a model folder at `dst` (model + optional CLIP weights).

    The architecture is read off the tensors' shapes; `base` supplies what shapes cannot tell
    (block size, RoPE table). Nothing is written unless every expected key is present and fits.
    """
    official = read_official_checkpoint(src)
    config = infer_config(official, base)
    result = convert_state_dict(official, config, expected_shapes(config))
    state = result.state_dict
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    dst = Path(dst)
    if dst.suffix == ".safetensors":
        model_path, folder = dst, dst.parent
    else:
        folder = dst
        model_path = dst / MODEL_FILE
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, config, model_path, {"converted_from": Path(src).name})
    clip_path = None
    if result.clip_visual and config.vector_dim:
        clip_path = folder / CLIP_FILE
        clip = {k: v.contiguous() for k, v in result.clip_visual.items()}
        if dtype is not None:
            clip = {k: v.to(dtype) for k, v in clip.items()}
        write_safetensors_atomic(clip, clip_path, {"format": "open_clip", "model": "ViT-L-14", "tower": "visual"})
    if log:
        log(f"converted {len(state)} tensors; ignored {len(result.ignored)} known-unused, "
            f"{len(result.unused)} unrecognised")
        for key in result.unused:
            log(f"unused key: {key}")
    return ConvertReport(config, model_path, clip_path, result)


__all__ = ["ConversionError", "ConvertReport", "convert_checkpoint", "read_official_checkpoint"]
