"""The validator daemon: one trio process running the consensus core over peer links and LevelDB.

Tasks (all in one nursery; on SIGTERM/SIGINT the daemon drains, then cancels them together):
- the peer network (node.transport): a listener, dialers, a reader and a writer per link;
  readers put frames on the driver's bounded event channel (and wait when it is full, or when
  their peer has limits.peer_inbound_queue_bytes_max on it: the driver releases each frame it
  takes). Core rejections that mean "malformed" are reported back to the transport, which cuts
  a peer that sends too many;
- the driver: the only task that touches the replica. It takes peer frames and
  client requests from that channel, and clock ticks when the core next needs one
  (never more often than tick_interval_ms, at least every IDLE_TICK_INTERVAL_MS),
  and carries out their Readies through consensus.host (the code the simulator
  runs), in the contract order of docs/INTERNALS.md: persist (one synced batch)
  -> on_persisted -> send -> apply committed blocks -> serve catch-up -> log
  evidence and rejections. The Readies of everything drained in one wake-up
  share one synced write, and the synced writes (consensus state and block apply) run in a worker thread
  that the driver awaits: the order is unchanged, but readers and the RPC
  server keep running during the fsync (RPC reads wait for `ledger_quiet`);
- the RPC server (node.rpc) and the metrics server;
- the fault-injection poller, only when `testing.fault_injection` is on.

Shutdown (run_daemon): the first SIGTERM/SIGINT starts `Daemon.drain`: the RPC listener closes,
new submits are answered "shutting-down", and the driver and peer links keep running for up to
limits.shutdown_drain_ms so that submitters already waiting get their receipt if their block
commits meanwhile ("shutting-down" otherwise). Then everything is cancelled and the ledger closed.
A second signal cancels at once. Either way a synced write in a worker thread is awaited, never
abandoned (trio.to_thread.run_sync is not abandoned on cancellation), so no block is half-applied.

Every call into consensus.replica, consensus.messages and storage goes through
the small functions in the "seams" section, so a change of those APIs touches
one place.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import gc
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from consensus import codec, host
from consensus import replica as replica_module

from . import rpc, tls
from .api import ApiError
from .config import Address, NodeConfig
from .keys import KeyFileError, KeyPair, load_key_file
from .logs import LogBudget, configure_logging
from .metrics import NodeMetrics, serve_metrics
from .query_log import QueryLog, QueryLogError
from .submit_shares import SubmitShares
from .submit_waiters import ClientRequest, SubmitWaiters
from .transport import FRAME_KIND_CONSENSUS, PeerLimits, PeerNetwork, peer_keys_of
from .wire import ERROR_ALREADY_COMMITTED, ERROR_BAD_ENTRY, ERROR_MEMPOOL_FULL, ERROR_SHUTTING_DOWN, ERROR_TIMEOUT

VERSION = "0.1.0"
PARTITION_POLL_MS = 100                # fault-injection file poll period
# The longest the driver goes without giving the core the clock: when the core asks for no tick sooner
# (Replica.next_tick_ms), an idle node ticks ten times a second, not every tick_interval_ms.
IDLE_TICK_INTERVAL_MS = 100
DRAIN_EVENTS_MAX = 256                 # events fed to the core per driver wake-up (one synced write)
PARTITION_FILE_NAME = "fault-partition"
EXIT_ENVIRONMENT = 1                   # key, genesis, data dir or port unusable
REJECTION_LOG_LINES_MAX = 20           # "message rejected" lines per peer and reason per window
REJECTION_LOG_WINDOW_MS = 60_000
# A worker thread that finished a synced write waits for the GIL up to this long while the event
# loop is busy (Python's default is 5 ms, paid at every hand-back, i.e. several times per block).
GIL_SWITCH_INTERVAL_S = 0.0005
LEDGER_WRITE_BUFFER_STEP_BYTES = 8 * 1024 * 1024  # validators' LevelDB memtables are odd multiples of this
LEDGER_WRITE_BUFFER_STEPS = 4                      # ... in this many sizes: 40, 56, 72, 88 MiB (see ledger_write_buffer_bytes)
GC_YOUNG_THRESHOLD_OBJECTS = 50_000  # net container allocations between young collections (default 700)
ENTRY_VERDICTS_MAX = 65_536            # remembered entry signature-check verdicts (~100 bytes each)
# After the drain, how long answers already given to waiting submitters may take to be written to
# their connections before everything is cancelled (a client that does not read is not waited for).
SHUTDOWN_ANSWERS_FLUSH_MS = 1_000

CLIENT_PEER_ID = replica_module.CLIENT  # the peer id the core reports for our own clients' requests
ALREADY_COMMITTED = ERROR_ALREADY_COMMITTED  # a submit of bytes already on the ledger (the core's reason too)
# Core rejections that mean a peer sent bytes that are not a well-formed message (consensus decode_message
# and the codec's reason codes). Reported to the transport, which cuts a peer that sends too many of them.
# Protocol-level reasons ("wrong-view", "outside-window", "invalid-request:*", ...) happen between honest
# validators and are never reported.
MALFORMED_MESSAGE_REASONS = frozenset({
    "bad-encoding", "too-large", "bad-type", "bad-field", "bad-body",
    "too-deep", "too-long", "too-many-items", "malformed", "not-canonical",
})

log = structlog.get_logger()


class FatalError(Exception):
    """The node cannot go on (storage refuses a certified block): exit with status 1."""


class StartupError(Exception):
    """The environment prevents starting (missing key, bad genesis, port in use): exit with this reason."""


# --- seams: every touch point of consensus.replica, consensus.messages and storage --------------

def _load_genesis(path: Path):
    from storage.genesis import Genesis, GenesisError

    try:
        return Genesis.load(path)
    except GenesisError as exc:
        raise StartupError(f"genesis {path}: {exc}") from None
    except OSError as exc:
        raise StartupError(f"genesis {path}: {exc.strerror}") from None


def _genesis_validators(genesis):
    return genesis.validator_set


def _current_validators(ledger, genesis, height: int):
    """The set of the next height to decide: the ledger's epochs say (a store without epochs, as some
    in-process tests use, stays with genesis)."""
    epochs = getattr(ledger, "epochs", None)
    return genesis.validator_set if epochs is None else epochs.schedule.config_at(height + 1).validators


def _ledger_p2p_addresses(ledger) -> dict[str, Address | None]:
    """Validator id -> P2P address as the ledger's epochs hold them: genesis's, then each added
    validator's from its reconfigure entry (issue 17); {} for a store without epochs."""
    from .config import ConfigError, parse_address

    epochs = getattr(ledger, "epochs", None)
    addresses: dict[str, Address | None] = {}
    for validator_id, where in (epochs.addresses.items() if epochs is not None else ()):
        try:
            addresses[validator_id] = parse_address(where["p2p"], f"ledger {validator_id}") if "p2p" in where else None
        except ConfigError:
            addresses[validator_id] = None
    return addresses


