"""Fixtures shared by the testnet's process tests."""

from __future__ import annotations

import pytest

from tests.support.testnet_process import run_testnet


@pytest.fixture
def run_dir(tmp_path):
    """A testnet run directory, brought down after the test if a testnet was made in it."""
    directory = tmp_path / "run"
    yield directory
    if (directory / "testnet.json").exists():
        run_testnet("down", "--dir", str(directory))
