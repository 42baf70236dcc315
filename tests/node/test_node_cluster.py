"""Real daemon processes on 127.0.0.1: the issue's done-when scenarios.

Each test builds a 4-validator network (2 HK, 2 CN) with the real CLI, runs
`python -m node.cli node` processes with LevelDB data dirs, submits signed
commit entries over msgpack-RPC, and at the end stops every node with SIGTERM
(checking a clean exit) and opens each node's LevelDB to compare blocks and
roots height by height. Waits are bounded liveness deadlines, not timings.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import msgpack
import pytest
import trio

from consensus import codec
from node.keys import load_key_file
from storage import entries as ledger_entries
from storage.genesis import Genesis

from tests.support.node_cluster import CHAIN_ID, RpcClient, RpcError

pytestmark = pytest.mark.slow

SUBMIT_TIMEOUT_S = 30
_nonces = itertools.count(1)


def make_entry(cluster, author="bank-hk", jurisdiction="HK") -> bytes:
    key = load_key_file(cluster.keys_dir / f"{author}.json").signing_key
    return ledger_entries.build_commit(
        key, author, CHAIN_ID, os.urandom(32), "credit-report", jurisdiction, next(_nonces), int(time.time() * 1000))


def submit(client: RpcClient, entry: bytes, wait: bool = True):
    return client.call("submit", entry, {"wait": wait, "timeout_ms": SUBMIT_TIMEOUT_S * 1000})


def open_store(cluster, node_id):
    from storage.ledger import Ledger

    return Ledger.open(cluster.nodes[node_id].data_dir / "ledger", Genesis.load(cluster.genesis_path))


def read_chain(cluster, node_id) -> list[tuple[bytes, tuple[bytes, ...]]]:
    """(header hash, entries) for every block in the node's LevelDB, after the node stopped."""
    ledger = open_store(cluster, node_id)
    try:
        chain = []
        for height in range(1, ledger.height() + 1):
            block = ledger.committed_block(height)
            block.certificate.verify(block.header, Genesis.load(cluster.genesis_path).validator_set)
            chain.append((block.header.hash(), tuple(block.entries)))
        return chain
    finally:
        ledger.close()


def stop_all_and_compare(cluster, node_ids, acknowledged=()) -> list:
    for node_id in node_ids:
        assert cluster.stop(node_id) == 0, f"{node_id} did not exit cleanly on SIGTERM"
    chains = {node_id: read_chain(cluster, node_id) for node_id in node_ids}
    reference = chains[node_ids[0]]
    assert reference, "no blocks committed"
    for node_id, chain in chains.items():
        assert chain == reference, f"{node_id}'s store differs from {node_ids[0]}'s"
    stored = {entry for _, block_entries in reference for entry in block_entries}
    lost = [entry for entry in acknowledged if entry not in stored]
    assert not lost, f"{len(lost)} acknowledged entries are missing from the stores"
    return reference


class Load:
    """Steady load: threads submitting entries with wait=true to the given nodes, recording acknowledgements."""

    def __init__(self, cluster, node_ids, threads=3):
        self.cluster = cluster
        self.node_ids = list(node_ids)
        self.acknowledged: list[bytes] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index):
        author, jurisdiction = (("bank-hk", "HK"), ("bureau-cn", "CN"))[index % 2]
        turn = index
        client = None
        while not self.stop_event.is_set():
            node_id = self.node_ids[turn % len(self.node_ids)]
            try:
                client = client or self.cluster.nodes[node_id].rpc_client()
                entry = make_entry(self.cluster, author, jurisdiction)
                receipt = submit(client, entry)
                if receipt.get("status") == "committed":
                    self.acknowledged.append(entry)
            except (OSError, ConnectionError, RpcError) as exc:
                self.errors.append(f"{node_id}: {exc}")
                if client is not None:
                    client.close()
                client = None
                turn += 1
                time.sleep(0.05)
        if client is not None:
            client.close()

    def start(self, node_ids=None):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(SUBMIT_TIMEOUT_S + 5)


def heights(cluster, node_ids):
    return {node_id: cluster.status(node_id)["height"] for node_id in node_ids}


