"""Checkpoints: the EMA weights as our model file (with objective and sampling metadata), and the
raw weights + optimiser + RNG + EMA count as a safetensors training state, so `resume` continues exactly and
nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from infdit_cli.atomic import write_text_atomic
from infdit_cli.config import ModelConfig
from infdit_cli.model import InfDiT
from infdit_cli.train.config import TrainConfig, TrainError
from infdit_cli.weights import save_state_dict, write_safetensors_atomic

STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"


def _metadata(config: TrainConfig, step: int, seconds: float) -> dict[str, str]:
    meta = {"preset": config.preset, "overrides": json.dumps(config.overrides, sort_keys=True),
            "train_steps": str(step), "train_seconds": f"{seconds:.0f}", "train_config": config.to_json()}
    objective: dict[str, object] = {"kind": config.objective}
    if config.sigma is not None:
        objective["sigma"] = config.sigma
    else:
        objective.update(p_mean=config.p_mean, p_std=config.p_std)
    meta["objective"] = json.dumps(objective, sort_keys=True)
    if config.objective == "one-step":  # the only sampling this model is trained for
        s = config.sample_sigma or config.sigma or 0.004
        meta["sampling"] = json.dumps({"sampler": "euler", "steps": 1, "sigma_max": s, "sigma_min": s / 2})
    return meta


def save_checkpoint(
    out: Path, config: TrainConfig, model: InfDiT, ema: AveragedModel, opt: torch.optim.Optimizer,
    step: int, seconds: float,
) -> Path:
    """EMA weights as our model file; raw weights + optimizer + RNG + step as the training state."""
    meta = _metadata(config, step, seconds)
    path = save_state_dict(ema.module.state_dict(), model.config, out / "model.safetensors", meta)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = dict(enumerate(n for n, _ in model.named_parameters()))
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            tensors[f"opt.{names[idx]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["ema.n_averaged"] = ema.n_averaged.detach().cpu()
    write_safetensors_atomic(tensors, out / STATE_FILE, {"format": "infdit-train-state"})
    state = {"step": step, "seconds": seconds, "config": asdict(config),
             "model_config": json.loads(model.config.to_json())}
    write_text_atomic(out / STATE_JSON, json.dumps(state, indent=1, sort_keys=True))
    return path


def load_checkpoint(
    out: Path, model: InfDiT, ema: AveragedModel, opt: torch.optim.Optimizer,
) -> tuple[int, float]:
    """Restore what `save_checkpoint` wrote (safetensors only: nothing is unpickled). Returns (step, seconds)."""
    state = json.loads((out / STATE_JSON).read_text())
    if ModelConfig(**state["model_config"]) != model.config:
        raise TrainError(f"{out}: the checkpoint's model config differs from this run's")
    device = next(model.parameters()).device
    tensors = load_file(str(out / STATE_FILE))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.module.load_state_dict(load_file(str(out / "model.safetensors")))
    # States written before the EMA was an AveragedModel lack its count: one average per step after the copy.
    ema.n_averaged.copy_(tensors.get("ema.n_averaged", torch.tensor(int(state["step"]) + 1)))
    names = [n for n, _ in model.named_parameters()]
    opt_state: dict[int, dict[str, Tensor]] = {}
    for idx, name in enumerate(names):
        prefix = f"opt.{name}."
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            opt_state[idx] = {k: (v if k == "step" else v.to(device)) for k, v in entry.items()}
    saved = opt.state_dict()
    saved["state"] = opt_state
    opt.load_state_dict(saved)
    torch.set_rng_state(tensors["rng.torch"])
    return int(state["step"]), float(state["seconds"])
