"""The replica in a small deterministic cluster: 4 validators (2 HK, 2 CN), a trivial Application, a FIFO network.

Each test drives the real Replica through its public inputs and carries out
every Ready exactly as a host must (persist, on_persisted, send, apply, serve
catch-up), then checks what the replicas committed and signed.
"""

from __future__ import annotations

import nacl.signing
import pytest

from consensus import codec
from consensus.block import ZERO_HASH, BlockHeader, entries_hash
from consensus.messages import (
    CATCH_UP_BLOCKS_MAX, Commit, PrePrepare, Prepare, ViewChange, decode_message, encode, sign,
)
from consensus.replica import (
    KEY_VOTE, ExecutionResult, Ready, Replica, ReplicaConfig, ReplicaConfigError, encode_catch_up_response,
)
from consensus.validators import Validator, ValidatorSet

CHAIN = "bayledger-test"
JURISDICTIONS = ("HK", "HK", "CN", "CN")
TICK_MS = 10
START_MS = 1_700_000_000_000


class TrivialApp:
    """Valid requests start with b"ok:"; the header fields are a hash chain over the entries."""

    def check_request(self, request: bytes) -> str | None:
        return None if request.startswith(b"ok:") else "not-ok"

    def execute(self, parent, height, time_ms, entries):
        size = (parent.tree_size if parent is not None else 0) + len(entries)
        root = codec.sha256(parent.tree_root if parent is not None else ZERO_HASH, entries_hash(entries))
        return ExecutionResult(size, root, codec.sha256(b"results", root))


def make_validators(jurisdictions=JURISDICTIONS):
    keys = {f"v{i}": nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(len(jurisdictions))}
    vset = ValidatorSet(tuple(Validator(f"v{i}", keys[f"v{i}"].verify_key.encode(), j) for i, j in enumerate(jurisdictions)))
    return vset, keys


class Node:
    def __init__(self, cluster, node_id):
        self.cluster = cluster
        self.id = node_id
        self.persisted: dict[bytes, bytes] = {}
        self.chain: list = []  # CommittedBlock in height order
        self.signed: dict[tuple, bytes] = {}  # (kind, view, height) -> header hash, over every message sent
        self.evidence: list = []
        self.rejected: list = []
        self.up = True
        self.start()

    def start(self):
        last = (len(self.chain), self.chain[-1].header if self.chain else None)
        self.replica = Replica(
            self.cluster.config, self.cluster.vset, self.id, self.cluster.keys[self.id], CHAIN, TrivialApp(),
            persisted=dict(self.persisted) or None, last_applied=last,
        )

    def handle(self, ready: Ready):
        if not self.up:
            return
        if ready.persist:
            for key, value in ready.persist:
                if value is None:
                    self.persisted.pop(key, None)
                else:
                    self.persisted[key] = value
            released = self.replica.on_persisted()
            assert not released.persist
        else:
            released = None
        for out in ready.messages:
            self.send(out)
        for block in ready.committed:
            assert block.header.height == len(self.chain) + 1, "blocks arrive in height order"
            block.certificate.verify(block.header, self.cluster.vset)
            if self.chain:
                assert block.header.prev_hash == self.chain[-1].header.hash()
            self.chain.append(block)
        for peer, first, last in ready.serve_catch_up:
            blocks = self.chain[first - 1: min(last, len(self.chain))][:CATCH_UP_BLOCKS_MAX]
            if blocks:
                self.cluster.queue.append((self.id, peer, encode_catch_up_response(blocks)))
        self.evidence.extend(ready.evidence)
        self.rejected.extend(ready.rejected)
        if released is not None:
            self.handle(released)

    def send(self, out):
        message = decode_message(out.data, self.cluster.vset, CHAIN, verify=False)
        if isinstance(message, (PrePrepare, Prepare, Commit)):
            height = message.height
            header_hash = message.header.hash() if isinstance(message, PrePrepare) else message.header_hash
            key = (type(message).__name__, message.view, height)
            previous = self.signed.setdefault(key, header_hash)
            assert previous == header_hash, f"{self.id} signed two different blocks for {key}"
        targets = [out.to] if out.to is not None else [v for v in self.cluster.ids if v != self.id]
        for target in targets:
            self.cluster.queue.append((self.id, target, out.data))

    def crash(self):
        self.up = False

    def restart(self):
        self.up = True
        self.start()


