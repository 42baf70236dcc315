"""Who may call what (node.rpc_access, docs/PROTOCOL.md §8 Authentication), over real TCP on 127.0.0.1.

An anonymous connection gets the reduced status, challenge and authenticate only; a connection
authenticates once, by signing its own challenge, as a validator, a regulator (governance key), an
auditor or a participant; each role calls what the roles table says, participants act only as
themselves, and a participant suspended meanwhile loses its connection's role at its next call.
"""

from __future__ import annotations

import time

import nacl.signing
import pytest

from node.rpc_access import sign_authentication
from tests.support.rpc_helpers import NODE_ID, TEST_LIMITS, VALIDATOR, FakeNode, ServerThread, connect as connect_to, key_of, query
from storage.entries import build_admit, build_suspend
from storage.genesis import Participant

# The roles table of docs/PROTOCOL.md §8 (Authentication), method by method.
ROLES_TABLE = {
    "validators": ("auditor", "regulator", "validator"),
    "epochs": ("auditor", "regulator", "validator"),
    "epoch_steps": ("auditor", "regulator", "validator"),
    "header": ("auditor", "regulator", "validator"),
    "block": ("auditor", "regulator", "validator"),
    "participant": ("participant", "auditor", "regulator", "validator"),     # a participant: its own record only
    "consistency": ("auditor", "regulator", "validator"),
    "queries": ("auditor", "regulator", "validator"),
    "submit": ("participant", "auditor", "regulator", "validator"),
    "match": ("participant", "auditor", "validator"),
}


def sample_params(world, commitments) -> dict[str, list]:
    """Well-formed params for each method (what a caller allowed to call it would send)."""
    from tests.support.storage_helpers import Author, commitment

    bank = Author(world, "hk-bank")
    bank.nonce = 500
    return {
        "validators": [], "epochs": [], "epoch_steps": [1], "header": [1], "block": [1], "participant": ["hk-bank"], "consistency": [1, 5],
        "queries": [0],
        "submit": [bank.commit(commitment(800))], "match": [query(world, "hk-bank", commitments["active"])],
    }


def governance(world) -> list:
    return list(world.governance_keys.items())


def admit_auditor(world, nonce: int = 2) -> tuple[bytes, nacl.signing.SigningKey]:
    """A governance entry admitting hk-auditor (registry role "auditor"), and its key."""
    key = nacl.signing.SigningKey(bytes(range(32)))
    auditor = Participant(id="hk-auditor", jurisdiction="HK", role="auditor", public_key=bytes(key.verify_key))
    return build_admit(governance(world), world.chain_id, auditor, nonce, 1_700_000_000_000 + nonce), key


def unauthorized(error) -> str:
    assert error is not None and error["code"] == "unauthorized", error
    return error["message"]


# -- anonymous -------------------------------------------------------------------------------------

def test_anonymous_status_is_reduced_to_chain_node_height_version(connect, node):
    error, status = connect().call("status")
    full = node.status()
    assert error is None
    assert status == {"chain_id": full["chain_id"], "node_id": full["node_id"], "height": full["height"],
                      "version": full["version"]}
    assert status["height"] == 4 and status["node_id"] == NODE_ID


@pytest.mark.parametrize("method", sorted(ROLES_TABLE))
def test_anonymous_calls_are_unauthorized_and_name_the_roles(connect, world, commitments, method):
    connection = connect()
    message = unauthorized(connection.call(method, *sample_params(world, commitments)[method])[0])
    assert message.startswith(f"{method} needs the role ") and "challenge" in message and "not authenticated" in message
    named = message.removeprefix(f"{method} needs the role ").split(";")[0].split(" or ")
    assert sorted(named) == sorted(ROLES_TABLE[method]), message
    error, _ = connection.call("status")     # the connection stays open
    assert error is None


def test_the_table_is_enforced_for_every_role(connect, world, commitments, node):
    """Each role, on its own connection, is served exactly the methods of the roles table (with its own
    entries and queries where it has any) and refused the others naming the roles needed."""
    from tests.support.storage_helpers import Author, commitment

    entry, auditor_key = admit_auditor(world)
    node.commit_now([entry])
    world.participant_keys["hk-auditor"] = auditor_key   # so key_of finds it
    own = {"validator": VALIDATOR, "regulator": "hk-regulator-1", "auditor": "hk-auditor", "participant": "hk-bank"}
    for role, identity in own.items():
        connection = connect(identity)
        author = Author(world, identity) if role in ("auditor", "participant") else None
        for method, allowed in ROLES_TABLE.items():
            params = sample_params(world, commitments)[method]
            if method == "submit" and author is not None:
                author.nonce = 900
                params = [author.commit(commitment(900 + len(role)))]
            if method == "submit" and role == "regulator":
                params = [build_suspend(governance(world), world.chain_id, "hk-bureau", 3, 1_700_000_000_003)]
            if method == "match" and role in ("auditor", "participant"):
                params = [query(world, identity, commitments["active"])]
            error, result = connection.call(method, *params)
            if role in allowed:
                if method == "queries":      # allowed; this test node keeps no query log
                    assert error["code"] == "not-found" and "query log" in error["message"], error
                else:
                    assert error is None, (role, method, error)
            else:
                message = unauthorized(error)
                assert method in message and repr(identity) in message and f"({role})" in message
                assert all(needed in message for needed in allowed)


