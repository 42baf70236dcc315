"""What one input to the replica asks its host to do: the `Ready` and its parts.

The host carries out a Ready in the contract order (docs/INTERNALS.md):
persist (one synced batch) -> `on_persisted()` -> send -> apply -> serve
catch-up -> report. `consensus/host.py` is the one place that does so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .messages import CommittedBlock, Evidence

__all__ = ["Outbound", "PersistChange", "Ready", "Rejection", "CatchUpRange"]

PersistChange = tuple[bytes, "bytes | None"]   # (key, value); None deletes the key
Rejection = tuple[str, str]                    # (peer id, reason code)
CatchUpRange = tuple[str, int, int]            # (peer id, from height, to height), inclusive


@dataclass(frozen=True)
class Outbound:
    to: str | None  # None = every other validator
    data: bytes


@dataclass(frozen=True)
class Ready:
    persist: list[PersistChange] = field(default_factory=list)
    messages: list[Outbound] = field(default_factory=list)
    committed: list[CommittedBlock] = field(default_factory=list)   # in height order
    serve_catch_up: list[CatchUpRange] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.persist or self.messages or self.committed or self.serve_catch_up or self.evidence or self.rejected
        )
