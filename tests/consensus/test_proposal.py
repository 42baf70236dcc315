"""The proposal rules (consensus/proposal.py) alone: each header rule in its order, WAIT before the
first tick, duplicate and invalid requests, and what a replica that leaves signatures to its vouchers
still checks."""

from dataclasses import replace

from consensus import codec
from consensus.application import ExecutionResult
from consensus.block import ZERO_HASH
from consensus.messages import header_hash
from consensus.proposal import ProposalRules, build_header, check_header, check_requests, execution_matches
from consensus.request_pool import PendingRequest
from consensus.slot import WAIT

RULES = ProposalRules(chain_id="c", validator_set_hash=b"v" * 32, batch_requests_max=2, clock_skew_ms_max=1_000)
RESULT = ExecutionResult(tree_size=1, tree_root=b"r" * 32, results_hash=b"s" * 32)


class CountingApp:
    def __init__(self):
        self.full, self.shape = [], []

    def check_request(self, request):
        self.full.append(request)
        return None if request.startswith(b"ok:") else "not-ok"

    def check_request_shape(self, request):
        self.shape.append(request)
        return None if request.startswith(b"ok:") else "not-ok"


def test_header_rules_in_order():
    parent = build_header(RULES, 1, None, 100, (b"ok:a",), RESULT)
    good = build_header(RULES, 2, parent, 200, (b"ok:b",), RESULT)
    assert good.prev_hash == header_hash(parent) and parent.prev_hash == ZERO_HASH
    assert check_header(RULES, 2, good, 1, parent, now_ms=200) is None
    assert check_header(RULES, 3, good, 1, parent, 200) == "wrong-height"
    assert check_header(RULES, 2, replace(good, chain_id="x"), 1, parent, 200) == "wrong-height"
    assert check_header(RULES, 2, replace(good, validator_set_hash=b"w" * 32), 1, parent, 200) == "wrong-validator-set"
    assert check_header(RULES, 2, replace(good, epoch=1), 1, parent, 200) == "wrong-epoch"
    assert check_header(RULES, 2, good, 1, None, 200) == "does-not-chain"
    assert check_header(RULES, 2, good, 3, parent, 200) == "batch-too-large"
    assert check_header(RULES, 2, replace(good, time_ms=50), 1, parent, 200) == "time-before-parent"
    assert check_header(RULES, 2, good, 1, parent, None) is WAIT, "no time known before the first tick"
    assert check_header(RULES, 2, replace(good, time_ms=1_300), 1, parent, 200) == "time-in-future"


def test_headers_name_the_rules_epoch_and_another_epoch_is_refused():
    # Positional arguments as before: the epoch is last, 0 by default.
    assert ProposalRules("c", b"v" * 32, 2, 1_000) == RULES and RULES.epoch == 0
    rules = replace(RULES, epoch=3)
    parent = build_header(rules, 1, None, 100, (b"ok:a",), RESULT)
    good = build_header(rules, 2, parent, 200, (b"ok:b",), RESULT)
    assert (parent.epoch, good.epoch) == (3, 3) and good.to_wire()["epoch"] == 3
    assert check_header(rules, 2, good, 1, parent, 200) is None
    assert check_header(rules, 2, replace(good, epoch=2), 1, parent, 200) == "wrong-epoch"
    assert check_header(RULES, 2, good, 1, parent, 200) == "wrong-epoch", "epoch 0 refuses an epoch-3 header"
    # The set is checked first: a header of another epoch and another set is refused for its set.
    other = replace(good, epoch=2, validator_set_hash=b"w" * 32)
    assert check_header(rules, 2, other, 1, parent, 200) == "wrong-validator-set"


def test_duplicates_within_the_block_in_flight_or_committed_are_refused():
    app = CountingApp()
    ids = tuple(codec.sha256(r) for r in (b"ok:a", b"ok:a"))
    assert check_requests((b"ok:a", b"ok:a"), ids, {}, set(), {}, True, app)[0] == "duplicate-request"
    one = (codec.sha256(b"ok:a"),)
    assert check_requests((b"ok:a",), one, {}, set(one), {}, True, app)[0] == "duplicate-request"
    assert check_requests((b"ok:a",), one, {one[0]: None}, set(), {}, True, app)[0] == "duplicate-request"


def test_a_checking_replica_checks_what_it_does_not_know_valid_and_marks_it():
    app = CountingApp()
    entries = (b"ok:known", b"ok:pooled", b"ok:new")
    ids = tuple(codec.sha256(r) for r in entries)
    pool = {ids[0]: PendingRequest(entries[0], 0, checked=True), ids[1]: PendingRequest(entries[1], 0, checked=False)}
    assert check_requests(entries, ids, {}, set(), pool, True, app) == (None, True)
    assert app.full == [b"ok:pooled", b"ok:new"] and pool[ids[1]].checked
    assert check_requests((b"bad",), (codec.sha256(b"bad"),), {}, set(), {}, True, app) == ("invalid-request", True)


def test_a_vouched_replica_checks_only_the_shape_of_requests_it_never_saw():
    app = CountingApp()
    entries = (b"ok:pooled", b"ok:new")
    ids = tuple(codec.sha256(r) for r in entries)
    pool = {ids[0]: PendingRequest(entries[0], 0, checked=False)}
    assert check_requests(entries, ids, {}, set(), pool, False, app) == (None, False)
    assert app.full == [] and app.shape == [b"ok:new"] and not pool[ids[0]].checked
    assert check_requests((b"junk",), (codec.sha256(b"junk"),), {}, set(), {}, False, app)[0] == "invalid-request"


def test_execution_must_match_the_header():
    header = build_header(RULES, 1, None, 100, (b"ok:a",), RESULT)
    assert execution_matches(header, RESULT)
    assert not execution_matches(header, replace(RESULT, tree_size=2))


def test_without_enough_vouchers_every_signature_not_known_good_is_checked():
    from consensus.proposal import check_signatures_unvouched, mark_checked
    app = CountingApp()
    entries = (b"ok:known", b"ok:unknown")
    ids = tuple(codec.sha256(r) for r in entries)
    pool = {ids[0]: PendingRequest(entries[0], 0, checked=True), ids[1]: PendingRequest(entries[1], 0, checked=False)}
    assert check_signatures_unvouched(entries, ids, pool, app) is None and app.full == [b"ok:unknown"]
    assert check_signatures_unvouched((b"bad",), (codec.sha256(b"bad"),), pool, app) == "invalid-request"
    mark_checked(ids, pool)
    assert all(p.checked for p in pool.values())
