"""VIEW-CHANGE and NEW-VIEW: leaving a view, and entering the next with the blocks it re-proposes.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from ..catch_up import catch_up_request
from ..messages import (
    NEW_VIEW_BYTES_MAX, CheckpointCertificate, NewView, PreparedCertificate, ViewChange, choose_blocks, encode, sign,
)
from ..messages import header_hash as hash_of_header
from ..timeouts import Timer
from ..vote_log import KEY_NEW_VIEW, KEY_VIEW_CHANGE


class ViewChangeHandling:
    def _start_view_change(self, view: int) -> None:
        if view <= self.view or not self.member or self._epoch_decided():
            return  # views only go up; and a replica with nothing to decide in its epoch has no view to leave
        self.view = view
        self.view_active = False
        self.requests.forget_primary()
        self.failed_views += 1
        self.view_entered_ms = self.timeouts.clock_ms
        self.slots = {}
        self.tally.forget_prepares()
        self.timeouts.stop(Timer.PROGRESS)
        self.timeouts.stop(Timer.VIEW_CHANGE)
        self.view_change.entered(None, None)
        self.bodies.clear()   # bodies for the abandoned view's slots
        # Proposals of the abandoned view are only worth keeping if a certificate may still name them.
        wanted = {hash_of_header(c.header) for c in self.certs.values()}
        wanted.update(self.tally.committed_hashes())
        self.blocks = {h: block for h, block in self.blocks.items() if h in wanted}
        prepared = tuple(self.certs[h] for h in sorted(self.certs) if h > self.stable.height)
        message = sign(ViewChange(view, self.stable, prepared, self.me, epoch=self.epoch), self.signing_key, self.chain_id)
        data = encode(message)
        self.view_change.own(self.me, message, data)
        self._persist_view()
        self._persist.append((KEY_VIEW_CHANGE, data))
        self._send(None, data)
        self._check_view_change_quorum()

    def _on_view_change(self, peer: str, message: ViewChange, data: bytes) -> None:
        if message.checkpoint.height > self.stable.height:
            self._adopt_stable(message.checkpoint)
        if message.checkpoint.height < self.stable.height:
            self._relay_stable(peer)
        if message.view <= self.view:
            self._maybe_send_new_view(peer, message.view)
        if not self.view_change.record(peer, message, data):
            return
        view = self.view_change.view_to_join(self.view)
        if view is not None:
            # f + 1 validators (one honest at least) moved on: join the lowest view that many have reached.
            self._start_view_change(view)
        if not self.view_active:
            self._check_view_change_quorum()

    def _check_view_change_quorum(self) -> None:
        if self.view_active:
            return
        if not self.timeouts.armed(Timer.VIEW_CHANGE) and self.view_change.quorum_joined(self.view):
            # Only a view change a quorum joined can fail for lack of a primary: start its clock now.
            self.timeouts.start(Timer.VIEW_CHANGE, self._timeout_ms())
        if not self.is_primary or not self.member:
            return
        quorum = self.view_change.new_view_quorum(self.view)
        if quorum is None:
            return
        checkpoint, chosen = choose_blocks(quorum)
        message = sign(
            NewView(self.view, quorum, tuple(hash_of_header(p.header) for p in chosen), self.me, epoch=self.epoch),
            self.signing_key, self.chain_id,
        )
        data = encode(message)
        if len(data) > NEW_VIEW_BYTES_MAX:
            return   # faulty validators' oversized VIEW-CHANGEs: wait for more honest ones
        self._enter_view(message, data, checkpoint, chosen)
        self._send(None, data)

    def _on_new_view(self, peer: str, message: NewView, data: bytes) -> None:
        if message.view < self.view:
            self._reject(peer, "stale-view")
            return
        if message.view == self.view and self.view_active:
            if self.view_change.contradicts(message):
                self._report_evidence(peer, "new-view", message.view, 0, self.view_change.new_view_bytes, data)
                self._start_view_change(self.view + 1)
            return
        checkpoint, chosen = choose_blocks(message.view_changes)
        self._enter_view(message, data, checkpoint, chosen)

    def _enter_view(
        self, message: NewView, data: bytes, checkpoint: CheckpointCertificate, chosen: list[PreparedCertificate]
    ) -> None:
        self.view_active = True
        self.view_entered_ms = self.timeouts.clock_ms
        self.requests.forget_primary()   # evidence is about one primary's proposals in one view
        self._proposal_queue = None   # rebuilt for the re-proposed blocks when we are the primary
        if message.view != self.view:
            self.tally.forget_prepares()  # votes of an older view; those of this view (sent before NEW-VIEW) stay
        self.view = message.view
        self.view_change.entered(message, data)
        self.slots = {}
        self.timeouts.stop(Timer.PROGRESS)
        self.timeouts.stop(Timer.VIEW_CHANGE)
        self._persist_view()
        self._persist.append((KEY_NEW_VIEW, data))
        self._adopt_stable(checkpoint)
        self.bodies.clear()
        for cert in chosen:
            if cert.height <= self.stable.height:
                continue
            self._chosen_slot(cert)
        self._request_bodies()

    def _maybe_send_new_view(self, peer: str, peer_view: int) -> None:
        """A peer in another view. In an older one (or waiting for this one's NEW-VIEW): hand it the
        NEW-VIEW we hold. In a newer one: we are behind (restarted, or cut off while the others
        changed view), so ask it, as the NEW-VIEW of its view is what lets us vote again."""
        if peer_view > self.view:
            self._ask_for_new_view(peer)
            return
        self._offer_new_view(peer)

    def _offer_new_view(self, peer: str) -> None:
        """Send `peer` the NEW-VIEW of our view, at most once per retransmit_ms per peer."""
        if not self.view_active or self.view_change.new_view_bytes is None:
            return
        if not self._paced("new-view-sent:" + peer, self.config.retransmit_ms):
            return
        self._send(peer, self.view_change.new_view_bytes)

    def _ask_for_new_view(self, peer: str) -> None:
        """Ask `peer` for the blocks past ours and, with them, its NEW-VIEW (peers answer every
        CATCH-UP-REQUEST with their NEW-VIEW: _on_catch_up_request). At most once per
        retransmit_ms per peer, so a peer that claims a far view costs one small message a round."""
        if not self._paced("new-view-asked:" + peer, self.config.retransmit_ms):
            return
        self._send(peer, encode(catch_up_request(self.last_applied_height)))