def test_four_daemons_commit_and_hold_identical_stores(cluster):
    """Entries submitted to all four nodes commit; every store holds the same certified blocks and roots."""
    all_ids = list(cluster.nodes)
    cluster.start_all()
    acknowledged = []
    for node_id in all_ids:
        client = cluster.nodes[node_id].rpc_client()
        for _ in range(3):
            entry = make_entry(cluster)
            receipt = submit(client, entry)
            assert receipt["status"] == "committed" and receipt["id"] == codec.sha256(entry)
            acknowledged.append(entry)
        client.close()
    top = max(heights(cluster, all_ids).values())
    cluster.wait_height(all_ids, top)
    status = cluster.status("cn-2")
    assert status["chain_id"] == CHAIN_ID and status["primary"] == "hk-1" and len(status["peers"]) == 3
    metrics = cluster.nodes["hk-1"]
    assert metrics.metric("bayledger_committed_entries_total") >= 12
    assert metrics.metric("bayledger_connected_peers") == 3
    # RPC counts reach Prometheus too: hk-1 answered its three submits, and one unknown method.
    with pytest.raises(RpcError):
        cluster.nodes["hk-1"].call("no-such-method")
    assert metrics.metric("bayledger_rpc_calls_total", 'method="submit"') == 3
    assert metrics.metric("bayledger_rpc_errors_total", 'code="method-not-found"') == 1
    chain = stop_all_and_compare(cluster, all_ids, acknowledged)
    assert sum(len(e) for _, e in chain) == 12
    committed_lines = [l for l in cluster.nodes["cn-1"].log_lines() if l.get("event") == "block committed"]
    assert committed_lines and all({"node", "height", "entries", "latency_ms", "bytes"} <= set(l) for l in committed_lines)


def test_kill_primary_then_non_primary_under_load_loses_nothing(cluster):
    """Under steady load: kill -9 the primary (hk-1): a view change happens and commits continue; it restarts
    and catches up. Then the same for a non-primary (cn-2). Stores end identical; no acknowledged entry lost."""
    all_ids = list(cluster.nodes)
    cluster.start_all()
    load = Load(cluster, ["hk-2", "cn-1"]).start()
    try:
        cluster.wait_height(all_ids, 2)
        cluster.kill("hk-1")
        before = max(heights(cluster, ["hk-2", "cn-1", "cn-2"]).values())
        cluster.wait_until(lambda: cluster.status("cn-1")["view"] >= 1, 60, "a view change after killing hk-1")
        cluster.wait_height(["hk-2", "cn-1", "cn-2"], before + 3)
        cluster.start("hk-1")
        cluster.wait_serving("hk-1")
        target = max(heights(cluster, ["hk-2", "cn-1"]).values())
        cluster.wait_height(["hk-1"], target)

        cluster.kill("cn-2")
        before = max(heights(cluster, ["hk-1", "hk-2", "cn-1"]).values())
        cluster.wait_height(["hk-1", "hk-2", "cn-1"], before + 3)
        cluster.start("cn-2")
        cluster.wait_serving("cn-2")
        target = max(heights(cluster, ["hk-2", "cn-1"]).values())
        cluster.wait_height(["cn-2"], target)
    finally:
        load.stop()
    top = max(heights(cluster, all_ids).values())
    cluster.wait_height(all_ids, top)
    print(f"load: {len(load.acknowledged)} acknowledged entries, {len(load.errors)} client errors, height {top}, "
          f"view {cluster.status('cn-1')['view']}")
    assert len(load.acknowledged) > 0
    assert cluster.nodes["cn-1"].metric("bayledger_view_changes_total") >= 1
    stop_all_and_compare(cluster, all_ids, load.acknowledged)


def test_partitioned_node_rejoins_and_catches_up(cluster):
    """cn-2's links are cut by fault injection; the other three keep committing; after the heal cn-2
    reconnects, catches up and its store equals the others'."""
    all_ids = list(cluster.nodes)
    cluster.start_all()
    client = cluster.nodes["hk-2"].rpc_client()
    acknowledged = []
    for _ in range(2):
        acknowledged.append(entry := make_entry(cluster))
        assert submit(client, entry)["status"] == "committed"
    cluster.partition("cn-2")
    cluster.wait_until(lambda: cluster.status("cn-2")["peers"] == [], 30, "cn-2 to lose its links")
    for _ in range(6):
        acknowledged.append(entry := make_entry(cluster))
        assert submit(client, entry)["status"] == "committed"
    top = max(heights(cluster, ["hk-1", "hk-2", "cn-1"]).values())
    assert cluster.status("cn-2")["height"] < top
    assert cluster.nodes["cn-2"].metric("bayledger_connected_peers") == 0
    assert cluster.nodes["hk-1"].metric("bayledger_connected_peers") == 2
    cluster.heal()
    cluster.wait_height(["cn-2"], top)
    cluster.wait_until(lambda: len(cluster.status("cn-2")["peers"]) == 3, 30, "cn-2 to reconnect to all peers")
    client.close()
    stop_all_and_compare(cluster, all_ids, acknowledged)