def _genesis_p2p_addresses(genesis) -> dict[str, Address | None]:
    """Validator id -> P2P address from genesis (None when genesis has none for it)."""
    from .config import ConfigError, parse_address

    addresses: dict[str, Address | None] = {}
    for validator in genesis.validator_set.validators:
        text = genesis.validator_addresses.get(validator.id, {}).get("p2p") if hasattr(
            genesis, "validator_addresses") else None
        try:
            addresses[validator.id] = parse_address(text, f"genesis {validator.id}") if text else None
        except ConfigError:
            addresses[validator.id] = None
    return addresses


def _open_ledger(path: Path, genesis, node_id: str):
    from storage.ledger import Ledger

    return Ledger.open(path, genesis, write_buffer_bytes=ledger_write_buffer_bytes(genesis.validator_set, node_id))


def ledger_write_buffer_bytes(validator_set, node_id: str) -> int:
    """LevelDB's memtable size for this validator: staggered by its place in genesis.

    Validators write the same bytes, so with one size they would all write (and compress) a table
    at the same moment. On a machine they share (the testnet, `make bench`) four at once stalled
    commits for about half a second (p99 at 1,000/s over 60 s: 317 ms; staggered: 80 ms). Apart,
    at most one validator of a quorum is busy with it at a time.

    Two sizes still meet at their common multiples. The sizes are 5, 7, 9 and 11 steps, pairwise
    coprime, so the first meeting is after 280 MiB of writes and meetings are 2.4 times rarer
    than with 4, 5, 6 and 7 steps (where 32 and 48 MiB met every 96 MiB).
    """
    ids = [v.id for v in validator_set.validators]
    place = ids.index(node_id) if node_id in ids else 0
    return (5 + 2 * (place % LEDGER_WRITE_BUFFER_STEPS)) * LEDGER_WRITE_BUFFER_STEP_BYTES


def _ledger_application(ledger):
    from storage.application import LedgerApplication

    return LedgerApplication(ledger)


def _load_spare_keys(config: NodeConfig) -> tuple[KeyPair, ...]:
    """The keys of spare_key_files (a rotated key, loaded before its epoch starts)."""
    spares = []
    for path in config.spare_key_files:
        try:
            spares.append(load_key_file(path))
        except (KeyFileError, OSError) as exc:
            raise StartupError(f"spare_key_files: {path}: {exc}") from None
    return tuple(spares)


def _build_replica(config: NodeConfig, genesis, key: KeyPair, ledger, application, spare_keys: tuple = ()):
    """The consensus core for this node (StartupError for a consensus config it refuses or a
    persisted state it cannot read, each with the reason)."""
    from consensus.replica import Replica, ReplicaConfig, ReplicaConfigError

    height, header = _last_applied(ledger)
    try:
        replica_config = ReplicaConfig(
            batch_requests_max=config.consensus.batch_requests_max,
            batch_wait_ms=config.consensus.batch_wait_ms,
            partial_batch_in_flight_max=config.consensus.partial_batch_in_flight_max,
            view_timeout_ms=config.consensus.view_timeout_ms,
            checkpoint_interval=config.consensus.checkpoint_interval,
            watermark_window=config.consensus.watermark_window,
            request_pool_max=config.limits.mempool_requests_max,
            vouch_wait_ms=config.consensus.vouch_wait_ms,
            forward_others_after_ms=config.consensus.forward_others_after_ms,
        )
        return Replica(
            config=replica_config,
            validators=_genesis_validators(genesis),
            me=config.node_id,
            signing_key=key.signing_key,
            chain_id=genesis.chain_id,
            app=application,
            persisted=ledger.load_consensus_state(),
            last_applied=(height, header),
            margin_heights=genesis.epoch_margin_heights,   # the chain's, so every validator derives one boundary
            spare_signing_keys=tuple(spare.signing_key for spare in spare_keys),
            joining=config.joining,
        )
    except ReplicaConfigError as exc:
        raise StartupError(f"[consensus]: {exc}") from None
    except ValueError as exc:   # persisted state the replica cannot read, with the reason
        raise StartupError(f"consensus state in {config.data_dir}: {exc}") from None


def _last_applied(ledger) -> tuple[int, Any]:
    height = ledger.height()
    return height, (ledger.header(height) if height else None)


def _apply_block(ledger, block, consensus_changes=()) -> list:
    """Apply a committed block, with the replica's changes if any in the same synced batch; return
    its per-entry outcomes (see _receipt)."""
    return ledger.apply_block(block, consensus_changes)


def _read_blocks(ledger, from_height: int, to_height: int) -> list:
    blocks = []
    for height in range(from_height, to_height + 1):
        block = ledger.committed_block(height)
        if block is None:
            break
        blocks.append(block)
    return blocks


def _encode_catch_up_response(blocks) -> bytes:
    from consensus.messages import encode_catch_up_response

    return encode_catch_up_response(blocks)