class Cluster:
    def __init__(self, config=None, jurisdictions=JURISDICTIONS):
        self.config = config or ReplicaConfig(batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200,
                                              checkpoint_interval=4, watermark_window=8, catch_up_timeout_ms=200)
        self.vset, self.keys = make_validators(jurisdictions)
        self.ids = [v.id for v in self.vset.validators]
        self.queue: list[tuple[str, str, bytes]] = []
        self.nodes = {i: Node(self, i) for i in self.ids}
        self.now_ms = START_MS
        self.drop = lambda sender, target, data: False
        for node in self.nodes.values():
            node.handle(node.replica.on_tick(self.now_ms))

    def submit(self, node_id, request):
        node = self.nodes[node_id]
        node.handle(node.replica.on_request(request))

    def deliver_all(self, rounds=1000):
        for _ in range(rounds):
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for sender, target, data in batch:
                node = self.nodes[target]
                if not node.up or not self.nodes[sender].up or self.drop(sender, target, data):
                    continue
                node.handle(node.replica.on_message(sender, data))

    def run(self, ticks):
        for _ in range(ticks):
            self.deliver_all()
            self.now_ms += TICK_MS
            for node in self.nodes.values():
                if node.up:
                    node.handle(node.replica.on_tick(self.now_ms))
        self.deliver_all()

    def run_until(self, predicate, ticks_max=2000):
        for _ in range(ticks_max):
            if predicate():
                return True
            self.run(1)
        return predicate()

    def heights(self):
        return {i: len(n.chain) for i, n in self.nodes.items()}

    def committed_requests(self, node_id):
        return [r for block in self.nodes[node_id].chain for r in block.entries]

    def assert_agreement(self):
        chains = [n.chain for n in self.nodes.values()]
        for height in range(max(len(c) for c in chains)):
            hashes = {c[height].header.hash() for c in chains if len(c) > height}
            assert len(hashes) == 1, f"replicas disagree at height {height + 1}"
        for node in self.nodes.values():
            requests = [r for b in node.chain for r in b.entries]
            assert len(requests) == len(set(requests)), "a request was committed twice"


def all_committed(cluster, requests, nodes=None):
    nodes = nodes or cluster.ids
    return all(set(requests) <= set(cluster.committed_requests(n)) for n in nodes)


def test_normal_case_commits_every_request_in_order_with_certificates():
    """Requests submitted to different replicas all commit on every replica, with the same blocks."""
    cluster = Cluster()
    requests = [f"ok:{i}".encode() for i in range(30)]
    for i, request in enumerate(requests):
        cluster.submit(cluster.ids[i % 4], request)
    assert cluster.run_until(lambda: all_committed(cluster, requests), 200)
    cluster.assert_agreement()
    assert all(n.replica.view == 0 for n in cluster.nodes.values())
    # Checkpoints became stable and truncated the persisted log.
    node = cluster.nodes["v1"]
    assert node.replica.stable.height >= 4
    vote_heights = [int.from_bytes(k[len(KEY_VOTE):], "big") for k in node.persisted if k.startswith(KEY_VOTE)]
    assert all(h > node.replica.stable.height for h in vote_heights)


def test_invalid_request_is_refused_and_never_committed():
    cluster = Cluster()
    cluster.submit("v1", b"bad:1")
    cluster.submit("v1", b"ok:1")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:1"]), 200)
    assert ("client", "invalid-request:not-ok") in cluster.nodes["v1"].rejected
    assert b"bad:1" not in cluster.committed_requests("v0")


def test_silent_primary_triggers_view_change_and_commits_continue():
    """The primary of view 0 crashes; the others move to view 1 and commit every request."""
    cluster = Cluster()
    cluster.submit("v1", b"ok:before")
    assert cluster.run_until(lambda: all_committed(cluster, [b"ok:before"]), 200)
    cluster.nodes["v0"].crash()
    requests = [f"ok:{i}".encode() for i in range(10)]
    for i, request in enumerate(requests):
        cluster.submit(cluster.ids[1 + i % 3], request)
    live = ["v1", "v2", "v3"]
    assert cluster.run_until(lambda: all_committed(cluster, requests, live), 2000)
    assert all(cluster.nodes[n].replica.view >= 1 for n in live)
    cluster.assert_agreement()
