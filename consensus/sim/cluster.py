"""One simulated run: a cluster of replicas, clients, a faulty network, a checker.

Every replica's Readies are carried out by `consensus.host`, the code the
daemon runs: the simulator performs its steps (write batch, send, apply,
serve catch-up, report) with a dict for a disk and a simulated network. The
seed draws how many consecutive Readies the host merges into one write batch
(the daemon merges those of every input it drained), and where a crash falls
between steps; everything not yet written is lost, and the restarted replica
gets only the persisted key/value map and the blocks its host applied.

Phase 1 (safety, `plan.ticks`): faults as drawn. Phase 2 (liveness): the
network heals, crashed replicas restart, clients retry; every valid request
must commit on every honest replica within `plan.liveness_ticks_max` ticks.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

import nacl.signing

from consensus import codec, host
from consensus.epochs import AddValidator, RemoveValidator, RotateValidatorKey, SetMinSigners
from consensus.validators import Validator, ValidatorSet

from . import adapter, app, speed
from .byzantine import ByzantineBehaviour
from .checker import InvariantChecker, SafetyViolation
from .faults import CRASH_STAGES, FaultPlan
from .network import NetworkConditions, Packet, SimNetwork

CHAIN_ID = "bayledger-sim"
genesis_time_ms = 1_700_000_000_000
# Clients that have not seen their request commit send it again this often (liveness phase).
resubmit_interval_ticks = 100
# A drawn crash waits this long for its stage (a write, a send, an apply) before it happens anyway: most
# Readies carry out no write, and a crash between the steps of one is the case worth drawing.
crash_stage_wait_ticks = 50


@dataclass
class ClientRequest:
    tick: int
    data: bytes
    valid: bool
    targets: tuple[str, ...]


@dataclass
class RunResult:
    seed: int
    ok: bool
    failure: str | None
    phase: str
    ticks_run: int
    blocks_committed: int
    view_changes: int
    requests_valid: int
    requests_committed: int
    faults: Counter
    liveness_ticks: int
    trace_digest: str        # SHA-256 over every delivered packet: equal digests = identical runs

    def summary(self) -> str:
        injected, observed = split_counts(self.faults)
        faults = " ".join(f"{k}={v}" for k, v in sorted(injected.items())) or "none"
        events = " ".join(f"{k}={v}" for k, v in sorted(observed.items())) or "none"
        status = "ok" if self.ok else f"FAIL ({self.phase}): {self.failure}"
        return (
            f"seed={self.seed} {status} blocks={self.blocks_committed} view_changes={self.view_changes} "
            f"requests={self.requests_committed}/{self.requests_valid} liveness_ticks={self.liveness_ticks} "
            f"trace={self.trace_digest} "
            f"faults: {faults} | replica events: {events}"
        )


# Counters that are the replicas' reactions, not faults the simulator injected.
EVENT_PREFIXES = ("rejected_", "evidence_", "catch_up_")


def split_counts(counts: Counter) -> tuple[Counter, Counter]:
    injected, observed = Counter(), Counter()
    for key, value in counts.items():
        (observed if key.startswith(EVENT_PREFIXES) else injected)[key] = value
    return injected, observed


@dataclass
class SimNode:
    id: str
    signing_key: nacl.signing.SigningKey
    byzantine: ByzantineBehaviour | None
    kv: dict[bytes, bytes] = field(default_factory=dict)
    blocks: list = field(default_factory=list)      # CommittedBlock, index = height - 1
    replica: object | None = None
    application: object | None = None                # the replica's SimApplication (what was applied)
    down_until_tick: int | None = None
    crash_stage: str | None = None                  # crash at this stage of the next Ready
    crash_stage_skips: int = 0                      # ... after passing this many points of that stage
    readies: list = field(default_factory=list)     # Readies queued for the host to carry out together
    readies_to_merge: int | None = None             # drawn: the queue is carried out once it is this long
    clock_offset_ms: int = 0                        # this host's clock error, redrawn at each start
    # The crash waits for its stage until the end of this tick, then happens anyway ("idle"); None: it waits.
    crash_deadline_tick: int | None = None
    down_ticks: int = 0                             # how long it stays down once crashed

    @property
    def up(self) -> bool:
        return self.replica is not None


# Boundary rejections that a message from an honest replica must never earn.
MALFORMED_REASONS = frozenset({
    "bad-encoding", "bad-type", "bad-field", "bad-signature", "unknown-sender", "sender-mismatch", "too-large",
    "wrong-chain", "no-quorum", "bad-new-view", "bad-checkpoint", "bad-certificate", "not-primary",
})
# An honest replica forwards only requests that passed check_request.
MALFORMED_REQUEST_PREFIXES = ("invalid-request:", "bad-request", "request-too-large")

# Open findings the sweep tolerates (counted as rejected_honest_<reason>) until the replica is fixed
# (tests/consensus/FINDINGS.md). Empty: F3 (relayed NEW-VIEW rejected) was fixed in 5f773de.
TOLERATED_HONEST_REJECTIONS: frozenset[str] = frozenset()


class NodeCrashed(Exception):
    """Raised inside Ready processing when a scheduled crash fires; unwinds to the event loop."""


def make_validators(plan: FaultPlan) -> tuple[ValidatorSet, dict[str, nacl.signing.SigningKey]]:
    keys = {}
    validators = []
    for index in range(plan.replica_count):
        validator_id = f"r{index}"
        key = nacl.signing.SigningKey(codec.sha256(f"sim/{plan.seed}/{validator_id}".encode()))
        jurisdiction = "HK" if index < plan.hk_count else "CN"
        validators.append(Validator(validator_id, key.verify_key.encode(), jurisdiction))
        keys[validator_id] = key
    # Interleave nothing: order fixes the primary rotation, and HK-first is as good as any.
    return ValidatorSet(tuple(validators), plan.min_signers_per_jurisdiction), keys


class Simulation:
    def __init__(self, plan: FaultPlan, *, schedule=None, log=None, byzantine_ids=None, beyond_f=False):
        """`schedule`: optional callable(sim, tick) that scripted scenarios use to inject faults by hand;
        `byzantine_ids`: which replicas are Byzantine (default: drawn from the seed);
        `beyond_f`: allow more than f of them, only to show the checker catches the fork that follows."""
        self.plan = plan
        self.log = log
        self.schedule = schedule
        rng = random.Random(plan.seed)
        # Separate streams so that, e.g., an extra network draw does not shift crash times.
        self.rng_network = random.Random(rng.getrandbits(64))
        self.rng_faults = random.Random(rng.getrandbits(64))
        self.rng_clients = random.Random(rng.getrandbits(64))
        self.rng_byzantine = random.Random(rng.getrandbits(64))
        # Its own stream, so clock draws do not shift the other faults of a seed.
        self.rng_clocks = random.Random(plan.seed * 2 + 1)
        # And so do the host's draws of how many Readies it carries out together.
        self.rng_host = random.Random(plan.seed * 2 + 2)
        self.validators, keys = make_validators(plan)
        self.ids = [v.id for v in self.validators.validators]
        drawn = sorted(self.rng_faults.sample(self.ids, plan.byzantine_count))
        byzantine_ids = sorted(byzantine_ids) if byzantine_ids is not None else drawn
        if (len(byzantine_ids) > plan.f and not beyond_f) or not set(byzantine_ids) <= set(self.ids):
            raise ValueError(f"byzantine_ids {byzantine_ids} must be at most f={plan.f} known ids")
        self.byzantine_ids = byzantine_ids
        # A validator outside genesis that a reconfiguration may add: down until its addition is submitted,
        # then joining (it catches up, and votes from its epoch on). Only in seeds that reconfigure.
        self.joiner_ids = [f"r{plan.replica_count}"] if plan.reconfigurations_max else []
        self.node_ids = self.ids + self.joiner_ids   # every node on the network
        self.honest_ids = [i for i in self.node_ids if i not in byzantine_ids]
        self.live_ids = list(self.honest_ids)   # honest replicas liveness is demanded of
        self.network = SimNetwork(
            self.rng_network,
            NetworkConditions(
                plan.delay_ticks_min, plan.delay_ticks_max, plan.loss_probability,
                plan.duplicate_probability, plan.replay_probability,
            ),
        )
        self.checker = InvariantChecker(self.validators, CHAIN_ID, self.honest_ids, adapter.margin_heights(plan))
        self._prepare_reconfigurations(keys)
        self.faults: Counter[str] = Counter()
        self.nodes: dict[str, SimNode] = {}
        collusion: dict = {}   # what the Byzantine nodes of this run know together
        for validator_id in self.node_ids:
            behaviour = None
            if validator_id in byzantine_ids:
                behaviour = ByzantineBehaviour(
                    random.Random(self.rng_byzantine.getrandbits(64)), validator_id, keys[validator_id],
                    CHAIN_ID, self.node_ids, self.validators, plan.byzantine_behaviours, plan.byzantine_probability,
                    collusion,
                )
            self.nodes[validator_id] = SimNode(validator_id, keys[validator_id], behaviour)
        self.requests = self._draw_requests()
        self.crashes = 0
        self.tick = 0
        self.phase = "safety"
        self.liveness_started_tick: int | None = None
        self.max_view_seen = 0
        self.trace = hashlib.sha256()
        for node_id in self.ids:
            self.start(self.nodes[node_id])

    # -- setup -----------------------------------------------------------------

    def _prepare_reconfigurations(self, keys: dict[str, nacl.signing.SigningKey]) -> None:
        """The keys a reconfiguration needs (each replica's next key, the joiner's own) and its own draws."""
        seed = self.plan.seed
        # The key each replica rotates to, if a reconfiguration rotates it (every host holds its next key).
        self.next_keys = {i: nacl.signing.SigningKey(codec.sha256(f"sim/{seed}/{i}/next".encode()))
                          for i in self.node_ids}
        keys.update({i: nacl.signing.SigningKey(codec.sha256(f"sim/{seed}/{i}".encode())) for i in self.joiner_ids})
        self.rng_reconfigurations = random.Random(seed * 2 + 3)   # its own stream: other draws keep theirs
        self.reconfigurations = 0
        self.rotated: set[str] = set()

    def _draw_requests(self) -> list[ClientRequest]:
        rng, plan = self.rng_clients, self.plan
        last_submit_tick = max(1, plan.ticks * 4 // 5)
        requests = []
        for index in range(plan.request_count):
            valid = not (plan.invalid_request_probability and rng.random() < plan.invalid_request_probability)
            client = f"client{rng.randrange(4)}"
            payload = rng.getrandbits(64).to_bytes(8, "big")
            data = app.make_request(client, index, payload, valid=valid)
            fanout = rng.randint(1, plan.request_fanout_max)
            targets = tuple(sorted(rng.sample(self.ids, min(fanout, len(self.ids)))))
            tick = rng.randint(0, last_submit_tick)
            requests.append(ClientRequest(tick, data, valid, targets))
            if plan.client_retry_probability and rng.random() < plan.client_retry_probability:
                # The same bytes again, later, to one replica: a client that saw no answer in time.
                retry_tick = rng.randint(tick + 1, tick + 1 + plan.ticks // 2)
                requests.append(ClientRequest(retry_tick, data, valid, (rng.choice(self.ids),)))
        requests.sort(key=lambda r: (r.tick, r.data))
        return requests

    def now_ms(self) -> int:
        return genesis_time_ms + self.tick * self.plan.tick_ms

    def start(self, node: SimNode) -> None:
        """(Re)start a replica from exactly what its host made durable."""
        last = node.blocks[-1] if node.blocks else None
        # A restarted host may come back with its clock moved (an NTP step), even backwards.
        node.clock_offset_ms = self.rng_clocks.randint(-self.plan.clock_skew_ms, self.plan.clock_skew_ms)
        node.application = app.SimApplication(node.blocks)
        node.replica = adapter.build_replica(
            self.plan, self.validators, node.id, node.signing_key, CHAIN_ID, node.application,
            persisted=dict(node.kv), last_applied=(last.header.height, last.header) if last else (0, None),
            spare_signing_keys=(self.next_keys[node.id],), joining=node.id in self.joiner_ids,
        )
        node.down_until_tick = None
        node.crash_stage = None
        node.readies, node.readies_to_merge = [], None

    def crash(self, node: SimNode, stage: str) -> None:
        node.replica = None
        node.crash_stage = None
        node.readies, node.readies_to_merge = [], None   # not carried out: lost with the process
        node.down_until_tick = self.tick + node.down_ticks
        self.crashes += 1
        self.faults[f"crash_{stage}"] += 1
        if self.log:
            self.log(f"tick {self.tick}: crash {node.id} at {stage}")

    # -- the Ready contract: carried out by consensus.host, as in the daemon -------------------

    def _stage(self, node: SimNode, stage: str) -> None:
        if node.crash_stage != stage:
            return
        if node.crash_stage_skips > 0:
            node.crash_stage_skips -= 1   # a later point of the same kind, deeper in a merged group
            return
        self.crash(node, stage)
        raise NodeCrashed

    def carry_out(self, node: SimNode, ready) -> None:
        """Queue `ready`; the host carries out the queue once it holds as many Readies as drawn
        (the daemon merges the Readies of the inputs it drained into one synced write)."""
        self._check_invariants(node)
        node.readies.append(ready)
        if node.readies_to_merge is None:
            node.readies_to_merge = self.rng_host.randint(1, self.plan.readies_merged_max)
        if len(node.readies) >= node.readies_to_merge:
            self.flush(node)

    def flush(self, node: SimNode) -> None:
        """Carry out every queued Ready of `node` through consensus.host, crashing where drawn."""
        readies, node.readies, node.readies_to_merge = node.readies, [], None
        if not readies or not node.up:
            return
        if len(readies) > 1:
            self.faults["readies_merged"] += len(readies)
        self._check_redelivered(node, readies)
        steps = host.carry_out(node.replica, readies, len(node.blocks), send_before_persist=self.plan.send_before_persist)
        try:
            self._stage(node, "before_persist")
            persists = any(ready.persist for ready in readies)
            wrote = just_wrote = False
            while True:
                try:
                    step = next(steps)
                except StopIteration:
                    break
                except host.FollowUpsExceeded as exc:
                    raise SafetyViolation(f"replica {node.id}: {exc}") from exc
                if just_wrote:
                    # on_persisted ran before this step was made: what it released is not out yet.
                    self._stage(node, "after_persisted_ack")
                self._check_invariants(node)      # the host may have acknowledged a write
                self._perform(node, step)
                just_wrote = isinstance(step, host.WriteBatch)
                wrote = wrote or just_wrote
                if isinstance(step, host.Send):
                    # Only a send before the write is something a crash could make the replica forget.
                    self._stage(node, "after_send" if wrote or not persists else "after_early_send")
            if just_wrote:
                self._stage(node, "after_persisted_ack")
        except NodeCrashed:
            steps.close()

    def _check_invariants(self, node: SimNode) -> None:
        """The replica's own consistency rules (Replica.check_invariants), and its epochs agreeing with
        the committed chain's, after every input and step."""
        if node.up:
            try:
                node.replica.check_invariants()
            except AssertionError as exc:
                raise SafetyViolation(f"replica {node.id} broke an invariant: {exc}") from exc
            self.checker.same_epochs(node.id, node.replica.schedule, len(node.blocks))

    def _check_redelivered(self, node: SimNode, readies) -> None:
        # The host skips blocks at or below the applied height; the checker still sees that a
        # re-delivered block is the one applied there.
        for ready in readies:
            for block in adapter.ready_committed(ready):
                if block.header.height <= len(node.blocks):
                    self.checker.committed(node.id, block.header, tuple(block.entries), block.certificate)

    def _perform(self, node: SimNode, step) -> None:
        if isinstance(step, host.WriteBatch):
            step.apply_changes_to(node.kv)
            if step.block is not None:
                self._apply(node, step.block)   # in the same atomic write
            self._stage(node, "after_persist")
            if step.block is not None:
                self._stage(node, "after_apply")
        elif isinstance(step, host.Send):
            for outbound in step.messages:
                self.send(node, outbound.to, outbound.data)
        elif isinstance(step, host.Apply):
            self._apply(node, step.block)
            self._stage(node, "after_apply")
        elif isinstance(step, host.ServeCatchUp):
            for peer_id, from_height, to_height in step.ranges:
                self.serve_catch_up(node, peer_id, from_height, to_height)
        else:
            self._report(node, step)

    def _apply(self, node: SimNode, block) -> None:
        self.checker.committed(node.id, block.header, tuple(block.entries), block.certificate)
        node.blocks.append(block)
        node.application.record_applied(block.entries)
        if self.log:
            self.log(
                f"tick {self.tick}: {node.id} applied height {block.header.height} "
                f"{block.header.hash().hex()[:12]} ({len(block.entries)} entries, view {block.certificate.view})"
            )

    def _report(self, node: SimNode, step) -> None:
        for evidence in step.evidence:
            self.faults["evidence_reported"] += 1
            if self.checker.is_honest(node.id):
                if self.checker.is_honest(evidence.validator):
                    raise SafetyViolation(f"replica {node.id} accuses honest {evidence.validator} of equivocation")
                problem = adapter.check_evidence(evidence, self.validators, CHAIN_ID)
                if problem is not None:
                    raise SafetyViolation(f"replica {node.id} reported bad evidence: {problem}")
        for peer, reason in step.rejected:
            self.faults[f"rejected_{reason}"] += 1
            malformed = reason in MALFORMED_REASONS or reason.startswith(MALFORMED_REQUEST_PREFIXES)
            if reason == "unknown-sender" and self.joining_unknown_to(node, peer):
                self.faults["rejected_joiner_not_known_yet"] += 1
                continue
            if malformed and self.checker.is_honest(node.id) and self.checker.is_honest(peer):
                # The network never alters bytes (replays keep their link), so an honest
                # peer's message that does not pass the boundary is an honest-side bug.
                if reason in TOLERATED_HONEST_REJECTIONS:
                    self.faults[f"rejected_honest_{reason}"] += 1
                    continue
                raise SafetyViolation(f"replica {node.id} rejected a message from honest {peer}: {reason}")

    def joining_unknown_to(self, node: SimNode, peer: str) -> bool:
        """A joining validator that `node` did not know when it refused it: not in its epoch's set. (Its
        reconfiguration may have been delivered since, within the Readies carried out together.)"""
        return peer in self.joiner_ids and node.up and peer not in node.replica.validators

    def send(self, node: SimNode, to: str | None, data: bytes) -> None:
        destinations = [i for i in self.node_ids if i != node.id] if to is None else [to]
        if node.byzantine is not None:
            for destination, payload in node.byzantine.outgoing(self.tick, destinations, data):
                self.network.send(self.tick, Packet(node.id, destination, payload))
            return
        vote = adapter.classify_signed(data, node.id)
        if vote is not None:
            kind, view, slot, digest = vote
            if kind == "unreadable":
                raise SafetyViolation(f"honest replica {node.id} sent a malformed signed vote")
            self.checker.signed_vote(node.id, kind, view, slot, digest)
            if view > self.max_view_seen:
                self.max_view_seen = view
                if self.log:
                    self.log(f"tick {self.tick}: first vote in view {view} (by {node.id})")
        for destination in destinations:
            if destination not in self.nodes or destination == node.id:
                raise SafetyViolation(f"replica {node.id} sent to unknown or own id {destination!r}")
            self.network.send(self.tick, Packet(node.id, destination, data))

    def serve_catch_up(self, node: SimNode, peer_id: str, from_height: int, to_height: int) -> None:
        if peer_id not in self.nodes or from_height < 1:
            return
        blocks = node.blocks[from_height - 1:max(from_height - 1, to_height)]
        if not blocks:
            return
        self.faults["catch_up_served"] += 1
        self.send(node, peer_id, adapter.encode_catch_up_response(blocks, CHAIN_ID))

    # -- the event loop ---------------------------------------------------------

    def client_request(self, targets: list[str], *, valid: bool = True) -> bytes:
        """A scripted client request, sent now to `targets`, that liveness then demands."""
        index = len(self.requests)
        data = app.make_request("scripted", index, index.to_bytes(4, "big"), valid=valid)
        self.requests.append(ClientRequest(self.tick, data, valid, tuple(sorted(targets))))
        for target in sorted(targets):
            self.submit(self.nodes[target], data)
        return data

    def submit(self, node: SimNode, data: bytes) -> None:
        if node.up:
            self.carry_out(node, node.replica.on_request(data))

    def deliver(self) -> None:
        for packet in self.network.due(self.tick):
            self.trace.update(b"%d|%s|%s|%d|" % (self.tick, packet.source.encode(), packet.destination.encode(), len(packet.data)))
            self.trace.update(packet.data)
            node = self.nodes[packet.destination]
            if node.byzantine is not None:
                node.byzantine.observe(packet.source, packet.data)
            if node.up:
                self.carry_out(node, node.replica.on_message(packet.source, packet.data))

    def inject_faults(self) -> None:
        plan, rng, net = self.plan, self.rng_faults, self.network
        if net.partition is not None and self.tick >= net.partition.until_tick:
            net.heal()
        if net.partition is None and plan.partition_probability and rng.random() < plan.partition_probability:
            kind = rng.choice(plan.partition_kinds)
            partition = net.start_partition(self.tick, kind, self.ids, rng.randint(1, plan.partition_ticks_max))
            if self.log:
                self.log(f"tick {self.tick}: partition {partition.description} until {partition.until_tick}")
        for node_id in self.honest_ids:
            node = self.nodes[node_id]
            if not node.up:
                if node.down_until_tick is not None and self.tick >= node.down_until_tick:
                    self.restart(node)
                continue
            if (
                plan.crash_probability and self.crashes < plan.crashes_max and node.crash_stage is None
                and rng.random() < plan.crash_probability
            ):
                if plan.send_before_persist and rng.random() < 0.5:
                    # The stage that catches a vote released before the state it promises.
                    node.crash_stage = "after_early_send"
                else:
                    node.crash_stage = rng.choice(CRASH_STAGES)
                node.crash_stage_skips = rng.randint(0, 2)
                node.crash_deadline_tick = self.tick + crash_stage_wait_ticks
                node.down_ticks = rng.randint(1, plan.down_ticks_max)

    def schedule_crash(self, node_id: str, stage: str, down_ticks: int, *, wait: bool = False) -> None:
        """Scripted crash of `node_id` at `stage` in this tick (or at the end of this tick; with
        `wait`, at the first time the host reaches `stage`, however many ticks later).
        It restarts `down_ticks` after the crash."""
        if stage not in CRASH_STAGES:
            raise ValueError(f"unknown crash stage {stage!r}")
        node = self.nodes[node_id]
        node.crash_stage = stage
        node.crash_stage_skips = 0
        node.crash_deadline_tick = None if wait else self.tick
        node.down_ticks = down_ticks

    def restart(self, node: SimNode) -> None:
        self.faults["restart"] += 1
        if self.log:
            self.log(f"tick {self.tick}: restart {node.id}")
        self.start(node)

    def reconfigure(self) -> None:
        """A governance client's reconfiguration, now and then, while none is pending: rotate an honest
        replica's key, remove a Byzantine replica, or change min_signers_per_jurisdiction. Liveness then
        demands that it commits; the replicas refuse one that breaks the safety rule, as the ledger would."""
        plan, rng = self.plan, self.rng_reconfigurations
        if self.reconfigurations >= plan.reconfigurations_max or rng.random() >= plan.reconfiguration_probability:
            return
        latest = self.checker.schedule.latest
        if latest.start_height > self.checker.scheduled_through + 1:
            return   # one is pending
        members = latest.validators
        options = [RotateValidatorKey(i, self.next_keys[i].verify_key.encode())
                   for i in self.honest_ids if i in members and i not in self.rotated]
        options += [RemoveValidator(i) for i in self.byzantine_ids if i in members]
        options += [AddValidator(Validator(i, self.nodes[i].signing_key.verify_key.encode(), rng.choice(("HK", "CN"))))
                    for i in self.joiner_ids if not self.nodes[i].up]
        options.append(SetMinSigners(rng.choice((1, 2))))
        change = rng.choice(options)
        if isinstance(change, RotateValidatorKey):
            self.rotated.add(change.id)
        if isinstance(change, AddValidator):
            self.start(self.nodes[change.validator.id])   # its operator starts it as the entry goes in
        self.reconfigurations += 1
        self.faults[f"reconfigure_{change.OP}"] += 1
        data = app.make_reconfiguration(len(self.requests), latest.epoch, [change])
        targets = tuple(sorted(rng.sample(self.honest_ids, min(2, len(self.honest_ids)))))
        self.requests.append(ClientRequest(self.tick, data, True, targets))
        if self.log:
            self.log(f"tick {self.tick}: reconfiguration {change} for epoch {latest.epoch}")

    def step(self) -> None:
        if self.phase == "safety":
            self.inject_faults()
            self.reconfigure()
        for request in self.requests:
            if request.tick == self.tick:
                if len(request.targets) == 1 and any(r.data == request.data and r.tick < request.tick for r in self.requests):
                    self.faults["client_retry"] += 1
                for target in request.targets:
                    self.submit(self.nodes[target], request.data)
        # After the drawn requests, so a scripted request submitted now is not submitted twice.
        if self.schedule is not None:
            self.schedule(self, self.tick)
        self.deliver()
        now = self.now_ms()
        for node_id in self.node_ids:
            node = self.nodes[node_id]
            if node.up:
                self.carry_out(node, node.replica.on_tick(now + node.clock_offset_ms))
        for node_id in self.node_ids:
            self.flush(self.nodes[node_id])
        # A crash whose stage the host did not reach by its deadline happens at the end of the tick.
        for node_id in self.node_ids:
            node = self.nodes[node_id]
            deadline = node.crash_deadline_tick
            if node.up and node.crash_stage is not None and deadline is not None and self.tick >= deadline:
                self.crash(node, "idle")
        self.tick += 1

    def begin_liveness(self) -> None:
        """Heal the network and a core of honest replicas; the rest of the honest ones stay down.

        With `plan.liveness_core_only`, f - b honest replicas (b = Byzantine count) stay
        crashed, so exactly 2f + 1 honest replicas must make progress next to b Byzantine
        ones (each jurisdiction keeps its minimum: it has at least min + f validators).
        """
        self.phase = "liveness"
        self.liveness_started_tick = self.tick
        self.network.calm()
        left_down: list[str] = []
        if self.plan.liveness_core_only:
            # f - b of the current and of a pending epoch's set (a removal changes both), whichever is less.
            count = max(0, min(
                (config.validators.n - 1) // 3 - len([i for i in self.byzantine_ids if i in config.validators])
                for config in self.checker.schedule.epochs[-2:]))
            members = [i for i in self.honest_ids if i in self.checker.schedule.latest.validators]
            left_down = sorted(self.rng_faults.sample(members, count))
        # A joiner no committed reconfiguration added has no chain to follow: it stays out of liveness.
        left_out = [i for i in self.joiner_ids if i not in self.checker.schedule.latest.validators]
        self.live_ids = [i for i in self.honest_ids if i not in left_down and i not in left_out]
        for node_id in self.honest_ids:
            if node_id in left_out:
                continue
            node = self.nodes[node_id]
            node.crash_stage = None
            if node_id in left_down:
                if node.up:
                    self.crash(node, "liveness_left_down")
                node.down_until_tick = None
            elif not node.up:
                self.restart(node)
        if self.log and left_down:
            self.log(f"tick {self.tick}: liveness with {', '.join(left_down)} left down")

    def pending_requests(self) -> list[ClientRequest]:
        """Valid requests not yet committed on every live honest replica."""
        pending = {
            r.data: r for r in self.requests
            if r.valid and not all(self.checker.has_committed(i, r.data) for i in self.live_ids)
        }
        return list(pending.values())

    def converged(self) -> bool:
        """Every live honest replica has applied the highest block any honest replica committed."""
        top = max(self.checker.height(i) for i in self.honest_ids)
        return all(self.checker.height(i) == top for i in self.live_ids)

    def resubmit(self) -> None:
        # A client retries only requests it has not seen committed anywhere; lagging
        # replicas get committed ones through catch-up, not through a second commit.
        committed_anywhere = self.checker.canonical_request_height
        for request in self.pending_requests():
            if request.data in committed_anywhere:
                continue
            for node_id in self.live_ids:
                self.submit(self.nodes[node_id], request.data)

    def run(self) -> RunResult:
        with speed.memoized_verify():
            return self._run()

    def _run(self) -> RunResult:
        failure = None
        try:
            while self.tick < self.plan.ticks:
                self.step()
            self.begin_liveness()
            deadline = self.tick + self.plan.liveness_ticks_max
            while self.pending_requests() or not self.converged():
                if self.tick >= deadline:
                    pending = self.pending_requests()
                    heights = ", ".join(f"{i}:{self.checker.height(i)}" for i in self.live_ids)
                    raise LivenessFailure(
                        f"{len(pending)} valid request(s) not committed on every live honest replica, or "
                        f"heights differ, after {self.plan.liveness_ticks_max} liveness ticks (heights {heights})"
                    )
                if (self.tick - self.liveness_started_tick) % resubmit_interval_ticks == 0:
                    self.resubmit()
                self.step()
        except (SafetyViolation, LivenessFailure) as exc:
            failure = f"tick {self.tick}: {exc}"
        return self.result(failure)

    def result(self, failure: str | None) -> RunResult:
        faults = Counter(self.network.faults)
        faults.update(self.faults)
        epochs = len(self.checker.schedule.epochs) - 1
        if epochs:
            faults["epochs_scheduled"] += epochs   # reconfigurations the committed chain accepted
        for node in self.nodes.values():
            if node.byzantine is not None:
                faults.update(node.byzantine.altered)
        blocks = max((self.checker.height(i) for i in self.honest_ids), default=0)
        for node_id in self.honest_ids:
            node = self.nodes[node_id]
            if node.up:
                self.max_view_seen = max(self.max_view_seen, adapter.replica_view(node.replica))
        return RunResult(
            seed=self.plan.seed,
            ok=failure is None,
            failure=failure,
            phase=self.phase,
            ticks_run=self.tick,
            blocks_committed=blocks,
            view_changes=self.max_view_seen,
            requests_valid=len({r.data for r in self.requests if r.valid}),
            requests_committed=len(
                {r.data for r in self.requests if r.valid and r.data in self.checker.canonical_request_height}
            ),
            faults=faults,
            liveness_ticks=self.tick - (self.liveness_started_tick or self.tick),
            trace_digest=self.trace.hexdigest()[:16],
        )


class LivenessFailure(Exception):
    """The healed cluster did not commit every request within the tick budget."""


def run_seed(plan: FaultPlan, *, schedule=None, log=None) -> RunResult:
    return Simulation(plan, schedule=schedule, log=log).run()
