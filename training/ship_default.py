"""Copy one training checkpoint into the package as the shipped default model.

    python training/ship_default.py /work/train_run/out/ckpt_08000.safetensors [--sigma 0.0035] [--start-noise 0]

Keeps the weights and the training record; rewrites the sampling metadata (one Euler step at the
chosen σ; sigma_min below it, unused by one step; the start's noise in units of σ, 0: the bicubic
image itself) so `upscale` and `eval` pick it up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from infdit_cli.weights import read_config, save_state_dict

ASSET = Path(__file__).resolve().parents[1] / "src/infdit_cli/assets/default-model/model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--sigma", type=float, help="σ of the single Euler step (default: the checkpoint's)")
    parser.add_argument("--start-noise", type=float, help="the start's noise in units of σ (default: the checkpoint's)")
    args = parser.parse_args()
    config, meta = read_config(args.checkpoint)
    sampling = json.loads(meta["sampling"])
    sigma = args.sigma or sampling["sigma_max"]
    sampling.update(sigma_max=sigma, sigma_min=sigma / 2)
    if args.start_noise is not None:
        sampling["start_noise"] = args.start_noise
    keep = {k: v for k, v in meta.items() if k not in ("format", "format_version", "config")}
    keep["sampling"] = json.dumps(sampling, sort_keys=True)
    save_state_dict(load_file(str(args.checkpoint)), config, ASSET, keep)
    print(f"{ASSET}: {ASSET.stat().st_size / 1e6:.1f} MB, step {meta.get('train_steps')}, sampling {sampling}")


if __name__ == "__main__":
    main()
