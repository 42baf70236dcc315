"""A restart: the replica's state rebuilt from what it persisted (vote_log.py keys).

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from .. import codec
from ..messages import MessageError, PrePrepare, choose_blocks, decode_message, encode, sign
from ..messages import header_hash as hash_of_header
from ..slot import Slot
from ..vote_log import (
    KEY_CERT, KEY_NEW_VIEW, KEY_VIEW_CHANGE, KEY_VOTE, restore_committed_ids, restore_stable, restore_view,
)


class Restoring:
    def _restore(self, persisted: dict[bytes, bytes]) -> None:
        try:
            self._restore_unchecked(persisted)
        except (MessageError, codec.EncodingError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"persisted consensus state is unreadable: {exc}") from exc

    def _restore_message(self, persisted: dict[bytes, bytes], key: bytes):
        """The persisted message under `key`, or None if there is none or it does not decode."""
        if key not in persisted:
            return None
        try:
            return decode_message(persisted[key], self.validators, self.chain_id, verify=False, epoch=self.epoch)
        except MessageError as exc:
            self.restore_skipped.append(f"{key.decode(errors='replace')}: {exc}")
            return None

    def _restore_unchecked(self, persisted: dict[bytes, bytes]) -> None:
        """Each kind of record in turn: position (checkpoint, view), bodies, votes and certificates, the
        view-change messages, committed ids, then what follows from them."""
        stable = restore_stable(persisted, self.validators)
        if stable is not None and stable.height > self.stable.height:   # never below the epoch's base
            self.stable = stable
        view = restore_view(persisted, self.epoch)
        if view is not None:
            self.view, self.view_active = view
        self.vote_log.restore_bodies(persisted)
        for key, value in sorted(persisted.items()):
            if key.startswith(KEY_VOTE):
                self._restore_vote(key, value)
            elif key.startswith(KEY_CERT):
                self.vote_log.restore_certificate(key, value, self.validators, self.chain_id)
        self._restore_view_change(persisted)
        self._restore_new_view(persisted)
        if self.stable.height > self.last_applied_height:
            # An epoch's base has no signers to ask first (a crash before its blocks were applied): any peer.
            signers = [s.validator for s in self.stable.signatures] or [v.id for v in self.validators.validators]
            self._set_catch_up_target(self.stable.height, signers)
        for request_id in restore_committed_ids(persisted, self.last_applied_height):
            self.committed_ids[request_id] = None
        while len(self.committed_ids) > self.config.committed_request_ids_max:
            self.committed_ids.popitem(last=False)
        # Requests in blocks we signed but that may never commit: keep them pending so they are not lost.
        signed = ((codec.sha256(request), request) for slot in self.slots.values() for request in slot.entries or ())
        self.requests.keep_signed(signed, lambda request_id: request_id in self.committed_ids)
        if not self.view_active and self.me not in self.view_change.latest:
            # Mid view change, and our VIEW-CHANGE was left out (an older version's): move to the next
            # view with a fresh one (views only go up; we never sign a second VIEW-CHANGE for a view).
            self._start_view_change(self.view + 1)

    def _restore_vote(self, key: bytes, value: bytes) -> None:
        """A vote of the view we are active in, above the applied height: its slot again."""
        height, view, header, entries = self.vote_log.restore_vote(key, value)
        if view != self.view or not self.view_active or height <= max(self.last_applied_height, self.stable.height):
            return   # (votes of an ended epoch stay below its base until a stable checkpoint deletes them)
        header_hash = hash_of_header(header)
        slot = Slot(header, entries, header_hash)
        if entries is None:
            self._want_body(height, header_hash, ())
        elif self.is_primary:
            # Re-signing the same proposal gives the same bytes: no conflict, and it can be resent.
            slot.preprepare = encode(sign(PrePrepare(self.view, header, entries, self.me), self.signing_key, self.chain_id))
        self.slots[height] = slot
        if entries is not None:
            self.blocks[header_hash] = (header, entries)

    # Our last VIEW-CHANGE and the NEW-VIEW we entered. One written by an older version (which carried
    # block bodies) does not decode any more: leave it out. That is safe: our view, votes and prepared
    # certificates have records of their own (the vote guard reads those), a VIEW-CHANGE is rebuilt from
    # them when the view changes again, and a NEW-VIEW only restored slots the votes restore too. The
    # host reports what was left out (restore_skipped).

    def _restore_view_change(self, persisted: dict[bytes, bytes]) -> None:
        message = self._restore_message(persisted, KEY_VIEW_CHANGE)
        if message is not None:
            self.view_change.own(self.me, message, persisted[KEY_VIEW_CHANGE])

    def _restore_new_view(self, persisted: dict[bytes, bytes]) -> None:
        message = self._restore_message(persisted, KEY_NEW_VIEW) if self.view_active else None
        if message is None or message.view != self.view:
            return
        self.view_change.entered(message, persisted[KEY_NEW_VIEW])
        _, chosen = choose_blocks(message.view_changes)
        for cert in chosen:
            if cert.height > self.last_applied_height and cert.height not in self.slots:
                self._chosen_slot(cert)
