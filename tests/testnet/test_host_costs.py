"""testnet.host_costs (issue 19): every cost is measured and reported; no speed is asserted."""

from __future__ import annotations

import json

import pytest

from testnet import host_costs


def test_each_cost_is_measured_and_positive(monkeypatch):
    monkeypatch.setattr(host_costs, "calls_per_round", 3)
    figures = host_costs.measure(rounds=1)
    assert set(figures) == {"trio_wakeup_us", "thread_handoff_us", "synced_write_us", "synced_write_wall_us",
                            "wakeup_sleep_ms", "calls"}
    assert figures["calls"] == 3
    # A sleep, a hand-off and a synced write each cost something; how much is the host's to say.
    assert figures["trio_wakeup_us"] > 0 and figures["thread_handoff_us"] > 0
    assert figures["synced_write_wall_us"] > 0


def test_the_command_prints_json_and_refuses_rounds_out_of_range(monkeypatch, capsys):
    monkeypatch.setattr(host_costs, "calls_per_round", 2)
    assert host_costs.main(["--rounds", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["calls"] == 2
    for rounds in ("0", "101"):
        assert host_costs.main(["--rounds", rounds]) == 2
        assert "--rounds must be between 1 and 100" in capsys.readouterr().err


def test_idle_cpu_refuses_a_duration_out_of_range_before_starting_anything(capsys):
    from testnet import idle_cpu

    for seconds in ("0.5", "601"):
        assert idle_cpu.main(["--seconds", seconds]) == 2
        assert "--seconds must be between 1 and 600" in capsys.readouterr().err


def test_tls_costs_refuses_bad_arguments_before_starting_anything(capsys):
    from testnet import tls_costs

    for argv in (["--rate", "0"], ["--requests", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as exited:
            tls_costs.main(argv)
        assert exited.value.code == 2
        assert "--rate must be above 0" in capsys.readouterr().err
