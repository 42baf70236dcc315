"""A Byzantine validator you can run: `python -m testnet byzantine NODE --behaviour B`.

`python -m testnet byzantine` stops NODE's honest daemon and starts this
module in its place, detached, with its pid in `nodes/NODE/byzantine.pid`,
what it runs in `nodes/NODE/byzantine.json`, its log in
`nodes/NODE/byzantine.log` and its counters, rewritten every second, in
`nodes/NODE/byzantine-stats.json`. `python -m testnet restart NODE` stops it
and brings the honest daemon back.

The process holds NODE's real key (read with node.keys.load_key_file from the
key file its config names), listens on NODE's p2p port, dials the other
validators, completes the daemon's own handshake (node.transport.handshake)
and speaks the real frames; then it misbehaves as one of BEHAVIOURS says.
Run directly (what the testnet command runs):

    python -m testnet.byzantine --config nodes/NODE/config.toml --behaviour B [--dir RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.public
import structlog
import trio

from consensus import codec, messages
from node import transport
from node.config import Address, NodeConfig, parse_address

log = structlog.get_logger()

# The behaviours, by the name `--behaviour` takes (a contract: tests and docs use these names).
BEHAVIOURS: dict[str, str] = {
    "nested-garbage":
        "authenticated frames whose consensus payload is msgpack arrays (and maps) nested about 1,000 deep, "
        "as a whole message, as a field of a message, and as an entry inside a REQUESTS message; to every "
        "peer, every --interval (default 0.1 s)",
    "oversize":
        "authenticated frames at the peer's frame limit (a REQUESTS message of 64 KiB requests) and one byte "
        "over it, a forged length prefix of 4 GiB, a 4 MiB frame of empty arrays (as the frame and as the "
        "consensus payload) and msgpack headers declaring 4 G items or bytes that are not there; a cycle per "
        "peer every --interval (default 1 s), the frames at and over the limit every 5th cycle",
    "equivocate":
        "a real replica (on a copy of NODE's ledger) whose messages are split: as primary it proposes one "
        "block to half the peers and another, equally valid, block for the same slot to the other half; as a "
        "backup it sends PREPARE and COMMIT votes for the real block to one half and for another block to the "
        "other half (one peer gets both: proof of the equivocation)",
    "request-flood":
        "valid, self-signed commit entries of an admitted participant (--authors, default sz-credit-bureau; "
        "keys from the run dir) in REQUESTS messages to the backups of the current view and never to its "
        "primary (read from the honest nodes' RPC status): --count at once (default 3000), then --rate per "
        "second (default 500)",
    "replay-committed":
        "reads committed entries (the oldest blocks and the newest) through the honest nodes' RPC `block` "
        "and sends them again in REQUESTS messages to every validator, every --interval (default 1 s)",
    "silent":
        "completes the handshakes and keeps the links open, then sends nothing (what it receives is read "
        "and dropped)",
    "handshake-flood":
        "unauthenticated, without using NODE's key: per peer, --rate TCP connections a second (default 25, "
        "at most 150 open) to its p2p port that send nothing, or half an ephemeral key, or complete the X25519 "
        "exchange and send as the first encrypted frame nested arrays, a frame of empty arrays at the "
        "handshake frame limit, a declared length over it, or msgpack headers declaring 4 G items",
}

DEFAULT_INTERVAL_S = {"nested-garbage": 0.1, "oversize": 1.0, "replay-committed": 1.0}
NESTING_DEPTH = 1000                 # about msgpack's own limit (its unpacker refuses > 1024)
EMPTY_ARRAYS_FRAME_BYTES = 4 * 1024 * 1024
REQUESTS_PER_MESSAGE = 256
AEAD_TAG_BYTES = 16
STATS_INTERVAL_S = 1.0
STATS_LOG_INTERVAL_S = 5.0
PRIMARY_POLL_S = 0.25
RPC_TIMEOUT_S = 2.0
OVERSIZE_BIG_EVERY = 5              # cycles between frames at/over the limit
FLOOD_OPEN_MAX = 150                # handshake-flood: connections held open per peer
FLOOD_HOLD_S = 30.0
REPLAY_OLD_BLOCKS = 200
REPLAY_ENTRIES_MAX = 4096
REPLAY_NEW_BLOCKS = 16

PID_FILE = "byzantine.pid"
LOG_FILE = "byzantine.log"
RECORD_FILE = "byzantine.json"
STATS_FILE = "byzantine-stats.json"


@dataclass
class Context:
    behaviour: str
    config: NodeConfig
    config_path: Path
    node_dir: Path
    run_dir: Path | None
    genesis: Any
    key: Any
    validators: Any
    peers: dict[str, Address]
    rpc: dict[str, Address]                  # other validators' RPC addresses
    options: argparse.Namespace
    rng: random.Random
    stats: Counter = field(default_factory=Counter)
    links: Any = None
    primary: str | None = None
    view: int | None = None
    started: float = field(default_factory=time.time)
    equivocator: Any = None
    cache: dict = field(default_factory=dict)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @property
    def me(self) -> str:
        return self.config.node_id

    @property
    def frame_bytes_max(self) -> int:
        return self.config.limits.frame_bytes_max

    def interval(self) -> float:
        value = self.options.interval
        return value if value is not None else DEFAULT_INTERVAL_S.get(self.behaviour, 1.0)


# --------------------------------------------------------------- hostile msgpack (raw bytes)


def nested_arrays(depth: int = NESTING_DEPTH) -> bytes:
    """[[[...[]...]]]: `depth` one-element arrays around an empty one."""
    return b"\x91" * depth + b"\x90"


def nested_maps(depth: int = NESTING_DEPTH) -> bytes:
    """{"k": {"k": ... {} ...}}."""
    return b"\x81\xa1k" * depth + b"\x80"


def raw_map(items: dict[str, bytes]) -> bytes:
    """A msgpack map whose values are given as raw msgpack bytes, keys in canonical order."""
    assert len(items) < 16
    out = bytes([0x80 | len(items)])
    for key in sorted(items):
        out += codec.pack(key) + items[key]
    return out


def nested_payloads(depth: int = NESTING_DEPTH) -> list[tuple[str, bytes]]:
    """Consensus payloads carrying deep nesting, each with a label for the counters."""
    arrays = nested_arrays(depth)
    return [
        ("message-nested-arrays", arrays),
        ("message-nested-maps", nested_maps(depth)),
        ("requests-entry-nested", codec.pack({"type": "requests", "requests": [arrays]})),
        ("requests-field-nested", raw_map({"type": codec.pack("requests"), "requests": b"\x91" + arrays})),
        ("prepare-view-nested", raw_map({
            "type": codec.pack("prepare"), "view": arrays, "height": codec.pack(1),
            "header_hash": codec.pack(bytes(32)), "sender": codec.pack("x"), "signature": codec.pack(bytes(64))})),
    ]


def empty_arrays(total_bytes: int) -> bytes:
    """One array32 of empty arrays, `total_bytes` long."""
    count = total_bytes - 5
    return b"\xdd" + struct.pack(">I", count) + b"\x90" * count


def declared_length_payloads() -> list[tuple[str, bytes]]:
    """msgpack headers that declare far more than follows."""
    return [
        ("declared-array32", b"\xdd\xff\xff\xff\xff" + b"\x90" * 16),
        ("declared-map32", b"\xdf\xff\xff\xff\xff" + b"\xa1k\x90" * 8),
        ("declared-bin32", b"\xc6\xff\xff\xff\xff" + b"\x00" * 16),
        ("declared-str32", b"\xdb\xff\xff\xff\xff" + b"a" * 16),
        ("declared-requests", raw_map({"type": codec.pack("requests"), "requests": b"\xdd\x7f\xff\xff\xff\xc4\x01x"})),
    ]


def frame_plaintext(payload: bytes) -> bytes:
    return transport.encode_frame(transport.FRAME_KIND_CONSENSUS, payload)


def requests_frame_of_size(plaintext_bytes: int) -> bytes:
    """A link frame plaintext of exactly `plaintext_bytes`: ["c", REQUESTS of 64 KiB junk requests]."""
    item = 65_535                       # bin16: 3-byte header
    head = codec.pack("requests")
    tail = codec.pack("type") + codec.pack("requests")

    def build(count: int, last: int) -> bytes:
        items = [b"\xff" * item] * count + ([b"\xfe" * last] if last else [])
        body = b"".join(codec.pack(i) for i in items)
        n = len(items)
        header = bytes([0x90 | n]) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536 else b"\xdd" + struct.pack(">I", n))
        return frame_plaintext(b"\x82" + head + header + body + tail)

    count = max(0, plaintext_bytes // (item + 3) - 1)
    base = len(build(count, 0))
    last = max(1, plaintext_bytes - base - 5)
    for _ in range(8):
        size = len(build(count, last))
        if size == plaintext_bytes:
            return build(count, last)
        last += plaintext_bytes - size
        if last <= 0:
            count -= 1
            last = item
    raise AssertionError(f"cannot build a frame of exactly {plaintext_bytes} bytes")


# --------------------------------------------------------------- behaviours over authenticated links


async def run_silent(ctx: Context) -> None:
    await trio.sleep_forever()


async def per_peer(ctx: Context, round_: Any, interval_s: Any) -> None:
    """Run `round_(ctx, peer_id, index)` for each peer in its own task (a slow peer holds up only its own
    rounds), every `interval_s()` seconds, while the peer has a live link."""
    async def loop(peer_id: str) -> None:
        index = 0
        while True:
            if peer_id in ctx.links.live():
                await round_(ctx, peer_id, index)
                index += 1
                await trio.sleep(interval_s())
            else:
                await ctx.links.wait_changed()

    async with trio.open_nursery() as nursery:
        for peer_id in ctx.peers:
            nursery.start_soon(loop, peer_id)


async def nested_round(ctx: Context, peer_id: str, index: int) -> None:
    payloads = ctx.cache.setdefault("nested", nested_payloads())
    label, payload = payloads[index % len(payloads)]
    if await ctx.links.send_message(peer_id, payload):
        ctx.stats[f"sent_{label}"] += 1


async def run_nested_garbage(ctx: Context) -> None:
    await per_peer(ctx, nested_round, ctx.interval)


def _oversize_frames(ctx: Context) -> dict[str, Any]:
    cache = ctx.cache
    if "empty" not in cache:
        cache["empty"] = empty_arrays(EMPTY_ARRAYS_FRAME_BYTES)
        cache["empty_payload"] = frame_plaintext(empty_arrays(EMPTY_ARRAYS_FRAME_BYTES - 16))
        limit = ctx.frame_bytes_max
        cache["at_limit"] = requests_frame_of_size(limit - AEAD_TAG_BYTES)
        cache["over_limit"] = requests_frame_of_size(limit - AEAD_TAG_BYTES + 1)
    return cache


async def oversize_round(ctx: Context, peer_id: str, cycle: int) -> None:
    frames = _oversize_frames(ctx)
    sends: list[tuple[str, list[bytes]]] = []
    for label, payload in declared_length_payloads():
        sends.append((f"payload-{label}", [frame_plaintext(payload)]))
        sends.append((f"frame-{label}", [payload]))
    sends.append(("frame-empty-arrays-4MiB", [frames["empty"]]))
    sends.append(("payload-empty-arrays-4MiB", [frames["empty_payload"]]))
    for label, plaintexts in sends:
        if not await ctx.links.send(peer_id, plaintexts):
            return
        ctx.stats[f"sent_{label}"] += 1
    if cycle % OVERSIZE_BIG_EVERY:
        return
    started = time.monotonic()
    if not await ctx.links.send(peer_id, [frames["at_limit"]]):
        return
    ctx.stats["sent_frame-at-limit"] += 1
    log.info("frame at the limit sent", peer=peer_id, bytes=len(frames["at_limit"]) + AEAD_TAG_BYTES,
             seconds=round(time.monotonic() - started, 2))
    if (cycle // OVERSIZE_BIG_EVERY) % 2 == 0:
        # One byte over the limit: the prefix alone must make the peer refuse it (and drop the link).
        if await ctx.links.send(peer_id, [frames["over_limit"]]):
            ctx.stats["sent_frame-over-limit"] += 1
        else:
            ctx.stats["sent_frame-over-limit_link_dropped"] += 1
    elif await ctx.links.send_raw(peer_id, struct.pack(">I", 0xFFFF_FFFF) + b"\x00" * 64):
        ctx.stats["sent_prefix-4GiB"] += 1


async def run_oversize(ctx: Context) -> None:
    _oversize_frames(ctx)
    await per_peer(ctx, oversize_round, ctx.interval)


def rpc_credentials(ctx: Context):
    """This validator's own identity: the others' RPC answers a validator in full (an anonymous caller
    gets the reduced status only)."""
    from node.client import Credentials
    return Credentials(ctx.config.node_id, ctx.key.signing_key)


def rpc_ca_file(ctx: Context) -> Path | None:
    """The testnet's CA for the other validators' RPC TLS (run_dir/tls/ca.pem, testnet/network.py);
    None when this node's config serves plaintext RPC (then so does the network)."""
    if ctx.config.rpc.plaintext or ctx.run_dir is None:
        return None
    return ctx.run_dir / "tls" / "ca.pem"


