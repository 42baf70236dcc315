"""The adapter from the consensus core to the ledger: what the replica calls to check requests and
execute blocks (consensus.application.Application), answered by a Ledger."""

from __future__ import annotations

from typing import Sequence

from consensus.application import Application, ExecutionResult
from consensus.epochs import EpochChange, EpochConfig, ReconfigurationError
from consensus.block import BlockHeader

from .entries import EntryError, decode_entry
from .execution import author_refusal
from .ledger import Ledger
from .reconfiguration import RECONFIGURE_TYPE, application_after, candidate, governance_of


_RECONFIGURE_TYPE_BYTES = RECONFIGURE_TYPE.encode()   # in every reconfigure entry's body, as a msgpack str


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

    def reconfiguration(self, height: int, entries: Sequence[bytes], latest: EpochConfig) -> EpochChange | None:
        """Block `height`'s candidate reconfigure for the `latest` epoch (storage/reconfiguration.py), from the
        block and `latest` alone (its application data holds the regulator keys): its validator changes
        and the new epoch's regulator keys. The replica judges them with the same consensus.epochs rule as
        the ledger's execution, so both reach the same verdict. None if the block has no candidate."""
        genesis = self.ledger.genesis
        governance = governance_of(latest, genesis.governance)
        decoded = []
        for data in entries:
            # Most blocks hold no reconfigure: a byte search spares decoding every entry twice.
            if type(data) is not bytes or _RECONFIGURE_TYPE_BYTES not in data:
                decoded.append(None)
                continue
            try:
                entry = decode_entry(data)
            except EntryError:
                decoded.append(None)
                continue
            # Governance authors never reach the participant registry: no state is read.
            refused = author_refusal(genesis, entry, lambda _participant_id: None, governance)
            decoded.append(entry if refused is None else None)
        found = candidate(decoded, latest.epoch)
        if found is None:
            return None
        reconfiguration = found[1].fields["changes"]
        try:
            application = application_after(latest, reconfiguration, genesis.governance)
        except ReconfigurationError:
            return None   # the ledger refuses it too (a regulator key held twice): no new epoch
        return EpochChange(reconfiguration.changes, application)