# -- the exchange ----------------------------------------------------------------------------------

@pytest.mark.parametrize("identity, role", [
    ("hk-1", "validator"), ("cn-2", "validator"), ("hk-regulator-1", "regulator"), ("cn-regulator-1", "regulator"),
    ("hk-bank", "participant"), ("hk-bureau", "participant"),
])
def test_challenge_then_authenticate_as_each_role(connect, world, identity, role):
    connection = connect()
    error, answer = connection.call("challenge")
    assert error is None and set(answer) == {"challenge", "node", "chain_id"}
    assert len(answer["challenge"]) == 32 and answer["node"] == NODE_ID and answer["chain_id"] == world.chain_id
    error, result = connection.call("authenticate", *sign_authentication(key_of(world, identity), identity, answer))
    assert error is None and result == {"identity": identity, "role": role}
    error, status = connection.call("status")
    assert error is None and {"tree_size", "tree_root", "peers", "view"} <= set(status)   # the full status


def test_an_auditor_is_a_participant_admitted_with_registry_role_auditor_and_reads_blocks(connect, world, commitments):
    """A regulator admits hk-auditor over RPC; hk-auditor authenticates as an auditor and reads blocks,
    headers and the registry, and asks its own queries."""
    entry, key = admit_auditor(world)
    error, receipt = connect("hk-regulator-1").call("submit", entry, {"wait": True})
    assert error is None and receipt["status"] == "committed", (error, receipt)
    auditor = connect()
    error, answer = auditor.call("challenge")
    error, result = auditor.call("authenticate", *sign_authentication(key, "hk-auditor", answer))
    assert error is None and result == {"identity": "hk-auditor", "role": "auditor"}
    error, block = auditor.call("block", 1)
    assert error is None and block["header"]["height"] == 1 and len(block["entries"]) == 2
    assert auditor.call("header", 2)[0] is None and auditor.call("participant", "hk-bank")[0] is None
    error, proof = auditor.call("match", query(world, "hk-auditor", commitments["active"], key=key))
    assert error is None and isinstance(proof, bytes)


def test_a_wrong_signature_is_bad_signature(connect, world):
    connection = connect()
    _, answer = connection.call("challenge")
    identity, public_key, signature = sign_authentication(key_of(world, "hk-1"), "hk-1", answer)
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    error, result = connection.call("authenticate", identity, public_key, forged)
    assert error["code"] == "bad-signature" and result is None
    unauthorized(connection.call("header", 1)[0])            # still anonymous


def test_a_signature_over_another_nodes_challenge_is_refused(server, connect, world, node):
    """A challenge answered by another node (hk-2), signed and relayed here: bad-signature; the same
    params are good at hk-2, for the connection that asked."""
    class OtherNode(FakeNode):
        def status(self) -> dict:
            return {**super().status(), "node_id": "hk-2"}

    other = ServerThread(OtherNode(world, node.ledger), TEST_LIMITS)
    try:
        there = connect_to(other.port)
        _, their_answer = there.call("challenge")
        assert their_answer["node"] == "hk-2"
        params = sign_authentication(key_of(world, "hk-1"), "hk-1", their_answer)
        here = connect()
        here.call("challenge")
        error, _ = here.call("authenticate", *params)
        assert error["code"] == "bad-signature"
        error, result = there.call("authenticate", *params)
        assert error is None and result["role"] == "validator"
        there.close()
    finally:
        other.stop()


@pytest.mark.parametrize("field, value", [("node", "hk-2"), ("chain_id", "other-chain"),
                                          ("challenge", bytes(32))])
def test_a_signature_naming_another_node_chain_or_challenge_is_refused(connect, world, field, value):
    connection = connect()
    _, answer = connection.call("challenge")
    params = sign_authentication(key_of(world, "hk-1"), "hk-1", {**answer, field: value})
    error, _ = connection.call("authenticate", *params)
    assert error["code"] == "bad-signature"


