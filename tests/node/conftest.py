"""Fixtures for the node tests; the real-process cluster harness is in tests/support/node_cluster.py."""

from __future__ import annotations

import pytest

from tests.support.node_cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    built = Cluster(tmp_path)
    try:
        yield built
    finally:
        built.teardown()
