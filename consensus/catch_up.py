"""Catch-up: which height we know exists beyond ours and whom to ask for it, the rotating probe of
an idle chain, and the pacing that rate-limits what we do for any one peer.

State only; the replica sends the requests these choose and applies what comes back.
"""

from __future__ import annotations

from .messages import CATCH_UP_BLOCKS_MAX, CatchUpRequest

__all__ = ["CatchUp", "Pacer", "catch_up_request"]


def catch_up_request(applied_height: int, target_height: int | None = None) -> CatchUpRequest:
    """Ask for the blocks after `applied_height`: one full range, or up to `target_height` if sooner."""
    first = applied_height + 1
    last = first + CATCH_UP_BLOCKS_MAX - 1
    return CatchUpRequest(first, last if target_height is None else min(target_height, last))


class CatchUp:
    def __init__(self) -> None:
        self.target = 0              # the highest height we know a quorum committed (0: none)
        self.peers: list[str] = []   # who can serve up to it, sorted; asked in turn from `attempt`
        self.attempt = 0
        self.probe_index = 0         # the next peer the idle-chain probe asks

    def raise_target(self, height: int, peers: list[str]) -> None:
        """A quorum committed up to `height` (`peers`, without us, can serve it): a higher target replaces ours."""
        if height > self.target:
            self.target = height
            self.peers = sorted(set(peers))

    def behind(self, applied_height: int) -> bool:
        return self.target > applied_height and bool(self.peers)

    def next_peer(self) -> str:
        """The peer to ask now: each attempt the next one, so one that does not answer is not asked twice running."""
        peer = self.peers[self.attempt % len(self.peers)]
        self.attempt += 1
        return peer

    def progressed_with(self, peer: str) -> None:
        """`peer` delivered: ask it first for the next range."""
        if peer in self.peers:
            self.attempt = self.peers.index(peer)

    def probe_peer(self, others: list[str]) -> str | None:
        """The next peer (rotating over `others`) to ask for blocks past ours, or None if there is none."""
        if not others:
            return None
        peer = others[self.probe_index % len(others)]
        self.probe_index += 1
        return peer


class Pacer:
    """At most one action per key per interval: how every answer and offer to one peer is rate-limited,
    so a faulty peer cannot make us work at its pace."""

    def __init__(self) -> None:
        self.done_at_ms: dict[str, int] = {}   # "what:peer" -> when we last did it

    def allow(self, key: str, interval_ms: int, now_ms: int) -> bool:
        """True (and the time noted) if nothing was done for `key` in the last `interval_ms`."""
        last = self.done_at_ms.get(key)
        if last is not None and now_ms - last < interval_ms:
            return False
        self.done_at_ms[key] = now_ms
        return True