async def track_primary(ctx: Context) -> None:
    """Keep ctx.view and ctx.primary at the highest view the other validators report over RPC."""
    from . import rpc

    while True:
        best: tuple[int, str] | None = None
        for peer_id, address in ctx.rpc.items():
            try:
                status = await rpc.call_async(address.host, address.port, "status", [], RPC_TIMEOUT_S, rpc_ca_file(ctx),
                                              rpc_credentials(ctx))
            except (rpc.ConnectionLost, rpc.RpcError, OSError):
                continue
            if isinstance(status, dict) and isinstance(status.get("view"), int):
                candidate = (status["view"], str(status.get("primary")))
                if best is None or candidate[0] > best[0]:
                    best = candidate
        if best is not None:
            if best[0] != ctx.view:
                log.info("view seen", view=best[0], primary=best[1])
            ctx.view, ctx.primary = best
            ctx.stats["view"] = best[0]
        await trio.sleep(PRIMARY_POLL_S)


def flood_authors(ctx: Context) -> list[tuple[Any, str, str]]:
    """(key pair, name, jurisdiction) of the request-flood's authors: admitted participants of the run dir,
    or, without one, a fresh key (its entries still pass the stateless check)."""
    from node.keys import KeyPair, load_key_file

    names = [n for n in (ctx.options.authors or "sz-credit-bureau").split(",") if n]
    manifest = {}
    if ctx.run_dir is not None and (ctx.run_dir / "testnet.json").exists():
        manifest = json.loads((ctx.run_dir / "testnet.json").read_text()).get("participants", {})
    authors = []
    for name in names:
        info = manifest.get(name)
        if info is None:
            continue
        authors.append((load_key_file(info["key"]), name, info.get("jurisdiction", "CN")))
    if not authors:
        authors.append((KeyPair.generate(), "byzantine-flood", "CN"))
    return authors


