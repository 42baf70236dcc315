"""What the validators spend during a bench phase's counted window (issue 19).

The load generator samples at the start and the end of each phase's counted window:

- CPU: user + system seconds of every validator process together, from /proc/PID/stat
  (supervisor.process_usage), so a figure covers the nodes and not the load generator;
- signature checks: the sum of the validators' `bayledger_signature_checks_total` metric
  (consensus.codec counts each Ed25519 verification), scraped over plain HTTP.

Dividing the difference by the commitments committed in the same window (the ok replies counted
in it) gives CPU microseconds and signature checks per commitment. Between phases, `settle` waits
until every validator has applied the same height with an empty mempool, so one phase's backlog
is not paid for in the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from node.address import Address

from .supervisor import process_usage

SIGNATURE_CHECKS_METRIC = "bayledger_signature_checks_total"
MEMPOOL_METRIC = "bayledger_mempool_size"
HEIGHT_METRIC = "bayledger_height"
scrape_timeout_s = 2.0          # a node that does not answer its metrics in this long: no figure
scrape_bytes_max = 1 << 20      # a node's metrics text is a few KiB
settle_timeout_s = 10.0         # longest wait for the validators to empty their mempools and agree
settle_poll_s = 0.1
MICROSECONDS_PER_SECOND = 1_000_000


@dataclass(frozen=True)
class UsageSample:
    at: float                       # trio clock, seconds
    cpu_s: float | None             # all validators together; None if any process could not be read
    signature_checks: int | None    # all validators together; None if any metrics endpoint failed


@dataclass(frozen=True)
class Validator:
    name: str
    pid: int
    metrics: str                    # HOST:PORT of its Prometheus endpoint


def validators_of(plan: dict) -> list[Validator]:
    """The plan's `validators` ({name, pid, metrics} each); none in a plan without them (tests)."""
    return [Validator(v["name"], int(v["pid"]), v["metrics"]) for v in plan.get("validators", [])]


def parse_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition, by metric name."""
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


async def scrape(address: str) -> dict[str, float] | None:
    """GET /metrics from one node, parsed; None if it does not answer 200 within scrape_timeout_s."""
    parsed = Address.parse(address)
    body = bytearray()
    with trio.move_on_after(scrape_timeout_s):
        try:
            stream = await trio.open_tcp_stream(parsed.host, parsed.port)
            async with stream:
                await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                while len(body) <= scrape_bytes_max and (chunk := await stream.receive_some(65536)):
                    body += chunk
        except (OSError, trio.BrokenResourceError):
            return None
        head, _, text = bytes(body).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200"):
            return None
        return parse_metrics(text.decode("utf-8", "replace"))
    return None


async def scrape_all(validators: list[Validator]) -> list[dict[str, float] | None]:
    """Every validator's metrics, scraped concurrently, in the order given."""
    answers: list[dict[str, float] | None] = [None] * len(validators)

    async def one(index: int) -> None:
        answers[index] = await scrape(validators[index].metrics)

    async with trio.open_nursery() as nursery:
        for index in range(len(validators)):
            nursery.start_soon(one, index)
    return answers


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of all `pids` together; None if any cannot be read (a partial sum
    would read as a saving)."""
    total = 0.0
    for pid in pids:
        usage = process_usage(pid)
        if usage is None:
            return None
        total += usage["cpu_s"]
    return total


def metric_sum(answers: list[dict[str, float] | None], name: str) -> float | None:
    if any(answer is None or name not in answer for answer in answers):
        return None
    return sum(answer[name] for answer in answers)


async def sample(validators: list[Validator]) -> UsageSample:
    """The clock, the validators' CPU and their signature checks now (CPU first: it is read at once,
    the metrics a few milliseconds later)."""
    at = trio.current_time()
    if not validators:
        return UsageSample(at, None, None)
    cpu_s = cpu_seconds([v.pid for v in validators])
    checks = metric_sum(await scrape_all(validators), SIGNATURE_CHECKS_METRIC)
    return UsageSample(at, cpu_s, None if checks is None else int(checks))


def is_settled(answers: list[dict[str, float] | None]) -> bool:
    """Every validator answered, holds nothing in its mempool, and all are at the same height."""
    if any(answer is None for answer in answers):
        return False
    heights = {answer.get(HEIGHT_METRIC) for answer in answers}
    return len(heights) == 1 and all(answer.get(MEMPOOL_METRIC) == 0 for answer in answers)


async def settle(validators: list[Validator]) -> float | None:
    """Wait until the validators are settled (is_settled), at most settle_timeout_s; the seconds
    waited, or None if they did not settle in time."""
    start = trio.current_time()
    if not validators:
        return 0.0
    with trio.move_on_after(settle_timeout_s):
        while not is_settled(await scrape_all(validators)):
            await trio.sleep(settle_poll_s)
        return round(trio.current_time() - start, 2)
    return None


def per_commitment(before: float | None, after: float | None, commitments: int) -> float | None:
    """(after - before) / commitments; None if either reading is missing or nothing was committed."""
    if before is None or after is None or commitments <= 0:
        return None
    return (after - before) / commitments


def cpu_us_per_commitment(first: UsageSample | None, last: UsageSample | None, commitments: int) -> float | None:
    """Validator CPU microseconds per commitment committed between the two samples."""
    if first is None or last is None:
        return None
    seconds = per_commitment(first.cpu_s, last.cpu_s, commitments)
    return None if seconds is None else round(seconds * MICROSECONDS_PER_SECOND, 1)


def signature_checks_per_commitment(first: UsageSample | None, last: UsageSample | None,
                                    commitments: int) -> float | None:
    """Ed25519 verifications by all validators per commitment committed between the two samples."""
    if first is None or last is None:
        return None
    checks = per_commitment(first.signature_checks, last.signature_checks, commitments)
    return None if checks is None else round(checks, 2)
