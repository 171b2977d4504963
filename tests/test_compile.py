"""`--compile`: the torch.compile'd layers give the golden denoiser outputs, streamed and whole (CPU, fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from infdit_cli.engine import StreamedRunner, WholeImageRunner
from infdit_cli.model import EDMDenoiser
from infdit_cli.model.network import compile_unavailable
from tests.conftest import Golden, rel_err

# A machine without a C++ compiler skips, and parity_guard turns that skip into a failure.
pytestmark = [pytest.mark.parity,
              pytest.mark.skipif(compile_unavailable("cpu") is not None,
                                 reason=f"torch.compile unavailable: {compile_unavailable('cpu')}")]


def _denoise(model, golden: Golden, k: int, runner) -> torch.Tensor:
    lr, lr_up = golden["lr_image"], golden["concat_lr_image"]
    vector = golden["vector"] if "vector" in golden else None
    sigma = golden["denoise_sigmas"][k]
    return EDMDenoiser(runner(model, lr, vector), lr_up)(lr_up + sigma * golden["noise"], sigma)


def test_compiled_layers_match_eager_on_the_golden_folder(golden, golden_model):
    compiled = copy.deepcopy(golden_model).compile_layers()
    assert compiled.compiled and not golden_model.compiled
    bs = golden_model.config.block_size
    rows, cols = (s // bs for s in golden["concat_lr_image"].shape[-2:])
    k = int(golden.keys_like("denoise_full_s")[0].rsplit("_s", 1)[1])
    reference = golden[f"denoise_full_s{k}"]
    for runner in (WholeImageRunner, lambda m, lr, v: StreamedRunner(m, lr, v, max(1, min(rows, cols) - 1))):
        eager = _denoise(golden_model, golden, k, runner)
        out = _denoise(compiled, golden, k, runner)
        assert rel_err(out, eager) <= 1e-4
        assert rel_err(out, reference) <= 1e-4
