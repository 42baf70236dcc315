"""What the consensus core needs from the state machine it orders blocks for.

Both sides import this module: the replica calls an `Application`, and
storage (the ledger's adapter) and the simulator implement one. It imports
nothing but the block header, so no cycle can form through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .block import BlockHeader
from .epochs import EpochChange, EpochConfig

__all__ = ["Application", "ExecutionResult"]


@dataclass(frozen=True)
class ExecutionResult:
    """The header fields that executing a block's entries fixes."""

    tree_size: int
    tree_root: bytes
    results_hash: bytes


class Application(Protocol):
    def check_request(self, request: bytes) -> str | None:
        """Stateless validity: None if well formed and correctly signed, else a reason code."""

    def check_request_applied(self, request: bytes) -> str | None:
        """Against the committed state only, read-only: a reason code ("replayed-nonce", "stale-nonce",
        "already-applied", ...) if the request has been applied or can never apply, else None.

        Optional (a replica without it pools such requests, as before). Must answer from the state
        as it is now, never memoized: the answer changes as blocks are applied, and only from None
        to a reason (a request that cannot apply now never can)."""

    def check_request_shape(self, request: bytes) -> str | None:
        """check_request without the signatures (the costly part): None if it would pass but for them."""

    def execute(
        self, parent: BlockHeader | None, height: int, time_ms: int, entries: tuple[bytes, ...]
    ) -> ExecutionResult | None:
        """Header fields after applying `entries` on `parent` (None = genesis); None if parent is unknown."""

    def reconfiguration(self, height: int, entries: tuple[bytes, ...], latest: EpochConfig) -> EpochChange | None:
        """The reconfiguration the committed block holds for the `latest` epoch (consensus.epochs.EpochChange:
        its validator changes and the new epoch's application data), judged from the block and `latest`
        alone (its application data is this Application's own, e.g. the regulator keys), or None. The
        replica then applies EpochSchedule.schedule. Optional: without it the set never changes."""
