"""Graceful shutdown of real daemon processes: SIGTERM drains waiting submits, a second signal stops at once.

A 4-validator network (tests/support/node_cluster.py) where only two validators run at first, so
nothing can commit (a quorum is 3 of 4): a client's `submit` with wait stays pending on node
hk-2 for as long as the test wants. hk-2 then gets SIGTERM, and the test decides whether the
block can commit during the drain (by starting cn-1) or not. Waits are liveness bounds.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time

import pytest

import trio

from consensus import codec
from consensus.sim import app as sim_app
from node.api import ApiError
from node.config import ConfigError, config_from_dict, load_config, render_config
from node.daemon import Daemon
from node.keys import load_key_file
from storage import entries as ledger_entries
from storage.genesis import Genesis

from tests.support.node_cluster import CHAIN_ID, RpcClient, RpcError

SUBMIT_WAIT_MS = 60_000        # longer than any drain here: the answer comes from the shutdown
EXIT_MARGIN_S = 15             # process start-up, fsync and teardown on a loaded 2-core machine
STARTUP_TIMEOUT_S = 30
X = "hk-2"                     # the node stopped (a backup of view 0)

_nonces = iter(range(1, 1_000_000))


def make_entry(cluster) -> bytes:
    key = load_key_file(cluster.keys_dir / "bank-hk.json").signing_key
    return ledger_entries.build_commit(key, "bank-hk", CHAIN_ID, os.urandom(32), "credit-report", "HK",
                                       next(_nonces), int(time.time() * 1000))


def set_drain(cluster, node_id: str, drain_ms: int) -> None:
    node = cluster.nodes[node_id]
    config = load_config(node.config_path)
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, shutdown_drain_ms=drain_ms))
    node.config_path.write_text(render_config(config))


class WaitingSubmit:
    """One `submit` with wait on its own connection, in a thread; `outcome` is what the client saw."""

    def __init__(self, port: int, entry: bytes, key_file):
        self.client = RpcClient(port, timeout_s=SUBMIT_WAIT_MS / 1000 + EXIT_MARGIN_S, key_file=key_file)
        self.entry = entry
        self.outcome: tuple[str, object] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome = ("result", self.client.call("submit", self.entry, {"wait": True,
                                                                              "timeout_ms": SUBMIT_WAIT_MS}))
        except RpcError as exc:
            self.outcome = ("error", exc.code)
        except (OSError, ConnectionError) as exc:
            self.outcome = ("connection", type(exc).__name__)
        finally:
            self.client.close()

    def join(self, timeout_s: float) -> tuple[str, object]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the waiting client got no answer"
        return self.outcome


def start_two_and_wait_pending(cluster, drain_ms: int) -> tuple[WaitingSubmit, RpcClient, bytes]:
    """hk-1 and hk-2 run (no quorum); a client waits on a submit to hk-2; another connection is open."""
    set_drain(cluster, X, drain_ms)
    for node_id in ("hk-1", X):
        cluster.start(node_id)
    for node_id in ("hk-1", X):
        cluster.wait_serving(node_id, STARTUP_TIMEOUT_S)
    node = cluster.nodes[X]
    entry = make_entry(cluster)
    waiting = WaitingSubmit(node.rpc, entry, node.dir / "key.json")
    # Pooled at hk-2 means taken by its driver: the client is now waiting for a commit.
    cluster.wait_until(lambda: cluster.status(X)["mempool_size"] >= 1, STARTUP_TIMEOUT_S, "the entry pooled on hk-2")
    open_connection = node.rpc_client()
    assert open_connection.call("status")["height"] == 0
    return waiting, open_connection, entry


def signal_and_wait_for_drain(cluster, signum=signal.SIGTERM) -> None:
    node = cluster.nodes[X]
    node.process.send_signal(signum)
    cluster.wait_until(lambda: any(line.get("event") == "shutting down" for line in node.log_lines()),
                       STARTUP_TIMEOUT_S, "the shutting down line")


def assert_store_at_block_boundary(cluster, node_id: str) -> int:
    """The stopped node's LevelDB opens, its head block is whole and certified, the tree matches it."""
    from storage.ledger import Ledger

    genesis = Genesis.load(cluster.genesis_path)
    ledger = Ledger.open(cluster.nodes[node_id].data_dir / "ledger", genesis)
    try:
        height = ledger.height()
        if height:
            block = ledger.committed_block(height)
            block.certificate.verify(block.header, genesis.validator_set)
            assert ledger.header(height) == block.header
            assert ledger.tree_size() == block.header.tree_size
            assert ledger.tree_root(ledger.tree_size()) == block.header.tree_root
            assert len(ledger.block_entries(height)) == block.header.entry_count
        assert ledger.committed_block(height + 1) is None
        return height
    finally:
        ledger.close()


