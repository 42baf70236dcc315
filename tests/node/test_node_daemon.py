"""The daemon's driver over real 127.0.0.1 TCP links with the real replica, four daemons in one trio run.

Storage is replaced by a small in-memory ledger and the application by the
simulator's deterministic one, so these tests check the driver itself: Ready
carried out in contract order, blocks applied and waiters woken, view change
when the primary stops, catch-up of a restarted node, and status/metrics.
The same scenarios with real processes and LevelDB are in test_node_cluster.py.
"""

from __future__ import annotations

import pytest
import trio

from consensus.sim import app as sim_app
from consensus.validators import Validator, ValidatorSet
from node.api import ApiError
from node.keys import KeyPair
from tests.support.daemon_net import CHAIN, IDS, Net, request, submit_all


def assert_same_chain(net, node_ids):
    chains = {n: [net.ledgers[n].header(h).hash() for h in range(1, net.ledgers[n].height() + 1)] for n in node_ids}
    shortest = min(len(c) for c in chains.values())
    assert shortest > 0
    reference = chains[node_ids[0]][:shortest]
    for node_id, chain in chains.items():
        assert chain[:shortest] == reference, f"{node_id} diverges"


async def test_four_daemons_commit_requests_and_agree(tmp_path):
    """Requests submitted to every daemon are committed once each; all four ledgers hold the same blocks,
    and each waiting submitter gets a receipt with its height and leaf index."""
    net = Net(tmp_path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for node_id, _ in IDS:
                await net.start(nursery, node_id)
            receipts = {}
            async with trio.open_nursery() as clients:
                for index, (node_id, _) in enumerate(IDS):
                    clients.start_soon(submit_all, net.daemons[node_id], range(index * 10, index * 10 + 10), receipts)
            assert sorted(receipts) == list(range(40))
            assert all(r["status"] == "committed" for r in receipts.values())
            top = max(r["height"] for r in receipts.values())
            await net.wait_height([n for n, _ in IDS], top)
            assert_same_chain(net, [n for n, _ in IDS])
            committed = [e for b in net.ledgers["hk-1"].blocks for e in b.entries]
            assert sorted(committed) == sorted(request(s) for s in range(40))
            leaves = sorted(r["leaf_index"] for r in receipts.values())
            assert leaves == list(range(40))
            status = net.daemons["cn-2"].status()
            assert status["height"] >= top and status["primary"] == "hk-1" and len(status["peers"]) == 3
            assert net.daemons["hk-1"].metrics.committed_entries.get() == 40
            # Persist-before-send: every node wrote its votes to storage.
            assert all(net.ledgers[n].persist_batches > 0 for n, _ in IDS)
            nursery.cancel_scope.cancel()


async def test_bad_entries_are_refused_with_clear_errors(tmp_path):
    """An entry failing the stateless check and a non-bytes entry are refused with ApiError bad-entry."""
    net = Net(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await net.start(nursery, "hk-1")
            daemon = net.daemons["hk-1"]
            bad = sim_app.make_request("client0", 1, b"x", valid=False)
            for entry in (bad, "text", b""):
                with pytest.raises(ApiError) as info:
                    await daemon.submit(entry, False, 1)
                assert info.value.code == "bad-entry"
            assert (await daemon.submit(request(5), False, 1))["status"] == "pending"
            nursery.cancel_scope.cancel()


async def test_primary_stops_view_changes_and_restarted_node_catches_up(tmp_path):
    """Stopping the primary (hk-1) leads to a view change and further commits; hk-1 restarted from its
    ledger and persisted votes catches up to the others and holds the same chain."""
    net = Net(tmp_path)
    all_ids = [n for n, _ in IDS]
    others = ["hk-2", "cn-1", "cn-2"]
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for node_id in all_ids:
                await net.start(nursery, node_id)
            receipts = {}
            await submit_all(net.daemons["cn-1"], range(0, 10), receipts)
            net.stop("hk-1")
            await submit_all(net.daemons["cn-1"], range(10, 20), receipts)
            assert all(r["status"] == "committed" for r in receipts.values())
            assert net.daemons["cn-1"].view >= 1
            assert net.daemons["cn-1"].metrics.view_changes.get() >= 1
            top = max(r["height"] for r in receipts.values())
            await net.wait_height(others, top)
            await net.start(nursery, "hk-1")
            await submit_all(net.daemons["hk-2"], range(20, 25), receipts)
            top = max(r["height"] for r in receipts.values())
            await net.wait_height(all_ids, top)
            assert_same_chain(net, all_ids)
            committed = [e for b in net.ledgers["hk-1"].blocks for e in b.entries]
            assert sorted(set(committed)) == sorted(request(s) for s in range(25))
            assert len(committed) == 25
            nursery.cancel_scope.cancel()


async def play_byzantine_validator(port: int, key: KeyPair, node_id: str, validators, chain_id: str, height: int):
    """Connect as validator `node_id` (with its real key) and send garbage, a wrong-shape frame, and two
    conflicting PREPAREs for the same (view 0, height): an equivocation."""
    from consensus import codec, messages
    from node.transport import FRAME_KIND_CONSENSUS, encode_frame, handshake

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _, connection = await handshake(stream, chain_id=chain_id, node_id=node_id, signing_key=key.signing_key,
                                    validators=validators, frame_bytes_max=1 << 20)
    await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, b"\x93random"))
    await connection.send_frame(codec.pack({"wrong": "shape"}))
    for marker in (b"A", b"B"):
        vote = messages.sign(messages.Prepare(0, height, codec.sha256(marker), node_id), key.signing_key, chain_id)
        await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, messages.encode(vote)))
    return stream, connection


