"""The storage benchmark runs end to end at a small N and ends with its one-line JSON (no speed asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_small_run_prints_json(tmp_path):
    env = dict(os.environ, N="2500", BLOCK="1000", PROOFS="300", DIR=str(tmp_path / "store"))
    done = subprocess.run([sys.executable, "-m", "storage.bench"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    last = done.stdout.decode().strip().splitlines()[-1]
    figures = json.loads(last)
    for key in ("entries_per_s", "proofs_per_s", "bytes_per_commitment", "reopen_s"):
        assert figures[key] > 0, key
    assert figures["n"] == 2500
    assert figures["revoked"] == 2  # one revoke in each block after the first (REVOKES default)
    assert "2,500 commitments and 2 revokes in 3 blocks" in done.stderr.decode()


def test_bench_refuses_bad_settings(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "file").write_text("x")
    for env, message in (({"N": "many"}, "N='many' is not an integer"),
                         ({"N": "0"}, "N must be at least 1"),
                         ({"DIR": str(tmp_path / "store")}, "not empty")):
        done = subprocess.run([sys.executable, "-m", "storage.bench"], env=dict(os.environ, **env),
                              capture_output=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr.decode(), done.stderr.decode()
