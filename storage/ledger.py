"""The ledger on LevelDB: open, atomic block apply, reads, the Merkle log, proofs and their caches;
speculative executions kept for blocks in flight (the rules themselves are in storage/execution.py).

The key layout, and what lives under each prefix, is in storage/keys.py.

Expiry: a commitment's status is computed at query time ("expired" when
expires_ms <= the time the caller asks about), never stored, so it needs no
write when the clock passes. At apply, a commit whose expires_ms is not after
the block's time_ms is rejected ("already-expired").
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import msgpack
import plyvel

from consensus import codec
from consensus.block import ZERO_HASH, BlockHeader, CertificateError, CommitCertificate
from consensus.messages import CommittedBlock
from consensus.application import ExecutionResult
from consensus.epochs import EpochScheduleError, ReconfigurationError

from . import keys, merkle, smt
from .entries import Entry, EntryError, decode_entry, validate_entry
from .execution import Execution, author_refusal, outcomes_hash
from .genesis import Genesis, Governance
from .reconfiguration import RECONFIGURE_TYPE, LedgerEpochs, governance_of

# The stateless check's refusals that depend on the regulator keys (Ledger.check_entry).
_GOVERNANCE_REASONS = frozenset({"unknown-governance-key", "governance-threshold", "bad-signature"})


def _is_governance_entry(data: bytes) -> bool:
    try:
        return decode_entry(data).is_governance
    except EntryError:
        return False
from .keys import FORMAT_VERSION
from .proofs import Encoded, build_match_proof, encode_epoch_steps
from .records import STATUS_ACTIVE, CommitmentRecord, NonceWindow, ParticipantRecord


node_level_min_stored = 2            # levels 0-1 are rehashed from <= 4 entries: saves 21 bytes a leaf
node_cache_level_min = 2             # stored nodes (subtrees of >= 4 leaves) stay in memory once read (immutable)
node_cache_entries_max = 1_000_000   # bound on those (about 100 MB); cleared when full
group_cache_entries_max = 32_768     # recently rehashed 4-leaf groups (~705 bytes each: 23 MB, 131,072 leaves)
smt_cache_entries_max = 100_000      # revoked-set nodes (and known-empty ones) in memory, ~15 MB
proof_block_cache_entries_max = 4_096  # blocks' header, certificate and tree size for match proofs (~1 KB each)
speculative_blocks_max = 256         # in-flight executed blocks kept for children to build on
block_entries_max = 100_000          # a block with more entries is refused at apply
# Entries the stateless check decoded, kept (about 1.4 KB each) for the block execution that
# follows within a second or so, which then need not decode them again (3 us of its 6 per entry).
decoded_entries_max = 4096
leveldb_write_buffer_bytes = 32 * 1024 * 1024  # also bounds the log replayed on open after a crash
leveldb_write_buffer_bytes_min = 1024 * 1024
leveldb_write_buffer_bytes_max = 1024 * 1024 * 1024
leveldb_cache_bytes = 64 * 1024 * 1024
leveldb_block_bytes = 16 * 1024
leveldb_bloom_bits = 10              # bits per key: most lookups are for keys that do not exist

_pack = msgpack.Packer(use_bin_type=True).pack  # for our own records (not hashed)


def _entries_hash(entries: Sequence[bytes]) -> bytes:
    """consensus.block.entries_hash, without the generic canonicalizer: an array of bin is already canonical."""
    return codec.sha256(msgpack.packb(list(entries), use_bin_type=True))


class LedgerError(Exception):
    """A store that cannot be used, or a block that cannot be applied (the message says why)."""


@dataclass(slots=True)
class EntryOutcome:
    """What became of one entry of a block: accepted at `leaf_index`, or rejected with `reason`."""

    ok: bool
    leaf_index: int | None = None
    reason: str | None = None


def _outcome(result: int | str) -> EntryOutcome:
    if isinstance(result, int):
        return EntryOutcome(ok=True, leaf_index=result)
    return EntryOutcome(ok=False, reason=result)


class _StoreView:
    """Reads of the applied state (the bottom of every speculative chain)."""

    def __init__(self, ledger: "Ledger") -> None:
        self._ledger = ledger

    def commitment(self, commitment: bytes) -> CommitmentRecord | None:
        data = self._ledger._db.get(keys.commitment_key(commitment))
        return None if data is None else CommitmentRecord.decode(data)

    def participant(self, participant_id: str) -> ParticipantRecord | None:
        return self._ledger.participant(participant_id)

    def nonce_window(self, author: str) -> NonceWindow:
        return self._ledger.nonce_window(author)

    def entry(self, leaf_index: int) -> bytes:
        return self._ledger.entry(leaf_index)

    def smt_node(self, node_id: bytes) -> bytes | None:
        return self._ledger._smt_node(node_id)

    def epochs(self) -> LedgerEpochs:
        return self._ledger.epochs


# -- the store ------------------------------------------------------------------------------------

class Ledger:
    """A Bayledger store. Use `Ledger.open(path, genesis)`; one process at a time (LevelDB locks it)."""

    def __init__(self, db: Any, genesis: Genesis, path: Path) -> None:
        self._db = db
        self.genesis = genesis
        self.path = path
        self.chain_id = genesis.chain_id
        self._participants: dict[str, ParticipantRecord] = {}  # the registry, as read (admitted ids only)
        self._node_cache: dict[tuple[int, int], bytes] = {}
        self._nonce_windows: dict[str, NonceWindow] = {}
        self._group_cache: dict[int, list[list[bytes]]] = {}  # node hashes of recently read groups, by level
        # Valid entries by their bytes, oldest first (check_entry adds, execution reads). Only the
        # event loop's thread adds and evicts; an apply in a worker thread only reads.
        # (An OrderedDict: a dict's first item is found by skipping the slots its removals left.)
        self._decoded: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()
        self._edge_cache: tuple[merkle.Frontier, dict] | None = None
        self._frontier_source: tuple | None = None
        self._speculative: dict[tuple, Execution] = {}
        self._smt_cache: dict[bytes, bytes | None] = {}  # revoked-set nodes as stored (None: not stored)
        self._status_cache: tuple | None = None  # (height, status section without the path) for match proofs
        self._proof_blocks: dict[int, tuple[Encoded, Encoded, int]] = {}  # see _proof_block
        self._epoch_steps_cache: tuple[int, Encoded | None] | None = None  # see _head_epoch_steps
        self._store_view = _StoreView(self)
        self._height = keys.U64.unpack(db.get(keys.META_HEIGHT))[0]
        size, hashes = msgpack.unpackb(db.get(keys.META_FRONTIER), raw=False)
        self._frontier = merkle.Frontier(size, hashes)
        self._head: BlockHeader | None = self.header(self._height) if self._height else None
        self._head_hash = self._head.hash() if self._head else ZERO_HASH
        self._epochs = self._load_epochs(db, genesis, path)
        self._governance_cache: tuple[int, Governance] | None = None   # see _current_governance

    @staticmethod
    def _load_epochs(db: Any, genesis: Genesis, path: Path) -> LedgerEpochs:
        stored = db.get(keys.META_EPOCHS)
        if stored is None:
            return LedgerEpochs.genesis(genesis)
        try:
            epochs = LedgerEpochs.from_wire(codec.unpack(stored), genesis.governance)
        except (codec.EncodingError, EpochScheduleError, ReconfigurationError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"store {path}: the epoch schedule is unreadable: {exc}") from None
        if epochs.schedule.epochs[0].validators != genesis.validator_set:
            raise LedgerError(f"store {path}: the epoch schedule does not start from the genesis validator set")
        return epochs

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, genesis: Genesis, *, create: bool = True,
             write_buffer_bytes: int = leveldb_write_buffer_bytes) -> "Ledger":
        """Open (or create) the store at `path` for `genesis`; LedgerError says clearly what is wrong.

        `write_buffer_bytes` is LevelDB's memtable size: the store writes a sorted, compressed
        table each time that much has been written (and replays up to that much after a crash).
        """
        path = Path(path)
        if type(write_buffer_bytes) is not int or not (
                leveldb_write_buffer_bytes_min <= write_buffer_bytes <= leveldb_write_buffer_bytes_max):
            raise LedgerError(f"write_buffer_bytes must be an integer in {leveldb_write_buffer_bytes_min}.."
                              f"{leveldb_write_buffer_bytes_max}, got {write_buffer_bytes!r}")
        try:
            db = plyvel.DB(
                str(path), create_if_missing=create, bloom_filter_bits=leveldb_bloom_bits,
                write_buffer_size=write_buffer_bytes, lru_cache_size=leveldb_cache_bytes,
                block_size=leveldb_block_bytes,
            )
        except plyvel.IOError as exc:
            raise LedgerError(f"cannot open store {path}: {exc} (is another node using it?)") from None
        except plyvel.Error as exc:
            raise LedgerError(f"cannot open store {path}: {exc}") from None
        try:
            cls._check_or_initialize(db, genesis, path)
            return cls(db, genesis, path)
        except BaseException:
            db.close()
            raise

    @staticmethod
    def _check_or_initialize(db: Any, genesis: Genesis, path: Path) -> None:
        stored_format = db.get(keys.META_FORMAT)
        if stored_format is None:
            with db.iterator(include_value=False) as it:
                if next(it, None) is not None:
                    raise LedgerError(f"{path} holds a LevelDB database that is not a Bayledger store (no format key)")
            batch = db.write_batch(sync=True)
            batch.put(keys.META_FORMAT, _pack(FORMAT_VERSION))
            batch.put(keys.META_CHAIN_ID, genesis.chain_id.encode())
            batch.put(keys.META_GENESIS_HASH, genesis.hash())
            batch.put(keys.META_HEIGHT, keys.U64.pack(0))
            batch.put(keys.META_FRONTIER, _pack([0, []]))
            for p in genesis.participants:
                record = ParticipantRecord(p.id, p.jurisdiction, p.role, p.public_key, STATUS_ACTIVE)
                batch.put(keys.participant_key(p.id), record.encode())
            batch.write()
            return
        try:
            version = msgpack.unpackb(stored_format)
        except Exception:
            version = stored_format
        if version != FORMAT_VERSION:
            raise LedgerError(f"store {path} has format version {version!r}; this software reads version {FORMAT_VERSION}")
        chain_id = (db.get(keys.META_CHAIN_ID) or b"").decode(errors="replace")
        if chain_id != genesis.chain_id:
            raise LedgerError(f"store {path} belongs to chain {chain_id!r}, but the genesis is for {genesis.chain_id!r}")
        stored_hash = db.get(keys.META_GENESIS_HASH) or b""
        if stored_hash != genesis.hash():
            raise LedgerError(
                f"store {path} was created from a different genesis file for chain {chain_id!r} "
                f"(genesis hash {stored_hash.hex()[:16]}…, this one {genesis.hash().hex()[:16]}…)")

    def close(self) -> None:
        if not self._db.closed:
            # Compacting the tiny meta range makes LevelDB flush its memtable first, so the next
            # open need not replay a write-ahead log of up to leveldb_write_buffer_bytes.
            self._db.compact_range(start=keys.META_PREFIX, stop=keys.META_PREFIX + b"\xff")
            self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads --------------------------------------------------------------------------------------

    def height(self) -> int:
        return self._height

    def head(self) -> BlockHeader | None:
        return self._head

    @property
    def epochs(self) -> LedgerEpochs:
        """The epochs as of the applied head: every epoch scheduled so far (the latest may not have
        started), each validator's addresses, and the reconfigure leaves (storage/reconfiguration.py)."""
        return self._epochs

    def tree_size(self) -> int:
        return self._frontier.size

    def header(self, height: int) -> BlockHeader | None:
        data = self._db.get(keys.header_key(height)) if height > 0 else None
        return None if data is None else BlockHeader.from_wire(msgpack.unpackb(data, raw=False))

    def certificate(self, height: int) -> CommitCertificate | None:
        data = self._db.get(keys.certificate_key(height)) if height > 0 else None
        return None if data is None else CommitCertificate.from_wire(msgpack.unpackb(data, raw=False))

    def block_results(self, height: int) -> list[int | str] | None:
        """Per-entry results of block `height`: leaf index (accepted) or reason code (rejected)."""
        record = self._block_record(height)
        if record is None:
            return None
        return [item if isinstance(item, int) else item[0] for item in record]

    def block_outcomes(self, height: int) -> list[EntryOutcome] | None:
        results = self.block_results(height)
        return None if results is None else [_outcome(r) for r in results]

    def block_entries(self, height: int) -> list[bytes] | None:
        record = self._block_record(height)
        if record is None:
            return None
        return [self.entry(item) if isinstance(item, int) else item[1] for item in record]

    def committed_block(self, height: int):
        """The block at `height` as consensus.messages.CommittedBlock (for catch-up), or None."""
        header = self.header(height)
        if header is None:
            return None
        return CommittedBlock(header, tuple(self.block_entries(height)), self.certificate(height))

    def _block_record(self, height: int) -> list | None:
        data = self._db.get(keys.block_record_key(height)) if height > 0 else None
        return None if data is None else msgpack.unpackb(data, raw=False)

    def entry(self, leaf_index: int) -> bytes:
        data = self._db.get(keys.entry_key(leaf_index))
        if data is None:
            raise LedgerError(f"no entry at leaf index {leaf_index} (tree size {self._frontier.size})")
        return data

    def participant(self, participant_id: str) -> ParticipantRecord | None:
        found = self._participants.get(participant_id)
        if found is not None:
            return found
        data = self._db.get(keys.participant_key(participant_id))
        if data is None:
            return None  # misses are not cached: anyone may ask about any id
        record = self._participants[participant_id] = ParticipantRecord.decode(data)
        return record

    def participants(self) -> list[ParticipantRecord]:
        with self._db.iterator(prefix=keys.PARTICIPANT_PREFIX, include_key=False) as it:
            return [ParticipantRecord.decode(v) for v in it]

    def nonce_window(self, author: str) -> NonceWindow:
        found = self._nonce_windows.get(author)
        if found is None:
            data = self._db.get(keys.nonce_window_key(author))
            if data is None:
                return NonceWindow()  # not cached: only authors with applied entries are
            found = self._nonce_windows[author] = NonceWindow.decode(data)
        return found

    def nonce_used(self, author: str, nonce: int) -> bool:
        """Has (author, nonce) been applied, or is it too old to ever apply?"""
        return self.nonce_window(author).check(nonce) is not None

    def check_applied(self, data: bytes) -> str | None:
        """Why an entry can never apply on the applied state, from its author's nonce window
        ("replayed-nonce": its nonce is spent; "already-applied": spent by these very bytes, for a
        commit or revoke; "stale-nonce": below a full window), else None.

        Read-only: it looks at the applied (committed) state only, never at speculative
        executions, and writes nothing. Bytes that are not an entry give None (check_entry judges
        those). The answer for one entry only ever goes from None to a reason as blocks apply
        (NonceWindow forgets only its smallest nonce), never back, so a caller may drop an entry on
        a reason for good. Not to be memoized: it changes with every applied block.
        """
        entry = self._decoded.get(data)
        if entry is None:
            try:
                entry = decode_entry(data)
            except EntryError:
                return None
        return self._nonce_refusal(entry)

    def _nonce_refusal(self, entry: Entry) -> str | None:
        if entry.type == RECONFIGURE_TYPE:
            # No nonce: its epoch is its replay guard, and epochs only grow (so this stays monotonic).
            if entry.fields["changes"].epoch < self._epochs.latest_epoch:
                return "reconfigure-wrong-epoch"
            return None
        refused = self.nonce_window(entry.author).check(entry.nonce)
        if refused == "replayed-nonce" and self._holds_entry(entry):
            # These very bytes are on the ledger (a client retrying what committed): say so.
            return "already-applied"
        return refused

    def admission(self, data: bytes) -> tuple[str | None, str | None]:
        """(author, reason): who wrote the entry (None if it does not decode) and why it could not
        apply on the applied state now, else None. The reason is the one apply would give for the
        shape, chain, author rules (author_refusal: admitted, its registry key, active; governance
        signers in genesis and meeting the threshold) and nonce, or "already-applied" for these very
        bytes (see check_applied). Rules that depend on other entries (duplicate or unknown
        commitment, not-submitter, ...) are left to apply.

        Unlike check_applied, NOT monotonic: an author refused now may be admitted by a later block,
        so this serves a door a client can knock at again, never the consensus core's pool. Read-only
        (it fills the read caches), so it must not run while a block is written in another thread.
        """
        entry = self._decoded.get(data) if type(data) is bytes else None  # a list is not even hashable
        if entry is None:
            try:
                entry = decode_entry(data)
            except EntryError as exc:
                return None, exc.reason
        refused = author_refusal(self.genesis, entry, self.participant, self._current_governance())
        if refused is None:
            refused = self._nonce_refusal(entry)
        return entry.author, refused

    def check_admission(self, data: bytes) -> str | None:
        """The reason of `admission`: None if the entry passes the door against the applied state."""
        return self.admission(data)[1]

    def _holds_entry(self, entry) -> bool:
        """Whether the ledger holds exactly this entry, where an index can tell: a commit, or the
        revoke of a commitment (governance admit and suspend have no index by entry: False)."""
        commitment = entry.commitment
        if commitment is None or entry.type not in ("commit", "revoke"):
            return False
        record = self.commitment_record(commitment)
        if record is None:
            return False
        leaf = record.leaf_index if entry.type == "commit" else record.revoke_leaf
        return leaf is not None and self.entry(leaf) == entry.data

    def commitment_record(self, commitment: bytes) -> CommitmentRecord | None:
        if not isinstance(commitment, bytes) or len(commitment) != 32:
            raise ValueError("a commitment is 32 bytes")
        data = self._db.get(keys.commitment_key(commitment))
        return None if data is None else CommitmentRecord.decode(data)

    def commitment_status(self, commitment: bytes, now_ms: int) -> dict | None:
        """Status of a commitment at `now_ms`: active, revoked or expired, with where it is; None if unknown."""
        record = self.commitment_record(commitment)
        if record is None:
            return None
        entry = decode_entry(self.entry(record.leaf_index))
        expires = entry.fields["expires_ms"]
        height = record.height
        if record.revoke_leaf is not None:
            status = "revoked"
        elif expires is not None and expires <= now_ms:
            status = "expired"
        else:
            status = STATUS_ACTIVE
        return {
            "status": status, "leaf_index": record.leaf_index, "height": height, "author": entry.author,
            "kind": entry.fields["kind"], "jurisdiction": entry.fields["jurisdiction"], "expires_ms": expires,
            "revoke_leaf_index": record.revoke_leaf, "revoke_height": record.revoke_height,
        }

    # -- the revoked set (sparse Merkle tree, storage/smt.py) ----------------------------------------

    def _smt_node(self, node_id: bytes) -> bytes | None:
        """A stored node of the applied revoked set (smt.py), None if not stored (absent ones are cached too)."""
        cache = self._smt_cache
        try:
            return cache[node_id]
        except KeyError:
            pass
        found = self._db.get(keys.smt_node_key(node_id))
        if len(cache) >= smt_cache_entries_max:
            cache.clear()
        cache[node_id] = found
        return found

    def revoked_root(self) -> bytes:
        """Root of the revoked set after the applied head (smt.EMPTY_ROOT while nothing is revoked)."""
        return smt.root(self._smt_node)

    def revoked_proof(self, commitment: bytes) -> dict:
        """The SMT proof {bitmap, siblings} of commitment's membership or absence at the applied head."""
        return smt.prove(self._smt_node, commitment)

    # -- Merkle log ---------------------------------------------------------------------------------

    def _node(self, level: int, index: int) -> bytes:
        """Hash of complete subtree (level, index) of the applied log: one read, or <= 8 entry reads."""
        if level >= node_cache_level_min:
            cached = self._node_cache.get((level, index))
            if cached is not None:
                return cached
        if level < node_level_min_stored:
            return self._low_node(level, index)
        data = self._db.get(keys.merkle_node_key(level, index))
        if data is None:
            raise LedgerError(f"Merkle node ({level}, {index}) is missing from the store")
        if level >= node_cache_level_min:
            if len(self._node_cache) >= node_cache_entries_max:
                self._node_cache.clear()
            self._node_cache[(level, index)] = data
        return data

    def _low_node(self, level: int, index: int) -> bytes:
        """A node below the stored levels, rehashed from the leaves of its aligned group."""
        group_leaves = 1 << node_level_min_stored
        first = (index << level) // group_leaves * group_leaves
        levels = self._group_cache.get(first)
        if levels is None:
            # Point reads, not an iterator: a plyvel iterator costs more than 8 cached gets.
            get = self._db.get
            hashes = []
            for leaf in range(first, min(first + group_leaves, self._frontier.size)):
                data = get(keys.entry_key(leaf))
                if data is None:
                    raise LedgerError(f"entry {leaf} is missing from the store")
                hashes.append(merkle.leaf_hash(data))
            # Every complete node of the group, level by level (a partial group has fewer).
            levels = [hashes]
            while len(levels) < node_level_min_stored:
                below = levels[-1]
                levels.append([merkle.node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
            if len(hashes) == group_leaves:  # a partial group at the log's end still grows
                if len(self._group_cache) >= group_cache_entries_max:
                    self._group_cache.clear()
                self._group_cache[first] = levels
        return levels[level][index - (first >> level)]

    def _node_source(self) -> merkle.NodeSource:
        """Reads for proofs at any size up to the head: the head's frontier from memory, then the store."""
        if self._frontier_source is not None and self._frontier_source[0] is self._frontier:
            return self._frontier_source[1]
        source = self._frontier.node_source(self._node)
        self._frontier_source = (self._frontier, source)
        return source

    def tree_root(self, size: int | None = None) -> bytes:
        size = self._frontier.size if size is None else size
        self._check_size(size)
        return self._frontier.root() if size == self._frontier.size else merkle.root(self._node_source(), size)

    def inclusion_proof(self, leaf_index: int, tree_size: int | None = None) -> list[bytes]:
        tree_size = self._frontier.size if tree_size is None else tree_size
        self._check_size(tree_size)
        if not isinstance(leaf_index, int) or not 0 <= leaf_index < tree_size:
            raise LedgerError(f"leaf index {leaf_index!r} is not below tree size {tree_size}")
        source = self._node_source()
        if tree_size != self._frontier.size:
            return merkle.inclusion_path(source, leaf_index, tree_size)
        # At the head, the right-edge sibling of each level is the same for every leaf: remember it.
        if self._edge_cache is None or self._edge_cache[0] is not self._frontier:
            self._edge_cache = (self._frontier, {})
        edges = self._edge_cache[1]

        def edge(start: int, end: int) -> bytes:
            found = edges.get(start)
            if found is None:
                found = edges[start] = merkle.subtree_hash(source, start, end)
            return found

        return merkle.inclusion_path(source, leaf_index, tree_size, edge)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        size2 = self._frontier.size if size2 is None else size2
        self._check_size(size2)
        if not 1 <= size1 <= size2:
            raise LedgerError(f"consistency proof needs 1 <= size1 <= size2, got {size1} and {size2}")
        return merkle.consistency_proof(self._node_source(), size1, size2)

    def _check_size(self, size: int) -> None:
        if not isinstance(size, int) or not 0 <= size <= self._frontier.size:
            raise LedgerError(f"tree size {size!r} is not between 0 and the log's size {self._frontier.size}")

    # -- proofs -------------------------------------------------------------------------------------

    def match_proof(self, commitment: bytes) -> bytes | None:
        """The MatchProof (canonical msgpack, see storage/proofs.py) for a commitment, or None if unknown."""
        record = self.commitment_record(commitment)
        if record is None:
            return None
        revocation = None
        if record.revoke_leaf is not None:
            revocation = self._proven_leaf(record.revoke_leaf, record.revoke_height)
        main = self._proven_leaf(record.leaf_index, record.height)
        return build_match_proof(main, revocation, self._status(commitment), self._head_epoch_steps())

    def epoch_steps(self, height: int) -> list[dict]:
        """The epoch steps (storage/proofs.py) from genesis to the epoch of applied block `height`:
        for each epoch e from 1, its reconfigure entry proven in the block that committed it. What a
        verifier needs, with genesis alone, to check that block's certificate (and any earlier one)."""
        if not isinstance(height, int) or not 1 <= height <= self._height:
            raise LedgerError(f"no applied block at height {height!r} (applied height {self._height})")
        epochs = self.epochs
        last = epochs.schedule.config_at(height).epoch
        return [self._proven_leaf(epochs.entry_leaves[e - 1], epochs.schedule.epochs[e].scheduled_at)
                for e in range(1, last + 1)]

    def _head_epoch_steps(self) -> Encoded | None:
        """epoch_steps of the head, encoded: the same for every proof until the head's epoch changes
        (a step is its own block's, so a later head does not change it)."""
        epoch = self._head.epoch if self._head is not None else 0
        if epoch == 0:
            return None
        if self._epoch_steps_cache is None or self._epoch_steps_cache[0] != epoch:
            steps = self.epoch_steps(self._height)
            self._epoch_steps_cache = (epoch, encode_epoch_steps(steps) if steps else None)
        return self._epoch_steps_cache[1]

    def _status(self, commitment: bytes) -> dict:
        """The head's certified header, the two hashes under its results_hash, and commitment's SMT path."""
        if self._status_cache is None or self._status_cache[0] != self._height:
            height = self._height
            header, certificate = self._stored_block_parts(height)
            self._status_cache = (height, {
                "header": Encoded(header), "certificate": Encoded(certificate),
                "outcomes_hash": outcomes_hash(self.block_results(height)), "revoked_root": self.revoked_root(),
            })
        return {**self._status_cache[1], "revoked_path": self.revoked_proof(commitment)}

    def _stored_block_parts(self, height: int) -> tuple[bytes, bytes]:
        """Header and certificate bytes as stored: already canonical msgpack, so proofs copy them."""
        header = self._db.get(keys.header_key(height)) if height > 0 else None
        certificate = self._db.get(keys.certificate_key(height)) if height > 0 else None
        assert header is not None and certificate is not None, f"block {height} is named but not stored"
        return header, certificate

    def _proof_block(self, height: int) -> tuple[Encoded, Encoded, int]:
        """Header and certificate bytes of an applied block, and its tree size: immutable, so kept
        for the next proof of a leaf in the same block (queries favour recent blocks)."""
        found = self._proof_blocks.get(height)
        if found is None:
            header, certificate = self._stored_block_parts(height)
            found = (Encoded(header), Encoded(certificate), msgpack.unpackb(header, raw=False)["tree_size"])
            if len(self._proof_blocks) >= proof_block_cache_entries_max:
                self._proof_blocks.clear()
            self._proof_blocks[height] = found
        return found

    def _proven_leaf(self, leaf_index: int, height: int) -> dict:
        header, certificate, tree_size = self._proof_block(height)
        return {
            "entry": self.entry(leaf_index),
            "leaf_index": leaf_index,
            "tree_size": tree_size,
            "inclusion_path": self.inclusion_proof(leaf_index, tree_size),
            "header": header,
            "certificate": certificate,
        }

    # -- execution and apply ------------------------------------------------------------------------

    def check_entry(self, data: bytes, *, check_signatures: bool = True) -> str | None:
        """The stateless check under this ledger's genesis (entries.check_entry): None if valid,
        else the reason code. A valid entry's decoding is kept for the execution of its block
        (execution never looks at signatures, so one checked without them serves as well).

        A governance entry passes if the regulator keys of the current epoch or of the latest scheduled
        one accept it: a block near an epoch's start may hold either, and a backup whose store lags must
        not refuse it. The exact rule (the keys of the entry's height) is execution's."""
        try:
            entry = self._validate_with_either_governance(data, check_signatures)
        except EntryError as exc:
            return exc.reason
        decoded = self._decoded
        if data not in decoded:
            if len(decoded) >= decoded_entries_max:
                decoded.popitem(last=False)
            decoded[data] = entry
        return None

    def _current_governance(self) -> Governance:
        """The regulator keys of the next height to apply, remembered per applied height (every entry
        check asks; they change only with the epochs)."""
        cached = self._governance_cache
        if cached is None or cached[0] != self._height:
            cached = self._governance_cache = (self._height, self._epochs.governance_at(self._height + 1))
        return cached[1]

    def _validate_with_either_governance(self, data: bytes, check_signatures: bool) -> Entry:
        current = self._current_governance()
        try:
            return validate_entry(data, self.genesis, check_signatures=check_signatures, governance=current)
        except EntryError as exc:
            latest = governance_of(self._epochs.schedule.latest, self.genesis.governance)
            if exc.reason not in _GOVERNANCE_REASONS or latest == current or not _is_governance_entry(data):
                raise   # a participant's bad signature is not checked twice
            return validate_entry(data, self.genesis, check_signatures=check_signatures, governance=latest)

    def execute(self, parent: BlockHeader | None, height: int, time_ms: int,
                entries: Sequence[bytes]) -> ExecutionResult | None:
        """What `entries` on top of `parent` give (consensus Application.execute); None if parent is unknown.

        Never writes the store: the effects are kept as a speculative Execution,
        found again when a child names this block as parent or when it is applied.
        """
        execution = self._execution_for(parent, height, time_ms, entries)
        return None if execution is None else execution.result()

    def _execution_for(self, parent: BlockHeader | None, height: int, time_ms: int,
                       entries: Sequence[bytes], body_hash: bytes | None = None) -> Execution | None:
        if not isinstance(height, int) or height < 1 or len(entries) > block_entries_max:
            return None
        entries = tuple(entries)
        if not all(type(e) is bytes for e in entries):
            return None
        parent_hash = parent.hash() if parent is not None else ZERO_HASH
        key = (parent_hash, height, time_ms, body_hash or _entries_hash(entries))
        found = self._speculative.get(key)
        if found is not None and self._chain_is_live(found):
            return found
        base = self._base_for(parent, parent_hash, height)
        if base is None:
            return None
        frontier = self._frontier if isinstance(base, _StoreView) else base.frontier
        execution = Execution(base, parent_hash, frontier, height, time_ms, entries)
        execution.run(self.genesis, self._decoded)
        if len(self._speculative) >= speculative_blocks_max:
            lowest = min(self._speculative, key=lambda k: k[1])
            del self._speculative[lowest]
        self._speculative[key] = execution
        return execution

    def _base_for(self, parent: BlockHeader | None, parent_hash: bytes, height: int) -> "Execution | _StoreView | None":
        if parent is None:
            return self._store_view if height == 1 and self._height == 0 else None
        if parent.height + 1 != height or parent.chain_id != self.chain_id:
            return None
        if parent.height == self._height:
            return self._store_view if parent_hash == self._head_hash else None
        if parent.height < self._height:
            return None  # below the applied head: consensus has no business executing here
        grand_hash = parent.prev_hash
        found = self._speculative.get((grand_hash, parent.height, parent.time_ms, parent.entries_hash))
        if found is None or not self._chain_is_live(found):
            return None
        result = found.result()
        if (result.tree_size, result.tree_root, result.results_hash) != (
                parent.tree_size, parent.tree_root, parent.results_hash):
            return None
        found.header_hash = parent_hash
        return found

    def _chain_is_live(self, execution: Execution) -> bool:
        """Does this speculative execution still sit on the applied chain?"""
        node = execution
        while True:
            if node.height <= self._height:
                return False
            if node.height == self._height + 1:
                return node.parent_hash == self._head_hash
            parent = node.parent
            if not isinstance(parent, Execution) or parent.header_hash != node.parent_hash:
                return False
            node = parent

    def apply_block(self, block: Any,
                    consensus_changes: Sequence[tuple[bytes, bytes | None]] = ()) -> list[EntryOutcome]:
        """Apply a committed block (header, entries, certificate) in one synced batch; idempotent.

        `consensus_changes` are written in the same batch, as write_consensus_state would write
        them: the replica's records that become durable with the block, for one fsync instead of
        two. Raises LedgerError, writing nothing (the changes neither), if the block does not follow
        the head, its certificate does not hold, or executing it does not give the header's tree
        size, root and results hash.
        """
        header: BlockHeader = block.header
        entries = tuple(block.entries)
        certificate: CommitCertificate = block.certificate
        height = header.height
        if height <= self._height:
            stored = self.header(height)
            if stored is not None and stored.hash() == header.hash():
                if consensus_changes:
                    self.write_consensus_state(consensus_changes)
                return self.block_outcomes(height)
            raise LedgerError(f"block {height} conflicts with the block already applied at that height")
        body_hash = self._check_next_block(header, entries, certificate)
        execution = self._execution_for(self._head, height, header.time_ms, entries, body_hash)
        assert execution is not None, "the applied head is always a valid parent"
        result = execution.result()
        if (result.tree_size, result.tree_root, result.results_hash) != (
                header.tree_size, header.tree_root, header.results_hash):
            raise LedgerError(
                f"block {height}: executing it gives tree size {result.tree_size}, root {result.tree_root.hex()[:16]}…, "
                f"results {result.results_hash.hex()[:16]}…; the certified header says {header.tree_size}, "
                f"{header.tree_root.hex()[:16]}…, {header.results_hash.hex()[:16]}… (this replica diverged)")
        self._write(header, certificate, execution, consensus_changes)
        return [_outcome(r) for r in execution.results]

    def _check_next_block(self, header: BlockHeader, entries: tuple, certificate: CommitCertificate) -> bytes:
        """LedgerError unless the block extends the applied head and its certificate holds; its entries_hash."""
        height = header.height
        if height != self._height + 1:
            raise LedgerError(f"block {height} does not follow the applied height {self._height}")
        if header.chain_id != self.chain_id:
            raise LedgerError(f"block {height} is for chain {header.chain_id!r}, not {self.chain_id!r}")
        if header.prev_hash != self._head_hash:
            raise LedgerError(f"block {height} does not extend the applied head (prev_hash differs)")
        config = self._epochs.schedule.config_at(height)   # final: scheduled by a block at most height - margin - 1
        if header.epoch != config.epoch or header.validator_set_hash != config.validators.hash():
            raise LedgerError(f"block {height} names epoch {header.epoch} and validator set "
                              f"{header.validator_set_hash.hex()[:16]}…; height {height} is in epoch {config.epoch}, "
                              f"set {config.validators.hash().hex()[:16]}…")
        if self._head is not None and header.time_ms < self._head.time_ms:
            raise LedgerError(f"block {height} has time {header.time_ms} before its parent's {self._head.time_ms}")
        if len(entries) > block_entries_max:
            raise LedgerError(f"block {height} has {len(entries)} entries, more than {block_entries_max}")
        if not all(type(e) is bytes for e in entries):
            raise LedgerError(f"block {height}: entries must be bytes")
        body_hash = _entries_hash(entries)
        if header.entry_count != len(entries) or header.entries_hash != body_hash:
            raise LedgerError(f"block {height}: entries do not match the header's entry_count/entries_hash")
        try:
            certificate.verify(header, config.validators)
        except CertificateError as exc:
            raise LedgerError(f"block {height}: commit certificate does not hold: {exc}") from None
        return body_hash

    def _write(self, header: BlockHeader, certificate: CommitCertificate, execution: Execution,
               consensus_changes: Sequence[tuple[bytes, bytes | None]] = ()) -> None:
        """One synced batch (a crash leaves all of it or none): the execution's effects, the block's
        record, header and certificate, the new height and frontier, and the replica's records."""
        height = header.height
        batch = self._db.write_batch(sync=True)
        _add_consensus_changes(batch, consensus_changes)
        put = batch.put
        leaf = execution.first_leaf
        for data in execution.accepted:
            put(keys.entry_key(leaf), data)
            leaf += 1
        for level, index, h in execution.new_nodes:
            if level >= node_level_min_stored:
                put(keys.merkle_node_key(level, index), h)
        for commitment, record in execution.commitments.items():
            put(keys.commitment_key(commitment), record.encode())
        for record in execution.participants.values():
            put(keys.participant_key(record.id), record.encode())
        for author, window in execution.nonces.items():
            put(keys.nonce_window_key(author), window.encode())
        for node_id, node in execution.smt_nodes.items():
            put(keys.smt_node_key(node_id), node)
        block_record = [
            result if isinstance(result, int) else [result, data]
            for result, data in zip(execution.results, execution.entries)
        ]
        put(keys.block_record_key(height), _pack(block_record))
        put(keys.header_key(height), header.encode())
        put(keys.certificate_key(height), codec.pack(certificate.to_wire()))
        put(keys.META_HEIGHT, keys.U64.pack(height))
        put(keys.META_FRONTIER, _pack([execution.frontier.size, list(execution.frontier.hashes)]))
        if execution.new_epochs is not None:
            put(keys.META_EPOCHS, execution.new_epochs.pack())
        batch.write()
        self._advance(header, execution)

    def _advance(self, header: BlockHeader, execution: Execution) -> None:
        """Move the in-memory view (head, frontier, caches, speculative executions) to a block whose
        batch is durable."""
        height = header.height
        self._height = height
        self._head = header
        self._head_hash = header.hash()
        self._frontier = execution.frontier
        for record in execution.participants.values():
            self._participants[record.id] = record
        self._nonce_windows.update(execution.nonces)
        if execution.new_epochs is not None:
            self._epochs = execution.new_epochs
        if execution.smt_nodes:  # the cache must never hold a node's old value (absent ones included)
            if len(self._smt_cache) + len(execution.smt_nodes) > smt_cache_entries_max:
                self._smt_cache.clear()
            if len(execution.smt_nodes) <= smt_cache_entries_max:
                self._smt_cache.update(execution.smt_nodes)
        for key in [k for k, e in self._speculative.items() if e.height <= height]:
            del self._speculative[key]
        # Children executed on this block while it was in flight now read the store, which holds
        # the same state: otherwise each execution keeps its parent alive, and every lookup that
        # misses (the duplicate check of each new commitment) walks a chain as long as the uptime.
        for child in self._speculative.values():
            if child.parent is execution:
                child.parent = self._store_view

    # -- the replica's persisted state --------------------------------------------------------------

    def write_consensus_state(self, changes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write the replica's (key, value) changes in one synced batch; None deletes the key."""
        batch = self._db.write_batch(sync=True)
        _add_consensus_changes(batch, changes)
        batch.write()

    def load_consensus_state(self) -> dict[bytes, bytes]:
        with self._db.iterator(prefix=keys.CONSENSUS_PREFIX) as it:
            return {k[len(keys.CONSENSUS_PREFIX):]: v for k, v in it}


def _add_consensus_changes(batch, changes: Iterable[tuple[bytes, bytes | None]]) -> None:
    for key, value in changes:
        if value is None:
            batch.delete(keys.consensus_key(key))
        else:
            batch.put(keys.consensus_key(key), value)
