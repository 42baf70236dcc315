"""A small deterministic replica cluster (tests/consensus/test_replica.py and the censorship, vouching and
view-change tests): 4 validators (2 HK, 2 CN) with fixed keys, a trivial Application, a FIFO network.

Each `Node` carries out every Ready exactly as a host must (persist, on_persisted, send, apply, serve
catch-up) and checks, as it goes, that blocks arrive in height order with valid certificates and that
no replica signs two different blocks for one slot; `Cluster.assert_agreement` checks the chains.
"""

from __future__ import annotations

import nacl.signing

from consensus import codec, host
from consensus.application import ExecutionResult
from consensus.block import ZERO_HASH, BlockHeader, entries_hash
from consensus.epochs import MARGIN_HEIGHTS_DEFAULT, EpochChange, ReconfigurationError, decode_changes, encode_changes
from consensus.messages import CATCH_UP_BLOCKS_MAX, Commit, MessageError, PrePrepare, Prepare, decode_message
from consensus.ready import Ready
from consensus.replica import Replica, ReplicaConfig, encode_catch_up_response
from consensus.validators import Validator, ValidatorSet

CHAIN = "bayledger-test"
JURISDICTIONS = ("HK", "HK", "CN", "CN")
TICK_MS = 10
START_MS = 1_700_000_000_000
# The test stand-in for the ledger's co-signed `reconfigure` entry: this prefix, then msgpack {epoch, changes, nonce}.
RECONFIGURE_PREFIX = b"ok:reconfigure:"


class TrivialApp:
    """Valid requests start with b"ok:"; the header fields are a hash chain over the entries."""

    def check_request(self, request: bytes) -> str | None:
        return None if request.startswith(b"ok:") else "not-ok"

    def check_request_shape(self, request: bytes) -> str | None:
        return None   # the "signature" is the b"ok:" prefix

    def execute(self, parent, height, time_ms, entries):
        size = (parent.tree_size if parent is not None else 0) + len(entries)
        root = codec.sha256(parent.tree_root if parent is not None else ZERO_HASH, entries_hash(entries))
        return ExecutionResult(size, root, codec.sha256(b"results", root))

    def reconfiguration(self, height, entries, latest):
        """The changes of the block's first reconfiguration for the latest epoch that decodes, or None."""
        for entry in entries:
            if not entry.startswith(RECONFIGURE_PREFIX):
                continue
            try:
                body = codec.unpack(entry[len(RECONFIGURE_PREFIX):])
                if isinstance(body, dict) and body.get("epoch") == latest.epoch:
                    changes = body.get("changes")
                    return EpochChange(decode_changes(changes) if changes else (), body.get("application"))
            except (codec.EncodingError, ReconfigurationError, ValueError):
                continue
        return None


