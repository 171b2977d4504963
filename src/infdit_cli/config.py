"""Model configuration: one dataclass that fully describes an Inf-DiT network, plus named presets.

The config is stored in the metadata of every weight file we write, so a single file is enough
to rebuild the network that produced it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an Inf-DiT super-resolution transformer (pixel space, EDM)."""

    hidden_size: int = 1280
    num_layers: int = 28
    num_heads: int = 16
    mlp_hidden: int = 5120
    patch_size: int = 4
    block_size: int = 128  # UniBA block side in HR pixels
    image_channels: int = 3  # noisy RGB; the same number of upsampled-LR channels is concatenated
    vector_dim: int = 768  # CLIP image-embedding size; 0 = no CLIP conditioning
    cross_lr: bool = True  # nearby-LR cross attention in layer 0
    qk_ln: bool = True  # per-head LayerNorm on q and k (the official code uses q's norm for both)
    block_pos: bool = True  # learned per-segment key offsets P (re_pos_embed)
    rope_table: int = 1024  # RoPE positions wrap modulo this many tokens per axis
    rope_theta: float = 10000.0
    time_channels: int = 192
    layernorm_eps: float = 1e-6
    sigma_data: float = 0.5
    sr_scale: int = 4  # HR side / LR side the network was trained for
    lr_patch_size: int = 2  # proj_lr stride on the LR image
    # A degradation-strength input (0 = clean LR, keep every detail; 1 = heavy JPEG/noise, remove it),
    # carried as one extra element after the CLIP vector. Not in the released model.
    denoise_cond: bool = False
    # LR pixels between the image's top-left corner and the block grid's (the image is padded by this
    # much at the top and left). JPEG's 8×8 blocks start at the image's corner; with 32-px blocks ×4
    # (8 LR px) an offset of 4 puts every JPEG block edge mid-block, where attention sees both sides,
    # instead of on a block edge, where it sees only one. Part of how a model was trained.
    block_offset: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if self.block_size % (self.sr_scale * self.lr_patch_size):
            raise ValueError("block_size must be a multiple of sr_scale * lr_patch_size")
        if self.block_size % self.patch_size:
            raise ValueError("block_size must be a multiple of patch_size")
        if not 0 <= self.block_offset < self.block_size // self.sr_scale:
            raise ValueError(f"block_offset must be within 0..{self.block_size // self.sr_scale - 1} LR pixels")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def block_tokens(self) -> int:
        """Tokens along one side of a block (32 for the released model)."""
        return self.block_size // self.patch_size

    @property
    def lr_block_tokens(self) -> int:
        """LR feature tokens along one side of a block (16 for the released model)."""
        return self.block_size // self.sr_scale // self.lr_patch_size

    @property
    def cond_dim(self) -> int:
        """Length of the per-image conditioning vector: the CLIP embedding, then the strength."""
        return self.vector_dim + int(self.denoise_cond)

    @property
    def in_channels(self) -> int:
        return 2 * self.image_channels

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # The released 4x model (THUDM/Inf-DiT, ~754 M parameters without CLIP).
    "x4": ModelConfig(),
    # Every architectural feature on, CLIP off: a CPU test upscales 64 px in seconds.
    "tiny": ModelConfig(hidden_size=64, num_layers=2, num_heads=2, mlp_hidden=256, vector_dim=0),
    # Same as the official golden tiny model (CLIP vector on).
    "tiny-clip": ModelConfig(hidden_size=64, num_layers=2, num_heads=2, mlp_hidden=256, vector_dim=768),
    # A few million parameters, no CLIP: the size of the shipped default model.
    "small": ModelConfig(hidden_size=256, num_layers=6, num_heads=4, mlp_hidden=1024, vector_dim=0),
    # A mid-size model for benchmarks between small and x4.
    "base": ModelConfig(hidden_size=768, num_layers=12, num_heads=12, mlp_hidden=3072, vector_dim=768),
}


def preset(name: str, **overrides: object) -> ModelConfig:
    """Return a named preset, optionally with fields overridden."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
    return replace(config, **overrides) if overrides else config