class EntryMaker:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.authors = flood_authors(ctx)
        self.nonce = int(time.time() * 1_000_000)
        self.index = 0

    def make(self, count: int) -> list[bytes]:
        from storage.entries import build_commit

        now_ms = int(time.time() * 1000)
        out = []
        for _ in range(count):
            key, name, jurisdiction = self.authors[self.index % len(self.authors)]
            self.index += 1
            self.nonce += 1
            out.append(build_commit(key.signing_key, name, self.ctx.chain_id, os.urandom(32), "credit-report",
                                    jurisdiction, nonce=self.nonce, time_ms=now_ms))
        return out


async def send_requests(ctx: Context, peer_id: str, entries: list[bytes], label: str) -> int:
    sent = 0
    for start in range(0, len(entries), REQUESTS_PER_MESSAGE):
        chunk = entries[start:start + REQUESTS_PER_MESSAGE]
        payload = messages.encode(messages.Requests(tuple(chunk)))
        if not await ctx.links.send_message(peer_id, payload):
            break
        sent += len(chunk)
    ctx.stats[f"{label}_sent"] += sent
    return sent


async def flood_round(ctx: Context, peer_id: str, index: int) -> None:
    """Send `peer_id` the bursts it has not had yet, unless it is the primary of the current view."""
    primary = ctx.primary or ctx.validators.primary(0).id
    if peer_id == primary:
        return
    sent = ctx.cache.setdefault("flood_sent", {})
    for number, entries in list(ctx.cache["bursts"]):
        if number > sent.get(peer_id, -1):
            await send_requests(ctx, peer_id, entries, "flood_requests")
            sent[peer_id] = number