def _admission(ledger, entry: bytes) -> tuple[str | None, str | None]:
    """(participant, reason) of the door check against the applied state (Ledger.admission); storage
    without it (the driver tests' in-memory ledger) has no door and no participants: (None, None)."""
    admission = getattr(ledger, "admission", None)
    return (None, None) if admission is None else admission(entry)


def _entry_id(entry: bytes) -> bytes:
    # The replica's request id: SHA-256 of the entry bytes.
    return codec.sha256(entry)


def _receipt(block, index: int, outcome) -> dict:
    """What a waiting submitter gets for entry `index` of `block`."""
    if getattr(outcome, "ok", True):
        return {"status": "committed", "height": block.header.height, "leaf_index": outcome.leaf_index}
    return {"status": "rejected", "height": block.header.height, "reason": outcome.reason}


class EntryVerdictMemo:
    """The consensus Application with a bounded memory of `check_request` verdicts.

    An entry reaches the stateless check up to three times on a node (RPC submit, the core pooling
    it, a backup validating the proposed block), and the check is an Ed25519 verification (about 40 us here).
    The check depends on the entry's bytes, the genesis and the epochs' regulator keys only, so its
    verdict for the same bytes holds until the epoch schedule changes (`forget_verdicts`): remember it
    by SHA-256 of the entry, least recently used forgotten first, at most `verdicts_max`. `execute` and everything else go to the wrapped application unchanged.
    """

    def __init__(self, application, verdicts_max: int = ENTRY_VERDICTS_MAX) -> None:
        assert verdicts_max >= 1, "the memo must hold at least one verdict"
        self.application = application
        self.verdicts_max = verdicts_max
        self._verdicts: collections.OrderedDict[bytes, str | None] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._verdicts)

    def check_request(self, request: bytes) -> str | None:
        if type(request) is not bytes:
            return self.application.check_request(request)   # not hashable as an entry: no memo
        key = codec.sha256(request)
        verdicts = self._verdicts
        if key in verdicts:
            verdicts.move_to_end(key)
            self.hits += 1
            return verdicts[key]
        self.misses += 1
        verdict = self.application.check_request(request)
        verdicts[key] = verdict
        if len(verdicts) > self.verdicts_max:
            verdicts.popitem(last=False)
        return verdict

    def forget_verdicts(self) -> None:
        """A governance entry's verdict depends on the regulator keys, which change with the epochs: the
        daemon forgets every verdict when the schedule changes."""
        self._verdicts.clear()

    def execute(self, parent, height, time_ms, entries):
        return self.application.execute(parent, height, time_ms, entries)

    def __getattr__(self, name: str):
        return getattr(self.application, name)


# --- the daemon -----------------------------------------------------------------------------------


