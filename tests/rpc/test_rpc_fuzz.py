"""Property tests: any method name and any msgpack params (hypothesis), called by an anonymous
connection or one authenticated in any role, get a result or a documented error code, never
"internal"; an anonymous connection gets nothing but status, challenge and authenticate;
`authenticate` with hostile params after a genuine challenge never authenticates and never fails
inside; any msgpack value sent on a connection gets an error response or is ignored, and the
connection still answers a good request afterwards. Real ledger, memory streams."""

from __future__ import annotations

import msgpack
import nacl.signing
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, strategies as st

from node.rpc import RpcLimits, RpcServer
from node.rpc_access import PUBLIC_METHODS, PUBLIC_STATUS_FIELDS, Session, sign_authentication
from tests.support.rpc_helpers import VALIDATOR, authenticated_session, key_of

DOCUMENTED_CODES = {"parse-error", "message-too-large", "invalid-request", "method-not-found", "invalid-params",
                    "not-found", "bad-entry", "already-committed", "mempool-full", "timeout", "bad-signature",
                    "unauthorized", "replayed", "stale-query", "busy"}
METHODS = ["status", "challenge", "authenticate", "validators", "header", "block", "submit", "match", "consistency",
           "participant", "queries", "nope"]
# Who calls: None is an anonymous connection; the others authenticate by the real exchange first.
CALLERS = [None, VALIDATOR, "hk-regulator-1", "hk-bank"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=64))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(min_value=-2**63, max_value=2**64 - 1)), inner,
                                  max_size=5)),
    max_leaves=20)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_error(error, result) -> None:
    if error is not None:
        assert set(error) == {"code", "message"} and error["code"] in DOCUMENTED_CODES, error
        assert result is None


@FUZZ
@given(method=st.sampled_from(METHODS), params=st.lists(values, max_size=3), caller=st.sampled_from(CALLERS))
def test_any_params_get_a_result_or_a_documented_error(node, method, params, caller):
    server = RpcServer(node, RpcLimits(submit_wait_ms_max=0))

    async def call():
        session = Session() if caller is None else await authenticated_session(server, node.world, caller)
        return session, await server.call(method, params, session)
    session, (error, result) = trio.run(call)
    _check_error(error, result)
    if caller is None:
        if method not in PUBLIC_METHODS and method != "nope":
            assert error["code"] == "unauthorized", (method, error)     # before any look at the params
        if method == "status" and error is None:
            assert set(result) == set(PUBLIC_STATUS_FIELDS)
        if method == "authenticate":
            assert error is not None and not session.authenticated    # no challenge was asked for
    elif method == "authenticate":
        assert error is not None and session.identity == caller      # a connection authenticates once


# Hostile values for each authenticate param, and well-formed ones (so that a later check is reached).
identities = st.one_of(values, st.text(min_size=1, max_size=80), st.sampled_from(["hk-1", "hk-bank", "cn-bureau",
                                                                                    "hk-regulator-1", "x" * 64]))
keys = st.one_of(values, st.binary(min_size=31, max_size=33))
signatures = st.one_of(values, st.binary(min_size=63, max_size=65))


@FUZZ
@given(params=st.one_of(st.lists(values, max_size=5), st.tuples(identities, keys, signatures).map(list)))
def test_authenticate_with_hostile_params_after_a_challenge_never_authenticates(node, params):
    server = RpcServer(node, RpcLimits(submit_wait_ms_max=0))

    async def call():
        session = Session()
        error, _ = await server.call("challenge", [], session)
        assert error is None
        answer = await server.call("authenticate", params, session)
        return session, answer
    session, (error, result) = trio.run(call)
    _check_error(error, result)
    assert error is not None and not session.authenticated
    if len(params) == 3:
        assert session.challenge is None          # the attempt spent the challenge, whatever was wrong with it


@FUZZ
@given(identity=st.one_of(st.text(max_size=100), st.sampled_from(["hk-1", "hk-bank", "cn-bureau", "hk-regulator-1"])),
       seed=st.binary(min_size=32, max_size=32))
def test_a_genuine_signature_by_a_key_not_on_record_never_authenticates(node, identity, seed):
    """Correctly signed over the real challenge, for any identity, by a key that is not that identity's:
    refused (invalid-params for an identity out of range, else unauthorized), never authenticated."""
    server = RpcServer(node, RpcLimits(submit_wait_ms_max=0))
    key = nacl.signing.SigningKey(seed)

    async def call():
        session = Session()
        _, answer = await server.call("challenge", [], session)
        return session, await server.call("authenticate", sign_authentication(key, identity, answer), session)
    session, (error, result) = trio.run(call)
    _check_error(error, result)
    assert error["code"] in ("invalid-params", "unauthorized") and not session.authenticated
    if error["code"] == "invalid-params":
        assert not 0 < len(identity) <= 64


@FUZZ
@given(message=values, authenticated=st.booleans())
def test_any_message_then_a_good_request_is_answered(node, message, authenticated):
    server = RpcServer(node, RpcLimits(submit_wait_ms_max=0))

    async def exchange():
        client, server_side = trio.testing.memory_stream_pair()
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        answers = []

        async def until_answered(msgid: int) -> list:
            with trio.fail_after(10):
                while not any(a[1] == msgid for a in answers):
                    data = await client.receive_some(65536)
                    assert data, f"connection closed before request {msgid} was answered"
                    unpacker.feed(data)
                    answers.extend(unpacker)
            return next(a for a in answers if a[1] == msgid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, server_side)
            if authenticated:
                await client.send_all(msgpack.packb([0, 4240, "challenge", []]))
                challenge = (await until_answered(4240))[3]
                params = sign_authentication(key_of(node.world, VALIDATOR), VALIDATOR, challenge)
                await client.send_all(msgpack.packb([0, 4241, "authenticate", params], use_bin_type=True))
                assert (await until_answered(4241))[2] is None
            await client.send_all(msgpack.packb(message, use_bin_type=True)
                                  + msgpack.packb([0, 4242, "header" if authenticated else "status",
                                                   [1] if authenticated else []]))
            await until_answered(4242)
            await client.aclose()
        return answers

    answers = trio.run(exchange)
    good = [a for a in answers if a[1] == 4242]
    assert len(good) == 1 and good[0][2] is None
    for answer in answers:
        assert answer[0] == 1 and len(answer) == 4
        if answer[1] not in (4240, 4241, 4242):
            assert answer[2]["code"] in DOCUMENTED_CODES
