"""`python -m testnet` as a user runs it: real daemons on 127.0.0.1, real LevelDB, real pids.

The end-to-end test walks the lifecycle a developer goes through (up with the
sample submit and verify, up again changes nothing, status --json, kill and
restart a node, logs, down) and checks each step's effect on the processes,
not just the printed text. The teardown always stops every node by pid.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from testnet import ports
from testnet.demo import run_sample
from testnet.network import Network
from tests.support.testnet_process import pid_exists, run_testnet, status_json

pytestmark = pytest.mark.slow   # real validator processes: make test runs these alone (pyproject.toml)

catch_up_deadline_s = 60    # a restarted node reaching the others' height (liveness, not speed)


def test_status_and_down_without_a_testnet_say_so(tmp_path):
    for command in (["status"], ["down"], ["kill", "hk-1"], ["logs", "hk-1"]):
        done = run_testnet(*command, "--dir", str(tmp_path))
        assert done.returncode == 1
        assert "no testnet in" in done.stderr and "Traceback" not in done.stderr


def test_up_refuses_a_busy_port_and_starts_nothing(tmp_path):
    base = ports.find_free_base_port(4)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ports.HOST, base + ports.PORT_BLOCK_SIZE + 2))  # rpc of node 3
        listener.listen()
        done = run_testnet("up", "--dir", str(tmp_path / "run"), "--base-port", str(base))
    assert done.returncode == 1
    assert f"port {base + ports.PORT_BLOCK_SIZE + 2} (rpc of node #3)" in done.stderr
    assert not (tmp_path / "run" / "testnet.json").exists()


def test_up_rejects_an_unsupported_size(tmp_path):
    done = run_testnet("up", "--dir", str(tmp_path), "--validators", "5")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_lifecycle_up_status_kill_restart_down(run_dir):
    base = ports.find_free_base_port(4)
    done = run_testnet("up", "--dir", str(run_dir), "--base-port", str(base))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is running (4 validators)" in done.stdout
    manifest_before = (run_dir / "testnet.json").read_bytes()

    status = status_json(run_dir)
    assert status["genesis"] == str(run_dir.resolve() / "genesis.json")
    assert Path(status["genesis"]).exists()
    assert sorted(status["participants"]) == ["hk-auditor", "hk-bank", "sz-credit-bureau"]
    assert sorted(status["governance"]) == ["CN", "HK"]
    assert all(Path(p).exists() for p in [*status["participants"].values(), *status["governance"].values()])
    nodes = {n["name"]: n for n in status["nodes"]}
    assert sorted(nodes) == ["cn-1", "cn-2", "hk-1", "hk-2"]
    assert sorted(n["jurisdiction"] for n in nodes.values()) == ["CN", "CN", "HK", "HK"]
    for node in nodes.values():
        assert {"name", "jurisdiction", "rpc", "p2p", "metrics", "data_dir", "pid", "height", "view"} <= set(node)
        assert node["rpc"].startswith("127.0.0.1:") and node["p2p"].startswith("127.0.0.1:")
        assert pid_exists(node["pid"])
        assert node["height"] >= 1, "the sample commitment was committed"
        assert Path(node["data_dir"]).is_dir()
    assert nodes["hk-1"]["rpc"] == f"127.0.0.1:{base + ports.PORT_BLOCK_SIZE}"

    # Up again while running: says so and changes nothing.
    again = run_testnet("up", "--dir", str(run_dir))
    assert again.returncode == 0 and "already running" in again.stdout
    assert (run_dir / "testnet.json").read_bytes() == manifest_before
    assert {n["name"]: n["pid"] for n in status_json(run_dir)["nodes"]} == {k: v["pid"] for k, v in nodes.items()}

    # kill -9 one node: its process is gone and status shows it stopped.
    killed = run_testnet("kill", "cn-2", "--dir", str(run_dir))
    assert killed.returncode == 0 and "killed" in killed.stdout
    assert not pid_exists(nodes["cn-2"]["pid"])
    assert {n["name"]: n["pid"] for n in status_json(run_dir)["nodes"]}["cn-2"] is None
    partial = run_testnet("up", "--dir", str(run_dir))
    assert "3 of 4 nodes up" in partial.stdout and "cn-2" in partial.stdout

    # The other three (2 HK + 1 CN: still a quorum with both jurisdictions) keep committing.
    sample = run_sample(Network.load(run_dir))
    assert sample["outputs"]["verify"].startswith("MATCH") and sample["height"] > nodes["cn-2"]["height"]

    # restart: a new process that answers and catches up with the block it missed.
    restarted = run_testnet("restart", "cn-2", "--dir", str(run_dir))
    assert restarted.returncode == 0, restarted.stderr
    deadline = time.monotonic() + catch_up_deadline_s
    while True:
        current = {n["name"]: n for n in status_json(run_dir)["nodes"]}
        heights = {name: n["height"] for name, n in current.items()}
        if heights["cn-2"] is not None and heights["cn-2"] >= sample["height"]:
            break
        assert time.monotonic() < deadline, f"cn-2 did not catch up: {heights}"
        time.sleep(0.5)
    assert current["cn-2"]["pid"] not in (None, nodes["cn-2"]["pid"])

    logs = run_testnet("logs", "cn-2", "--dir", str(run_dir), "-n", "5")
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 5

    # down: every pid gone, every pid file removed.
    pids = [n["pid"] for n in current.values()]
    down = run_testnet("down", "--dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert not any(pid_exists(p) for p in pids)
    assert not list(run_dir.glob("nodes/*/node.pid"))
    assert all(n["pid"] is None for n in status_json(run_dir)["nodes"])

    # up after down: the same network starts again from its data (nothing regenerated).
    genesis_before = Path(status["genesis"]).read_bytes()
    again = run_testnet("up", "--dir", str(run_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "restarting the stopped testnet" in again.stdout
    assert Path(status["genesis"]).read_bytes() == genesis_before
    assert min(n["height"] for n in status_json(run_dir)["nodes"]) > sample["height"]


def test_seven_validators_commit_the_sample(run_dir):
    # The larger size: 4 HK + 3 CN (f = 2), the sample commits and verifies, down stops all seven.
    done = run_testnet("up", "--dir", str(run_dir), "--validators", "7",
                       "--base-port", str(ports.find_free_base_port(7)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MATCH" in done.stdout
    nodes = status_json(run_dir)["nodes"]
    assert sorted(n["jurisdiction"] for n in nodes) == ["CN"] * 3 + ["HK"] * 4
    assert all(n["height"] >= 1 and pid_exists(n["pid"]) for n in nodes)
    assert run_testnet("down", "--dir", str(run_dir)).returncode == 0
    assert not any(pid_exists(n["pid"]) for n in nodes)
