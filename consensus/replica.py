"""The PBFT replica: a pure, deterministic state machine (see docs/CONSENSUS.md).

Inputs: `on_message(sender_id, data)`, `on_request(request)`, `on_tick(now_ms)`,
`on_persisted()`. Each returns a `Ready` the host carries out in order:
persist (one synced batch, then call `on_persisted()`), send messages, apply
committed blocks, serve catch-up ranges from storage, log evidence and
rejections. A vote, proposal or view change is never released in the same
Ready that persists the promise it makes; it waits for `on_persisted()`.

No clock, no I/O, no randomness: time is the `now_ms` of the last tick.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice

import nacl.signing

from . import codec
from .block import ZERO_HASH, BlockHeader, CommitCertificate, CommitSignature
from .messages import (
    CATCH_UP_BLOCKS_MAX, NEW_VIEW_BYTES_MAX, REQUEST_BYTES_MAX, REQUESTS_MESSAGE_BYTES_MAX, VIEW_CHANGE_BYTES_MAX,
    BlockRequest, BlockResponse, CatchUpRequest, CatchUpResponse, Checkpoint, CheckpointCertificate, Commit,
    CommittedBlock, Evidence, MessageError, NewView, PrePrepare, PreparedCertificate, Prepare, Requests, ViewChange,
    VoteSignature, choose_blocks, decode_message, encode, encode_catch_up_response, minimal_quorum,
    new_view_bytes_bound, sign, view_change_bytes_bound,
)
from .messages import header_hash as hash_of_header
from .application import Application, ExecutionResult
from .proposal import (
    ProposalRules, build_header, check_header, check_requests, check_signatures_unvouched, execution_matches,
    mark_checked,
)
from .ready import Outbound, Ready
from .request_pool import (
    REQUEST_OVERHEAD_BYTES, REQUESTS_MESSAGE_OVERHEAD_BYTES, PendingRequest, ProposalQueue, RequestPool, SweepRound,
    drain_bound,
)
from .slot import WAIT, Slot, SlotPhase, Wait
from .status import ReplicaStatus, check_invariants
from .bodies import BodyFetcher
from .catch_up import CatchUp, Pacer, catch_up_request
from .checkpoints import Checkpoints
from .config import ReplicaConfig, ReplicaConfigError
from .timeouts import Timeouts, Timer
from .view_change import ViewChanges
from .vote_tally import VoteTally
from .vote_log import (
    KEY_BODY, KEY_CERT, KEY_CHECKPOINT, KEY_COMMITTED, KEY_NEW_VIEW, KEY_VIEW, KEY_VIEW_CHANGE, KEY_VOTE, PHASE_COMMIT,
    PHASE_PRE_PREPARE, PHASE_PREPARE, VoteLog, height_key, restore_committed_ids, restore_stable, restore_view,
)
from .validators import ValidatorSet

__all__ = [
    "Application", "CommittedBlock", "Evidence", "ExecutionResult", "Outbound", "Ready", "Replica", "ReplicaConfig",
    "ReplicaConfigError", "ReplicaStatus", "encode_catch_up_response",
]

CLIENT = "client"  # the peer id reported in Ready.rejected for requests from this node's own clients
EVIDENCE_REMEMBERED_MAX = 1024  # (validator, kind, view, height) already reported as equivocation
# After waiting vouch_wait_ms in vain for vouchers, a backup checks every signature itself this long:
# a checking backup that is down then stalls one block in 120, not every block.
VOUCH_FALLBACK_HOLD_MS = 30_000
# A backup sweeps its pool (forwards to the primary, looks for censorship) every retransmit_ms, and at
# least this many times per view timeout: a request only it holds reaches the primary within half a
# timeout, and junk pooled unchecked leaves the pool before it can make the progress timer fire.
SWEEPS_PER_VIEW_TIMEOUT_MIN = 4


def _check_arguments(
    config: ReplicaConfig, validators: ValidatorSet, me: str, signing_key: nacl.signing.SigningKey, chain_id: str,
    last_applied: tuple[int, BlockHeader | None],
) -> None:
    if me not in validators:
        raise ValueError(f"{me!r} is not in the validator set")
    if validators.get(me).public_key != signing_key.verify_key.encode():
        raise ValueError(f"signing key does not match validator {me!r}'s public key")
    height, header = last_applied
    if (height == 0) != (header is None) or (header is not None and header.height != height):
        raise ValueError("last_applied must be (0, None) or (height, header of that height)")
    window = config.watermark_window
    if (view_change_bytes_bound(validators, window, chain_id) > VIEW_CHANGE_BYTES_MAX
            or new_view_bytes_bound(validators, window, chain_id) > NEW_VIEW_BYTES_MAX):
        raise ReplicaConfigError(
            f"watermark_window {window} is too large for {validators.n} validators: a VIEW-CHANGE or NEW-VIEW "
            f"could exceed its byte cap ({VIEW_CHANGE_BYTES_MAX} / {NEW_VIEW_BYTES_MAX} bytes, "
            f"consensus/messages.py)")


class Replica:
    def __init__(
        self,
        config: ReplicaConfig,
        validators: ValidatorSet,
        me: str,
        signing_key: nacl.signing.SigningKey,
        chain_id: str,
        app: Application,
        persisted: dict[bytes, bytes] | None = None,
        last_applied: tuple[int, BlockHeader | None] = (0, None),
    ) -> None:
        _check_arguments(config, validators, me, signing_key, chain_id, last_applied)
        height, header = last_applied
        self.config = config
        self.validators = validators
        self.me = me
        self.signing_key = signing_key
        self.chain_id = chain_id
        self.app = app
        self.validator_set_hash = validators.hash()
        self.rules = ProposalRules(chain_id, self.validator_set_hash, config.batch_requests_max, config.clock_skew_ms_max)
        self._my_index = [v.id for v in validators.validators].index(me)
        self.vouch_fallbacks = 0     # times we waited for vouchers in vain and checked ourselves (hosts export it)
        # Optional in the Application (docs/INTERNALS.md): None = no state check before pooling.
        self._check_applied = getattr(app, "check_request_applied", None)
        self.view = 0
        self.view_active = True
        self.failed_views = 0
        self.timeouts = Timeouts()   # the clock and every deadline, polled in on_tick
        # Bodies of re-proposed blocks are asked for again retransmit_ms / 2 after the last ask (none yet: 0).
        self.timeouts.start(Timer.BODIES, config.retransmit_ms // 2, since_ms=0)
        self.view_entered_ms = 0  # set again at the first tick: before it, time is unknown
        self.last_applied_height = height
        self.last_applied_header = header
        self.committed_hashes: dict[int, bytes] = {}
        if header is not None:
            self.committed_hashes[height] = hash_of_header(header)
        self.checkpoints = Checkpoints(validators)   # the stable checkpoint and the votes towards the next
        self.slots: dict[int, Slot] = {}
        self.blocks: dict[bytes, tuple[BlockHeader, tuple[bytes, ...]]] = {}
        self.tally = VoteTally(validators)   # PREPAREs and COMMITs received, per height
        self.vote_log = VoteLog(self._persist_change)   # our votes and certificates, and their bodies
        self.bodies = BodyFetcher(validators, me, self._my_index)   # bodies of re-proposed blocks we lack
        self.view_change = ViewChanges(validators)   # VIEW-CHANGEs and the NEW-VIEW of our view
        self.requests = RequestPool(config.request_pool_max)
        self.committed_ids: OrderedDict[bytes, None] = OrderedDict()
        self.catch_up = CatchUp()
        self.pacer = Pacer()   # rate limits per peer (_paced)
        self.evidence_seen: dict[tuple, None] = {}  # reported once each; oldest forgotten first
        # Output being assembled for the current input, and messages held until their state is persisted.
        self._clear_output()
        self._held: list[list[Outbound]] = []
        self.restore_skipped: list[str] = []   # persisted records left out at restore, and why
        if persisted:
            self._restore(persisted)
        # What the restore sent or persisted (a catch-up request, a fresh VIEW-CHANGE) goes out with the
        # first Ready; until then output may wait outside an input (check_invariants).
        self._before_first_ready = True

    # ------------------------------------------------------------------ inputs

    def on_message(self, sender_id: str, data: bytes) -> Ready:
        if sender_id not in self.validators or sender_id == self.me:
            self._reject(sender_id, "unknown-sender")
            return self._ready()
        try:
            message = decode_message(data, self.validators, self.chain_id)
        except MessageError as exc:
            self._reject(sender_id, exc.reason)
            return self._ready()
        sender = getattr(message, "sender", sender_id)
        # CHECKPOINT and NEW-VIEW may be relayed: both are self-certifying (a CHECKPOINT quorum proves a
        # stable checkpoint, a NEW-VIEW carries its quorum of VIEW-CHANGEs) and help a peer that missed them.
        if sender != sender_id and not isinstance(message, (Checkpoint, NewView)):
            self._reject(sender_id, "sender-mismatch")
            return self._ready()
        handler = {
            Requests: self._on_requests, PrePrepare: self._on_pre_prepare, Prepare: self._on_prepare,
            Commit: self._on_commit, Checkpoint: self._on_checkpoint, ViewChange: self._on_view_change,
            NewView: self._on_new_view, CatchUpRequest: self._on_catch_up_request,
            CatchUpResponse: self._on_catch_up_response, BlockRequest: self._on_block_request,
            BlockResponse: self._on_block_response,
        }[type(message)]
        handler(sender_id, message, bytes(data))
        self._advance()
        return self._ready()

    def on_request(self, request: bytes) -> Ready:
        """A request from this node's own client: pooled and forwarded to the other validators."""
        pending = self._add_request(CLIENT, request)
        if pending is not None:
            message_full = self.requests.queue_forward(request, self.config.forward_requests_max)
            if self.view_active and not self.is_primary:
                self._mark_held(pending)   # it goes to every validator, the primary too, by the next tick
            if message_full:
                self._flush_forward()
        self._advance()
        return self._ready()

    def on_tick(self, now_ms: int) -> Ready:
        """Time passed: run every timer of the table that is due, in the table's order."""
        if not self.timeouts.started:
            # Time starts now: whatever arrived before the first tick is as old as this tick.
            self.view_entered_ms = now_ms
            self.requests.restart_clock(now_ms)
        now = self.timeouts.advance(now_ms)
        timeouts = self.timeouts
        self._flush_forward()
        if self.view_active:
            self._tick_progress(now)
            if self.view_active and not self.is_primary and timeouts.due(Timer.SWEEP):
                timeouts.start(Timer.SWEEP, self._sweep_period_ms())
                if self._sweep_requests(now):
                    self._start_view_change(self.view + 1)
        elif timeouts.fired(Timer.VIEW_CHANGE):
            self._start_view_change(self.view + 1)
        if not timeouts.armed(Timer.RETRANSMIT):
            self._on_first_tick()
        elif timeouts.fired(Timer.RETRANSMIT):
            timeouts.start(Timer.RETRANSMIT, self.config.retransmit_ms)
            self._retransmit()
        if timeouts.due(Timer.PROBE):
            # A replica that missed the last blocks of a now idle chain hears nothing else: ask around.
            timeouts.start(Timer.PROBE, self.config.catch_up_probe_ms)
            self._probe_peer()
        self._maybe_catch_up()
        self._advance()
        return self._ready()

    def _tick_progress(self, now: int) -> None:
        """The progress timer runs while an active view has work: no commit before it fires, next view."""
        if not self._has_work():
            self.timeouts.stop(Timer.PROGRESS)
        elif not self.timeouts.armed(Timer.PROGRESS):
            self.timeouts.start(Timer.PROGRESS, self._timeout_ms())
        elif self.timeouts.fired(Timer.PROGRESS):
            self._start_view_change(self.view + 1)

    def _on_first_tick(self) -> None:
        """First tick after a (re)start: ask every peer for blocks we may have missed while down."""
        self.timeouts.start(Timer.RETRANSMIT, self.config.retransmit_ms)
        self.timeouts.start(Timer.PROBE, self.config.catch_up_probe_ms)
        self._send(None, encode(catch_up_request(self.last_applied_height)))

    def on_persisted(self) -> Ready:
        """The host wrote the oldest outstanding persist batch: release the messages that waited on it."""
        if self._held:
            self._messages.extend(self._held.pop(0))
        return self._ready(release=True)

    # ------------------------------------------------------------------ queries for hosts and tests

    @property
    def now_ms(self) -> int | None:
        """The latest tick's time (None before the first tick)."""
        return self.timeouts.now_ms

    @now_ms.setter
    def now_ms(self, value: int | None) -> None:
        self.timeouts.now_ms = value   # tests set the clock directly

    @property
    def stable(self) -> CheckpointCertificate:
        """The stable checkpoint: the low watermark."""
        return self.checkpoints.stable

    @stable.setter
    def stable(self, certificate: CheckpointCertificate) -> None:
        self.checkpoints.stable = certificate

    @property
    def catch_up_target(self) -> int:
        """The highest height we know a quorum committed (hosts export it; 0: none)."""
        return self.catch_up.target

    @property
    def fetching(self) -> dict:
        """header hash -> the fetch of a re-proposed block's body we lack (the body fetcher's)."""
        return self.bodies.fetching

    @property
    def view_changes(self) -> dict[str, ViewChange]:
        """The latest VIEW-CHANGE of each validator."""
        return self.view_change.latest

    @property
    def new_view(self) -> NewView | None:
        return self.view_change.new_view

    @property
    def new_view_bytes(self) -> bytes | None:
        return self.view_change.new_view_bytes

    @property
    def votes(self) -> dict[int, tuple[int, str, bytes]]:
        """height -> (view, phase, header hash) this replica signed (the vote log's)."""
        return self.vote_log.votes

    @property
    def certs(self) -> dict[int, PreparedCertificate]:
        """height -> our highest-view prepared certificate (the vote log's)."""
        return self.vote_log.certs

    @property
    def pool(self) -> OrderedDict[bytes, PendingRequest]:
        """The pending requests by id, oldest first (read-only for hosts and tests)."""
        return self.requests.pending

    @property
    def _proposal_queue(self) -> ProposalQueue | None:
        return self.requests.proposal_queue

    @_proposal_queue.setter
    def _proposal_queue(self, queue: ProposalQueue | None) -> None:
        self.requests.proposal_queue = queue

    @property
    def primary_id(self) -> str:
        return self.validators.primary(self.view).id

    @property
    def is_primary(self) -> bool:
        return self.primary_id == self.me

    @property
    def checks_signatures(self) -> bool:
        """True while this replica checks every request's signatures itself (see _checks_signatures)."""
        return self._checks_signatures()

    @property
    def pending_request_count(self) -> int:
        return len(self.pool)

    def is_pending(self, request_id: bytes) -> bool:
        """Is the request with this id (SHA-256 of its bytes) in the pool, waiting to commit?"""
        return request_id in self.requests

    def is_committed(self, request: bytes) -> bool:
        """True if `request` is among the recently committed ones this replica remembers (and will drop)."""
        return codec.sha256(request) in self.committed_ids

    def snapshot(self) -> ReplicaStatus:
        """Everything a host may want to know, in one frozen value (instead of probing attributes)."""
        return ReplicaStatus(
            view=self.view, view_active=self.view_active, primary_id=self.primary_id, is_primary=self.is_primary,
            last_applied_height=self.last_applied_height, stable_checkpoint_height=self.stable.height,
            catch_up_target=self.catch_up_target, checks_signatures=self._checks_signatures(),
            vouch_fallbacks=self.vouch_fallbacks, pending_request_count=len(self.requests),
            in_flight_count=len([s for s in self.slots if s > self.last_applied_height]),
            restore_skipped=tuple(self.restore_skipped),
        )

    def check_invariants(self) -> None:
        """Raise status.InvariantViolation (an AssertionError) if the state contradicts itself: a bug here."""
        check_invariants(self)

    def status(self) -> dict:
        return {
            "view": self.view, "view_active": self.view_active, "primary": self.primary_id,
            "height": self.last_applied_height, "stable_checkpoint": self.stable.height,
            "pending_requests": len(self.pool), "in_flight": len([s for s in self.slots if s > self.last_applied_height]),
        }

    # ------------------------------------------------------------------ output assembly

    def _reject(self, peer: str, reason: str) -> None:
        self._rejected.append((peer, reason))

    def _send(self, to: str | None, data: bytes) -> None:
        self._messages.append(Outbound(to, data))

    def _ready(self, release: bool = False) -> Ready:
        persist, messages = self._persist, self._messages
        if persist:
            self._held.append(messages)
            messages = []
        elif self._held and not release:
            # Earlier promises are still being written: nothing goes out ahead of them.
            self._held[-1].extend(messages)
            messages = []
        ready = Ready(persist, messages, self._committed, self._serve, self._evidence, self._rejected)
        self._clear_output()
        self._before_first_ready = False
        return ready

    def _clear_output(self) -> None:
        self._persist: list[tuple[bytes, bytes | None]] = []
        self._messages: list[Outbound] = []
        self._committed: list[CommittedBlock] = []
        self._serve: list[tuple[str, int, int]] = []
        self._evidence: list[Evidence] = []
        self._rejected: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ requests

    def _add_request(self, peer: str, request: bytes, from_primary: bool = False) -> PendingRequest | None:
        """Pool a request (`from_primary`: `peer` is the current primary); the new pending entry, or None
        if it was refused or is a duplicate."""
        if not isinstance(request, bytes) or not request:
            self._reject(peer, "bad-request")
            return None
        if len(request) > REQUEST_BYTES_MAX:
            self._reject(peer, "request-too-large")
            return None
        request_id = codec.sha256(request)
        pending = self.pool.get(request_id)
        if pending is not None:
            if from_primary and pending.held_view != self.view:
                self._mark_held(pending)   # the primary sent it: it holds it
            return None  # duplicates are expected (every validator forwards); not a fault
        if request_id in self.committed_ids:
            return None
        # Our own client's requests are always checked (the client gets a clear error at once). A peer's
        # are checked only where we must vouch for them in this view, and while unchecked ones could
        # fill more than half the pool (a faulty peer's junk must not crowd out valid work).
        checked = (peer == CLIENT or self._checks_signatures()
                   or self.requests.half_full)
        reason = self.app.check_request(request) if checked else self.app.check_request_shape(request)
        if reason is not None:
            self._reject(peer, f"invalid-request:{reason}")
            return None
        # Applied already (or its nonce is used up): no primary will ever propose it, and the committed
        # ids we remember may not reach back that far (a restart keeps only the last heights').
        reason = self._applied_reason(request)
        if reason is not None:
            self._reject(peer, f"applied-request:{reason}")
            return None
        if self.requests.full:
            # Refuse new work rather than drop accepted work; the client retries elsewhere or later.
            self._reject(peer, "request-pool-full")
            return None
        pending = self.requests.add(request_id, request, self.timeouts.clock_ms, checked)
        if from_primary:
            self._mark_held(pending)
        return pending

    def _applied_reason(self, request: bytes) -> str | None:
        check = self._check_applied
        return None if check is None else check(request)

    def _mark_held(self, pending: PendingRequest) -> None:
        """The primary of the current view holds `pending` from now on (we sent it or it sent it to us)."""
        self.requests.mark_held(pending, self.view, self.timeouts.clock_ms)

    def _checks_signatures(self) -> bool:
        """Whether this replica checks every request's signatures itself in the current view.

        The primary and the f backups after it (in validator order) do. The others prepare a block whose
        requests they did not check once the primary's proposal and f other backups' PREPAREs vouch for
        it: f + 1 validators, so at least one honest, and an honest one prepares only requests it
        checked or that were vouched for in the same way (docs/CONSENSUS.md, "Who checks signatures").
        """
        f = self.validators.f
        if f == 0 or self.config.vouch_wait_ms == 0:
            return True   # with f = 0 no backup vouches, so each one checks
        if self.timeouts.running(Timer.CHECK_ALL_SIGNATURES):
            return True
        return (self._my_index - self.view) % self.validators.n <= f

    def _confirm(self, request_id: bytes, pending: PendingRequest) -> bool:
        """Check an unchecked pending request now; drop it from the pool if it is invalid."""
        if pending.checked:
            return True
        if self.app.check_request(pending.request) is None:
            pending.checked = True
            return True
        self._drop(request_id)
        return False

    def _drop(self, request_id: bytes) -> None:
        self.requests.drop(request_id)

    def _still_wanted(self, request_id: bytes, pending: PendingRequest) -> bool:
        """Valid and not applied yet (checked now); a request that is neither leaves the pool."""
        if not self._confirm(request_id, pending):
            return False
        if self._applied_reason(pending.request) is not None:
            self._drop(request_id)
            return False
        return True

    def _flush_forward(self) -> None:
        if self.requests.forward_queue:
            self._send_requests(None, self.requests.take_forward())

    def _send_requests(self, to: str | None, requests: list[bytes]) -> None:
        """Send `requests` in REQUESTS messages of at most forward_requests_max requests and
        REQUESTS_MESSAGE_BYTES_MAX bytes each."""
        count_max = self.config.forward_requests_max
        batch: list[bytes] = []
        size = REQUESTS_MESSAGE_OVERHEAD_BYTES
        for request in requests:
            cost = len(request) + REQUEST_OVERHEAD_BYTES
            if batch and (len(batch) >= count_max or size + cost > REQUESTS_MESSAGE_BYTES_MAX):
                self._send(to, encode(Requests(tuple(batch))))
                batch, size = [], REQUESTS_MESSAGE_OVERHEAD_BYTES
            batch.append(request)
            size += cost
        if batch:
            self._send(to, encode(Requests(tuple(batch))))

    def _on_requests(self, peer: str, message: Requests, data: bytes) -> None:
        from_primary = peer == self.primary_id and self.view_active
        for request in message.requests:
            self._add_request(peer, request, from_primary)

    def _in_flight_ids(self) -> set[bytes]:
        ids: set[bytes] = set()
        for height, slot in self.slots.items():
            if height > self.last_applied_height:
                ids.update(slot.request_ids)
        return ids

    def _has_work(self) -> bool:
        return bool(self.pool) or any(h > self.last_applied_height for h in self.slots)

    def _drain_bound(self) -> int:
        c = self.config
        return drain_bound(c.request_pool_max, c.watermark_window, c.batch_requests_max)

    def _sweep_period_ms(self) -> int:
        return max(1, min(self.config.retransmit_ms, self.config.view_timeout_ms // SWEEPS_PER_VIEW_TIMEOUT_MIN))

    def _sweep_requests(self, now: int) -> bool:
        """A backup's pool sweep (RequestPool.sweep): forward to the primary what it may not hold; True if
        it provably censors a request."""
        sweep = SweepRound(
            now_ms=now, view=self.view, round_ms=self._sweep_period_ms(), drain_bound=self._drain_bound(),
            view_timeout_ms=self._timeout_ms(), view_entered_ms=self.view_entered_ms,
            applied_height=self.last_applied_height, in_flight=self._in_flight_ids(),
        )
        result = self.requests.sweep(sweep, self._still_wanted)
        if result.forward:
            self._send_requests(self.primary_id, result.forward)
        return result.censored

    def _timeout_ms(self) -> int:
        return self.config.view_timeout_ms * 2 ** min(self.failed_views, self.config.view_timeout_doublings_max)

    # ------------------------------------------------------------------ persistence

    def _persist_change(self, key: bytes, value: bytes | None) -> None:
        self._persist.append((key, value))

    def _persist_vote(self, height: int, view: int, phase: str, header: BlockHeader, entries: tuple[bytes, ...]) -> bool:
        """Record that we sign `phase` for (view, height, header); False if that would contradict a past vote."""
        return self.vote_log.record_vote(height, view, phase, header, entries)

    def _persist_view(self) -> None:
        self.vote_log.record_view(self.view, self.view_active)

    def _restore(self, persisted: dict[bytes, bytes]) -> None:
        try:
            self._restore_unchecked(persisted)
        except (MessageError, codec.EncodingError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"persisted consensus state is unreadable: {exc}") from exc

    def _restore_message(self, persisted: dict[bytes, bytes], key: bytes):
        """The persisted message under `key`, or None if there is none or it does not decode."""
        if key not in persisted:
            return None
        try:
            return decode_message(persisted[key], self.validators, self.chain_id, verify=False)
        except MessageError as exc:
            self.restore_skipped.append(f"{key.decode(errors='replace')}: {exc}")
            return None

    def _restore_unchecked(self, persisted: dict[bytes, bytes]) -> None:
        """Each kind of record in turn: position (checkpoint, view), bodies, votes and certificates, the
        view-change messages, committed ids, then what follows from them."""
        stable = restore_stable(persisted, self.validators)
        if stable is not None:
            self.stable = stable
        view = restore_view(persisted)
        if view is not None:
            self.view, self.view_active = view
        self.vote_log.restore_bodies(persisted)
        for key, value in sorted(persisted.items()):
            if key.startswith(KEY_VOTE):
                self._restore_vote(key, value)
            elif key.startswith(KEY_CERT):
                self.vote_log.restore_certificate(key, value, self.validators, self.chain_id)
        self._restore_view_change(persisted)
        self._restore_new_view(persisted)
        if self.stable.height > self.last_applied_height:
            self._set_catch_up_target(self.stable.height, [s.validator for s in self.stable.signatures])
        for request_id in restore_committed_ids(persisted, self.last_applied_height):
            self.committed_ids[request_id] = None
        while len(self.committed_ids) > self.config.committed_request_ids_max:
            self.committed_ids.popitem(last=False)
        # Requests in blocks we signed but that may never commit: keep them pending so they are not lost.
        signed = ((codec.sha256(request), request) for slot in self.slots.values() for request in slot.entries or ())
        self.requests.keep_signed(signed, lambda request_id: request_id in self.committed_ids)
        if not self.view_active and self.me not in self.view_change.latest:
            # Mid view change, and our VIEW-CHANGE was left out (an older version's): move to the next
            # view with a fresh one (views only go up; we never sign a second VIEW-CHANGE for a view).
            self._start_view_change(self.view + 1)

    def _restore_vote(self, key: bytes, value: bytes) -> None:
        """A vote of the view we are active in, above the applied height: its slot again."""
        height, view, header, entries = self.vote_log.restore_vote(key, value)
        if view != self.view or not self.view_active or height <= self.last_applied_height:
            return
        header_hash = hash_of_header(header)
        slot = Slot(header, entries, header_hash)
        if entries is None:
            self._want_body(height, header_hash, ())
        elif self.is_primary:
            # Re-signing the same proposal gives the same bytes: no conflict, and it can be resent.
            slot.preprepare = encode(sign(PrePrepare(self.view, header, entries, self.me), self.signing_key, self.chain_id))
        self.slots[height] = slot
        if entries is not None:
            self.blocks[header_hash] = (header, entries)

    # Our last VIEW-CHANGE and the NEW-VIEW we entered. One written by an older version (which carried
    # block bodies) does not decode any more: leave it out. That is safe: our view, votes and prepared
    # certificates have records of their own (the vote guard reads those), a VIEW-CHANGE is rebuilt from
    # them when the view changes again, and a NEW-VIEW only restored slots the votes restore too. The
    # host reports what was left out (restore_skipped).

    def _restore_view_change(self, persisted: dict[bytes, bytes]) -> None:
        message = self._restore_message(persisted, KEY_VIEW_CHANGE)
        if message is not None:
            self.view_change.own(self.me, message, persisted[KEY_VIEW_CHANGE])

    def _restore_new_view(self, persisted: dict[bytes, bytes]) -> None:
        message = self._restore_message(persisted, KEY_NEW_VIEW) if self.view_active else None
        if message is None or message.view != self.view:
            return
        self.view_change.entered(message, persisted[KEY_NEW_VIEW])
        _, chosen = choose_blocks(message.view_changes)
        for cert in chosen:
            if cert.height > self.last_applied_height and cert.height not in self.slots:
                self._chosen_slot(cert)

    # ------------------------------------------------------------------ normal case

    def _in_window(self, height: int) -> bool:
        return self.stable.height < height <= self.stable.height + self.config.watermark_window

    def _on_pre_prepare(self, peer: str, message: PrePrepare, data: bytes) -> None:
        if message.view != self.view or not self.view_active:
            self._maybe_send_new_view(peer, message.view)
            self._reject(peer, "wrong-view")
            return
        height = message.height
        if not self._in_window(height):
            self._reject(peer, "outside-window")
            return
        if height <= self.last_applied_height:
            self._serve_behind(peer, height)
            return
        header_hash = hash_of_header(message.header)
        slot = self.slots.get(height)
        if slot is not None:
            if slot.hash != header_hash:
                if slot.preprepare is not None:
                    self._report_evidence(peer, "pre-prepare", message.view, height, slot.preprepare, data)
                else:
                    self._reject(peer, "bad-proposal")  # contradicts the NEW-VIEW it signed
                self._start_view_change(self.view + 1)
            elif slot.preprepare is None:
                slot.preprepare = data
            return
        self.slots[height] = Slot(message.header, message.entries, header_hash, preprepare=data)
        self.blocks[header_hash] = (message.header, message.entries)
        # Censorship evidence (_sweep_requests): an honest primary proposes a batch that is not full
        # only when it holds no other valid request outside its in-flight blocks.
        self.requests.note_proposal(self.timeouts.clock_ms, height, len(message.entries),
                                    self.config.batch_requests_max, 2 * self.config.watermark_window)

    def _on_prepare(self, peer: str, message: Prepare, data: bytes) -> None:
        if message.view != self.view:
            self._maybe_send_new_view(peer, message.view)
            self._reject(peer, "wrong-view")
            return
        if message.height <= self.last_applied_height:
            self._serve_behind(peer, message.height)
            return
        if not self._in_window(message.height):
            self._reject(peer, "outside-window")
            return
        conflicting = self.tally.add_prepare(peer, message.height, message.header_hash, message.signature, data)
        if conflicting is not None:
            self._report_evidence(peer, "prepare", message.view, message.height, conflicting, data)

    def _on_commit(self, peer: str, message: Commit, data: bytes) -> None:
        # A COMMIT quorum certifies a block whatever view it came from, so any view counts.
        if message.height <= self.last_applied_height:
            self._serve_behind(peer, message.height)
            return
        if not self._in_window(message.height):
            self._reject(peer, "outside-window")
            return
        kept, conflicting = self.tally.add_commit(
            peer, message.height, message.view, message.header_hash, message.signature, data)
        if conflicting is not None:
            self._report_evidence(peer, "commit", message.view, message.height, conflicting, data)
        if kept and message.view != self.view:
            self._maybe_send_new_view(peer, message.view)

    def _advance(self) -> None:
        """Run every rule that can fire until none does (a fixpoint of the normal case)."""
        for _ in range(10_000):
            progressed = self._try_commit()
            progressed |= self._try_prepare()
            progressed |= self._try_propose()
            if not progressed:
                return
        raise AssertionError("replica rules did not settle")

    def _parent_header(self, height: int) -> tuple[bool, BlockHeader | None]:
        """(known, header) of the block this replica would build on at `height` in the current view."""
        if height == self.last_applied_height + 1:
            return True, self.last_applied_header
        parent = self.slots.get(height - 1)
        if parent is not None and parent.prepared:
            return True, parent.header
        return False, None

    def _try_prepare(self) -> bool:
        progressed = False
        if not self.view_active:
            return False
        for height in sorted(self.slots):
            slot = self.slots[height]
            if slot.entries is None:
                continue   # re-proposed by NEW-VIEW, body still being fetched: never vote for a block we lack
            if slot.prepare is not None and not slot.prepared:
                progressed |= self._check_prepared(height, slot)
                continue
            if slot.prepare is not None:
                continue
            if height <= self.last_applied_height:
                # Re-proposed by NEW-VIEW but already committed here: vote so others can finish it.
                if self.committed_hashes.get(height) == slot.hash:
                    progressed |= self._sign_prepare(height, slot)
                    if slot.prepare is not None:
                        slot.advance(SlotPhase.PREPARED)
                        self._sign_commit(height, slot)
                continue
            known, parent = self._parent_header(height)
            if not known:
                continue
            verdict = None
            if not slot.validated:
                verdict = self._validate(height, slot, parent)
                if verdict is None:
                    slot.advance(SlotPhase.VALIDATED)
            if verdict is None and not slot.signatures_known:
                verdict = self._vouched_or_checked(height, slot)
            if verdict is WAIT:
                continue
            if verdict is not None:
                self._reject(self.primary_id, "bad-proposal")
                self._start_view_change(self.view + 1)
                return True
            progressed |= self._sign_prepare(height, slot)
            if slot.prepare is not None:
                progressed |= self._check_prepared(height, slot)
        return progressed

    def _validate(self, height: int, slot: Slot, parent: BlockHeader | None) -> str | Wait | None:
        """None if the proposal is valid on `parent`, WAIT if it cannot be judged yet, else why it is bad."""
        header = slot.header
        verdict = check_header(self.rules, height, header, len(slot.entries), parent, self.now_ms)
        if verdict is not None:
            return verdict
        earlier = set()
        for h in range(self.last_applied_height + 1, height):
            if h in self.slots:
                earlier.update(self.slots[h].request_ids)
        reason, signatures_known = check_requests(
            slot.entries, slot.request_ids, self.committed_ids, earlier, self.pool, self._checks_signatures(), self.app)
        if reason is not None:
            return reason
        result = self.app.execute(parent, height, header.time_ms, slot.entries)
        if result is None:
            return WAIT
        if not execution_matches(header, result):
            return "wrong-execution"
        if signatures_known:
            slot.advance(SlotPhase.CHECKED)
        return None

    def _vouched_or_checked(self, height: int, slot: Slot) -> str | Wait | None:
        """None once the signatures of a validated slot's requests are known good, WAIT while this
        backup waits for vouchers, else why the proposal is bad.

        Vouchers: the primary's proposal and PREPAREs for the same block from f backups other than us.
        That is f + 1 validators, at least one honest; an honest primary proposes only requests it
        checked, and an honest backup prepares only requests it checked or saw vouched for, so by
        induction on time the first honest vote for any block followed a real check.
        """
        primary = self.primary_id
        vouchers = sum(1 for voter in self.tally.prepare_signers(height, slot.hash) if voter not in (self.me, primary))
        now = self.timeouts.clock_ms
        if vouchers < self.validators.f and not self._checks_signatures():
            if slot.vouch_deadline_ms is None:
                slot.vouch_deadline_ms = now + self.config.vouch_wait_ms
            if now < slot.vouch_deadline_ms:
                return WAIT
            # The backups that check were too slow (or are down): check ourselves, and keep doing so
            # for a while instead of waiting in vain for each block.
            self.timeouts.start(Timer.CHECK_ALL_SIGNATURES, VOUCH_FALLBACK_HOLD_MS)
            self.vouch_fallbacks += 1
        if vouchers < self.validators.f:
            reason = check_signatures_unvouched(slot.entries, slot.request_ids, self.pool, self.app)
            if reason is not None:
                return reason
        mark_checked(slot.request_ids, self.pool)
        slot.advance(SlotPhase.CHECKED)
        return None

    def _sign_prepare(self, height: int, slot: Slot) -> bool:
        if not self._persist_vote(height, self.view, PHASE_PREPARE, slot.header, slot.entries):
            return False
        message = sign(Prepare(self.view, height, slot.hash, self.me), self.signing_key, self.chain_id)
        slot.sent_prepare(encode(message))
        self.tally.add_own_prepare(self.me, height, slot.hash, message.signature, slot.prepare)
        self._send(None, slot.prepare)
        return True

    def _check_prepared(self, height: int, slot: Slot) -> bool:
        signers = self.tally.prepare_signers(height, slot.hash)
        if not self.validators.is_quorum(signers):
            return False
        slot.advance(SlotPhase.PREPARED)
        # A minimal quorum of the PREPAREs: what bounds a VIEW-CHANGE's size (messages.view_change_bytes_bound).
        kept = minimal_quorum(self.validators, sorted(signers))
        certificate = PreparedCertificate(
            self.view, slot.header,
            tuple(sorted((VoteSignature(v, self.tally.prepare_signature(height, v)) for v in kept), key=lambda s: s.validator)),
        )
        self.vote_log.record_certificate(certificate, slot.entries)
        self._sign_commit(height, slot)
        return True

    def _sign_commit(self, height: int, slot: Slot) -> None:
        if not self._persist_vote(height, self.view, PHASE_COMMIT, slot.header, slot.entries):
            return
        message = sign(Commit(self.view, height, slot.hash, self.me), self.signing_key, self.chain_id)
        slot.sent_commit(encode(message))
        self.tally.add_own_commit(self.me, height, self.view, slot.hash, message.signature, slot.commit)
        self._send(None, slot.commit)

    def _try_propose(self) -> bool:
        if not (self.view_active and self.is_primary) or self.now_ms is None:
            return False
        progressed = False
        while True:
            top = max([h for h in self.slots if h > self.last_applied_height], default=self.last_applied_height)
            height = top + 1
            if height <= self.stable.height or not self._in_window(height):
                return progressed
            if height - 1 == self.last_applied_height:
                parent = self.last_applied_header
            else:
                parent_slot = self.slots[height - 1]
                if not parent_slot.validated:
                    # Build only on a block we have checked ourselves (our own proposals are); backups
                    # still prepare each block only after its parent is prepared.
                    return progressed
                parent = parent_slot.header
            unproposed = self._unproposed()
            if not unproposed:
                return progressed
            oldest = next(iter(unproposed.values()))
            if len(unproposed) < self.config.batch_requests_max and (
                self.now_ms - max(oldest.seen_ms, self.view_entered_ms) < self.config.batch_wait_ms
                or height - 1 - self.last_applied_height >= self.config.partial_batch_in_flight_max
            ):
                return progressed
            # Our proposal vouches for its requests' signatures: check those we pooled unchecked.
            picked = list(islice(unproposed.items(), self.config.batch_requests_max))
            if not all(p.checked for _, p in picked):
                for rid, p in picked:
                    self._confirm(rid, p)
                # Invalid ones left the queue: look again, so that a batch is partial only when the queue
                # is exhausted (backups rely on that to detect censorship, see _sweep_requests).
                continue
            entries = tuple(p.request for _, p in picked)
            time_ms = max(self.now_ms, parent.time_ms if parent is not None else 0)
            result = self.app.execute(parent, height, time_ms, entries)
            if result is None:
                return progressed
            header = build_header(self.rules, height, parent, time_ms, entries, result)
            if not self._persist_vote(height, self.view, PHASE_PRE_PREPARE, header, entries):
                return progressed  # we proposed something else here before a restart; never contradict it
            message = sign(PrePrepare(self.view, header, entries, self.me), self.signing_key, self.chain_id)
            data = encode(message)
            slot = self.slots[height] = Slot(header, entries, hash_of_header(header), preprepare=data,
                                             phase=SlotPhase.CHECKED)
            self.blocks[hash_of_header(header)] = (header, entries)
            self._send(None, data)
            self._proposed(slot)
            progressed = True

    def _unproposed(self) -> OrderedDict[bytes, PendingRequest]:
        """The pending requests in no in-flight block, oldest first (by id; the caller only reads).

        Called after every input on the primary, whose pool front is mostly in flight under load,
        so it keeps those requests in a queue instead of scanning the pool each time: requests join
        it as they are pooled and leave it when we propose them. The queue holds while the
        in-flight blocks change only by our own proposals (`_proposed`) and by the oldest of them
        being applied as they were (their requests had left the queue); any other change (a view
        change, a block we did not propose applied or in flight) rebuilds it from the pool. The
        result is exactly what a full scan of the pool gives.
        """
        in_flight_slots = tuple(slot for height, slot in self.slots.items() if height > self.last_applied_height)
        queue = self._proposal_queue
        if queue is not None and not queue.holds(in_flight_slots, self.last_applied_height, self.committed_hashes):
            queue = None
        if queue is None:
            in_flight = self._in_flight_ids()
            queue = ProposalQueue(self.last_applied_height, in_flight_slots, in_flight, OrderedDict(
                (rid, p) for rid, p in self.pool.items() if rid not in in_flight))
            self._proposal_queue = queue
        return queue.unproposed

    def _proposed(self, slot: Slot) -> None:
        """Our proposal went in flight: its requests leave the queue (they were its front)."""
        if self._proposal_queue is not None:
            self._proposal_queue.proposed(slot)

    def _try_commit(self) -> bool:
        progressed = False
        while True:
            height = self.last_applied_height + 1
            found = self.tally.commit_quorum(height)
            if found is None:
                return progressed
            view, header_hash, signers = found
            block = self.blocks.get(header_hash)
            if block is None:
                self._set_catch_up_target(height, signers)
                return progressed
            header, entries = block
            certificate = CommitCertificate(view, height, header_hash, tuple(sorted(
                (CommitSignature(v, self.tally.commit_signature(height, v)) for v in signers), key=lambda s: s.validator)))
            expected_prev = hash_of_header(self.last_applied_header) if self.last_applied_header is not None else ZERO_HASH
            if header.prev_hash != expected_prev:
                # More than f faulty validators signed a fork; never deliver it.
                self._reject(signers[0], "certified-fork")
                self.tally.forget_commits(height)
                return progressed
            slot = self.slots.get(height)
            known_ids = (slot.request_ids if slot is not None and slot.hash == header_hash and slot.entries is not None
                         else None)
            self._deliver(CommittedBlock(header, entries, certificate), known_ids)
            progressed = True

    def _deliver(self, block: CommittedBlock, request_ids: tuple[bytes, ...] | None = None) -> None:
        """Hand a certified block to the host; `request_ids` are its entries' ids if already known."""
        header = block.header
        height = header.height
        assert height == self.last_applied_height + 1, "blocks are delivered in height order"
        header_hash = hash_of_header(header)
        self._committed.append(block)
        self.last_applied_height = height
        self.last_applied_header = header
        self.committed_hashes[height] = header_hash
        # Needed only for heights a NEW-VIEW may re-propose: above the stable checkpoint, within a window.
        self.committed_hashes.pop(height - 2 * self.config.watermark_window, None)
        if request_ids is None:
            request_ids = tuple(codec.sha256(request) for request in block.entries)
        for request_id in request_ids:
            self.requests.committed(request_id)
            self.committed_ids[request_id] = None
        # Persisted so a restarted replica (or a whole restarted cluster) still refuses these requests.
        self._persist.append((height_key(KEY_COMMITTED, height), codec.pack(request_ids)))
        if height > self.config.committed_ids_heights_max:
            self._persist.append((height_key(KEY_COMMITTED, height - self.config.committed_ids_heights_max), None))
        while len(self.committed_ids) > self.config.committed_request_ids_max:
            self.committed_ids.popitem(last=False)
        self.tally.forget_height(height)
        for known_hash in [h for h, (hd, _) in self.blocks.items() if hd.height <= height]:
            del self.blocks[known_hash]
        slot = self.slots.get(height)
        if slot is not None and slot.hash != header_hash:
            del self.slots[height]
        elif slot is not None and slot.entries is None:
            slot.fill(block.entries)   # committed (certified) while we were fetching its body
            self.bodies.arrived(header_hash)
            self._proposal_queue = None
        if self.view_active:
            self.timeouts.stop(Timer.PROGRESS)
            self.failed_views = 0
        if height % self.config.checkpoint_interval == 0:
            message = sign(Checkpoint(height, header_hash, self.me), self.signing_key, self.chain_id)
            data = encode(message)
            self.checkpoints.signed(height, data)
            self._record_checkpoint_vote(self.me, height, header_hash, message.signature)
            self._send(None, data)
        if self.catch_up_target <= height:
            self.timeouts.stop(Timer.CATCH_UP)

    # ------------------------------------------------------------------ checkpoints

    def _on_checkpoint(self, peer: str, message: Checkpoint, data: bytes) -> None:
        if message.height <= self.stable.height:
            if message.sender == peer:
                self._relay_stable(peer)  # the peer still resends it: it lacks the quorum we hold
            return
        # Recorded under the signer, not the link: checkpoint votes may be relayed.
        self._record_checkpoint_vote(message.sender, message.height, message.header_hash, message.signature)

    def _record_checkpoint_vote(self, voter: str, height: int, header_hash: bytes, signature: bytes) -> None:
        certificate = self.checkpoints.record_vote(voter, height, header_hash, signature)
        if certificate is not None:
            self._adopt_stable(certificate)

    def _adopt_stable(self, certificate: CheckpointCertificate) -> None:
        """Move the low watermark to a checkpoint proven by a quorum; forget and delete the log below it."""
        if certificate.height <= self.stable.height:
            return
        committed = self.committed_hashes.get(certificate.height)
        if committed is not None and committed != certificate.header_hash:
            self._reject(certificate.signatures[0].validator if certificate.signatures else self.me, "certified-fork")
            return
        self.checkpoints.adopt(certificate)
        height = certificate.height
        self._persist.append((KEY_CHECKPOINT, codec.pack(certificate.to_wire())))
        self.vote_log.forget_through(height)
        self.bodies.forget_through(height)
        for below in [h for h in self.slots if h <= height]:
            del self.slots[below]
        self.tally.forget_through(height)
        for below in [h for h in self.committed_hashes if h < height]:
            del self.committed_hashes[below]
        if height > self.last_applied_height:
            self._set_catch_up_target(height, [s.validator for s in certificate.signatures])

    def _paced(self, key: str, interval_ms: int) -> bool:
        """True (and the time noted) if nothing was done for `key` in the last `interval_ms`: how every
        answer and offer to one peer is rate-limited, so a faulty peer cannot make us work at its pace."""
        return self.pacer.allow(key, interval_ms, self.timeouts.clock_ms)

    def _relay_stable(self, peer: str) -> None:
        """A peer is below our stable checkpoint: send it the quorum of CHECKPOINT votes that proves it."""
        if self.stable.height == 0:
            return
        if not self._paced("checkpoint:" + peer, self.config.retransmit_ms):
            return
        for vote in self.checkpoints.proof():
            self._send(peer, encode(vote))

    # ------------------------------------------------------------------ view change

    def _start_view_change(self, view: int) -> None:
        if view <= self.view:
            return  # views only go up
        self.view = view
        self.view_active = False
        self.requests.forget_primary()
        self.failed_views += 1
        self.view_entered_ms = self.timeouts.clock_ms
        self.slots = {}
        self.tally.forget_prepares()
        self.timeouts.stop(Timer.PROGRESS)
        self.timeouts.stop(Timer.VIEW_CHANGE)
        self.view_change.entered(None, None)
        self.bodies.clear()   # bodies for the abandoned view's slots
        # Proposals of the abandoned view are only worth keeping if a certificate may still name them.
        wanted = {hash_of_header(c.header) for c in self.certs.values()}
        wanted.update(self.tally.committed_hashes())
        self.blocks = {h: block for h, block in self.blocks.items() if h in wanted}
        prepared = tuple(self.certs[h] for h in sorted(self.certs) if h > self.stable.height)
        message = sign(ViewChange(view, self.stable, prepared, self.me), self.signing_key, self.chain_id)
        data = encode(message)
        self.view_change.own(self.me, message, data)
        self._persist_view()
        self._persist.append((KEY_VIEW_CHANGE, data))
        self._send(None, data)
        self._check_view_change_quorum()

    def _on_view_change(self, peer: str, message: ViewChange, data: bytes) -> None:
        if message.checkpoint.height > self.stable.height:
            self._adopt_stable(message.checkpoint)
        if message.checkpoint.height < self.stable.height:
            self._relay_stable(peer)
        if message.view <= self.view:
            self._maybe_send_new_view(peer, message.view)
        if not self.view_change.record(peer, message, data):
            return
        view = self.view_change.view_to_join(self.view)
        if view is not None:
            # f + 1 validators (one honest at least) moved on: join the lowest view that many have reached.
            self._start_view_change(view)
        if not self.view_active:
            self._check_view_change_quorum()

    def _check_view_change_quorum(self) -> None:
        if self.view_active:
            return
        if not self.timeouts.armed(Timer.VIEW_CHANGE) and self.view_change.quorum_joined(self.view):
            # Only a view change a quorum joined can fail for lack of a primary: start its clock now.
            self.timeouts.start(Timer.VIEW_CHANGE, self._timeout_ms())
        if not self.is_primary:
            return
        quorum = self.view_change.new_view_quorum(self.view)
        if quorum is None:
            return
        checkpoint, chosen = choose_blocks(quorum)
        message = sign(
            NewView(self.view, quorum, tuple(hash_of_header(p.header) for p in chosen), self.me), self.signing_key, self.chain_id
        )
        data = encode(message)
        if len(data) > NEW_VIEW_BYTES_MAX:
            return   # faulty validators' oversized VIEW-CHANGEs: wait for more honest ones
        self._enter_view(message, data, checkpoint, chosen)
        self._send(None, data)

    def _on_new_view(self, peer: str, message: NewView, data: bytes) -> None:
        if message.view < self.view:
            self._reject(peer, "stale-view")
            return
        if message.view == self.view and self.view_active:
            if self.view_change.contradicts(message):
                self._report_evidence(peer, "new-view", message.view, 0, self.view_change.new_view_bytes, data)
                self._start_view_change(self.view + 1)
            return
        checkpoint, chosen = choose_blocks(message.view_changes)
        self._enter_view(message, data, checkpoint, chosen)

    def _enter_view(
        self, message: NewView, data: bytes, checkpoint: CheckpointCertificate, chosen: list[PreparedCertificate]
    ) -> None:
        self.view_active = True
        self.view_entered_ms = self.timeouts.clock_ms
        self.requests.forget_primary()   # evidence is about one primary's proposals in one view
        self._proposal_queue = None   # rebuilt for the re-proposed blocks when we are the primary
        if message.view != self.view:
            self.tally.forget_prepares()  # votes of an older view; those of this view (sent before NEW-VIEW) stay
        self.view = message.view
        self.view_change.entered(message, data)
        self.slots = {}
        self.timeouts.stop(Timer.PROGRESS)
        self.timeouts.stop(Timer.VIEW_CHANGE)
        self._persist_view()
        self._persist.append((KEY_NEW_VIEW, data))
        self._adopt_stable(checkpoint)
        self.bodies.clear()
        for cert in chosen:
            if cert.height <= self.stable.height:
                continue
            self._chosen_slot(cert)
        self._request_bodies()

    # ------------------------------------------------------------------ bodies of re-proposed blocks

    def _chosen_slot(self, cert: PreparedCertificate) -> None:
        """The slot of a block the NEW-VIEW re-proposes, with its body if we hold it; else the body is fetched."""
        header_hash = hash_of_header(cert.header)
        entries = self._known_body(cert.height, header_hash)
        self.slots[cert.height] = Slot(cert.header, entries, header_hash)
        if entries is None:
            self._want_body(cert.height, header_hash, tuple(s.validator for s in cert.prepares))
        elif cert.height > self.last_applied_height:
            self.blocks[header_hash] = (cert.header, entries)

    def _known_body(self, height: int, header_hash: bytes) -> tuple[bytes, ...] | None:
        """The entries of a block we hold: a proposal we saw, a body we persisted, or a slot's."""
        block = self.blocks.get(header_hash)
        if block is not None:
            return block[1]
        persisted = self.vote_log.body(height, header_hash)
        if persisted is not None:
            return persisted
        slot = self.slots.get(height)
        if slot is not None and slot.hash == header_hash:
            return slot.entries
        return None

    def _want_body(self, height: int, header_hash: bytes, signers: tuple[str, ...]) -> None:
        self.bodies.want(height, header_hash, signers)

    def _request_bodies(self) -> None:
        """One BLOCK-REQUEST per peer for the bodies we still lack, each to its next peer in turn: at once
        on entering a view, then every retransmit_ms (a peer that did not answer is not asked twice running)."""
        self.timeouts.start(Timer.BODIES, self.config.retransmit_ms // 2)
        for peer, hashes in self.bodies.plan_round(self.stable.height).items():
            if hashes:
                self._send(peer, encode(BlockRequest(tuple(hashes))))

    def _on_block_request(self, peer: str, message: BlockRequest, data: bytes) -> None:
        """Serve the bodies we hold of the blocks asked for, one BLOCK-RESPONSE each (rate-limited per peer,
        as catch-up is: a faulty peer must not make us send bodies as fast as it can ask)."""
        if not self._paced("blocks:" + peer, self.config.catch_up_serve_interval_ms):
            self._reject(peer, "block-request-too-often")
            return
        for header_hash in message.header_hashes:
            block = self._servable_block(header_hash)
            if block is not None:
                self._send(peer, encode(BlockResponse(*block)))

    def _servable_block(self, header_hash: bytes) -> tuple[BlockHeader, tuple[bytes, ...]] | None:
        block = self.blocks.get(header_hash)
        if block is not None:
            return block
        persisted = self.vote_log.servable(header_hash)
        if persisted is not None:
            return persisted
        for slot in self.slots.values():
            if slot.hash == header_hash and slot.entries is not None:
                return slot.header, slot.entries
        return None

    def _on_block_response(self, peer: str, message: BlockResponse, data: bytes) -> None:
        """A body we asked for. decode_message checked it against the header it came with (`bad-body`);
        the header's hash is the one the NEW-VIEW's certificate names, so it is that block's body."""
        header_hash = hash_of_header(message.header)
        fetch = self.bodies.arrived(header_hash)
        if fetch is None:
            return   # a second answer, or for a view we left: nothing to do (and nothing kept)
        slot = self.slots.get(fetch.height)
        if slot is None or slot.hash != header_hash or slot.entries is not None:
            return
        slot.fill(message.entries)
        self._proposal_queue = None   # the in-flight requests changed
        if fetch.height > self.last_applied_height:
            self.blocks[header_hash] = (message.header, message.entries)

    def _maybe_send_new_view(self, peer: str, peer_view: int) -> None:
        """A peer in another view. In an older one (or waiting for this one's NEW-VIEW): hand it the
        NEW-VIEW we hold. In a newer one: we are behind (restarted, or cut off while the others
        changed view), so ask it, as the NEW-VIEW of its view is what lets us vote again."""
        if peer_view > self.view:
            self._ask_for_new_view(peer)
            return
        self._offer_new_view(peer)

    def _offer_new_view(self, peer: str) -> None:
        """Send `peer` the NEW-VIEW of our view, at most once per retransmit_ms per peer."""
        if not self.view_active or self.view_change.new_view_bytes is None:
            return
        if not self._paced("new-view-sent:" + peer, self.config.retransmit_ms):
            return
        self._send(peer, self.view_change.new_view_bytes)

    def _ask_for_new_view(self, peer: str) -> None:
        """Ask `peer` for the blocks past ours and, with them, its NEW-VIEW (peers answer every
        CATCH-UP-REQUEST with their NEW-VIEW: _on_catch_up_request). At most once per
        retransmit_ms per peer, so a peer that claims a far view costs one small message a round."""
        if not self._paced("new-view-asked:" + peer, self.config.retransmit_ms):
            return
        self._send(peer, encode(catch_up_request(self.last_applied_height)))

    def _report_evidence(self, validator: str, kind: str, view: int, height: int, first: bytes, second: bytes) -> None:
        key = (validator, kind, view, height)
        if key in self.evidence_seen:
            return
        self.evidence_seen[key] = None
        while len(self.evidence_seen) > EVIDENCE_REMEMBERED_MAX:
            del self.evidence_seen[next(iter(self.evidence_seen))]
        self._evidence.append(Evidence(validator, kind, view, height, first, second))
        self._reject(validator, "equivocation")

    # ------------------------------------------------------------------ retransmission

    def _retransmit(self) -> None:
        """Resend what peers may have lost; only while something is still outstanding."""
        if not self.view_active:
            data = self.view_change.latest_bytes.get(self.me)
            if data is not None:
                self._send(None, data)
            # Whoever leads next (or the others, if they stayed) must know the requests we wait for.
            self._resend_requests(None)
            # Stuck in a view change while the others may be committing without us: probe a peer for blocks.
            self._probe_peer()
        else:
            for height in sorted(self.slots):
                if height <= self.last_applied_height:
                    continue
                slot = self.slots[height]
                if self.is_primary and slot.preprepare is not None:
                    self._send(None, slot.preprepare)
                if slot.prepare is not None:
                    self._send(None, slot.prepare)
                if slot.commit is not None:
                    self._send(None, slot.commit)
            # (A backup's requests go to the primary with its pool sweeps, see on_tick.)
            if self.fetching and self.timeouts.fired(Timer.BODIES):
                self._request_bodies()   # bodies of re-proposed blocks still missing: ask the next peer
        mine = self.checkpoints.unstable_mine()
        if mine is not None:
            self._send(None, mine)

    def _resend_requests(self, to: str | None) -> None:
        """Resend requests that stayed pending a full retransmission period (the first copy may be lost,
        or the peer that forwarded it to us may have crashed): bounded by forward_requests_max."""
        stale = self.requests.stale(self.timeouts.clock_ms, self.config.retransmit_ms, self.config.forward_requests_max,
                                    self._in_flight_ids(), self._confirm)
        if stale:
            self._send_requests(to, stale)

    # ------------------------------------------------------------------ catch-up

    def _serve_behind(self, peer: str, from_height: int) -> None:
        """A peer voted on a height we already committed: it is behind, offer it the blocks (rate-limited)."""
        if from_height > self.last_applied_height or from_height < 1:
            return
        if not self._paced("behind:" + peer, self.config.catch_up_timeout_ms):
            return
        to_height = min(self.last_applied_height, from_height + CATCH_UP_BLOCKS_MAX - 1)
        self._serve.append((peer, from_height, to_height))

    def _probe_peer(self) -> None:
        peer = self.catch_up.probe_peer([v.id for v in self.validators.validators if v.id != self.me])
        if peer is not None:
            self._send(peer, encode(catch_up_request(self.last_applied_height)))

    def _set_catch_up_target(self, height: int, peers: list[str]) -> None:
        peers = [p for p in peers if p != self.me]
        if height <= self.last_applied_height or not peers:
            return
        self.catch_up.raise_target(height, peers)
        self._maybe_catch_up()

    def _maybe_catch_up(self) -> None:
        if not self.catch_up.behind(self.last_applied_height) or self.timeouts.running(Timer.CATCH_UP):
            return
        peer = self.catch_up.next_peer()
        self.timeouts.start(Timer.CATCH_UP, self.config.catch_up_timeout_ms)
        self._send(peer, encode(catch_up_request(self.last_applied_height, self.catch_up.target)))

    def _on_catch_up_request(self, peer: str, message: CatchUpRequest, data: bytes) -> None:
        # A peer that asks may also have missed a view change (it asks at its first tick after a
        # restart, and when it sees messages of a newer view): the NEW-VIEW lets it join this view.
        self._offer_new_view(peer)
        if message.from_height > self.last_applied_height:
            return
        # One range per peer per interval: an honest peer asks for the next range only after the last
        # one arrived, a faulty one must not make our host read storage as fast as it can send.
        if not self._paced("request:" + peer, self.config.catch_up_serve_interval_ms):
            self._reject(peer, "catch-up-too-often")
            return
        self._serve.append((peer, message.from_height, min(message.to_height, self.last_applied_height)))

    def _on_catch_up_response(self, peer: str, message: CatchUpResponse, data: bytes) -> None:
        delivered = False
        for block in message.blocks:
            height = block.header.height
            if height <= self.last_applied_height:
                continue
            if height != self.last_applied_height + 1:
                # Served from a height past ours (the peer guessed from a pipelined vote). If it holds,
                # it proves the chain is that long: fetch the gap from the same peer.
                try:
                    block.verify(self.validators)
                except MessageError as exc:
                    self._reject(peer, exc.reason)
                    break
                self._set_catch_up_target(height, [peer])
                break
            expected_prev = hash_of_header(self.last_applied_header) if self.last_applied_header is not None else ZERO_HASH
            if block.header.prev_hash != expected_prev:
                self._reject(peer, "catch-up-does-not-chain")
                break
            try:
                block.verify(self.validators)
            except MessageError as exc:
                self._reject(peer, exc.reason)
                break
            self._deliver(block)
            delivered = True
        if delivered:
            # Progress: the next range (if any) goes out at once, to the same peer first.
            self.timeouts.stop(Timer.CATCH_UP)
            if len(message.blocks) == CATCH_UP_BLOCKS_MAX:
                self._set_catch_up_target(self.last_applied_height + 1, [peer])  # a full batch: there may be more
            self.catch_up.progressed_with(peer)
            self._maybe_catch_up()
