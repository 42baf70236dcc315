"""Invariants checked on every step of a simulated run (TigerBeetle's state checker, for PBFT).

- Agreement: no two honest replicas commit different blocks at one height.
- Every committed block carries a commit certificate that verifies under the
  jurisdiction rule, for exactly that header, and its body matches the header.
- Blocks chain by prev_hash, are delivered in height order without gaps, and
  their application fields are what the Application computes from the parent.
- No honest replica signs two different things for one (kind, view, slot),
  even across a crash and restart (tracked on the wire).
- No request is committed twice, and no invalid request is committed at all.
- Epochs (docs/CONSENSUS.md, "Reconfiguration"): the checker follows the schedule from the canonical
  blocks itself, checks each certificate with the set of its height's epoch (so no certificate of a
  set that is no longer current is accepted for a height past its epoch), and honest replicas agree
  with it on the set of every height they reach.

A broken invariant raises SafetyViolation; the run reports it with its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.block import BlockHeader, CertificateError, entries_hash
from consensus.epochs import EpochSchedule, ReconfigurationError
from consensus.validators import ValidatorSet

from . import app


class SafetyViolation(Exception):
    """An invariant of the protocol was broken (a replica bug, or a simulator bug)."""


@dataclass
class CanonicalBlock:
    header_hash: bytes
    first_replica: str


@dataclass
class ReplicaChain:
    headers: list[BlockHeader] = field(default_factory=list)   # index = height - 1
    requests: set[bytes] = field(default_factory=set)
    redeliveries: int = 0

    @property
    def height(self) -> int:
        return len(self.headers)


class InvariantChecker:
    def __init__(self, validators: ValidatorSet, chain_id: str, honest_ids: list[str], margin_heights: int):
        self.validators = validators
        self.chain_id = chain_id
        self.honest_ids = sorted(honest_ids)
        self.canonical: dict[int, CanonicalBlock] = {}
        self.canonical_entries: dict[int, tuple[bytes, ...]] = {}
        self.schedule = EpochSchedule.genesis(validators, margin_heights)   # followed from the canonical blocks
        self.scheduled_through = 0   # the canonical heights the schedule has taken into account
        self.canonical_request_height: dict[bytes, int] = {}
        self.chains: dict[str, ReplicaChain] = {rid: ReplicaChain() for rid in self.honest_ids}
        # (signer, kind, view, slot) -> digest: what an honest replica signed (grows with the run, which is bounded).
        self.signed: dict[tuple[str, str, int, int], bytes] = {}
        self.checked_votes = 0

    def is_honest(self, replica_id: str) -> bool:
        return replica_id in self.chains

    def committed(self, replica_id: str, header: BlockHeader, entries: tuple[bytes, ...], certificate) -> None:
        """One committed block delivered by an honest replica's Ready, in the order delivered."""
        if not self.is_honest(replica_id):
            return
        chain = self.chains[replica_id]
        where = f"replica {replica_id} height {header.height}"
        if header.height <= chain.height:
            # Re-delivery after a restart is allowed if it is the same block (storage apply is idempotent).
            if chain.headers[header.height - 1].hash() != header.hash():
                raise SafetyViolation(f"{where}: re-delivered a different block at an applied height")
            chain.redeliveries += 1
            return
        if header.height != chain.height + 1:
            raise SafetyViolation(f"{where}: committed out of order, expected height {chain.height + 1}")
        if header.chain_id != self.chain_id:
            raise SafetyViolation(f"{where}: header has chain id {header.chain_id!r}")
        self.follow_schedule(header.height - 1)
        try:
            certificate.verify(header, self.schedule.config_at(header.height).validators)
        except CertificateError as exc:
            raise SafetyViolation(f"{where}: commit certificate does not verify: {exc}") from exc
        parent = chain.headers[-1] if chain.headers else None
        expected_prev = parent.hash() if parent else bytes(32)
        if header.prev_hash != expected_prev:
            raise SafetyViolation(f"{where}: prev_hash does not chain to the block below")
        if parent is not None and header.time_ms < parent.time_ms:
            raise SafetyViolation(f"{where}: time_ms goes backwards")
        if header.entries_hash != entries_hash(entries) or header.entry_count != len(entries):
            raise SafetyViolation(f"{where}: entries do not match entries_hash/entry_count")
        expected = app.expected_execution(parent, header, entries)
        if expected is None or (expected.tree_size, expected.tree_root, expected.results_hash) != (
            header.tree_size, header.tree_root, header.results_hash
        ):
            raise SafetyViolation(f"{where}: tree_size/tree_root/results_hash differ from the Application's")
        for entry in entries:
            reason = app.check_request(entry)
            if reason is not None:
                raise SafetyViolation(f"{where}: committed an invalid request ({reason})")
            if entry in chain.requests:
                first = self.canonical_request_height.get(entry)
                raise SafetyViolation(f"{where}: request committed twice (first at height {first})")
        canonical = self.canonical.get(header.height)
        if canonical is None:
            self.canonical[header.height] = CanonicalBlock(header.hash(), replica_id)
            self.canonical_entries[header.height] = tuple(entries)
            for entry in entries:
                self.canonical_request_height[entry] = header.height
        elif canonical.header_hash != header.hash():
            raise SafetyViolation(
                f"{where}: committed {header.hash().hex()[:16]} but {canonical.first_replica} "
                f"committed {canonical.header_hash.hex()[:16]} at that height"
            )
        chain.headers.append(header)
        chain.requests.update(entries)

    def follow_schedule(self, through_height: int) -> None:
        """Take the reconfigurations of the canonical blocks up to `through_height` into the schedule, in
        height order and by the replicas' own rules (one pending at a time; refused ones change nothing)."""
        while self.scheduled_through < through_height and self.scheduled_through + 1 in self.canonical_entries:
            height = self.scheduled_through + 1
            latest = self.schedule.latest
            if latest.start_height <= height:
                changes = app.reconfiguration_of(self.canonical_entries[height], latest.epoch)
                if changes:
                    try:
                        self.schedule = self.schedule.schedule(height, changes)
                    except ReconfigurationError:
                        pass
            self.scheduled_through = height

    def same_epochs(self, replica_id: str, schedule: EpochSchedule, applied_height: int) -> None:
        """An honest replica's set for the heights it has applied and the next one is the checker's."""
        if not self.is_honest(replica_id):
            return
        self.follow_schedule(applied_height)
        for height in (applied_height, applied_height + 1):
            if height >= 1 and schedule.config_at(height) != self.schedule.config_at(height):
                raise SafetyViolation(
                    f"replica {replica_id} has epoch {schedule.config_at(height).epoch} at height {height}, "
                    f"the committed chain epoch {self.schedule.config_at(height).epoch}")

    def signed_vote(self, signer: str, kind: str, view: int, slot: int, digest: bytes) -> None:
        """An honest replica put a signed vote on the wire; it must never sign another for that slot."""
        if not self.is_honest(signer):
            return
        self.checked_votes += 1
        key = (signer, kind, view, slot)
        earlier = self.signed.get(key)
        if earlier is None:
            self.signed[key] = digest
        elif earlier != digest:
            raise SafetyViolation(
                f"honest replica {signer} signed two different {kind} for view {view} slot {slot}: "
                f"{earlier.hex()[:16]} and {digest.hex()[:16]}"
            )

    def height(self, replica_id: str) -> int:
        return self.chains[replica_id].height

    def has_committed(self, replica_id: str, request: bytes) -> bool:
        return request in self.chains[replica_id].requests
