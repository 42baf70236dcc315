"""Byzantine replicas: an honest replica's code with a hostile host around it.

A Byzantine node runs the real Replica (so it knows views, sequence numbers
and blocks), and this behaviour rewrites what leaves it: for each outbound
message, with probability `probability`, one of the enabled behaviours is
applied. Behaviours that need to understand a message (equivocate, conflicting
votes, re-signed views, forged signatures) go through `adapter`, which knows
the wire format; the rest work on raw bytes. Every alteration is counted.

`garbage` is half unstructured (random, truncated or bit-flipped bytes, wrong-shape
msgpack, REQUESTS of invalid requests) and half structured hostile msgpack
(`hostile`: nesting up to msgpack's limit, declared lengths past the data, valid but
absurd values, every msgpack format anywhere, all of it also inside the honest
message it replaces, and truncated), plus validly re-signed messages whose view or
height sits at the 2^63 - 1 maximum. Every alteration counts once: unstructured garbage
as `byz_garbage`, structured garbage as `byz_garbage_<category>` (`structured_garbage_count`
sums those).
"""

from __future__ import annotations

import random
from collections import Counter

import nacl.signing

from consensus import codec

from . import adapter, hostile

# The replay pool of one Byzantine node: bounded, oldest entries overwritten at random.
replay_pool_messages_max = 128
garbage_bytes_max = 512
# How far ahead a "far-future" view jumps.
future_view_offset_max = 1_000_000
# Share of garbage that is structured hostile msgpack rather than the unstructured kinds.
structured_garbage_probability = 0.5
# Share of structured garbage that is a validly re-signed message with absurd numbers.
absurd_signed_probability = 0.1
STRUCTURED_CATEGORIES = hostile.CATEGORIES + ("absurd_signed",)
STRUCTURED_COUNTERS = tuple(f"byz_garbage_{category}" for category in STRUCTURED_CATEGORIES)


def structured_garbage_count(counts) -> int:
    """Structured garbage messages in a run's (or a sweep's) fault counters."""
    return sum(counts.get(name, 0) for name in STRUCTURED_COUNTERS)


class ByzantineBehaviour:
    def __init__(
        self,
        rng: random.Random,
        me: str,
        signing_key: nacl.signing.SigningKey,
        chain_id: str,
        ids: list[str],
        validators,
        behaviours: tuple[str, ...],
        probability: float,
        collusion: dict | None = None,
    ):
        self.rng = rng
        self.me = me
        self.signing_key = signing_key
        self.chain_id = chain_id
        self.ids = list(ids)
        self.behaviours = tuple(behaviours)
        self.probability = probability
        # A key that is not in the validator set: signatures by it must be rejected.
        self.stranger_key = nacl.signing.SigningKey(codec.sha256(b"stranger", me.encode()))
        self.pool: list[bytes] = []
        self.altered: Counter[str] = Counter()
        self.context = adapter.Context(validators, chain_id, signing_key, me, collusion)

    def observe(self, sender: str, data: bytes) -> None:
        self.context.remember(data)
        if len(self.pool) >= replay_pool_messages_max:
            self.pool[self.rng.randrange(replay_pool_messages_max)] = data
        else:
            self.pool.append(data)

    def _garbage(self, data: bytes) -> tuple[str, bytes]:
        """(counter, garbage): `byz_garbage` for the unstructured kinds, `byz_garbage_<category>` else."""
        rng = self.rng
        if rng.random() < structured_garbage_probability:
            return self._structured_garbage(data)
        return "byz_garbage", self._unstructured_garbage(data)

    def _unstructured_garbage(self, data: bytes) -> bytes:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 4:
            return adapter.junk_requests(rng)
        if choice == 0:
            return rng.randbytes(rng.randint(0, garbage_bytes_max))
        if choice == 1 and data:
            return data[: rng.randrange(len(data))]
        if choice == 2 and data:
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            return bytes(flipped)
        # Valid msgpack, wrong shape.
        return codec.pack({"type": rng.choice(["prepare", "commit", "nonsense"]), "view": -1, "x": rng.randbytes(8)})

    def _structured_garbage(self, data: bytes) -> tuple[str, bytes]:
        rng = self.rng
        altered = None
        if rng.random() < absurd_signed_probability:
            category, altered = "absurd_signed", adapter.absurd_signed(self.context, data, rng)
        if altered is None:
            category, altered = hostile.generate(rng, template=data)
        return f"byz_garbage_{category}", altered

    def _alter(self, behaviour: str, destination: str, data: bytes) -> bytes | None:
        """One altered version of `data` for `destination`, or None if the behaviour does not apply."""
        rng = self.rng
        if behaviour == "garbage":
            raise ValueError("garbage is applied by outgoing() through _garbage")
        if behaviour == "replay":
            return rng.choice(self.pool) if self.pool else None
        if behaviour == "equivocate":
            return adapter.equivocate(self.context, data, rng)
        if behaviour == "conflicting_votes":
            return adapter.conflicting_vote(self.context, data, rng)
        if behaviour == "forged_signatures":
            return adapter.forge_signature(self.context, data, self.stranger_key, rng)
        if behaviour == "stale_view":
            return adapter.shift_view(self.context, data, -rng.randint(1, 3))
        if behaviour == "future_view":
            return adapter.shift_view(self.context, data, rng.randint(2, future_view_offset_max))
        raise ValueError(f"unknown Byzantine behaviour {behaviour!r}")

    def outgoing(self, tick: int, destinations: list[str], data: bytes) -> list[tuple[str, bytes]]:
        """What actually leaves the Byzantine node when its honest code sends `data` to `destinations`."""
        out: list[tuple[str, bytes]] = []
        rng = self.rng
        self.context.remember(data)
        for destination in destinations:
            if "split_brain" in self.behaviours:
                # A strategy, not noise: applied to every proposal and vote it concerns.
                group = self.ids.index(destination) % 2
                split = adapter.split_brain(self.context, data, group)
                if split is not None:
                    if split != data:
                        self.altered["byz_split_brain"] += 1
                    out.append((destination, split))
                    continue
            if not self.behaviours or rng.random() >= self.probability:
                out.append((destination, data))
                continue
            behaviour = rng.choice(self.behaviours)
            if behaviour == "split_brain":
                out.append((destination, data))
                continue
            if behaviour == "silent":
                self.altered["byz_silent"] += 1
                continue
            if behaviour == "garbage":
                counter, altered = self._garbage(data)
            else:
                counter, altered = f"byz_{behaviour}", self._alter(behaviour, destination, data)
            if altered is None:
                out.append((destination, data))
                continue
            self.altered[counter] += 1
            out.append((destination, altered))
            # Replays and garbage come on top of, not instead of, the real message half the time;
            # a sloppy equivocator sends some peers both blocks (which they can prove).
            if behaviour in ("replay", "garbage", "equivocate") and rng.random() < 0.5:
                out.append((destination, data))
        return out
