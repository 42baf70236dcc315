"""Bodies of blocks a NEW-VIEW re-proposes: found locally, else asked for (BLOCK-REQUEST) and served.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from ..block import BlockHeader
from ..messages import BlockRequest, BlockResponse, PreparedCertificate, encode
from ..messages import header_hash as hash_of_header
from ..slot import Slot
from ..timeouts import Timer


class BodyFetching:
    def _chosen_slot(self, cert: PreparedCertificate) -> None:
        """The slot of a block the NEW-VIEW re-proposes, with its body if we hold it; else the body is fetched."""
        header_hash = hash_of_header(cert.header)
        entries = self._known_body(cert.height, header_hash)
        self.slots[cert.height] = Slot(cert.header, entries, header_hash)
        if entries is None:
            self._want_body(cert.height, header_hash, tuple(s.validator for s in cert.prepares))
        elif cert.height > self.last_applied_height:
            self.blocks[header_hash] = (cert.header, entries)

    def _known_body(self, height: int, header_hash: bytes) -> tuple[bytes, ...] | None:
        """The entries of a block we hold: a proposal we saw, a body we persisted, or a slot's."""
        block = self.blocks.get(header_hash)
        if block is not None:
            return block[1]
        persisted = self.vote_log.body(height, header_hash)
        if persisted is not None:
            return persisted
        slot = self.slots.get(height)
        if slot is not None and slot.hash == header_hash:
            return slot.entries
        return None

    def _want_body(self, height: int, header_hash: bytes, signers: tuple[str, ...]) -> None:
        self.bodies.want(height, header_hash, signers)

    def _request_bodies(self) -> None:
        """One BLOCK-REQUEST per peer for the bodies we still lack, each to its next peer in turn: at once
        on entering a view, then every retransmit_ms (a peer that did not answer is not asked twice running)."""
        self.timeouts.start(Timer.BODIES, self.config.retransmit_ms // 2)
        for peer, hashes in self.bodies.plan_round(self.stable.height).items():
            if hashes:
                self._send(peer, encode(BlockRequest(tuple(hashes))))

    def _on_block_request(self, peer: str, message: BlockRequest, data: bytes) -> None:
        """Serve the bodies we hold of the blocks asked for, one BLOCK-RESPONSE each (rate-limited per peer,
        as catch-up is: a faulty peer must not make us send bodies as fast as it can ask)."""
        if not self._paced("blocks:" + peer, self.config.catch_up_serve_interval_ms):
            self._reject(peer, "block-request-too-often")
            return
        for header_hash in message.header_hashes:
            block = self._servable_block(header_hash)
            if block is not None:
                self._send(peer, encode(BlockResponse(*block)))

    def _servable_block(self, header_hash: bytes) -> tuple[BlockHeader, tuple[bytes, ...]] | None:
        block = self.blocks.get(header_hash)
        if block is not None:
            return block
        persisted = self.vote_log.servable(header_hash)
        if persisted is not None:
            return persisted
        for slot in self.slots.values():
            if slot.hash == header_hash and slot.entries is not None:
                return slot.header, slot.entries
        return None

    def _on_block_response(self, peer: str, message: BlockResponse, data: bytes) -> None:
        """A body we asked for. decode_message checked it against the header it came with (`bad-body`);
        the header's hash is the one the NEW-VIEW's certificate names, so it is that block's body."""
        header_hash = hash_of_header(message.header)
        fetch = self.bodies.arrived(header_hash)
        if fetch is None:
            return   # a second answer, or for a view we left: nothing to do (and nothing kept)
        slot = self.slots.get(fetch.height)
        if slot is None or slot.hash != header_hash or slot.entries is not None:
            return
        slot.fill(message.entries)
        self._proposal_queue = None   # the in-flight requests changed
        if fetch.height > self.last_applied_height:
            self.blocks[header_hash] = (message.header, message.entries)
