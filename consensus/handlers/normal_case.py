"""PRE-PREPARE, PREPARE and COMMIT: a proposal validated, prepared, committed and delivered.

A part of `Replica` (consensus/replica.py): its methods run on the replica's state, which
the replica owns; see docs/CONSENSUS.md, "Where each message is decided"."""

from __future__ import annotations

from .. import codec
from ..block import ZERO_HASH, BlockHeader, CommitCertificate, CommitSignature
from ..messages import (
    Checkpoint, Commit, CommittedBlock, PrePrepare, PreparedCertificate, Prepare, VoteSignature, encode,
    minimal_quorum, sign,
)
from ..messages import header_hash as hash_of_header
from ..proposal import check_header, check_requests, check_signatures_unvouched, execution_matches, mark_checked
from ..slot import WAIT, Slot, SlotPhase, Wait
from ..timeouts import Timer
from ..vote_log import KEY_COMMITTED, PHASE_COMMIT, PHASE_PREPARE, height_key

# After waiting vouch_wait_ms in vain for vouchers, a backup checks every signature itself this long:
# a checking backup that is down then stalls one block in 120, not every block.
VOUCH_FALLBACK_HOLD_MS = 30_000


class NormalCase:
    def _in_window(self, height: int) -> bool:
        """In (stable, stable + watermark_window], and never past the last height of our epoch."""
        end = self.schedule.last_height_of(self.epoch)
        return (self.stable.height < height <= self.stable.height + self.config.watermark_window
                and (end is None or height <= end))

    def _on_pre_prepare(self, peer: str, message: PrePrepare, data: bytes) -> None:
        if message.view != self.view or not self.view_active:
            self._maybe_send_new_view(peer, message.view)
            self._reject(peer, "wrong-view")
            return
        height = message.height
        if not self._in_window(height):
            self._reject(peer, "outside-window")
            return
        if height <= self.last_applied_height:
            self._serve_behind(peer, height)
            return
        header_hash = hash_of_header(message.header)
        slot = self.slots.get(height)
        if slot is not None:
            if slot.hash != header_hash:
                if slot.preprepare is not None:
                    self._report_evidence(peer, "pre-prepare", message.view, height, slot.preprepare, data)
                else:
                    self._reject(peer, "bad-proposal")  # contradicts the NEW-VIEW it signed
                self._start_view_change(self.view + 1)
            elif slot.preprepare is None:
                slot.preprepare = data
            return
        self.slots[height] = Slot(message.header, message.entries, header_hash, preprepare=data)
        self.blocks[header_hash] = (message.header, message.entries)
        # Censorship evidence (_sweep_requests): an honest primary proposes a batch that is not full
        # only when it holds no other valid request outside its in-flight blocks.
        self.requests.note_proposal(self.timeouts.clock_ms, height, len(message.entries),
                                    self.config.batch_requests_max, 2 * self.config.watermark_window)

    def _vote_height_open(self, peer: str, height: int) -> bool:
        """A vote's height is still being decided here; else the voter is behind (offered the blocks) or
        votes outside our window (refused)."""
        if height <= self.last_applied_height:
            self._serve_behind(peer, height)
            return False
        if not self._in_window(height):
            self._reject(peer, "outside-window")
            return False
        return True

    def _on_prepare(self, peer: str, message: Prepare, data: bytes) -> None:
        if message.view != self.view:
            self._maybe_send_new_view(peer, message.view)
            self._reject(peer, "wrong-view")
            return
        if not self._vote_height_open(peer, message.height):
            return
        conflicting = self.tally.add_prepare(peer, message.height, message.header_hash, message.signature, data)
        if conflicting is not None:
            self._report_evidence(peer, "prepare", message.view, message.height, conflicting, data)

    def _on_commit(self, peer: str, message: Commit, data: bytes) -> None:
        # A COMMIT quorum certifies a block whatever view it came from, so any view counts.
        if not self._vote_height_open(peer, message.height):
            return
        kept, conflicting = self.tally.add_commit(
            peer, message.height, message.view, message.header_hash, message.signature, data)
        if conflicting is not None:
            self._report_evidence(peer, "commit", message.view, message.height, conflicting, data)
        if kept and message.view != self.view:
            self._maybe_send_new_view(peer, message.view)

    def _parent_header(self, height: int) -> tuple[bool, BlockHeader | None]:
        """(known, header) of the block this replica would build on at `height` in the current view."""
        if height == self.last_applied_height + 1:
            return True, self.last_applied_header
        parent = self.slots.get(height - 1)
        if parent is not None and parent.prepared:
            return True, parent.header
        return False, None

    def _try_prepare(self) -> bool:
        progressed = False
        if not self.view_active or not self.member:
            return False
        for height in sorted(self.slots):
            slot = self.slots[height]
            if slot.entries is None:
                continue   # re-proposed by NEW-VIEW, body still being fetched: never vote for a block we lack
            if slot.prepare is not None and not slot.prepared:
                progressed |= self._check_prepared(height, slot)
                continue
            if slot.prepare is not None:
                continue
            if height <= self.last_applied_height:
                # Re-proposed by NEW-VIEW but already committed here: vote so others can finish it.
                if self.committed_hashes.get(height) == slot.hash:
                    progressed |= self._sign_prepare(height, slot)
                    if slot.prepare is not None:
                        slot.advance(SlotPhase.PREPARED)
                        self._sign_commit(height, slot)
                continue
            known, parent = self._parent_header(height)
            if not known:
                continue
            verdict = None
            if not slot.validated:
                verdict = self._validate(height, slot, parent)
                if verdict is None:
                    slot.advance(SlotPhase.VALIDATED)
            if verdict is None and not slot.signatures_known:
                verdict = self._vouched_or_checked(height, slot)
            if verdict is WAIT:
                continue
            if verdict is not None:
                self._reject(self.primary_id, "bad-proposal")
                self._start_view_change(self.view + 1)
                return True
            progressed |= self._sign_prepare(height, slot)
            if slot.prepare is not None:
                progressed |= self._check_prepared(height, slot)
        return progressed

    def _validate(self, height: int, slot: Slot, parent: BlockHeader | None) -> str | Wait | None:
        """None if the proposal is valid on `parent`, WAIT if it cannot be judged yet, else why it is bad."""
        header = slot.header
        verdict = check_header(self.rules, height, header, len(slot.entries), parent, self.now_ms)
        if verdict is not None:
            return verdict
        earlier = set()
        for h in range(self.last_applied_height + 1, height):
            if h in self.slots:
                earlier.update(self.slots[h].request_ids)
        reason, signatures_known = check_requests(
            slot.entries, slot.request_ids, self.committed_ids, earlier, self.pool, self._checks_signatures(), self.app)
        if reason is not None:
            return reason
        result = self.app.execute(parent, height, header.time_ms, slot.entries)
        if result is None:
            return WAIT
        if not execution_matches(header, result):
            return "wrong-execution"
        if signatures_known:
            slot.advance(SlotPhase.CHECKED)
        return None

    def _vouched_or_checked(self, height: int, slot: Slot) -> str | Wait | None:
        """None once the signatures of a validated slot's requests are known good, WAIT while this
        backup waits for vouchers, else why the proposal is bad.

        Vouchers: the primary's proposal and PREPAREs for the same block from f backups other than us.
        That is f + 1 validators, at least one honest; an honest primary proposes only requests it
        checked, and an honest backup prepares only requests it checked or saw vouched for, so by
        induction on time the first honest vote for any block followed a real check.
        """
        primary = self.primary_id
        vouchers = sum(1 for voter in self.tally.prepare_signers(height, slot.hash) if voter not in (self.me, primary))
        now = self.timeouts.clock_ms
        if vouchers < self.validators.f and not self._checks_signatures():
            if slot.vouch_deadline_ms is None:
                slot.vouch_deadline_ms = now + self.config.vouch_wait_applied_ms
            if now < slot.vouch_deadline_ms:
                return WAIT
            # The backups that check were too slow (or are down): check ourselves, and keep doing so
            # for a while instead of waiting in vain for each block.
            self.timeouts.start(Timer.CHECK_ALL_SIGNATURES, VOUCH_FALLBACK_HOLD_MS)
            self.vouch_fallbacks += 1
        if vouchers < self.validators.f:
            reason = check_signatures_unvouched(slot.entries, slot.request_ids, self.pool, self.app)
            if reason is not None:
                return reason
        mark_checked(slot.request_ids, self.pool)
        slot.advance(SlotPhase.CHECKED)
        return None

    def _sign_prepare(self, height: int, slot: Slot) -> bool:
        if not self._persist_vote(height, self.view, PHASE_PREPARE, slot.header, slot.entries):
            return False
        message = sign(Prepare(self.view, height, slot.hash, self.me), self.signing_key, self.chain_id)
        slot.sent_prepare(encode(message))
        slot.sent_ms = self.timeouts.clock_ms
        self.tally.add_own_prepare(self.me, height, slot.hash, message.signature, slot.prepare)
        self._send(None, slot.prepare)
        return True

    def _check_prepared(self, height: int, slot: Slot) -> bool:
        signers = self.tally.prepare_signers(height, slot.hash)
        if not self.validators.is_quorum(signers):
            return False
        slot.advance(SlotPhase.PREPARED)
        # A minimal quorum of the PREPAREs: what bounds a VIEW-CHANGE's size (messages.view_change_bytes_bound).
        kept = minimal_quorum(self.validators, sorted(signers))
        certificate = PreparedCertificate(
            self.view, slot.header,
            tuple(sorted((VoteSignature(v, self.tally.prepare_signature(height, v)) for v in kept), key=lambda s: s.validator)),
        )
        self.vote_log.record_certificate(certificate, slot.entries)
        self._sign_commit(height, slot)
        return True

    def _sign_commit(self, height: int, slot: Slot) -> None:
        if not self._persist_vote(height, self.view, PHASE_COMMIT, slot.header, slot.entries):
            return
        message = sign(Commit(self.view, height, slot.hash, self.me), self.signing_key, self.chain_id)
        slot.sent_commit(encode(message))
        slot.sent_ms = self.timeouts.clock_ms
        self.tally.add_own_commit(self.me, height, self.view, slot.hash, message.signature, slot.commit)
        self._send(None, slot.commit)

    def _try_commit(self) -> bool:
        progressed = False
        while True:
            height = self.last_applied_height + 1
            found = self.tally.commit_quorum(height)
            if found is None:
                return progressed
            view, header_hash, signers = found
            block = self.blocks.get(header_hash)
            if block is None:
                self._set_catch_up_target(height, signers)
                return progressed
            header, entries = block
            certificate = CommitCertificate(view, height, header_hash, tuple(sorted(
                (CommitSignature(v, self.tally.commit_signature(height, v)) for v in signers), key=lambda s: s.validator)))
            expected_prev = hash_of_header(self.last_applied_header) if self.last_applied_header is not None else ZERO_HASH
            if header.prev_hash != expected_prev:
                # More than f faulty validators signed a fork; never deliver it.
                self._reject(signers[0], "certified-fork")
                self.tally.forget_commits(height)
                return progressed
            slot = self.slots.get(height)
            known_ids = (slot.request_ids if slot is not None and slot.hash == header_hash and slot.entries is not None
                         else None)
            self._deliver(CommittedBlock(header, entries, certificate), known_ids)
            progressed = True

    def _deliver(self, block: CommittedBlock, request_ids: tuple[bytes, ...] | None = None) -> None:
        """Hand a certified block to the host; `request_ids` are its entries' ids if already known."""
        header = block.header
        height = header.height
        assert height == self.last_applied_height + 1, "blocks are delivered in height order"
        header_hash = hash_of_header(header)
        self._committed.append(block)
        self.last_applied_height = height
        self.last_applied_header = header
        self.committed_hashes[height] = header_hash
        # Needed only for heights a NEW-VIEW may re-propose: above the stable checkpoint, within a window.
        self.committed_hashes.pop(height - 2 * self.config.watermark_window, None)
        if request_ids is None:
            request_ids = tuple(codec.sha256(request) for request in block.entries)
        for request_id in request_ids:
            self.requests.committed(request_id)
            self.committed_ids[request_id] = None
        # Persisted so a restarted replica (or a whole restarted cluster) still refuses these requests.
        self._persist.append((height_key(KEY_COMMITTED, height), codec.pack(request_ids)))
        if height > self.config.committed_ids_heights_max:
            self._persist.append((height_key(KEY_COMMITTED, height - self.config.committed_ids_heights_max), None))
        while len(self.committed_ids) > self.config.committed_request_ids_max:
            self.committed_ids.popitem(last=False)
        self.tally.forget_height(height)
        for known_hash in [h for h, (hd, _) in self.blocks.items() if hd.height <= height]:
            del self.blocks[known_hash]
        slot = self.slots.get(height)
        if slot is not None and slot.hash != header_hash:
            del self.slots[height]
        elif slot is not None and slot.entries is None:
            slot.fill(block.entries)   # committed (certified) while we were fetching its body
            self.bodies.arrived(header_hash)
            self._proposal_queue = None
        if self.view_active:
            self.timeouts.stop(Timer.PROGRESS)
            self.failed_views = 0
        if height % self.config.checkpoint_interval == 0 and self.member:
            message = sign(Checkpoint(height, header_hash, self.me), self.signing_key, self.chain_id)
            data = encode(message)
            self.checkpoints.signed(height, data)
            self._record_checkpoint_vote(self.me, height, header_hash, message.signature)
            self._send(None, data)
        if self.catch_up_target <= height:
            self.timeouts.stop(Timer.CATCH_UP)
        self._note_reconfiguration(height, block.entries)
        following = self.schedule.config_at(height + 1)
        if following.epoch != self.epoch:
            self._enter_epoch(following, header_hash)
