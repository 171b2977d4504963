"""Worker run by tests/test_distributed*.py under a torchrun-style environment (RANK, WORLD_SIZE, ...).

`python -m tests.distributed_worker split` upscales tiny images with their block columns split
across the ranks and prints, on rank 0, one JSON line comparing each with the single-process result.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import replace

import torch

from infdit_cli.config import ModelConfig
from infdit_cli.distributed.batch import Session
from infdit_cli.distributed.context import DistributedError, ranks_from_env, start, stop
from infdit_cli.distributed.split import SplitUpscale
from infdit_cli.model import InfDiT
from infdit_cli.pipeline import UpscaleOptions, Upscaler

# Small blocks and a tiny network: a split image runs in well under a second per rank.
TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, mlp_hidden=64, block_size=32, vector_dim=0)

# (LR height, LR width, block batch n): the output grid is (4h/32) × (4w/32) blocks.
CASES = {
    "1x5": (8, 40, 1),
    "3x4": (24, 32, 2),
    "ragged 3x7 n=2, cropped": (21, 53, 2),
}


def split_cases(steps: int = 2) -> dict[str, dict[str, object]]:
    torch.set_num_threads(1)
    ranks = ranks_from_env()
    start(ranks, torch.device("cpu"))
    try:
        upscaler = Upscaler(InfDiT(TINY).init_random(3).eval())
        split = SplitUpscale(upscaler, ranks)
        report = {}
        for name, (h, w, n) in CASES.items():
            image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
            options = UpscaleOptions(steps=steps, block_batch=n, seed=4)
            plans = upscaler.plan((h, w), options)
            n_used, strips = split.strips(plans[0])
            got = split.upscale(image, options, plans).image
            single = upscaler.upscale(image, UpscaleOptions(steps=steps, block_batch=n_used, seed=4)).image
            # The finished image goes to rank 0 only; the other ranks hold their strips alone.
            report[name] = {"equal": got is not None and torch.equal(got, single),
                            "shape": None if got is None else list(got.shape),
                            "strips": [[s.cols.start, s.cols.stop] for s in strips], "n": n_used,
                            "bytes_sent": split.link_stats[-1].bytes_sent,
                            "band_bytes": split.band_bytes[-1]}
        # A model whose block grid starts 4 LR pixels in: the strips cover the padded grid, rank 0 crops.
        offset_up = Upscaler(InfDiT(replace(TINY, block_offset=4)).init_random(3).eval())
        image = torch.rand(1, 3, 21, 53, generator=torch.Generator().manual_seed(7))
        options = UpscaleOptions(steps=steps, block_batch=2, seed=4)
        got = SplitUpscale(offset_up, ranks).upscale(image, options, offset_up.plan((21, 53), options)).image
        single = offset_up.upscale(image, options).image
        report["block offset"] = got is None or torch.equal(got, single)
        # A rank that read other pixels (an input that differs between nodes) is caught before any exchange.
        options = UpscaleOptions(steps=1, block_batch=1)
        image = torch.full((1, 3, 8, 40), 0.1 * (ranks.rank + 1))
        try:
            Session(ranks, torch.device("cpu")).upscale(upscaler, image, options, upscaler.plan((8, 40), options),
                                                        None, None, True)
            report["different pixels"] = "no error"
        except DistributedError as exc:
            report["different pixels"] = str(exc)
        return report
    finally:
        stop()


def summary_with_a_frozen_peer() -> dict[str, object]:
    """Rank 1 freezes itself (SIGSTOP: alive, sockets open, silent) before the summary; rank 0 waits
    for its report and says when it gave up."""
    from infdit_cli.distributed.batch import RankReport, join

    session = join(torch.device("cpu"))
    if session.ranks.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    start = time.monotonic()
    try:
        session.gather(RankReport(session.ranks.rank))
        return {"error": None}
    except DistributedError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - start}


if __name__ == "__main__":
    if sys.argv[1] == "split":
        result = split_cases()
        print(json.dumps({"rank": ranks_from_env().rank, "cases": result}), flush=True)
    elif sys.argv[1] == "frozen-summary":
        print(json.dumps(summary_with_a_frozen_peer()), flush=True)