class Daemon:
    """A running validator; implements node.api.NodeApi for the RPC server."""

    def __init__(self, config: NodeConfig, genesis, key: KeyPair, ledger, *, application=None,
                 metrics: NodeMetrics | None = None):
        self.config = config
        self.genesis = genesis
        self.key = key
        self.ledger = ledger
        self.query_log: QueryLog | None = None    # open_daemon opens it; in-process tests may go without
        self.metrics = metrics or NodeMetrics()
        self.chain_id = genesis.chain_id
        self.spare_keys = _load_spare_keys(config)
        self._check_membership(config, genesis, key, ledger)
        self.rpc_ssl_context = rpc_ssl_context(config)   # None: plaintext (rpc.plaintext = true)
        self._note_rpc_certificate()
        # The consensus Application; the same object's stateless check guards submit.
        self.application = EntryVerdictMemo(
            application if application is not None else _ledger_application(ledger))
        self.replica = _build_replica(config, genesis, key, ledger, self.application, self.spare_keys)
        self._followed_set: tuple | None = None   # what set_peers last followed (see _follow_validator_set)
        status = self.replica.snapshot()
        for note in status.restore_skipped:
            # A record an older version wrote that this one cannot read (docs/CONSENSUS.md, View change).
            log.warning("persisted consensus record left out", detail=note)
        self.height, _ = _last_applied(ledger)
        self.view = status.view
        self._vouch_fallbacks_seen = 0
        self.metrics.height.set(self.height)
        self.metrics.view.set(self.view)
        # One bounded queue feeds the driver: peer readers wait when it is full (TCP pushes back on
        # the peer), client submits do not wait and get "mempool-full" instead.
        inbound_send, self._events = trio.open_memory_channel(config.limits.inbound_queue_messages_max)
        self._client_send = inbound_send.clone()
        peer_keys = self._peer_keys()
        self.network = PeerNetwork(
            node_id=config.node_id, chain_id=self.chain_id, signing_key=self.replica.signing_key,
            validators=peer_keys, listen=config.listen.p2p,
            peers={peer_id: address for peer_id, address in self._peer_addresses().items() if peer_id in peer_keys},
            inbound=inbound_send, metrics=self.metrics, limits=PeerLimits.from_config(config.limits),
            inbound_allow_only_validators=config.p2p.inbound_allow_only_validators,
        )
        # Each participant's rate and mempool share of this node's submits (issue 15).
        self._shares = SubmitShares(config.limits.submit_rate_per_participant_per_s,
                                    config.limits.submit_burst_per_participant,
                                    config.limits.mempool_requests_per_participant_max)
        self._waiters = SubmitWaiters()   # submits waiting for their entry's commit
        # Set while a block is applied in a worker thread (see ledger_quiet).
        self._applying: trio.Event | None = None
        # A Byzantine validator can make the core reject messages as fast as it sends them.
        self._rejection_log = LogBudget(REJECTION_LOG_LINES_MAX, REJECTION_LOG_WINDOW_MS)
        self.bound: dict[str, int] = {}
        # Shutdown (see drain): once set, submit refuses; submits under way are counted so the drain
        # can end as soon as none is left.
        self.shutting_down = False
        self._submits_in_progress = 0
        self._submits_ended = trio.lowlevel.ParkingLot()
        self.rpc_server = None      # node.rpc.RpcServer once serving

    @staticmethod
    def _check_membership(config: NodeConfig, genesis, key: KeyPair, ledger) -> None:
        """StartupError unless this node is a validator of its epoch holding its key, or says it joins."""
        height, _ = _last_applied(ledger)
        me = _current_validators(ledger, genesis, height).get(config.node_id)
        if me is None:
            if not config.joining:
                raise StartupError(
                    f"node_id {config.node_id!r} is not a validator of the current epoch (the genesis file, or "
                    f"the reconfigurations this node has applied); a validator added by a reconfiguration starts "
                    f"with joining = true")
            return
        held = {key.public_key, *(spare.public_key for spare in _load_spare_keys(config))}
        if me.public_key not in held:
            first = genesis.validator_set.get(config.node_id)
            named = "the genesis key" if first is not None and first.public_key == me.public_key else \
                "the key the current validator set names"
            raise StartupError(f"key file {config.key_file} does not hold {named} of {config.node_id!r} "
                               f"(nor does any of spare_key_files)")

    @property
    def validator_set(self):
        """The set of the replica's epoch (the genesis set until a reconfiguration takes effect)."""
        return self.replica.validators

    @property
    def jurisdiction(self) -> str:
        """This validator's, from the latest epoch that names it ("" for one that has not joined yet)."""
        for config in reversed(self.replica.schedule.epochs):
            me = config.validators.get(self.config.node_id)
            if me is not None:
                return me.jurisdiction
        return ""

    def _peer_addresses(self) -> dict[str, Address | None]:
        """Where to dial each validator: the config's [[peers]] first, then the ledger's addresses (genesis's
        and those reconfigurations added), then genesis's."""
        known = _genesis_p2p_addresses(self.genesis)
        known.update(_ledger_p2p_addresses(self.ledger))
        if self.config.peers is not None:
            known = {validator_id: None for validator_id in known}
            for peer in self.config.peers:
                if peer.id not in known and peer.id not in self.validator_set:
                    raise StartupError(f"peers: {peer.id!r} is not a validator in the genesis file "
                                       f"or in a reconfiguration this node has applied")
                known[peer.id] = peer.address
        known.pop(self.config.node_id, None)
        return known

    def _peer_keys(self) -> dict[str, frozenset[bytes]]:
        """The validators of the replica's epoch and of every epoch scheduled after it, with each one's keys."""
        schedule, epoch = self.replica.schedule, self.replica.epoch
        keys = peer_keys_of(*(config.validators for config in schedule.epochs[epoch:]))
        keys.pop(self.config.node_id, None)
        return keys

    def _follow_validator_set(self) -> None:
        """After each batch: when the schedule or the ledger's addresses changed, the links follow the set
        (new validators dialed and accepted, removed ones cut, rotated keys re-authenticated)."""
        epochs = getattr(self.ledger, "epochs", None)
        followed = (self.replica.epoch, len(self.replica.schedule.epochs), id(epochs), self.replica.member)
        if followed == self._followed_set:
            return
        first = self._followed_set is None
        was_member = first or self._followed_set[3]
        self._followed_set = followed
        self.application.forget_verdicts()
        self.network.set_signing_key(self.replica.signing_key)
        self.metrics.epoch.set(self.replica.epoch)
        if not first:
            self.network.set_peers(self._peer_keys(), self._peer_addresses())
        if was_member and not self.replica.member and not self.config.joining:
            log.warning("this validator is in no set from this epoch on (removed, or its key rotated without "
                        "spare_key_files): it no longer votes; stop it, or restart it with its new key",
                        epoch=self.replica.epoch)

    # --- NodeApi ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        height, header = _last_applied(self.ledger)
        return {
            "chain_id": self.chain_id,
            "node_id": self.config.node_id,
            "jurisdiction": self.jurisdiction,
            "height": height,
            "view": self.view,
            "primary": self.validator_set.primary(self.view).id,
            "tree_size": header.tree_size if header else 0,
            "tree_root": header.tree_root if header else codec.sha256(b""),
            "peers": self.network.connected_peers(),
            "mempool_size": self.replica.pending_request_count,
            "catch_up_target_height": int(self.metrics.catch_up_target_height.get()),
            "version": VERSION,
        }

    async def submit(self, entry: bytes, wait: bool, timeout_s: float) -> dict[str, Any]:
        if self.shutting_down:
            self.metrics.rejected_requests.inc(label_value=ERROR_SHUTTING_DOWN)
            raise ApiError(ERROR_SHUTTING_DOWN, "the node is stopping and takes no new entries; submit to another node")
        self._submits_in_progress += 1
        try:
            return await self._submit(entry, wait, timeout_s)
        finally:
            self._submits_in_progress -= 1
            if self._submits_in_progress == 0:
                self._submits_ended.unpark_all()

    async def _submit(self, entry: bytes, wait: bool, timeout_s: float) -> dict[str, Any]:
        if not isinstance(entry, bytes):
            raise ApiError(ERROR_BAD_ENTRY, "entry must be bytes")
        reason = self.application.check_request(entry)
        if reason is not None:
            self.metrics.rejected_requests.inc(label_value=reason)
            raise ApiError(ERROR_BAD_ENTRY, f"entry refused: {reason}")
        # The door (issue 15): an entry the applied state already refuses (author not admitted, not
        # active or not signing with its registry key, governance signers, spent nonce) is answered
        # here, never ordered or stored. Not in the core's pool check, which must stay monotonic (an
        # author may be admitted later). The ledger is read between block writes, never during one.
        await self.ledger_quiet()
        participant, reason = _admission(self.ledger, entry)
        if reason is not None:
            if reason == "already-applied":
                reason = ALREADY_COMMITTED
            self.metrics.rejected_requests.inc(label_value=reason)
            raise ApiError(ERROR_ALREADY_COMMITTED if reason == ALREADY_COMMITTED else ERROR_BAD_ENTRY,
                           f"entry refused: {reason}")
        entry_id = _entry_id(entry)
        if self.replica.pending_request_count >= self.config.limits.mempool_requests_max:
            self.metrics.rejected_requests.inc(label_value=ERROR_MEMPOOL_FULL)
            raise ApiError(ERROR_MEMPOOL_FULL, f"{self.replica.pending_request_count} entries are waiting; retry later")
        counted = False
        if participant is not None:
            try:
                counted = self._shares.admit(participant, entry, trio.current_time(),
                                             self.replica.is_pending)
            except ApiError as exc:
                self.metrics.rejected_requests.inc(label_value=exc.code)
                raise
        with self._waiters.waiting(entry) if wait else contextlib.nullcontext() as waiter:
            request = ClientRequest(entry, entry_id, waiter, None if wait else trio.Event(), participant=participant)
            try:
                self._client_send.send_nowait(request)
            except trio.WouldBlock:
                if counted:
                    self._shares.release(entry)
                self.metrics.rejected_requests.inc(label_value="queue-full")
                raise ApiError(ERROR_MEMPOOL_FULL, "the request queue is full; retry later") from None
            if waiter is None:
                await request.taken.wait()
                self._raise_refusal(request.refusal)
                return {"status": "pending", "id": entry_id}
            # One wait for both the core's verdict and the commit (the timeout covers the queueing).
            limit_s = self.config.limits.submit_wait_timeout_ms_max / 1000
            receipt = await waiter.wait(min(timeout_s, limit_s))
            self._raise_refusal(request.refusal)
            if receipt is None and waiter.released:
                raise ApiError(ERROR_SHUTTING_DOWN, "the node stopped before the entry committed; it may still "
                               "commit on the other validators: look it up on another node before submitting again")
            if receipt is None:
                raise ApiError(ERROR_TIMEOUT, "not committed yet; the entry stays in the mempool")
            return {**receipt, "id": entry_id}

    def _raise_refusal(self, refusal: str | None) -> None:
        if refusal is not None:
            self.metrics.rejected_requests.inc(label_value=refusal)
            code = {"request-pool-full": ERROR_MEMPOOL_FULL, ALREADY_COMMITTED: ERROR_ALREADY_COMMITTED}.get(
                refusal, ERROR_BAD_ENTRY)
            # The core refuses an entry the applied ledger already rules out ("applied-request:replayed-nonce")
            # before ordering it: the client hears the apply rule's own reason code, at once.
            reason = refusal.removeprefix("applied-request:")
            raise ApiError(code, f"entry refused: {reason}")

    # --- shutdown ------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking work and let submitters already waiting get an answer; return when done.

        The caller cancels everything afterwards. Meanwhile the driver and the peer links run as
        usual, so a waiting submit whose block commits within limits.shutdown_drain_ms gets its
        receipt; the rest get "shutting-down" (or "timeout" if their own wait ends first). Ends
        early once no submit is under way.
        """
        self.shutting_down = True
        if self.rpc_server is not None:
            self.rpc_server.stop_accepting()
        with trio.move_on_after(self.config.limits.shutdown_drain_ms / 1000):
            await self._all_submits_ended()
        released = self._waiters.release_all()
        # Submits still waiting for the driver to take their entry finish as soon as it does (it
        # is still running); then the answers are written, within a bound.
        with trio.move_on_after(SHUTDOWN_ANSWERS_FLUSH_MS / 1000) as flush:
            await self._all_submits_ended()
            if self.rpc_server is not None:
                await self.rpc_server.waiting_calls_answered()
        log.info("drained", height=self.height, released_waiters=released,
                 unanswered=self._submits_in_progress + (self.rpc_server.waiting_calls if self.rpc_server else 0),
                 flush_cut_short=flush.cancelled_caught)

    async def _all_submits_ended(self) -> None:
        while self._submits_in_progress:
            await self._submits_ended.park()

    # --- the driver ----------------------------------------------------------------------------

    def _take_client_request(self, request: ClientRequest):
        """Hand a client's entry to the core (which pools it and forwards it to every validator);
        return the core's Ready."""
        ready = self.replica.on_request(request.entry)
        refusals = [ALREADY_COMMITTED if reason == "applied-request:already-applied" else reason
                    for peer, reason in ready.rejected if peer == CLIENT_PEER_ID]
        if not refusals and self.replica.is_committed(request.entry):
            # The core drops a committed request silently (peers forward duplicates all the time);
            # a client retrying it must hear so instead of waiting for a commit that will not come.
            refusals = [ALREADY_COMMITTED]
        refusal = refusals[0] if refusals else None
        if request.participant is not None:
            if refusal is not None:
                self._shares.release(request.entry)
            else:
                self._shares.pooled(request.entry, request.entry_id)
        request.decided(refusal)
        return ready

    async def carry_out_many_off_loop(self, readies: list) -> None:
        """Carry out the Readies of consecutive inputs through consensus.host, the code the
        simulator runs: one synced write for all their persists (with the block after the applied
        height, if one of them commits it), then each Ready's sends, applies, catch-up and
        reports, in the order one-at-a-time processing gives; only the number of fsyncs drops.

        Each synced write runs in a worker thread that the driver awaits before it asks the host
        for the next step, so nothing that depends on the write happens early, while the event
        loop runs meanwhile: peer readers and the RPC server keep taking input (queued for the
        driver's next batch, which the fsync thus makes larger) and answering queries instead of
        stalling for the fsync. LevelDB writes are thread-safe and plyvel releases the GIL while it
        writes; the consensus state keys are read by no one else.
        """
        for step in host.carry_out(self.replica, readies, self.height):
            if isinstance(step, host.WriteBatch):
                if step.block is not None:
                    await self._apply_off_loop(step.block, list(step.changes))
                else:
                    await self._write_consensus_state_off_loop(list(step.changes))
            elif isinstance(step, host.Send):
                self._send_messages(step.messages)
            elif isinstance(step, host.Apply):
                await self._apply_off_loop(step.block)
            elif isinstance(step, host.ServeCatchUp):
                for peer_id, from_height, to_height in step.ranges:
                    self._serve_catch_up(peer_id, from_height, to_height)
            else:
                self._report(step)
        self._observe_replica()
        self._follow_validator_set()
        self.metrics.mempool_size.set(self.replica.pending_request_count)

    async def _write_consensus_state_off_loop(self, changes: list) -> None:
        # Not abandoned on cancellation: a shutdown waits for the write to finish (or fail) first.
        await trio.to_thread.run_sync(self.ledger.write_consensus_state, changes)

    def _send_messages(self, messages) -> None:
        for outbound in messages:
            if outbound.to is None:
                self.network.broadcast(FRAME_KIND_CONSENSUS, outbound.data)
            else:
                self.network.send(outbound.to, FRAME_KIND_CONSENSUS, outbound.data)

    def _report(self, report) -> None:
        for evidence in report.evidence:
            self.metrics.evidence.inc()
            log.warning("equivocation evidence", validator=evidence.validator, kind=evidence.kind,
                        view=evidence.view, height=evidence.height,
                        first=evidence.first.hex(), second=evidence.second.hex())
        for peer_id, reason in report.rejected:
            if peer_id == CLIENT_PEER_ID:
                continue    # answered to the client by submit
            self.metrics.rejected_messages.inc(label_value=reason)
            if reason in MALFORMED_MESSAGE_REASONS:
                self.network.report_malformed(peer_id, reason)
            admitted, left_out = self._rejection_log.admit(f"{peer_id}/{reason}", trio.current_time() * 1000)
            if left_out:
                log.info("rejections not logged", peer=peer_id, reason=reason, count=left_out,
                         window_ms=REJECTION_LOG_WINDOW_MS)
            if admitted:
                log.info("message rejected", peer=peer_id, reason=reason)

    def _observe_replica(self) -> None:
        status = self.replica.snapshot()
        view = status.view
        if view != self.view:
            if view > self.view:
                self.metrics.view_changes.inc(view - self.view)
            self.view = view
            self.metrics.view.set(view)
            # The driver task's lines (rejections, evidence, commits) carry the view they happened in.
            structlog.contextvars.bind_contextvars(view=view)
            log.info("view changed", primary=self.validator_set.primary(view).id)
        self.metrics.catch_up_target_height.set(max(status.catch_up_target, self.height))
        self.metrics.checks_all_signatures.set(int(status.checks_signatures))
        fallbacks = status.vouch_fallbacks
        if fallbacks > self._vouch_fallbacks_seen:
            self.metrics.vouch_fallbacks.inc(fallbacks - self._vouch_fallbacks_seen)
            self._vouch_fallbacks_seen = fallbacks
            log.warning("vouchers came late: checking every signature for a while",
                        vouch_wait_ms=self.config.consensus.vouch_wait_ms, fallbacks=fallbacks)

    async def ledger_quiet(self) -> None:
        """Return when no block is being applied in a worker thread, so that the caller's reads of
        the ledger (up to its next checkpoint) see one consistent state, not a half-moved one."""
        while self._applying is not None:
            await self._applying.wait()

    async def _apply_off_loop(self, block, consensus_changes=()) -> None:
        """Apply a committed block (and `consensus_changes` with it), the synced write in a worker
        thread; readers wait on ledger_quiet meanwhile."""
        if block.header.height <= self.height:
            assert not consensus_changes, "consensus changes go with a block not yet applied"
            return
        assert self._applying is None, "the driver applies one block at a time"
        self._applying = trio.Event()
        try:
            outcomes = await trio.to_thread.run_sync(self._apply_block_or_fail, block, consensus_changes)
        finally:
            self._applying.set()
            self._applying = None
        self._applied(block, outcomes)

    def _apply_block_or_fail(self, block, consensus_changes=()) -> list:
        header = block.header
        try:
            return _apply_block(self.ledger, block, consensus_changes)
        except Exception as exc:
            # A certified block our storage refuses means this replica diverged or its disk failed:
            # stop rather than keep voting on a state we cannot hold.
            log.error("cannot apply committed block", height=header.height, reason=str(exc))
            raise FatalError(f"cannot apply block {header.height}: {exc}") from exc

    def _applied(self, block, outcomes) -> None:
        """The block is durable in storage: move the height, count, and wake its waiting submitters."""
        header = block.header
        self.height = header.height
        latency_s = max(0.0, time.time() - header.time_ms / 1000)
        size_bytes = sum(len(entry) for entry in block.entries)
        self.metrics.height.set(self.height)
        self.metrics.committed_blocks.inc()
        self.metrics.committed_entries.inc(len(block.entries))
        if self.replica.snapshot().catch_up_target > header.height:
            self.metrics.catch_up_blocks.inc()    # applied while still behind the highest height seen
        self.metrics.commit_latency.observe(latency_s)
        log.info("block committed", height=header.height, certificate_view=block.certificate.view,
                 entries=len(block.entries), bytes=size_bytes, latency_ms=round(latency_s * 1000, 1),
                 tree_size=header.tree_size)
        self._shares.release_all(block.entries)   # committed (accepted or not): out of their authors' shares
        self._waiters.committed(block.entries, lambda index: _receipt(
            block, index, outcomes[index] if outcomes is not None and index < len(outcomes) else None))
        self.metrics.mempool_size.set(self.replica.pending_request_count)

    def _serve_catch_up(self, peer_id: str, from_height: int, to_height: int) -> None:
        last = min(to_height, from_height + self.config.limits.catch_up_blocks_max - 1, self.height)
        if from_height < 1 or last < from_height:
            return
        blocks = _read_blocks(self.ledger, from_height, last)
        if blocks:
            self.network.send(peer_id, FRAME_KIND_CONSENSUS, _encode_catch_up_response(blocks))
            log.debug("catch-up served", peer=peer_id, from_height=from_height, to_height=from_height + len(blocks) - 1)

    def _input(self, event):
        """Feed one event to the core; its Ready."""
        if isinstance(event, ClientRequest):
            return self._take_client_request(event)
        assert event.kind == FRAME_KIND_CONSENSUS, "decode_frame admits consensus frames only"
        # Taken off the channel: the frame's bytes leave its peer's inbound budget.
        self.network.release(event)
        return self.replica.on_message(event.peer_id, event.payload)

    async def _drive(self) -> None:
        structlog.contextvars.bind_contextvars(view=self.view)
        tick_s = self.config.consensus.tick_interval_ms / 1000
        idle_tick_s = max(tick_s, IDLE_TICK_INTERVAL_MS / 1000)
        last_tick = trio.current_time()
        await self.carry_out_many_off_loop([self.replica.on_tick(int(time.time() * 1000))])
        next_tick = self._next_tick_at(last_tick, tick_s, idle_tick_s)
        while True:
            events = []
            with trio.move_on_at(next_tick):
                events.append(await self._events.receive())
            # Take what else is queued, up to a bound, so ticks are never starved; under load this
            # turns many inputs into one synced write.
            while events and len(events) < DRAIN_EVENTS_MAX:
                try:
                    events.append(self._events.receive_nowait())
                except trio.WouldBlock:
                    break
            readies = [self._input(event) for event in events]
            if trio.current_time() >= next_tick:
                # Fed after the events, as before, but carried out with them: one synced write.
                last_tick = trio.current_time()
                readies.append(self.replica.on_tick(int(time.time() * 1000)))
            if readies:
                await self.carry_out_many_off_loop(readies)
                next_tick = self._next_tick_at(last_tick, tick_s, idle_tick_s)   # only input moves it
            await trio.sleep(0)   # let readers, writers and the RPC server run between batches

    def _next_tick_at(self, last_tick: float, tick_s: float, idle_tick_s: float) -> float:
        """Trio time of the next tick: when the core next needs one (Replica.next_tick_ms), but no
        sooner than tick_interval_ms and no later than IDLE_TICK_INTERVAL_MS after the last tick. An
        idle node wakes a few times a second instead of a hundred: each wake-up costs it CPU
        (docs/PERFORMANCE.md, "At low load")."""
        wanted_ms = self.replica.next_tick_ms()
        now_ms = self.replica.now_ms
        # The core's clock is the wall time given at the last tick, so this is time after that tick.
        wait_s = idle_tick_s if wanted_ms is None or now_ms is None else (wanted_ms - now_ms) / 1000
        return last_tick + min(idle_tick_s, max(tick_s, wait_s))

    async def _poll_partition_file(self) -> None:
        path = self.config.data_dir / PARTITION_FILE_NAME
        while True:
            try:
                words = path.read_text().split()
            except FileNotFoundError:
                words = []
            except OSError:
                words = []
            peers = set(self.network.slots) if "*" in words else {w for w in words if w in self.network.slots}
            self.network.set_partitioned(frozenset(peers))
            await trio.sleep(PARTITION_POLL_MS / 1000)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            self.bound["p2p"] = await nursery.start(self.network.run)
            listeners = await nursery.start(functools.partial(
                serve_metrics, self.metrics, config.listen.metrics.host, config.listen.metrics.port,
                request_bytes_max=config.limits.metrics_request_bytes_max,
                client_timeout_ms=config.limits.metrics_client_timeout_ms))
            self.bound["metrics"] = listeners[0].socket.getsockname()[1]
            self.bound["rpc"] = await self._start_rpc(nursery)
            if config.testing.fault_injection:
                nursery.start_soon(self._poll_partition_file)
            nursery.start_soon(self._drive)
            log.info("node started", chain_id=self.chain_id, height=self.height, view=self.view,
                     ports=dict(self.bound), peers=sorted(self.network.slots))
            task_status.started(dict(self.bound))

    async def _start_rpc(self, nursery: trio.Nursery) -> int:
        limits = rpc.RpcLimits(connections_max=self.config.limits.rpc_connections_max,
                               connections_per_source_max=self.config.limits.rpc_connections_per_source_max,
                               submit_wait_ms_max=self.config.limits.submit_wait_timeout_ms_max)
        self.rpc_server = rpc.RpcServer(self, limits, query_log=self.query_log)
        self.metrics.collectors.append(self._collect_rpc_metrics)
        if self.rpc_ssl_context is None:
            log.warning("RPC without TLS: for development only; anyone on the path reads and alters every "
                        "call (set rpc.tls_cert_file and rpc.tls_key_file, and remove rpc.plaintext)",
                        rpc=str(self.config.listen.rpc))
        result = await nursery.start(functools.partial(
            rpc.serve_rpc, self, self.config.listen.rpc.host, self.config.listen.rpc.port, limits=limits,
            server=self.rpc_server, ssl_context=self.rpc_ssl_context,
            tls_handshake_timeout_ms=self.config.rpc.tls_handshake_timeout_ms))
        return result   # serve_rpc reports the port it bound

    def reload_rpc_certificate(self) -> bool:
        """SIGHUP: serve new RPC connections with what rpc.tls_cert_file and rpc.tls_key_file hold now
        (open connections keep theirs). Checked as at start; a pair that would not start the node is
        logged as an error naming the field, and the certificate served so far stays. True if reloaded."""
        if self.rpc_ssl_context is None:
            log.warning("rpc certificate not reloaded: rpc.plaintext = true, the RPC port has no certificate")
            return False
        try:
            context = rpc_ssl_context(self.config)
        except StartupError as exc:
            log.error("rpc certificate not reloaded; the previous one is still served", reason=str(exc))
            self.metrics.rpc_certificate_reloads.inc(label_value="failed")
            return False
        self.rpc_ssl_context = context
        if self.rpc_server is not None:
            self.rpc_server.replace_ssl_context(context)
        not_after = self._note_rpc_certificate()
        self.metrics.rpc_certificate_reloads.inc(label_value="ok")
        log.info("rpc certificate reloaded", cert_file=str(self.config.rpc.tls_cert_file),
                 not_after=not_after.isoformat() if not_after else None)
        return True

    def _note_rpc_certificate(self) -> datetime.datetime | None:
        """The served certificate's expiry, also into the metrics (None with plaintext)."""
        if self.rpc_ssl_context is None:
            self.metrics.rpc_certificate_not_after.set(0)
            return None
        try:
            not_after = tls.certificate_not_after(self.config.rpc.tls_cert_file)
        except tls.TlsError:   # rewritten since the context read it: the next reload sets it
            return None
        self.metrics.rpc_certificate_not_after.set(int(not_after.timestamp()))
        return not_after

    def _collect_rpc_metrics(self) -> None:
        server = self.rpc_server
        for key, total in server.counters.items():
            if key in server.methods.table:
                self.metrics.rpc_calls.mirror(total, key)
            elif key != "notification":
                self.metrics.rpc_errors.mirror(total, key)
        self.metrics.rpc_connections.set(server.connections)


