"""The run fails when a parity test skips, and the shipped golden case is what the tests read."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEFAULT_GOLDEN
from tests.golden.trim import sha256

INNER = """
import pytest

@pytest.mark.parity
def test_parity_that_skips():
    pytest.skip("no compiler")

def test_other_that_skips():
    pytest.skip("optional plugin missing")

@pytest.fixture
def golden_dir():
    pytest.skip("folder missing")

def test_reads_golden(golden_dir):
    pass
"""


def test_a_skipped_parity_test_fails_the_run(pytester: pytest.Pytester):
    pytester.makepyfile(INNER)
    result = pytester.runpytest("-p", "tests.parity_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*parity test skipped, which fails the run*no compiler*"])
    assert result.ret != 0


def test_the_shipped_golden_case_is_intact_and_small():
    config = json.loads((DEFAULT_GOLDEN / "config.json").read_text())
    files = config["file_sha256"]
    assert {name: sha256(DEFAULT_GOLDEN / name) for name in files} == files
    assert sum((DEFAULT_GOLDEN / name).stat().st_size for name in files) < 20e6
