"""The PREPARE and COMMIT votes this replica received (and its own), per height: what a quorum
certifies, and the first vote of each voter kept as evidence should it sign a conflicting one.

Bounded by the heights the replica accepts (its watermark window) times the validators; the replica
forgets heights as they commit, fall below the stable checkpoint, or (PREPAREs) leave with their view.
"""

from __future__ import annotations

from collections.abc import Iterator

from .validators import ValidatorSet

__all__ = ["CommitVote", "PrepareVote", "VoteTally"]

PrepareVote = tuple[bytes, bytes, bytes]        # (header hash, signature, the signed message)
CommitVote = tuple[int, bytes, bytes, bytes]    # (view, header hash, signature, the signed message)


class VoteTally:
    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators
        self.prepares: dict[int, dict[str, PrepareVote]] = {}   # height -> voter -> vote (current view)
        self.commits: dict[int, dict[str, CommitVote]] = {}     # height -> voter -> latest-view vote

    def add_prepare(self, voter: str, height: int, header_hash: bytes, signature: bytes, data: bytes) -> bytes | None:
        """Keep `voter`'s first PREPARE at `height`; the first one's message if this one conflicts with it."""
        votes = self.prepares.setdefault(height, {})
        previous = votes.get(voter)
        if previous is not None:
            return previous[2] if previous[0] != header_hash else None
        votes[voter] = (header_hash, signature, data)
        return None

    def add_own_prepare(self, me: str, height: int, header_hash: bytes, signature: bytes, data: bytes) -> None:
        self.prepares.setdefault(height, {}).setdefault(me, (header_hash, signature, data))

    def add_commit(self, voter: str, height: int, view: int, header_hash: bytes, signature: bytes,
                   data: bytes) -> tuple[bool, bytes | None]:
        """Keep `voter`'s COMMIT if it is of a later view than the one held: (kept, the held one's message if
        this one conflicts with it in the same view)."""
        votes = self.commits.setdefault(height, {})
        previous = votes.get(voter)
        if previous is not None:
            if previous[0] == view and previous[1] != header_hash:
                return False, previous[3]
            if previous[0] >= view:
                return False, None
        votes[voter] = (view, header_hash, signature, data)
        return True, None

    def add_own_commit(self, me: str, height: int, view: int, header_hash: bytes, signature: bytes, data: bytes) -> None:
        votes = self.commits.setdefault(height, {})
        previous = votes.get(me)
        if previous is None or previous[0] < view:
            votes[me] = (view, header_hash, signature, data)

    def prepare_signers(self, height: int, header_hash: bytes) -> list[str]:
        return [v for v, (h, _, _) in self.prepares.get(height, {}).items() if h == header_hash]

    def commit_voters(self, height: int, header_hash: bytes) -> list[str]:
        """Voters whose latest COMMIT at `height` (of any view) is for `header_hash`."""
        return [v for v, (_, h, _, _) in self.commits.get(height, {}).items() if h == header_hash]

    def prepare_signature(self, height: int, voter: str) -> bytes:
        return self.prepares[height][voter][1]

    def commit_signature(self, height: int, voter: str) -> bytes:
        return self.commits[height][voter][2]

    def commit_quorum(self, height: int) -> tuple[int, bytes, list[str]] | None:
        """(view, header hash, sorted signers) of the first (view, block) a quorum committed at `height`."""
        votes = self.commits.get(height)
        if not votes:
            return None
        groups: dict[tuple[int, bytes], list[str]] = {}
        for voter, (view, header_hash, _, _) in votes.items():
            groups.setdefault((view, header_hash), []).append(voter)
        for (view, header_hash), signers in sorted(groups.items()):
            if self.validators.is_quorum(signers):
                return view, header_hash, sorted(signers)
        return None

    def committed_hashes(self) -> Iterator[bytes]:
        """Every block some COMMIT we hold names (a certificate may still name it)."""
        return (vote[1] for votes in self.commits.values() for vote in votes.values())

    def forget_height(self, height: int) -> None:
        """`height` committed here: its votes are no longer needed."""
        self.commits.pop(height, None)
        self.prepares.pop(height, None)

    def forget_commits(self, height: int) -> None:
        self.commits.pop(height, None)

    def forget_through(self, height: int) -> None:
        for table in (self.prepares, self.commits):
            for below in [h for h in table if h <= height]:
                del table[below]

    def forget_prepares(self) -> None:
        """A new view: PREPAREs of the old one count no more (COMMITs of any view do)."""
        self.prepares = {}
