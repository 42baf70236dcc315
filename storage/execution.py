"""Execution: the deterministic rules that turn a block's entries into effects, on top of the
applied store or of an in-flight parent block. Nothing here touches the database: the effects
stay in an Execution until Ledger.apply_block writes them in one batch.

Each entry passes the same checks in this order: it decodes, its author may write
(author_refusal), its nonce is fresh (NonceWindow), then its type's rule (RULES). The first
refusal is the entry's reason code; an accepted entry is appended to the Merkle log.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import msgpack

from consensus import codec
from consensus.application import ExecutionResult
from consensus.epochs import ReconfigurationError

from . import merkle, smt
from .entries import ENTRY_TYPES, Entry, EntryError, decode_entry
from .genesis import GOVERNANCE_AUTHOR, Genesis, Governance
from .reconfiguration import RECONFIGURE_TYPE, LedgerEpochs
from .records import STATUS_ACTIVE, STATUS_SUSPENDED, CommitmentRecord, NonceWindow, ParticipantRecord


def outcomes_hash(results: Sequence[int | str]) -> bytes:
    """SHA-256 of the canonical msgpack array of per-entry results: leaf index (int) or reason (str).

    msgpack writes non-negative ints and str in their canonical (shortest) form already.
    """
    return codec.sha256(msgpack.packb(list(results), use_bin_type=True))


def results_hash(results: Sequence[int | str], revoked_root: bytes) -> bytes:
    """A header's results_hash: it commits to the block's outcomes and to the revoked set after it."""
    return smt.results_hash(outcomes_hash(results), revoked_root)


def governance_refusal(governance: Governance, entry: Entry) -> str | None:
    """A governance entry's signers against these regulator keys: every signer known, every signature
    verifying under the key its id has now, and each jurisdiction's threshold met. The signatures are
    checked here, not only before consensus: regulator keys change with the epochs, and an id may name
    another key by the time the entry commits. (Governance entries are few; the cost is theirs.)"""
    signers = set()
    for by, sig in entry.signatures:
        key = governance.by_id.get(by)
        if key is None:
            return "unknown-governance-key"
        if not codec.verify(key.public_key, sig, codec.DOMAIN_ENTRY, entry.chain_id, entry.body):
            return "bad-signature"
        signers.add(by)
    if not governance.meets_threshold(signers):
        return "governance-threshold"
    return None


def author_refusal(genesis: Genesis, entry: Entry, participant, governance: Governance | None = None) -> str | None:
    """The author rules of apply, in apply's order: None if `entry`'s author may write, else the
    reason code. `participant(id)` reads the registry: the block's state in apply, the applied state
    in Ledger.check_admission (one function, so the door and apply never disagree on a rule).
    `governance`: the regulator keys of the entry's height (default: genesis's)."""
    if entry.chain_id != genesis.chain_id:
        return "wrong-chain"
    author = entry.author
    if author == GOVERNANCE_AUTHOR:
        return governance_refusal(genesis.governance if governance is None else governance, entry)
    record = participant(author)
    if record is None:
        return "unknown-author"
    if record.public_key != entry.author_key:
        return "key-mismatch"
    if record.status != STATUS_ACTIVE:
        return "suspended"
    return None


class StateReads(Protocol):
    """The reads an execution makes of the state below it (the applied store, or a parent Execution)."""

    def commitment(self, commitment: bytes) -> CommitmentRecord | None: ...

    def participant(self, participant_id: str) -> ParticipantRecord | None: ...

    def nonce_window(self, author: str) -> NonceWindow: ...

    def entry(self, leaf_index: int) -> bytes: ...

    def smt_node(self, node_id: bytes) -> bytes | None: ...

    def epochs(self) -> LedgerEpochs: ...


class Execution:
    """The effects of one block executed on top of a parent (the store, or another Execution).

    Holds everything apply writes; nothing touches the database until
    `Ledger.apply_block` turns it into one WriteBatch.
    """

    def __init__(self, parent: "Execution | StateReads", parent_hash: bytes, frontier: merkle.Frontier,
                 height: int, time_ms: int, entries: Sequence[bytes]) -> None:
        self.parent = parent
        self.parent_hash = parent_hash
        self.height = height
        self.time_ms = time_ms
        self.entries = tuple(entries)
        self.commitments: dict[bytes, CommitmentRecord] = {}
        self.participants: dict[str, ParticipantRecord] = {}
        self.nonces: dict[str, NonceWindow] = {}
        self.accepted: list[bytes] = []
        self.results: list[int | str] = []
        self.first_leaf = frontier.size
        self.frontier = frontier
        self.new_nodes: list[tuple[int, int, bytes]] = []
        self.header_hash: bytes | None = None  # learnt when a child names this block as its parent
        self.smt_nodes: dict[bytes, bytes] = {}  # revoked-set nodes this block wrote (smt.update values)
        self.revoked_root: bytes | None = None  # after run()
        self.kinds: frozenset[str] = frozenset()  # genesis entry kinds, set by run()
        self.new_epochs: LedgerEpochs | None = None  # set when this block's reconfigure applies
        self.reconfigure_judged = False  # a block judges one reconfigure (storage/reconfiguration.py)

    # Reads fall through to the parent.
    def commitment(self, commitment: bytes) -> CommitmentRecord | None:
        found = self.commitments.get(commitment)
        return found if found is not None else self.parent.commitment(commitment)

    def participant(self, participant_id: str) -> ParticipantRecord | None:
        found = self.participants.get(participant_id)
        return found if found is not None else self.parent.participant(participant_id)

    def nonce_window(self, author: str) -> NonceWindow:
        found = self.nonces.get(author)
        return found if found is not None else self.parent.nonce_window(author)

    def entry(self, leaf_index: int) -> bytes:
        if leaf_index >= self.first_leaf:
            return self.accepted[leaf_index - self.first_leaf]
        return self.parent.entry(leaf_index)

    def smt_node(self, node_id: bytes) -> bytes | None:
        nodes = self.smt_nodes
        if node_id in nodes:
            return nodes[node_id]
        return self.parent.smt_node(node_id)

    def epochs(self) -> LedgerEpochs:
        return self.new_epochs if self.new_epochs is not None else self.parent.epochs()

    def result(self) -> ExecutionResult:
        assert self.revoked_root is not None, "result() before run()"
        return ExecutionResult(tree_size=self.frontier.size, tree_root=self.frontier.root(),
                               results_hash=results_hash(self.results, self.revoked_root))

    def run(self, genesis: Genesis, decoded: Mapping[bytes, Entry]) -> None:
        """Execute the entries; `decoded` holds decodings of some entries (by their bytes) to use."""
        self.kinds = frozenset(genesis.entry_kinds)
        leaves: list[bytes] = []
        next_leaf = self.first_leaf
        for data in self.entries:
            reason = self._apply_one(genesis, data, next_leaf, decoded.get(data))
            if reason is None:
                self.results.append(next_leaf)
                self.accepted.append(data)
                leaves.append(merkle.leaf_hash(data))
                next_leaf += 1
            else:
                self.results.append(reason)
        self.frontier = self.frontier.extend(leaves, self.new_nodes)
        self.revoked_root = smt.root(self.smt_node)

    def _apply_one(self, genesis: Genesis, data: bytes, leaf: int, entry: Entry | None) -> str | None:
        """Apply one entry's rules to this block's state; return None if accepted, else the reason code.

        Signatures were verified before consensus (check_entry); here only what
        depends on state, plus the shape again, since a block is input too (`entry`, if
        given, is what decode_entry(data) gives, remembered from the check).
        """
        if entry is None:
            try:
                entry = decode_entry(data)
            except EntryError as exc:
                return exc.reason
        # The regulator keys of this height, looked up for governance entries only (a commit needs none).
        governance = self.epochs().governance_at(self.height) if entry.is_governance else None
        refused = author_refusal(genesis, entry, self.participant, governance)
        if refused is not None:
            return refused
        if entry.type == RECONFIGURE_TYPE:
            return _apply_reconfigure(self, entry, leaf)   # no nonce: its epoch is its replay guard
        author = entry.author
        # After the author checks, so only registered authors ever get a replay window.
        window = self.nonce_window(author)
        refused = window.check(entry.nonce)
        if refused is None:
            refused = RULES[entry.type](self, entry, leaf)
        if refused is not None:
            return refused
        if author not in self.nonces:
            window = self.nonces[author] = window.copy()  # never mutate the parent's
        window.add(entry.nonce)
        return None


# -- the rule of each entry type: None if the entry applies (its effects then recorded in
# `execution`), else the reason code; a refused entry leaves `execution` as it was. ------------

def _apply_commit(execution: Execution, entry: Entry, leaf: int) -> str | None:
    fields = entry.fields
    if fields["kind"] not in execution.kinds:
        return "unknown-kind"
    expires = fields["expires_ms"]
    if expires is not None and expires <= execution.time_ms:
        return "already-expired"
    commitment = fields["commitment"]
    if execution.commitment(commitment) is not None:
        return "duplicate-commitment"
    execution.commitments[commitment] = CommitmentRecord(leaf, execution.height, author=entry.author)
    return None


def _apply_revoke(execution: Execution, entry: Entry, leaf: int) -> str | None:
    commitment = entry.fields["commitment"]
    record = execution.commitment(commitment)
    if record is None:
        return "unknown-commitment"
    if record.revoke_leaf is not None:
        return "already-revoked"
    submitter = record.author
    if submitter is None:
        submitter = decode_entry(execution.entry(record.leaf_index)).author
    if entry.author != GOVERNANCE_AUTHOR and entry.author != submitter:
        return "not-submitter"
    execution.commitments[commitment] = CommitmentRecord(
        record.leaf_index, record.height, leaf, execution.height, submitter)
    # One path of the revoked set (about log2(n) + 2 stored nodes), in this block's overlay:
    # backups executing speculatively compute the same root as the store will after apply.
    execution.smt_nodes.update(smt.update(execution.smt_node, commitment))
    return None


def _apply_admit(execution: Execution, entry: Entry, leaf: int) -> str | None:
    p = entry.fields["participant"]
    existing = execution.participant(p.id)
    if existing is not None and existing.status == STATUS_ACTIVE:
        return "participant-exists"
    # Re-admitting a suspended participant reactivates it, possibly with a new key.
    execution.participants[p.id] = ParticipantRecord(p.id, p.jurisdiction, p.role, p.public_key, STATUS_ACTIVE)
    return None


def _apply_suspend(execution: Execution, entry: Entry, leaf: int) -> str | None:
    existing = execution.participant(entry.fields["participant_id"])
    if existing is None:
        return "unknown-participant"
    if existing.status == STATUS_SUSPENDED:
        return "already-suspended"
    execution.participants[existing.id] = ParticipantRecord(
        existing.id, existing.jurisdiction, existing.role, existing.public_key, STATUS_SUSPENDED)
    return None


def _apply_reconfigure(execution: Execution, entry: Entry, leaf: int) -> str | None:
    """storage/reconfiguration.py's rule: the block's first reconfigure naming the latest epoch is judged."""
    epochs = execution.epochs()
    reconfiguration = entry.fields["changes"]
    if reconfiguration.epoch != epochs.latest_epoch:
        return "reconfigure-wrong-epoch"
    if epochs.is_pending(execution.height) or execution.reconfigure_judged:
        return "reconfigure-pending"
    execution.reconfigure_judged = True
    try:
        execution.new_epochs = epochs.judge(reconfiguration, execution.height, leaf)
    except ReconfigurationError as exc:
        return exc.reason
    return None


RULES = {
    "commit": _apply_commit,
    "revoke": _apply_revoke,
    "admit": _apply_admit,
    "suspend": _apply_suspend,
    "reconfigure": _apply_reconfigure,
}
assert RULES.keys() == set(ENTRY_TYPES), "every entry type decode_entry accepts has a rule"
