"""Mapping between the official SAT/DeepSpeed state dict and our key layout.

Pure tensor bookkeeping: reading files is in `convert.py`. The mapping is derived from the
config, so every key we expect is known before looking at the checkpoint, and a checkpoint with
a missing or misshapen key is refused with the key named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from infdit_cli.config import ModelConfig
from infdit_cli.errors import InfditError

CLIP_PREFIX = "image_encoder.model."
# Official keys that carry nothing the network uses (recomputed buffers, dead parameters).
IGNORED_PREFIXES = (
    "mixins.adaln_layer.rope.",  # RoPE tables: recomputed from the config
    "mixins.adaln_layer.k_layer_norm.",  # never used: the released code normalises K with q's norm
    "transformer.position_embeddings.",  # created by SAT, never used
)
CLIP_TEXT_LEFTOVERS = ("token_embedding.", "positional_embedding", "text_projection", "logit_scale",
                       "ln_final.", "transformer.")


class ConversionError(InfditError):
    """A checkpoint that cannot be turned into a complete model."""


@dataclass
class ConversionResult:
    state_dict: dict[str, Tensor]
    clip_visual: dict[str, Tensor]
    unused: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _key_map(config: ModelConfig) -> dict[str, tuple[str, Callable[[Tensor], Tensor]]]:
    """our key -> (official key, transform)."""
    same: Callable[[Tensor], Tensor] = lambda t: t  # noqa: E731
    m: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {}

    def linear(ours: str, theirs: str) -> None:
        m[f"{ours}.weight"] = (f"{theirs}.weight", same)
        m[f"{ours}.bias"] = (f"{theirs}.bias", same)

    ada = "mixins.adaln_layer"
    linear("patch_embed", "mixins.patch_embed.proj")
    linear("t_embed.fc1", "time_embed.mlp.0")
    linear("t_embed.fc2", "time_embed.mlp.2")
    if config.vector_dim:
        linear("clip_embed.fc1", "cond_embed.map_vector.0")
        linear("clip_embed.fc2", "cond_embed.map_vector.2")
    for i in range(config.num_layers):
        layer = f"transformer.layers.{i}"
        linear(f"blocks.{i}.adaln", f"{ada}.adaLN_modulations.{i}.1")
        linear(f"blocks.{i}.qkv", f"{layer}.attention.query_key_value")
        linear(f"blocks.{i}.proj", f"{layer}.attention.dense")
        linear(f"blocks.{i}.fc1", f"{layer}.mlp.dense_h_to_4h")
        linear(f"blocks.{i}.fc2", f"{layer}.mlp.dense_4h_to_h")
        if config.qk_ln:
            linear(f"blocks.{i}.qk_norm", f"{ada}.q_layer_norm.{i}")
        if config.block_pos:
            m[f"blocks.{i}.block_pos"] = (f"{ada}.re_pos_embed", lambda t, i=i: t[i])
    if config.cross_lr:
        linear("cross_lr.proj_lr", f"{ada}.proj_lr")
        linear("cross_lr.q", f"{ada}.cross_attention.query")
        linear("cross_lr.kv", f"{ada}.cross_attention.key_value")
        linear("cross_lr.proj", f"{ada}.cross_attention.dense")
        linear("cross_lr.q_norm", f"{ada}.cross_q_ln")
        linear("cross_lr.k_norm", f"{ada}.cross_k_ln")
        linear("cross_lr.post_norm", f"{ada}.post_cross_attention_layernorm")
        m["cross_lr.q_pos"] = (f"{ada}.lr_query_position_embedding", lambda t: t[0])
        m["cross_lr.k_pos"] = (f"{ada}.lr_key_position_embedding", lambda t: t[0])
    linear("final.adaln", "mixins.final_layer.adaLN_modulation.1")
    linear("final.linear", "mixins.final_layer.linear")
    return m


def convert_state_dict(
    official: Mapping[str, Tensor], config: ModelConfig, expected_shapes: Mapping[str, torch.Size]
) -> ConversionResult:
    """Map an official state dict onto our keys, checking every key and shape.

    expected_shapes: our key -> shape (from a freshly built model of `config`).
    """
    mapping = _key_map(config)
    missing_ours = sorted(set(expected_shapes) - set(mapping))
    if missing_ours:  # a config feature without an official counterpart: a bug in this module
        raise ConversionError(f"no official key is known for {missing_ours[0]}")
    out: dict[str, Tensor] = {}
    for ours, (theirs, transform) in mapping.items():
        if theirs not in official:
            raise ConversionError(f"checkpoint is missing key {theirs!r} (needed for {ours})")
        tensor = transform(official[theirs])
        want = tuple(expected_shapes[ours])
        if tuple(tensor.shape) != want:
            raise ConversionError(
                f"key {theirs!r} has shape {tuple(official[theirs].shape)}, expected one giving {want} for {ours}"
            )
        out[ours] = tensor.contiguous()
    used = {theirs for theirs, _ in mapping.values()}
    clip = {k[len(CLIP_PREFIX) + len("visual."):]: v for k, v in official.items()
            if k.startswith(CLIP_PREFIX + "visual.")}
    ignored, unused = [], []
    for key in sorted(official):
        if key in used or key.startswith(CLIP_PREFIX + "visual."):
            continue
        if key.startswith(IGNORED_PREFIXES) or (
            key.startswith(CLIP_PREFIX) and key[len(CLIP_PREFIX):].startswith(CLIP_TEXT_LEFTOVERS)
        ):
            ignored.append(key)
        else:
            unused.append(key)
    return ConversionResult(out, clip, unused, ignored)


def infer_config(official: Mapping[str, Tensor], base: ModelConfig | None = None) -> ModelConfig:
    """Read the architecture off the official tensors' shapes (layers, width, heads, features)."""
    from dataclasses import replace

    base = base or ModelConfig()
    try:
        qkv = official["transformer.layers.0.attention.query_key_value.weight"]
        fc1 = official["transformer.layers.0.mlp.dense_h_to_4h.weight"]
    except KeyError as exc:
        raise ConversionError(f"checkpoint is missing key {exc.args[0]!r}: not an Inf-DiT checkpoint") from None
    hidden = qkv.shape[1]
    layers = 0
    while f"transformer.layers.{layers}.attention.query_key_value.weight" in official:
        layers += 1
    ada = "mixins.adaln_layer"
    if f"{ada}.re_pos_embed" in official:
        heads = official[f"{ada}.re_pos_embed"].shape[2]
    elif f"{ada}.q_layer_norm.0.weight" in official:
        heads = hidden // official[f"{ada}.q_layer_norm.0.weight"].shape[0]
    else:
        heads = base.num_heads
    vector = official.get("cond_embed.map_vector.0.weight")
    patch = official["mixins.patch_embed.proj.weight"].shape[-1]
    return replace(
        base, hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_hidden=fc1.shape[0],
        patch_size=patch, vector_dim=0 if vector is None else vector.shape[1],
        time_channels=official["time_embed.mlp.0.weight"].shape[1],
        cross_lr=f"{ada}.proj_lr.weight" in official, qk_ln=f"{ada}.q_layer_norm.0.weight" in official,
        block_pos=f"{ada}.re_pos_embed" in official,
    )