def assert_refuses_connections(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.slow
def test_sigterm_drain_gives_the_waiting_client_its_receipt(cluster):
    """During the drain the RPC port refuses new connections, a new submit on an open connection is
    answered shutting-down, and the waiting submit gets its receipt once its block commits (a third
    validator starts); then hk-2 exits 0 without waiting out the drain, its store at a block boundary."""
    drain_ms = 20_000
    waiting, open_connection, entry = start_two_and_wait_pending(cluster, drain_ms)
    signal_and_wait_for_drain(cluster)
    node = cluster.nodes[X]
    try:
        with pytest.raises(RpcError) as refused:
            open_connection.call("submit", make_entry(cluster), {"wait": True, "timeout_ms": 1000})
        assert refused.value.code == "shutting-down"
        assert open_connection.call("status")["height"] == 0     # reads are still answered
    finally:
        open_connection.close()
    assert_refuses_connections(node.rpc)
    assert node.process.poll() is None and waiting.thread.is_alive()

    cluster.start("cn-1")     # a quorum again: the pending entry commits during the drain
    kind, result = waiting.join(drain_ms / 1000 + EXIT_MARGIN_S)
    assert kind == "result", (kind, result, node.log_path.read_text()[-3000:])
    assert result["status"] == "committed" and result["id"] == codec.sha256(entry)
    assert node.process.wait(drain_ms / 1000 + EXIT_MARGIN_S) == 0
    events = [line.get("event") for line in node.log_lines()]
    assert events.index("shutting down") < events.index("drained") and events[-1] == "stopped"
    drained = next(line for line in node.log_lines() if line.get("event") == "drained")
    assert drained["released_waiters"] == 0 and drained["unanswered"] == 0
    height = assert_store_at_block_boundary(cluster, X)
    assert height >= result["height"]


@pytest.mark.slow
def test_sigterm_drain_deadline_answers_shutting_down(cluster):
    """Nothing can commit: at the end of the drain the waiting client is answered shutting-down (not a
    reset connection) and hk-2 exits 0 within the drain bound plus a margin."""
    drain_ms = 1_500
    waiting, open_connection, _ = start_two_and_wait_pending(cluster, drain_ms)
    open_connection.close()
    node = cluster.nodes[X]
    node.process.send_signal(signal.SIGTERM)
    kind, code = waiting.join(drain_ms / 1000 + EXIT_MARGIN_S)
    assert (kind, code) == ("error", "shutting-down"), node.log_path.read_text()[-3000:]
    assert node.process.wait(drain_ms / 1000 + EXIT_MARGIN_S) == 0
    drained = next(line for line in node.log_lines() if line.get("event") == "drained")
    assert drained["released_waiters"] == 1 and drained["unanswered"] == 0
    assert node.log_lines()[-1]["event"] == "stopped"
    assert assert_store_at_block_boundary(cluster, X) == 0


@pytest.mark.slow
def test_second_signal_stops_at_once(cluster):
    """With a drain of 10 minutes, a second signal (SIGINT after SIGTERM) stops hk-2 long before the
    drain ends: exit 0, the ledger closed (it reopens) and the last line is `stopped`."""
    drain_ms = 600_000
    waiting, open_connection, _ = start_two_and_wait_pending(cluster, drain_ms)
    open_connection.close()
    signal_and_wait_for_drain(cluster, signal.SIGTERM)
    node = cluster.nodes[X]
    node.process.send_signal(signal.SIGINT)
    assert node.process.wait(EXIT_MARGIN_S) == 0
    kind, _ = waiting.join(EXIT_MARGIN_S)
    assert kind in ("connection", "error")       # stopped at once: no answer owed, but never a hang
    events = [line.get("event") for line in node.log_lines()]
    assert "stopping now" in events and "drained" not in events and events[-1] == "stopped"
    assert assert_store_at_block_boundary(cluster, X) == 0


# --- the limit and the drain in one process ---------------------------------------------------------

def test_shutdown_drain_ms_is_checked_at_its_edges(tmp_path):
    raw = {"node_id": "hk-1", "key_file": "k", "genesis_file": "g", "data_dir": "d",
           "listen": {"p2p": "127.0.0.1:0", "rpc": "127.0.0.1:0", "metrics": "127.0.0.1:0"},
           "rpc": {"plaintext": True}}
    for good in (0, 600_000):
        assert config_from_dict({**raw, "limits": {"shutdown_drain_ms": good}}, tmp_path).limits.shutdown_drain_ms == good
    for bad in (-1, 600_001, "5000", True, 1.5):
        with pytest.raises(ConfigError, match=r"^limits\.shutdown_drain_ms:"):
            config_from_dict({**raw, "limits": {"shutdown_drain_ms": bad}}, tmp_path)


async def test_zero_drain_answers_waiting_submits_at_once_and_refuses_new_ones(tmp_path):
    """shutdown_drain_ms = 0 (the edge): drain() releases a submit waiting on a block that cannot commit
    (one validator of four runs) with shutting-down; new submits are refused the same way."""
    from tests.support.daemon_net import Net, request

    class ZeroDrainNet(Net):
        def config(self, node_id):
            config = super().config(node_id)
            return dataclasses.replace(config, limits=dataclasses.replace(config.limits, shutdown_drain_ms=0))

    net = ZeroDrainNet(tmp_path)
    outcome = {}
    async with trio.open_nursery() as nursery:
        await net.start(nursery, "hk-2")
        daemon = net.daemons["hk-2"]

        async def wait_on_submit():
            try:
                outcome["result"] = await daemon.submit(request(1), True, 60)
            except ApiError as exc:
                outcome["error"] = exc.code
        nursery.start_soon(wait_on_submit)
        while daemon.replica.pending_request_count < 1:
            await trio.sleep(0.01)
        await daemon.drain()
        assert daemon._submits_in_progress == 0 and outcome == {"error": "shutting-down"}
        with pytest.raises(ApiError) as refused:
            await daemon.submit(request(2), False, 0)
        assert refused.value.code == "shutting-down"
        assert daemon.metrics.rejected_requests.get("shutting-down") == 1
        nursery.cancel_scope.cancel()


async def test_cancelling_the_daemon_during_a_block_write_waits_for_the_write(tmp_path):
    """The shutdown cancel (end of the drain, or a second signal) arrives while a block's synced write
    runs in a worker thread: the write is awaited, not abandoned, so the ledger is closed only after
    it, and the block's waiter still gets its receipt."""
    from tests.support.daemon_net import MemoryLedger, Net, request

    class SlowLedger(MemoryLedger):
        def __init__(self):
            super().__init__()
            self.entered = threading.Event()
            self.release = threading.Event()

        def apply_block(self, block, consensus_changes=()):
            self.entered.set()
            assert self.release.wait(60), "the test never released the write"
            return super().apply_block(block, consensus_changes)

    net = Net(tmp_path)
    ledger = SlowLedger()
    daemon = Daemon(net.config("hk-1"), net.genesis, net.keys["hk-1"], ledger, application=sim_app.SimApplication())
    entry = request(1)
    waiter = daemon._waiters.add(entry)
    block = type("Block", (), {})()
    block.header = type("Header", (), {"height": 1, "time_ms": 0, "tree_size": 1})()
    block.entries = (entry,)
    block.certificate = type("Certificate", (), {"view": 0})()
    finished = trio.Event()

    async def apply_then_mark(task_status=trio.TASK_STATUS_IGNORED):
        try:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await daemon._apply_off_loop(block)
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(apply_then_mark)
        while not ledger.entered.is_set():
            await trio.sleep(0.005)
        scope.cancel()
        await trio.sleep(0.05)
        assert not finished.is_set(), "the cancel abandoned a block write under way"
        ledger.release.set()
        await finished.wait()
    assert ledger.height() == 1 and daemon.height == 1
    assert waiter.event.is_set() and waiter.receipt == {"status": "committed", "height": 1, "leaf_index": 0}
