"""Model resolution (local file, folder, hub cache offline) and strict loading of our format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from infdit_cli.config import ModelConfig, preset
from infdit_cli.model import InfDiT
from infdit_cli.weights import ModelError, load_model, read_config, resolve_model, save_model
from tests.models import write_hub_cache


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    return save_model(InfDiT(preset("tiny")).init_random(3), tmp_path / "tiny")


def test_config_round_trips_through_metadata(tiny_file):
    config, meta = read_config(tiny_file)
    assert config == preset("tiny")
    assert ModelConfig.from_json(meta["config"]) == config
    model = load_model(tiny_file)
    assert model.config == config and not model.training


def test_resolve_local_file_and_folder(tiny_file):
    assert resolve_model(str(tiny_file)).weights == tiny_file
    assert resolve_model(str(tiny_file.parent)).weights == tiny_file


def test_resolve_from_offline_hub_cache(tiny_file, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    commit = write_hub_cache(cache, "acme/tiny-infdit", tiny_file.parent)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    files = resolve_model("acme/tiny-infdit")
    assert files.weights.read_bytes() == tiny_file.read_bytes()
    assert resolve_model(f"acme/tiny-infdit@{commit}").weights.is_file()
    with pytest.raises(ModelError, match="not in the local hub cache"):
        resolve_model("acme/other-model")


def test_bad_models_give_one_line_errors(tmp_path, tiny_file):
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "missing" / "x.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no model.safetensors"):
        resolve_model(str(tmp_path / "empty"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(corrupt)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(ModelError, match="not an infdit model"):
        load_model(foreign)
    state = load_model(tiny_file).state_dict()
    _, meta = read_config(tiny_file)
    del state["final.linear.bias"]
    save_file(state, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(ModelError, match="missing tensor 'final.linear.bias'"):
        load_model(tmp_path / "short.safetensors")
