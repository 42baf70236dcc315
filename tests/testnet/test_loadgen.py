"""The load generator's machinery against a small msgpack-RPC server on 127.0.0.1.

The server answers out of order (later requests first) and fails every tenth
call, so the tests check that replies are matched by msgid, that every sent
request is accounted for as ok or as an error, and that the open loop sends
exactly rate x duration requests. No assertion on speed.
"""

from __future__ import annotations

import functools
import json

import msgpack
import pytest
import trio

from testnet import bench, loadgen, rpc


async def serve_rpc(stream: trio.SocketStream) -> None:
    unpacker = msgpack.Unpacker(raw=False)
    async with trio.open_nursery() as nursery:
        lock = trio.Lock()

        async def answer(msgid: int, method: str, params: list) -> None:
            # Later ids answer sooner: replies arrive out of order on the connection.
            await trio.sleep(0.002 * (3 - msgid % 3))
            if method == "submit" and params[0] < 0:
                await trio.sleep_forever()   # a request the node never answers
            if method == "submit" and params[0] % 10 == 9:
                reply = [1, msgid, {"code": "mempool-full", "message": "retry later"}, None]
            elif method == "submit":
                reply = [1, msgid, None, {"status": "committed", "n": params[0]}]
            else:
                reply = [1, msgid, {"code": "no-such-method", "message": method}, None]
            async with lock:
                await stream.send_all(msgpack.packb(reply, use_bin_type=True))

        while True:
            data = await stream.receive_some(65536)
            if not data:
                nursery.cancel_scope.cancel()
                return
            unpacker.feed(data)
            for request in unpacker:
                _, msgid, method, params = request
                nursery.start_soon(answer, msgid, method, params)


@pytest.fixture
async def server_address(nursery):
    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve_rpc, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"127.0.0.1:{port}"


async def test_pipelined_calls_are_matched_by_msgid(server_address):
    host, _, port = server_address.rpartition(":")
    connection = await rpc.PipelinedConnection.open(host, int(port))
    results = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.reader)

        async def one(n: int) -> None:
            try:
                results[n] = (await connection.call("submit", [n]))["n"]
            except rpc.RpcError as exc:
                results[n] = exc.code

        async with trio.open_nursery() as calls:
            for n in range(30):
                calls.start_soon(one, n)
        with pytest.raises(rpc.RpcError, match="no-such-method"):
            await connection.call("nothing", [])
        await connection.aclose()
        nursery.cancel_scope.cancel()
    assert results == {n: ("mempool-full" if n % 10 == 9 else n) for n in range(30)}


async def test_call_to_a_closed_port_is_a_clear_error():
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(rpc.ConnectionLost, match="cannot connect"):
        await rpc.call_async("127.0.0.1", port, "status", [], timeout_s=2)


async def test_closed_loop_accounts_for_every_request(server_address):
    requests = [rpc.pack_call("submit", [n]) for n in range(400)]
    queues = [requests[i::3] for i in range(3)]
    result = await loadgen.closed_loop("t", [server_address], queues, loadgen._accept_submit,
                                       duration_s=5, window=4)
    # All 400 are used up well before 5 s; each is ok or an error, none lost.
    assert result.sent == 400
    assert result.ok == 360 and result.errors == {"mempool-full": 40}
    assert result.dropped == 0
    assert len(result.latencies_s) == 360
    assert json.loads(json.dumps(result.to_json()))["latency"]["count"] == 360
    # The rate is over the time the queues lasted, not the idle rest of the 5 s: counting until
    # the phase's end would give (the oks after a 1 s warm-up) / 4 s, about nothing.
    assert 0 < result.measured_s < 4
    assert 0 < result.counted_ok <= 360 and result.rate_per_s > 360 / 4


async def answer_five_then_close(stream: trio.SocketStream) -> None:
    unpacker = msgpack.Unpacker(raw=False)
    answered = 0
    while answered < 5:
        unpacker.feed(await stream.receive_some(65536))
        for _, msgid, _, params in unpacker:
            if answered < 5:
                await stream.send_all(msgpack.packb([1, msgid, None, {"status": "committed"}]))
                answered += 1
    await stream.aclose()


