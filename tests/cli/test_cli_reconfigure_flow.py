"""A reconfiguration end to end through `bayledger`, against node.rpc over a real Ledger that follows
epochs (tests/cli/conftest.py's server; FakeNode commits each submitted entry in a certified block):
the outcome printed (the height the new epoch starts at), `cosign --submit`, the refusals reported
before and after sending, and what `validators` and `status` show once the new epoch has started.

The chain's margin is small here (MARGIN heights), so a test can reach the new epoch's start."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import one_line_error, run
from tests.support.storage_helpers import key_from, make_world

MARGIN = 3


@pytest.fixture
def world():
    return make_world(epoch_margin_heights=MARGIN)


def node(server) -> list[str]:
    return ["--node", f"127.0.0.1:{server.port}"]


def regulators(files, *which: str) -> list[str]:
    return [arg for key_id in which for arg in ("--key", files[key_id])] + ["--genesis", files["genesis"]]


BOTH = ("hk-regulator-1", "cn-regulator-1")


def add_hk3(world) -> list[str]:
    world.validator_keys["hk-3"] = key_from("validator hk-3")     # the new set certifies with it (next_block)
    return ["validator", "add", "hk-3", "--public-key", bytes(world.validator_keys["hk-3"].verify_key).hex(),
            "--jurisdiction", "HK", "--p2p", "10.0.0.7:26601", "--rpc", "10.0.0.7:26611"]


def accepted_start(out: str) -> tuple[int, int]:
    """(commit height, start height) from an ACCEPTED line."""
    commit = int(out.split("committed at height ")[1].split(",")[0])
    start = int(out.split("starts at height ")[1].split()[0])
    return commit, start


def test_add_is_accepted_and_says_where_the_epoch_starts(capsys, server, files, world):
    code, out, err = run(capsys, [*add_hk3(world), *node(server), *regulators(files, *BOTH)])
    assert code == 0 and out.startswith("ACCEPTED: add of validator hk-3 (HK): committed at height"), (out, err)
    commit, start = accepted_start(out)
    assert start == commit + MARGIN + 1 and "epoch 1 (5 validators)" in out
    assert f"(= {commit} + margin {MARGIN} + 1)" in out

    # Scheduled, not started: the node is in epoch 0; a second reconfiguration now is refused locally.
    code, out, err = run(capsys, ["validators", "--json", *node(server), "--key", files["hk-regulator-1"]])
    answer = json.loads(out)
    assert answer["epoch"] == 1 and answer["current_epoch"] == 0
    assert answer["epochs"][1]["scheduled_at"] == commit and answer["epochs"][1]["start_height"] == start
    assert answer["epochs"][1]["validators"][-1] == {
        "id": "hk-3", "jurisdiction": "HK", "p2p": "10.0.0.7:26601", "rpc": "10.0.0.7:26611",
        "public_key": bytes(world.validator_keys["hk-3"].verify_key).hex()}
    code, out, err = run(capsys, ["validator", "remove", "hk-3", *node(server), *regulators(files, *BOTH)])
    assert code == 1 and err.startswith("bayledger validator: reconfigure-pending: epoch 1 starts at height")
    assert one_line_error(err)

    # Once the new epoch has started, the node shows it current, and status names it.
    while server.api.ledger.height() < start:
        server.api.commit_now([])
    code, out, err = run(capsys, ["validators", *node(server), "--key", files["hk-regulator-1"]])
    assert code == 0 and out.startswith(f"current epoch 1 from height {start}: 5 validators"), (out, err)
    assert any(line.split()[:2] == ["hk-3", "HK"] for line in out.splitlines())
    history = out.splitlines()[-2:]
    assert history[0].split() == ["0", "1", "-", "4", "1"]
    assert history[1].split() == ["1", str(start), str(commit), "5", "1"]
    code, out, _ = run(capsys, ["status", "--json", "--rpc", f"127.0.0.1:{server.port}",
                                "--key", files["hk-regulator-1"]])
    assert json.loads(out)["epoch"] == 1


def test_a_reconfiguration_co_signed_in_turns(capsys, server, files, world, tmp_path):
    entry = tmp_path / "cn-2.entry"
    code, out, err = run(capsys, ["validator", "remove", "cn-2", "--out", str(entry), *node(server),
                                  *regulators(files, "hk-regulator-1")])
    assert code == 0 and "CN needs 1 more" in out, (out, err)
    code, out, err = run(capsys, ["cosign", str(entry), "--key", files["cn-regulator-1"], "--genesis",
                                  files["genesis"], "--rpc", f"127.0.0.1:{server.port}", "--submit"])
    assert code == 0 and out.startswith("ACCEPTED: reconfigure entry: committed at height"), (out, err)
    commit, start = accepted_start(out)
    assert start == commit + MARGIN + 1 and "epoch 1 (3 validators)" in out
    # The same entry again names a closed epoch: refused by the ledger, reason and its meaning printed.
    code, out, err = run(capsys, ["cosign", str(entry), "--key", files["cn-regulator-1"], "--genesis",
                                  files["genesis"], "--rpc", f"127.0.0.1:{server.port}", "--submit"])
    assert code == 1 and out.startswith("REFUSED: reconfigure entry:"), (out, err)


def test_a_refusal_by_the_ledger_is_printed_with_its_reason(capsys, server, files, world, tmp_path):
    """An entry written for epoch 0, submitted after another reconfiguration applied: the ledger
    refuses it (reconfigure-wrong-epoch, or reconfigure-pending while epoch 1 has not started)."""
    entry = tmp_path / "late.entry"
    code, _, err = run(capsys, ["validator", "remove", "cn-2", "--epoch", "0", "--out", str(entry),
                                *regulators(files, *BOTH)])
    assert code == 0, err
    code, out, err = run(capsys, [*add_hk3(world), *node(server), *regulators(files, *BOTH)])
    assert code == 0, err
    code, out, err = run(capsys, ["cosign", str(entry), "--key", files["hk-regulator-1"], "--genesis",
                                  files["genesis"], "--rpc", f"127.0.0.1:{server.port}", "--submit"])
    assert code == 1 and out.startswith("REFUSED: reconfigure entry: reconfigure-"), (out, err)
    assert "(" in out      # the reason's meaning follows the code


def test_a_rotated_out_key_never_returns(capsys, server, files, world):
    old_key = bytes(world.validator_keys["hk-1"].verify_key).hex()
    new_key = key_from("validator hk-1, second key")
    code, out, err = run(capsys, ["validator", "rotate-key", "hk-1", "--public-key", bytes(new_key.verify_key).hex(),
                                  *node(server), *regulators(files, *BOTH)])
    assert code == 0 and out.startswith("ACCEPTED: key rotation of validator hk-1"), (out, err)
    _, start = accepted_start(out)
    while server.api.ledger.height() < start - 1:
        server.api.commit_now([])
    world.validator_keys["hk-1"] = new_key      # epoch 1's blocks are certified with it (next_block)
    server.api.commit_now([])
    code, out, err = run(capsys, ["validator", "rotate-key", "hk-2", "--public-key", old_key, *node(server),
                                  *regulators(files, *BOTH)])
    assert code == 1 and err.startswith("bayledger validator: reconfigure-reused-key: ") and one_line_error(err)


def test_regulators_replace_a_key_and_the_new_key_signs_from_the_new_epoch(capsys, server, files, world, tmp_path):
    from node.keys import KeyPair, write_key_file

    new_hk = KeyPair.generate("hkma-2")
    write_key_file(tmp_path / "hkma-2.json", new_hk)
    rotate = ["governance", "rotate", "--jurisdiction", "HK", "--regulator", f"hkma-2:{new_hk.public_key.hex()}",
              "--threshold", "1"]
    code, out, err = run(capsys, [*rotate, *node(server), *regulators(files, *BOTH)])
    assert code == 0 and out.startswith("ACCEPTED: regulator keys of HK -> hkma-2 (threshold 1)"), (out, err)
    _, start = accepted_start(out)
    assert "epoch 1 (4 validators)" in out
    # The same change again, before the epoch starts: one at a time (pending), nothing sent.
    code, _, err = run(capsys, [*rotate, *node(server), *regulators(files, *BOTH)])
    assert code == 1 and "reconfigure-pending" in err and one_line_error(err)
    while server.api.ledger.height() < start:
        server.api.commit_now([])
    # From epoch 1 the old HK key signs nothing: refused locally with the node's current keys ...
    code, _, err = run(capsys, ["validator", "remove", "cn-2", *node(server), *regulators(files, *BOTH)])
    assert code != 0 and "hk-regulator-1" in err and one_line_error(err)
    # ... and the new one, with CN's, removes cn-2.
    new_signers = ["--key", str(tmp_path / "hkma-2.json"), "--key", files["cn-regulator-1"], "--genesis",
                   files["genesis"]]
    code, out, err = run(capsys, ["validator", "remove", "cn-2", *node(server), *new_signers])
    assert code == 0 and out.startswith("ACCEPTED: removal of validator cn-2"), (out, err)
    code, out, _ = run(capsys, ["validators", "--json", *node(server), "--key", str(tmp_path / "hkma-2.json")])
    governance = json.loads(out)["epochs"][1]["governance"]
    assert [key["id"] for key in governance["HK"]["keys"]] == ["hkma-2"]


def test_a_regulator_key_held_twice_is_refused_before_sending(capsys, server, files, world):
    cn_key = world.genesis.governance.keys["CN"][0]
    code, _, err = run(capsys, ["governance", "rotate", "--jurisdiction", "HK", "--regulator",
                                f"hk-copy:{cn_key.public_key.hex()}", "--threshold", "1", *node(server),
                                *regulators(files, *BOTH)])
    assert code == 1 and err.startswith("bayledger governance: reconfigure-duplicate-key") and one_line_error(err)
    code, _, err = run(capsys, ["governance", "rotate", "--jurisdiction", "HK", "--regulator",
                                f"hk-copy:{cn_key.public_key.hex()}", "--threshold", "2", *node(server),
                                *regulators(files, *BOTH)])
    assert code == 2 and "threshold" in err and one_line_error(err)
