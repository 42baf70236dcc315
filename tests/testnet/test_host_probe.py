"""The bench's host probe (issue 19): both one-core rates are measured and reported; no speed is
asserted (only that each probe ran and counted)."""

from __future__ import annotations

import pytest

from testnet import host_probe


def test_the_probe_reports_both_rates_for_one_core():
    figures = host_probe.probe(0.05)
    assert set(figures) == {"ed25519_verify_per_s", "sha256_64b_per_s", "cores", "seconds_each"}
    assert figures["ed25519_verify_per_s"] > 0 and figures["sha256_64b_per_s"] > 0
    assert figures["cores"] == 1 and figures["seconds_each"] == 0.05


def test_each_probe_runs_for_about_its_duration_and_counts_whole_batches(monkeypatch):
    clock = iter(x * 0.01 for x in range(1000))
    monkeypatch.setattr(host_probe.time, "perf_counter", lambda: next(clock))
    calls = []
    rate = host_probe._rate(lambda: calls.append(1), 0.025)
    # Reads: start 0.00, then 0.01, 0.02, 0.03 (past the 0.025 deadline) after each batch.
    assert len(calls) == 3 * host_probe.PROBE_BATCH
    assert rate == pytest.approx(3 * host_probe.PROBE_BATCH / 0.03)


@pytest.mark.parametrize("duration_s", [0, -1, 61, "1", None])
def test_a_probe_duration_out_of_range_is_refused(duration_s):
    with pytest.raises(ValueError, match="probe duration"):
        host_probe.probe(duration_s)
