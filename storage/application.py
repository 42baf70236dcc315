"""The adapter from the consensus core to the ledger: what the replica calls to check requests and
execute blocks (consensus.application.Application), answered by a Ledger."""

from __future__ import annotations

from typing import Sequence

from consensus.application import Application, ExecutionResult
from consensus.block import BlockHeader

from .ledger import Ledger


class LedgerApplication(Application):
    """The consensus `Application` (docs/INTERNALS.md) backed by a Ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def check_request(self, request: bytes) -> str | None:
        return self.ledger.check_entry(request)

    def check_request_shape(self, request: bytes) -> str | None:
        return self.ledger.check_entry(request, check_signatures=False)

    def check_request_applied(self, request: bytes) -> str | None:
        """The consensus core asks before pooling: an entry whose nonce is used up never commits
        (docs/CONSENSUS.md, "Replays after a restart"). Against the applied state; never memoized."""
        return self.ledger.check_applied(request)

    def execute(self, parent: BlockHeader | None, height: int, time_ms: int,
                entries: Sequence[bytes]) -> ExecutionResult | None:
        return self.ledger.execute(parent, height, time_ms, entries)
