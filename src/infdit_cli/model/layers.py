"""Building blocks of the Inf-DiT transformer: conditioning MLPs, the UniBA layer, the output head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdit_cli.config import ModelConfig
from infdit_cli.device import attention_kernels
from infdit_cli.model.rope import AxisTables, apply_rope
from infdit_cli.model.uniba import Neighbourhood


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation; shift/scale are [B, C] and broadcast over every block and token."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return x * (1 + scale.view(shape)) + shift.view(shape)


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """LayerNorm without affine parameters (the transformer's own norms have none)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Block-batched attention. q: [N, Tq, H, D]; k, v: [N, Tk, H, D] -> [N, Tq, H, D]."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    with attention_kernels(q):  # on CUDA, cuDNN first (see device.py)
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """EDM-style Fourier embedding of c_noise ([cos, sin], 192 channels) followed by an MLP."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, c_noise: Tensor) -> Tensor:
        half = self.channels // 2
        freqs = (1.0 / 10000) ** (torch.arange(half, dtype=torch.float32, device=c_noise.device) / half)
        t = c_noise.reshape(-1, 1) * freqs.to(c_noise.dtype)[None]
        emb = torch.cat([t.cos(), t.sin()], dim=-1).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(emb)))


class VectorEmbedder(nn.Module):
    """Maps the CLIP image embedding into the conditioning vector."""

    def __init__(self, vector_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vector_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, vector: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(vector)))


class UniBALayer(nn.Module):
    """One pre-LN transformer layer with adaLN (no gates), QK-LN, 2-D RoPE and UniBA attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, h, d = config.hidden_size, config.num_heads, config.head_dim
        self.num_heads, self.head_dim, self.eps = h, d, config.layernorm_eps
        self.adaln = nn.Linear(c, 4 * c)  # shift_msa, scale_msa, shift_mlp, scale_mlp
        self.qkv = nn.Linear(c, 3 * c)  # rows: all of Q, then K, then V (not per-head interleaved)
        self.proj = nn.Linear(c, c)
        # The released model normalises K with the *query* LayerNorm; one norm serves both.
        self.qk_norm = nn.LayerNorm(d, eps=config.layernorm_eps) if config.qk_ln else None
        self.block_pos = nn.Parameter(torch.zeros(4, h, d)) if config.block_pos else None
        self.fc1 = nn.Linear(c, config.mlp_hidden)
        self.fc2 = nn.Linear(config.mlp_hidden, c)

    def modulation(self, cond: Tensor) -> Tensor:
        """[B, 4C] modulation from the (already twice-SiLU'd) conditioning vector."""
        return self.adaln(cond)

    def forward(
        self, x: Tensor, mod: Tensor, rope: tuple[AxisTables, AxisTables], layer: int,
        neighbourhood: Neighbourhood, cross: CrossLRAttention | None = None, lr_windows: Tensor | None = None,
    ) -> Tensor:
        """x: [B, X, Y, T, C] for a grid of blocks; returns the same shape.

        Three steps: the per-block projections (`project`), the neighbourhood's gather of every
        block's four key/value segments (written once, in place), and attention + MLP (`finish`).
        The first and last are pure tensor functions, which is what `--compile` compiles.
        Intermediates are dropped as soon as they are used.
        """
        q, k, v = self.project(x, mod, rope)
        pos = None if self.block_pos is None else self.block_pos.to(k.dtype)  # keys only, one per segment
        keys, values = neighbourhood.gather(layer, k, v, pos)
        del k, v
        # Handed over in a list that `finish` empties: arguments would stay referenced from this frame
        # through the MLP and the cross attention (9·C per token for nothing).
        parts = [q, keys, values]
        del q, keys, values
        return self.finish(x, mod, parts, cross, lr_windows)

    def project(self, x: Tensor, mod: Tensor, rope: tuple[AxisTables, AxisTables]) -> tuple[Tensor, Tensor, Tensor]:
        """adaLN-modulated pre-norm, QKV, QK-LN and RoPE: q, k, v [B, X, Y, T, H, D]."""
        heads = (self.num_heads, self.head_dim)
        shift_msa, scale_msa = mod.chunk(4, dim=-1)[:2]
        a = modulate(layer_norm(x, self.eps), shift_msa, scale_msa)
        q, k, v = self.qkv(a).unflatten(-1, (3, *heads)).unbind(-3)
        del a
        if self.qk_norm is not None:
            q, k = self.qk_norm(q), self.qk_norm(k)
        # v alone keeps the fused QKV output alive through the gather: copy it out so that can go.
        return apply_rope(q, *rope), apply_rope(k, *rope), v.contiguous()

    def finish(self, x: Tensor, mod: Tensor, parts: list[Tensor], cross: CrossLRAttention | None = None,
               lr_windows: Tensor | None = None) -> Tensor:
        """Attention over the gathered keys/values ([q, keys, values], emptied), projection, cross-LR, MLP."""
        q, keys, values = parts
        parts.clear()
        b, nx, ny, t, c = x.shape
        n, heads = b * nx * ny, (self.num_heads, self.head_dim)
        shift_mlp, scale_mlp = mod.chunk(4, dim=-1)[2:]
        o = attention(q.reshape(n, t, *heads), keys.reshape(n, 4 * t, *heads), values.reshape(n, 4 * t, *heads))
        del q, keys, values
        x = x + self.proj(o.reshape(b, nx, ny, t, c))
        del o
        if cross is not None:
            x = x + cross(layer_norm(x, self.eps), lr_windows)
            m = cross.post_norm(x)
        else:
            m = layer_norm(x, self.eps)
        m = modulate(m, shift_mlp, scale_mlp)
        return x + self.fc2(F.gelu(self.fc1(m), approximate="tanh"))


class CrossLRAttention(nn.Module):
    """Layer-0 cross attention from each block's HR tokens to its 3×3 neighbourhood of LR features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, h, d = config.hidden_size, config.num_heads, config.head_dim
        self.num_heads, self.head_dim = h, d
        self.lr_block = config.block_size // config.sr_scale  # LR pixels per block side
        self.lr_tokens = config.lr_block_tokens  # LR feature tokens per block side
        self.proj_lr = nn.Conv2d(config.image_channels, c, config.lr_patch_size, config.lr_patch_size)
        self.q = nn.Linear(c, c)
        self.kv = nn.Linear(c, 2 * c)
        self.proj = nn.Linear(c, c)
        self.q_norm = nn.LayerNorm(d, eps=config.layernorm_eps)
        self.k_norm = nn.LayerNorm(d, eps=config.layernorm_eps)
        self.q_pos = nn.Parameter(torch.zeros(config.block_tokens**2, h, d))
        self.k_pos = nn.Parameter(torch.zeros((3 * self.lr_tokens) ** 2, h, d))
        self.post_norm = nn.LayerNorm(c, eps=config.layernorm_eps)

    def windows(self, lr: Tensor, block_rows: range, block_cols: range) -> Tensor:
        """LR features of each block's 3×3 block window, zero outside the image: [B, X, Y, W, C].

        Only the LR region the group needs is convolved, so memory follows the group size.
        """
        lb, lt = self.lr_block, self.lr_tokens
        h_lr, w_lr = lr.shape[-2:]
        r0, r1 = (block_rows.start - 1) * lb, (block_rows.stop + 1) * lb
        c0, c1 = (block_cols.start - 1) * lb, (block_cols.stop + 1) * lb
        crop = lr[:, :, max(r0, 0): min(r1, h_lr), max(c0, 0): min(c1, w_lr)]
        weight = self.proj_lr.weight  # the LR may live on the host (flat device memory): move the crop only
        feats = self._project(crop.to(device=weight.device, dtype=weight.dtype, non_blocking=True))
        p = self.proj_lr.stride[0]
        pad = ((max(c0, 0) - c0) // p, (c1 - min(c1, w_lr)) // p, (max(r0, 0) - r0) // p, (r1 - min(r1, h_lr)) // p)
        feats = F.pad(feats, pad)  # zero padding after the convolution, as nn.Unfold does
        win = feats.unfold(2, 3 * lt, lt).unfold(3, 3 * lt, lt)  # [B, C, X, Y, 3lt, 3lt]
        return win.permute(0, 2, 3, 4, 5, 1).flatten(3, 4)

    def _project(self, lr: Tensor) -> Tensor:
        """proj_lr (a stride-p convolution) as a matmul over p×p patches.

        Equal to the convolution, but each output depends only on its own patch whatever the
        crop size, so streamed groups of any size give bitwise the same features.
        """
        p = self.proj_lr.stride[0]
        b, ch, h, w = lr.shape
        patches = lr.view(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).flatten(3)
        out = F.linear(patches, self.proj_lr.weight.flatten(1), self.proj_lr.bias)
        return out.permute(0, 3, 1, 2)

    def forward(self, h: Tensor, windows: Tensor) -> Tensor:
        b, nx, ny, t, c = h.shape
        heads = (self.num_heads, self.head_dim)
        q = self.q_norm(self.q(h).unflatten(-1, heads)) + self.q_pos.to(h.dtype)
        k, v = self.kv(windows).unflatten(-1, (2,) + heads).unbind(-3)
        k = self.k_norm(k) + self.k_pos.to(h.dtype)
        n, w = b * nx * ny, windows.shape[3]
        o = attention(q.reshape(n, t, *heads), k.reshape(n, w, *heads), v.reshape(n, w, *heads))
        return self.proj(o.reshape(b, nx, ny, t, c))


class FinalLayer(nn.Module):
    """Output head: LayerNorm twice (as released), adaLN shift/scale, linear to p×p×3 pixels."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, p = config.hidden_size, config.patch_size
        self.eps = config.layernorm_eps
        self.adaln = nn.Linear(c, 2 * c)  # shift, scale
        self.linear = nn.Linear(c, p * p * config.image_channels)  # ordered (p_row, p_col, channel)

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        shift, scale = mod.chunk(2, dim=-1)
        x = layer_norm(layer_norm(x, self.eps), self.eps)
        return self.linear(modulate(x, shift, scale))


def fan_in_normal_(module: nn.Module, generator: torch.Generator) -> None:
    """N(0, 1/fan_in) for matrices and convolutions, N(0, 0.1²) elsewhere: every path contributes.

    Used for random test/benchmark models, where zero-initialised adaLN would hide bugs.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2 and not name.endswith(("q_pos", "k_pos", "block_pos")):
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif name.endswith(("q_pos", "k_pos", "block_pos")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            elif name.endswith("weight"):  # LayerNorm scale
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
