"""How close the time estimate is to the measured time, as a user meets it.

    python benchmarks/estimate_accuracy.py [--repeats 2] [--out benchmarks/results/NAME]

Upscales three images with the default model (each run a fresh `infdit upscale --json` process,
so each pays its own warm-up, as a user's does) and compares `estimated_upscale_s` with
`timings.upscale_s`; then the `infdit bench` rows (default model, one Euler step, and a random
`small` model) compare `estimated_seconds_per_nfe` with the measured seconds. The inputs are the
shipped cups photo and bicubic enlargements of it (time does not depend on the content). Writes
`NAME.json` and `NAME.md` when `--out` is given; prints the markdown table either way.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(128, 128), (256, 160), (384, 240)]  # LR sizes: ×4 gives 16², 32×20 and 48×30 blocks of 32 px
BENCHES = [
    ["--model", str(ROOT / "src/infdit_cli/assets/default-model"), "--resolution", "1024",
     "--resolution", "2048x1024", "-n", "4", "-n", "auto", "--steps", "1", "--sampler", "euler"],
    ["--preset", "small", "--resolution", "512", "-n", "1", "-n", "2", "-n", "auto", "--steps", "1",
     "--sampler", "euler"],
]


def infdit(*args: str) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("infdit")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"infdit {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def upscale_rows(work: Path, repeats: int) -> list[dict[str, Any]]:
    cups = Image.open(ROOT / "examples/cups.png").convert("RGB")
    rows = []
    for w, h in SIZES:
        src = work / f"cups_{w}x{h}.png"
        cups.resize((w, h), Image.BICUBIC).save(src)
        for attempt in range(repeats):
            doc = infdit("upscale", str(src), "-o", str(work / "out"), "--overwrite", "--json", "-q")
            out = doc["outputs"][0]
            est, meas = out["estimated_upscale_s"], out["timings"]["upscale_s"]
            rows.append({"what": f"upscale {w}x{h} -> {4 * w}x{4 * h}", "attempt": attempt + 1,
                         "block_batch": out["block_batch"], "estimated_s": est, "measured_s": meas,
                         "ratio": est / meas, "calibrate_s": doc.get("calibrate_s")})
    return rows


def bench_rows() -> list[dict[str, Any]]:
    rows = []
    for args in BENCHES:
        doc = infdit("bench", *args, "--json")
        model = Path(str(doc["model"].get("name", "?"))).name
        for r in doc["rows"]:
            est, meas = r.get("estimated_seconds_per_nfe"), r.get("seconds_per_nfe")
            if est is None or meas is None:
                continue
            size = "x".join(map(str, r["resolution"]))
            n = r["block_batch"] if r["path"] == "streamed" else "whole"
            rows.append({"what": f"bench {model} {size} {r['path']} (asked {r['block_batch_requested']})",
                         "block_batch": n, "estimated_s": est, "measured_s": meas, "ratio": est / meas,
                         "extrapolated": r.get("extrapolated")})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | n | estimated s | measured s | est / measured |", "|---|---|---|---|---|"]
    for r in rows:
        n = r.get("block_batch", "")
        n = ",".join(map(str, n)) if isinstance(n, list) else n
        lines.append(f"| {r['what']} | {n} | {r['estimated_s']:.2f} | {r['measured_s']:.2f} | {r['ratio']:.2f} |")
    ratios = [r["ratio"] for r in rows]
    inside = sum(0.7 <= x <= 1.3 for x in ratios)
    lines.append("")
    lines.append(f"{inside} of {len(ratios)} within ±30%; ratio range {min(ratios):.2f}–{max(ratios):.2f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="upscale runs per image")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = upscale_rows(Path(tmp), args.repeats) + bench_rows()
    table = markdown(rows)
    print(table)
    if args.out:
        machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
        args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(f"# Estimated vs measured seconds ({machine})\n\n"
                                               f"`python benchmarks/estimate_accuracy.py`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
