"""Authenticated, encrypted peer links between validators (after CometBFT's secret connection).

Handshake, the same on both sides:
1. each side sends a fresh ephemeral X25519 public key (32 raw bytes);
2. both compute the X25519 shared secret and derive, with BLAKE2b keyed by it,
   one ChaCha20-Poly1305 key per direction (the side with the lower ephemeral
   key sends with the first) and a 32-byte transcript hash over the chain id
   and both ephemeral keys in sorted order;
3. each side sends, as its first encrypted frame, {id, public_key, sig} where
   sig is its validator Ed25519 signature over the transcript
   (codec.DOMAIN_HANDSHAKE). A peer is refused when its key is not the key the
   validator set holds for the id it claims, or the signature fails.
A recorded handshake replayed later fails: the transcript binds this run's
fresh ephemeral keys, so the old encrypted frame does not even decrypt.

Frames: 4-byte big-endian ciphertext length, then ciphertext; nonces are a
per-direction counter, so a replayed, dropped or reordered frame fails to
decrypt and the link is closed. The length is checked against frame_bytes_max
before the body is read. Frame plaintext is canonical msgpack [kind, payload]
with kind "c" and payload the bytes of one consensus message; the kind leaves
room for other traffic later. Client requests travel inside consensus REQUESTS
messages: the replica forwards a client's request to every validator once and
receivers do not re-flood it.

Connections: the validator with the lower id dials, the higher one accepts, so
each pair has one link and no tie-breaking is needed; an accepted link from a
peer replaces any older link from it (the peer restarted). Dialers retry with
exponential backoff and jitter. Each peer has a bounded send queue that keeps
its newest frames; a slow or dead peer loses its oldest frames and never
blocks the others (consensus retransmits and catches up what was lost).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import structlog
import trio

from consensus import codec
from consensus.validators import ValidatorSet

from .config import Address
from .logs import LogBudget
from .metrics import NodeMetrics

EPHEMERAL_KEY_BYTES = 32
LENGTH_PREFIX_BYTES = 4
AEAD_TAG_BYTES = nacl.bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
NONCE_BYTES = nacl.bindings.crypto_aead_chacha20poly1305_ietf_NPUBBYTES
HANDSHAKE_FRAME_BYTES_MAX = 1024       # the auth frame is ~150 bytes
RECEIVE_CHUNK_BYTES = 65536
SEND_BATCH_BYTES_MAX = 262_144         # queued frames written in one send_all, up to this many plaintext bytes
INBOUND_HANDSHAKES_MAX = 64            # unauthenticated connections in handshake at once; more are closed
REFUSAL_LOG_LINES_MAX = 20             # "peer refused" lines per reason per window; the metrics count all
REFUSAL_LOG_WINDOW_MS = 60_000
FRAME_KIND_CONSENSUS = "c"
FRAME_KINDS = (FRAME_KIND_CONSENSUS,)
_KDF_PERSON = b"bayledger-p2p-v1"      # BLAKE2b personalization: max 16 bytes

log = structlog.get_logger()


class FrameError(Exception):
    """A peer broke the wire protocol; `reason` is a stable code used in logs and metrics."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class _Reader:
    """Exact-length reads over a trio stream, with a buffer."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buffer = bytearray()

    async def read_exactly(self, count: int) -> bytes | None:
        """`count` bytes, or None on a clean end of stream before the first byte; FrameError if cut."""
        while len(self.buffer) < count:
            chunk = await self.stream.receive_some(max(RECEIVE_CHUNK_BYTES, count - len(self.buffer)))
            if not chunk:
                if not self.buffer:
                    return None
                raise FrameError("truncated-frame", f"stream ended with {len(self.buffer)} of {count} bytes")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data


def _nonce(counter: int) -> bytes:
    return b"\x00" * (NONCE_BYTES - 8) + counter.to_bytes(8, "big")


class SecretConnection:
    """An established link: encrypts every frame it sends, decrypts and checks every frame it receives."""

    def __init__(self, stream: trio.abc.Stream, reader: _Reader, send_key: bytes, receive_key: bytes,
                 frame_bytes_max: int, peer_id: str = "?"):
        self.stream = stream
        self._reader = reader
        self._send_key = send_key
        self._receive_key = receive_key
        self._send_counter = 0
        self._receive_counter = 0
        self.frame_bytes_max = frame_bytes_max
        self.peer_id = peer_id
        self._send_lock = trio.Lock()

    async def send_frame(self, plaintext: bytes) -> None:
        await self.send_frames([plaintext])

    async def send_frames(self, plaintexts: list[bytes]) -> None:
        """Each plaintext as its own encrypted frame (the wire is the same as one send_frame each),
        written with one send_all: one system call and one scheduler round trip for the lot."""
        for plaintext in plaintexts:
            if len(plaintext) + AEAD_TAG_BYTES > self.frame_bytes_max:
                raise FrameError("oversized-outbound", f"{len(plaintext)} bytes")
        async with self._send_lock:
            parts = []
            for plaintext in plaintexts:
                ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
                    plaintext, None, _nonce(self._send_counter), self._send_key)
                self._send_counter += 1
                parts.append(struct.pack(">I", len(ciphertext)))
                parts.append(ciphertext)
            await self.stream.send_all(b"".join(parts))

    async def receive_frame(self, frame_bytes_max: int | None = None) -> bytes | None:
        """The next plaintext frame, or None when the peer closed cleanly between frames."""
        limit = self.frame_bytes_max if frame_bytes_max is None else frame_bytes_max
        prefix = await self._reader.read_exactly(LENGTH_PREFIX_BYTES)
        if prefix is None:
            return None
        (length,) = struct.unpack(">I", prefix)
        if length > limit:
            raise FrameError("oversized-frame", f"{length} bytes announced, limit {limit}")
        if length < AEAD_TAG_BYTES:
            raise FrameError("undersized-frame", f"{length} bytes cannot hold a {AEAD_TAG_BYTES}-byte tag")
        ciphertext = await self._reader.read_exactly(length)
        if ciphertext is None:
            raise FrameError("truncated-frame", "stream ended after the length prefix")
        try:
            plaintext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, None, _nonce(self._receive_counter), self._receive_key)
        except nacl.exceptions.CryptoError:
            raise FrameError("undecryptable-frame", "authentication tag mismatch") from None
        self._receive_counter += 1
        return plaintext

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def derive_session(own_ephemeral: bytes, peer_ephemeral: bytes, shared_secret: bytes,
                   chain_id: str) -> tuple[bytes, bytes, bytes]:
    """(send_key, receive_key, transcript_hash) for the side whose ephemeral key is `own_ephemeral`."""
    low, high = sorted((own_ephemeral, peer_ephemeral))
    material = hashlib.blake2b(
        chain_id.encode() + b"\x00" + low + high, key=shared_secret, digest_size=64, person=_KDF_PERSON,
    ).digest()
    low_key, high_key = material[:32], material[32:]
    transcript = codec.sha256(b"bayledger-handshake\x00", chain_id.encode(), b"\x00", low, high)
    if own_ephemeral == low:
        return low_key, high_key, transcript
    return high_key, low_key, transcript


async def handshake(stream: trio.abc.Stream, *, chain_id: str, node_id: str,
                    signing_key: nacl.signing.SigningKey, validators: ValidatorSet,
                    frame_bytes_max: int, expected_peer: str | None = None) -> tuple[str, SecretConnection]:
    """Run the handshake; return (peer_id, connection) or raise FrameError saying why the peer is refused."""
    ephemeral = nacl.public.PrivateKey.generate()
    own_public = bytes(ephemeral.public_key)
    await stream.send_all(own_public)
    reader = _Reader(stream)
    try:
        peer_public = await reader.read_exactly(EPHEMERAL_KEY_BYTES)
    except FrameError as exc:
        raise FrameError("truncated-handshake", exc.detail) from None
    if peer_public is None:
        raise FrameError("truncated-handshake", "closed before sending an ephemeral key")
    if peer_public == own_public:
        raise FrameError("reflected-handshake", "peer echoed our ephemeral key")
    try:
        shared = nacl.bindings.crypto_scalarmult(bytes(ephemeral), peer_public)
    except nacl.exceptions.RuntimeError:
        raise FrameError("bad-ephemeral-key", "low-order X25519 point") from None
    if shared == bytes(32):
        raise FrameError("bad-ephemeral-key", "low-order X25519 point")
    send_key, receive_key, transcript = derive_session(own_public, peer_public, shared, chain_id)
    connection = SecretConnection(stream, reader, send_key, receive_key, frame_bytes_max)
    auth = {
        "id": node_id,
        "public_key": bytes(signing_key.verify_key),
        "sig": codec.sign(signing_key, codec.DOMAIN_HANDSHAKE, chain_id, transcript),
    }
    await connection.send_frame(codec.pack(auth))
    try:
        frame = await connection.receive_frame(HANDSHAKE_FRAME_BYTES_MAX)
    except FrameError as exc:
        # A replayed handshake lands here: its auth frame was sealed under another run's keys.
        reason = "handshake-undecryptable" if exc.reason == "undecryptable-frame" else f"handshake-{exc.reason}"
        raise FrameError(reason, exc.detail) from None
    if frame is None:
        raise FrameError("truncated-handshake", "closed before authenticating")
    try:
        peer_auth = codec.unpack_canonical(frame)
    except codec.EncodingError as exc:
        raise FrameError("handshake-malformed", str(exc)) from None
    if (not isinstance(peer_auth, dict) or set(peer_auth) != {"id", "public_key", "sig"}
            or not isinstance(peer_auth["id"], str)):
        raise FrameError("handshake-malformed", "auth frame must be {id, public_key, sig}")
    peer_id = peer_auth["id"]
    validator = validators.get(peer_id)
    if validator is None:
        raise FrameError("unknown-validator", f"{peer_id[:64]!r} is not in the validator set")
    if validator.public_key != peer_auth["public_key"]:
        raise FrameError("unknown-key", f"key offered for {peer_id!r} is not its validator key")
    if peer_id == node_id:
        raise FrameError("self-connection", "peer claims our own id")
    if expected_peer is not None and peer_id != expected_peer:
        raise FrameError("unexpected-peer", f"dialed {expected_peer!r}, reached {peer_id!r}")
    if not codec.verify(validator.public_key, peer_auth["sig"], codec.DOMAIN_HANDSHAKE, chain_id, transcript):
        raise FrameError("bad-handshake-signature", f"{peer_id!r} did not sign this session's transcript")
    connection.peer_id = peer_id
    return peer_id, connection


def encode_frame(kind: str, payload: bytes) -> bytes:
    return codec.pack([kind, payload])


def decode_frame(plaintext: bytes) -> tuple[str, bytes]:
    """Parse a link frame's plaintext; FrameError("bad-shape") for anything but [kind, bytes]."""
    try:
        value = codec.unpack(plaintext)
    except codec.EncodingError as exc:
        raise FrameError("bad-shape", str(exc)) from None
    if (not isinstance(value, list) or len(value) != 2 or value[0] not in FRAME_KINDS
            or not isinstance(value[1], bytes)):
        raise FrameError("bad-shape", "frame must be [\"c\", bytes]")
    return value[0], value[1]


