"""The durable vote log (consensus/vote_log.py) alone: what each record writes, the vote guard that
never contradicts a past vote, bodies written once and deleted when nothing names them, and a
restore that reads back what was written."""

from consensus import codec
from consensus.block import ZERO_HASH, BlockHeader, entries_hash
from consensus.messages import PreparedCertificate, VoteSignature
from consensus.messages import header_hash as hash_of_header
from consensus.vote_log import (
    KEY_CERT, KEY_COMMITTED, KEY_VIEW, KEY_VOTE, PHASE_COMMIT, PHASE_PRE_PREPARE, PHASE_PREPARE, VoteLog, body_key,
    height_key, restore_committed_ids, restore_view,
)
from tests.support.replica_cluster import CHAIN, make_validators


def header(height: int, entries: tuple[bytes, ...], salt: bytes = b"") -> BlockHeader:
    return BlockHeader(
        chain_id=CHAIN, height=height, prev_hash=ZERO_HASH, time_ms=1, entries_hash=entries_hash(entries),
        entry_count=len(entries), tree_size=len(entries), tree_root=codec.sha256(salt), results_hash=ZERO_HASH,
        validator_set_hash=ZERO_HASH,
    )


class Store:
    """A persist sink that applies each change to a dict, as the host's one synced batch would."""

    def __init__(self):
        self.data: dict[bytes, bytes] = {}
        self.writes: list[tuple[bytes, bytes | None]] = []

    def __call__(self, key, value):
        self.writes.append((key, value))
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value


def test_a_vote_persists_its_body_once_and_never_contradicts_itself():
    store = Store()
    log = VoteLog(store)
    entries = (b"a", b"b")
    block = header(3, entries)
    assert log.record_vote(3, 1, PHASE_PREPARE, block, entries)
    assert [k for k, _ in store.writes] == [body_key(3, hash_of_header(block)), height_key(KEY_VOTE, 3)]
    store.writes.clear()
    assert log.record_vote(3, 1, PHASE_PRE_PREPARE, block, entries), "an earlier phase of the same vote: fine"
    assert store.writes == [], "nothing to write for it"
    assert log.record_vote(3, 1, PHASE_COMMIT, block, entries)
    assert [k for k, _ in store.writes] == [height_key(KEY_VOTE, 3)], "the body is not written again"
    other = header(3, (b"c",), salt=b"other")
    assert not log.record_vote(3, 1, PHASE_PREPARE, other, (b"c",)), "another block in the same view"
    assert not log.record_vote(3, 0, PHASE_PREPARE, block, entries), "an older view"
    assert log.votes[3] == (1, PHASE_COMMIT, hash_of_header(block))


def test_a_new_views_vote_deletes_the_body_nothing_names_any_more():
    store = Store()
    log = VoteLog(store)
    first, second = header(2, (b"a",)), header(2, (b"b",), salt=b"2")
    log.record_vote(2, 0, PHASE_PREPARE, first, (b"a",))
    assert log.record_vote(2, 1, PHASE_PREPARE, second, (b"b",))
    assert body_key(2, hash_of_header(first)) not in store.data
    assert body_key(2, hash_of_header(second)) in store.data
    assert log.body(2, hash_of_header(first)) is None and log.body(2, hash_of_header(second)) == (b"b",)


def test_a_certificate_keeps_its_body_alive_and_a_checkpoint_deletes_everything_below():
    store = Store()
    log = VoteLog(store)
    certified, voted = header(4, (b"x",)), header(4, (b"y",), salt=b"y")
    certificate = PreparedCertificate(0, certified, (VoteSignature("v0", b"s" * 64),))
    log.record_vote(4, 0, PHASE_PREPARE, certified, (b"x",))
    log.record_certificate(certificate, (b"x",))
    log.record_vote(4, 1, PHASE_PREPARE, voted, (b"y",))
    assert log.servable(hash_of_header(certified)) == (certified, (b"x",)), "the certificate still names it"
    assert log.servable(hash_of_header(voted)) == (voted, (b"y",))
    log.record_vote(9, 1, PHASE_PREPARE, header(9, ()), ())
    log.forget_through(4)
    assert set(log.votes) == {9} and not log.certs and set(log.bodies) == {9}
    assert all(not key.endswith((4).to_bytes(8, "big")) for key in store.data if key.startswith((KEY_VOTE, KEY_CERT)))
    assert [k for k in store.data if k.startswith(b"body/")] == [body_key(9, hash_of_header(header(9, ())))]


def test_restore_reads_back_votes_certificates_and_bodies():
    vset, _ = make_validators()
    store = Store()
    log = VoteLog(store)
    block = header(5, (b"p", b"q"))
    log.record_vote(5, 2, PHASE_COMMIT, block, (b"p", b"q"))
    log.record_certificate(PreparedCertificate(2, block, (VoteSignature("v1", b"t" * 64),)), (b"p", b"q"))
    log.record_view(2, True)
    restored = VoteLog(Store())
    restored.restore_bodies(store.data)
    assert restored.servable(hash_of_header(block)) is None, "no header until a record names the body"
    for key, value in sorted(store.data.items()):
        if key.startswith(KEY_VOTE):
            assert restored.restore_vote(key, value) == (5, 2, block, (b"p", b"q"))
        elif key.startswith(KEY_CERT):
            restored.restore_certificate(key, value, vset, CHAIN)
    assert restored.votes == log.votes and restored.certs == log.certs
    assert restored.servable(hash_of_header(block)) == (block, (b"p", b"q"))
    assert restore_view(store.data) == (2, True) and restore_view({}) is None
    assert KEY_VIEW in store.data


def test_a_vote_for_a_header_naming_its_epoch_restores_that_header():
    store = Store()
    block = BlockHeader(**{**header(6, (b"e",)).to_wire(), "epoch": 1})
    VoteLog(store).record_vote(6, 0, PHASE_PREPARE, block, (b"e",))
    restored = VoteLog(Store())
    restored.restore_bodies(store.data)
    assert restored.restore_vote(height_key(KEY_VOTE, 6), store.data[height_key(KEY_VOTE, 6)]) == (6, 0, block, (b"e",))
    assert restored.votes[6] == (0, PHASE_PREPARE, block.hash()) and block.epoch == 1


def test_committed_ids_are_restored_only_for_applied_heights_in_height_order():
    persisted = {height_key(KEY_COMMITTED, h): codec.pack([bytes([h]) * 32]) for h in (3, 1, 2)}
    assert restore_committed_ids(persisted, applied_height=2) == [bytes([1]) * 32, bytes([2]) * 32]
