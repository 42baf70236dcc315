"""Unit tests of the testnet tooling that need no daemon: percentiles, port plans
and checks, the supervisor's pid handling, and the network layout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testnet import ports, stats, supervisor
from testnet.network import Network, ManifestError, plan_network, validator_layout


# ---------------------------------------------------------------- percentiles


def test_percentile_nearest_rank_on_one_to_hundred():
    # Nearest rank on 1..100: p50 is the 50th value, p99 the 99th, p100 the max.
    samples = list(range(1, 101))
    assert stats.percentile(samples, 0.50) == 50
    assert stats.percentile(samples, 0.95) == 95
    assert stats.percentile(samples, 0.99) == 99
    assert stats.percentile(samples, 1.0) == 100
    assert stats.percentile(samples, 0.001) == 1


def test_percentile_returns_an_observed_sample():
    samples = [0.010, 0.020, 0.500]
    assert stats.percentile(samples, 0.5) == 0.020
    assert stats.percentile(samples, 0.99) == 0.500  # ceil(0.99 * 3) = 3rd
    assert stats.percentile([7.0], 0.5) == 7.0


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_percentile_rejects_fraction_out_of_range(fraction):
    with pytest.raises(ValueError):
        stats.percentile([1.0], fraction)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        stats.percentile([], 0.5)


def test_summary_in_milliseconds_sorts_its_input():
    summary = stats.summarize_ms([0.3, 0.1, 0.2, 0.4])
    assert summary == {"count": 4, "p50_ms": 200.0, "p95_ms": 400.0, "p99_ms": 400.0, "max_ms": 400.0}
    assert stats.summarize_ms([]) == {"count": 0}


# ---------------------------------------------------------------- ports


def test_port_plan_blocks():
    plan = ports.plan_ports(7700, 4)
    assert [p.p2p for p in plan] == [7700, 7701, 7702, 7703]
    assert [p.rpc for p in plan] == [7800, 7801, 7802, 7803]
    assert [p.metrics for p in plan] == [7900, 7901, 7902, 7903]


def test_port_plan_edges():
    # The highest port is base + 200 + n - 1: exactly 65535 fits, one more does not.
    highest_base = ports.PORT_MAX - 2 * ports.PORT_BLOCK_SIZE - 3
    assert ports.plan_ports(highest_base, 4)[-1].metrics == ports.PORT_MAX
    with pytest.raises(ports.PortError, match="does not fit"):
        ports.plan_ports(highest_base + 1, 4)
    with pytest.raises(ports.PortError):
        ports.plan_ports(0, 4)
    assert len(ports.plan_ports(1000, ports.validators_max)) == ports.validators_max
    with pytest.raises(ports.PortError):
        ports.plan_ports(1000, ports.validators_max + 1)


def test_busy_port_is_detected_and_named():
    # Ports below the ephemeral range, so no outgoing connection takes a neighbour meanwhile.
    plan = ports.plan_ports(ports.find_free_base_port(1), 1)
    busy = plan[0].rpc
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ports.HOST, busy))
        listener.listen()
        assert not ports.port_is_free(busy)
        with pytest.raises(ports.PortError, match=f"port {busy} \\(rpc of node #1\\)"):
            ports.check_ports_free(plan)
    assert ports.port_is_free(busy)
    ports.check_ports_free(plan)


def test_find_free_base_port_skips_a_busy_plan():
    base = ports.find_free_base_port(4)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ports.HOST, base + ports.PORT_BLOCK_SIZE))  # first rpc port
        listener.listen()
        assert ports.find_free_base_port(4, start=base) != base


# ---------------------------------------------------------------- layout


@pytest.mark.parametrize("count,hk,cn", [(4, 2, 2), (7, 4, 3), (10, 5, 5)])
def test_validator_layout_splits_jurisdictions(count, hk, cn):
    layout = validator_layout(count)
    assert len(layout) == count
    assert sum(j == "HK" for _, j in layout) == hk
    assert sum(j == "CN" for _, j in layout) == cn
    assert len({name for name, _ in layout}) == count
    assert layout[:2] == [("hk-1", "HK"), ("cn-1", "CN")]


def test_validator_layout_rejects_other_sizes():
    with pytest.raises(ValueError, match="4, 7, 10"):
        validator_layout(5)


def test_manifest_round_trip_and_errors(tmp_path):
    network = plan_network(tmp_path, 4, 7700)
    network.run_dir.mkdir(exist_ok=True)
    network.save()
    again = Network.load(tmp_path)
    assert again.nodes == network.nodes
    assert again.participants == network.participants
    assert again.node("cn-2").rpc == "127.0.0.1:7803"
    with pytest.raises(ManifestError, match="no node 'cn-9'"):
        again.node("cn-9")
    (tmp_path / "testnet.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot be read"):
        Network.load(tmp_path)
    with pytest.raises(ManifestError, match="no testnet"):
        Network.load(tmp_path / "elsewhere")


# ---------------------------------------------------------------- supervisor


def _spawn(tmp_path: Path, marker: Path, ignore_term: bool = False) -> subprocess.Popen:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    process = subprocess.Popen([sys.executable, "-c", code, str(marker)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"  # handlers installed
    return process


def _assert_gone(process: subprocess.Popen) -> None:
    # The supervisor reaps its own children by pid, so the pid no longer exists at all.
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    process.returncode = -1  # reaped by the supervisor, not by Popen


def test_stop_node_terms_a_running_process(tmp_path):
    marker = tmp_path / "config.toml"
    pid_file = tmp_path / "node.pid"
    process = _spawn(tmp_path, marker)
    pid_file.write_text(f"{process.pid}\n")
    assert supervisor.running_pid(pid_file, marker) == process.pid
    assert supervisor.stop_node(pid_file, marker) == "stopped"
    _assert_gone(process)
    assert not pid_file.exists()
    assert supervisor.stop_node(pid_file, marker) == "not running"


def test_stop_node_kills_a_process_that_ignores_sigterm(tmp_path):
    marker = tmp_path / "config.toml"
    pid_file = tmp_path / "node.pid"
    process = _spawn(tmp_path, marker, ignore_term=True)
    pid_file.write_text(f"{process.pid}\n")
    assert supervisor.stop_node(pid_file, marker, timeout_ms=300) == "killed"
    _assert_gone(process)


def test_stale_pid_files_are_recognized(tmp_path):
    marker = tmp_path / "config.toml"
    pid_file = tmp_path / "node.pid"
    # A live pid that is not our node (this test process): pid reuse.
    pid_file.write_text(f"{os.getpid()}\n")
    assert supervisor.running_pid(pid_file, marker) is None
    assert supervisor.stop_node(pid_file, marker) == "stale pid file removed"
    assert not pid_file.exists()
    # A pid that has exited and garbage in the file.
    process = _spawn(tmp_path, marker)
    process.kill()
    process.wait()
    pid_file.write_text(f"{process.pid}\n")
    assert supervisor.running_pid(pid_file, marker) is None
    pid_file.write_text("not a pid\n")
    assert supervisor.read_pid(pid_file) is None
    assert supervisor.stop_node(pid_file, marker) == "not running"


def test_zombie_child_counts_as_gone(tmp_path):
    marker = tmp_path / "config.toml"
    process = _spawn(tmp_path, marker)
    os.kill(process.pid, signal.SIGKILL)
    time.sleep(0.2)  # let it become a zombie; process_matches reaps it
    assert not supervisor.process_matches(process.pid, str(marker))
    process.returncode = -9  # reaped by the supervisor, not by Popen


def test_process_usage_reads_proc():
    usage = supervisor.process_usage(os.getpid())
    assert usage["cpu_s"] > 0
    assert usage["peak_rss_mib"] > 1
    assert supervisor.process_usage(2**22 + 12345) is None


def test_ephemeral_overlap_is_detected():
    span = ports.ephemeral_range()
    assert span is not None and span[0] < span[1]  # Linux: /proc/sys/net/ipv4/ip_local_port_range
    assert ports.overlaps_ephemeral(ports.plan_ports(span[0], 4))
    assert not ports.overlaps_ephemeral(ports.plan_ports(7700, 4))


def test_started_node_is_recognized_at_once(tmp_path, monkeypatch):
    # Right after exec, /proc/PID/cmdline is briefly empty; start_node waits until the new
    # process can be recognised, so a check made immediately after never sees it as gone.
    config = tmp_path / "config.toml"
    monkeypatch.setattr(supervisor, "node_command",
                        lambda path: [sys.executable, "-c", "import time; time.sleep(30)", str(path)])
    for attempt in range(20):
        pid_file = tmp_path / f"node-{attempt}.pid"
        pid = supervisor.start_node(config, pid_file, tmp_path / "node.log")
        try:
            assert supervisor.running_pid(pid_file, config) == pid
        finally:
            assert supervisor.stop_node(pid_file, config, hard=True) == "killed"


def test_try_next_sets_the_environment_once_and_uses_short_paths(tmp_path, monkeypatch):
    from testnet import control

    network = plan_network(tmp_path / "run", 4, 7700)
    sample = {"receipt_path": str(tmp_path / "run" / "r.json"), "report": str(tmp_path / "run" / "r.txt"),
              "proof": str(tmp_path / "run" / "p.bin")}
    lines = control.next_commands(network, sample)
    assert f"export BAYLEDGER_GENESIS={network.genesis_path} BAYLEDGER_CA={network.ca_path}" in lines
    assert f"K={network.keys_dir}" in lines
    keyed = [line for line in lines if "--key" in line]
    assert keyed and all("--key $K/" in line for line in keyed)            # no long key paths
    assert not any("--genesis" in line or "--ca" in line for line in lines)  # the exports carry them
    assert lines[-1] == f"python -m testnet down --dir {network.run_dir}"    # not the default directory
    monkeypatch.setattr(control, "DEFAULT_RUN_DIR", network.run_dir)
    assert control.next_commands(network, None)[-1] == "make testnet-down"   # a clone: the Makefile is there
    monkeypatch.setattr(control, "MAKEFILE", tmp_path / "no-Makefile")        # installed from a wheel
    assert control.next_commands(network, None)[-1] == "python -m testnet down"
