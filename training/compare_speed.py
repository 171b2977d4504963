"""Per-image time of two model files on the same 128² input (examples/cups.png ×4), alternated.

    python training/compare_speed.py OLD.safetensors [NEW.safetensors]   # NEW: the shipped model

Median of 7 alternating runs after one warm-up each, block batch 4, two threads; prints both and
their ratio (the model card's "per-image time" figure).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from PIL import Image

from infdit_cli.pipeline import UpscaleOptions, load_upscaler
from infdit_cli.weights import default_model_path


def median_seconds(paths: dict[str, str], runs: int = 7, threads: int = 2) -> dict[str, float]:
    """Median per-image time of each model file on examples/cups.png ×4 (block batch 4), after one
    warm-up each, the models alternated run by run so a slow spell hits them alike."""
    torch.set_num_threads(threads)
    arr = np.asarray(Image.open("examples/cups.png").convert("RGB"), dtype=np.uint8).copy()
    lr = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    ups = {k: load_upscaler(p, torch.device("cpu")) for k, p in paths.items()}
    opts = UpscaleOptions(scale=4, block_batch=4)
    for u in ups.values():
        u.upscale(lr, opts)
    times: dict[str, list[float]] = {k: [] for k in ups}
    for _ in range(runs):
        for k, u in ups.items():
            start = time.perf_counter()
            u.upscale(lr, opts)
            times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(old: str, new: str) -> None:
    med = median_seconds({"old": old, "new": new})
    print(f"old {med['old']:.3f} s, new {med['new']:.3f} s, new/old {med['new'] / med['old']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(default_model_path() / "model.safetensors"))