async def run_request_flood(ctx: Context) -> None:
    maker = EntryMaker(ctx)
    log.info("request flood authors", authors=[a[1] for a in maker.authors])
    tick_s = 0.25
    async with trio.open_nursery() as nursery:
        nursery.start_soon(track_primary, ctx)
        with trio.move_on_after(5):
            while ctx.primary is None:
                await trio.sleep(0.05)
        bursts = ctx.cache["bursts"] = [(0, maker.make(ctx.options.count))]
        nursery.start_soon(per_peer, ctx, flood_round, lambda: 0.05)
        number = 0
        while True:
            await trio.sleep(tick_s)
            number += 1
            bursts.append((number, maker.make(max(1, int(ctx.options.rate * tick_s)))))
            del bursts[:-4]
            ctx.stats["flood_bursts"] = number


async def collect_committed(ctx: Context, pool: dict[bytes, None]) -> None:
    """Fill `pool` with committed entries read through RPC `block`: the oldest blocks, then the newest."""
    from . import rpc

    async def call(method: str, params: list):
        for address in ctx.rpc.values():
            try:
                return await rpc.call_async(address.host, address.port, method, params, RPC_TIMEOUT_S, rpc_ca_file(ctx),
                                            rpc_credentials(ctx))
            except (rpc.ConnectionLost, rpc.RpcError, OSError):
                continue
        return None

    next_old = 1
    while True:
        status = await call("status", [])
        height = status.get("height", 0) if isinstance(status, dict) else 0
        heights = list(range(next_old, min(height, REPLAY_OLD_BLOCKS) + 1))
        next_old = max(next_old, min(height, REPLAY_OLD_BLOCKS) + 1)
        heights += list(range(max(1, height - REPLAY_NEW_BLOCKS + 1), height + 1))
        for h in heights:
            block = await call("block", [h])
            if isinstance(block, dict):
                for entry in block.get("entries", []):
                    if isinstance(entry, bytes) and len(pool) < REPLAY_ENTRIES_MAX:
                        pool[entry] = None
        ctx.stats["replay_pool"] = len(pool)
        await trio.sleep(2.0)