def test_a_challenge_is_good_for_one_attempt(connect, world):
    """A failed attempt spends the challenge: a correct signature over it afterwards is refused."""
    connection = connect()
    _, answer = connection.call("challenge")
    stranger = nacl.signing.SigningKey.generate()
    error, _ = connection.call("authenticate", *sign_authentication(stranger, "hk-1", answer))
    assert error["code"] == "unauthorized"
    error, _ = connection.call("authenticate", *sign_authentication(key_of(world, "hk-1"), "hk-1", answer))
    assert error["code"] == "invalid-request" and "challenge" in error["message"]
    _, fresh = connection.call("challenge")                  # a new challenge, a new attempt
    assert fresh["challenge"] != answer["challenge"]
    error, result = connection.call("authenticate", *sign_authentication(key_of(world, "hk-1"), "hk-1", fresh))
    assert error is None and result["role"] == "validator"


def test_a_later_challenge_replaces_the_earlier(connect, world):
    connection = connect()
    _, first = connection.call("challenge")
    _, second = connection.call("challenge")
    error, _ = connection.call("authenticate", *sign_authentication(key_of(world, "hk-1"), "hk-1", first))
    assert error["code"] == "bad-signature"


def test_authenticate_without_a_challenge_is_refused(connect, world):
    connection = connect()
    answer = {"challenge": bytes(32), "node": NODE_ID, "chain_id": world.chain_id}
    error, result = connection.call("authenticate", *sign_authentication(key_of(world, "hk-1"), "hk-1", answer))
    assert error["code"] == "invalid-request" and "challenge" in error["message"] and result is None


def test_an_authentication_cannot_be_moved_to_another_connection(connect, world):
    """Params signed over one connection's challenge do not authenticate another; nor does the first
    connection's authentication carry over."""
    first, second = connect(), connect()
    _, answer = first.call("challenge")
    params = sign_authentication(key_of(world, "hk-1"), "hk-1", answer)
    error, _ = second.call("authenticate", *params)                  # no challenge asked there
    assert error["code"] == "invalid-request"
    second.call("challenge")
    error, _ = second.call("authenticate", *params)                  # its own challenge is another
    assert error["code"] == "bad-signature"
    error, result = first.call("authenticate", *params)
    assert error is None and result["role"] == "validator"
    assert first.call("header", 1)[0] is None
    unauthorized(second.call("header", 1)[0])


def test_unknown_identity_wrong_key_and_suspended_get_the_same_answer(connect, world):
    """The registry is not for anonymous callers to probe: one message (but for the id it names)."""
    stranger = nacl.signing.SigningKey.generate()
    attempts = [("nobody", stranger), ("hk-bank", stranger), ("hk-1", stranger), ("hk-regulator-1", stranger),
                ("cn-bureau", world.participant_keys["cn-bureau"])]
    messages = set()
    for identity, key in attempts:
        connection = connect()
        _, answer = connection.call("challenge")
        message = unauthorized(connection.call("authenticate", *sign_authentication(key, identity, answer))[0])
        messages.add(message.replace(repr(identity), "ID"))
    assert len(messages) == 1, messages


def test_a_second_authenticate_on_a_connection_is_refused(connect, world):
    connection = connect("hk-bank")
    _, answer = connection.call("challenge")
    error, _ = connection.call("authenticate", *sign_authentication(key_of(world, "hk-1"), "hk-1", answer))
    assert error["code"] == "invalid-request" and "already authenticated" in error["message"]
    unauthorized(connection.call("header", 1)[0])            # still hk-bank, a participant


# -- what each role may do -------------------------------------------------------------------------

def test_a_participant_acts_as_itself_only_and_cannot_read_blocks(connect, world, commitments):
    from tests.support.storage_helpers import Author, commitment

    bank = connect("hk-bank")
    own = Author(world, "hk-bank")
    error, receipt = bank.call("submit", own.commit(commitment(801)), {"wait": True})
    assert error is None and receipt["status"] == "committed"
    error, proof = bank.call("match", query(world, "hk-bank", commitments["active"]))
    assert error is None and isinstance(proof, bytes)

    other = Author(world, "hk-bureau")
    other.nonce = 50
    message = unauthorized(bank.call("submit", other.commit(commitment(802)), {"wait": True})[0])
    assert "'hk-bank'" in message and "'hk-bureau'" in message
    message = unauthorized(bank.call("match", query(world, "hk-bureau", commitments["active"]))[0])
    assert "own queries" in message
    for method, params in (("block", [1]), ("header", [1]), ("participant", ["hk-bureau"]), ("validators", []),
                           ("consistency", [1, 2]), ("queries", [0])):
        message = unauthorized(bank.call(method, *params)[0])
        assert "auditor or regulator or validator" in message, message
    error, record = bank.call("participant", "hk-bank")          # its own registry record it may read
    assert error is None and record["id"] == "hk-bank" and record["status"] == "active"


