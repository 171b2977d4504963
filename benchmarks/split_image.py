"""Time per network call vs number of ranks for one image split across ranks, and bytes sent per call.

Run as a plain script: it launches each rank count itself (RANK / WORLD_SIZE / MASTER_* like torchrun,
gloo on CPU, NCCL with --device cuda), each rank runs the wavefront over its strip of block columns
on random input, and rank 0 reports. The one-rank row is the engine's own streamed runner.

    python benchmarks/split_image.py --ranks 1,2 --grid 4x8 --block-size 64 --preset small --calls 3

CPU threads are split evenly (cores / ranks per rank), so rows compare the same machine used
differently. Each rank reports its CPU time and its waits per call: wall − CPU − waits is time the
rank was runnable but not running (a shared machine). Results: a table on stdout and
benchmarks/results/split-image-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker(args: argparse.Namespace) -> dict[str, object]:
    """One rank: build the model, time `calls` network calls over its strip, report rank 0's view."""
    import torch

    from infdit_cli.config import preset
    from infdit_cli.device import synchronize
    from infdit_cli.distributed.context import Peers, all_gather, ranks_from_env, start, stop
    from infdit_cli.distributed.strips import column_strips, split_block_batch
    from infdit_cli.distributed.wavefront import BoundaryLink, StripRunner
    from infdit_cli.engine import StreamedRunner
    from infdit_cli.model import InfDiT

    ranks = ranks_from_env()
    device = torch.device("cuda", ranks.local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // ranks.world))
    start(ranks, device)
    try:
        cfg = preset(args.preset, block_size=args.block_size, vector_dim=0)
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        net = InfDiT(cfg).init_random(0).eval().to(device=device, dtype=dtype)
        rows, cols = args.grid
        bs = cfg.block_size
        gen = torch.Generator().manual_seed(0)
        net_in = torch.randn(1, cfg.in_channels, rows * bs, cols * bs, generator=gen).to(device, dtype)
        lr = torch.randn(1, 3, rows * bs // cfg.sr_scale, cols * bs // cfg.sr_scale, generator=gen).to(device, dtype)
        c_noise = torch.tensor([0.1], device=device)
        n = split_block_batch(args.n, cols, ranks.world)
        if ranks.world == 1:
            runner = StreamedRunner(net, lr, None, n)
            call, link = (lambda: runner(net_in, c_noise)), None
        else:
            strip = column_strips(cols, n, ranks.world)[ranks.rank]
            link = BoundaryLink(Peers(ranks))
            strip_runner = StripRunner(net, lr, None, n, strip, link)
            strip_in = net_in[..., strip.cols.start * bs:strip.cols.stop * bs]
            call = lambda: strip_runner(strip_in, c_noise)  # noqa: E731
        call()  # warm-up
        if link:
            link.flush()
        all_gather(ranks, None, "starting together")
        sent_before = link.stats.bytes_sent if link else 0
        waited_before, first_waits = (link.stats.wait_seconds, len(link.stats.waits)) if link else (0.0, 0)
        synchronize(device)
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(args.calls):  # back to back, as a sampler calls them (no barrier in between)
            call()
        if link:
            link.flush()
        synchronize(device)
        seconds = (time.perf_counter() - t0) / args.calls
        cpu = (time.process_time() - cpu0) / args.calls
        sent = ((link.stats.bytes_sent - sent_before) / args.calls) if link else 0.0
        waits = link.stats.waits[first_waits:] if link else []
        mine = {"seconds": seconds, "sent": sent, "cpu": cpu,
                "waited": ((link.stats.wait_seconds - waited_before) / args.calls) if link else 0.0,
                "first_wait": waits[0] if waits else 0.0}
        everyone = all_gather(ranks, mine, "collecting timings")
        return {"ranks": ranks.world, "n": n, "seconds_per_call": max(r["seconds"] for r in everyone),
                "wait_per_call": [round(r["waited"], 3) for r in everyone],
                "first_wait": [round(r["first_wait"], 3) for r in everyone],
                # Where a rank's wall time goes: its own CPU time, waiting for its peers, and the rest
                # (descheduled: other processes on the machine, or the other rank on the same cores).
                "cpu_per_call": [round(r["cpu"], 3) for r in everyone],
                "bytes_sent_per_call": sum(r["sent"] for r in everyone),
                "bytes_per_boundary_per_call": max(r["sent"] for r in everyone),
                "threads_per_rank": torch.get_num_threads() if device.type == "cpu" else None}
    finally:
        stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, argv: list[str], timeout_s: float) -> dict[str, object]:
    """Start `world` ranks of this script as torchrun would; return rank 0's JSON."""
    port = str(_free_port())
    procs = []
    try:
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            procs.append(subprocess.Popen([sys.executable, __file__, *argv, "--worker"], env=env, text=True,
                                          stdout=subprocess.PIPE, start_new_session=True))
        outs = [p.communicate(timeout=timeout_s)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"{world} ranks: a rank failed (exit codes {[p.returncode for p in procs]})")
        return json.loads(outs[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def fill_ideal(grid: tuple[int, int], n: int, world: int) -> float:
    """The speed-up a call allows when each rank waits one group-row for the rank on its left
    (the pipeline fill of one call, paid in full by every call that starts in step)."""
    import math

    from infdit_cli.distributed.strips import column_strips

    rows, cols = grid
    group_rows = math.ceil(rows / n)
    widest = max(s.width for s in column_strips(cols, n, world))
    return rows * cols / ((group_rows + world - 1) * widest * min(n, rows))


def _grid(text: str) -> tuple[int, int]:
    rows, cols = text.lower().split("x")
    return int(rows), int(cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2", help="rank counts to compare, e.g. 1,2,4")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--grid", type=_grid, default=(4, 8), help="block rows x block columns of the output")
    parser.add_argument("--n", type=int, default=1, help="block batch (reduced if a strip is narrower)")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per rank (0: cores / ranks)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = _worker(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result))
        return
    argv = [a for a in sys.argv[1:] if a != "--worker"]
    rows = [_launch(int(w), argv, args.timeout) for w in args.ranks.split(",")]
    base = rows[0]["seconds_per_call"]
    print(f"{'ranks':>5} {'threads':>7} {'n':>3} {'s/call':>8} {'speed-up':>8} {'fill ideal':>10} "
          f"{'wait s/call':>14} {'MB sent/call':>12} {'MB per boundary':>15}")
    for r in rows:
        r["speedup"] = round(base / r["seconds_per_call"], 3)
        r["fill_ideal_speedup"] = round(fill_ideal(args.grid, int(r["n"]), int(r["ranks"])), 3)
        waits = "/".join(f"{w:.2f}" for w in r.get("wait_per_call", [])) or "-"
        print(f"{r['ranks']:>5} {r['threads_per_rank'] or '-':>7} {r['n']:>3} {r['seconds_per_call']:>8.3f} "
              f"{r['speedup']:>8.2f} {r['fill_ideal_speedup']:>10.2f} {waits:>14} "
              f"{r['bytes_sent_per_call'] / 1e6:>12.2f} {r['bytes_per_boundary_per_call'] / 1e6:>15.2f}")
    out = args.out or HERE / "results" / f"split-image-{args.device}-{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": "python benchmarks/split_image.py " + " ".join(argv), "machine": platform.node(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
