"""Four in-process daemons over real 127.0.0.1 TCP with an in-memory ledger (tests/node/test_node_daemon.py
and the driver, shutdown, admission and hostile-transport tests that reuse it).

`Net` builds the keys, validator set, ports and configs; `MemoryLedger` is what the daemon asks of
storage, in memory; the application is the simulator's deterministic one, so requests are
`request(seq)`. `ScriptedReplica` stands in for the core where a test scripts the Readies.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import trio

from consensus.epochs import MARGIN_HEIGHTS_DEFAULT
from consensus.sim import app as sim_app
from consensus.status import ReplicaStatus
from consensus.validators import Validator, ValidatorSet
from node.config import (
    Address, ConsensusConfig, LimitsConfig, Listen, NodeConfig, Peer, RpcConfig,
)
from node.daemon import Daemon
from node.keys import KeyPair
from tests.support.node_cluster import free_ports

IDS = (("hk-1", "HK"), ("hk-2", "HK"), ("cn-1", "CN"), ("cn-2", "CN"))
CHAIN = "daemon-test"


@dataclass
class Outcome:
    ok: bool
    leaf_index: int | None = None
    reason: str | None = None


class MemoryLedger:
    """What the daemon asks of storage, in memory: blocks in height order and the replica's key/value state."""

    def __init__(self):
        self.blocks = []
        self.consensus_state = {}
        self.persist_batches = 0

    def height(self):
        return len(self.blocks)

    def header(self, height):
        return self.blocks[height - 1].header

    def committed_block(self, height):
        return self.blocks[height - 1] if 1 <= height <= len(self.blocks) else None

    def apply_block(self, block, consensus_changes=()):
        assert block.header.height == len(self.blocks) + 1, "blocks must arrive in height order"
        self.blocks.append(block)
        if consensus_changes:
            self._change(consensus_changes)   # the same batch as the block
        first = block.header.tree_size - len(block.entries)
        return [Outcome(True, first + index) for index in range(len(block.entries))]

    def write_consensus_state(self, changes):
        self.persist_batches += 1
        self._change(changes)

    def _change(self, changes):
        for key, value in changes:
            if value is None:
                self.consensus_state.pop(key, None)
            else:
                self.consensus_state[key] = value

    def load_consensus_state(self):
        return dict(self.consensus_state)

    def close(self):
        pass


class Net:
    def __init__(self, tmp_path, view_timeout_ms=600):
        self.keys = {node_id: KeyPair.generate(node_id) for node_id, _ in IDS}
        self.validators = ValidatorSet(tuple(
            Validator(node_id, self.keys[node_id].public_key, jurisdiction) for node_id, jurisdiction in IDS))
        self.genesis = SimpleNamespace(chain_id=CHAIN, validator_set=self.validators,
                                       epoch_margin_heights=MARGIN_HEIGHTS_DEFAULT)
        self.ports = dict(zip([node_id for node_id, _ in IDS], free_ports(len(IDS))))
        self.ledgers = {node_id: MemoryLedger() for node_id, _ in IDS}
        self.daemons: dict[str, Daemon] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.tmp_path = tmp_path
        self.view_timeout_ms = view_timeout_ms

    def config(self, node_id):
        return NodeConfig(
            node_id=node_id, key_file=self.tmp_path / "unused", genesis_file=self.tmp_path / "unused",
            data_dir=self.tmp_path / node_id,
            listen=Listen(Address("127.0.0.1", self.ports[node_id]), Address("127.0.0.1", 0), Address("127.0.0.1", 0)),
            peers=tuple(Peer(other, Address("127.0.0.1", port)) for other, port in self.ports.items() if other != node_id),
            consensus=ConsensusConfig(view_timeout_ms=self.view_timeout_ms, batch_wait_ms=2, checkpoint_interval=4,
                                      watermark_window=16),
            limits=LimitsConfig(reconnect_backoff_min_ms=20, reconnect_backoff_max_ms=200),
            rpc=RpcConfig(plaintext=True),   # RPC is not served here (no_rpc)
        )

    def application(self):
        """The consensus Application of each daemon (None: the daemon's own, over its ledger)."""
        return sim_app.SimApplication()

    async def start(self, nursery, node_id):
        daemon = Daemon(self.config(node_id), self.genesis, self.keys[node_id], self.ledgers[node_id],
                        application=self.application())
        daemon._start_rpc = no_rpc
        self.daemons[node_id] = daemon
        scope = trio.CancelScope()
        self.scopes[node_id] = scope

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await daemon.run(task_status=task_status)
        await nursery.start(run)

    def stop(self, node_id):
        self.scopes.pop(node_id).cancel()
        self.daemons.pop(node_id)

    async def wait_height(self, node_ids, height):
        """Until each ledger holds `height` and each running daemon has finished applying it: the ledger
        moves inside the apply thread, the daemon's height and metrics only once that thread returns."""
        def reached(n):
            daemon = self.daemons.get(n)
            return self.ledgers[n].height() >= height and (daemon is None or daemon.height >= height)
        while not all(reached(n) for n in node_ids):
            await trio.sleep(0.01)


async def no_rpc(nursery):
    return None


def request(seq: int) -> bytes:
    return sim_app.make_request("client0", seq, seq.to_bytes(8, "big"))


async def submit_all(daemon, seqs, receipts):
    async with trio.open_nursery() as nursery:
        for seq in seqs:
            async def one(seq=seq):
                receipts[seq] = await daemon.submit(request(seq), True, 60)
            nursery.start_soon(one)



class ScriptedReplica:
    """Stands in for the core to check the host's obligations: returns the Readies a test scripts and
    records when on_persisted is called relative to storage writes and sends."""

    def __init__(self, journal, stand_in_for, follow_ups):
        self.journal = journal
        self.follow_ups = list(follow_ups)
        self.pending_request_count = 0
        # What the daemon reads of the set it follows: the real replica's, which stays as it is.
        self.epoch, self.schedule = stand_in_for.epoch, stand_in_for.schedule
        self.validators, self.signing_key = stand_in_for.validators, stand_in_for.signing_key
        self.member = stand_in_for.member

    def snapshot(self):
        return ReplicaStatus(view=0, view_active=True, primary_id="hk-1", is_primary=False, last_applied_height=0,
                             stable_checkpoint_height=0, catch_up_target=0, checks_signatures=True,
                             vouch_fallbacks=0, pending_request_count=0, in_flight_count=0, restore_skipped=())

    def is_committed(self, request):
        return False

    def is_pending(self, request_id):
        return True

    def on_persisted(self):
        self.journal.append(("on_persisted",))
        return self.follow_ups.pop(0)
