"""Bodies of re-proposed blocks: a NEW-VIEW names blocks by header only, and a replica that lacks one's
entries asks peers for them (BLOCK-REQUEST), the certificate's signers first, one peer per round each.

State only; the replica sends the requests `plan_round` chooses and fills its slots with what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import BLOCK_REQUEST_HASHES_MAX
from .validators import ValidatorSet

__all__ = ["BodyFetch", "BodyFetcher"]


@dataclass
class BodyFetch:
    """A body we lack for a block chosen by the NEW-VIEW: asked of `peers` in turn, one per round."""

    height: int
    peers: tuple[str, ...]   # the certificate's signers first (each persisted the body before its PREPARE)
    attempt: int = 0


class BodyFetcher:
    def __init__(self, validators: ValidatorSet, me: str, my_index: int) -> None:
        self.validators = validators
        self.me = me
        self.my_index = my_index
        self.fetching: dict[bytes, BodyFetch] = {}   # header hash -> a chosen block whose body we wait for

    def __len__(self) -> int:
        return len(self.fetching)

    def want(self, height: int, header_hash: bytes, signers: tuple[str, ...]) -> None:
        """Fetch a chosen block's body: from the certificate's signers first (every honest one persisted it
        before its PREPARE, and a quorum holds at least f + 1 honest ones), then from everyone else."""
        others = [v.id for v in self.validators.validators if v.id != self.me]
        first = [s for s in signers if s in self.validators and s != self.me]
        peers = tuple(first + [v for v in others if v not in first])
        if peers:
            # Start at a different signer on each replica, so that not all of them ask the same one.
            self.fetching[header_hash] = BodyFetch(height, peers, self.my_index % max(1, len(first) or len(peers)))

    def plan_round(self, stable_height: int) -> dict[str, list[bytes]]:
        """The hashes to ask each peer for this round, lowest height first: each body of its next peer in
        turn, at most BLOCK_REQUEST_HASHES_MAX per peer (a peer serves one request per interval), so a body
        whose next peer is full this round goes to the one after."""
        by_peer: dict[str, list[bytes]] = {}
        for header_hash, fetch in sorted(self.fetching.items(), key=lambda item: item[1].height):
            if fetch.height <= stable_height:
                continue
            for _ in range(len(fetch.peers)):
                peer = fetch.peers[fetch.attempt % len(fetch.peers)]
                fetch.attempt += 1
                hashes = by_peer.setdefault(peer, [])
                if len(hashes) < BLOCK_REQUEST_HASHES_MAX:
                    hashes.append(header_hash)
                    break
        return by_peer

    def arrived(self, header_hash: bytes) -> BodyFetch | None:
        """A body came (or its block committed): the fetch it ends, if we were fetching it."""
        return self.fetching.pop(header_hash, None)

    def forget_through(self, height: int) -> None:
        for header_hash in [h for h, fetch in self.fetching.items() if fetch.height <= height]:
            del self.fetching[header_hash]

    def clear(self) -> None:
        """A new view: the bodies of the old view's slots are no longer wanted."""
        self.fetching = {}
