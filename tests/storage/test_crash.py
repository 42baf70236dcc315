"""Crash safety: SIGKILL a writer process at random moments while it applies blocks; every time, the
reopened store sits exactly at a block boundary, its root equals an independent recomputation, and
the replica records written with each block are there for exactly the applied blocks."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from storage import merkle
from storage.keys import entry_key
from storage.ledger import Ledger
from tests.support.crash_writer import _commitment, block_entries, committed_record
from tests.support.storage_helpers import make_world, reference_smt_root

REPO = Path(__file__).resolve().parents[2]
WRITER = "tests.support.crash_writer"   # run as a module from the repository root
ROUNDS = 8
HEIGHT_MAX = 10_000  # never reached: every round ends with a kill


def expected_log(world, height: int) -> merkle.MemoryTree:
    tree = merkle.MemoryTree()
    for h in range(1, height + 1):
        batch, accepted = block_entries(world, h)
        for data, ok in zip(batch, accepted):
            if ok:
                tree.append(data)
    return tree


def check_boundary(world, path: Path) -> int:
    store = Ledger.open(path, world.genesis)
    try:
        height = store.height()
        tree = expected_log(world, height)
        assert store.tree_size() == tree.size
        assert store.tree_root() == tree.root()
        if height:
            head = store.header(height)
            assert head == store.head() and head.tree_root == tree.root() and head.tree_size == tree.size
            assert store.certificate(height) is not None and store.block_results(height) is not None
        # Nothing of the next block is there: no header, no record, no entry beyond the log.
        assert store.header(height + 1) is None and store.block_results(height + 1) is None
        assert store._db.get(entry_key(tree.size)) is None
        if tree.size:
            index = tree.size - 1
            assert store.inclusion_proof(index) == tree.inclusion_path(index)
        # The revoked set (one revoke a block from height 2) is at the same boundary as the log.
        revoked = {_commitment(h - 1, 0) for h in range(2, height + 1)}
        assert store.revoked_root() == reference_smt_root(revoked)
        # A block and the records given with it are durable together or not at all.
        assert store.load_consensus_state() == dict(committed_record(h) for h in range(1, height + 1))
        return height
    finally:
        store.close()


def test_kill_writer_at_random_points(tmp_path):
    world = make_world()
    path = tmp_path / "store"
    rng = random.Random(20261124)
    heights = []
    for round_number in range(ROUNDS):
        writer = subprocess.Popen([sys.executable, "-m", WRITER, str(path), str(HEIGHT_MAX)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            ready = writer.stdout.readline()
            assert ready.startswith(b"ready"), writer.stderr.read().decode()
            time.sleep(rng.uniform(0.05, 0.6))  # somewhere inside execute, apply or the synced write
        finally:
            writer.kill()  # SIGKILL, by pid
            writer.wait()
        heights.append(check_boundary(world, path))
    print("heights after each kill:", heights)
    assert heights == sorted(heights)
    assert heights[-1] > heights[0], "the writer made no progress across restarts"
