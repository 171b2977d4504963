"""Our weight format and where models come from (a local file/folder or the Hugging Face hub).

Format: a safetensors file with our key names and the `ModelConfig` as JSON in its metadata,
so one file fully describes a model. A model folder holds `model.safetensors` and, for models
conditioned on CLIP, optionally `clip_visual.safetensors` (open_clip ViT-L-14 `visual.*` keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from infdit_cli.atomic import atomic_path
from infdit_cli.config import ModelConfig
from infdit_cli.errors import InfditError
from infdit_cli.model.network import InfDiT

FORMAT_NAME = "infdit"
FORMAT_VERSION = "1"
MODEL_FILE = "model.safetensors"
CLIP_FILE = "clip_visual.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class ModelError(InfditError):
    """A model that cannot be found or read; the message is one line for the user."""


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files lie on disk once resolved."""

    weights: Path
    clip: Path | None
    source: str  # what the user asked for (path or repo id)


def expected_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Our key -> shape for a model of `config`, without allocating its weights."""
    with torch.device("meta"):
        model = InfDiT(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def save_model(model: InfDiT, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write weights + config atomically (temporary name, then rename)."""
    return save_state_dict(model.state_dict(), model.config, path, extra_metadata)


def save_state_dict(
    state_dict: dict[str, torch.Tensor], config: ModelConfig, path: str | Path,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / MODEL_FILE
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config.to_json()}
    metadata.update(extra_metadata or {})
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    write_safetensors_atomic(tensors, path, metadata)
    return path


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, str]]:
    """The config and metadata stored in one of our weight files."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT_NAME or "config" not in metadata:
        raise ModelError(f"{path}: not an infdit model (no config in its metadata; "
                         "official checkpoints must first go through `infdit convert`)")
    try:
        return ModelConfig.from_json(metadata["config"]), metadata
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: invalid model config ({exc})") from None


def load_model(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> InfDiT:
    """Build the network described by one of our weight files and load its weights (strictly)."""
    config, _ = read_config(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: cannot read weights ({exc})") from None
    want = expected_shapes(config)
    for key in sorted(set(want) | set(state)):
        if key not in state:
            raise ModelError(f"{path}: missing tensor {key!r}")
        if key not in want:
            raise ModelError(f"{path}: unexpected tensor {key!r}")
        if state[key].shape != want[key]:
            raise ModelError(f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                             f"expected {tuple(want[key])}")
    with torch.device("meta"):
        model = InfDiT(config)
    model.load_state_dict(state, assign=True)
    target_dtype = dtype or next(iter(state.values())).dtype
    return model.to(device=device, dtype=target_dtype).eval()


def looks_like_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def default_model_path() -> Path | None:
    """The model shipped inside the package (assets/default-model), if this build has one."""
    folder = Path(str(resources.files("infdit_cli") / "assets" / "default-model"))
    return folder if (folder / MODEL_FILE).is_file() else None


def resolve_model(source: str | Path) -> ModelFiles:
    """A local file, a local folder, or a hub repo id `org/name[@revision]` -> files on disk.

    Hub downloads go through huggingface_hub's cache; HF_HUB_OFFLINE=1 is honoured by it.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        sibling = path.with_name(CLIP_FILE)
        return ModelFiles(path, sibling if sibling.is_file() and sibling != path else None, text)
    if path.is_dir():
        weights = path / MODEL_FILE
        if not weights.is_file():
            raise ModelError(f"{path}: model folder has no {MODEL_FILE}")
        clip = path / CLIP_FILE
        return ModelFiles(weights, clip if clip.is_file() else None, text)
    if not looks_like_repo_id(text):
        raise ModelError(f"model {text!r} not found (neither a local file/folder nor a hub repo id org/name)")
    return _download_from_hub(text)


def _download_from_hub(text: str) -> ModelFiles:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = text.partition("@")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision or None,
                                        allow_patterns=["*.safetensors", "*.json", "*.md"]))
    except LocalEntryNotFoundError:
        raise ModelError(f"model {text!r} is not in the local hub cache and the hub cannot be reached "
                         "(offline mode or no network)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"model {text!r}: no such repository on the hub") from None
    except (HFValidationError, OSError, ValueError) as exc:
        raise ModelError(f"model {text!r}: {exc}".splitlines()[0]) from None
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise ModelError(f"model {text!r}: the repository has no {MODEL_FILE}")
    clip = folder / CLIP_FILE
    return ModelFiles(weights, clip if clip.is_file() else None, text)