@dataclass
class PeerSlot:
    """One remote validator: where to dial it, its bounded outbound queue and its live link."""
    id: str
    address: Address | None
    send_queue_frames_max: int
    queue: deque = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    queued_bytes: int = 0
    connection: SecretConnection | None = None
    link_scope: trio.CancelScope | None = None
    connected_once: bool = False


@dataclass(frozen=True)
class InboundFrame:
    peer_id: str
    kind: str
    payload: bytes


class PeerNetwork:
    """All links of one node: a listener, a dialer per higher-id peer, a reader and writer per live link."""

    def __init__(self, *, node_id: str, chain_id: str, signing_key: nacl.signing.SigningKey,
                 validators: ValidatorSet, peers: dict[str, Address | None], listen: Address,
                 inbound: trio.MemorySendChannel, metrics: NodeMetrics, frame_bytes_max: int,
                 handshake_timeout_ms: int, send_queue_frames_max: int, send_queue_bytes_max: int,
                 reconnect_backoff_min_ms: int,
                 reconnect_backoff_max_ms: int, rng: random.Random | None = None,
                 on_link_change: Callable[[], None] | None = None):
        self.node_id = node_id
        self.chain_id = chain_id
        self.signing_key = signing_key
        self.validators = validators
        self.listen = listen
        self.inbound = inbound
        self.metrics = metrics
        self.frame_bytes_max = frame_bytes_max
        self.handshake_timeout_ms = handshake_timeout_ms
        self.send_queue_bytes_max = send_queue_bytes_max
        self.reconnect_backoff_min_ms = reconnect_backoff_min_ms
        self.reconnect_backoff_max_ms = reconnect_backoff_max_ms
        self.rng = rng or random.Random()
        self.on_link_change = on_link_change
        self.slots = {peer_id: PeerSlot(peer_id, address, send_queue_frames_max)
                      for peer_id, address in peers.items() if peer_id != node_id}
        # Fault injection (tests only): links to these peers are cut and refused while listed.
        self.partitioned: frozenset[str] = frozenset()
        self.bound_port: int | None = None
        self._inbound_handshakes = 0
        self._refusal_log = LogBudget(REFUSAL_LOG_LINES_MAX, REFUSAL_LOG_WINDOW_MS)
        self._nursery: trio.Nursery | None = None

    # --- sending -------------------------------------------------------------------------------

    def send(self, peer_id: str, kind: str, payload: bytes) -> None:
        """Queue a frame for one peer without waiting; drops the peer's oldest frames while its queue is over
        its frame or byte bound (a slow or dead peer costs bounded memory and never blocks the others)."""
        slot = self.slots.get(peer_id)
        if slot is None:
            return
        frame = encode_frame(kind, payload)
        slot.queue.append(frame)
        slot.queued_bytes += len(frame)
        while len(slot.queue) > 1 and (len(slot.queue) > slot.send_queue_frames_max
                                       or slot.queued_bytes > self.send_queue_bytes_max):
            slot.queued_bytes -= len(slot.queue.popleft())
            self.metrics.dropped_frames.inc()
        slot.wake.set()

    def broadcast(self, kind: str, payload: bytes, exclude: str | None = None) -> None:
        for peer_id in self.slots:
            if peer_id != exclude:
                self.send(peer_id, kind, payload)

    def connected_peers(self) -> list[str]:
        return sorted(peer_id for peer_id, slot in self.slots.items() if slot.connection is not None)

    def set_partitioned(self, peer_ids: frozenset[str]) -> None:
        """Cut and refuse links to `peer_ids` (fault injection); links to others are left alone."""
        if peer_ids == self.partitioned:
            return
        self.partitioned = peer_ids
        log.warning("fault-injection partition", partitioned=sorted(peer_ids))
        for peer_id in peer_ids:
            slot = self.slots.get(peer_id)
            if slot is not None and slot.link_scope is not None:
                slot.link_scope.cancel()

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._accept, self.listen.port, host=self.listen.host))
            self.bound_port = listeners[0].socket.getsockname()[1]
            for slot in self.slots.values():
                if self._dials(slot):
                    nursery.start_soon(self._dial_loop, slot)
            task_status.started(self.bound_port)

    def _dials(self, slot: PeerSlot) -> bool:
        return slot.address is not None and self.node_id < slot.id

    def _refuse(self, reason: str, **details) -> None:
        self.metrics.rejected_frames.inc(label_value=reason)
        # A flood of garbage must not become a flood of log lines (the metrics count every one).
        admitted, left_out = self._refusal_log.admit(reason, trio.current_time() * 1000)
        if left_out:
            log.warning("peer refusals not logged", reason=reason, count=left_out, window_ms=REFUSAL_LOG_WINDOW_MS)
        if admitted:
            log.warning("peer refused", reason=reason, **details)

    async def _handshake(self, stream: trio.abc.Stream, expected_peer: str | None) -> tuple[str, SecretConnection] | None:
        try:
            with trio.fail_after(self.handshake_timeout_ms / 1000):
                return await handshake(
                    stream, chain_id=self.chain_id, node_id=self.node_id, signing_key=self.signing_key,
                    validators=self.validators, frame_bytes_max=self.frame_bytes_max,
                    expected_peer=expected_peer)
        except trio.TooSlowError:
            self._refuse("handshake-timeout", expected_peer=expected_peer)
        except FrameError as exc:
            self._refuse(exc.reason, detail=exc.detail, expected_peer=expected_peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("handshake aborted", error=str(exc), expected_peer=expected_peer)
        await trio.aclose_forcefully(stream)
        return None

    async def _accept(self, stream: trio.SocketStream) -> None:
        if self._inbound_handshakes >= INBOUND_HANDSHAKES_MAX:
            # Strangers may not hold more than a bounded amount of our memory and descriptors.
            self._refuse("too-many-handshakes")
            await trio.aclose_forcefully(stream)
            return
        self._inbound_handshakes += 1
        try:
            result = await self._handshake(stream, None)
        finally:
            self._inbound_handshakes -= 1
        if result is None:
            return
        peer_id, connection = result
        slot = self.slots.get(peer_id)
        if slot is None or peer_id in self.partitioned:
            self._refuse("peer-not-accepted", peer=peer_id,
                         detail="partitioned" if slot is not None else "not a configured peer")
            await connection.aclose()
            return
        if self._dials(slot):
            # We dial this peer ourselves; a second link the other way would make the two replace each other.
            self._refuse("wrong-direction", peer=peer_id, detail="the lower id dials")
            await connection.aclose()
            return
        await self._run_link(slot, connection)

    async def _dial_loop(self, slot: PeerSlot) -> None:
        attempt = 0
        while True:
            if slot.id not in self.partitioned:
                stream = None
                # A peer host that drops SYNs would otherwise hold the dialer for the OS connect timeout.
                with trio.move_on_after(self.handshake_timeout_ms / 1000):
                    try:
                        stream = await trio.open_tcp_stream(slot.address.host, slot.address.port)
                    except OSError:
                        stream = None
                if stream is not None:
                    result = await self._handshake(stream, slot.id)
                    if result is not None:
                        attempt = 0
                        await self._run_link(slot, result[1])
            delay_ms = min(self.reconnect_backoff_max_ms, self.reconnect_backoff_min_ms * 2 ** min(attempt, 20))
            attempt += 1
            # Jitter spreads redials so restarted nodes do not all dial in lockstep.
            await trio.sleep(delay_ms * self.rng.uniform(0.5, 1.0) / 1000)

    async def _run_link(self, slot: PeerSlot, connection: SecretConnection) -> None:
        if slot.link_scope is not None:
            slot.link_scope.cancel()      # the peer reconnected: the old link is stale
        scope = trio.CancelScope()
        slot.link_scope = scope
        slot.connection = connection
        self.metrics.connected_peers.set(len(self.connected_peers()))
        log.info("peer connected", peer=slot.id, reconnect=slot.connected_once)
        slot.connected_once = True
        if self.on_link_change is not None:
            self.on_link_change()
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, slot, connection, nursery.cancel_scope)
                    await self._read_loop(slot, connection)
                    nursery.cancel_scope.cancel()
        finally:
            if slot.connection is connection:
                slot.connection = None
                if slot.link_scope is scope:
                    slot.link_scope = None
            self.metrics.connected_peers.set(len(self.connected_peers()))
            with trio.CancelScope(shield=True):
                await connection.aclose()
            log.info("peer disconnected", peer=slot.id)

    async def _read_loop(self, slot: PeerSlot, connection: SecretConnection) -> None:
        while True:
            try:
                plaintext = await connection.receive_frame()
            except FrameError as exc:
                self._refuse(exc.reason, peer=slot.id, detail=exc.detail)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if plaintext is None:
                return
            try:
                kind, payload = decode_frame(plaintext)
            except FrameError as exc:
                # Authenticated but malformed: drop the frame, keep the (encrypted, in-sync) link.
                self.metrics.rejected_frames.inc(label_value=exc.reason)
                log.warning("frame refused", reason=exc.reason, peer=slot.id, detail=exc.detail)
                continue
            await self.inbound.send(InboundFrame(slot.id, kind, payload))

    async def _write_loop(self, slot: PeerSlot, connection: SecretConnection, link_scope: trio.CancelScope) -> None:
        while True:
            while not slot.queue:
                slot.wake = trio.Event()
                await slot.wake.wait()
            # Every queued frame up to the batch bound (at least one) in one write.
            frames = [slot.queue[0]]
            batch_bytes = len(frames[0])
            for frame in itertools.islice(slot.queue, 1, None):
                if batch_bytes + len(frame) > SEND_BATCH_BYTES_MAX:
                    break
                frames.append(frame)
                batch_bytes += len(frame)
            try:
                await connection.send_frames(frames)
            except FrameError as exc:
                # Our own message above the frame limit: a config error (frame_bytes_max too small).
                # Nothing of the batch was sent; drop only the offending frame and send the rest.
                self.metrics.rejected_frames.inc(label_value=exc.reason)
                log.error("frame not sent", reason=exc.reason, peer=slot.id, detail=exc.detail)
                frames = [f for f in frames if len(f) + AEAD_TAG_BYTES > connection.frame_bytes_max]
                slot.queue = deque(f for f in slot.queue if not any(f is bad for bad in frames))
                slot.queued_bytes = sum(len(f) for f in slot.queue)
                continue
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                link_scope.cancel()
                return
            # Removed only once written, so frames cut off by a dying link are retried on the next one.
            # (The queue may have dropped its oldest frames meanwhile: remove only what is still there.)
            for frame in frames:
                if slot.queue and slot.queue[0] is frame:
                    slot.queued_bytes -= len(slot.queue.popleft())
