"""The driver's speed mechanisms: the entry verdict memo and the synced writes done off the event loop.

Each mechanism is checked for what makes it safe: the memo is bounded (at its edge) and never changes a
verdict; the off-loop write keeps the contract order (persist -> on_persisted -> send -> apply) and the
loop keeps running while the write is in progress.
"""

from __future__ import annotations

import collections
import threading

import pytest
import trio

from consensus.sim import app as sim_app
from node.daemon import ENTRY_VERDICTS_MAX, Daemon, EntryVerdictMemo
from tests.support.daemon_net import IDS, Net, ScriptedReplica, request, submit_all


class CountingApplication:
    """The simulator's application, counting stateless checks per entry."""

    def __init__(self):
        self.inner = sim_app.SimApplication()
        self.checks = collections.Counter()

    def check_request(self, entry):
        self.checks[entry] += 1
        return self.inner.check_request(entry)

    def check_request_shape(self, entry):
        return self.inner.check_request_shape(entry)

    def execute(self, parent, height, time_ms, entries):
        return self.inner.execute(parent, height, time_ms, entries)


def test_memo_remembers_verdicts_up_to_its_bound_and_forgets_the_least_recently_used():
    app = CountingApplication()
    memo = EntryVerdictMemo(app, verdicts_max=2)
    a, b, c = request(1), request(2), request(3)
    assert memo.check_request(a) is None and memo.check_request(b) is None
    assert len(memo) == 2                       # at the bound
    assert memo.check_request(a) is None        # hit: refreshes a
    assert app.checks[a] == 1
    assert memo.check_request(c) is None        # one past the bound: b (least recently used) goes
    assert len(memo) == 2
    assert memo.check_request(a) is None and app.checks[a] == 1
    assert memo.check_request(b) is None and app.checks[b] == 2     # forgotten, so checked again
    assert (memo.hits, memo.misses) == (2, 4)


def test_memo_keeps_refusals_and_passes_non_bytes_through():
    app = CountingApplication()
    memo = EntryVerdictMemo(app, verdicts_max=ENTRY_VERDICTS_MAX)
    bad = sim_app.make_request("client0", 1, b"x", valid=False)
    first = memo.check_request(bad)
    assert first is not None
    assert memo.check_request(bad) == first and app.checks[bad] == 1
    # Not bytes: the application's own answer, nothing remembered.
    assert memo.check_request("text") == app.inner.check_request("text")
    assert len(memo) == 1


def test_memo_bound_must_be_positive():
    with pytest.raises(AssertionError):
        EntryVerdictMemo(CountingApplication(), verdicts_max=0)


async def test_each_node_checks_each_entry_once(tmp_path):
    """Submit (RPC check), pooling by the core and a backup's check of the proposed block all see the
    same entry; with the memo each daemon runs the real check at most once per entry (and a backup
    that lets the primary and the backup after it vouch, not at all)."""
    net = Net(tmp_path)
    apps = {node_id: CountingApplication() for node_id, _ in IDS}

    async def start(nursery, node_id):
        daemon = Daemon(net.config(node_id), net.genesis, net.keys[node_id], net.ledgers[node_id],
                        application=apps[node_id])

        async def no_rpc(_nursery):
            return None
        daemon._start_rpc = no_rpc
        net.daemons[node_id] = daemon
        await nursery.start(daemon.run)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for node_id, _ in IDS:
                await start(nursery, node_id)
            entries = [request(seq) for seq in range(20)]
            receipts = []

            async def submit(entry):
                receipts.append(await net.daemons["cn-1"].submit(entry, True, 60))
            async with trio.open_nursery() as clients:
                for entry in entries:
                    clients.start_soon(submit, entry)
            assert all(r["status"] == "committed" for r in receipts)
            top = max(r["height"] for r in receipts)
            await net.wait_height([n for n, _ in IDS], top)
            # The primary and the backup after it check every entry; cn-1 checks its own client's.
            for node_id in ("hk-1", "hk-2", "cn-1"):
                assert {apps[node_id].checks[e] for e in entries} == {1}, node_id
            # cn-2 prepares on vouchers, or checks itself (once) when they are slow: never twice.
            assert {apps["cn-2"].checks[e] for e in entries} <= {0, 1}
            # The metrics say who checks everything: the checkers, and a backup after a fallback.
            for node_id, _ in IDS:
                metrics = net.daemons[node_id].metrics
                fell_back = metrics.vouch_fallbacks.get() > 0
                expected = 1 if node_id in ("hk-1", "hk-2") or fell_back else 0
                assert metrics.checks_all_signatures.get() == expected, node_id
            # cn-1 checked each entry at submit, then again when its core pooled it: a memo hit.
            # (Backups check on whichever comes first, the forwarded entry or the proposed block.)
            assert net.daemons["cn-1"].application.hits >= len(entries)
            nursery.cancel_scope.cancel()


