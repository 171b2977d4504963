"""Resume inside one image: sampler progress written atomically after every step, replayed exactly.

A sampler plugin (api_version 1) owns its step loop and may keep state we cannot see (a multistep
solver keeps its previous denoised estimate), so resuming never reaches into it. Instead:

- *state* mode, for samplers whose state at the start of a step is x alone (the built-in
  ``heun-edm`` and ``euler`` without churn, or any plugin declaring ``resumable_from_state = True``):
  the input of a step's first denoiser call is x_k itself, so x_k is saved and a rerun calls
  ``sampler.sample(x_k, sigmas[k:], noise(k + i))``: the same operations on the same numbers.
- *log* mode, for every other sampler: each denoiser output is saved, and a rerun runs the sampler
  from x_0 again, answering the finished calls from the log, so its hidden state is rebuilt bit for bit.
  Its disk use grows with the calls: up to (NFE + 1) × the pass's image (this rank's strip) in the
  sampler's dtype, about 12 bytes per output pixel and call in fp32 (39 calls of a 4096² image:
  8 GB). It is checked against the free space before the pass, and the pass is refused with one
  line (and the figure) when it would not fit; state mode keeps two images.

Per-block noise is a pure function of (seed, step, block), which is what makes both exact. Each
file is written to a temporary name and renamed, then the manifest; the two latest states are kept so
that ranks of a split image, which may stop one step apart, always share a step to resume from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from infdit_cli.atomic import atomic_path, write_text_atomic
from infdit_cli.errors import InfditError
from infdit_cli.samplers import StepInfo, sampler_id, uses_state
from infdit_cli.units import format_bytes

FORMAT = 1

# Given this rank's resumable positions, the largest one every rank has (identity for one process).
Agree = Callable[[list[int]], int]


class CheckpointError(InfditError):
    """A checkpoint that cannot be used for this command (one line for the user)."""


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def tensor_digest(t: Tensor) -> str:
    """Hash of a tensor's dtype, shape and bytes (bitwise identity)."""
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    flat = t.detach().contiguous().cpu().reshape(-1)  # 1-D: a 0-d tensor cannot be viewed as bytes
    return _digest(head + flat.view(torch.uint8).numpy().tobytes() if flat.numel() else head)


