"""What a training run depends on (`TrainConfig`, stored with its checkpoints) and what it reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infdit_cli.config import ModelConfig, preset
from infdit_cli.errors import InfditError


@dataclass
class TrainConfig:
    """Everything a run depends on; stored with its checkpoints so `resume` can check it."""

    data: str
    out: str
    preset: str = "small"
    overrides: dict[str, object] = field(default_factory=dict)  # ModelConfig fields replaced
    steps: int = 1000
    batch_size: int = 4
    crop: int = 256  # HR crop side, a multiple of the block size (128)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0  # linear LR warm-up steps
    cosine: bool = False  # cosine decay of the LR to 10 % over the run
    ema: float = 0.999  # EMA decay (ramped up as min(ema, (1+s)/(10+s)))
    grad_clip: float = 1.0
    objective: str = "edm"  # "edm": x = HR + σn (the paper); "one-step": x = bicubic(LR) + σn, one call at inference
    p_mean: float = -1.0  # log σ ~ N(p_mean, p_std²) unless `sigma` is set
    p_std: float = 1.4
    sigma: float | None = None  # fixed training σ (the one-step objective uses a tiny one, e.g. 0.004)
    sample_sigma: float | None = None  # one-step models: σ of the single inference call (default: `sigma`)
    init: str = "dit"  # "dit": zeroed adaLN modulation and output layer (the untrained model returns its input)
    p_resize: float = 0.3  # probability of resize-shorter-side-then-crop
    hflip: bool = True
    degrade: bool = False  # real-world degradations of the LR (`degrade.Recipe`), labelled with their strength
    p_clean: float = 0.3  # with `degrade`: share of LRs left clean (strength 0)
    loss: str = "l2"  # "l2" (EDM's λ-weighted MSE) or "charbonnier" (the same in the network's output units, L1-like)
    seam_weight: float = 0.0  # weight of the step error across block edges (`objective.seam_error`); 0: plain loss
    init_from: str | None = None  # a model file to start from (fields the file lacks keep their init)
    val_every: int = 100
    val_images: int = 2
    val_data: str | None = None  # separate validation folder (else held out from `data`)
    val_sigmas: tuple[float, ...] = (0.02, 0.1, 0.3, 1.0, 3.0)
    save_every: int = 0  # 0: at every validation and at the end
    resume: bool = False
    seed: int = 0
    device: str = "cpu"
    bf16: bool | None = None  # None: on for CUDA, off elsewhere
    clip: str | None = None  # CLIP weights for models with vector_dim > 0

    def model_config(self) -> ModelConfig:
        return preset(self.preset, **self.overrides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class TrainProgress:
    """What the callback sees after every step (and after each validation)."""

    step: int
    total: int
    loss: float
    lr: float
    seconds: float
    val_loss: float | None = None
    val_psnr_gain: float | None = None  # one-step objective: dB over bicubic on the validation crops


@dataclass
class TrainResult:
    steps: int
    model_path: Path
    seconds: float
    losses: list[float]
    val_history: list[tuple[int, float]]
    num_parameters: int
    gain_history: list[tuple[int, float]] = field(default_factory=list)


ProgressCallback = Callable[[TrainProgress], None]


class TrainError(InfditError):
    """Settings or data that cannot train (one line for the user)."""
