"""`infdit convert`: official checkpoints (safetensors or DeepSpeed .pt) -> our format, safely."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from infdit_cli.cli import app
from infdit_cli.convert import convert_checkpoint, read_official_checkpoint
from infdit_cli.official import ConversionError
from infdit_cli.weights import load_model, read_config
from tests.conftest import rel_err

runner = CliRunner()


def _deepspeed_checkpoint(path: Path, module: dict[str, torch.Tensor]) -> Path:
    """What SAT/DeepSpeed writes: the state dict under 'module' beside RNG states and bookkeeping."""
    torch.save({
        "module": module, "iteration": 1000, "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(), "torch_rng_state": torch.get_rng_state(),
        "ds_version": "0.14.0", "param_shapes": [{"a": torch.Size([2, 3])}],
    }, path)
    return path


def test_convert_cli_golden_weights_load_and_match(golden, golden_model, golden_dir, tmp_path):
    res = runner.invoke(app, ["convert", str(golden_dir / "weights.safetensors"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    model = load_model(tmp_path / "m" / "model.safetensors")
    config, meta = read_config(tmp_path / "m" / "model.safetensors")
    assert config == golden_model.config and meta["format"] == "infdit"
    for key, value in golden_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_convert_deepspeed_pt_with_rng_state(golden, golden_model, tmp_path):
    ckpt = _deepspeed_checkpoint(tmp_path / "mp_rank_00_model_states.pt", dict(golden.weights))
    clip_key = "image_encoder.model.visual.proj"
    ckpt_with_clip = dict(golden.weights, **{clip_key: torch.randn(4, 3),
                                             "image_encoder.model.token_embedding.weight": torch.randn(2, 2)})
    _deepspeed_checkpoint(ckpt, ckpt_with_clip)
    report = convert_checkpoint(tmp_path, tmp_path / "out")  # a folder holding the checkpoint works too
    assert report.clip_path is not None and report.clip_path.is_file()
    assert "image_encoder.model.token_embedding.weight" in report.result.ignored
    assert report.result.unused == []
    net = load_model(report.model_path)
    for key, value in golden_model.state_dict().items():  # the .pt path reads the very same weights
        assert torch.equal(net.state_dict()[key], value), key
    assert torch.equal(load_file(str(report.clip_path))["proj"], ckpt_with_clip[clip_key])
    x = torch.randn(1, 6, 128, 128)
    vector, lr = torch.randn(1, 768), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours, reference = net(x, torch.tensor([0.2]), vector, lr), golden_model(x, torch.tensor([0.2]), vector, lr)
    assert rel_err(ours, reference) < 1e-6  # same weights; kernels may differ in the last bit


def test_missing_key_fails_with_one_line_naming_it(golden, tmp_path):
    weights = dict(golden.weights)
    del weights["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    save_file(weights, str(tmp_path / "broken.safetensors"))
    res = runner.invoke(app, ["convert", str(tmp_path / "broken.safetensors"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "transformer.layers.1.mlp.dense_4h_to_h.bias" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_misshapen_key_fails_naming_it(golden, tmp_path):
    weights = dict(golden.weights)
    weights["mixins.adaln_layer.cross_attention.dense.weight"] = torch.zeros(64, 63)
    save_file(weights, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConversionError, match="cross_attention.dense.weight"):
        convert_checkpoint(tmp_path / "bad.safetensors", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


class _Exploit:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_untrusted_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"module": {"w": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(ConversionError, match="refused to load safely"):
        read_official_checkpoint(path)
    assert "unpickled arbitrary code" not in capsys.readouterr().out


def test_non_checkpoint_files_are_rejected(tmp_path):
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(pickle.dumps({"module": 1}))
    with pytest.raises(ConversionError, match="not a torch checkpoint"):
        read_official_checkpoint(bogus)
    with zipfile.ZipFile(tmp_path / "empty.pt", "w"):
        pass
    with pytest.raises(ConversionError):
        read_official_checkpoint(tmp_path / "empty.pt")
    res = runner.invoke(app, ["convert", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no such file" in res.stderr


def test_conversion_preserves_dtype_and_casts_on_request(golden, tmp_path):
    report = convert_checkpoint(_deepspeed_checkpoint(tmp_path / "c.pt", dict(golden.weights)), tmp_path / "bf",
                                dtype=torch.bfloat16)
    model = load_model(report.model_path)
    assert next(model.parameters()).dtype == torch.bfloat16
    ref = load_model(convert_checkpoint(tmp_path / "c.pt", tmp_path / "fp").model_path)
    p, q = next(model.parameters()), next(ref.parameters())
    assert rel_err(p.float(), q) < 1e-2
