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

import nacl.signing

from . import codec
from .application import Application, ExecutionResult
from .block import BlockHeader
from .catch_up import CatchUp, Pacer, catch_up_request
from .config import ReplicaConfig, ReplicaConfigError
from .epochs import MARGIN_HEIGHTS_DEFAULT, EpochSchedule, EpochScheduleError
from .handlers.bodies import BodyFetching
from .handlers.catch_up import CatchUpHandling
from .handlers.checkpoints import CheckpointHandling
from .handlers.normal_case import NormalCase
from .handlers.proposing import Proposing
from .handlers.requests import CLIENT, RequestHandling
from .handlers.reconfiguration import Reconfiguring
from .handlers.restore import Restoring
from .handlers.view_change import ViewChangeHandling
from .messages import (
    NEW_VIEW_BYTES_MAX, VIEW_CHANGE_BYTES_MAX, BlockRequest, BlockResponse, CatchUpRequest, CatchUpResponse,
    Checkpoint, CheckpointCertificate, Commit, CommittedBlock, Evidence, MessageError, NewView, PrePrepare,
    PreparedCertificate, Prepare, Requests, ViewChange, decode_message, encode, encode_catch_up_response,
    new_view_bytes_bound, view_change_bytes_bound,
)
from .messages import header_hash as hash_of_header
from .ready import Outbound, Ready
from .request_pool import PendingRequest, ProposalQueue, RequestPool
from .slot import Slot
from .status import ReplicaStatus, check_invariants
from .timeouts import Timeouts, Timer
from .validators import ValidatorSet
from .vote_log import VoteLog, restore_schedule

__all__ = [
    "CLIENT", "Application", "CommittedBlock", "Evidence", "ExecutionResult", "Outbound", "Ready", "Replica", "ReplicaConfig",
    "ReplicaConfigError", "ReplicaStatus", "encode_catch_up_response",
]

EVIDENCE_REMEMBERED_MAX = 1024  # (validator, kind, view, height) already reported as equivocation
# What a validator of the next epoch only may send: catch-up requests and answers (a joining validator
# replays the chain before it votes, and offers it on), and votes, each judged with the set of its height.
FROM_NEXT_EPOCH_TYPES = (CatchUpRequest, CatchUpResponse, PrePrepare, Prepare, Commit, Checkpoint)
# What a replica that is no member of its epoch's set (joining, or removed) still handles: it catches up.
NON_MEMBER_HANDLES = (CatchUpRequest, CatchUpResponse, Checkpoint, Commit)


def _load_schedule(persisted: dict[bytes, bytes], genesis: ValidatorSet, margin_heights: int) -> EpochSchedule:
    try:
        return restore_schedule(persisted, genesis, margin_heights)
    except (codec.EncodingError, EpochScheduleError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"persisted consensus state is unreadable: {exc}") from exc


def _check_arguments(
    config: ReplicaConfig, schedule: EpochSchedule, me: str, signing_keys: dict[bytes, nacl.signing.SigningKey],
    chain_id: str, last_applied: tuple[int, BlockHeader | None], joining: bool,
) -> None:
    height, header = last_applied
    if (height == 0) != (header is None) or (header is not None and header.height != height):
        raise ValueError("last_applied must be (0, None) or (height, header of that height)")
    validators = schedule.config_at(height + 1).validators
    if me not in validators and not joining:
        raise ValueError(f"{me!r} is not in the validator set (a validator that joins later starts with joining=True)")
    if me in validators and validators.get(me).public_key not in signing_keys:
        raise ValueError(f"signing key does not match validator {me!r}'s public key")
    window = config.watermark_window
    if window > schedule.margin_heights:
        raise ReplicaConfigError(
            f"watermark_window {window} is larger than the chain's epoch margin ({schedule.margin_heights} heights): "
            f"a validator could vote past the end of an epoch before it knows the next set")
    if (view_change_bytes_bound(validators, window, chain_id) > VIEW_CHANGE_BYTES_MAX
            or new_view_bytes_bound(validators, window, chain_id) > NEW_VIEW_BYTES_MAX):
        raise ReplicaConfigError(
            f"watermark_window {window} is too large for {validators.n} validators: a VIEW-CHANGE or NEW-VIEW "
            f"could exceed its byte cap ({VIEW_CHANGE_BYTES_MAX} / {NEW_VIEW_BYTES_MAX} bytes, "
            f"consensus/messages.py)")


