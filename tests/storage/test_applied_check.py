"""A replayed old entry does not take a restarted validator out of consensus (issue 14, point 4).

After a restart a replica remembers committed request ids from its last `committed_ids_heights_max`
heights only. An older committed entry offered again used to be pooled; no primary proposes it, so
the replica blamed every primary. Now the replica asks the Application (`check_request_applied`,
backed by the ledger's nonce windows) before pooling, and refuses it.
"""

from __future__ import annotations

from consensus import host
from consensus.messages import Requests, encode
from consensus.replica import CLIENT, Replica, ReplicaConfig, encode_catch_up_response
from storage.application import LedgerApplication
from storage.entries import build_commit
from storage.ledger import Ledger

from tests.support.storage_helpers import Author, commitment, next_block

ME = "cn-1"          # a backup in view 0 (the primary is hk-1)
PEER = "hk-2"
START_MS = 1_700_000_100_000
CONFIG = ReplicaConfig(view_timeout_ms=500, retransmit_ms=200, checkpoint_interval=4, watermark_window=8,
                       committed_ids_heights_max=2, batch_wait_ms=0)


class WithoutAppliedCheck:
    """The Application as it was before: no check_request_applied."""

    def __init__(self, application):
        self._application = application

    def check_request(self, request):
        return self._application.check_request(request)

    def check_request_shape(self, request):
        return self._application.check_request_shape(request)

    def execute(self, parent, height, time_ms, entries):
        return self._application.execute(parent, height, time_ms, entries)


def start_replica(world, ledger, app):
    head = ledger.head()
    return Replica(CONFIG, world.genesis.validator_set, ME, world.validator_keys[ME], world.chain_id, app,
                   persisted=ledger.load_consensus_state() or None,
                   last_applied=(ledger.height(), head) if head is not None else (0, None))


def carry_out(ledger, replica, ready):
    """What the daemon does with a Ready (through consensus.host), minus the network: the writes and
    the committed blocks."""
    for step in host.carry_out(replica, [ready], ledger.height()):
        if isinstance(step, host.WriteBatch):
            if step.block is not None:
                ledger.apply_block(step.block, list(step.changes))
            else:
                ledger.write_consensus_state(list(step.changes))
        elif isinstance(step, host.Apply):
            ledger.apply_block(step.block)


def commit_through_replica(world, ledger, replica, now, blocks_of_entries):
    """Commit blocks on the ledger the way a replica learns them: certified blocks served by a peer."""
    for entries in blocks_of_entries:
        block = next_block(world, ledger, entries)
        carry_out(ledger, replica, replica.on_tick(now))
        carry_out(ledger, replica, replica.on_message(PEER, encode_catch_up_response([block])))
        assert ledger.height() == block.header.height
    return now


def old_entry_and_a_restarted_replica(world, ledger, wrap=lambda app: app):
    author = Author(world, "hk-bureau")
    old = author.commit(commitment(0))
    replica = start_replica(world, ledger, wrap(LedgerApplication(ledger)))
    later = [[author.commit(commitment(i))] for i in range(1, 6)]
    commit_through_replica(world, ledger, replica, START_MS, [[old]] + later)
    assert replica.is_committed(old)   # in memory, it is still known
    # The restart: only the last committed_ids_heights_max heights' ids come back.
    restarted = start_replica(world, ledger, wrap(LedgerApplication(ledger)))
    assert not restarted.is_committed(old)
    return old, restarted


def run_past_the_view_timeout(ledger, replica, now):
    for step in range(1, 301):   # 3 s, six view timeouts
        carry_out(ledger, replica, replica.on_tick(now + 10 * step))


def test_a_replayed_committed_entry_is_not_pooled_after_a_restart(world, ledger):
    old, replica = old_entry_and_a_restarted_replica(world, ledger)
    now = START_MS + 1000
    carry_out(ledger, replica, replica.on_tick(now))
    ready = replica.on_message(PEER, encode(Requests((old,))))
    assert (PEER, "applied-request:already-applied") in ready.rejected
    ready = replica.on_request(old)
    assert (CLIENT, "applied-request:already-applied") in ready.rejected
    assert replica.pending_request_count == 0
    run_past_the_view_timeout(ledger, replica, now)
    assert replica.view == 0 and replica.view_active


def test_before_the_check_the_replayed_entry_took_the_replica_out_of_its_view(world, ledger):
    """The bug as it was: the same replay, with an Application that cannot tell, starts a view change."""
    old, replica = old_entry_and_a_restarted_replica(world, ledger, wrap=WithoutAppliedCheck)
    now = START_MS + 1000
    carry_out(ledger, replica, replica.on_tick(now))
    replica.on_message(PEER, encode(Requests((old,))))
    assert replica.pending_request_count == 1
    run_past_the_view_timeout(ledger, replica, now)
    assert replica.view > 0


def test_check_applied_reads_the_applied_state_only(world, ledger):
    author = Author(world, "hk-bureau")
    first, second = author.commit(commitment(1)), author.commit(commitment(2))
    app = LedgerApplication(ledger)
    assert app.check_request_applied(first) is None
    # Executing a block speculatively changes nothing the check sees.
    block = next_block(world, ledger, [first])
    assert app.check_request_applied(first) is None
    ledger.apply_block(block)
    # These very bytes are on the ledger: a client retrying them hears "already-applied".
    assert app.check_request_applied(first) == "already-applied"
    assert app.check_request_applied(second) is None
    # The same nonce in other bytes (another commitment) is used up too.
    again = build_commit(author.key, author.id, world.chain_id, commitment(3), "credit-report", "HK",
                         1, 1_700_000_000_001, None)
    assert app.check_request_applied(again) == "replayed-nonce"
    # Not an entry: check_entry's business, not this check's.
    assert app.check_request_applied(b"\x01\x02") is None


def test_stale_nonces_are_refused_once_the_window_is_full(world, ledger):
    from storage import records

    author = Author(world, "hk-bureau")
    skipped = author.commit(commitment(0))   # nonce 1, never committed
    entries = [author.commit(commitment(i)) for i in range(1, records.nonce_window + 1)]
    ledger.apply_block(next_block(world, ledger, entries))
    assert LedgerApplication(ledger).check_request_applied(skipped) == "stale-nonce"


def test_a_memo_in_front_of_the_application_does_not_memoize_the_applied_check(world, ledger):
    """node/daemon.py wraps the Application in EntryVerdictMemo; the state check passes through it."""
    from node.daemon import EntryVerdictMemo

    author = Author(world, "hk-bureau")
    entry = author.commit(commitment(1))
    app = EntryVerdictMemo(LedgerApplication(ledger))
    assert app.check_request_applied(entry) is None
    ledger.apply_block(next_block(world, ledger, [entry]))
    assert app.check_request_applied(entry) == "already-applied"


def test_ledger_check_applied_writes_nothing(world, ledger):
    author = Author(world, "hk-bureau")
    entry = author.commit(commitment(1))
    ledger.apply_block(next_block(world, ledger, [entry]))
    before = dict(ledger._db.iterator())
    for _ in range(3):
        assert ledger.check_applied(entry) == "already-applied"
    assert dict(ledger._db.iterator()) == before


def test_a_loaded_ledger_answers_the_same_after_reopening(world, ledger, tmp_path):
    author = Author(world, "hk-bureau")
    entry = author.commit(commitment(1))
    ledger.apply_block(next_block(world, ledger, [entry]))
    ledger.close()
    reopened = Ledger.open(tmp_path / "ledger", world.genesis)
    try:
        assert reopened.check_applied(entry) == "already-applied"
    finally:
        reopened.close()