async def test_off_loop_write_keeps_the_contract_order(tmp_path):
    """carry_out_many_off_loop writes every persist of the batch in one synced write, in order, in a
    worker thread, before the first message; then per Ready: on_persisted, its messages, its blocks;
    follow-ups after their own write."""
    from consensus.replica import Outbound, Ready

    net = Net(tmp_path)
    daemon = Daemon(net.config("hk-1"), net.genesis, net.keys["hk-1"], net.ledgers["hk-1"],
                    application=sim_app.SimApplication())
    journal = []
    threads = []

    def write(changes):
        threads.append(threading.get_ident())
        journal.append(("write", list(changes)))
    daemon.ledger.write_consensus_state = write
    daemon.network.send = lambda to, kind, data: journal.append(("send", to, data))
    daemon.network.broadcast = lambda kind, data: journal.append(("send", None, data))
    follow_up = Ready(persist=[(b"k3", b"v3")], messages=[Outbound("cn-1", b"released-1")])
    daemon.replica = ScriptedReplica(journal, stand_in_for=daemon.replica, follow_ups=[follow_up, Ready(messages=[Outbound(None, b"released-2")]),
                                               Ready(messages=[Outbound(None, b"released-3")])])
    first = Ready(persist=[(b"k1", b"v1"), (b"k2", None)], messages=[])
    second = Ready(messages=[Outbound("hk-2", b"plain")])
    third = Ready(persist=[(b"k1", b"v1-again")])
    await daemon.carry_out_many_off_loop([first, second, third])
    assert journal == [
        ("write", [(b"k1", b"v1"), (b"k2", None), (b"k1", b"v1-again")]),
        ("on_persisted",),                       # first's held messages come back in its follow-up
        ("write", [(b"k3", b"v3")]),             # the follow-up persists again before it sends
        ("on_persisted",),
        ("send", "cn-1", b"released-1"),
        ("send", None, b"released-2"),
        ("send", "hk-2", b"plain"),
        ("on_persisted",),                       # third
        ("send", None, b"released-3"),
    ]
    assert len(threads) == 2 and threading.get_ident() not in threads   # both writes in a worker thread


async def test_loop_runs_during_the_write_and_nothing_is_sent_before_it_returns(tmp_path):
    """While the synced write is in progress another task runs (here: it is what lets the write
    finish); the Ready's messages leave only after the write has returned."""
    from consensus.replica import Outbound, Ready

    net = Net(tmp_path)
    daemon = Daemon(net.config("hk-1"), net.genesis, net.keys["hk-1"], net.ledgers["hk-1"],
                    application=sim_app.SimApplication())
    journal = []
    release_write = threading.Event()

    def slow_write(changes):
        journal.append(("write started",))
        assert release_write.wait(10), "the event loop did not run during the write"
        journal.append(("write done",))
    daemon.ledger.write_consensus_state = slow_write
    daemon.network.send = lambda to, kind, data: journal.append(("send", to, data))
    daemon.network.broadcast = lambda kind, data: journal.append(("send", None, data))
    daemon.replica = ScriptedReplica(journal, stand_in_for=daemon.replica, follow_ups=[Ready(messages=[Outbound(None, b"vote")])])

    async def other_task():
        while not journal:
            await trio.sleep(0.001)
        journal.append(("loop ran",))
        release_write.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await daemon.carry_out_many_off_loop([Ready(persist=[(b"k", b"v")])])
    assert journal == [("write started",), ("loop ran",), ("write done",), ("on_persisted",),
                       ("send", None, b"vote")]


