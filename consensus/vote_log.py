"""The replica's durable vote log: what it signed, what it saw prepared, and the block bodies those
records name, as persisted keys. Whatever survives a restart is written here first.

Every change goes to `persist`, a sink the replica turns into the next Ready's persist batch (in call
order: the replica interleaves its own records, such as committed ids, with these). Restore is a set
of small readers, one per kind of record, that the replica calls in a fixed order.
"""

from __future__ import annotations

from typing import Callable

from . import codec
from .block import BlockHeader
from .epochs import EpochSchedule
from .messages import GENESIS_CHECKPOINT, CheckpointCertificate, PreparedCertificate
from .messages import header_hash as hash_of_header
from .validators import ValidatorSet

__all__ = [
    "KEY_BODY", "KEY_CERT", "KEY_CHECKPOINT", "KEY_COMMITTED", "KEY_EPOCH_BASE", "KEY_EPOCHS", "KEY_NEW_VIEW",
    "KEY_VIEW", "KEY_VIEW_CHANGE",
    "KEY_VOTE", "PHASE_COMMIT", "PHASE_ORDER", "PHASE_PREPARE", "PHASE_PRE_PREPARE", "PersistSink", "Vote",
    "VoteLog", "body_key", "height_key", "restore_committed_ids", "restore_epoch_base", "restore_schedule",
    "restore_stable", "restore_view",
]

# Persisted keys (all under the replica's own prefix in storage).
KEY_VIEW = b"view"
KEY_CHECKPOINT = b"checkpoint"
KEY_VIEW_CHANGE = b"view-change"
KEY_NEW_VIEW = b"new-view"
KEY_VOTE = b"vote/"   # + height: the latest (view, phase, header) this replica signed at that height
KEY_CERT = b"cert/"   # + height: this replica's highest-view prepared certificate at that height, without entries
# + height + header hash: a block's entries, written once however many records above refer to that block.
# (A vote and a certificate each carrying the block wrote every block three times more, and those bytes
# drove LevelDB's memtable flushes.)
KEY_BODY = b"body/"
KEY_COMMITTED = b"committed/"  # + height: ids (SHA-256) of the requests committed at that height
KEY_EPOCHS = b"epochs"         # the EpochSchedule, written with the block whose reconfiguration extended it
KEY_EPOCH_BASE = b"epoch-base/"   # + epoch: the base checkpoint the replica entered that epoch from

PHASE_PRE_PREPARE = "pre-prepare"
PHASE_PREPARE = "prepare"
PHASE_COMMIT = "commit"
PHASE_ORDER = {PHASE_PRE_PREPARE: 0, PHASE_PREPARE: 1, PHASE_COMMIT: 2}

PersistSink = Callable[[bytes, "bytes | None"], None]   # (key, value); None deletes the key
Vote = tuple[int, str, bytes]   # (view, phase, header hash) this replica signed at a height
Body = tuple["BlockHeader | None", tuple[bytes, ...]]   # header None: restored without a record naming it


def height_key(prefix: bytes, height: int) -> bytes:
    return prefix + height.to_bytes(8, "big")


def body_key(height: int, header_hash: bytes) -> bytes:
    return KEY_BODY + height.to_bytes(8, "big") + header_hash


def _body_height(key: bytes) -> int:
    return int.from_bytes(key[len(KEY_BODY):len(KEY_BODY) + 8], "big")