async def _serve_until_signal(daemon: Daemon) -> None:
    """Run the daemon; the first SIGTERM/SIGINT drains then stops it, a second one stops it at once.
    SIGHUP reloads the RPC certificate (and no longer stops the node, as it did by default)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)

            async def drain_then_stop() -> None:
                await daemon.drain()
                nursery.cancel_scope.cancel()

            async def stop_on_signals() -> None:
                draining = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == signal.SIGHUP:
                        daemon.reload_rpc_certificate()
                        continue
                    if not draining:
                        draining = True
                        log.info("shutting down", signal=name, drain_ms=daemon.config.limits.shutdown_drain_ms)
                        nursery.start_soon(drain_then_stop)
                    else:
                        log.warning("stopping now", signal=name, reason="second signal during the drain")
                        nursery.cancel_scope.cancel()
                        return
            nursery.start_soon(stop_on_signals)


def rpc_ssl_context(config: NodeConfig):
    """The RPC port's TLS context from [rpc], or None with rpc.plaintext; StartupError names the field."""
    if config.rpc.plaintext:
        return None
    if config.rpc.tls_cert_file is None or config.rpc.tls_key_file is None:
        missing = "tls_cert_file" if config.rpc.tls_cert_file is None else "tls_key_file"
        raise StartupError(f"rpc.{missing}: required (RPC is served over TLS; rpc.plaintext = true turns "
                           f"TLS off, for development only)")
    try:
        return tls.server_context(config.rpc.tls_cert_file, config.rpc.tls_key_file)
    except tls.TlsError as exc:
        field_name = "rpc.tls_key_file" if exc.which == "key" else "rpc.tls_cert_file"
        raise StartupError(f"{field_name}: {exc}") from None


