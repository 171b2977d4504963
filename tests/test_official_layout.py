"""The released model's layout (every official tensor name and shape) converts to our x4 preset.

`tests/golden/official-x4-keys.json` was built by the official code with the flags of its
`generate_sr_big_cli.sh` and open_clip's ViT-L-14 image tower (copied from `../shared/golden/`).
Nothing here allocates the 1.26 G values: tensors live on the meta device, so only names and shapes
are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from infdit_cli.config import preset
from infdit_cli.official import CLIP_PREFIX, IGNORED_PREFIXES, convert_state_dict, infer_config
from infdit_cli.weights import expected_shapes

KEYS_FILE = Path(__file__).resolve().parent / "golden" / "official-x4-keys.json"
pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    data = json.loads(KEYS_FILE.read_text())
    tensors = {k: torch.empty(shape, device="meta") for k, shape in data["tensors"].items()}
    assert len(tensors) == data["num_tensors"] == 726
    assert sum(t.numel() for t in tensors.values()) == data["num_params_total"]
    return tensors


def test_every_official_key_is_mapped_with_its_shape_or_knowingly_skipped(official):
    config = infer_config(official, preset("x4"))
    assert config == preset("x4")
    want = expected_shapes(config)
    result = convert_state_dict(official, config, want)  # raises on a missing or misshapen key
    assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == {k: tuple(v) for k, v in want.items()}
    assert result.unused == []
    visual = {k for k in official if k.startswith(CLIP_PREFIX + "visual.")}
    assert len(visual) > 0 and not visual & set(result.ignored)
    # Skipped knowingly: the recomputed RoPE tables, K's never-used LayerNorm, SAT's position embeddings,
    # and open_clip's text-tower leftovers (the official encoder keeps only the image tower).
    for key in result.ignored:
        assert key.startswith(IGNORED_PREFIXES) or key.startswith(CLIP_PREFIX), key
    rope = [k for k in result.ignored if k.startswith("mixins.adaln_layer.rope.")]
    assert rope and any(tuple(official[k].shape)[-3:] == (1024, 1024, 80) for k in rope), \
        {k: tuple(official[k].shape) for k in rope}


def test_clip_image_tower_fits_open_clip_vit_l_14_key_for_key(official):
    import open_clip  # a dependency of infdit
    result = convert_state_dict(official, preset("x4"), expected_shapes(preset("x4")))
    with torch.device("meta"):
        model = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
    theirs = {k: tuple(v.shape) for k, v in model.visual.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in result.clip_visual.items()} == theirs
    model.visual.load_state_dict(result.clip_visual, strict=True, assign=True)  # as load_clip loads the file
