"""A reconfiguration through `bayledger` against real daemon processes (tests/support/node_cluster.py:
hk-1, hk-2, cn-1, cn-2 over TLS, the default margin of 1024 heights): the regulators add a validator,
the CLI prints where epoch 1 starts, every node reports it scheduled (not started), and a second
change is refused locally while it is pending. The daemons do not follow the set's transport yet
(docs/OPERATIONS.md §9), so the test stays before the start height."""

from __future__ import annotations

import json

import pytest

from consensus.epochs import MARGIN_HEIGHTS_DEFAULT
from node.keys import KeyPair, write_key_file
from tests.support.cli import one_line_error, run

pytestmark = pytest.mark.slow


def test_regulators_add_a_validator_to_running_daemons(network, tmp_path, capsys):
    keys, genesis = network.keys_dir, str(network.genesis_path)
    node = {node_id: ["--node", f"127.0.0.1:{handle.rpc}", "--ca", str(network.ca_path)]
            for node_id, handle in network.nodes.items()}
    regulators = ["--key", str(keys / "gov-hk.json"), "--key", str(keys / "gov-cn.json"), "--genesis", genesis]
    newcomer = tmp_path / "hk-3.json"
    write_key_file(newcomer, KeyPair.generate("hk-3"))

    code, out, err = run(capsys, ["validator", "add", "hk-3", "--public-key-file", str(newcomer),
                                  "--jurisdiction", "HK", "--p2p", "127.0.0.1:1", "--rpc", "127.0.0.1:2",
                                  *node["cn-1"], *regulators])
    assert code == 0 and out.startswith("ACCEPTED: add of validator hk-3 (HK)"), (out, err)
    commit = int(out.split("committed at height ")[1].split(",")[0])
    start = int(out.split("starts at height ")[1].split()[0])
    assert start == commit + MARGIN_HEIGHTS_DEFAULT + 1

    network.wait_height(["hk-1", "hk-2", "cn-2"], commit)
    for node_id in ("hk-1", "cn-2"):
        code, out, err = run(capsys, ["validators", "--json", *node[node_id], "--key", str(keys / "gov-hk.json")])
        answer = json.loads(out)
        assert code == 0 and answer["epoch"] == 1 and answer["current_epoch"] == 0, (node_id, out, err)
        assert answer["epochs"][1]["start_height"] == start and answer["epochs"][1]["validators"][-1]["id"] == "hk-3"
        code, out, _ = run(capsys, ["status", "--json", "--rpc", node[node_id][1], "--ca", str(network.ca_path),
                                    "--key", str(keys / "gov-hk.json")])
        assert json.loads(out)["epoch"] == 0

    code, out, err = run(capsys, ["validator", "remove", "cn-2", *node["hk-2"], *regulators])
    assert code == 1 and "reconfigure-pending" in err and one_line_error(err), (out, err)