def _block(height, entries):
    from types import SimpleNamespace

    header = SimpleNamespace(height=height, time_ms=1_700_000_000_000, tree_size=height * len(entries))
    return SimpleNamespace(header=header, entries=tuple(entries), certificate=SimpleNamespace(view=0))


async def test_off_loop_apply_carries_the_persists_and_wakes_submitters_after_the_write(tmp_path):
    """A committed block that follows the applied height is applied (in a worker thread) in one synced
    batch with the Readies' persists, before their on_persisted and messages and before its catch-up
    serving; a waiting submitter is woken only once apply_block has returned; readers waiting on
    ledger_quiet during the apply resume after it."""
    from consensus.replica import Outbound, Ready

    net = Net(tmp_path)
    daemon = Daemon(net.config("hk-1"), net.genesis, net.keys["hk-1"], net.ledgers["hk-1"],
                    application=sim_app.SimApplication())
    journal = []
    release_apply = threading.Event()
    entry = request(7)

    def slow_apply(block, consensus_changes=()):
        journal.append(("apply started", block.header.height, threading.get_ident() != main_thread))
        journal.append(("with changes", list(consensus_changes)))
        assert release_apply.wait(10), "the event loop did not run during the apply"
        journal.append(("apply done", block.header.height))
        from tests.support.daemon_net import Outcome
        return [Outcome(True, index) for index in range(len(block.entries))]
    main_thread = threading.get_ident()
    daemon.ledger.apply_block = slow_apply
    daemon.ledger.write_consensus_state = lambda changes: journal.append(("write",))
    daemon.network.send = lambda to, kind, data: journal.append(("send", to, data))
    daemon.network.broadcast = lambda kind, data: journal.append(("send", None, data))
    daemon._serve_catch_up = lambda peer, first, last: journal.append(("serve", peer))
    daemon.replica = ScriptedReplica(journal, stand_in_for=daemon.replica, follow_ups=[Ready()])
    waiter_receipts = []

    async def submitter():
        waiter = daemon._waiters.add(entry)
        await waiter.event.wait()
        journal.append(("woken", waiter.receipt["height"]))
        waiter_receipts.append(waiter.receipt)

    async def reader():
        while not any(item[0] == "apply started" for item in journal):
            await trio.sleep(0.001)
        journal.append(("reader waits",))
        release_apply.set()
        await daemon.ledger_quiet()
        journal.append(("reader reads",))

    ready = Ready(persist=[(b"k", b"v")], messages=[Outbound("cn-1", b"commit-vote")],
                  committed=[_block(1, [entry])], serve_catch_up=[("cn-2", 1, 1)])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submitter)
            nursery.start_soon(reader)
            await trio.sleep(0.01)
            await daemon.carry_out_many_off_loop([ready])
    assert ("write",) not in journal     # no synced write of its own: the persists went with the block
    assert journal.index(("apply started", 1, True)) < journal.index(("with changes", [(b"k", b"v")]))
    assert journal.index(("apply done", 1)) < journal.index(("on_persisted",)) < journal.index(("send", "cn-1", b"commit-vote"))
    assert journal.count(("apply started", 1, True)) == 1
    assert journal.index(("apply started", 1, True)) < journal.index(("reader waits",)) < journal.index(("apply done", 1))
    assert journal.index(("apply done", 1)) < journal.index(("reader reads",))
    assert journal.index(("apply done", 1)) < journal.index(("woken", 1))
    assert journal.index(("apply done", 1)) < journal.index(("serve", "cn-2"))
    assert daemon.height == 1 and waiter_receipts[0]["status"] == "committed"