async def replay_round(ctx: Context, peer_id: str, index: int) -> None:
    entries = list(ctx.cache["replay_pool"])
    if entries:
        await send_requests(ctx, peer_id, entries, "replayed")


async def run_replay_committed(ctx: Context) -> None:
    pool: dict[bytes, None] = ctx.cache.setdefault("replay_pool", {})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_committed, ctx, pool)
        nursery.start_soon(per_peer, ctx, replay_round, ctx.interval)


async def run_equivocate(ctx: Context) -> None:
    await ctx.equivocator.run()


# --------------------------------------------------------------- handshake-flood (no key used)


def _nonce(counter: int) -> bytes:
    return b"\x00" * 4 + counter.to_bytes(8, "big")


FLOOD_KINDS = ("silent", "half-key", "nested", "empty-arrays", "declared-length", "over-limit", "nested-maps")


async def flood_connection(ctx: Context, address: Address, kind: str) -> None:
    """One unauthenticated connection of kind `kind`; held until the peer closes it or FLOOD_HOLD_S."""
    try:
        stream = await trio.open_tcp_stream(address.host, address.port)
    except OSError:
        ctx.stats["flood_connect_failed"] += 1
        return
    try:
        with trio.move_on_after(FLOOD_HOLD_S):
            if kind == "half-key":
                await stream.send_all(os.urandom(16))
            elif kind != "silent":
                ephemeral = nacl.public.PrivateKey.generate()
                own = bytes(ephemeral.public_key)
                await stream.send_all(own)
                peer = b""
                while len(peer) < 32:
                    chunk = await stream.receive_some(32 - len(peer))
                    if not chunk:
                        ctx.stats[f"flood_{kind}_closed_early"] += 1
                        return
                    peer += chunk
                shared = nacl.bindings.crypto_scalarmult(bytes(ephemeral), peer)
                send_key, _, _ = transport.derive_session(own, peer, shared, ctx.chain_id)
                limit = transport.HANDSHAKE_FRAME_BYTES_MAX
                if kind == "nested":
                    plaintext = nested_arrays()
                elif kind == "nested-maps":
                    plaintext = nested_maps(300)     # 4 bytes a level: keep it under the handshake limit
                elif kind == "empty-arrays":
                    plaintext = empty_arrays(limit - AEAD_TAG_BYTES)
                elif kind == "declared-length":
                    plaintext = b"\xdf\xff\xff\xff\xff" + b"\xa1k\x90" * 8
                else:   # over-limit: a frame one byte over the handshake frame limit
                    plaintext = b"\x00" * (limit - AEAD_TAG_BYTES + 1)
                ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
                    plaintext, None, _nonce(0), send_key)
                await stream.send_all(struct.pack(">I", len(ciphertext)) + ciphertext)
            ctx.stats[f"flood_{kind}_sent"] += 1
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    ctx.stats[f"flood_{kind}_closed_by_peer"] += 1
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, nacl.exceptions.RuntimeError):
        ctx.stats[f"flood_{kind}_reset"] += 1
    finally:
        await trio.aclose_forcefully(stream)