class VoteLog:
    """Our votes, our prepared certificates and their bodies, kept in memory as persisted."""

    def __init__(self, persist: PersistSink) -> None:
        self._persist = persist
        self.votes: dict[int, Vote] = {}
        self.certs: dict[int, PreparedCertificate] = {}
        # height -> header hash -> (header, entries) of the bodies persisted under body/. Also what this
        # replica serves to BLOCK-REQUESTs.
        self.bodies: dict[int, dict[bytes, Body]] = {}

    # ---------------------------------------------------------------- writing

    def record_vote(self, height: int, view: int, phase: str, header: BlockHeader, entries: tuple[bytes, ...]) -> bool:
        """Record that we sign `phase` for (view, height, header); False if that would contradict a past vote."""
        header_hash = hash_of_header(header)
        previous = self.votes.get(height)
        if previous is not None:
            p_view, p_phase, p_hash = previous
            if p_view > view or (p_view == view and p_hash != header_hash):
                return False
            if p_view == view and PHASE_ORDER[p_phase] >= PHASE_ORDER[phase]:
                return True
        self.votes[height] = (view, phase, header_hash)
        self.record_body(height, header, entries)
        value = codec.pack({"view": view, "phase": phase, "header": header.to_wire()})
        self._persist(height_key(KEY_VOTE, height), value)
        self.forget_unreferenced_bodies(height)
        return True

    def record_body(self, height: int, header: BlockHeader, entries: tuple[bytes, ...]) -> None:
        """Persist a block's entries once, in the same batch as the first record that refers to them."""
        header_hash = hash_of_header(header)
        bodies = self.bodies.setdefault(height, {})
        if bodies.get(header_hash, (None,))[0] is None:
            if header_hash not in bodies:
                self._persist(body_key(height, header_hash), codec.pack(list(entries)))
            bodies[header_hash] = (header, entries)

    def record_certificate(self, certificate: PreparedCertificate, entries: tuple[bytes, ...]) -> None:
        """The certificate carries no entries (nor does the VIEW-CHANGE that sends it): its body is
        persisted in the same batch, so we can serve it to a replica that enters a view without it."""
        self.certs[certificate.height] = certificate
        self.record_body(certificate.height, certificate.header, entries)
        self._persist(height_key(KEY_CERT, certificate.height), codec.pack(certificate.to_wire()))
        self.forget_unreferenced_bodies(certificate.height)

    def forget_unreferenced_bodies(self, height: int) -> None:
        """Delete the entries of blocks at `height` that neither our vote nor our certificate refers to any more."""
        referenced = set()
        if height in self.votes:
            referenced.add(self.votes[height][2])
        if height in self.certs:
            referenced.add(hash_of_header(self.certs[height].header))
        bodies = self.bodies.get(height, {})
        for header_hash in set(bodies) - referenced:
            del bodies[header_hash]
            self._persist(body_key(height, header_hash), None)

    def record_view(self, view: int, active: bool, epoch: int = 0) -> None:
        # The epoch only from epoch 1 on: an epoch-0 record is what it always was.
        record = {"view": view, "active": active, **({"epoch": epoch} if epoch else {})}
        self._persist(KEY_VIEW, codec.pack(record))

    def forget_through(self, height: int) -> None:
        """A stable checkpoint at `height`: votes, certificates and bodies at or below it are deleted."""
        for below in [h for h in self.votes if h <= height]:
            del self.votes[below]
            self._persist(height_key(KEY_VOTE, below), None)
        for below in [h for h in self.certs if h <= height]:
            del self.certs[below]
            self._persist(height_key(KEY_CERT, below), None)
        for below in [h for h in self.bodies if h <= height]:
            for header_hash in self.bodies.pop(below):
                self._persist(body_key(below, header_hash), None)

    # ---------------------------------------------------------------- reading

    def body(self, height: int, header_hash: bytes) -> tuple[bytes, ...] | None:
        persisted = self.bodies.get(height, {}).get(header_hash)
        return None if persisted is None else persisted[1]

    def servable(self, header_hash: bytes) -> tuple[BlockHeader, tuple[bytes, ...]] | None:
        """A persisted body at any height, with its header (one restored without its header is not served)."""
        for bodies in self.bodies.values():
            persisted = bodies.get(header_hash)
            if persisted is not None and persisted[0] is not None:
                return persisted[0], persisted[1]
        return None

    # ---------------------------------------------------------------- restore (in this order)

    def restore_bodies(self, persisted: dict[bytes, bytes]) -> None:
        """Every body/ record, without its header until a vote or certificate names it."""
        for key, value in persisted.items():
            if key.startswith(KEY_BODY):
                header_hash = key[len(KEY_BODY) + 8:]
                self.bodies.setdefault(_body_height(key), {})[header_hash] = (None, tuple(codec.unpack(value)))

    def restore_vote(self, key: bytes, value: bytes) -> tuple[int, int, BlockHeader, tuple[bytes, ...] | None]:
        """A vote/ record: (height, view, header, entries if their body was persisted)."""
        height = int.from_bytes(key[len(KEY_VOTE):], "big")
        record = codec.unpack(value)
        header = BlockHeader.from_wire(record["header"])
        entries = self._restored_body(height, header)
        self.votes[height] = (record["view"], record["phase"], hash_of_header(header))
        return height, record["view"], header, entries

    def restore_certificate(self, key: bytes, value: bytes, validators: ValidatorSet, chain_id: str) -> None:
        height = int.from_bytes(key[len(KEY_CERT):], "big")
        certificate = PreparedCertificate.from_wire(codec.unpack(value), validators, chain_id)
        self.certs[height] = certificate
        self._restored_body(height, certificate.header)

    def _restored_body(self, height: int, header: BlockHeader) -> tuple[bytes, ...] | None:
        """The persisted body of a block a vote or certificate record names (now with its header)."""
        header_hash = hash_of_header(header)
        bodies = self.bodies.get(height, {})
        if header_hash not in bodies:
            return None
        entries = bodies[header_hash][1]
        bodies[header_hash] = (header, entries)
        return entries


