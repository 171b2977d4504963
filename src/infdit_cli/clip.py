"""The CLIP image embedding that conditions the released model, and its text edit (paper eq. 5).

open_clip ViT-L-14 (DataComp-XL weights). Weights come from the model folder
(`clip_visual.safetensors`, image tower only), an explicit local file, or the hub. Text prompts
need the text tower, so they require full CLIP weights (local file or hub).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor

from infdit_cli.preprocess import clip_pixels
from infdit_cli.weights import ModelError, looks_like_repo_id

DEFAULT_CLIP_ARCH = "ViT-L-14"
DEFAULT_CLIP_REPO = "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"
CLIP_HUB_FILE = "open_clip_model.safetensors"


def _create(arch: str, arch_config: dict | None):
    import open_clip

    if arch_config:  # a self-described architecture (e.g. a tiny test CLIP): override the named config
        return open_clip.create_model(arch, pretrained=None, **arch_config)
    return open_clip.create_model(arch, pretrained=None)


def _file_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None


@dataclass
class ClipEncoder:
    """An open_clip model (possibly without its text tower) and how to embed with it."""

    model: torch.nn.Module
    arch: str
    has_text: bool
    arch_config: dict | None = None

    @torch.no_grad()
    def image_embedding(self, lr: Tensor) -> Tensor:
        """L2-normalised embedding of an LR image in [-1, 1], preprocessed as the official code does."""
        size = self.model.visual.image_size
        size = size[0] if isinstance(size, tuple | list) else size
        param = next(self.model.parameters())
        pixels = clip_pixels(lr, size).to(device=param.device, dtype=param.dtype)
        emb = self.model.encode_image(pixels, normalize=True)
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def text_embedding(self, text: str) -> Tensor:
        if not self.has_text:
            raise ModelError("text prompts need full CLIP weights with the text tower (pass --clip)")
        import open_clip

        context = (self.arch_config or {}).get("text_cfg", {}).get("context_length")
        tokenizer = open_clip.get_tokenizer(self.arch, context_length=context)
        param = next(self.model.parameters())
        tokens = tokenizer([text]).to(param.device)
        return F.normalize(self.model.encode_text(tokens, normalize=True).float(), dim=-1)

    def prompt_edit(self, embedding: Tensor, positive: str | None, negative: str | None, scale: float) -> Tensor:
        """Paper eq. 5 in the official code's (disabled) form: e + s·pos − s·neg, renormalised."""
        edited = embedding
        if positive:
            edited = edited + scale * self.text_embedding(positive).to(edited.device)
        if negative:
            edited = edited - scale * self.text_embedding(negative).to(edited.device)
        return F.normalize(edited, dim=-1)


def save_clip(model: torch.nn.Module, path: Path, arch: str, arch_config: dict | None = None,
              visual_only: bool = False) -> None:
    """Write open_clip weights with their architecture in the metadata (used for test models)."""
    from infdit_cli.weights import write_safetensors_atomic

    sd = model.visual.state_dict() if visual_only else model.state_dict()
    meta = {"format": "open_clip", "model": arch, "tower": "visual" if visual_only else "full"}
    if arch_config:
        meta["config"] = json.dumps(arch_config)
    write_safetensors_atomic({k: v.contiguous() for k, v in sd.items()}, path, meta)


def load_clip(
    visual_file: Path | None = None, clip_source: str | None = None, need_text: bool = False,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> ClipEncoder:
    """Load CLIP from an explicit source (file or hub repo), else the model folder's image tower, else the hub."""
    path: Path | None = None
    if clip_source:
        p = Path(clip_source).expanduser()
        if p.is_file():
            path = p
        elif looks_like_repo_id(clip_source):
            path = _hub_file(clip_source)
        else:
            raise ModelError(f"CLIP weights {clip_source!r} not found (neither a file nor a hub repo id)")
    elif visual_file is not None and (not need_text or _file_metadata(visual_file).get("tower") == "full"):
        path = visual_file
    else:
        path = _hub_file(DEFAULT_CLIP_REPO)
    meta = _file_metadata(path)
    arch = meta.get("model", DEFAULT_CLIP_ARCH)
    arch_config = json.loads(meta["config"]) if "config" in meta else None
    try:
        model = _create(arch, arch_config)
    except RuntimeError as exc:
        raise ModelError(f"{path}: unknown CLIP architecture {arch!r} ({exc})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: cannot read CLIP weights ({exc})") from None
    visual_only = meta.get("tower") == "visual" or not any(k.startswith("visual.") for k in state)
    target = model.visual if visual_only else model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: CLIP weights do not fit {arch} ({str(exc).splitlines()[0]})") from None
    if need_text and visual_only:
        raise ModelError(f"{path}: holds only the CLIP image tower; text prompts need full CLIP weights (--clip)")
    return ClipEncoder(model.to(device=device, dtype=dtype).eval(), arch, not visual_only, arch_config)


def _hub_file(text: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = text.partition("@")
    try:
        return Path(hf_hub_download(repo_id, CLIP_HUB_FILE, revision=revision or None))
    except LocalEntryNotFoundError:
        raise ModelError(
            f"CLIP weights {text!r} are not in the local hub cache and the hub cannot be reached") from None
    except Exception as exc:  # hub errors are many; the user needs one line
        raise ModelError(f"CLIP weights {text!r}: {str(exc).splitlines()[0]}") from None