async def flood_peer(ctx: Context, peer_id: str, address: Address) -> None:
    limiter = trio.CapacityLimiter(FLOOD_OPEN_MAX)
    period = 1.0 / max(ctx.options.rate, 0.001)
    index = 0
    async with trio.open_nursery() as nursery:
        while True:
            kind = FLOOD_KINDS[index % len(FLOOD_KINDS)]
            index += 1
            if limiter.available_tokens > 0:
                async def one(kind=kind) -> None:
                    async with limiter:
                        await flood_connection(ctx, address, kind)
                nursery.start_soon(one)
                ctx.stats["flood_connections"] += 1
            else:
                ctx.stats["flood_at_open_max"] += 1
            await trio.sleep(period)


async def run_handshake_flood(ctx: Context) -> None:
    async def close_at_once(stream: trio.SocketStream) -> None:
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        # NODE's port is held (so the honest daemon cannot be started by mistake), but nothing authenticates.
        await nursery.start(lambda task_status: trio.serve_tcp(
            close_at_once, ctx.config.listen.p2p.port, host=ctx.config.listen.p2p.host, task_status=task_status))
        for peer_id, address in ctx.peers.items():
            nursery.start_soon(flood_peer, ctx, peer_id, address)


RUNNERS = {
    "nested-garbage": run_nested_garbage,
    "oversize": run_oversize,
    "equivocate": run_equivocate,
    "request-flood": run_request_flood,
    "replay-committed": run_replay_committed,
    "silent": run_silent,
    "handshake-flood": run_handshake_flood,
}
assert set(RUNNERS) == set(BEHAVIOURS)


# --------------------------------------------------------------- the process


def peer_addresses(config: NodeConfig, genesis) -> dict[str, Address]:
    """The other validators' p2p addresses, as the daemon finds them (config peers, else genesis)."""
    if config.peers is not None:
        return {p.id: p.address for p in config.peers if p.id != config.node_id}
    out = {}
    for validator in genesis.validator_set.validators:
        text = genesis.validator_addresses.get(validator.id, {}).get("p2p")
        if validator.id != config.node_id and text:
            out[validator.id] = parse_address(text, f"genesis {validator.id}")
    return out


def rpc_addresses(config: NodeConfig, genesis) -> dict[str, Address]:
    return {v.id: parse_address(genesis.validator_addresses[v.id]["rpc"], f"genesis {v.id} rpc")
            for v in genesis.validator_set.validators
            if v.id != config.node_id and genesis.validator_addresses.get(v.id, {}).get("rpc")}


def write_stats(ctx: Context) -> None:
    document = {
        "behaviour": ctx.behaviour, "node": ctx.me, "pid": os.getpid(), "started": ctx.started,
        "uptime_s": round(time.time() - ctx.started, 1),
        "links": sorted(ctx.links.live()) if ctx.links is not None else [],
        "counters": dict(ctx.stats) | (dict(ctx.links.counters) if ctx.links is not None else {}),
    }
    path = ctx.node_dir / STATS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


async def report_stats(ctx: Context) -> None:
    last_log = 0.0
    while True:
        write_stats(ctx)
        if time.time() - last_log >= STATS_LOG_INTERVAL_S:
            last_log = time.time()
            log.info("byzantine stats", links=sorted(ctx.links.live()) if ctx.links else [],
                     counters=dict(ctx.stats))
        await trio.sleep(STATS_INTERVAL_S)