def model_digest(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: another model or other weights never resume a run."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


def _agree_alone(positions: list[int]) -> int:
    return max(positions)


@dataclass
class _Manifest:
    fingerprint: dict[str, str]
    mode: str  # "state" or "log"
    steps: list[int] = field(default_factory=list)  # state mode: saved x_k, oldest first (at most two)
    calls: int = 0  # log mode: saved denoiser outputs
    done: bool = False


class Checkpoint:
    """One image's checkpoint folder; `sample` is a pipeline SampleHook that saves and resumes."""

    def __init__(self, folder: Path, model_hash: str, rank: int = 0, world: int = 1,
                 agree: Agree = _agree_alone) -> None:
        self.folder = Path(folder)
        self.model_hash = model_hash
        self.rank, self.world = rank, world
        self.agree = agree
        self.resumed_from: dict[int | str, int] = {}  # pass (or band) -> step (state) or call (log) it resumed at

    # -- files ---------------------------------------------------------------------------------
    def _name(self, index: int | str, what: str, suffix: str) -> Path:
        rank = f".rank{self.rank}" if self.world > 1 else ""
        return self.folder / f"pass{index}-{what}{rank}{suffix}"

    def _save_tensor(self, path: Path, t: Tensor) -> None:
        with atomic_path(path) as tmp:
            save_file({"x": t.detach().contiguous().cpu()}, str(tmp))

    def _load_tensor(self, path: Path, device: torch.device) -> Tensor:
        try:
            return load_file(str(path))["x"].to(device)
        except Exception as exc:
            raise CheckpointError(f"checkpoint file {path} is unreadable ({type(exc).__name__}); "
                                  f"remove {self.folder} to start over") from None

    def _save_manifest(self, index: int | str, m: _Manifest) -> None:
        data = {"format": FORMAT, "fingerprint": m.fingerprint, "mode": m.mode, "steps": m.steps,
                "calls": m.calls, "done": m.done, "rank": self.rank, "world": self.world}
        text = json.dumps(data, indent=1, sort_keys=True)
        write_text_atomic(self._name(index, "manifest", ".json"), text)

    def _load_manifest(self, index: int | str) -> _Manifest | None:
        path = self._name(index, "manifest", ".json")
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError("format")
            return _Manifest(data["fingerprint"], data["mode"], list(data["steps"]), int(data["calls"]),
                             bool(data["done"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"checkpoint {path} is unreadable; remove {self.folder} to start over") from None

    def clear(self) -> None:
        """Forget the checkpoint (the image is written); other ranks' files go with the folder."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def require_disk(self, need: int, what: str) -> None:
        """Refuse, in one line, a run whose checkpoint would grow to `need` bytes in all (what is in the
        folder already counts) on a disk without the room."""
        self.folder.mkdir(parents=True, exist_ok=True)
        have = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        free = shutil.disk_usage(self.folder).free
        if need - have > free:
            raise CheckpointError(f"the checkpoint of this pass ({what}) needs {format_bytes(need - have)} more "
                                  f"but {self.folder} has {format_bytes(free)} free; free space there, pass "
                                  "another --checkpoint or drop it")

    def drop_progress(self, index: int | str) -> None:
        """Remove a finished index's step states and call log (its result and manifest stay): an
        out-of-core band keeps only its rows once done, not a band of state per step."""
        for pattern in (f"pass{index}-step*", f"pass{index}-call*"):
            for path in self.folder.glob(pattern):
                path.unlink(missing_ok=True)

    # -- identity ------------------------------------------------------------------------------
    def _fingerprint(self, sampler: Any, x0: Tensor, sigmas: Tensor, extra: dict[str, str] | None = None
                     ) -> dict[str, str]:
        options = getattr(sampler, "options", None)
        return {
            "model": self.model_hash,
            **(extra or {}),
            "input image, seed and scale": tensor_digest(x0),
            "sampler": f"{getattr(sampler, 'name', '?')} {sampler_id(sampler)} {options!r}",
            "schedule (steps, sigma-min/max, rho)": tensor_digest(sigmas.float()),
            "ranks": f"rank {self.rank} of {self.world}",
        }

    def _check(self, stored: dict[str, str], now: dict[str, str]) -> None:
        for key, value in now.items():
            if stored.get(key) != value:
                what = "number of ranks" if key == "ranks" else key
                raise CheckpointError(f"checkpoint {self.folder} belongs to another run (different {what}); "
                                      "rerun the same command, or remove it or pass another --checkpoint")

    # -- the hook ------------------------------------------------------------------------------
    def sample(self, sampler: Any, denoiser: Callable[..., Tensor], x0: Tensor, sigmas: Tensor,
               noise: Callable[[int], Tensor], index: int | str, on_resume: Callable[[int], None] | None = None,
               extra: dict[str, str] | None = None) -> Tensor:
        """Run (or continue) one pass's sampling, saving progress after every step.

        `on_resume(k)`: told, before sampling, that the first k denoiser calls are answered without the
        network (a caller numbering its calls, like an out-of-core band's KV edges, starts at k).
        `extra`: more of the run that must match to resume (e.g. the band layout), checked first.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        mode = "state" if uses_state(sampler) else "log"
        fingerprint = self._fingerprint(sampler, x0, sigmas, extra)
        num_steps = len(sigmas) - 1
        manifest = self._load_manifest(index)
        if manifest is not None:
            self._check(manifest.fingerprint, fingerprint)
        else:
            other = f"pass{index}-manifest.json" if self.world > 1 else f"pass{index}-manifest.rank*.json"
            if any(self.folder.glob(other)):  # written by a run with another number of ranks
                self._check({}, {"ranks": fingerprint["ranks"]})
            manifest = _Manifest(fingerprint, mode)
        if mode == "state":
            return self._run_state(manifest, sampler, denoiser, x0, sigmas, noise, index, num_steps, on_resume)
        return self._run_log(manifest, sampler, denoiser, x0, sigmas, noise, index, on_resume)

    def _finish(self, manifest: _Manifest, index: int | str, out: Tensor) -> Tensor:
        self._save_tensor(self._name(index, "done", ".safetensors"), out)
        manifest.done = True
        self._save_manifest(index, manifest)
        return out

    def _run_state(self, manifest: _Manifest, sampler: Any, denoiser: Callable[..., Tensor], x0: Tensor,
                   sigmas: Tensor, noise: Callable[[int], Tensor], index: int | str, num_steps: int,
                   on_resume: Callable[[int], None] | None) -> Tensor:
        have = [0] + manifest.steps + ([num_steps] if manifest.done else [])
        start = self.agree(sorted(set(have)))
        self.resumed_from[index] = start
        if start == num_steps:
            return self._load_tensor(self._name(index, "done", ".safetensors"), x0.device)
        if on_resume is not None:  # the calls of steps before `start`
            on_resume(sampler.nfe(num_steps) - sampler.nfe(num_steps - start) if start else 0)
        x = x0 if start == 0 else self._load_tensor(self._name(index, f"step{start}", ".safetensors"), x0.device)
        manifest.done = False
        manifest.steps = [s for s in manifest.steps if s <= start]
        last_input: list[Tensor] = []
        current = [start - 1 if start else -1]

        def watched(x_in: Tensor, sigma: Tensor | float) -> Tensor:
            last_input[:] = [x_in]
            return denoiser(x_in, sigma)

        def on_call(info: StepInfo) -> None:
            step = start + info.step
            if step == current[0]:
                return
            current[0] = step  # this call began step `step`: its input is x_step
            if step == 0 or step in manifest.steps:
                return
            self._save_tensor(self._name(index, f"step{step}", ".safetensors"), last_input[0])
            dropped = manifest.steps[:-1]
            manifest.steps = manifest.steps[-1:] + [step]
            self._save_manifest(index, manifest)
            for old in dropped:
                self._name(index, f"step{old}", ".safetensors").unlink(missing_ok=True)

        out = sampler.sample(watched, x, sigmas[start:], lambda i: noise(i + start), on_call)
        return self._finish(manifest, index, out)

    def _run_log(self, manifest: _Manifest, sampler: Any, denoiser: Callable[..., Tensor], x0: Tensor,
                 sigmas: Tensor, noise: Callable[[int], Tensor], index: int | str,
                 on_resume: Callable[[int], None] | None) -> Tensor:
        nfe = sampler.nfe(len(sigmas) - 1)
        have = list(range(min(manifest.calls, nfe) + 1)) + ([nfe + 1] if manifest.done else [])
        total = self.agree(have)  # calls answered from the log; nfe + 1: the pass is finished
        self.resumed_from[index] = total
        if total == nfe + 1:
            return self._load_tensor(self._name(index, "done", ".safetensors"), x0.device)
        need = log_bytes(nfe - total, x0)
        free = shutil.disk_usage(self.folder).free
        if need > free:
            raise CheckpointError(f"the per-call checkpoint log of this pass needs {need / 1e9:.1f} GB "
                                  f"({nfe - total} calls of {x0.numel() * x0.element_size() / 1e6:.0f} MB) but "
                                  f"{self.folder} has {free / 1e9:.1f} GB free; free space there, use a "
                                  "sampler resumable from its state (heun-edm or euler without churn) or drop "
                                  "--checkpoint")
        manifest.done = False
        manifest.calls = total
        calls = [0]
        if on_resume is not None:
            on_resume(total)

        def replayed(x_in: Tensor, sigma: Tensor | float) -> Tensor:
            j = calls[0]
            calls[0] += 1
            if j < total:
                return self._load_tensor(self._name(index, f"call{j}", ".safetensors"), x_in.device)
            out = denoiser(x_in, sigma)
            self._save_tensor(self._name(index, f"call{j}", ".safetensors"), out)
            manifest.calls = j + 1
            self._save_manifest(index, manifest)
            return out

        out = sampler.sample(replayed, x0, sigmas, noise)
        return self._finish(manifest, index, out)


def log_bytes(calls: int, x0: Tensor) -> int:
    """Disk the per-call log of `calls` more calls and the pass's result take (x0's size and dtype each)."""
    return (calls + 1) * x0.numel() * x0.element_size()


def image_checkpoint(root: Path, target: Path, model_hash: str, rank: int = 0, world: int = 1,
                     agree: Agree = _agree_alone) -> Checkpoint:
    """The checkpoint folder of one output file under the user's --checkpoint DIR."""
    key = _digest(str(Path(target).resolve()).encode())[:10]
    return Checkpoint(Path(root) / f"{Path(target).name}-{key}", model_hash, rank, world, agree)
