"""A slot's phase (consensus/slot.py): it only moves up, the flags the replica reads follow from it,
and `inconsistency` names a phase that disagrees with the slot's messages and body."""

from consensus import codec
from consensus.block import ZERO_HASH, BlockHeader, entries_hash
from consensus.slot import WAIT, Slot, SlotPhase, Wait


def header(entries=(b"a",)) -> BlockHeader:
    return BlockHeader(
        chain_id="c", height=1, prev_hash=ZERO_HASH, time_ms=1, entries_hash=entries_hash(entries),
        entry_count=len(entries), tree_size=len(entries), tree_root=ZERO_HASH, results_hash=ZERO_HASH,
        validator_set_hash=ZERO_HASH,
    )


def test_a_slot_without_its_body_awaits_it_and_filling_it_makes_it_proposed():
    slot = Slot(header(), None, b"h")
    assert slot.phase is SlotPhase.AWAITING_BODY and slot.request_ids == ()
    assert slot.inconsistency() is None
    slot.fill((b"a",))
    assert slot.phase is SlotPhase.PROPOSED and slot.request_ids == (codec.sha256(b"a"),)
    assert slot.inconsistency() is None


def test_phases_only_move_up_and_the_flags_follow():
    slot = Slot(header(), (b"a",), b"h")
    assert (slot.validated, slot.signatures_known, slot.prepared) == (False, False, False)
    slot.advance(SlotPhase.VALIDATED)
    assert slot.validated and not slot.signatures_known
    slot.advance(SlotPhase.CHECKED)
    slot.advance(SlotPhase.VALIDATED)   # e.g. the caller of _validate, after _validate found it checked
    assert slot.phase is SlotPhase.CHECKED and slot.signatures_known
    slot.sent_prepare(b"prepare")
    assert slot.phase is SlotPhase.PREPARE_SENT and not slot.prepared
    slot.advance(SlotPhase.PREPARED)
    slot.sent_commit(b"commit")
    assert slot.phase is SlotPhase.COMMIT_SENT and slot.prepared and slot.inconsistency() is None


def test_a_committed_block_re_proposed_goes_from_proposed_to_prepared_at_once():
    slot = Slot(header(), (b"a",), b"h")
    slot.sent_prepare(b"prepare")
    slot.advance(SlotPhase.PREPARED)
    assert slot.prepared and slot.validated, "past VALIDATED: the replica never asks again"
    assert slot.inconsistency() is None


def test_inconsistency_names_a_phase_that_disagrees_with_the_slot():
    slot = Slot(header(), (b"a",), b"h")
    slot.phase = SlotPhase.PREPARED
    assert "PREPARE missing" in slot.inconsistency()
    slot = Slot(header(), (b"a",), b"h")
    slot.commit = b"commit"
    assert "COMMIT present" in slot.inconsistency()
    slot = Slot(header(), (b"a",), b"h")
    slot.entries = None
    assert "entries missing" in slot.inconsistency()


def test_wait_is_not_a_reason_code():
    assert isinstance(WAIT, Wait) and not isinstance(WAIT, str)
    assert WAIT != "wait"
