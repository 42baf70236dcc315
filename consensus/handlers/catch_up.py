"""Catch-up: certified blocks fetched from peers when we fall behind, and served to those behind us.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from ..block import ZERO_HASH
from ..catch_up import catch_up_request
from ..messages import CATCH_UP_BLOCKS_MAX, CatchUpRequest, CatchUpResponse, MessageError, encode
from ..messages import header_hash as hash_of_header
from ..timeouts import Timer


class CatchUpHandling:
    def _serve_behind(self, peer: str, from_height: int) -> None:
        """A peer voted on a height we already committed: it is behind, offer it the blocks (rate-limited)."""
        if from_height > self.last_applied_height or from_height < 1:
            return
        if not self._paced("behind:" + peer, self.config.catch_up_timeout_ms):
            return
        to_height = min(self.last_applied_height, from_height + CATCH_UP_BLOCKS_MAX - 1)
        self._serve.append((peer, from_height, to_height))

    def _probe_peer(self) -> None:
        peer = self.catch_up.probe_peer([v.id for v in self.validators.validators if v.id != self.me])
        if peer is not None:
            self._send(peer, encode(catch_up_request(self.last_applied_height)))

    def _set_catch_up_target(self, height: int, peers: list[str]) -> None:
        peers = [p for p in peers if p != self.me]
        if height <= self.last_applied_height or not peers:
            return
        self.catch_up.raise_target(height, peers)
        self._maybe_catch_up()

    def _maybe_catch_up(self) -> None:
        if not self.catch_up.behind(self.last_applied_height) or self.timeouts.running(Timer.CATCH_UP):
            return
        peer = self.catch_up.next_peer()
        self.timeouts.start(Timer.CATCH_UP, self.config.catch_up_timeout_ms)
        self._send(peer, encode(catch_up_request(self.last_applied_height, self.catch_up.target)))

    def _on_catch_up_request(self, peer: str, message: CatchUpRequest, data: bytes) -> None:
        # A peer that asks may also have missed a view change (it asks at its first tick after a
        # restart, and when it sees messages of a newer view): the NEW-VIEW lets it join this view.
        self._offer_new_view(peer)
        if message.from_height > self.last_applied_height:
            return
        # One range per peer per interval: an honest peer asks for the next range only after the last
        # one arrived, a faulty one must not make our host read storage as fast as it can send.
        if not self._paced("request:" + peer, self.config.catch_up_serve_interval_ms):
            self._reject(peer, "catch-up-too-often")
            return
        self._serve.append((peer, message.from_height, min(message.to_height, self.last_applied_height)))

    def _on_catch_up_response(self, peer: str, message: CatchUpResponse, data: bytes) -> None:
        delivered = False
        for block in message.blocks:
            height = block.header.height
            if height <= self.last_applied_height:
                continue
            if height != self.last_applied_height + 1:
                # Served from a height past ours (the peer guessed from a pipelined vote). If it holds,
                # it proves the chain is that long: fetch the gap from the same peer.
                try:
                    block.verify(self.schedule.config_at(height).validators)
                except MessageError as exc:
                    self._reject(peer, exc.reason)
                    break
                self._set_catch_up_target(height, [peer])
                break
            expected_prev = hash_of_header(self.last_applied_header) if self.last_applied_header is not None else ZERO_HASH
            if block.header.prev_hash != expected_prev:
                self._reject(peer, "catch-up-does-not-chain")
                break
            try:
                block.verify(self.schedule.config_at(height).validators)
            except MessageError as exc:
                self._reject(peer, exc.reason)
                break
            self._deliver(block)
            delivered = True
        if delivered:
            # Progress: the next range (if any) goes out at once, to the same peer first.
            self.timeouts.stop(Timer.CATCH_UP)
            if len(message.blocks) == CATCH_UP_BLOCKS_MAX:
                self._set_catch_up_target(self.last_applied_height + 1, [peer])  # a full batch: there may be more
            self.catch_up.progressed_with(peer)
            self._maybe_catch_up()