def open_daemon(config: NodeConfig) -> Daemon:
    """Load key and genesis, open the data directory and build the daemon (raises StartupError)."""
    try:
        key = load_key_file(config.key_file)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None
    genesis = _load_genesis(config.genesis_file)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"data_dir {config.data_dir}: {exc.strerror}") from None
    try:
        ledger = _open_ledger(config.data_dir / "ledger", genesis, config.node_id)
    except Exception as exc:  # plyvel raises its own IOError for a locked db; report, do not trace back
        raise StartupError(f"cannot open the ledger in {config.data_dir}: {exc}") from None
    try:
        query_log = QueryLog(config.query_log.directory(config.data_dir), node_id=config.node_id,
                             file_bytes_max=config.query_log.file_bytes_max, files_max=config.query_log.files_max,
                             fsync_interval_ms=config.query_log.fsync_interval_ms)
    except (QueryLogError, ValueError) as exc:
        ledger.close()
        raise StartupError(f"query_log: {exc}") from None
    try:
        daemon = Daemon(config, genesis, key, ledger)
    except BaseException:
        ledger.close()
        query_log.close()
        raise
    daemon.query_log = query_log
    return daemon


def run_daemon(config: NodeConfig) -> int:
    """Entry point of `bayledger node`: run until SIGTERM/SIGINT; the exit status."""
    configure_logging(config.node_id, log_format=config.log.format, level=config.log.level)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        daemon = open_daemon(config)
    except StartupError as exc:
        log.error("cannot start", reason=str(exc))
        return EXIT_ENVIRONMENT
    # Full collections paused a loaded node 15-55 ms each (measured with gc.callbacks), mostly
    # scanning start-up objects that live as long as the process: keep those out of every collection.
    gc.collect()
    gc.freeze()
    # Almost every object a loaded node makes dies by reference counting, yet the default threshold
    # (700 net allocations) ran a young collection 35 times a second, about 5 % of the node's CPU,
    # with older-generation passes of up to 24 ms. At this threshold a saturated node ran none in 25 s.
    gc.set_threshold(GC_YOUNG_THRESHOLD_OBJECTS, *gc.get_threshold()[1:])
    try:
        trio.run(_serve_until_signal, daemon)
    except (OSError, BaseExceptionGroup) as exc:
        # A port in use or an unreachable address surfaces as OSError, possibly inside nursery groups.
        fatal = exc.subgroup(lambda e: isinstance(e, FatalError)) if isinstance(exc, BaseExceptionGroup) else None
        if fatal is not None:
            return EXIT_ENVIRONMENT    # already logged where it happened
        failures = exc.subgroup(lambda e: isinstance(e, OSError)) if isinstance(exc, BaseExceptionGroup) else exc
        if failures is None:
            raise
        first = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        log.error("cannot start", reason=f"{first.strerror or first}")
        return EXIT_ENVIRONMENT
    finally:
        daemon.ledger.close()
        if daemon.query_log is not None:
            daemon.query_log.close()
        log.info("stopped", height=daemon.height)
    return 0