async def test_off_loop_persists_of_a_batch_ride_with_its_first_committed_block_only(tmp_path):
    """The persists of every Ready in the batch go in the synced batch of the first committed block
    when it follows the applied height; a later block of the batch gets its own write, after its
    Ready's messages, as before. A batch whose committed block is already applied writes its persists
    alone and applies nothing."""
    from consensus.replica import Outbound, Ready
    from tests.support.daemon_net import Outcome

    net = Net(tmp_path)
    daemon = Daemon(net.config("hk-1"), net.genesis, net.keys["hk-1"], net.ledgers["hk-1"],
                    application=sim_app.SimApplication())
    journal = []

    def apply(block, consensus_changes=()):
        journal.append(("apply", block.header.height, list(consensus_changes)))
        return [Outcome(True, index) for index in range(len(block.entries))]
    daemon.ledger.apply_block = apply
    daemon.ledger.write_consensus_state = lambda changes: journal.append(("write", list(changes)))
    daemon.network.send = lambda to, kind, data: journal.append(("send", to, data))
    daemon.network.broadcast = lambda kind, data: journal.append(("send", None, data))
    daemon.replica = ScriptedReplica(journal, stand_in_for=daemon.replica, follow_ups=[Ready(), Ready(), Ready()])
    prepare = Ready(persist=[(b"vote", b"prepare")], messages=[Outbound("cn-1", b"prepare")])
    commit = Ready(persist=[(b"committed", b"1")], messages=[Outbound(None, b"checkpoint")],
                   committed=[_block(1, [request(1)]), _block(2, [request(2)])])
    with trio.fail_after(20):
        await daemon.carry_out_many_off_loop([prepare, commit])
        assert journal == [
            ("apply", 1, [(b"vote", b"prepare"), (b"committed", b"1")]),
            ("on_persisted",), ("send", "cn-1", b"prepare"),
            ("on_persisted",), ("send", None, b"checkpoint"),
            ("apply", 2, []),
        ]
        assert daemon.height == 2
        journal.clear()
        await daemon.carry_out_many_off_loop([Ready(persist=[(b"k", b"v")], committed=[_block(2, [request(2)])])])
        assert journal == [("write", [(b"k", b"v")]), ("on_persisted",)]


# --- transport: queued frames written together --------------------------------------------------

async def test_frames_sent_together_arrive_one_by_one_in_order():
    """send_frames encrypts each frame on its own (same wire as send_frame each) in one write."""
    from tests.support.transport_helpers import handshaken_pair, make_validators

    keys, validators = make_validators()
    with trio.fail_after(20):
        results = await handshaken_pair(keys, validators)
        a, b = results["a"][1], results["b"][1]
        writes = []
        real_send_all = a.stream.send_all

        async def counting_send_all(data):
            writes.append(len(data))
            await real_send_all(data)
        a.stream.send_all = counting_send_all
        await a.send_frames([b"one", b"two", b"three"])
        await a.send_frame(b"four")
        assert len(writes) == 2
        assert [await b.receive_frame() for _ in range(4)] == [b"one", b"two", b"three", b"four"]


