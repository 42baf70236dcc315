"""The fair-share flood scenario of issue 15, over any submit path.

`flood_while_honest_commit` drives one participant flooding a node with submits while another
submits a few entries and waits for them to commit. It knows nothing of how the submits travel: the
in-process tests pass Daemon.submit, a real-process test over TLS can pass an RPC client's call.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from storage.entries import build_commit

# submit(entry, wait, timeout_s) -> receipt dict; raises on refusal (error_code tells the code).
Submit = Callable[[bytes, bool, float], Awaitable[dict]]


@dataclass
class FloodResult:
    flood_accepted: int = 0                 # flood submits the node took (pending or committed)
    flood_refused: Counter = field(default_factory=Counter)   # by error code
    flood_seconds: float = 0.0
    honest_receipts: list[dict] = field(default_factory=list)
    honest_errors: Counter = field(default_factory=Counter)


class Participant:
    """An admitted participant with its real key, numbering its nonces from the clock (unique per run)."""

    def __init__(self, participant_id: str, signing_key, chain_id: str, jurisdiction: str) -> None:
        self.id = participant_id
        self.key = signing_key
        self.chain_id = chain_id
        self.jurisdiction = jurisdiction
        self.nonce = int(time.time() * 1_000_000)

    def commit(self) -> bytes:
        self.nonce += 1
        return build_commit(self.key, self.id, self.chain_id, os.urandom(32), "credit-report", self.jurisdiction,
                            self.nonce, int(time.time() * 1000))


async def flood_while_honest_commit(flood_submit: Submit, honest_submit: Submit, error_code,
                                    flooder: Participant, honest: Participant, *, flood_count: int,
                                    flood_tasks: int = 8, honest_count: int = 10,
                                    honest_timeout_s: float = 30.0) -> FloodResult:
    """`flood_tasks` tasks send `flood_count` of the flooder's entries (without waiting for commits,
    next one as soon as the node answers) while `honest_count` of the honest participant's entries are
    submitted with wait. error_code(exc) is the refusal code of an exception a submit raised, or None
    for one that is not a refusal (re-raised). The caller judges the result."""
    result = FloodResult()
    # Nonces in send order per task would be needed only above the ledger's 256-nonce window; the
    # door and the rate limit answer in microseconds, so entries are built up front.
    flood_entries = [flooder.commit() for _ in range(flood_count)]
    honest_entries = [honest.commit() for _ in range(honest_count)]
    queue = iter(flood_entries)

    async def flood_lane() -> None:
        for entry in queue:
            try:
                await flood_submit(entry, False, 0)
                result.flood_accepted += 1
            except Exception as exc:
                code = error_code(exc)
                if code is None:
                    raise
                result.flood_refused[code] += 1
            await trio.sleep(0)

    async def honest_one(entry: bytes) -> None:
        try:
            result.honest_receipts.append(await honest_submit(entry, True, honest_timeout_s))
        except Exception as exc:
            code = error_code(exc)
            if code is None:
                raise
            result.honest_errors[code] += 1

    async def flood() -> None:
        started = time.monotonic()
        async with trio.open_nursery() as lanes:
            for _ in range(flood_tasks):
                lanes.start_soon(flood_lane)
        result.flood_seconds = time.monotonic() - started

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await trio.sleep(0.05)   # the flood is under way before the honest entries arrive
        for entry in honest_entries:
            nursery.start_soon(honest_one, entry)
    return result