async def _hostile_sessions(cluster, port):
    """Random bytes, a truncated handshake, an oversized frame and an unknown-key handshake against `port`."""
    import struct

    import nacl.signing

    from node.transport import handshake

    genesis = Genesis.load(cluster.genesis_path)
    async def session(data):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(data)
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await stream.aclose()

    await session(os.urandom(4096))
    await session(b"\x01" * 10)
    await session(os.urandom(32) + struct.pack(">I", 1 << 30))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await handshake(stream, chain_id=CHAIN_ID, node_id="cn-2", signing_key=nacl.signing.SigningKey.generate(),
                        validators=genesis.validator_set, frame_bytes_max=1 << 20)
    except Exception:
        pass
    await stream.aclose()
    # Replayed handshake: record what an honest cn-2 sends, then send the same bytes on a new connection.
    recorded = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    real_send = stream.send_all

    async def recording_send(data):
        recorded.extend(data)
        await real_send(data)
    stream.send_all = recording_send
    key = load_key_file(cluster.nodes["cn-2"].dir / "key.json").signing_key
    _, connection = await handshake(stream, chain_id=CHAIN_ID, node_id="cn-2", signing_key=key,
                                    validators=genesis.validator_set, frame_bytes_max=1 << 20)
    await connection.aclose()
    await session(bytes(recorded))


async def _byzantine_votes(cluster, port, height):
    """Play validator cn-2 with its real key: garbage, a wrong-shape frame, then two conflicting PREPAREs."""
    from consensus import messages
    from node.transport import FRAME_KIND_CONSENSUS, encode_frame, handshake

    genesis = Genesis.load(cluster.genesis_path)
    key = load_key_file(cluster.nodes["cn-2"].dir / "key.json").signing_key
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    _, connection = await handshake(stream, chain_id=CHAIN_ID, node_id="cn-2", signing_key=key,
                                    validators=genesis.validator_set, frame_bytes_max=1 << 20)
    await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, os.urandom(64)))
    await connection.send_frame(msgpack.packb(["c", 5]))
    for marker in (b"A", b"B"):
        vote = messages.sign(messages.Prepare(0, height, codec.sha256(marker), "cn-2"), key, CHAIN_ID)
        await connection.send_frame(encode_frame(FRAME_KIND_CONSENSUS, messages.encode(vote)))
    await trio.sleep(1)
    await connection.aclose()


def test_hostile_peers_are_refused_logged_counted_and_honest_nodes_keep_committing(cluster):
    """Three honest daemons; the test sends hk-2 random bytes, truncated and oversized frames, an unknown-key
    handshake, a replayed handshake, and, as validator cn-2, garbage, a wrong-shape frame and conflicting votes. Each is refused,
    logged and counted on the metrics endpoint, and the honest three keep committing."""
    honest = ["hk-1", "hk-2", "cn-1"]
    for node_id in honest:
        cluster.start(node_id)
    for node_id in honest:
        cluster.wait_serving(node_id)
    client = cluster.nodes["hk-1"].rpc_client()
    assert submit(client, make_entry(cluster))["status"] == "committed"
    target = cluster.nodes["hk-2"]
    trio.run(_hostile_sessions, cluster, target.p2p)
    height = cluster.status("hk-2")["height"] + 1
    trio.run(_byzantine_votes, cluster, target.p2p, height)
    cluster.wait_until(lambda: target.metric("bayledger_equivocation_evidence_total") >= 1, 30, "evidence")
    counted = {reason: target.metric("bayledger_rejected_frames_total", f'reason="{reason}"')
               for reason in ("handshake-oversized-frame", "truncated-handshake", "unknown-key", "bad-shape",
                              "handshake-undecryptable")}
    assert all(count >= 1 for count in counted.values()), counted
    assert target.metric("bayledger_rejected_messages_total", 'reason="equivocation"') == 1
    assert target.metric("bayledger_rejected_messages_total", 'reason="bad-encoding"') >= 1
    for _ in range(3):
        assert submit(client, make_entry(cluster))["status"] == "committed"
    client.close()
    events = [(line.get("event"), line.get("reason")) for line in target.log_lines()]
    assert ("peer refused", "unknown-key") in events
    evidence = [line for line in target.log_lines() if line.get("event") == "equivocation evidence"]
    assert evidence and evidence[0]["level"] == "warning" and evidence[0]["first"] != evidence[0]["second"]
    stop_all_and_compare(cluster, honest)


def test_restart_after_sigterm_resumes_from_disk(cluster):
    """A node stopped with SIGTERM (exit 0) restarts at the height it had, from its own data directory,
    and keeps committing with the others."""
    all_ids = list(cluster.nodes)
    cluster.start_all()
    client = cluster.nodes["cn-1"].rpc_client()
    acknowledged = [make_entry(cluster) for _ in range(2)]
    for entry in acknowledged:
        assert submit(client, entry)["status"] == "committed"
    height = cluster.status("hk-1")["height"]
    assert cluster.stop("hk-1") == 0
    cluster.start("hk-1")
    cluster.wait_serving("hk-1")
    assert cluster.status("hk-1")["height"] >= height > 0
    acknowledged.append(entry := make_entry(cluster))
    assert submit(client, entry)["status"] == "committed"
    client.close()
    cluster.wait_height(all_ids, max(heights(cluster, all_ids).values()))
    stop_all_and_compare(cluster, all_ids, acknowledged)
