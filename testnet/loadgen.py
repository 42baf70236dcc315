"""The benchmark's load generator: its own process, many connections, pre-signed requests.

    python -m testnet.loadgen --plan PLAN.json --out RESULT.json

PLAN names the chain, the nodes' RPC addresses, the participant key files and
the phase durations. Every entry and query is built and signed before its
phase starts, and each request's method and params are msgpack-encoded once,
so during a phase the generator only frames and sends bytes and the nodes,
not the client, are what is measured. Phases:

1. saturate: closed loop, `connections` x `window` submits with wait=true in
   flight across all nodes; committed receipts per second after a warm-up.
2. rate R for R at 25 %, 50 % and 75 % of that: open loop, one submit every
   1/R s whatever the replies; latency runs from the *scheduled* send time to
   the committed receipt, so a stalled node cannot hide its queueing.
3. match: closed loop of signed match-proof queries against one node.

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

from . import rpc
from .stats import summarize_ms

connections_max = 256               # at most this many TCP connections (the node's rpc_connections_max)
window_max = 256                    # outstanding calls per connection in the closed loops
in_flight_max = 20_000              # open loop: beyond this the node is overloaded; later sends count as dropped
submit_wait_s = 30                  # how long a submit may wait for its commit
drain_timeout_s = 35                # after a phase, wait this long for late replies
progress_interval_s = 0.5
send_tick_s = 0.001                 # open loop: requests falling due within this long go out in one write
warmup_fraction = 0.2               # of a closed-loop phase, not counted in its rate
match_queries_max = 90_000          # below one participant's share of a node's query-id memory (100,000)
LOAD_FRACTIONS = (0.25, 0.50, 0.75)
TARGET_RATE_PER_S = 1000.0          # the latency target is stated at this rate: measured too when below saturation


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

    @property
    def rate_per_s(self) -> float:
        return self.counted_ok / self.measured_s if self.measured_s > 0 else 0.0

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
                      credentials: list[Credentials] | None = None) -> PhaseResult:
    """One connection per queue with `window` requests outstanding on each: every reply is answered
    with the queue's next request, all of one read's replies with one write. Queue i goes to
    addresses[i % len(addresses)]. No task or event per request: the load generator shares the
    machine with the nodes, so its own cost per request is kept small.

    The rate counts the ok replies after a warm-up of warmup_fraction, until the phase ends or
    the first queue runs out of pre-signed requests, whichever comes first: after that the load
    is no longer full, and counting the idle rest of the phase would understate the rate."""
    result = PhaseResult(name=name, offered_per_s=None, duration_s=duration_s)
    in_flight = [0]
    start = trio.current_time()
    stop_at = start + duration_s
    ran_dry_at: list[float] = []      # when a queue first had fewer requests left than were wanted
    ok_at: list[float] = []           # when each ok reply came
    measured = (start, math.inf)      # every ok reply is recorded; the window is settled at the end
    streams = []
    for index in range(len(queues)):
        address = Address.parse(addresses[index % len(addresses)])
        # TLS with the network's CA, authenticated as the lane's participant (before the clock starts).
        streams.append(await rpc.open_stream(address.host, address.port, ca_file,
                                             credentials[index] if credentials else None))

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

    progress = Progress(result, in_flight)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(progress.run, start)
        with trio.move_on_after(duration_s + drain_timeout_s):
            async with trio.open_nursery() as lanes:
                for stream, queue in zip(streams, queues):
                    lanes.start_soon(lane, stream, queue)
        nursery.cancel_scope.cancel()
    _finish_line()
    result.duration_s = trio.current_time() - start
    full_load_until = min([stop_at] + ran_dry_at)
    counted_from = start + (full_load_until - start) * warmup_fraction
    result.measured_s = full_load_until - counted_from
    result.counted_ok = sum(1 for t in ok_at if counted_from <= t <= full_load_until)
    unanswered = result.sent - result.ok - sum(result.errors.values())
    if unanswered:
        result.errors["no-answer"] += unanswered  # still waiting after the drain timeout
    return result


async def open_loop(name: str, addresses: list[str], queues: list[list[bytes]], accept, rate_per_s: float,
                    duration_s: float, ca_file: str | None = None,
                    credentials: list[Credentials] | None = None) -> PhaseResult:
    """One request every 1/rate s, whatever the replies; latency from the scheduled send time.

    Request k is the next of queue k mod len(queues), sent on that queue's connection (queue i
    goes to addresses[i % len(addresses)]). As in the closed loop there is no task, event or
    timer per request: one scheduler wakes at most every send_tick_s and hands each connection
    the requests that fell due, which its writer sends in one write, and one reader per
    connection matches the answers. A connection that stops reading holds back only its own
    requests; their latency still runs from their scheduled times.
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