def reconfigure_request(epoch, changes, nonce=b"", application=None):
    """A stand-in reconfiguration; `application`: the new epoch's application data (None: unchanged)."""
    body = {"epoch": epoch, "changes": encode_changes(changes), "nonce": nonce}
    if application is not None:
        body["application"] = application
    return RECONFIGURE_PREFIX + codec.pack(body)


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
        self.crash_after_persist = False
        self.start()

    def start(self):
        last = (len(self.chain), self.chain[-1].header if self.chain else None)
        self.replica = Replica(
            self.cluster.config, self.cluster.vset, self.id, self.cluster.keys[self.id], CHAIN, TrivialApp(),
            persisted=dict(self.persisted) or None, last_applied=last, margin_heights=self.cluster.margin_heights,
            spare_signing_keys=tuple(self.cluster.spare_keys.get(self.id, ())), joining=self.id in self.cluster.joiners,
        )

    def handle(self, ready: Ready):
        """Carry out `ready` through consensus.host, as the daemon and the simulator do."""
        if not self.up:
            return
        # The contract, stricter than the host needs: nothing that depends on this batch is in this
        # Ready's messages, blocks arrive in height order, and a released follow-up persists nothing.
        assert not (ready.persist and ready.messages)
        heights = [block.header.height for block in ready.committed]
        assert heights == list(range(len(self.chain) + 1, len(self.chain) + 1 + len(heights))), "blocks in height order"
        writes = 0
        for step in host.carry_out(self.replica, [ready], len(self.chain)):
            if isinstance(step, host.WriteBatch):
                writes += 1
                assert writes == 1, "a released follow-up persists nothing"
                step.apply_changes_to(self.persisted)
                if step.block is not None:
                    self.append(step.block)
                if self.crash_after_persist:
                    self.crash_after_persist = False
                    self.crash()  # written to disk, but the votes it released are lost
                    return
            elif isinstance(step, host.Send):
                for out in step.messages:
                    self.send(out)
            elif isinstance(step, host.Apply):
                self.append(step.block)
            elif isinstance(step, host.ServeCatchUp):
                for peer, first, last in step.ranges:
                    blocks = self.chain[first - 1: min(last, len(self.chain))][:CATCH_UP_BLOCKS_MAX]
                    if blocks:
                        self.cluster.queue.append((self.id, peer, encode_catch_up_response(blocks)))
            else:
                self.evidence.extend(step.evidence)
                self.rejected.extend(step.rejected)

    def append(self, block):
        # Each height's certificate against the set of its epoch (the replica's schedule as delivered).
        block.certificate.verify(block.header, self.replica.schedule.config_at(block.header.height).validators)
        if self.chain:
            assert block.header.prev_hash == self.chain[-1].header.hash()
        self.chain.append(block)

    def decode_sent(self, data):
        """A message this node sent, decoded with the set of the epoch it was sent in (newest first)."""
        for config in reversed(self.replica.schedule.epochs):
            try:
                return decode_message(data, config.validators, CHAIN, verify=False, epoch=config.epoch)
            except MessageError:
                continue
        raise AssertionError(f"{self.id} sent a message no epoch's set decodes")

    def send(self, out):
        message = self.decode_sent(out.data)
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
    def __init__(self, config=None, jurisdictions=JURISDICTIONS, margin_heights=MARGIN_HEIGHTS_DEFAULT,
                 spare_keys=None, joiners=0):
        self.margin_heights = margin_heights
        self.spare_keys = spare_keys or {}   # validator id -> further keys it holds (a key rotation's new key)
        self.config = config or ReplicaConfig(batch_wait_ms=0, view_timeout_ms=500, retransmit_ms=200,
                                              checkpoint_interval=4, watermark_window=8, catch_up_timeout_ms=200)
        self.vset, self.keys = make_validators(jurisdictions)
        # Nodes outside genesis, v{n}..: they start with joining=True and wait for a reconfiguration to add them.
        self.joiners = [f"v{i}" for i in range(len(jurisdictions), len(jurisdictions) + joiners)]
        self.keys.update({j: nacl.signing.SigningKey(bytes([200 + i]) * 32) for i, j in enumerate(self.joiners)})
        self.ids = [v.id for v in self.vset.validators] + self.joiners
        self.queue: list[tuple[str, str, bytes]] = []
        self.nodes = {i: Node(self, i) for i in self.ids}
        self.now_ms = START_MS
        self.drop = lambda sender, target, data: False
        self.tamper = lambda sender, target, data: [data]
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
                for item in self.tamper(sender, target, data):
                    node.handle(node.replica.on_message(sender, item))
                    if not node.up:
                        break

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


def kind_of(data):
    return codec.unpack(data).get("type")


def build_block(cluster, height, parent, entries, time_ms):
    result = TrivialApp().execute(parent, height, time_ms, entries)
    return BlockHeader(CHAIN, height, parent.hash() if parent else ZERO_HASH, time_ms, entries_hash(entries),
                       len(entries), result.tree_size, result.tree_root, result.results_hash, cluster.vset.hash())
