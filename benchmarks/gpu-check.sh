#!/usr/bin/env bash
# Issue 13's GPU check: one script, about 5 minutes on an H200, nothing installed beyond the README.
#   - x4 (released size, random weights) bf16 at 2048² and 4096²: streamed n=auto eager (+ whole where it fits)
#     and streamed n=auto with --compile;
#   - a 16384x1024 row (a 128-column KV band);
#   - tiny at 1024x512 and 1024x2048, n=2: device peak flat in height, against the CUDA allocator;
#   - streamed = whole in bf16 on the card, and the verdicts against the targets (gpu_check.py).
# Results (JSON + markdown) go to benchmarks/results/. Run from anywhere: bash benchmarks/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1

matrix() {  # run_matrix.py prints the .md and then the .json path; keep the .json
  "$PY" benchmarks/run_matrix.py --device cuda --dtypes bf16 "$@" | tail -n 1
}

nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
eager=$(matrix --presets x4 --resolutions 2048,4096 --block-batches auto --time-budget 20 --tag gpu-check-eager)
compiled=$(matrix --presets x4 --resolutions 2048,4096 --block-batches auto --time-budget 20 --no-whole \
  --compile --tag gpu-check-compile)
band=$(matrix --presets x4 --resolutions 16384x1024 --block-batches auto --time-budget 20 --no-whole \
  --tag gpu-check-band)
flat=$(matrix --presets tiny --resolutions 1024x512,1024x2048 --block-batches 2 --steps 1 --no-whole \
  --time-budget 20 --tag gpu-check-flat)
"$PY" benchmarks/gpu_check.py "$eager" "$compiled" "$band" "$flat"
ls -1 benchmarks/results/*gpu-check*
