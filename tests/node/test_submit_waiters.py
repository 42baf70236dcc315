"""node/submit_waiters.py alone, without a daemon: who waits for which entry, what wakes each kind
of submit (commit, refusal, the node stopping, its own timeout), and that every waiter leaves the
table when its submit ends, however it ended. Times run on trio's autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.submit_waiters import ClientRequest, SubmitWaiters


def receipt_of(height: int):
    return lambda index: {"status": "committed", "height": height, "leaf_index": index}


async def test_a_commit_wakes_every_waiter_of_its_entries_with_the_entrys_receipt(autojump_clock):
    waiters = SubmitWaiters()
    answers = {}

    async def submit(name: str, entry: bytes) -> None:
        with waiters.waiting(entry) as waiter:
            answers[name] = await waiter.wait(60)

    async with trio.open_nursery() as nursery:
        for name, entry in (("first", b"a"), ("again", b"a"), ("other", b"b"), ("later", b"c")):
            nursery.start_soon(submit, name, entry)
        await trio.testing.wait_all_tasks_blocked()
        assert len(waiters) == 4
        asked = []
        waiters.committed([b"x", b"b", b"a"], lambda index: asked.append(index) or receipt_of(7)(index))
        await trio.testing.wait_all_tasks_blocked()
        assert asked == [1, 2]              # a receipt only for the entries someone waits for
        assert answers == {"first": {"status": "committed", "height": 7, "leaf_index": 2},
                           "again": {"status": "committed", "height": 7, "leaf_index": 2},
                           "other": {"status": "committed", "height": 7, "leaf_index": 1}}
        assert len(waiters) == 1            # "later" still waits
        waiters.committed([b"c"], receipt_of(8))
    assert answers["later"]["height"] == 8 and len(waiters) == 0


async def test_a_waiter_whose_time_runs_out_gets_nothing_and_leaves(autojump_clock):
    waiters = SubmitWaiters()
    with waiters.waiting(b"a") as waiter:
        started = trio.current_time()
        assert await waiter.wait(2.5) is None
        assert trio.current_time() - started == pytest.approx(2.5)
        assert await waiter.wait(-1) is None          # a negative timeout is no wait at all
    assert len(waiters) == 0
    waiters.committed([b"a"], receipt_of(1))           # nobody left to wake: nothing happens


async def test_stopping_releases_every_waiter_without_a_receipt(autojump_clock):
    waiters = SubmitWaiters()
    ended = []

    async def submit(entry: bytes) -> None:
        with waiters.waiting(entry) as waiter:
            ended.append((await waiter.wait(60), waiter.released))

    async with trio.open_nursery() as nursery:
        for entry in (b"a", b"a", b"b"):
            nursery.start_soon(submit, entry)
        await trio.testing.wait_all_tasks_blocked()
        assert waiters.release_all() == 3
    assert ended == [(None, True)] * 3 and len(waiters) == 0
    assert trio.current_time() == 0                    # woken at once, not at their timeout


async def test_the_cores_verdict_wakes_a_submit_that_does_not_wait_either_way_and_one_that_waits_if_refused():
    taken = ClientRequest(b"a", b"id-a", taken=trio.Event())
    taken.decided(None)
    assert taken.taken.is_set() and taken.refusal is None

    refused = ClientRequest(b"b", b"id-b", taken=trio.Event())
    refused.decided("bad-signature")
    assert refused.taken.is_set() and refused.refusal == "bad-signature"

    waiters = SubmitWaiters()
    with waiters.waiting(b"c") as waiter:
        pooled = ClientRequest(b"c", b"id-c", waiter)
        pooled.decided(None)                           # taken into the pool: keep waiting for the commit
        assert not waiter.event.is_set()
        pooled.decided("request-pool-full")
        assert waiter.event.is_set() and waiter.receipt is None and not waiter.released


async def test_a_cancelled_submit_leaves_the_table():
    waiters = SubmitWaiters()
    with trio.CancelScope() as scope:
        with waiters.waiting(b"a") as waiter:
            scope.cancel()
            await waiter.wait(60)
    assert scope.cancelled_caught and len(waiters) == 0
    waiters.remove(b"a", waiter)                       # removing twice is harmless
