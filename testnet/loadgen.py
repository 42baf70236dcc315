"""The benchmark's load generator: its own process, many connections, pre-signed requests.

    python -m testnet.loadgen --plan PLAN.json --out RESULT.json

PLAN names the chain, the nodes' RPC addresses, the participant key files,
the phase durations and the validators (pid and metrics address of each, for
testnet/usage.py). Every entry and query is built and signed before its
phase starts, and each request's method and params are msgpack-encoded once,
so during a phase the generator only frames and sends bytes and the nodes,
not the client, are what is measured. Phases:

1. saturate: closed loop, `connections` x `window` submits with wait=true in
   flight across all nodes; committed receipts per second after a warm-up.
2. capacity steps at 20 %, 30 %, ... 100 % of that, stopping after the first
   whose p99 exceeds 250 ms, then one refinement step for the 100 ms bound
   (testnet/capacity.py), and 1,000/s when that is below saturation and no
   step measured it: open loop, one submit every 1/R s whatever the replies;
   latency runs from the *scheduled* send time to the committed receipt, so a
   stalled node cannot hide its queueing. Before each, the validators settle
   (same height, empty mempools: testnet/usage.py).
3. match: closed loop of signed match-proof queries against one node.

Each phase's counted window is sampled for the validators' CPU and signature
checks (testnet/usage.py): per committed commitment, keyed like the latency.

A live progress line goes to stderr; the result JSON holds every phase's
counts and exact latency percentiles.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node import wire
from node.address import Address
from node.client import Credentials

from . import capacity, rpc, usage
from .stats import summarize_ms
from .usage import UsageSample, Validator

connections_max = 256               # at most this many TCP connections (the node's rpc_connections_max)
window_max = 256                    # outstanding calls per connection in the closed loops
in_flight_max = 20_000              # open loop: beyond this the node is overloaded; later sends count as dropped
submit_wait_s = 30                  # how long a submit may wait for its commit
drain_timeout_s = 35                # after a phase, wait this long for late replies
progress_interval_s = 0.5
send_tick_s = 0.001                 # open loop: requests falling due within this long go out in one write
warmup_fraction = 0.2               # of a closed-loop phase's planned length, not counted in its rate
match_queries_max = 90_000          # below one participant's share of a node's query-id memory (100,000)
TARGET_RATE_PER_S = 1000.0          # the latency target is stated at this rate: measured too when below saturation
SATURATE_KEY = "saturate"           # the saturation phase's key in the per-phase figures (the others: their rate)


@dataclass
class PhaseResult:
    name: str
    offered_per_s: float | None
    duration_s: float
    sent: int = 0
    ok: int = 0
    dropped: int = 0                 # open loop: not sent because in_flight_max calls were waiting
    errors: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    counted_ok: int = 0              # ok replies inside the measured window
    measured_s: float = 0.0
    # The validators' usage at the counted window's start and end (None: not sampled, e.g. a closed
    # loop whose requests ran out during its warm-up).
    window_first: UsageSample | None = None
    window_last: UsageSample | None = None

    @property
    def rate_per_s(self) -> float:
        return self.counted_ok / self.measured_s if self.measured_s > 0 else 0.0

    @property
    def failed(self) -> int:
        """Scheduled but not committed: errors (no answer included) and client-side drops."""
        return sum(self.errors.values()) + self.dropped

    @property
    def cpu_us_per_commitment(self) -> float | None:
        return usage.cpu_us_per_commitment(self.window_first, self.window_last, self.counted_ok)

    @property
    def signature_checks_per_commitment(self) -> float | None:
        return usage.signature_checks_per_commitment(self.window_first, self.window_last, self.counted_ok)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "offered_per_s": self.offered_per_s,
            "duration_s": round(self.duration_s, 2),
            "sent": self.sent,
            "ok": self.ok,
            "dropped": self.dropped,
            "errors": dict(self.errors),
            "rate_per_s": round(self.rate_per_s, 1),
            "latency": summarize_ms(self.latencies_s),
            "counted_ok": self.counted_ok,
            "measured_s": round(self.measured_s, 3),
            "cpu_us_per_commitment": self.cpu_us_per_commitment,
            "signature_checks_per_commitment": self.signature_checks_per_commitment,
        }


class Progress:
    """One line on stderr, rewritten in place while a phase runs."""

    def __init__(self, result: PhaseResult, in_flight: list[int]):
        self.result = result
        self.in_flight = in_flight

    async def run(self, start: float) -> None:
        last_ok, last_t = 0, start
        while True:
            await trio.sleep(progress_interval_s)
            now = trio.current_time()
            r = self.result
            rate = (r.ok - last_ok) / (now - last_t)
            last_ok, last_t = r.ok, now
            errors = sum(r.errors.values())
            sys.stderr.write(
                f"\r  [{r.name:<12}] {now - start:5.1f}/{r.duration_s:.0f}s  sent {r.sent:>8}  ok {r.ok:>8}  "
                f"{rate:8.0f}/s  in flight {self.in_flight[0]:>6}  errors {errors:>5}  dropped {r.dropped:>5} "
            )
            sys.stderr.flush()


def _finish_line() -> None:
    sys.stderr.write("\n")
    sys.stderr.flush()


def _answers(reader: wire.ResponseReader, sent_at: dict[int, float], accept):
    """(outcome, time sent or scheduled) of each answer to one of our calls among the responses
    read; the call leaves `sent_at`."""
    for msgid, error, reply in reader.responses():
        started = sent_at.pop(msgid, None)
        if started is None:
            continue   # not an answer to one of ours
        if error is None:
            yield accept(reply), started
        else:
            yield str(error.get("code") if isinstance(error, dict) else error), started


def _record(result: PhaseResult, outcome: str, start: float, window: tuple[float, float], latency_from: float) -> None:
    now = trio.current_time()
    if outcome == "ok":
        result.ok += 1
        result.latencies_s.append(now - latency_from)
        if window[0] <= now <= window[1]:
            result.counted_ok += 1
    else:
        result.errors[outcome] += 1


async def closed_loop(name: str, addresses: list[str], queues: list[list[bytes]], accept, duration_s: float,
                      window: int, ca_file: str | None = None,
                      credentials: list[Credentials] | None = None,
                      validators: list[Validator] | None = None) -> PhaseResult:
    """One connection per queue with `window` requests outstanding on each: every reply is answered
    with the queue's next request, all of one read's replies with one write. Queue i goes to
    addresses[i % len(addresses)]. No task or event per request: the load generator shares the
    machine with the nodes, so its own cost per request is kept small.

    The rate counts the ok replies after a warm-up of warmup_fraction of the phase, until the
    phase ends or the first queue runs out of pre-signed requests, whichever comes first: after
    that the load is no longer full, and counting the idle rest of the phase would understate the
    rate. The validators' usage is sampled at that window's start and end, and the window counted
    is exactly the one sampled. If the queues run out during the warm-up, the window is the last
    (1 - warmup_fraction) of the time they lasted, unsampled."""
    result = PhaseResult(name=name, offered_per_s=None, duration_s=duration_s)
    in_flight = [0]
    streams = []
    for index in range(len(queues)):
        address = Address.parse(addresses[index % len(addresses)])
        # TLS with the network's CA, authenticated as the lane's participant (before the clock starts:
        # 64 handshakes on a busy host can outlast the warm-up).
        streams.append(await rpc.open_stream(address.host, address.port, ca_file,
                                             credentials[index] if credentials else None))
    start = trio.current_time()
    stop_at = start + duration_s
    warm_until = start + duration_s * warmup_fraction
    ran_dry_at: list[float] = []      # when a queue first had fewer requests left than were wanted
    ran_dry = trio.Event()
    samples: list[UsageSample] = []   # at the counted window's start and end
    ok_at: list[float] = []           # when each ok reply came
    measured = (start, math.inf)      # every ok reply is recorded; the window is settled at the end

    async def lane(stream: trio.abc.Stream, queue: list[bytes]) -> None:
        cursor = iter(queue)
        msgids = itertools.count()
        sent_at: dict[int, float] = {}
        reader = wire.ResponseReader(rpc.response_bytes_max)

        def requests(count: int) -> bytes:
            if trio.current_time() >= stop_at:
                return b""
            now = trio.current_time()
            parts = []
            for packed in itertools.islice(cursor, count):   # pre-signed requests may run out: fewer
                msgid = next(msgids)
                sent_at[msgid] = now
                parts.append(wire.encode_packed_request(msgid, packed))
            if len(parts) < count and not ran_dry_at:
                ran_dry_at.append(now)
                ran_dry.set()
            result.sent += len(parts)
            in_flight[0] += len(parts)
            return b"".join(parts)

        try:
            data = requests(window)
            while data or sent_at:
                if data:
                    await stream.send_all(data)
                received = await stream.receive_some(wire.read_chunk_bytes_max)
                if not received:
                    raise trio.BrokenResourceError("node closed the connection")
                reader.feed(received)
                answered = 0
                for outcome, started in _answers(reader, sent_at, accept):
                    _record(result, outcome, start, measured, started)
                    if outcome == "ok":
                        ok_at.append(trio.current_time())
                    answered += 1
                in_flight[0] -= answered
                data = requests(answered)
        except (trio.BrokenResourceError, trio.ClosedResourceError, wire.WireError):
            result.errors["connection-lost"] += len(sent_at)
            in_flight[0] -= len(sent_at)
            sent_at.clear()
        finally:
            await trio.aclose_forcefully(stream)

    async def sample_window() -> None:
        with trio.move_on_at(warm_until):
            await ran_dry.wait()
        if ran_dry.is_set():
            return
        samples.append(await usage.sample(validators or []))
        with trio.move_on_at(stop_at):
            await ran_dry.wait()
        samples.append(await usage.sample(validators or []))

    progress = Progress(result, in_flight)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run, start)
        nursery.start_soon(sample_window)
        with trio.move_on_after(duration_s + drain_timeout_s):
            async with trio.open_nursery() as lanes:
                for stream, queue in zip(streams, queues):
                    lanes.start_soon(lane, stream, queue)
        nursery.cancel_scope.cancel()
    _finish_line()
    result.duration_s = trio.current_time() - start
    if len(samples) == 2:
        result.window_first, result.window_last = samples
        counted_from, counted_until = samples[0].at, samples[1].at
    else:   # ran dry during the warm-up, or every connection closed before the end
        counted_until = min([stop_at] + ran_dry_at)
        counted_from = start + (counted_until - start) * warmup_fraction
    result.measured_s = counted_until - counted_from
    result.counted_ok = sum(1 for t in ok_at if counted_from <= t <= counted_until)
    unanswered = result.sent - result.ok - sum(result.errors.values())
    if unanswered:
        result.errors["no-answer"] += unanswered  # still waiting after the drain timeout
    return result


async def open_loop(name: str, addresses: list[str], queues: list[list[bytes]], accept, rate_per_s: float,
                    duration_s: float, ca_file: str | None = None,
                    credentials: list[Credentials] | None = None,
                    validators: list[Validator] | None = None) -> PhaseResult:
    """One request every 1/rate s, whatever the replies; latency from the scheduled send time.

    Request k is the next of queue k mod len(queues), sent on that queue's connection (queue i
    goes to addresses[i % len(addresses)]). As in the closed loop there is no task, event or
    timer per request: one scheduler wakes at most every send_tick_s and hands each connection
    the requests that fell due, which its writer sends in one write, and one reader per
    connection matches the answers. A connection that stops reading holds back only its own
    requests; their latency still runs from their scheduled times.

    Every ok reply counts, until the last answer or the drain's end: the validators' usage is
    sampled at the first scheduled send and after that end, so it covers the same window.
    """
    result = PhaseResult(name=name, offered_per_s=rate_per_s, duration_s=duration_s)
    in_flight = [0]
    total = min(sum(len(q) for q in queues), int(rate_per_s * duration_s))
    streams = []
    for index in range(len(queues)):
        address = Address.parse(addresses[index % len(addresses)])
        # TLS with the network's CA, authenticated as the lane's participant (before the clock starts).
        streams.append(await rpc.open_stream(address.host, address.port, ca_file,
                                             credentials[index] if credentials else None))
    lanes = [_OpenLoopLane(stream) for stream in streams]
    start = trio.current_time() + 0.05
    window = (start, start + duration_s + drain_timeout_s)
    result.measured_s = duration_s
    sending_done = trio.Event()
    all_answered = trio.Event()

    def answered(count: int) -> None:
        in_flight[0] -= count
        if sending_done.is_set() and in_flight[0] == 0:
            all_answered.set()

    async def schedule() -> None:
        index = 0
        while index < total:
            due = min(total, math.floor((trio.current_time() - start) * rate_per_s) + 1)  # scheduled at or before now
            woken = set()
            while index < due:
                scheduled = start + index / rate_per_s
                lane_index = index % len(lanes)
                lane = lanes[lane_index]
                request = queues[lane_index][index // len(lanes)]
                index += 1
                if lane.lost:
                    result.sent += 1     # as a call on a closed connection fails at once
                    result.errors["connection-lost"] += 1
                    continue
                if in_flight[0] >= in_flight_max:
                    result.dropped += 1
                    continue
                msgid = next(lane.msgids)
                lane.sent_at[msgid] = scheduled
                lane.outbox.append(wire.encode_packed_request(msgid, request))
                result.sent += 1
                in_flight[0] += 1
                woken.add(lane_index)
            for lane_index in woken:
                lanes[lane_index].wakeup.set()
            if index < total:
                await trio.sleep_until(max(start + index / rate_per_s, trio.current_time() + send_tick_s))
        sending_done.set()
        answered(0)

    def lose(lane: _OpenLoopLane) -> None:
        # Its calls in flight get no answer now; its later requests fail at once (schedule).
        lane.lost = True
        lost = len(lane.sent_at)
        result.errors["connection-lost"] += lost
        lane.sent_at.clear()
        answered(lost)

    async def write(lane: _OpenLoopLane) -> None:
        try:
            while True:
                if not lane.outbox:
                    lane.wakeup = trio.Event()
                    await lane.wakeup.wait()
                data = b"".join(lane.outbox)
                lane.outbox.clear()
                await lane.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            lose(lane)

    async def read(lane: _OpenLoopLane) -> None:
        reader = wire.ResponseReader(rpc.response_bytes_max)
        try:
            while True:
                received = await lane.stream.receive_some(wire.read_chunk_bytes_max)
                if not received:
                    raise trio.BrokenResourceError("node closed the connection")
                reader.feed(received)
                count = 0
                for outcome, scheduled in _answers(reader, lane.sent_at, accept):
                    _record(result, outcome, start, window, scheduled)
                    count += 1
                answered(count)
        except (trio.BrokenResourceError, trio.ClosedResourceError, wire.WireError):
            lose(lane)

    progress = Progress(result, in_flight)
    await trio.sleep_until(start)
    result.window_first = await usage.sample(validators or [])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run, start)
        with trio.move_on_after(start - trio.current_time() + duration_s + drain_timeout_s):
            async with trio.open_nursery() as tasks:
                for lane in lanes:
                    tasks.start_soon(write, lane)
                    tasks.start_soon(read, lane)
                tasks.start_soon(schedule)
                await all_answered.wait()
                tasks.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    result.window_last = await usage.sample(validators or [])
    _finish_line()
    for lane in lanes:
        await trio.aclose_forcefully(lane.stream)
    result.duration_s = trio.current_time() - start
    unanswered = result.sent - result.ok - sum(result.errors.values())
    if unanswered:
        # Still waiting after the drain timeout: their latency is unknown, so they must show as errors.
        result.errors["no-answer"] += unanswered
    return result


class _OpenLoopLane:
    """One connection of the open loop: requests due but not yet written, and when each was scheduled."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.outbox: list[bytes] = []
        self.wakeup = trio.Event()
        self.sent_at: dict[int, float] = {}
        self.msgids = itertools.count()
        self.lost = False


