"""The `validators` RPC method and `status`'s `epoch` (issue 17) over a real Ledger that follows epochs,
and node.validators_view: the answer read back is the ledger's schedule, with the ledger's checks."""

from __future__ import annotations

import pytest

from consensus.epochs import AddValidator, RemoveValidator, RotateValidatorKey
from consensus.validators import Validator
from node.cli import CliError
from node.cli.validators import NodeView, _check_locally
from node.validators_view import ValidatorsResultError, applied_epoch, schedule_of, epochs_result
from node.rpc_access import sign_authentication
from tests.support.rpc_helpers import Connection, FakeNode
from tests.support.storage_helpers import key_from, make_world, reconfigure

MARGIN = 2


@pytest.fixture
def world():
    return make_world(epoch_margin_heights=MARGIN)


def _add(world, validator_id: str) -> AddValidator:
    world.validator_keys[validator_id] = key_from(f"validator {validator_id}")
    return AddValidator(Validator(validator_id, bytes(world.validator_keys[validator_id].verify_key),
                                  validator_id[:2].upper()))


def test_validators_before_any_reconfiguration_is_the_genesis_set(connect, world):
    error, answer = connect("hk-regulator-1").call("epochs")
    assert error is None
    assert answer == {"epoch": 0, "current_epoch": 0, "margin_heights": MARGIN, "epochs": [{
        "epoch": 0, "start_height": 1, "scheduled_at": 0, "min_signers_per_jurisdiction": 1,
        "validators": [{"id": v.id, "public_key": v.public_key, "jurisdiction": v.jurisdiction,
                        "p2p": world.genesis.validator_addresses[v.id]["p2p"],
                        "rpc": world.genesis.validator_addresses[v.id]["rpc"]}
                       for v in world.genesis.validator_set.validators],
        "governance": world.genesis.governance.to_wire()}]}
    error, status = connect("hk-1").call("status")
    assert error is None and status["epoch"] == 0


@pytest.mark.parametrize("identity", [None, "hk-bank"])
def test_validators_is_for_readers_and_anonymous_status_has_no_epoch(connect, identity):
    connection = connect(identity)
    error, result = connection.call("epochs")
    assert error["code"] == "unauthorized" and result is None
    if identity is None:
        error, status = connection.call("status")
        assert error is None and "epoch" not in status


def test_validators_and_status_follow_a_reconfiguration(node, connect, world):
    hk3 = _add(world, "hk-3")
    [outcome] = node.commit_now([reconfigure(world, 0, [hk3], {"hk-3": {"p2p": "h3:1", "rpc": "h3:2"}})])
    assert outcome.ok, outcome
    commit = node.ledger.height()
    start = commit + MARGIN + 1
    reader = connect("cn-regulator-1")
    error, answer = reader.call("epochs")
    assert error is None and answer["epoch"] == 1 and answer["current_epoch"] == 0
    assert answer["epochs"][1]["scheduled_at"] == commit and answer["epochs"][1]["start_height"] == start
    assert answer["epochs"][1]["validators"][-1] == {"id": "hk-3", "public_key": hk3.validator.public_key,
                                                     "jurisdiction": "HK", "p2p": "h3:1", "rpc": "h3:2"}
    while node.ledger.height() < start - 1:
        node.commit_now([])
    # The head is the last block of epoch 0; the next height is epoch 1's first.
    assert reader.call("epochs")[1]["current_epoch"] == 1 and reader.call("status")[1]["epoch"] == 0
    node.commit_now([])
    assert reader.call("status")[1]["epoch"] == 1


def test_the_answer_reads_back_as_the_ledgers_schedule(node, world):
    node.commit_now([reconfigure(world, 0, [RemoveValidator("cn-2")])])
    epochs = node.ledger.epochs
    answer = epochs_result(epochs, node.ledger.height())
    assert schedule_of(answer) == epochs.schedule
    assert schedule_of(answer).retired_ids == {"cn-2"}
    assert applied_epoch(epochs, 0) == 0 and applied_epoch(epochs, node.ledger.height()) == 0


@pytest.mark.parametrize("spoil", [
    lambda a: a.pop("epochs"),
    lambda a: a["epochs"][0].update(start_height=2),
    lambda a: a["epochs"][0]["validators"][0].update(public_key=b"short"),
    lambda a: a.update(margin_heights=0),
])
def test_an_answer_that_is_no_schedule_is_refused(world, ledger, spoil):
    answer = epochs_result(ledger.epochs, 0)
    spoil(answer)
    with pytest.raises(ValidatorsResultError):
        schedule_of(answer)


def _view(world, ledger, height: int) -> NodeView:
    return NodeView(epochs_result(ledger.epochs, height), height, "node")


