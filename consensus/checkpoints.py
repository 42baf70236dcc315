"""Checkpoints: every validator's recent CHECKPOINT votes, our own latest one, and the stable
checkpoint a quorum of them proves (the low watermark of the replica's log).

State only; the replica decides what adopting a stable checkpoint deletes elsewhere.
"""

from __future__ import annotations

from .messages import GENESIS_CHECKPOINT, Checkpoint, CheckpointCertificate, VoteSignature
from .validators import ValidatorSet

__all__ = ["CHECKPOINT_VOTES_PER_VALIDATOR_MAX", "Checkpoints"]

CHECKPOINT_VOTES_PER_VALIDATOR_MAX = 4  # recent CHECKPOINT heights remembered per validator


class Checkpoints:
    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators
        self.stable: CheckpointCertificate = GENESIS_CHECKPOINT
        self.votes: dict[str, dict[int, tuple[bytes, bytes]]] = {}  # voter -> height -> (header hash, signature)
        self.mine: bytes | None = None   # our latest signed CHECKPOINT, resent until it is stable
        self.mine_height = 0

    def record_vote(self, voter: str, height: int, header_hash: bytes, signature: bytes,
                    validators: ValidatorSet | None = None) -> CheckpointCertificate | None:
        """Note `voter`'s vote (the first per height counts); the certificate of a checkpoint above the
        stable one that a quorum now proves, or None. `validators`: the set of the height's epoch, whose
        quorum rule decides (ours if None)."""
        votes = self.votes.setdefault(voter, {})
        if height in votes:
            return None
        votes[height] = (header_hash, signature)
        while len(votes) > CHECKPOINT_VOTES_PER_VALIDATOR_MAX:
            del votes[min(votes)]
        signers = [v for v, heights in self.votes.items() if heights.get(height, (None,))[0] == header_hash]
        if height <= self.stable.height or not (validators or self.validators).is_quorum(signers):
            return None
        return CheckpointCertificate(
            height, header_hash, tuple(VoteSignature(v, self.votes[v][height][1]) for v in sorted(signers)),
        )

    def signed(self, height: int, data: bytes) -> None:
        """We signed the CHECKPOINT `data` at `height` (its vote is recorded separately)."""
        self.mine, self.mine_height = data, height

    def adopt(self, certificate: CheckpointCertificate) -> None:
        """A stable checkpoint: votes at or below it are no longer needed."""
        self.stable = certificate
        for voter_votes in self.votes.values():
            for below in [h for h in voter_votes if h <= certificate.height]:
                del voter_votes[below]

    def unstable_mine(self) -> bytes | None:
        """Our CHECKPOINT, while it is above the stable one (peers may have missed it)."""
        return self.mine if self.mine is not None and self.mine_height > self.stable.height else None

    def proof(self) -> list[Checkpoint]:
        """The quorum of CHECKPOINT votes that proves the stable checkpoint (none for genesis)."""
        stable = self.stable
        if stable.height == 0:
            return []
        return [Checkpoint(stable.height, stable.header_hash, s.validator, s.signature) for s in stable.signatures]
