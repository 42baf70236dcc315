"""`python -m testnet add-validator | rotate-key | remove-validator` (issue 17) with real daemons.

One 4-validator testnet (genesis margin 64 heights, so each change takes seconds) grows to 5
(cn-3 joins from an empty data dir), has hk-1's key rotated (the node restarted with the new key
afterwards still answers as hk-1) and loses cn-2 (stopped by pid, marked removed, never started
again by `up`); each command's error cases are checked on the way. The teardown stops every
node by pid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.keys import load_key_file
from storage.genesis import Genesis
from testnet import ports
from testnet.control import epoch_at
from testnet.network import NodeEntry
from tests.support.testnet_process import pid_exists, run_testnet, status_json

pytestmark = pytest.mark.slow   # real validator processes: make test runs these alone (pyproject.toml)


def nodes_of(run_dir: Path) -> dict[str, dict]:
    return {n["name"]: n for n in status_json(run_dir)["nodes"]}


def expect_error(run_dir: Path, *args: str, says: str) -> None:
    """The command fails with exit 1 and one line (the first) that says `says`."""
    done = run_testnet(*args, "--dir", str(run_dir))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert says in done.stderr.splitlines()[0], done.stderr
    assert "Traceback" not in done.stderr


def test_epoch_at_and_a_manifest_entry_without_membership():
    epochs = [{"epoch": 0, "start_height": 1}, {"epoch": 1, "start_height": 66}]
    assert [epoch_at(epochs, h) for h in (0, 64, 65, 66, None)] == [0, 0, 1, 1, None]
    entry = NodeEntry(name="hk-1", jurisdiction="HK", p2p="a", rpc="b", metrics="c", node_dir="/x")
    assert entry.membership == "genesis" and not entry.removed   # manifests written before issue 17


def test_commands_without_a_testnet_say_so(tmp_path):
    for command in (["add-validator", "cn-3", "--jurisdiction", "CN"], ["remove-validator", "cn-2"],
                    ["rotate-key", "hk-1"]):
        expect_error(tmp_path, *command, says="no testnet in")


def test_add_rotate_and_remove_validators(run_dir):
    base = ports.find_free_base_port(8)
    done = run_testnet("up", "--dir", str(run_dir), "--base-port", str(base), "--no-demo")
    assert done.returncode == 0, done.stderr

    # add-validator: 4 -> 5, the joiner caught up and the epoch started before it returns.
    expect_error(run_dir, "add-validator", "cn-3", "--jurisdiction", "XX", says="unknown jurisdiction 'XX'")
    expect_error(run_dir, "add-validator", "hk-1", "--jurisdiction", "HK", says="name hk-1 is already used")
    done = run_testnet("add-validator", "cn-3", "--jurisdiction", "CN", "--dir", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "epoch 1 (5 validators) starts at height" in done.stdout
    assert "cn-3 has caught up and is a validator" in done.stdout
    nodes = nodes_of(run_dir)
    assert nodes["cn-3"]["membership"] == "added" and nodes["cn-3"]["pid"]
    assert nodes["cn-3"]["p2p"].endswith(f":{base + 4}") and nodes["cn-3"]["rpc"].endswith(f":{base + 104}")
    assert nodes["cn-3"]["epoch"] == 1 and nodes["cn-3"]["height"] >= 65
    expect_error(run_dir, "add-validator", "cn-3", "--jurisdiction", "CN", says="name cn-3 is already used")

    # A refused change (HK would keep 1 validator of 4) changes nothing; the reason code is printed.
    expect_error(run_dir, "remove-validator", "hk-2", says="reconfigure-unsafe")
    assert nodes_of(run_dir)["hk-2"]["membership"] == "genesis" and nodes_of(run_dir)["hk-2"]["pid"]

    # rotate-key: hk-1 signs with a new key; key.json is the new key, the config has no spare left.
    hk1 = run_dir / "nodes" / "hk-1"
    genesis_key = Genesis.load(run_dir / "genesis.json").validator_set.get("hk-1").public_key
    done = run_testnet("rotate-key", "hk-1", "--dir", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "hk-1 signs with its new key" in done.stdout
    assert load_key_file(hk1 / "key.json").public_key != genesis_key
    assert load_key_file(hk1 / "key-retired-2.json").public_key == genesis_key
    assert "spare_key_files = []" in (hk1 / "config.toml").read_text()
    done = run_testnet("restart", "hk-1", "--dir", str(run_dir))     # starts with the new key only
    assert done.returncode == 0, done.stderr
    assert nodes_of(run_dir)["hk-1"]["epoch"] == 2

    # remove-validator: once the epoch without cn-2 started, its daemon is stopped and it is marked removed.
    cn2_pid = nodes_of(run_dir)["cn-2"]["pid"]
    done = run_testnet("remove-validator", "cn-2", "--dir", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "epoch 3 (4 validators)" in done.stdout and "marked removed" in done.stdout
    assert not pid_exists(cn2_pid)
    document = status_json(run_dir)
    assert [e["validators"] for e in document["epochs"]][-1] == ["hk-1", "cn-1", "hk-2", "cn-3"]
    nodes = {n["name"]: n for n in document["nodes"]}
    assert nodes["cn-2"]["membership"] == "removed" and nodes["cn-2"]["pid"] is None
    assert "(removed)" in run_testnet("status", "--dir", str(run_dir)).stdout
    expect_error(run_dir, "restart", "cn-2", says="cn-2 was removed")
    expect_error(run_dir, "remove-validator", "cn-2", says="cn-2 was removed")
    expect_error(run_dir, "add-validator", "cn-2", "--jurisdiction", "CN", says="a removed id never returns")

    # down, then: a change needs a running network; `up` starts the members only.
    assert run_testnet("down", "--dir", str(run_dir)).returncode == 0
    expect_error(run_dir, "add-validator", "cn-4", "--jurisdiction", "CN", says="is down")
    done = run_testnet("up", "--dir", str(run_dir), "--no-demo")
    assert done.returncode == 0, done.stderr
    nodes = nodes_of(run_dir)
    assert nodes["cn-2"]["pid"] is None and all(nodes[n]["pid"] for n in ("hk-1", "cn-1", "hk-2", "cn-3"))
