"""CHECKPOINT votes: a quorum moves the low watermark and the log below it goes.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from .. import codec
from ..messages import Checkpoint, CheckpointCertificate, encode
from ..vote_log import KEY_CHECKPOINT


class CheckpointHandling:
    def _on_checkpoint(self, peer: str, message: Checkpoint, data: bytes) -> None:
        if message.height <= self.stable.height:
            if message.sender == peer:
                self._relay_stable(peer)  # the peer still resends it: it lacks the quorum we hold
            return
        # Recorded under the signer, not the link: checkpoint votes may be relayed.
        self._record_checkpoint_vote(message.sender, message.height, message.header_hash, message.signature)

    def _record_checkpoint_vote(self, voter: str, height: int, header_hash: bytes, signature: bytes) -> None:
        # A checkpoint of a later epoch (a replica behind the switch) is proved by that epoch's quorum.
        certificate = self.checkpoints.record_vote(voter, height, header_hash, signature, self._validators_at(height))
        if certificate is not None:
            self._adopt_stable(certificate)

    def _adopt_stable(self, certificate: CheckpointCertificate) -> None:
        """Move the low watermark to a checkpoint proven by a quorum; forget and delete the log below it."""
        if certificate.height <= self.stable.height:
            return
        committed = self.committed_hashes.get(certificate.height)
        if committed is not None and committed != certificate.header_hash:
            self._reject(certificate.signatures[0].validator if certificate.signatures else self.me, "certified-fork")
            return
        self.checkpoints.adopt(certificate)
        height = certificate.height
        self._persist.append((KEY_CHECKPOINT, codec.pack(certificate.to_wire())))
        self.vote_log.forget_through(height)
        self.bodies.forget_through(height)
        for below in [h for h in self.slots if h <= height]:
            del self.slots[below]
        self.tally.forget_through(height)
        for below in [h for h in self.committed_hashes if h < height]:
            del self.committed_hashes[below]
        if height > self.last_applied_height:
            self._set_catch_up_target(height, [s.validator for s in certificate.signatures])

    def _relay_stable(self, peer: str) -> None:
        """A peer is below our stable checkpoint: send it the quorum of CHECKPOINT votes that proves it."""
        if self.stable.height == 0:
            return
        if not self._paced("checkpoint:" + peer, self.config.retransmit_ms):
            return
        for vote in self.checkpoints.proof():
            self._send(peer, encode(vote))
