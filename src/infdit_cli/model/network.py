"""The Inf-DiT transformer: patch embedding, conditioning, UniBA layers, output head.

The network works on grids of 128-px blocks. `run_blocks` processes any rectangular group of
blocks given a `Neighbourhood` that supplies the keys/values of the blocks above and to the
left; `forward` is the whole-image path (one group covering the image, replicate padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdit_cli.config import ModelConfig
from infdit_cli.model.layers import (
    CrossLRAttention,
    FinalLayer,
    TimestepEmbedder,
    UniBALayer,
    VectorEmbedder,
    fan_in_normal_,
)
from infdit_cli.model.rope import RopeCache
from infdit_cli.model.uniba import Neighbourhood, WholeImage


def compile_unavailable(device_type: str) -> str | None:
    """Why `torch.compile` cannot run here (None: it can): inductor needs a C++ compiler on CPUs, Triton on CUDA."""
    import importlib.util
    import shutil

    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    if device_type == "cpu":
        return None if any(shutil.which(c) for c in ("g++", "c++", "clang++")) else "no C++ compiler (g++) found"
    return f"not supported on {device_type}"


def conditioning_vector(config: ModelConfig, clip: Tensor | None, strength: Tensor) -> Tensor | None:
    """The per-image vector `InfDiT.condition` reads: the CLIP embedding, then (denoise models) the
    degradation strength [B] or [B, 1]."""
    if not config.denoise_cond:
        return clip
    s = strength.reshape(-1, 1)
    return s if clip is None else torch.cat([clip, s.to(clip.device, clip.dtype)], dim=-1)


@dataclass
class Conditioning:
    """Per-call modulations: functions of sigma and the CLIP vector only, computed once per call."""

    layers: list[Tensor]  # [B, 4C] each
    final: Tensor  # [B, 2C]


class InfDiT(nn.Module):
    """Pixel-space diffusion transformer for super-resolution with UniBA attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, p = config.hidden_size, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, c, p, p)
        self.t_embed = TimestepEmbedder(config.time_channels, c)
        self.clip_embed = VectorEmbedder(config.vector_dim, c) if config.vector_dim else None
        self.denoise_embed = VectorEmbedder(1, c) if config.denoise_cond else None
        self.blocks = nn.ModuleList(UniBALayer(config) for _ in range(config.num_layers))
        self.cross_lr = CrossLRAttention(config) if config.cross_lr else None
        self.final = FinalLayer(config)
        self.rope = RopeCache(config.block_tokens, config.head_dim, config.rope_theta, config.rope_table)
        self.compiled = False  # compile_layers() sets it

    # -- conditioning -------------------------------------------------------------------------
    def condition(self, c_noise: Tensor, vector: Tensor | None = None) -> Conditioning:
        """Modulations for every layer from c_noise [B] and the conditioning vector [B, cond_dim]:
        the CLIP embedding, then (denoise models) the degradation strength (absent: 0, a clean input).
        """
        dtype = self.patch_embed.weight.dtype
        c = self.t_embed(c_noise.to(dtype))
        vd = self.config.vector_dim
        if self.clip_embed is not None:
            if vector is None:
                raise ValueError("this model is conditioned on a CLIP image embedding; none was given")
            c = c + self.clip_embed(vector[..., :vd].to(dtype))
        if self.denoise_embed is not None:
            if vector is not None and vector.shape[-1] > vd:
                strength = vector[..., vd: vd + 1].to(dtype)
            else:
                strength = torch.zeros(c.shape[0], 1, dtype=dtype, device=c.device)
            c = c + self.denoise_embed(strength)
        # The released model applies SiLU to the sum and again inside every adaLN branch.
        cond = F.silu(F.silu(c))
        return Conditioning([blk.modulation(cond) for blk in self.blocks], self.final.adaln(cond))

    # -- block grids --------------------------------------------------------------------------
    def embed(self, net_in: Tensor) -> Tensor:
        """[B, 2·3, h, w] pixels of a block grid -> tokens [B, X, Y, T, C], block-major."""
        t = self.config.block_tokens
        tok = self.patch_embed(net_in.to(self.patch_embed.weight.dtype))  # [B, C, X·t, Y·t]
        b, c, ht, wt = tok.shape
        tok = tok.view(b, c, ht // t, t, wt // t, t).permute(0, 2, 4, 3, 5, 1)
        return tok.reshape(b, ht // t, wt // t, t * t, c)

    def unembed(self, x: Tensor) -> Tensor:
        """Output-head tokens [B, X, Y, T, p·p·3] -> pixels [B, 3, X·128, Y·128]."""
        t, p, ch = self.config.block_tokens, self.config.patch_size, self.config.image_channels
        b, nx, ny = x.shape[:3]
        x = x.view(b, nx, ny, t, t, p, p, ch).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, ch, nx * t * p, ny * t * p)

    def run_blocks(
        self, net_in: Tensor, cond: Conditioning, block_rows: range, block_cols: range,
        neighbourhood: Neighbourhood, lr: Tensor | None = None, token_offset: tuple[int, int] = (0, 0),
    ) -> Tensor:
        """Network output F for one group of blocks.

        net_in: the c_in-scaled [noisy, upsampled-LR] pixels of exactly these blocks.
        lr: the whole LR image (only the group's windows are read). block_rows/cols: the group's
        global block indices, which fix its RoPE positions and LR windows.
        """
        x = self.embed(net_in.to(self.patch_embed.weight.device, non_blocking=True))
        rope = self.rope.group(block_rows, block_cols, token_offset, x.device, x.dtype)
        windows = None
        if self.cross_lr is not None:
            if lr is None:
                raise ValueError("this model has nearby-LR cross attention; the LR image is required")
            windows = self.cross_lr.windows(lr, block_rows, block_cols)
        for i, blk in enumerate(self.blocks):
            cross = self.cross_lr if i == 0 else None
            x = blk(x, cond.layers[i], rope, i, neighbourhood, cross, windows if i == 0 else None)
        return self.unembed(self.final(x, cond.final))

    def forward(
        self, net_in: Tensor, c_noise: Tensor, vector: Tensor | None = None, lr: Tensor | None = None,
        token_offset: tuple[int, int] = (0, 0),
    ) -> Tensor:
        """Whole-image UniBA: every block at once with replicate padding (training and reference)."""
        bs = self.config.block_size
        h, w = net_in.shape[-2:]
        if h % bs or w % bs:
            raise ValueError(f"image size {w}x{h} is not a multiple of the block size {bs}")
        cond = self.condition(c_noise, vector)
        return self.run_blocks(net_in, cond, range(h // bs), range(w // bs), WholeImage(), lr, token_offset)

    def init_random(self, seed: int = 0) -> InfDiT:
        """Overwrite every parameter with seeded noise so that every path contributes (tests, benchmarks)."""
        fan_in_normal_(self, torch.Generator().manual_seed(seed))
        return self

    def initialize_weights(self, seed: int = 0) -> InfDiT:
        """DiT-style start for training: Xavier matrices, zero biases, and zeroed adaLN modulation
        and output layer, so the untrained model's F is 0 and the denoiser returns (nearly) its input.

        Distinct from `init_random`, whose every path is non-zero so that tests see every term.
        """
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    # Xavier over (out, in·k·k), as DiT does for its patch embedding too.
                    nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1), generator=gen)
                    if module.bias is not None:
                        module.bias.zero_()
            for fc in (self.t_embed.fc1, self.t_embed.fc2):
                nn.init.normal_(fc.weight, std=0.02, generator=gen)
            zeroed = [blk.adaln for blk in self.blocks] + [self.final.adaln, self.final.linear]
            if self.denoise_embed is not None:  # the strength input starts without effect
                zeroed.append(self.denoise_embed.fc2)
            for module in zeroed:
                module.weight.zero_()
                module.bias.zero_()
        return self

    def compile_layers(self) -> InfDiT:
        """`torch.compile` every layer's two pure tensor steps (`project`, `finish`), static shapes.

        The neighbourhood's gather stays eager (it reads Python-side state). Each group shape gets
        its own graph (at most four per image: interior and ragged edges); layers share graphs.
        """
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for blk in self.blocks:
            blk.project = torch.compile(blk.project, dynamic=False)  # type: ignore[method-assign]
            blk.finish = torch.compile(blk.finish, dynamic=False)  # type: ignore[method-assign]
        self.compiled = True
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
