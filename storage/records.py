"""The records execution reads and writes, as stored under storage/keys.py's prefixes: the
registry (ParticipantRecord), the commitment index (CommitmentRecord) and each author's replay
window (NonceWindow). Their encodings are part of the on-disk format."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable

import msgpack

STATUS_ACTIVE = "active"
STATUS_SUSPENDED = "suspended"
nonce_window = 256                   # most recent nonces remembered per author (replay window)

_pack = msgpack.Packer(use_bin_type=True).pack  # for our own records (not hashed)


class NonceWindow:
    """The most recent nonces an author used (at most nonce_window of them, sorted).

    A nonce applies once: one in the window is a replay; when the window is
    full, one below all of it is refused as "stale-nonce" (it may have been
    used and forgotten). Since only the smallest nonce is ever forgotten, and
    a full window accepts only nonces above its smallest, a forgotten nonce can
    never apply again. Authors may submit concurrently and out of order, with
    counters or clock-based nonces alike, as long as fewer than nonce_window of
    their newer entries apply first; the ledger keeps one small record per
    author instead of one per entry.
    """

    __slots__ = ("recent",)

    def __init__(self, recent: Iterable[int] = ()) -> None:
        self.recent = list(recent)

    def check(self, nonce: int) -> str | None:
        recent = self.recent
        i = bisect.bisect_left(recent, nonce)
        if i < len(recent) and recent[i] == nonce:
            return "replayed-nonce"
        if i == 0 and len(recent) >= nonce_window:
            return "stale-nonce"
        return None

    def add(self, nonce: int) -> None:
        """Record a nonce that passed `check` (mutates: only on a window this block owns)."""
        bisect.insort(self.recent, nonce)
        if len(self.recent) > nonce_window:
            del self.recent[0]

    def copy(self) -> "NonceWindow":
        return NonceWindow(self.recent)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NonceWindow) and other.recent == self.recent

    def encode(self) -> bytes:
        """Runs of consecutive nonces, [first, count, ...]: an author counting up is one run, a few bytes
        rewritten each block instead of up to nonce_window integers."""
        recent = self.recent
        if not recent:
            return _pack([])
        if recent[-1] - recent[0] == len(recent) - 1:
            return _pack([recent[0], len(recent)])  # the common case: no gaps
        runs: list[int] = []
        start = 0
        for i in range(1, len(recent) + 1):
            if i == len(recent) or recent[i] != recent[i - 1] + 1:
                runs += (recent[start], i - start)
                start = i
        return _pack(runs)

    @classmethod
    def decode(cls, data: bytes) -> "NonceWindow":
        runs = msgpack.unpackb(data)
        recent: list[int] = []
        for i in range(0, len(runs), 2):
            recent.extend(range(runs[i], runs[i] + runs[i + 1]))
        return cls(recent)


@dataclass(frozen=True)
class CommitmentRecord:
    leaf_index: int
    height: int                      # block that appended the commit
    revoke_leaf: int | None = None
    revoke_height: int | None = None
    author: str | None = None        # known for in-flight records; read from the entry for stored ones

    def encode(self) -> bytes:
        if self.revoke_leaf is None:
            return _pack([self.leaf_index, self.height])
        return _pack([self.leaf_index, self.height, self.revoke_leaf, self.revoke_height])

    @classmethod
    def decode(cls, data: bytes) -> "CommitmentRecord":
        return cls(*msgpack.unpackb(data))


@dataclass(frozen=True)
class ParticipantRecord:
    id: str
    jurisdiction: str
    role: str
    public_key: bytes
    status: str

    def encode(self) -> bytes:
        return _pack({"id": self.id, "jurisdiction": self.jurisdiction, "role": self.role,
                      "public_key": self.public_key, "status": self.status})

    @classmethod
    def decode(cls, data: bytes) -> "ParticipantRecord":
        return cls(**msgpack.unpackb(data, raw=False))