# ---------------------------------------------------------------- requests (the node's RPC contract)


def _accept_submit(reply: object) -> str:
    if isinstance(reply, dict):
        status = reply.get("status")
        if status == "committed":
            return "ok"
        return f"status-{status}"
    return "bad-reply"


def _accept_match(reply: object) -> str:
    return "ok" if reply else "no-proof"


def build_requests(plan: dict, count: int, lanes: int) -> tuple[list[list[bytes]], list[bytes]]:
    """`count` pre-signed commit submits in `lanes` queues, and their commitments."""
    from . import workload

    return workload.presigned_submits(plan, count, lanes, submit_wait_s)


def build_match_queries(plan: dict, commitments: list[bytes], count: int) -> list[bytes]:
    from . import workload

    return workload.presigned_match_queries(plan, commitments, count)


# ---------------------------------------------------------------- the run


def rate_key(rate_per_s: float) -> str:
    """An offered rate as the per-phase figures are keyed by it: whole requests per second ("1000")."""
    return str(int(round(rate_per_s)))


def step_row(result: PhaseResult, fraction: float, refinement: bool, settle_s: float | None) -> dict:
    """One capacity step as bench/results.json lists it in `capacity_steps`."""
    latency = summarize_ms(result.latencies_s)
    step = as_step(result)
    return {"offered_per_s": round(result.offered_per_s or 0.0, 1), "fraction": fraction, "refinement": refinement,
            "p50_ms": latency.get("p50_ms"), "p95_ms": latency.get("p95_ms"), "p99_ms": latency.get("p99_ms"),
            "failed": result.failed,
            **{f"within_{bound}ms": step.within(bound) for bound in capacity.BOUNDS_MS},
            "settle_s": settle_s,
            "cpu_us_per_commitment": result.cpu_us_per_commitment,
            "signature_checks_per_commitment": result.signature_checks_per_commitment}


