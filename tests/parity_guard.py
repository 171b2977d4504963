"""A skipped parity test fails the run: parity with the official code must never pass by silence.

A parity test is one that reads the golden folder (the `golden_dir` fixture, directly or through
`golden`/`golden_model`) or is marked `parity` (the `--compile` and official-layout tests).
"""

from __future__ import annotations

import pytest


def is_parity(item: pytest.Item) -> bool:
    return "golden_dir" in getattr(item, "fixturenames", ()) or item.get_closest_marker("parity") is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "parity: a parity test with the official code; a skip fails the run")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and is_parity(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"parity test skipped, which fails the run: {reason}"