def restore_stable(persisted: dict[bytes, bytes], validators: ValidatorSet) -> CheckpointCertificate | None:
    if KEY_CHECKPOINT not in persisted:
        return None
    return CheckpointCertificate.from_wire(codec.unpack(persisted[KEY_CHECKPOINT]), validators)


def restore_view(persisted: dict[bytes, bytes], epoch: int = 0) -> tuple[int, bool] | None:
    """(view, active) as last persisted in `epoch`, or None (none, or the record is of another epoch:
    a restart whose host had not applied the block that ended the epoch yet)."""
    if KEY_VIEW not in persisted:
        return None
    record = codec.unpack(persisted[KEY_VIEW])
    if int(record.get("epoch", 0)) != epoch:
        return None
    return int(record["view"]), bool(record["active"])


def restore_schedule(persisted: dict[bytes, bytes], genesis: ValidatorSet, margin_heights: int) -> EpochSchedule:
    """The epoch schedule as last written. It may hold an epoch scheduled by a block the host had not
    applied yet (a crash between the write and the apply): that block was committed, so the epoch stands,
    and delivering the block again finds it scheduled already."""
    if KEY_EPOCHS not in persisted:
        return EpochSchedule.genesis(genesis, margin_heights)
    schedule = EpochSchedule.from_wire(codec.unpack(persisted[KEY_EPOCHS]))
    if schedule.epochs[0].validators != genesis or schedule.margin_heights != margin_heights:
        raise ValueError("the persisted epoch schedule is of another genesis set or margin")
    return schedule


def restore_epoch_base(persisted: dict[bytes, bytes], epoch: int, validators: ValidatorSet) -> CheckpointCertificate:
    """The base checkpoint the replica entered `epoch` from (the genesis checkpoint for epoch 0)."""
    if epoch == 0:
        return GENESIS_CHECKPOINT
    return CheckpointCertificate.from_wire(codec.unpack(persisted[height_key(KEY_EPOCH_BASE, epoch)]), validators)


def restore_committed_ids(persisted: dict[bytes, bytes], applied_height: int) -> list[bytes]:
    """Ids of requests in blocks storage has applied, oldest first. A block we recorded but storage did
    not apply (crash in between) commits again later, so its ids must not count yet."""
    ids = []
    for key in sorted(k for k in persisted if k.startswith(KEY_COMMITTED)):
        if int.from_bytes(key[len(KEY_COMMITTED):], "big") <= applied_height:
            ids.extend(bytes(request_id) for request_id in codec.unpack(persisted[key]))
    return ids