def as_step(result: PhaseResult) -> capacity.Step:
    return capacity.Step(offered_per_s=result.offered_per_s or 0.0,
                         p99_ms=summarize_ms(result.latencies_s).get("p99_ms"), failed=result.failed)


class _Run:
    """One run of the plan: the connections' setup and the report every phase adds to."""

    def __init__(self, plan: dict) -> None:
        from . import workload

        self.plan = plan
        self.phase_s = plan["phase_s"]
        self.connections = min(plan.get("connections", 64), connections_max)
        self.window = min(plan.get("window", 32), window_max)
        self.ca_file = plan.get("ca")       # the testnet's CA: RPC is TLS (None: a plaintext test server)
        self.credentials = workload.submit_lane_credentials(plan, self.connections)
        self.validators = usage.validators_of(plan)
        self.committed_commitments: list[bytes] = []   # by the saturation phase, for the match queries
        self.report: dict = {"phases": [], "latency": {}, "cpu_us_per_commitment": {},
                             "signature_checks_per_commitment": {}}

    async def settle(self) -> float | None:
        waited = await usage.settle(self.validators)
        if waited is None:
            print(f"  validators not settled after {usage.settle_timeout_s:g}s (mempool or height): going on",
                  file=sys.stderr)
        return waited

    def record_usage(self, key: str, result: PhaseResult) -> None:
        self.report["cpu_us_per_commitment"][key] = result.cpu_us_per_commitment
        self.report["signature_checks_per_commitment"][key] = result.signature_checks_per_commitment

    async def saturate(self) -> PhaseResult:
        # Enough requests for a rate well above the target.
        count = int(self.plan.get("ceiling_per_s", 12_000) * self.phase_s["saturate"])
        t = time.monotonic()
        queues, commitments = build_requests(self.plan, count, self.connections)
        self.report["presign_per_s"] = round(count / (time.monotonic() - t))
        print(f"  pre-signed {count} commit entries ({self.report['presign_per_s']}/s)", file=sys.stderr)
        await self.settle()
        result = await closed_loop(SATURATE_KEY, self.plan["submit_rpcs"], queues, _accept_submit,
                                   self.phase_s["saturate"], self.window, self.ca_file, self.credentials,
                                   self.validators)
        self.report["phases"].append(result.to_json())
        self.report["commits_per_s"] = round(result.rate_per_s, 1)
        self.record_usage(SATURATE_KEY, result)
        # Submits are taken in order, so the first half of the ok count is (nearly) all committed;
        # a query for one that is not answers with an error and is counted as such.
        self.committed_commitments = commitments[: result.ok // 2]
        return result

    async def offer(self, rate: float, name: str, fraction: float) -> tuple[PhaseResult, float | None]:
        """One open-loop phase at `rate`, after the validators settle; its figures keyed by its rate."""
        queues, _ = build_requests(self.plan, int(math.ceil(rate * self.phase_s["step"])), self.connections)
        settle_s = await self.settle()
        result = await open_loop(name, self.plan["submit_rpcs"], queues, _accept_submit, rate,
                                 self.phase_s["step"], self.ca_file, self.credentials, self.validators)
        self.report["phases"].append(result.to_json())
        key = rate_key(rate)
        self.report["latency"][key] = {**summarize_ms(result.latencies_s), "fraction": fraction,
                                       "errors": dict(result.errors), "dropped": result.dropped}
        self.record_usage(key, result)
        return result, settle_s

    async def step(self, rate: float, saturated_per_s: float, refinement: bool) -> PhaseResult:
        fraction = round(rate / saturated_per_s, 3) if saturated_per_s else 0.0
        label = "refine " if refinement else ""
        result, settle_s = await self.offer(rate, f"{label}{fraction * 100:.0f}% {rate:.0f}/s", fraction)
        self.report["capacity_steps"].append(step_row(result, fraction, refinement, settle_s))
        return result

    async def capacity_search(self, saturated_per_s: float) -> None:
        """The stepped search of testnet/capacity.py: its steps and the capacity for each bound."""
        self.report["capacity_steps"] = []
        tried: list[capacity.Step] = []
        for fraction in capacity.STEP_FRACTIONS:
            rate = max(1.0, saturated_per_s * fraction)
            if rate_key(rate) in self.report["latency"]:
                continue   # a tiny saturated rate: the same whole rate as the step before
            tried.append(as_step(await self.step(rate, saturated_per_s, refinement=False)))
            if capacity.search_done(tried):
                break
        refined = capacity.refinement_rate(tried)
        if refined is not None and rate_key(refined) not in self.report["latency"]:
            tried.append(as_step(await self.step(refined, saturated_per_s, refinement=True)))
        self.report["capacity_per_s"] = {str(bound): round(rate, 1)
                                         for bound, rate in capacity.capacities(tried).items()}

    async def target_rate(self, saturated_per_s: float) -> None:
        """1000/s, the rate the issue's latency target is stated at, unless a step measured it."""
        if rate_key(TARGET_RATE_PER_S) in self.report["latency"]:
            return
        if TARGET_RATE_PER_S >= saturated_per_s:
            self.report["target_rate_note"] = (f"{TARGET_RATE_PER_S:.0f}/s is not below the saturated rate "
                                               f"{saturated_per_s:.0f}/s: not measured separately")
            return
        fraction = round(TARGET_RATE_PER_S / saturated_per_s, 3)
        await self.offer(TARGET_RATE_PER_S, f"{fraction * 100:.0f}% {TARGET_RATE_PER_S:.0f}/s", fraction)

    async def match(self) -> None:
        """Match proofs against one node, for commitments committed in the saturation phase."""
        from . import workload

        self.report["match_per_s"] = None
        queries = build_match_queries(self.plan, self.committed_commitments,
                                      min(int(self.plan.get("match_ceiling_per_s", 30_000) * self.phase_s["match"]),
                                          match_queries_max))
        if not queries:
            return
        await self.settle()
        lanes = [queries[i::self.connections] for i in range(self.connections)]
        result = await closed_loop("match", [self.plan["match_rpc"]], lanes, _accept_match, self.phase_s["match"],
                                   self.window, self.ca_file, [workload.verifier_credentials(self.plan)] * len(lanes))
        self.report["phases"].append(result.to_json())
        self.report["match_per_s"] = round(result.rate_per_s, 1)


async def run(plan: dict) -> dict:
    started = time.monotonic()
    phases = _Run(plan)
    saturated_per_s = (await phases.saturate()).rate_per_s
    await phases.capacity_search(saturated_per_s)
    await phases.target_rate(saturated_per_s)
    await phases.match()
    report = phases.report
    report["loadgen_wall_s"] = round(time.monotonic() - started, 1)
    resource_usage = resource.getrusage(resource.RUSAGE_SELF)
    report["loadgen_cpu_s"] = round(resource_usage.ru_utime + resource_usage.ru_stime, 2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    report = trio.run(run, plan)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