@pytest.fixture
async def closing_address(nursery):
    """A node that answers five requests and then closes the connection."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, answer_five_then_close, 0, host="127.0.0.1"))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_closed_loop_counts_requests_on_a_dropped_connection_as_lost(closing_address):
    """The answers that arrive before the node closes the connection are ok, every other request
    sent is "connection-lost", and the phase ends rather than waiting."""
    address = closing_address
    requests = [rpc.pack_call("submit", [n]) for n in range(100)]
    with trio.fail_after(10):
        result = await loadgen.closed_loop("t", [address], [requests], loadgen._accept_submit, duration_s=5, window=8)
    # Up to five are ok: an answer still in flight when the node's close resets the connection is lost.
    assert 1 <= result.ok <= 5 and result.sent >= 8
    assert result.errors == {"connection-lost": result.sent - result.ok}


async def test_open_loop_counts_requests_on_a_dropped_connection_as_lost(closing_address, server_address):
    """One of two connections closes after five answers: its requests in flight and those scheduled
    later are "connection-lost", the other connection is served to the end, every scheduled
    request is accounted for, and the phase ends without waiting out the drain."""
    requests = [rpc.pack_call("submit", [n]) for n in range(200)]
    queues = [requests[0::2], requests[1::2]]      # queue 0 to the closing node, 1 to the other
    with trio.fail_after(5):
        result = await loadgen.open_loop("t", [closing_address, server_address], queues, loadgen._accept_submit,
                                         rate_per_s=400, duration_s=0.5)
    assert result.sent == 200 and result.dropped == 0
    lost = result.errors["connection-lost"]
    assert 95 <= lost <= 100 and 1 <= 100 - lost <= 5
    assert result.errors["mempool-full"] == 20      # the other node refuses n % 10 == 9: 20 of its 100
    assert result.ok == 200 - lost - 20 and "no-answer" not in result.errors


async def test_open_loop_sends_rate_times_duration(server_address):
    requests = [rpc.pack_call("submit", [n]) for n in range(1000)]
    queues = [requests[i::2] for i in range(2)]
    result = await loadgen.open_loop("t", [server_address], queues, loadgen._accept_submit,
                                     rate_per_s=200, duration_s=0.5)
    assert result.sent == 100
    assert result.ok + sum(result.errors.values()) == 100
    assert result.errors["mempool-full"] == 10
    assert all(latency >= 0 for latency in result.latencies_s)


def test_submit_replies_are_classified():
    assert loadgen._accept_submit({"status": "committed", "height": 3}) == "ok"
    assert loadgen._accept_submit({"status": "rejected", "reason": "x"}) == "status-rejected"
    assert loadgen._accept_submit("garbage") == "bad-reply"


def test_profile_summary_and_plot(tmp_path):
    raw = tmp_path / "profile.raw"
    raw.write_text("main;drive;apply 30\nmain;drive;sign 60\nmain;idle 10\n")
    bench.summarize_profile(raw, tmp_path / "summary.txt")
    summary = (tmp_path / "summary.txt").read_text()
    assert "100 samples" in summary
    assert "  60.0  sign" in summary
    assert "  90.0  drive" in summary  # inclusive share of the caller
    results = {"p50_ms": {"250": 10.0, "500": 12.0}, "p95_ms": {"250": 20.0, "500": 30.0},
               "p99_ms": {"250": 40.0, "500": 90.0}, "validators": 4, "commits_per_s": 1000.0,
               "capacity_p99_100ms_per_s": 500.0, "capacity_p99_250ms_per_s": 0.0,   # 0: no line drawn
               "machine": {"cpus": 2}}
    png = tmp_path / "latency.png"
    try:
        import matplotlib  # noqa: F401  (the `bench` extra; `make test` does not install it)
        del matplotlib
    except ModuleNotFoundError:
        assert bench.plot(results, png) is False and not png.exists()
    else:
        assert bench.plot(results, png) is True
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_directory_bytes_counts_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 23)
    assert bench.directory_bytes(tmp_path) == 123


def test_presigned_submits_give_each_author_rising_unique_nonces(tmp_path):
    # Lane i is signed by provider i mod 2; per author the nonces are unique and rise along
    # each lane, which keeps concurrent submits inside the ledger's nonce window.
    import msgpack as _msgpack

    from node.keys import KeyPair, write_key_file
    from storage.entries import check_entry, decode_entry
    from testnet import workload

    providers = []
    for name in ("p-1", "p-2"):
        write_key_file(tmp_path / f"{name}.json", KeyPair.generate(name))
        providers.append({"name": name, "key": str(tmp_path / f"{name}.json"), "jurisdiction": "CN"})
    plan = {"chain_id": "bench-chain", "providers": providers}
    queues, commitments = workload.presigned_submits(plan, 10, 4, wait_s=5)
    assert [len(q) for q in queues] == [3, 3, 2, 2]
    assert len(set(commitments)) == 10
    nonces: dict[str, list[int]] = {"p-1": [], "p-2": []}
    for lane, queue in enumerate(queues):
        lane_nonces = []
        for packed in queue:
            unpacker = _msgpack.Unpacker(raw=False)
            unpacker.feed(packed)
            method, params = list(unpacker)
            assert method == workload.SUBMIT_METHOD
            entry = decode_entry(params[0])
            assert check_entry(params[0]) is None
            assert entry.author == providers[lane % 2]["name"] and entry.chain_id == "bench-chain"
            lane_nonces.append(entry.nonce)
        assert lane_nonces == sorted(lane_nonces)
        nonces[providers[lane % 2]["name"]] += lane_nonces
    for author_nonces in nonces.values():
        assert len(set(author_nonces)) == len(author_nonces) == 5


async def test_open_loop_counts_sends_beyond_the_in_flight_bound_as_dropped(server_address, monkeypatch):
    # At the edge: with room for 5 calls in flight, a burst the server cannot answer in time is
    # partly dropped on the client side, and every scheduled request is either sent or dropped.
    monkeypatch.setattr(loadgen, "in_flight_max", 5)
    requests = [rpc.pack_call("submit", [n]) for n in range(200)]
    result = await loadgen.open_loop("t", [server_address], [requests], loadgen._accept_submit,
                                     rate_per_s=4000, duration_s=0.05)
    assert result.sent + result.dropped == 200
    assert result.dropped > 0 and result.sent >= 5
    assert result.ok + sum(result.errors.values()) == result.sent


@pytest.mark.parametrize("duration,message", [("4", "between 5 and 3600"), ("3601", "between 5 and 3600"),
                                              ("soon", "not a number")])
def test_bench_refuses_a_bad_duration(monkeypatch, capsys, duration, message):
    monkeypatch.setenv("DURATION", duration)
    assert bench.main([]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("window", ["0", "33"])
def test_bench_refuses_a_window_beyond_the_nodes_limit(monkeypatch, capsys, window):
    monkeypatch.setenv("DURATION", "30")
    assert bench.main(["--window", window]) == 2
    assert "between 1 and 32" in capsys.readouterr().err


def test_bench_window_limit_is_the_nodes_per_connection_limit():
    from node.rpc import RpcLimits

    assert bench.WINDOW_MAX == RpcLimits().requests_in_flight_max and 1 <= bench.WINDOW <= bench.WINDOW_MAX


def test_presigned_match_queries_are_what_the_node_accepts(tmp_path):
    # Each call is match(signed query) by the plan's verifier, cycling over the commitments, with a fresh
    # nonce each; node.rpc's own parser checks the encoding and the signature.
    import msgpack as _msgpack

    from node.keys import KeyPair, write_key_file
    from node.rpc import decode_query
    from testnet import workload

    write_key_file(tmp_path / "bank.json", KeyPair.generate("bank"))
    plan = {"chain_id": "bench-chain", "verifier": {"name": "bank", "key": str(tmp_path / "bank.json")},
            "match_node": "hk-1"}
    commitments = [bytes([n]) * 32 for n in range(3)]
    calls = workload.presigned_match_queries(plan, commitments, 5)
    queries = []
    for packed in calls:
        unpacker = _msgpack.Unpacker(raw=False)
        unpacker.feed(packed)
        method, params = list(unpacker)
        assert method == workload.MATCH_METHOD and len(params) == 1
        queries.append(decode_query(params[0], "bench-chain", "hk-1"))   # signed for the plan's match node
    assert [q.commitment for q in queries] == [commitments[i % 3] for i in range(5)]
    assert all(q.participant == "bank" for q in queries)
    assert len({q.nonce for q in queries}) == 5
    assert workload.presigned_match_queries(plan, [], 5) == []


async def test_open_loop_counts_requests_never_answered_as_errors(server_address, monkeypatch):
    # Requests still unanswered when the drain ends have no latency: they must show as errors,
    # or the percentiles would quietly leave out the worst cases.
    monkeypatch.setattr(loadgen, "drain_timeout_s", 0.3)
    requests = [rpc.pack_call("submit", [-1 if n % 4 == 0 else n]) for n in range(40)]
    result = await loadgen.open_loop("t", [server_address], [requests], loadgen._accept_submit,
                                     rate_per_s=200, duration_s=0.2)
    assert result.sent == 40
    assert result.errors["no-answer"] == 10
    assert result.ok + sum(result.errors.values()) == 40
