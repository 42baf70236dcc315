"""The rules a proposal (PRE-PREPARE, or a block a NEW-VIEW re-proposes) must meet before this replica
prepares it, and the header the primary builds. Pure functions of their arguments (the Application
aside), so each rule can be tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .application import Application, ExecutionResult
from .block import ZERO_HASH, BlockHeader, entries_hash
from .messages import header_hash as hash_of_header
from .request_pool import PendingRequest
from .slot import WAIT, Wait

__all__ = [
    "ProposalRules", "build_header", "check_header", "check_requests", "check_signatures_unvouched", "execution_matches",
    "mark_checked",
]


@dataclass(frozen=True)
class ProposalRules:
    chain_id: str
    validator_set_hash: bytes
    batch_requests_max: int
    clock_skew_ms_max: int   # how far a proposal's time may run ahead of ours
    epoch: int = 0           # the epoch whose set certifies these heights; its headers name it


def check_header(rules: ProposalRules, height: int, header: BlockHeader, entry_count: int,
                 parent: BlockHeader | None, now_ms: int | None) -> str | Wait | None:
    """Why the header cannot be the block at `height` on `parent`, WAIT if no time is known yet, or None."""
    if header.height != height or header.chain_id != rules.chain_id:
        return "wrong-height"
    if header.validator_set_hash != rules.validator_set_hash:
        return "wrong-validator-set"
    if header.epoch != rules.epoch:
        return "wrong-epoch"
    parent_hash = hash_of_header(parent) if parent is not None else ZERO_HASH
    if header.prev_hash != parent_hash:
        return "does-not-chain"
    if entry_count > rules.batch_requests_max:
        return "batch-too-large"
    if parent is not None and header.time_ms < parent.time_ms:
        return "time-before-parent"
    if now_ms is None:
        return WAIT
    if header.time_ms > now_ms + rules.clock_skew_ms_max:
        return "time-in-future"
    return None


def check_requests(
    entries: tuple[bytes, ...], request_ids: tuple[bytes, ...], excluded: set[bytes] | Mapping[bytes, None],
    earlier: set[bytes], pool: Mapping[bytes, PendingRequest], checks_signatures: bool, app: Application,
) -> tuple[str | None, bool]:
    """(why a request in the block is bad or None, whether all their signatures are known good).

    Bad: a duplicate (within the block, in an earlier in-flight block, or committed: `excluded`), or
    invalid. Requests known valid in our pool are not checked again; a replica that does not check
    signatures in this view (`checks_signatures` False) leaves them to its vouchers and checks only the
    shape of the requests it never saw. A pooled request checked here is marked checked.
    """
    seen: set[bytes] = set()
    signatures_known = True
    for request, request_id in zip(entries, request_ids):
        if request_id in seen or request_id in earlier or request_id in excluded:
            return "duplicate-request", signatures_known
        seen.add(request_id)
        pending = pool.get(request_id)
        if pending is not None and pending.checked:
            continue
        if checks_signatures:
            if app.check_request(request) is not None:
                return "invalid-request", signatures_known
            if pending is not None:
                pending.checked = True
        else:
            # Signatures wait for vouchers (Replica._vouched_or_checked); what else can be wrong is wrong here too.
            signatures_known = False
            if pending is None and app.check_request_shape(request) is not None:
                return "invalid-request", signatures_known
    return None, signatures_known


def check_signatures_unvouched(entries: tuple[bytes, ...], request_ids: tuple[bytes, ...],
                               pool: Mapping[bytes, PendingRequest], app: Application) -> str | None:
    """Too few vouchers: check every signature not known good here; "invalid-request" if one is bad."""
    for request, request_id in zip(entries, request_ids):
        pending = pool.get(request_id)
        if pending is not None and pending.checked:
            continue
        if app.check_request(request) is not None:
            return "invalid-request"
    return None


def mark_checked(request_ids: tuple[bytes, ...], pool: Mapping[bytes, PendingRequest]) -> None:
    """The block's requests are known valid (checked or vouched for): so are their pooled copies."""
    for request_id in request_ids:
        pending = pool.get(request_id)
        if pending is not None:
            pending.checked = True


def execution_matches(header: BlockHeader, result: ExecutionResult) -> bool:
    return (result.tree_size, result.tree_root, result.results_hash) == (
        header.tree_size, header.tree_root, header.results_hash)


def build_header(rules: ProposalRules, height: int, parent: BlockHeader | None, time_ms: int,
                 entries: tuple[bytes, ...], result: ExecutionResult) -> BlockHeader:
    """The primary's header for `entries` at `height` on `parent`, as executing them gave `result`."""
    return BlockHeader(
        chain_id=rules.chain_id, height=height, prev_hash=hash_of_header(parent) if parent is not None else ZERO_HASH,
        time_ms=time_ms, entries_hash=entries_hash(entries), entry_count=len(entries),
        tree_size=result.tree_size, tree_root=result.tree_root, results_hash=result.results_hash,
        validator_set_hash=rules.validator_set_hash, epoch=rules.epoch,
    )