async def serve(ctx: Context) -> None:
    from .byzantine_links import Links

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return
            nursery.start_soon(stop_on_signal)
            if ctx.behaviour != "handshake-flood":
                on_frame = ctx.equivocator.on_frame if ctx.behaviour == "equivocate" else None
                ctx.links = Links(
                    me=ctx.me, chain_id=ctx.chain_id, signing_key=ctx.key.signing_key, validators=ctx.validators,
                    peers=ctx.peers, listen=ctx.config.listen.p2p,
                    send_frame_bytes_max=2 * ctx.frame_bytes_max + 1024,
                    handshake_timeout_s=ctx.config.limits.handshake_timeout_ms / 1000, on_frame=on_frame,
                    rng=ctx.rng)
                await nursery.start(ctx.links.run)
            nursery.start_soon(report_stats, ctx)
            log.info("byzantine validator started", behaviour=ctx.behaviour, p2p=str(ctx.config.listen.p2p),
                     peers=sorted(ctx.peers), description=BEHAVIOURS[ctx.behaviour])
            await RUNNERS[ctx.behaviour](ctx)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testnet.byzantine", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="behaviours:\n" + "\n".join(f"  {name:<17} {text}" for name, text in BEHAVIOURS.items()))
    parser.add_argument("--config", type=Path, required=True, help="the node's config.toml")
    parser.add_argument("--behaviour", required=True, choices=sorted(BEHAVIOURS), metavar="B",
                        help=f"one of {', '.join(BEHAVIOURS)}")
    add_behaviour_options(parser)
    parser.add_argument("--dir", type=Path, default=None,
                        help="the testnet run dir (participant keys for request-flood); default: from the config path")
    return parser


def add_behaviour_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between rounds (nested-garbage 0.1, oversize 1, replay-committed 1)")
    parser.add_argument("--rate", type=float, default=None,
                        help="request-flood: entries a second after the first burst (500); "
                             "handshake-flood: connections a second per peer (25)")
    parser.add_argument("--count", type=int, default=3000, help="request-flood: entries in the first burst (3000)")
    parser.add_argument("--authors", default=None,
                        help="request-flood: comma-separated participant names whose keys sign (sz-credit-bureau)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")


def main(argv: list[str] | None = None) -> int:
    from node.config import ConfigError, load_config
    from node.keys import KeyFileError, load_key_file
    from node.logs import configure_logging
    from storage.genesis import Genesis

    args = build_parser().parse_args(argv)
    if args.rate is None:
        args.rate = 25.0 if args.behaviour == "handshake-flood" else 500.0
    try:
        config = load_config(args.config)
        key = load_key_file(config.key_file)
        genesis = Genesis.load(config.genesis_file)
    except (ConfigError, KeyFileError, OSError, ValueError) as exc:
        print(f"testnet.byzantine: {exc}", file=sys.stderr)
        return 1
    configure_logging(config.node_id, log_format="json", level="info", stream=sys.stdout)
    me = genesis.validator_set.get(config.node_id)
    if me is None or me.public_key != key.public_key:
        log.error("cannot start", reason=f"{config.key_file} is not the genesis key of {config.node_id}")
        return 1
    node_dir = args.config.resolve().parent
    run_dir = args.dir.resolve() if args.dir else node_dir.parent.parent
    ctx = Context(
        behaviour=args.behaviour, config=config, config_path=args.config.resolve(), node_dir=node_dir,
        run_dir=run_dir, genesis=genesis, key=key, validators=genesis.validator_set,
        peers=peer_addresses(config, genesis), rpc=rpc_addresses(config, genesis), options=args,
        rng=random.Random(args.seed))
    if args.behaviour == "equivocate":
        from .byzantine_equivocate import Equivocator

        ctx.equivocator = Equivocator(ctx)
    try:
        trio.run(serve, ctx)
    except (OSError, BaseExceptionGroup) as exc:
        failures = exc.subgroup(lambda e: isinstance(e, OSError)) if isinstance(exc, BaseExceptionGroup) else exc
        if failures is None:
            raise
        log.error("cannot start", reason=str(failures))
        return 1
    finally:
        if ctx.equivocator is not None:
            ctx.equivocator.close()
        write_stats(ctx)
    log.info("stopped", counters=dict(ctx.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