async def run(plan: dict) -> dict:
    phase = plan["phase_s"]
    connections = min(plan.get("connections", 64), connections_max)
    window = min(plan.get("window", 32), window_max)
    submit_rpcs = plan["submit_rpcs"]
    started = time.monotonic()
    report: dict = {"phases": []}

    # Saturation: enough requests for a rate well above the target.
    ceiling_per_s = plan.get("ceiling_per_s", 12_000)
    count = int(ceiling_per_s * phase["saturate"])
    t = time.monotonic()
    queues, commitments = build_requests(plan, count, connections)
    report["presign_per_s"] = round(count / (time.monotonic() - t))
    print(f"  pre-signed {count} commit entries ({report['presign_per_s']}/s)", file=sys.stderr)
    ca_file = plan.get("ca")       # the testnet's CA: RPC is TLS (None: a plaintext test server)
    from . import workload
    lane_credentials = workload.submit_lane_credentials(plan, connections)
    saturation = await closed_loop("saturate", submit_rpcs, queues, _accept_submit, phase["saturate"], window,
                                   ca_file, lane_credentials)
    report["phases"].append(saturation.to_json())
    commits_per_s = saturation.rate_per_s
    report["commits_per_s"] = round(commits_per_s, 1)
    # Submits are taken in order, so the first half of the ok count is (nearly) all committed;
    # a query for one that is not answers with an error and is counted as such.
    committed_commitments = commitments[: saturation.ok // 2]

    report["latency"] = {}
    rates = [max(1.0, commits_per_s * fraction) for fraction in LOAD_FRACTIONS]
    if TARGET_RATE_PER_S < commits_per_s and all(abs(r - TARGET_RATE_PER_S) > 1 for r in rates):
        rates.append(TARGET_RATE_PER_S)
    else:
        report["target_rate_note"] = (f"{TARGET_RATE_PER_S:.0f}/s is not below the saturated rate "
                                      f"{commits_per_s:.0f}/s: not measured separately")
    for rate in sorted(rates):
        fraction = round(rate / commits_per_s, 3) if commits_per_s else 0.0
        needed = int(math.ceil(rate * phase["rate"]))
        queues, _ = build_requests(plan, needed, connections)
        result = await open_loop(f"{fraction * 100:.0f}% {rate:.0f}/s", submit_rpcs, queues, _accept_submit,
                                 rate, phase["rate"], ca_file, lane_credentials)
        report["phases"].append(result.to_json())
        report["latency"][str(int(round(rate)))] = {**summarize_ms(result.latencies_s), "fraction": fraction,
                                                     "errors": dict(result.errors), "dropped": result.dropped}

    # Match proofs against one node, for commitments committed above.
    report["match_per_s"] = None
    queries = build_match_queries(plan, committed_commitments,
                                  min(int(plan.get("match_ceiling_per_s", 30_000) * phase["match"]),
                                      match_queries_max))
    if queries:
        lanes = [queries[i::connections] for i in range(connections)]
        match = await closed_loop("match", [plan["match_rpc"]], lanes, _accept_match, phase["match"], window,
                                  ca_file, [workload.verifier_credentials(plan)] * len(lanes))
        report["phases"].append(match.to_json())
        report["match_per_s"] = round(match.rate_per_s, 1)
    report["loadgen_wall_s"] = round(time.monotonic() - started, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["loadgen_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
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
