"""Training Inf-DiT from scratch with the paper's recipe, through the whole-image UniBA path.

EDM loss (log σ ~ N(P_mean, P_std²), weight λ = (σ² + σd²)/(σ σd)²) on the preconditioned
denoiser exactly as `precond.EDMDenoiser` runs it at inference; HR crops (random crop p 0.7,
resize-shorter-side-then-crop p 0.3), LR by antialiased bicubic ×4, random RoPE start so the
whole position table is trained, AdamW + gradient clipping + EMA (the EMA is the saved model).

Every random draw of step s comes from a generator seeded by (seed, s), so the data order does
not depend on history and `resume` reproduces an uninterrupted run bit for bit (on CPU).
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from infdit_cli.config import ModelConfig, preset
from infdit_cli.model import InfDiT, edm_coefficients
from infdit_cli.preprocess import bicubic_resize, upsample_lr
from infdit_cli.weights import save_state_dict, write_safetensors_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
STATE_FILE = "train_state.safetensors"
STATE_JSON = "train_state.json"
LOG_FILE = "log.jsonl"


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
    p_mean: float = -1.0
    p_std: float = 1.4
    p_resize: float = 0.3  # probability of resize-shorter-side-then-crop
    hflip: bool = True
    degrade: bool = False  # blur / noise / JPEG on the LR
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


@dataclass
class TrainResult:
    steps: int
    model_path: Path
    seconds: float
    losses: list[float]
    val_history: list[tuple[int, float]]
    num_parameters: int


ProgressCallback = Callable[[TrainProgress], None]


class TrainError(ValueError):
    """Settings or data that cannot train (one line for the user)."""


# -- data ---------------------------------------------------------------------------------------
def list_images(folder: str | Path) -> list[Path]:
    """Every image below `folder`, sorted so the list (and hence the split) is reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise TrainError(f"{root}: not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: Path) -> Tensor:
    """uint8 [3, H, W]; alpha is dropped (Pillow's RGB conversion)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_shorter(img: Tensor, side: int) -> Tensor:
    """uint8 image with its shorter side scaled to `side` (antialiased bicubic)."""
    h, w = img.shape[-2:]
    s = side / min(h, w)
    size = (max(side, round(h * s)), max(side, round(w * s)))
    out = bicubic_resize(img[None].float(), size)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


class CropSource:
    """Decoded images (cached), each also at 'shorter side = crop' for the resize-then-crop branch."""

    def __init__(self, files: list[Path], crop: int) -> None:
        self.files, self.crop = files, crop
        self._full: dict[int, Tensor] = {}
        self._small: dict[int, Tensor] = {}

    def full(self, i: int) -> Tensor:
        if i not in self._full:
            img = load_rgb(self.files[i])
            if min(img.shape[-2:]) < self.crop:  # too small to crop: enlarge once
                img = resize_shorter(img, self.crop)
            self._full[i] = img
        return self._full[i]

    def small(self, i: int) -> Tensor:
        if i not in self._small:
            self._small[i] = resize_shorter(self.full(i), self.crop)
        return self._small[i]


def _rand_int(gen: torch.Generator, high: int) -> int:
    """Uniform in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=gen).item())


def _rand_float(gen: torch.Generator) -> float:
    return float(torch.rand((), generator=gen).item())


def random_crop(source: CropSource, gen: torch.Generator, p_resize: float, hflip: bool) -> Tensor:
    """One HR crop in [-1, 1] (float32 [3, c, c])."""
    i = _rand_int(gen, len(source.files) - 1)
    img = source.small(i) if _rand_float(gen) < p_resize else source.full(i)
    c = source.crop
    top, left = _rand_int(gen, img.shape[-2] - c), _rand_int(gen, img.shape[-1] - c)
    out = img[:, top: top + c, left: left + c]
    if hflip and _rand_float(gen) < 0.5:
        out = out.flip(-1)
    return out.float() / 127.5 - 1


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    ch = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(ch, 1, 1, -1), groups=ch)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(ch, 1, -1, 1), groups=ch)