def test_the_local_check_is_the_ledgers_rule(world, ledger):
    """From the node's answer alone, the CLI refuses what the ledger would (consensus.epochs' rule, with
    the retired ids and keys of the whole history), e.g. an unsafe set."""
    node = FakeNode(world, ledger)
    node.commit_now([reconfigure(world, 0, [_add(world, "hk-3")], {"hk-3": {"p2p": "h:1", "rpc": "h:2"}})])
    while ledger.height() < ledger.epochs.schedule.latest.start_height:
        node.commit_now([])
    view = _view(world, ledger, ledger.height())
    # 3 HK and 2 CN, f = 1: without cn-2 the CN side has 1 < min 1 + f 1.
    with pytest.raises(CliError) as refused:
        _check_locally(view, 1, (RemoveValidator("cn-2"),), submitting=True)
    assert str(refused.value).startswith("reconfigure-unsafe: ") and refused.value.code == 1
    with pytest.raises(CliError) as refused:
        _check_locally(view, 1, (RotateValidatorKey("hk-3", bytes(world.validator_keys["hk-1"].verify_key)),),
                       submitting=True)
    assert str(refused.value).startswith("reconfigure-duplicate-key: ")
    _check_locally(view, 1, (RemoveValidator("hk-3"),), submitting=True)     # safe: back to 2 and 2


def test_a_pending_epoch_is_refused_when_submitting_and_noted_when_writing(world, ledger, capsys):
    node = FakeNode(world, ledger)
    node.commit_now([reconfigure(world, 0, [RemoveValidator("cn-2")])])
    view = _view(world, ledger, ledger.height())
    with pytest.raises(CliError) as refused:
        _check_locally(view, 1, (RemoveValidator("hk-2"),), submitting=True)
    assert str(refused.value).startswith("reconfigure-pending: epoch 1 starts at height")
    _check_locally(view, 1, (RemoveValidator("hk-2"),), submitting=False)
    assert "note: reconfigure-pending" in capsys.readouterr().err


def test_rpc_validator_roles_follow_the_current_set(node, connect, world, server):
    """Who authenticates as a validator is the current epoch's set: an added validator from its epoch's
    start, not a removed one (its open connection turns anonymous), a rotated key instead of the old."""
    hk3 = _add(world, "hk-3")
    new_hk1 = key_from("validator hk-1, second key")
    removed = connect("hk-2")
    old_hk1 = world.validator_keys["hk-1"]
    [outcome] = node.commit_now([reconfigure(world, 0, [hk3, RemoveValidator("hk-2"), RotateValidatorKey(
        "hk-1", bytes(new_hk1.verify_key))], {"hk-3": {"p2p": "h3:1", "rpc": "h3:2"}})])
    assert outcome.ok, outcome

    def authenticates(identity, key) -> bool:
        connection = Connection(server.port)
        try:
            error, answer = connection.call("challenge")
            error, result = connection.call("authenticate", *sign_authentication(key, identity, answer))
            return error is None and result["role"] == "validator"
        finally:
            connection.close()

    assert not authenticates("hk-3", world.validator_keys["hk-3"])      # scheduled, not started
    assert removed.call("epochs")[0] is None
    while node.ledger.height() < node.ledger.epochs.schedule.latest.start_height - 1:
        node.commit_now([])
    world.validator_keys["hk-1"] = new_hk1       # epoch 1's blocks are certified with it (next_block)
    node.commit_now([])
    assert authenticates("hk-3", world.validator_keys["hk-3"])
    assert authenticates("hk-1", new_hk1) and not authenticates("hk-1", old_hk1)
    assert not authenticates("hk-2", key_from("validator hk-2"))
    error, _ = removed.call("epochs")
    assert error["code"] == "unauthorized" and "no longer a validator" in error["message"]
    assert removed.call("epochs")[0]["code"] == "unauthorized"       # anonymous now


def test_a_consistency_proof_across_epochs_checks_from_rpc_answers_and_genesis_alone(node, connect, world):
    """header + consistency + epoch_steps, over the RPC, verify with the genesis file and nothing else."""
    from storage.genesis import Genesis
    from storage.proofs import verify_consistency_proof

    older_height = node.ledger.height()
    node.commit_now([reconfigure(world, 0, [RemoveValidator("cn-2")])])
    while node.ledger.height() < node.ledger.epochs.schedule.latest.start_height:
        node.commit_now([])
    newer_height = node.ledger.height()
    reader = connect("hk-regulator-1")
    older, newer = reader.call("header", older_height)[1], reader.call("header", newer_height)[1]
    assert newer["header"]["epoch"] == 1
    error, consistency = reader.call("consistency", older["header"]["tree_size"], newer["header"]["tree_size"])
    assert error is None
    error, steps = reader.call("epoch_steps", newer_height)
    assert error is None and len(steps) == 1 and reader.call("epoch_steps", older_height)[1] == []
    genesis = Genesis.from_json(world.genesis.to_json())
    pick = lambda answer: {"header": answer["header"], "certificate": answer["certificate"]}  # noqa: E731
    verdict = verify_consistency_proof(pick(older), pick(newer), consistency["proof"], genesis, epochs=steps)
    assert verdict.valid, verdict
    assert not verify_consistency_proof(pick(older), pick(newer), consistency["proof"], genesis).valid
    assert reader.call("epoch_steps", newer_height + 1)[0]["code"] == "not-found"