async def test_equivocating_validator_is_detected_and_honest_nodes_keep_committing(tmp_path):
    """cn-2, played by the test with its real key, sends garbage and two conflicting PREPAREs to hk-2.
    hk-2 refuses and counts them, logs a warning with both signed messages, and the three honest
    validators keep committing."""
    from structlog.testing import capture_logs

    net = Net(tmp_path)
    honest = ["hk-1", "hk-2", "cn-1"]
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            for node_id in honest:
                await net.start(nursery, node_id)
            receipts = {}
            await submit_all(net.daemons["hk-1"], range(0, 3), receipts)
            # Equivocate at the next height: hk-2 ignores votes for heights it has already committed.
            top = max(r["height"] for r in receipts.values())
            await net.wait_height(["hk-2"], top)
            height = top + 1
            stream, _ = await play_byzantine_validator(
                net.ports["hk-2"], net.keys["cn-2"], "cn-2", net.validators, CHAIN, height)
            metrics = net.daemons["hk-2"].metrics
            while metrics.evidence.get() < 1:
                await trio.sleep(0.01)
            assert metrics.rejected_messages.get("bad-encoding") == 1
            assert metrics.rejected_messages.get("equivocation") == 1
            assert metrics.rejected_frames.get("bad-shape") == 1
            await submit_all(net.daemons["cn-1"], range(3, 8), receipts)
            assert all(r["status"] == "committed" for r in receipts.values())
            await stream.aclose()
            nursery.cancel_scope.cancel()
    evidence = [line for line in logs if line["event"] == "equivocation evidence"]
    assert len(evidence) == 1 and evidence[0]["log_level"] == "warning"
    assert evidence[0]["validator"] == "cn-2" and evidence[0]["kind"] == "prepare"
    assert evidence[0]["first"] != evidence[0]["second"]


