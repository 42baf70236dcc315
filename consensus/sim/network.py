"""A simulated network between replicas, driven by one seeded random stream.

Packets carry (source, destination, bytes). Each send may be lost,
delayed by a drawn number of ticks (different delays reorder packets),
duplicated, and later replayed on the same link. Partitions block links:
a packet is dropped if its link is blocked when it is sent or when it is
due. Delivery order within one tick is (due tick, send order), so a run is
a pure function of the seed.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass

# Bounded memory: the replay pool keeps the most recent packets only.
replay_pool_packets_max = 256
# A packet in flight longer than this is a simulator bug (delays are drawn far below it).
in_flight_packets_max = 200_000


@dataclass(frozen=True)
class Packet:
    source: str
    destination: str
    data: bytes


@dataclass
class Partition:
    kind: str
    blocked: frozenset[tuple[str, str]]   # (source, destination) links that drop everything
    until_tick: int
    description: str


@dataclass
class NetworkConditions:
    delay_ticks_min: int
    delay_ticks_max: int
    loss_probability: float
    duplicate_probability: float
    replay_probability: float


class SimNetwork:
    def __init__(self, rng: random.Random, conditions: NetworkConditions):
        self.rng = rng
        self.conditions = conditions
        self.partition: Partition | None = None
        self._queue: list[tuple[int, int, Packet]] = []
        self._order = 0
        self._replay_pool: list[Packet] = []
        self.faults: Counter[str] = Counter()
        self.sent_packets = 0
        self.delivered_packets = 0

    def blocked(self, source: str, destination: str) -> bool:
        return self.partition is not None and (source, destination) in self.partition.blocked

    def _enqueue(self, due_tick: int, packet: Packet) -> None:
        assert len(self._queue) < in_flight_packets_max, "simulated network queue grew without bound"
        heapq.heappush(self._queue, (due_tick, self._order, packet))
        self._order += 1

    def _delay(self) -> int:
        return self.rng.randint(self.conditions.delay_ticks_min, self.conditions.delay_ticks_max)

    def send(self, tick: int, packet: Packet) -> None:
        self.sent_packets += 1
        if self.blocked(packet.source, packet.destination):
            self.faults["partition_drop"] += 1
            return
        c = self.conditions
        if c.loss_probability and self.rng.random() < c.loss_probability:
            self.faults["loss"] += 1
            return
        # At least one tick: nothing a replica sends reaches anyone within the same step.
        self._enqueue(tick + 1 + self._delay(), packet)
        if c.duplicate_probability and self.rng.random() < c.duplicate_probability:
            self.faults["duplicate"] += 1
            self._enqueue(tick + 1 + self._delay(), packet)
        if c.replay_probability:
            if len(self._replay_pool) >= replay_pool_packets_max:
                self._replay_pool[self.rng.randrange(replay_pool_packets_max)] = packet
            else:
                self._replay_pool.append(packet)
            if self.rng.random() < c.replay_probability:
                old = self._replay_pool[self.rng.randrange(len(self._replay_pool))]
                self.faults["replay"] += 1
                self._enqueue(tick + 1 + self._delay(), old)

    def due(self, tick: int) -> list[Packet]:
        """Packets due at or before `tick`, in deterministic order; blocked links drop theirs."""
        out = []
        while self._queue and self._queue[0][0] <= tick:
            _, _, packet = heapq.heappop(self._queue)
            if self.blocked(packet.source, packet.destination):
                self.faults["partition_drop"] += 1
                continue
            self.delivered_packets += 1
            out.append(packet)
        return out

    def in_flight(self) -> int:
        return len(self._queue)

    def start_partition(self, tick: int, kind: str, ids: list[str], duration_ticks: int) -> Partition:
        """Block links between groups drawn from the rng. `ids` must be in a stable (sorted) order."""
        rng = self.rng
        if kind == "isolate_one":
            alone = rng.choice(ids)
            blocked = {(alone, o) for o in ids if o != alone} | {(o, alone) for o in ids if o != alone}
            description = f"isolate {alone}"
        elif kind == "symmetric":
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            left, right = sorted(shuffled[:cut]), sorted(shuffled[cut:])
            blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
            description = f"{'+'.join(left)} | {'+'.join(right)}"
        elif kind == "asymmetric":
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            senders, receivers = sorted(shuffled[:cut]), sorted(shuffled[cut:])
            blocked = {(a, b) for a in senders for b in receivers}
            description = f"{'+'.join(senders)} -/-> {'+'.join(receivers)}"
        else:
            raise ValueError(f"unknown partition kind {kind!r}")
        self.partition = Partition(kind, frozenset(blocked), tick + duration_ticks, description)
        self.faults[f"partition_{kind}"] += 1
        return self.partition

    def set_partition(self, tick: int, blocked: set[tuple[str, str]], duration_ticks: int, description: str) -> None:
        """A scripted partition: exactly these (source, destination) links drop everything."""
        self.partition = Partition("scripted", frozenset(blocked), tick + duration_ticks, description)
        self.faults["partition_scripted"] += 1

    def heal(self) -> None:
        self.partition = None

    def calm(self, delay_ticks_max: int = 2) -> None:
        """Liveness phase: no partition, no loss, duplication or replay, short delays."""
        self.heal()
        self.conditions = NetworkConditions(0, delay_ticks_max, 0.0, 0.0, 0.0)