def test_a_regulator_submits_governance_entries_but_not_a_participants(connect, world, commitments):
    from tests.support.storage_helpers import Author, commitment

    regulator = connect("hk-regulator-1")
    entry, _ = admit_auditor(world)
    error, receipt = regulator.call("submit", entry, {"wait": True})
    assert error is None and receipt["status"] == "committed"
    bank = Author(world, "hk-bank")
    message = unauthorized(regulator.call("submit", bank.commit(commitment(803)))[0])
    assert "'governance'" in message and "'hk-bank'" in message
    unauthorized(regulator.call("match", query(world, "hk-bank", commitments["active"]))[0])
    assert regulator.call("block", 1)[0] is None


def test_a_participant_suspended_after_it_authenticated_is_refused_at_its_next_call(connect, world, commitments):
    bank = connect("hk-bank")
    assert bank.call("match", query(world, "hk-bank", commitments["active"]))[0] is None
    suspend = build_suspend(governance(world), world.chain_id, "hk-bank", 2, 1_700_000_000_002)
    error, receipt = connect("hk-regulator-1").call("submit", suspend, {"wait": True})
    assert error is None and receipt["status"] == "committed"
    message = unauthorized(bank.call("match", query(world, "hk-bank", commitments["active"]))[0])
    assert "suspended" in message and "no longer authenticated" in message
    error, status = bank.call("status")                      # the connection is anonymous now
    assert error is None and set(status) == {"chain_id", "node_id", "height", "version"}


def test_a_query_naming_another_node_is_refused(connect, world, commitments):
    bank = connect("hk-bank")
    error, _ = bank.call("match", query(world, "hk-bank", commitments["active"], node="hk-2"))
    assert error["code"] == "invalid-params" and "'hk-2'" in error["message"]
    assert bank.call("match", query(world, "hk-bank", commitments["active"], node=NODE_ID))[0] is None


def test_a_query_signed_before_the_server_started_is_stale(server, connect, world, commitments):
    started = server.server.methods.started_ms
    assert abs(started - int(time.time() * 1000)) < TEST_LIMITS.query_window_ms   # inside the window
    bank = connect("hk-bank")
    error, _ = bank.call("match", query(world, "hk-bank", commitments["active"], time_ms=started - 1))
    assert error["code"] == "stale-query" and "before this node started" in error["message"]
    error, proof = bank.call("match", query(world, "hk-bank", commitments["active"], time_ms=started))
    assert error is None and isinstance(proof, bytes)


# -- hostile params --------------------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    lambda i, k, s: ("x" * 65, k, s),
    lambda i, k, s: ("x" * 6000, k, s),
    lambda i, k, s: ("", k, s),
    lambda i, k, s: (5, k, s),
    lambda i, k, s: (None, k, s),
    lambda i, k, s: (i.encode(), k, s),
    lambda i, k, s: ([i], k, s),
    lambda i, k, s: (i, k[:31], s),
    lambda i, k, s: (i, k + b"\x00", s),
    lambda i, k, s: (i, k.hex(), s),
    lambda i, k, s: (i, None, s),
    lambda i, k, s: (i, k, s[:63]),
    lambda i, k, s: (i, k, s + b"\x00"),
    lambda i, k, s: (i, k, s.hex()),
    lambda i, k, s: (i, k, {"sig": s}),
], ids=["identity-65", "identity-6000", "identity-empty", "identity-int", "identity-nil", "identity-bin",
        "identity-array", "key-31", "key-33", "key-str", "key-nil", "sig-63", "sig-65", "sig-str", "sig-map"])
def test_hostile_authenticate_params_are_invalid_params(connect, world, change):
    connection = connect()
    _, answer = connection.call("challenge")
    params = change(*sign_authentication(key_of(world, "hk-1"), "hk-1", answer))
    error, result = connection.call("authenticate", *params)
    assert error["code"] == "invalid-params" and result is None
    error, _ = connection.call("authenticate", *sign_authentication(key_of(world, "hk-1"), "hk-1", answer))
    assert error["code"] == "invalid-request"              # the hostile attempt spent the challenge
    unauthorized(connection.call("header", 1)[0])


@pytest.mark.parametrize("params", [[], ["hk-1"], ["hk-1", bytes(32)], ["hk-1", bytes(32), bytes(64), 1]])
def test_authenticate_with_the_wrong_number_of_params(connect, params):
    connection = connect()
    connection.call("challenge")
    error, _ = connection.call("authenticate", *params)
    assert error["code"] == "invalid-params" and "authenticate(identity" in error["message"]
    unauthorized(connection.call("header", 1)[0])


def test_challenge_takes_no_params(connect):
    error, _ = connect().call("challenge", 1)
    assert error["code"] == "invalid-params"