async def test_write_loop_batches_at_its_bound_and_drops_only_an_oversized_frame(monkeypatch):
    """Queued frames go out in writes of at most SEND_BATCH_BYTES_MAX plaintext bytes (at least one frame
    each); a frame over the frame limit is refused alone and the others are still delivered in order."""
    import node.transport as transport
    from node.config import Address
    from node.transport import FRAME_KIND_CONSENSUS, SecretConnection
    from tests.support.transport_helpers import FRAME_BYTES_MAX, make_network, make_validators, wait_for

    monkeypatch.setattr(transport, "SEND_BATCH_BYTES_MAX", 1000)
    batches = []
    real_send_frames = SecretConnection.send_frames

    async def recording_send_frames(self, plaintexts):
        batches.append([len(p) for p in plaintexts])
        await real_send_frames(self, plaintexts)
    monkeypatch.setattr(SecretConnection, "send_frames", recording_send_frames)
    keys, validators = make_validators()
    in1_send, in1_recv = trio.open_memory_channel(64)
    in0_send, _ = trio.open_memory_channel(64)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            net1 = make_network("v1", keys, validators, {"v0": None}, in1_send)
            port1 = await nursery.start(net1.run)
            net0 = make_network("v0", keys, validators, {"v1": Address("127.0.0.1", port1)}, in0_send,
                                peer_send_queue_frames_max=64)
            await nursery.start(net0.run)
            await wait_for(lambda: net0.connected_peers() == ["v1"])
            await trio.sleep(0.05)        # the handshake frames are written
            batches.clear()
            payloads = [bytes([i]) * 300 for i in range(5)]
            oversized = b"x" * FRAME_BYTES_MAX
            for payload in payloads[:2]:
                net0.send("v1", FRAME_KIND_CONSENSUS, payload)
            net0.send("v1", FRAME_KIND_CONSENSUS, oversized)
            for payload in payloads[2:]:
                net0.send("v1", FRAME_KIND_CONSENSUS, payload)
            received = [(await in1_recv.receive()).payload for _ in payloads]
            assert received == payloads
            await wait_for(lambda: not net0.slots["v1"].queue)
            assert net0.slots["v1"].queued_bytes == 0
            sent = [size for batch in batches for size in batch]
            assert all(sum(batch) <= 1000 or len(batch) == 1 for batch in batches)
            assert any(len(batch) > 1 for batch in batches)          # frames did go out together
            assert net0.metrics.rejected_frames.get(label_value="oversized-outbound") == 1
            assert len([s for s in sent if s < FRAME_BYTES_MAX]) >= len(payloads)
            nursery.cancel_scope.cancel()


async def test_an_idle_node_ticks_rarely_and_a_request_still_commits_at_once(tmp_path):
    """With nothing pending the driver gives the core the clock only when it asks (Replica.next_tick_ms)
    or every IDLE_TICK_INTERVAL_MS, not every tick_interval_ms; a request then commits without waiting
    for a sparse tick."""
    from node.daemon import IDLE_TICK_INTERVAL_MS

    net = Net(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for node_id, _ in IDS:
                await net.start(nursery, node_id)
            receipts = {}
            await submit_all(net.daemons["hk-2"], [1], receipts)       # links up, first block committed
            await net.wait_height([node_id for node_id, _ in IDS], 1)
            await trio.sleep(1.0)                                      # settled: nothing pending anywhere
            ticks = collections.Counter()
            for node_id, daemon in net.daemons.items():
                real_on_tick = daemon.replica.on_tick

                def counting(now_ms, node_id=node_id, real_on_tick=real_on_tick):
                    ticks[node_id] += 1
                    return real_on_tick(now_ms)
                daemon.replica.on_tick = counting
            await trio.sleep(1.0)
            tick_interval_ms = net.config("hk-1").consensus.tick_interval_ms
            for node_id, _ in IDS:
                # One tick per idle interval plus the periodic timers' own (retransmission, the sweeps every
                # view_timeout_ms / 4, the probe): well under the 100 of a tick every tick_interval_ms.
                assert 1000 // IDLE_TICK_INTERVAL_MS // 2 <= ticks[node_id] < 1000 // tick_interval_ms // 2, (
                    node_id, dict(ticks))
            await submit_all(net.daemons["cn-2"], [2], receipts)
            assert sorted(receipts) == [1, 2]
            nursery.cancel_scope.cancel()
