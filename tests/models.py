"""Tiny models written to disk the way users get them: a local folder, or a hub cache built offline."""

from __future__ import annotations

from pathlib import Path

import torch

from infdit_cli.clip import save_clip
from infdit_cli.config import ModelConfig, preset
from infdit_cli.model import InfDiT
from infdit_cli.weights import save_model

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# Test models use 32-px blocks (8×8 tokens) instead of the released 128 px (32×32 tokens): every
# code path is the same (the block size is a config field), attention is 16× smaller per block,
# so the whole suite runs in minutes on a laptop CPU.
SMALL_BLOCK = 32


def small_block(name: str = "tiny", **overrides: object) -> ModelConfig:
    """A preset with 32-px blocks, for engine and CLI tests that do not need the released block size."""
    return preset(name, **{"block_size": SMALL_BLOCK, **overrides})


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A tiny no-CLIP model (every other feature on, 32-px blocks) with random weights."""
    save_model(InfDiT(small_block()).init_random(seed), folder)
    return folder


def write_tiny_clip_model(folder: Path, seed: int = 0) -> Path:
    """A tiny model conditioned on a tiny open_clip (full towers, so text prompts work)."""
    import open_clip

    save_model(InfDiT(small_block(vector_dim=TINY_CLIP["embed_dim"])).init_random(seed), folder)
    torch.manual_seed(seed)
    clip = open_clip.create_model("ViT-L-14", pretrained=None, **TINY_CLIP)
    save_clip(clip, folder / "clip_visual.safetensors", "ViT-L-14", TINY_CLIP)
    return folder


def write_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "c" * 40) -> str:
    """The cache layout huggingface_hub reads offline (refs/main -> snapshots/<commit>/files)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return commit
