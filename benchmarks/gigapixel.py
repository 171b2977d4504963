"""Host memory of large upscales (issue 18): wall time, peak RSS, scratch/output disk and the output's checksum.

    python benchmarks/gigapixel.py                      # 4096² -> 16384², the default model, one image
    python benchmarks/gigapixel.py --tall               # 256x1024 -> 1024x4096 vs 256x4096 -> 1024x16384
    python benchmarks/gigapixel.py --size 1024 --sampler heun-edm --steps 2

Each run is a fresh `infdit upscale --json` process under `/usr/bin/time -v` (peak RSS of the whole
process); the input is a deterministic smooth-plus-noise PNG. Results go to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"


def make_input(path: Path, w: int, h: int) -> None:
    """A photo-like LR: smooth colour fields (bicubic from a coarse grid) with a little noise."""
    rng = np.random.default_rng(18)
    coarse = Image.fromarray((rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8))
    img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def run_one(src: Path, out: Path, scratch: Path, extra: list[str]) -> dict[str, object]:
    """One upscale in a fresh process: what it reports, plus peak RSS, wall time and disk."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "infdit_cli", "upscale", str(src), "-o", str(out),
           "--overwrite", "--json", "--scratch", str(scratch), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"upscale failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    record = json.loads(proc.stdout)["outputs"][0]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    preflight = [line.strip() for line in proc.stderr.splitlines() if "est. peak" in line or "blocks," in line]
    return {"input_size": record["input_size"], "output_size": record["output_size"], "wall_s": round(wall, 1),
            "upscale_s": record["timings"]["upscale_s"], "peak_rss_bytes": peak_kb * 1024,
            "rss_growth_bytes": record["rss_growth_bytes"], "host_bytes": record["host_bytes"],
            "placement": record["placement"], "output_bytes": out.stat().st_size, "output_sha256": digest,
            "preflight": preflight, "args": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="square input side (output: 4x)")
    ap.add_argument("--tall", action="store_true", help="the tall-image pair instead (peak RSS vs height)")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--format", default="tif", choices=["tif", "png"])
    ap.add_argument("--tag", default="amd-epyc-2c")
    args = ap.parse_args()
    extra = []
    if args.sampler:
        extra += ["--sampler", args.sampler]
    if args.steps:
        extra += ["--steps", str(args.steps)]
    sizes = [(256, 1024), (256, 4096)] if args.tall else [(args.size, args.size)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="infdit-gigapixel-") as tmp:
        for w, h in sizes:
            src, out = Path(tmp) / f"in_{w}x{h}.png", Path(tmp) / f"out_{w}x{h}.{args.format}"
            make_input(src, w, h)
            runs.append(run_one(src, out, Path(tmp) / "scratch", extra))
            print(json.dumps(runs[-1], indent=1), flush=True)
            out.unlink()
    result = {"machine": f"{platform.processor() or platform.machine()}, {args.tag}, CPU only, shared and loaded",
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "torch default"), "runs": runs}
    if args.tall:
        small, tall = runs
        result["peak_rss_ratio"] = round(tall["peak_rss_bytes"] / small["peak_rss_bytes"], 3)
        result["rss_growth_ratio"] = round(tall["rss_growth_bytes"] / small["rss_growth_bytes"], 3)
    name = "tall" if args.tall else f"{args.size}"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.tag}-gigapixel-{name}{'-' + args.sampler if args.sampler else ''}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