async def test_daemons_on_leveldb_commit_signed_entries_and_resume_from_disk(tmp_path):
    """Four daemons on real LevelDB ledgers (storage.ledger) commit signed commit entries; a rejected entry
    (replayed nonce) gets a rejected receipt; a node closed and reopened from its data directory resumes
    at its height and catches up the blocks it missed."""
    import os
    import time

    from storage import entries as ledger_entries
    from storage.genesis import Genesis
    from storage.ledger import Ledger

    net = Net(tmp_path)
    provider = KeyPair.generate("bank-hk")
    governance = {j: KeyPair.generate() for j in ("HK", "CN")}
    genesis = Genesis.from_dict({
        "chain_id": CHAIN, "genesis_time_ms": 1_700_000_000_000, "min_signers_per_jurisdiction": 1,
        "validators": [{"id": v.id, "public_key": v.public_key.hex(), "jurisdiction": v.jurisdiction}
                       for v in net.validators.validators],
        "governance": {j: {"keys": [{"id": f"gov-{j.lower()}", "public_key": k.public_key.hex()}], "threshold": 1}
                       for j, k in governance.items()},
        "participants": [{"id": "bank-hk", "jurisdiction": "HK", "role": "credit-provider",
                          "public_key": provider.public_key.hex()}],
    })
    net.genesis = genesis
    paths = {node_id: tmp_path / f"{node_id}-ledger" for node_id, _ in IDS}
    net.ledgers = {node_id: Ledger.open(paths[node_id], genesis) for node_id, _ in IDS}

    net.application = lambda: None   # each daemon's own application, over its LevelDB ledger
    start_real = net.start

    def entry(nonce):
        return ledger_entries.build_commit(provider.signing_key, "bank-hk", CHAIN, os.urandom(32), "credit-report",
                                           "HK", nonce, int(time.time() * 1000))

    all_ids = [n for n, _ in IDS]
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for node_id in all_ids:
                    await start_real(nursery, node_id)
                receipts = [await net.daemons["hk-2"].submit(entry(n), True, 30) for n in (1, 2)]
                assert [r["status"] for r in receipts] == ["committed", "committed"]
                # A used nonce is refused at submit, before ordering, with the apply rule's reason code.
                with pytest.raises(ApiError, match="entry refused: replayed-nonce$"):
                    await net.daemons["cn-1"].submit(entry(1), True, 30)
                net.stop("cn-2")
                await nursery.start(_started)
                net.ledgers["cn-2"].close()
                receipts += [await net.daemons["hk-1"].submit(entry(n), True, 30) for n in (3, 4, 5)]
                top = max(r["height"] for r in receipts)
                net.ledgers["cn-2"] = Ledger.open(paths["cn-2"], genesis)
                resumed_at = net.ledgers["cn-2"].height()
                assert 0 < resumed_at < top
                await start_real(nursery, "cn-2")
                await net.wait_height(all_ids, top)
                assert_same_chain(net, all_ids)
                assert {net.ledgers[n].header(top).tree_root for n in all_ids} == {
                    net.ledgers["hk-1"].header(top).tree_root}
                nursery.cancel_scope.cancel()
    finally:
        for ledger in net.ledgers.values():
            ledger.close()


async def _started(task_status):
    # Lets the cancelled daemon's tasks unwind before its ledger is closed.
    await trio.sleep(0.05)
    task_status.started()


async def test_resubmitting_a_committed_entry_is_answered_not_left_waiting(tmp_path):
    """A client retrying an entry that already committed gets ApiError already-committed at once."""
    net = Net(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for node_id, _ in IDS:
                await net.start(nursery, node_id)
            first = await net.daemons["hk-2"].submit(request(1), True, 20)
            assert first["status"] == "committed"
            await net.wait_height(["cn-1"], first["height"])
            for wait in (True, False):   # a waiting submit hears it through its waiter, the other at once
                with pytest.raises(ApiError) as info:
                    await net.daemons["cn-1"].submit(request(1), wait, 20)
                assert info.value.code == "already-committed"
            assert not net.daemons["cn-1"]._waiters     # the refused waiter is not left registered
            nursery.cancel_scope.cancel()


def test_validators_sharing_a_machine_flush_their_stores_at_different_times():
    """Each validator's LevelDB memtable size follows its place in genesis, so validators that write
    the same bytes do not all write a table at once; the sizes repeat every LEDGER_WRITE_BUFFER_STEPS.
    Any two sizes first meet after at least five tables of the larger (40 and 56 MiB at 280 MiB)."""
    import math

    from node.daemon import LEDGER_WRITE_BUFFER_STEP_BYTES, LEDGER_WRITE_BUFFER_STEPS, ledger_write_buffer_bytes
    from storage.ledger import leveldb_write_buffer_bytes_max, leveldb_write_buffer_bytes_min

    ids = [f"v{i}" for i in range(10)]
    validators = ValidatorSet(tuple(
        Validator(node_id, bytes([i + 1]) * 32, "HK" if i % 2 else "CN") for i, node_id in enumerate(ids)))
    sizes = [ledger_write_buffer_bytes(validators, node_id) for node_id in ids]
    mib = 1024 * 1024
    assert [size // mib for size in sizes[:LEDGER_WRITE_BUFFER_STEPS]] == [40, 56, 72, 88]
    assert sizes[LEDGER_WRITE_BUFFER_STEPS] == sizes[0]
    assert all(leveldb_write_buffer_bytes_min <= size <= leveldb_write_buffer_bytes_max for size in sizes)
    distinct = sorted(set(sizes))
    for i, a in enumerate(distinct):
        for b in distinct[i + 1:]:
            assert math.lcm(a, b) >= 5 * b, (a // mib, b // mib)
    assert math.lcm(*distinct) // LEDGER_WRITE_BUFFER_STEP_BYTES == 5 * 7 * 9 * 11
