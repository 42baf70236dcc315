"""The bench's figures that travel between machines (issue 19): the stepped capacity search, CPU and
signature checks per commitment over a phase's counted window, the signature ceiling, and the
link-shaping flags. Pure arithmetic, plus the load generator's loops against the small RPC server
of test_loadgen with a fake usage sampler. No assertion on speed.
"""

from __future__ import annotations

import functools
import itertools
import math

import msgpack
import pytest
import trio

from testnet import bench, capacity, loadgen, rpc, usage
from testnet.capacity import Step
from testnet.usage import UsageSample


async def commit_every_tenth_refused(stream: trio.SocketStream) -> None:
    """A node that answers each submit(n) at once: committed, except n % 10 == 9 (mempool-full)."""
    unpacker = msgpack.Unpacker(raw=False)
    while data := await stream.receive_some(65536):
        unpacker.feed(data)
        replies = []
        for _, msgid, _, params in unpacker:
            if params[0] % 10 == 9:
                replies.append([1, msgid, {"code": "mempool-full", "message": "retry later"}, None])
            else:
                replies.append([1, msgid, None, {"status": "committed"}])
        await stream.send_all(b"".join(msgpack.packb(r, use_bin_type=True) for r in replies))


@pytest.fixture
async def server_address(nursery):
    listeners = await nursery.start(functools.partial(trio.serve_tcp, commit_every_tenth_refused, 0,
                                                      host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


# ---------------------------------------------------------------- the capacity search


def test_every_step_passing_gives_the_highest_rate_for_each_bound():
    steps = [Step(100.0 * n, 50.0) for n in range(1, 6)]
    assert capacity.capacities(steps) == {100: 500.0, 250: 500.0}
    assert not capacity.search_done(steps)
    assert capacity.refinement_rate(steps) is None     # nothing above the capacity was tried


def test_no_step_passing_gives_zero_not_none():
    steps = [Step(1000.0, 900.0)]
    assert capacity.capacities(steps) == {100: 0.0, 250: 0.0}
    assert capacity.search_done(steps)
    # The refinement looks between 0 and the lowest failing rate.
    assert capacity.refinement_rate(steps) == 500.0
    assert capacity.capacities([]) == {100: 0.0, 250: 0.0}


def test_a_p99_exactly_at_the_bound_is_within_it():
    steps = [Step(100.0, 100.0), Step(200.0, 250.0), Step(300.0, 250.01)]
    assert capacity.capacities(steps) == {100: 100.0, 250: 200.0}


def test_a_pass_above_a_failure_is_not_credited():
    # pass, fail, pass: the first failure in order of rate ends the count, whatever the order tried.
    steps = [Step(100.0, 50.0), Step(200.0, 300.0), Step(300.0, 80.0)]
    assert capacity.capacities(steps) == {100: 100.0, 250: 100.0}
    assert capacity.capacities(list(reversed(steps))) == {100: 100.0, 250: 100.0}


def test_a_step_with_any_request_not_committed_fails_every_bound():
    steps = [Step(100.0, 10.0), Step(200.0, 10.0, failed=1), Step(300.0, None)]
    assert capacity.capacities(steps) == {100: 100.0, 250: 100.0}
    assert not Step(300.0, None).within(1e9)


def test_the_search_stops_after_the_first_step_past_the_largest_bound():
    assert not capacity.search_done([])
    assert not capacity.search_done([Step(100.0, 120.0)])       # past 100 ms, within 250 ms: go on
    assert capacity.search_done([Step(100.0, 120.0), Step(200.0, 251.0)])


def test_the_refinement_is_halfway_across_the_100_ms_gap_and_only_a_wide_one():
    steps = [Step(1000.0, 60.0), Step(1500.0, 140.0), Step(2000.0, 400.0)]
    assert capacity.refinement_rate(steps) == 1250.0
    assert capacity.refinement_rate(steps + [Step(1250.0, 90.0)]) == 1375.0
    narrow = [Step(10.0, 60.0), Step(10.0 + capacity.REFINEMENT_GAP_MIN_PER_S / 2, 140.0)]
    assert capacity.refinement_rate(narrow) is None


def test_the_phases_take_at_most_duration():
    fractions = bench.PHASE_FRACTIONS
    worst = fractions["saturate"] + bench.OPEN_LOOP_PHASES_MAX * fractions["step"] + fractions["match"]
    assert worst == pytest.approx(1.0)
    assert bench.OPEN_LOOP_PHASES_MAX == len(capacity.STEP_FRACTIONS) + capacity.REFINEMENTS_MAX + 1


def test_capacity_figures_are_ratios_of_the_same_run_and_zero_is_explained():
    report = {"capacity_per_s": {"100": 0.0, "250": 1500.0}, "capacity_steps": [{"offered_per_s": 1500.0}]}
    figures = bench.capacity_figures(report, 5000.0)
    assert figures["capacity_p99_100ms_per_s"] == 0.0 and figures["capacity_p99_250ms_per_s"] == 1500.0
    assert figures["capacity_p99_100ms_ratio"] == 0.0 and figures["capacity_p99_250ms_ratio"] == 0.3
    assert "100 ms" in figures["capacity_note"] and "250 ms" not in figures["capacity_note"]
    assert "capacity_note" not in bench.capacity_figures({"capacity_per_s": {"100": 1.0, "250": 2.0}}, 10.0)
    assert bench.capacity_ratio(100.0, 0.0) is None


def test_a_step_row_counts_errors_and_drops_as_failed():
    result = loadgen.PhaseResult(name="s", offered_per_s=1000.0, duration_s=1.0, dropped=2,
                                 latencies_s=[0.01] * 100)
    result.errors["mempool-full"] = 1
    row = loadgen.step_row(result, 0.2, False, 0.3)
    assert row["failed"] == 3 and row["p99_ms"] == 10.0
    assert row["within_100ms"] is False and row["within_250ms"] is False
    assert loadgen.rate_key(999.6) == "1000" and loadgen.rate_key(1000.0) == "1000"


# ---------------------------------------------------------------- usage per commitment


def test_cpu_and_signature_checks_per_commitment():
    first = UsageSample(at=10.0, cpu_s=4.0, signature_checks=1_000)
    last = UsageSample(at=15.0, cpu_s=7.0, signature_checks=9_000)
    assert usage.cpu_us_per_commitment(first, last, 2_000) == 1500.0       # 3 s / 2,000
    assert usage.signature_checks_per_commitment(first, last, 2_000) == 4.0
    assert usage.cpu_us_per_commitment(first, last, 0) is None
    assert usage.cpu_us_per_commitment(None, last, 10) is None
    unread = UsageSample(at=15.0, cpu_s=None, signature_checks=None)
    assert usage.cpu_us_per_commitment(first, unread, 10) is None
    assert usage.signature_checks_per_commitment(first, unread, 10) is None


def test_cpu_seconds_is_none_if_any_process_cannot_be_read(monkeypatch):
    readings = {1: {"cpu_s": 1.5, "peak_rss_mib": 1.0}, 2: {"cpu_s": 2.0, "peak_rss_mib": 1.0}, 3: None}
    monkeypatch.setattr(usage, "process_usage", readings.get)
    assert usage.cpu_seconds([1, 2]) == 3.5
    assert usage.cpu_seconds([1, 3]) is None


def test_metrics_text_parsing_and_the_settled_rule():
    text = ("# HELP bayledger_height h\n# TYPE bayledger_height gauge\nbayledger_height 7\n"
            'bayledger_rpc_calls_total{method="submit"} 3\nbayledger_mempool_size 0\n'
            "bayledger_signature_checks_total 12\n")
    parsed = usage.parse_metrics(text)
    assert parsed == {"bayledger_height": 7.0, "bayledger_mempool_size": 0.0,
                      "bayledger_signature_checks_total": 12.0}
    assert usage.metric_sum([parsed, parsed], usage.SIGNATURE_CHECKS_METRIC) == 24.0
    assert usage.metric_sum([parsed, None], usage.SIGNATURE_CHECKS_METRIC) is None
    assert usage.is_settled([parsed, dict(parsed)])
    assert not usage.is_settled([parsed, {**parsed, "bayledger_height": 8.0}])
    assert not usage.is_settled([parsed, {**parsed, "bayledger_mempool_size": 3.0}])
    assert not usage.is_settled([parsed, None])


def _fake_sampler(monkeypatch) -> list[UsageSample]:
    """usage.sample replaced: CPU rises 1 s per sample, signature checks 100 per sample."""
    taken: list[UsageSample] = []
    counter = itertools.count(1)

    async def sample(validators):
        n = next(counter)
        taken.append(UsageSample(at=trio.current_time(), cpu_s=float(n), signature_checks=100 * n))
        return taken[-1]

    monkeypatch.setattr(loadgen.usage, "sample", sample)
    return taken


async def test_closed_loop_counts_commits_and_usage_over_the_same_window(server_address, monkeypatch):
    taken = _fake_sampler(monkeypatch)
    requests = [rpc.pack_call("submit", [n]) for n in range(20_000)]   # more than a 0.5 s phase uses
    result = await loadgen.closed_loop("t", [server_address], [requests[0::2], requests[1::2]],
                                       loadgen._accept_submit, duration_s=0.5, window=4)
    assert len(taken) == 2 and (result.window_first, result.window_last) == (taken[0], taken[1])
    assert result.measured_s == pytest.approx(taken[1].at - taken[0].at)
    assert 0 < result.counted_ok < result.ok
    assert result.cpu_us_per_commitment == round(1_000_000 / result.counted_ok, 1)
    assert result.signature_checks_per_commitment == round(100 / result.counted_ok, 2)


async def test_a_closed_loop_that_runs_dry_in_its_warm_up_has_no_usage_window(server_address, monkeypatch):
    taken = _fake_sampler(monkeypatch)
    requests = [rpc.pack_call("submit", [n]) for n in range(40)]
    result = await loadgen.closed_loop("t", [server_address], [requests], loadgen._accept_submit,
                                       duration_s=5, window=4)
    assert taken == [] and result.cpu_us_per_commitment is None
    assert result.counted_ok > 0     # the rate still counts the last 80 % of the time the queue lasted


async def test_open_loop_usage_covers_every_committed_reply(server_address, monkeypatch):
    taken = _fake_sampler(monkeypatch)
    requests = [rpc.pack_call("submit", [n]) for n in range(100)]
    result = await loadgen.open_loop("t", [server_address], [requests], loadgen._accept_submit,
                                     rate_per_s=200, duration_s=0.2)
    assert len(taken) == 2 and result.counted_ok == result.ok == 36    # 40 sent, n % 10 == 9 refused
    assert result.cpu_us_per_commitment == round(1_000_000 / 36, 1)


# ---------------------------------------------------------------- the signature ceiling


def test_signature_ceiling_ratio_is_the_share_of_the_cores_verify_capacity():
    # 2 cores x 10,000 verifications/s over 4 checks per commitment allow 5,000 commitments/s.
    assert bench.signature_ceiling_ratio(5000.0, 10_000, 2, 4.0) == 1.0
    assert bench.signature_ceiling_ratio(2500.0, 10_000, 2, 4.0) == 0.5
    assert bench.signature_ceiling_ratio(2500.0, 10_000, 1, 2.0) == 0.5
    for checks in (None, 0.0, -1.0):
        assert bench.signature_ceiling_ratio(2500.0, 10_000, 2, checks) is None


def test_signature_figures_take_the_saturation_phases_checks(monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    figures = bench.signature_figures({"signature_checks_per_commitment": {"saturate": 4.0, "1000": 6.0}},
                                      {"ed25519_verify_per_s": 10_000}, 2500.0, validators=4)
    assert figures["signature_ceiling_cores"] == 2 and figures["signature_ceiling_ratio"] == 0.5
    assert figures["signature_checks_per_commitment"] == {"saturate": 4.0, "1000": 6.0}


def test_the_ceiling_counts_no_more_cores_than_validators(monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 16)
    assert bench.signature_ceiling_cores(4) == 4
    monkeypatch.setattr(bench.os, "cpu_count", lambda: None)
    assert bench.signature_ceiling_cores(4) == 1


# ---------------------------------------------------------------- link shaping flags


@pytest.mark.parametrize("flags,message", [
    (["--link-delay-ms", "-1"], "--link-delay-ms must be between 0 and 10000"),
    (["--link-delay-ms", "10001"], "--link-delay-ms must be between 0 and 10000"),
    (["--link-delay-ms", "nan"], "--link-delay-ms must be between 0 and 10000"),
    (["--link-loss", "1"], "--link-loss must be at least 0 and below 1"),
    (["--link-loss", "-0.1"], "--link-loss must be at least 0 and below 1"),
])
def test_bench_refuses_link_options_out_of_range(monkeypatch, capsys, flags, message):
    monkeypatch.setenv("DURATION", "30")
    assert bench.main(flags) == 2
    assert message in capsys.readouterr().err


def test_link_options_reach_control_up_only_when_nonzero():
    assert bench.link_options(0.0, 0.0) == {}
    assert bench.link_options(50.0, 0.0) == {"link_delay_ms": 50.0}
    assert bench.link_options(0.0, 0.01) == {"link_loss": 0.01}
    assert bench.check_link_options(10_000, 0.999) is None and bench.check_link_options(0, 0) is None
    assert bench.control_up_accepts({})      # no flags: any control.up will do


def test_bench_says_so_when_control_up_cannot_shape_links(monkeypatch, capsys):
    monkeypatch.setenv("DURATION", "30")
    monkeypatch.setattr(bench, "control_up_accepts", lambda names: not names)
    assert bench.main(["--link-delay-ms", "20"]) == 2
    assert "cannot shape links" in capsys.readouterr().err


def test_summary_names_the_new_figures():
    results = {"commits_per_s": 5000.0, "capacity_p99_100ms_per_s": 1500.0, "capacity_p99_100ms_ratio": 0.3,
               "capacity_p99_250ms_per_s": 0.0, "capacity_p99_250ms_ratio": 0.0, "capacity_steps": [{}, {}],
               "capacity_note": "no step", "cpu_us_per_commitment": {"saturate": 600.0, "1000": 900.0},
               "signature_checks_per_commitment": {"saturate": 5.0}, "signature_ceiling_ratio": 0.4,
               "signature_ceiling_cores": 2, "host_probe": {"ed25519_verify_per_s": 25_000}}
    text = "\n".join(bench.summary_lines(results))
    for fragment in ("1500/s", "ratio 0.3", "no step", "saturate 600.0", "1000 900.0",
                     "signature_ceiling_ratio 0.4", "2 cores"):
        assert fragment in text
    assert not math.isnan(results["commits_per_s"])


async def test_a_sample_reads_cpu_from_proc_and_checks_from_a_real_metrics_endpoint(nursery, monkeypatch):
    # This process stands in for a validator: its own pid, and a NodeMetrics served on 127.0.0.1.
    import os

    from node.metrics import NodeMetrics, serve_metrics

    metrics = NodeMetrics()
    metrics.height.set(5)
    listeners = await nursery.start(functools.partial(serve_metrics, metrics, "127.0.0.1", 0,
                                                      request_bytes_max=1024, client_timeout_ms=2000))
    validator = usage.Validator("v", os.getpid(), f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    taken = await usage.sample([validator, validator])
    assert taken.cpu_s is not None and taken.cpu_s >= 0
    scraped = await usage.scrape(validator.metrics)
    assert taken.signature_checks == 2 * scraped[usage.SIGNATURE_CHECKS_METRIC]
    assert await usage.settle([validator]) is not None          # empty mempool, one height
    metrics.mempool_size.set(3)
    monkeypatch.setattr(usage, "settle_timeout_s", 0.2)
    assert await usage.settle([validator]) is None                 # a backlog that does not clear
    assert await usage.scrape("127.0.0.1:1") is None            # nothing listens there
