"""Property tests: any method name and any msgpack params (hypothesis) get a result or a documented
error code, never "internal"; any msgpack value sent on a connection gets an error response or is
ignored, and the connection still answers a good request afterwards. Real ledger, memory streams."""

from __future__ import annotations

import msgpack
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, strategies as st

from node.rpc import RpcLimits, RpcServer

DOCUMENTED_CODES = {"parse-error", "message-too-large", "invalid-request", "method-not-found", "invalid-params",
                    "not-found", "bad-entry", "already-committed", "mempool-full", "timeout", "bad-signature",
                    "unauthorized", "replayed", "stale-query", "busy"}
METHODS = ["status", "validators", "header", "block", "submit", "match", "consistency", "participant", "nope"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=64))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(min_value=-2**63, max_value=2**64 - 1)), inner,
                                  max_size=5)),
    max_leaves=20)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(method=st.sampled_from(METHODS), params=st.lists(values, max_size=3))
def test_any_params_get_a_result_or_a_documented_error(node, method, params):
    server = RpcServer(node, RpcLimits(submit_wait_ms_max=0))

    async def call():
        return await server.call(method, params)
    error, result = trio.run(call)
    if error is not None:
        assert set(error) == {"code", "message"} and error["code"] in DOCUMENTED_CODES, error
        assert result is None


@FUZZ
@given(message=values)
def test_any_message_then_a_good_request_is_answered(node, message):
    server = RpcServer(node, RpcLimits(submit_wait_ms_max=0))

    async def exchange():
        client, server_side = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, server_side)
            await client.send_all(msgpack.packb(message, use_bin_type=True)
                                  + msgpack.packb([0, 4242, "status", []]))
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            answers = []
            with trio.fail_after(10):
                while not any(a[1] == 4242 for a in answers):
                    data = await client.receive_some(65536)
                    assert data, "connection closed before the good request was answered"
                    unpacker.feed(data)
                    answers.extend(unpacker)
            await client.aclose()
        return answers

    answers = trio.run(exchange)
    good = [a for a in answers if a[1] == 4242]
    assert len(good) == 1 and good[0][2] is None
    for answer in answers:
        assert answer[0] == 1 and len(answer) == 4
        if answer[1] != 4242:
            assert answer[2]["code"] in DOCUMENTED_CODES