class Replica(
    RequestHandling, Proposing, NormalCase, CheckpointHandling, ViewChangeHandling, BodyFetching, CatchUpHandling,
    Restoring, Reconfiguring,
):
    """Coordinates the state objects; each handler module (consensus/handlers/) is one part of the protocol."""

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
        *,
        margin_heights: int = MARGIN_HEIGHTS_DEFAULT,
        spare_signing_keys: tuple[nacl.signing.SigningKey, ...] = (),
        joining: bool = False,
    ) -> None:
        """`validators`: the genesis set; `margin_heights`: the chain's epoch margin; `signing_key`, `spare_signing_keys`:
        every key this validator holds; `joining`: added by a later epoch (catches up, votes from that epoch on)."""
        height, header = last_applied
        persisted = persisted or {}
        self.signing_keys = {key.verify_key.encode(): key for key in (signing_key, *spare_signing_keys)}
        self.schedule = _load_schedule(persisted, validators, margin_heights)
        _check_arguments(config, self.schedule, me, self.signing_keys, chain_id, last_applied, joining)
        self.config = config
        self.me = me
        self.signing_key = signing_key
        self.chain_id = chain_id
        self.app = app
        self.vouch_fallbacks = 0     # times we waited for vouchers in vain and checked ourselves (hosts export it)
        self.idle_filled_ms = 0      # when this primary last proposed an empty block (_fill_idle_height)
        # Optional in the Application (docs/INTERNALS.md): None = no state check before pooling, no epochs.
        self._check_applied = getattr(app, "check_request_applied", None)
        self._reconfiguration_of = getattr(app, "reconfiguration", None)
        self._resume_epoch(persisted, height)   # epoch, epoch_base and everything that holds the set
        self.view, self.view_active, self.failed_views = 0, True, 0
        self.timeouts = Timeouts()   # the clock and every deadline, polled in on_tick
        # Bodies of re-proposed blocks are asked for again retransmit_ms / 2 after the last ask (none yet: 0).
        self.timeouts.start(Timer.BODIES, config.retransmit_ms // 2, since_ms=0)
        self.view_entered_ms = 0  # set again at the first tick: before it, time is unknown
        self.last_applied_height = height
        self.last_applied_header = header
        self.committed_hashes: dict[int, bytes] = {}
        if header is not None:
            self.committed_hashes[height] = hash_of_header(header)
        self.slots: dict[int, Slot] = {}
        self.blocks: dict[bytes, tuple[BlockHeader, tuple[bytes, ...]]] = {}
        self.vote_log = VoteLog(self._persist_change)   # our votes and certificates, and their bodies
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
        # A validator of the next epoch only (one joining) is heard too, for what it needs before it votes.
        member = sender_id in self.validators
        if sender_id == self.me or not (member or sender_id in self.schedule.latest.validators):
            self._reject(sender_id, "unknown-sender")
            return self._ready()
        try:
            message = decode_message(
                data, self.validators, self.chain_id, epoch=self.epoch, base_checkpoint=self.epoch_base,
                validators_at=self._validators_at,
                known_through_height=self.last_applied_height + self.schedule.margin_heights + 1)
        except MessageError as exc:
            self._reject(sender_id, exc.reason)
            return self._ready()
        if not member and not isinstance(message, FROM_NEXT_EPOCH_TYPES):
            # A validator of our next epoch, already in it while we are behind: not a stranger, not yet a peer.
            self._reject(sender_id, "not-in-this-epoch")
            return self._ready()
        if not self.member and not isinstance(message, NON_MEMBER_HANDLES):
            return self._ready()   # no part in this epoch's views, votes or bodies: it only catches up
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
        if not self.member:
            self._reject(CLIENT, "not-a-validator")   # not of this epoch's set: its forwards would be refused
            return self._ready()
        pending = self._add_request(CLIENT, request)
        if pending is not None:
            message_full = self.requests.queue_forward(request, self.config.forward_requests_max)
            if self.view_active and not self.is_primary:
                self._mark_held(pending)   # it goes to the primary by the next tick
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
        self._flush_deferred_forwards()
        if self.view_active:
            self._tick_progress(now)
            if self.view_active and not self.is_primary and self.member and timeouts.due(Timer.SWEEP):
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

    def next_tick_ms(self) -> int | None:
        """The latest time by which this replica needs its next tick (None: before the first tick, or
        nothing pending at all).

        A host may tick less often than every tick interval while this is later (every wake-up of an
        idle node costs CPU; docs/PERFORMANCE.md): the earliest deadline ahead of the clock (timers, the
        primary's batch wait, deferred forwards, vouch waits), or the last tick's time when something
        waits for the very next tick (a forward to flush, a timer to arm). It errs early, never late: a
        tick that finds nothing due does nothing."""
        if not self.timeouts.started:
            return None
        now = self.timeouts.clock_ms
        timeouts = self.timeouts
        if self.requests.forward_queue or not timeouts.armed(Timer.RETRANSMIT) or not timeouts.armed(Timer.PROBE):
            return now
        if self.view_active and self.member and not self.is_primary and not timeouts.armed(Timer.SWEEP):
            return now
        if self.view_active and self._has_work() and not timeouts.armed(Timer.PROGRESS):
            return now
        if self.catch_up.behind(self.last_applied_height) and not timeouts.running(Timer.CATCH_UP):
            return now
        wanted = timeouts.upcoming_ms()
        if self.requests.deferred_forwards:
            wanted.append(self.requests.deferred_forwards[0][0])
        if self.view_active and self.is_primary:
            if self.requests.pending:   # the oldest may be in flight already: early, never late
                oldest = next(iter(self.requests.pending.values()))
                wanted.append(max(oldest.seen_ms, self.view_entered_ms) + self.config.batch_wait_ms)
            if self.schedule.latest.epoch > self.epoch:
                wanted.append(max(self.idle_filled_ms, self.view_entered_ms) + self.config.batch_wait_ms)
        wanted.extend(slot.vouch_deadline_ms for slot in self.slots.values()
                      if slot.vouch_deadline_ms is not None and not slot.signatures_known)
        return max(now, min(wanted)) if wanted else None

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

    # ------------------------------------------------------------------ shared by the handlers

    def _advance(self) -> None:
        """Run every rule that can fire until none does (a fixpoint of the normal case)."""
        for _ in range(10_000):
            progressed = self._try_commit()
            progressed |= self._try_prepare()
            progressed |= self._try_propose()
            if not progressed:
                return
        raise AssertionError("replica rules did not settle")

    def _timeout_ms(self) -> int:
        return self.config.view_timeout_ms * 2 ** min(self.failed_views, self.config.view_timeout_doublings_max)

    def _paced(self, key: str, interval_ms: int) -> bool:
        """True (and the time noted) if nothing was done for `key` in the last `interval_ms`: how every
        answer and offer to one peer is rate-limited, so a faulty peer cannot make us work at its pace."""
        return self.pacer.allow(key, interval_ms, self.timeouts.clock_ms)

    def _persist_change(self, key: bytes, value: bytes | None) -> None:
        self._persist.append((key, value))

    def _persist_vote(self, height: int, view: int, phase: str, header: BlockHeader, entries: tuple[bytes, ...]) -> bool:
        """Record that we sign `phase` for (view, height, header); False if that would contradict a past vote."""
        return self.vote_log.record_vote(height, view, phase, header, entries)

    def _persist_view(self) -> None:
        self.vote_log.record_view(self.view, self.view_active, self.epoch)

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
                if height > self.last_applied_height:
                    self._resend_votes(height, self.slots[height])
            # (A backup's requests go to the primary with its pool sweeps, see on_tick.)
            if self.fetching and self.timeouts.fired(Timer.BODIES):
                self._request_bodies()   # bodies of re-proposed blocks still missing: ask the next peer
        mine = self.checkpoints.unstable_mine()
        if mine is not None:
            self._send(None, mine)

    def _resend_votes(self, height: int, slot: Slot) -> None:
        """Resend our PRE-PREPARE (primary), PREPARE and COMMIT of an uncommitted height once they went
        unanswered for half a retransmission period, each only to the peers that still need it: a
        PRE-PREPARE to those that voted for the block in neither phase, a PREPARE to those without a
        COMMIT for it (a COMMIT shows its sender prepared), a COMMIT to all (we cannot tell who
        committed). A block holds up to batch_requests_max requests: resending every one in flight to
        everyone, every period, cost the primary's bandwidth and each backup a decode of a block it
        already held."""
        now = self.timeouts.clock_ms
        if slot.sent_ms is not None and now - slot.sent_ms < self.config.retransmit_ms // 2:
            return
        if slot.preprepare is None and slot.prepare is None and slot.commit is None:
            return
        slot.sent_ms = now
        committed = set(self.tally.commit_voters(height, slot.hash))
        if self.is_primary and slot.preprepare is not None:
            self._send_to_missing(slot.preprepare, committed.union(self.tally.prepare_signers(height, slot.hash)))
        if slot.prepare is not None:
            self._send_to_missing(slot.prepare, committed)
        if slot.commit is not None:
            self._send(None, slot.commit)

    def _send_to_missing(self, data: bytes, answered: set[str]) -> None:
        """`data` to every validator but us not in `answered`: one broadcast when none answered."""
        missing = [v.id for v in self.validators.validators if v.id != self.me and v.id not in answered]
        if len(missing) == self.validators.n - 1:
            self._send(None, data)
        else:
            for peer in missing:
                self._send(peer, data)