def jpeg(x: Tensor, quality: int) -> Tensor:
    """Round-trip a [1, 3, h, w] image in [-1, 1] through Pillow's JPEG codec."""
    arr = ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        back = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
    return back.permute(2, 0, 1)[None].float() / 127.5 - 1


def make_lr(hr: Tensor, scale: int, gen: torch.Generator | None = None, degrade: bool = False) -> Tensor:
    """HR [B, 3, H, W] in [-1, 1] -> LR [B, 3, H/s, W/s] in [-1, 1], quantised to 8 bits like a real file.

    With `degrade`, each image gets a random subset of: Gaussian blur before downscaling,
    Gaussian noise and JPEG after it (all drawn from `gen`).
    """
    h, w = hr.shape[-2:]
    out = []
    for x in hr.split(1):
        if degrade and gen is not None and _rand_float(gen) < 0.5:
            x = gaussian_blur(x, 0.2 + 1.3 * _rand_float(gen))
        y = bicubic_resize(x, (h // scale, w // scale)).clamp(-1, 1)
        if degrade and gen is not None:
            if _rand_float(gen) < 0.4:
                y = (y + 0.04 * _rand_float(gen) * torch.randn(y.shape, generator=gen)).clamp(-1, 1)
            if _rand_float(gen) < 0.4:
                y = jpeg(y, 40 + _rand_int(gen, 55))
        out.append(((y + 1) * 127.5).round() / 127.5 - 1)
    return torch.cat(out)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for every random draw of one step: depends only on (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)


def split_files(config: TrainConfig) -> tuple[list[Path], list[Path]]:
    """Training and validation files: a separate folder, or `val_images` held out at random (seeded)."""
    files = list_images(config.data)
    if config.val_data:
        val = list_images(config.val_data)
        train = files
    else:
        n = min(config.val_images, max(0, len(files) - 1))
        val = sorted(random.Random(config.seed).sample(files, n)) if n else []
        train = [f for f in files if f not in set(val)]
    if not train:
        raise TrainError(f"{config.data}: no training images ({', '.join(IMAGE_SUFFIXES)})")
    return train, val


def validation_crops(files: list[Path], crop: int) -> Tensor | None:
    """Fixed held-out HR crops: the centre of each image at full size and at 'shorter side = crop'."""
    if not files:
        return None
    source = CropSource(files, crop)
    crops = []
    for i in range(len(files)):
        for img in (source.full(i), source.small(i)):
            top, left = (img.shape[-2] - crop) // 2, (img.shape[-1] - crop) // 2
            crops.append(img[:, top: top + crop, left: left + crop].float() / 127.5 - 1)
    return torch.stack(crops)


# -- loss ----------------------------------------------------------------------------------------
def edm_loss(
    model: InfDiT, hr: Tensor, lr: Tensor, sigma: Tensor, noise: Tensor,
    vector: Tensor | None = None, token_offset: tuple[int, int] = (0, 0), bf16: bool = False,
) -> Tensor:
    """Per-sample λ(σ)·mean‖D(hr + σn; σ) − hr‖², D preconditioned exactly as `EDMDenoiser`."""
    cfg = model.config
    sd = cfg.sigma_data
    lr_up = upsample_lr(lr, cfg.sr_scale)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
    shape = (-1, 1, 1, 1)
    x = hr + sigma.view(shape) * noise
    net_in = torch.cat([x, lr_up], dim=1) * c_in.view(shape)
    with torch.autocast(hr.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(net_in, c_noise, vector=vector, lr=lr, token_offset=token_offset)
    denoised = c_skip.view(shape) * x + c_out.view(shape) * out.float()
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return weight * (denoised - hr).square().mean(dim=(1, 2, 3))


@torch.no_grad()
def validation_loss(
    model: InfDiT, crops: Tensor, sigmas: tuple[float, ...], seed: int = 0,
    vector_fn: Callable[[Tensor], Tensor | None] | None = None, bf16: bool = False,
) -> float:
    """Mean EDM loss over fixed crops × fixed sigmas with fixed noise: deterministic, comparable across runs."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed + 7919)
    lr = make_lr(crops, model.config.sr_scale)
    total, count = 0.0, 0
    for i in range(crops.shape[0]):
        hr_i, lr_i = crops[i: i + 1].to(device), lr[i: i + 1].to(device)
        vec = vector_fn(lr_i) if vector_fn else None
        for s in sigmas:
            noise = torch.randn(hr_i.shape, generator=gen).to(device)
            sigma = torch.full((1,), s, device=device)
            total += edm_loss(model, hr_i, lr_i, sigma, noise, vec, bf16=bf16).sum().item()
            count += 1
    return total / max(count, 1)


# -- checkpoints ---------------------------------------------------------------------------------
def _metadata(config: TrainConfig, step: int, seconds: float) -> dict[str, str]:
    return {"preset": config.preset, "overrides": json.dumps(config.overrides, sort_keys=True),
            "train_steps": str(step), "train_seconds": f"{seconds:.0f}", "train_config": config.to_json()}


def save_checkpoint(
    out: Path, config: TrainConfig, model: InfDiT, ema: dict[str, Tensor], opt: torch.optim.Optimizer,
    step: int, seconds: float,
) -> Path:
    """EMA weights as our model file; raw weights + optimizer + RNG + step as the training state."""
    meta = _metadata(config, step, seconds)
    path = save_state_dict(ema, model.config, out / "model.safetensors", meta)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = dict(enumerate(n for n, _ in model.named_parameters()))
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            tensors[f"opt.{names[idx]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    write_safetensors_atomic(tensors, out / STATE_FILE, {"format": "infdit-train-state"})
    state = {"step": step, "seconds": seconds, "config": asdict(config),
             "model_config": json.loads(model.config.to_json())}
    tmp = out / f".{STATE_JSON}.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(out / STATE_JSON)
    return path


def load_checkpoint(
    out: Path, model: InfDiT, ema: dict[str, Tensor], opt: torch.optim.Optimizer,
) -> tuple[int, float]:
    """Restore what `save_checkpoint` wrote (safetensors only: nothing is unpickled). Returns (step, seconds)."""
    state = json.loads((out / STATE_JSON).read_text())
    if ModelConfig(**state["model_config"]) != model.config:
        raise TrainError(f"{out}: the checkpoint's model config differs from this run's")
    device = next(model.parameters()).device
    tensors = load_file(str(out / STATE_FILE))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema_file = load_file(str(out / "model.safetensors"))
    for k in ema:
        ema[k].copy_(ema_file[k])
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


# -- the loop ------------------------------------------------------------------------------------
def learning_rate(config: TrainConfig, step: int) -> float:
    lr = config.lr
    if config.warmup and step < config.warmup:
        lr *= (step + 1) / config.warmup
    if config.cosine:
        lr *= 0.1 + 0.45 * (1 + math.cos(math.pi * min(step / max(config.steps, 1), 1.0)))
    return lr


def _validate_config(config: TrainConfig, mc: ModelConfig) -> None:
    if config.crop <= 0 or config.crop % mc.block_size:
        raise TrainError(f"crop {config.crop} must be a positive multiple of the block size {mc.block_size}")
    if config.crop // mc.patch_size > mc.rope_table:
        raise TrainError("crop is larger than the RoPE table")
    if config.batch_size < 1 or config.steps < 0:
        raise TrainError("batch size must be ≥ 1 and steps ≥ 0")


def _clip_vector_fn(config: TrainConfig, mc: ModelConfig, device: torch.device) -> Callable | None:
    if not mc.vector_dim:
        return None
    from infdit_cli.clip import load_clip

    if not config.clip:
        raise TrainError("this model is conditioned on CLIP (vector_dim > 0): give CLIP weights")
    encoder = load_clip(clip_source=config.clip, device=device)
    return lambda lr: encoder.image_embedding(lr).to(device)


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train (or resume) and write checkpoints to `config.out`; returns where the EMA model is."""
    mc = config.model_config()
    _validate_config(config, mc)
    device = torch.device(config.device)
    bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda"
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_files, val_files = split_files(config)
    source = CropSource(train_files, config.crop)
    val_crops = validation_crops(val_files, config.crop)
    vector_fn = _clip_vector_fn(config, mc, device)

    torch.manual_seed(config.seed)
    model = InfDiT(mc).init_random(config.seed).to(device).train()
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay)
    step, seconds = 0, 0.0
    if config.resume and (out / STATE_JSON).is_file():
        step, seconds = load_checkpoint(out, model, ema, opt)
    ema_model = InfDiT(mc).to(device).eval()
    losses: list[float] = []
    val_history: list[tuple[int, float]] = []
    log = (out / LOG_FILE).open("a")
    save_every = config.save_every or config.val_every
    start = time.perf_counter() - seconds
    if step == 0 and val_crops is not None and config.val_every:  # baseline of a fresh run
        ema_model.load_state_dict(ema)
        val_history.append((0, validation_loss(ema_model, val_crops, config.val_sigmas, config.seed, vector_fn, bf16)))
    try:
        while step < config.steps:
            loss = _train_step(model, opt, source, config, mc, step, device, bf16, vector_fn)
            _update_ema(ema, model, config.ema, step)
            step += 1
            losses.append(loss)
            seconds = time.perf_counter() - start
            val = None
            if val_crops is not None and config.val_every and (step % config.val_every == 0 or step == config.steps):
                ema_model.load_state_dict(ema)
                val = validation_loss(ema_model, val_crops, config.val_sigmas, config.seed, vector_fn, bf16)
                val_history.append((step, val))
            record = TrainProgress(step, config.steps, loss, learning_rate(config, step - 1), seconds, val)
            log.write(json.dumps(asdict(record)) + "\n")
            log.flush()
            if (save_every and step % save_every == 0) or step == config.steps:
                save_checkpoint(out, config, model, ema, opt, step, seconds)
            if progress:
                progress(record)
    finally:
        log.close()
    if not (out / "model.safetensors").is_file():
        save_checkpoint(out, config, model, ema, opt, step, seconds)
    return TrainResult(step, out / "model.safetensors", seconds, losses, val_history, model.num_parameters())


def _train_step(
    model: InfDiT, opt: torch.optim.Optimizer, source: CropSource, config: TrainConfig, mc: ModelConfig,
    step: int, device: torch.device, bf16: bool, vector_fn: Callable | None,
) -> float:
    gen = step_generator(config.seed, step)
    hr = torch.stack([random_crop(source, gen, config.p_resize, config.hflip) for _ in range(config.batch_size)])
    lr = make_lr(hr, mc.sr_scale, gen, config.degrade)
    span = mc.rope_table - config.crop // mc.patch_size
    offset = (_rand_int(gen, span), _rand_int(gen, span))
    sigma = (torch.randn(config.batch_size, generator=gen) * config.p_std + config.p_mean).exp()
    noise = torch.randn(hr.shape, generator=gen)
    hr, lr, sigma, noise = hr.to(device), lr.to(device), sigma.to(device), noise.to(device)
    vector = vector_fn(lr) if vector_fn else None
    for group in opt.param_groups:
        group["lr"] = learning_rate(config, step)
    loss = edm_loss(model, hr, lr, sigma, noise, vector, offset, bf16).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    opt.step()
    return loss.item()


@torch.no_grad()
def _update_ema(ema: dict[str, Tensor], model: InfDiT, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].mul_(d).add_(v.float(), alpha=1 - d)
        else:
            ema[k].copy_(v)
