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

Strangers (issue 14). Anyone who reaches the p2p port can run steps 1-2 and
send an auth frame, so everything before the peer is authenticated is bounded
and total:
- the ephemeral key must arrive within handshake_first_bytes_timeout_ms (a
  half-open connection holds a slot for that long, not handshake_timeout_ms);
- at most inbound_handshakes_per_source_max handshakes per source IP, and at
  most inbound_handshakes_max from IPs that are no validator's p2p host (the
  validators' IPs are not counted against that global cap: capacity reserved
  for them); with inbound_allow_only_validators, other IPs are closed before a
  byte is sent;
- any exception while handshaking, expected or not (a RecursionError from a
  deeply nested auth frame, a KeyError from a bug), closes that connection
  only, is counted in rejected_frames by reason and logged through the
  rate-limited refusal log. Nothing reaches the listener's nursery.

Connections and floods. Each pair of validators keeps one link. The lower id
dials first (the "primary" direction). The higher id also dials the lower one
(the "reverse" direction), but only once it has had no link for
reverse_dial_delay_ms, and the lower id accepts such a link only when it has
had none for as long. Why both: a half-open flood fills the *accepting*
side's handshake slots, and all test traffic (and an attacker behind a
validator's NAT) comes from the validator's own IP, so no per-source rule can
tell the honest dial from the flood. A node's outbound dial is not subject to
its own inbound caps, so when the lower id's dial cannot get into the flooded
higher id, the flooded node's reverse dial still reaches the lower id (which is
not flooded; flooding both ends of every pair is what only
inbound_allow_only_validators or a firewall stops). Which link survives is
decided by one rule both sides apply: a primary link (dialed by the lower id)
replaces any link; a reverse link is refused ("duplicate-link") while a
primary one is up; a newer link of the same direction replaces an older one
(the peer restarted). A reverse link is thus only ever made when neither side
has a link, and the primary dialer never dials while a link is up, so the
two cannot replace each other in turn (no flapping). In the normal case no
reverse dial happens at all.

Authenticated peers that misbehave. A frame over frame_bytes_max (or under
the AEAD tag size, or undecryptable) closes the link: the stream is out of
step. Undecodable frames (decode_frame) and malformed consensus messages the
daemon reports (report_malformed) are dropped, and after
peer_malformed_messages_max of them on one link the link is closed, so a
peer of another version that sends an odd message now and then keeps its
link. Each closure for misbehaviour (and each `disconnect`) is an offence,
counted in bayledger_peer_disconnects_total{reason}: the first costs the link
only; from the second on, the peer is refused (and not dialed) for
peer_offence_backoff_min_ms, doubling per offence up to
peer_offence_backoff_max_ms; offences are forgotten after twice that maximum
without one.

Each peer has a bounded send queue that keeps its newest frames; a slow or
dead peer loses its oldest frames and never blocks the others (consensus
retransmits and catches up what was lost). Inbound, each peer may hold at most
peer_inbound_queue_bytes_max of frames read but not yet taken by the driver
(`release`); past that its reader waits, so TCP pushes back on that peer alone.
An unexpected exception in a link's reader or writer closes that link and is
logged with the peer and the exception ("peer link failed").
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import itertools
import math
import random
import struct
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import structlog
import trio

from consensus import codec
from consensus.messages import VALIDATOR_ID_BYTES_MAX
from consensus.validators import ValidatorSet

from .address import Address
from .config import LimitsConfig
from .logs import LogBudget
from .metrics import NodeMetrics

EPHEMERAL_KEY_BYTES = 32
LENGTH_PREFIX_BYTES = 4
AEAD_TAG_BYTES = nacl.bindings.crypto_aead_chacha20poly1305_ietf_ABYTES
NONCE_BYTES = nacl.bindings.crypto_aead_chacha20poly1305_ietf_NPUBBYTES
HANDSHAKE_FRAME_BYTES_MAX = 1024       # the auth frame is ~150 bytes
RECEIVE_CHUNK_BYTES = 65536
SEND_BATCH_BYTES_MAX = 262_144         # queued frames written in one send_all, up to this many plaintext bytes
OFFENCE_MEMORY_FACTOR = 2              # offences are forgotten after this many longest backoffs without one
LINK_STABLE_S = 1.0                    # a dialed link that lasted this long resets the redial backoff
# Frame errors that put the stream out of step and that only the peer (or someone on the path) causes.
OFFENCE_FRAME_REASONS = frozenset({"oversized-frame", "undersized-frame", "undecryptable-frame"})
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
        self.peer_key: bytes | None = None   # the validator key the peer authenticated with
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


PeerKeys = Mapping[str, frozenset[bytes]]   # validator id -> every key it may authenticate with


def peer_keys_of(*validator_sets: ValidatorSet) -> dict[str, frozenset[bytes]]:
    """The keys each validator of these sets may authenticate with: while a rotation is pending, both
    the key of the current epoch and the key of the next (docs/CONSENSUS.md, "Reconfiguration")."""
    keys: dict[str, frozenset[bytes]] = {}
    for validator_set in validator_sets:
        for validator in validator_set.validators:
            keys[validator.id] = keys.get(validator.id, frozenset()) | {validator.public_key}
    return keys


async def handshake(stream: trio.abc.Stream, *, chain_id: str, node_id: str,
                    signing_key: nacl.signing.SigningKey, validators: ValidatorSet | PeerKeys,
                    frame_bytes_max: int, expected_peer: str | None = None,
                    first_bytes_timeout_ms: int | None = None) -> tuple[str, SecretConnection]:
    """Run the handshake; return (peer_id, connection) or raise FrameError saying why the peer is refused.

    `first_bytes_timeout_ms`: the peer's ephemeral key must arrive within this time (None: no own bound;
    the caller bounds the whole handshake). `validators`: a set, or the keys each peer may use (PeerKeys)."""
    peer_keys = peer_keys_of(validators) if isinstance(validators, ValidatorSet) else validators
    ephemeral = nacl.public.PrivateKey.generate()
    own_public = bytes(ephemeral.public_key)
    await stream.send_all(own_public)
    reader = _Reader(stream)
    first_bytes_s = math.inf if first_bytes_timeout_ms is None else first_bytes_timeout_ms / 1000
    try:
        with trio.move_on_after(first_bytes_s) as first_bytes:
            peer_public = await reader.read_exactly(EPHEMERAL_KEY_BYTES)
    except FrameError as exc:
        raise FrameError("truncated-handshake", exc.detail) from None
    if first_bytes.cancelled_caught:
        raise FrameError("handshake-first-bytes-timeout", f"no ephemeral key within {first_bytes_timeout_ms} ms")
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
    peer_auth = parse_auth_frame(frame)
    _check_peer(peer_auth, peer_keys, node_id, expected_peer, chain_id, transcript)
    connection.peer_id, connection.peer_key = peer_auth["id"], peer_auth["public_key"]
    return peer_auth["id"], connection


def _check_peer(peer_auth: dict, peer_keys: PeerKeys, node_id: str, expected_peer: str | None, chain_id: str,
                transcript: bytes) -> None:
    """FrameError unless the peer's auth frame names a validator we accept, with a key it may use, and
    signs this session's transcript with it."""
    peer_id, peer_key = peer_auth["id"], peer_auth["public_key"]
    accepted_keys = peer_keys.get(peer_id)
    if accepted_keys is None:
        raise FrameError("unknown-validator", f"{peer_id[:64]!r} is not in the validator set")
    if peer_key not in accepted_keys:
        raise FrameError("unknown-key", f"key offered for {peer_id!r} is not its validator key")
    if peer_id == node_id:
        raise FrameError("self-connection", "peer claims our own id")
    if expected_peer is not None and peer_id != expected_peer:
        raise FrameError("unexpected-peer", f"dialed {expected_peer!r}, reached {peer_id!r}")
    if not codec.verify(peer_key, peer_auth["sig"], codec.DOMAIN_HANDSHAKE, chain_id, transcript):
        raise FrameError("bad-handshake-signature", f"{peer_id!r} did not sign this session's transcript")


# What msgpack may build from a stranger's auth frame: a flat map of three short fields.
AUTH_FRAME_LIMITS = codec.DecodeLimits(
    bytes_max=HANDSHAKE_FRAME_BYTES_MAX, depth_max=1, array_len_max=0, map_len_max=3,
    bin_len_max=codec.SIGNATURE_BYTES, str_len_max=VALIDATOR_ID_BYTES_MAX, items_max=6,
)
# A link frame is [kind, payload]: one short string and one bin of at most the frame size
# (frame_bytes_max is checked on the ciphertext before this; its configurable ceiling is 256 MiB).
PEER_FRAME_LIMITS = codec.DecodeLimits(
    bytes_max=256 * 1024 * 1024, depth_max=1, array_len_max=2, map_len_max=0,
    bin_len_max=256 * 1024 * 1024, str_len_max=16, items_max=2,
)


def parse_auth_frame(frame: bytes) -> dict:
    """The peer's {id, public_key, sig} from its decrypted first frame (types checked, nothing
    verified); FrameError("handshake-malformed") for anything else."""
    try:
        peer_auth = codec.unpack_canonical(frame, limits=AUTH_FRAME_LIMITS)
    except codec.EncodingError as exc:
        raise FrameError("handshake-malformed", str(exc)) from None
    if (not isinstance(peer_auth, dict) or set(peer_auth) != {"id", "public_key", "sig"}
            or not isinstance(peer_auth["id"], str) or not isinstance(peer_auth["public_key"], bytes)
            or not isinstance(peer_auth["sig"], bytes)):
        raise FrameError("handshake-malformed", "auth frame must be {id (str), public_key (bin), sig (bin)}")
    return peer_auth


def encode_frame(kind: str, payload: bytes) -> bytes:
    return codec.pack([kind, payload])


def decode_frame(plaintext: bytes) -> tuple[str, bytes]:
    """Parse a link frame's plaintext; FrameError("bad-shape") for anything but [kind, bytes]."""
    try:
        value = codec.unpack(plaintext, limits=PEER_FRAME_LIMITS)
    except codec.EncodingError as exc:
        raise FrameError("bad-shape", str(exc)) from None
    if (not isinstance(value, list) or len(value) != 2 or value[0] not in FRAME_KINDS
            or not isinstance(value[1], bytes)):
        raise FrameError("bad-shape", "frame must be [\"c\", bytes]")
    return value[0], value[1]


@dataclass(frozen=True)
class PeerLimits:
    """Every configurable bound of the peer links, in one value as node.rpc.RpcLimits is for RPC.

    Each field is the [limits] key of the same name (docs/OPERATIONS.md says what each bounds) and
    defaults to that key's default; `from_config` takes them from a loaded config."""

    frame_bytes_max: int = LimitsConfig.frame_bytes_max
    handshake_timeout_ms: int = LimitsConfig.handshake_timeout_ms
    handshake_first_bytes_timeout_ms: int = LimitsConfig.handshake_first_bytes_timeout_ms
    inbound_handshakes_max: int = LimitsConfig.inbound_handshakes_max
    inbound_handshakes_per_source_max: int = LimitsConfig.inbound_handshakes_per_source_max
    reverse_dial_delay_ms: int = LimitsConfig.reverse_dial_delay_ms
    peer_malformed_messages_max: int = LimitsConfig.peer_malformed_messages_max
    peer_offence_backoff_min_ms: int = LimitsConfig.peer_offence_backoff_min_ms
    peer_offence_backoff_max_ms: int = LimitsConfig.peer_offence_backoff_max_ms
    peer_inbound_queue_bytes_max: int = LimitsConfig.peer_inbound_queue_bytes_max
    peer_send_queue_frames_max: int = LimitsConfig.peer_send_queue_frames_max
    peer_send_queue_bytes_max: int = LimitsConfig.peer_send_queue_bytes_max
    reconnect_backoff_min_ms: int = LimitsConfig.reconnect_backoff_min_ms
    reconnect_backoff_max_ms: int = LimitsConfig.reconnect_backoff_max_ms

    def __post_init__(self) -> None:
        assert self.peer_inbound_queue_bytes_max >= 1, "a peer must be able to queue a frame"

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> "PeerLimits":
        return cls(**{f.name: getattr(limits, f.name) for f in fields(cls)})


@dataclass
class PeerSlot:
    """One remote validator: where to dial it, its bounded outbound queue, its live link, and what it owes."""
    id: str
    address: Address | None
    send_queue_frames_max: int
    queue: deque = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    queued_bytes: int = 0
    connection: SecretConnection | None = None
    link_scope: trio.CancelScope | None = None
    connected_once: bool = False
    dialed_by: str | None = None              # who dialed the live link
    links_opened: int = 0
    link_ended: trio.Event = field(default_factory=trio.Event)  # set when the live link ends
    down_since: float = 0.0                   # trio time since which there has been no link
    malformed: int = 0                        # malformed frames and messages on the live link
    offences: int = 0
    last_offence: float = -math.inf
    backoff_until: float = -math.inf          # refused and not dialed before this trio time
    dial_scope: trio.CancelScope = field(default_factory=trio.CancelScope)   # cancelled when the peer leaves the set
    inbound_bytes: int = 0                    # read, not yet released by the driver
    inbound_room: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)


@dataclass(frozen=True)
class InboundFrame:
    peer_id: str
    kind: str
    payload: bytes


def _source_ip(stream: trio.abc.Stream) -> str:
    """The remote IP of a socket stream, IPv4-mapped IPv6 written as IPv4; "?" when there is none."""
    try:
        host = stream.socket.getpeername()[0]
    except (AttributeError, OSError, IndexError, TypeError):
        return "?"
    return _normal_ip(host)


def _literal_ips(addresses) -> frozenset[str]:
    """The hosts among `addresses` that are IP literals (names are resolved by _resolve_validator_ips)."""
    ips = set()
    for address in addresses:
        try:
            ips.add(_normal_ip(str(ipaddress.ip_address(address.host))))
        except ValueError:
            pass
    return frozenset(ips)


def _normal_ip(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class PeerNetwork:
    """All links of one node: a listener, a dialer per peer with an address, a reader and writer per live link.

    Every bound is a `limits` (PeerLimits) field."""

    def __init__(self, *, node_id: str, chain_id: str, signing_key: nacl.signing.SigningKey,
                 validators: ValidatorSet | PeerKeys, peers: dict[str, Address | None], listen: Address,
                 inbound: trio.MemorySendChannel, metrics: NodeMetrics, limits: PeerLimits = PeerLimits(),
                 rng: random.Random | None = None, on_link_change: Callable[[], None] | None = None,
                 inbound_allow_only_validators: bool = False):
        self.node_id = node_id
        self.chain_id = chain_id
        self.signing_key = signing_key
        # Who may authenticate, with which keys; set_peers follows the set.
        self.peer_keys = dict(peer_keys_of(validators) if isinstance(validators, ValidatorSet) else validators)
        self.listen = listen
        self.inbound = inbound
        self.metrics = metrics
        self.limits = limits
        self.inbound_allow_only_validators = inbound_allow_only_validators
        self.rng = rng or random.Random()
        self.on_link_change = on_link_change
        self.slots = {peer_id: PeerSlot(peer_id, address, limits.peer_send_queue_frames_max)
                      for peer_id, address in peers.items() if peer_id != node_id}
        # Fault injection (tests only): links to these peers are cut and refused while listed.
        self.partitioned: frozenset[str] = frozenset()
        self.bound_port: int | None = None
        self._inbound_handshakes = 0
        self._stranger_handshakes = 0          # from IPs that are no validator's p2p host
        self._handshakes_by_source: dict[str, int] = {}
        self._validator_ips: frozenset[str] = frozenset()
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
                                       or slot.queued_bytes > self.limits.peer_send_queue_bytes_max):
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

    # --- receiving -----------------------------------------------------------------------------

    def release(self, frame: InboundFrame) -> None:
        """The driver took `frame` off the inbound channel: its bytes leave its peer's inbound budget."""
        slot = self.slots.get(frame.peer_id)
        if slot is None:
            return
        slot.inbound_bytes = max(0, slot.inbound_bytes - len(frame.payload))
        slot.inbound_room.unpark_all()

    def report_malformed(self, peer_id: str, reason: str) -> None:
        """A frame or message from `peer_id` could not be decoded (the daemon reports the core's "bad-encoding",
        "bad-field", ...). Past peer_malformed_messages_max on one link the link is closed (an offence)."""
        slot = self.slots.get(peer_id)
        if slot is None:
            return
        slot.malformed += 1
        if slot.malformed > self.limits.peer_malformed_messages_max:
            self.disconnect(peer_id, reason)

    def disconnect(self, peer_id: str, reason: str) -> None:
        """Close the link to `peer_id` for misbehaviour `reason` and record an offence: from the second offence
        on, the peer is refused and not dialed for a backoff that doubles per offence (see the module doc)."""
        slot = self.slots.get(peer_id)
        if slot is None:
            return
        now = trio.current_time()
        if now - slot.last_offence > OFFENCE_MEMORY_FACTOR * self.limits.peer_offence_backoff_max_ms / 1000:
            slot.offences = 0
        slot.offences += 1
        slot.last_offence = now
        backoff_ms = 0
        if slot.offences >= 2:
            backoff_ms = min(self.limits.peer_offence_backoff_max_ms,
                             self.limits.peer_offence_backoff_min_ms * 2 ** min(slot.offences - 2, 30))
            slot.backoff_until = now + backoff_ms / 1000
        self.metrics.peer_disconnects.inc(label_value=reason)
        admitted, left_out = self._refusal_log.admit("disconnect", now * 1000)
        if left_out:
            log.warning("peer disconnects not logged", count=left_out, window_ms=REFUSAL_LOG_WINDOW_MS)
        if admitted:
            log.warning("peer disconnected for misbehaviour", peer=peer_id, reason=reason, offences=slot.offences,
                        backoff_ms=backoff_ms)
        if slot.link_scope is not None:
            slot.link_scope.cancel()

    # --- following the validator set (issue 17) ---------------------------------------------------

    def set_peers(self, peer_keys: PeerKeys, addresses: Mapping[str, Address | None]) -> None:
        """Follow the validator set: `peer_keys` are the validators this node now talks to (those of its
        epoch and of any epoch scheduled after it) with the keys each may authenticate with, `addresses`
        where to dial them. A validator that left is dropped: its links are closed and it is no longer
        dialed or accepted. A link authenticated with a key no longer accepted (rotated out) is closed, so
        the peer comes back with its new key. A new validator gets a slot and, with an address, a dialer."""
        self.peer_keys = {peer_id: frozenset(keys) for peer_id, keys in peer_keys.items()}
        for peer_id in [peer_id for peer_id in self.slots if peer_id not in self.peer_keys]:
            self._retire(self.slots.pop(peer_id))
        for peer_id, slot in self.slots.items():
            connection = slot.connection
            if connection is not None and connection.peer_key not in self.peer_keys[peer_id]:
                log.info("peer link closed: its key was rotated out", peer=peer_id)
                if slot.link_scope is not None:
                    slot.link_scope.cancel()
        for peer_id in sorted(self.peer_keys):
            slot = self.slots.get(peer_id)
            address = addresses.get(peer_id)
            if peer_id == self.node_id or (slot is not None and (slot.address is not None or address is None)):
                continue
            if slot is None:
                slot = self.slots[peer_id] = PeerSlot(peer_id, address, self.limits.peer_send_queue_frames_max)
                slot.down_since = trio.current_time()
                log.info("peer joined the validator set", peer=peer_id, address=str(address) if address else None)
            slot.address = address
            if address is not None and self._nursery is not None:
                self._validator_ips = self._validator_ips | _literal_ips([address])
                self._nursery.start_soon(self._dial_loop, slot)
        self.metrics.connected_peers.set(len(self.connected_peers()))

    def set_signing_key(self, signing_key: nacl.signing.SigningKey) -> None:
        """Authenticate new links with this key (the one this node's epoch names: a rotated key)."""
        self.signing_key = signing_key

    def _retire(self, slot: PeerSlot) -> None:
        log.info("peer left the validator set: link closed", peer=slot.id)
        slot.dial_scope.cancel()
        if slot.link_scope is not None:
            slot.link_scope.cancel()
        slot.queue.clear()
        slot.queued_bytes = 0

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._validator_ips = await self._resolve_validator_ips()
        now = trio.current_time()
        for slot in self.slots.values():
            slot.down_since = now
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._accept, self.listen.port, host=self.listen.host))
            self.bound_port = listeners[0].socket.getsockname()[1]
            for slot in self.slots.values():
                if slot.address is not None:
                    nursery.start_soon(self._dial_loop, slot)
            task_status.started(self.bound_port)

    async def _resolve_validator_ips(self) -> frozenset[str]:
        """The IPs of the peers' p2p hosts (names resolved once, at start)."""
        ips: set[str] = set()
        for slot in self.slots.values():
            if slot.address is None:
                continue
            host = slot.address.host
            try:
                ips.add(str(ipaddress.ip_address(host)))
                continue
            except ValueError:
                pass
            try:
                for info in await trio.socket.getaddrinfo(host, None):
                    ips.add(_normal_ip(info[4][0]))
            except OSError as exc:
                log.warning("peer host does not resolve", peer=slot.id, host=host, error=str(exc))
        return frozenset(_normal_ip(ip) for ip in ips)

    def _is_primary(self, dialer: str, slot: PeerSlot) -> bool:
        """A link dialed by `dialer` to or from `slot`'s peer is primary when the lower id dialed it."""
        return dialer == min(self.node_id, slot.id)

    def _refuse(self, reason: str, **details) -> None:
        self.metrics.rejected_frames.inc(label_value=reason)
        # A flood of garbage must not become a flood of log lines (the metrics count every one).
        admitted, left_out = self._refusal_log.admit(reason, trio.current_time() * 1000)
        if left_out:
            log.warning("peer refusals not logged", reason=reason, count=left_out, window_ms=REFUSAL_LOG_WINDOW_MS)
        if admitted:
            log.warning("peer refused", reason=reason, **details)

    def _link_failed(self, peer_id: str | None, task: str, exc: BaseException) -> None:
        """Our own bug inside one connection: it costs that connection, never the node."""
        self.metrics.rejected_frames.inc(label_value="internal-error")
        admitted, left_out = self._refusal_log.admit("internal-error", trio.current_time() * 1000)
        if left_out:
            log.error("peer link failures not logged", count=left_out, window_ms=REFUSAL_LOG_WINDOW_MS)
        if admitted:
            log.error("peer link failed", peer=peer_id, task=task, error=f"{type(exc).__name__}: {exc}"[:200],
                      exc_info=exc)

    async def _handshake(self, stream: trio.abc.Stream, expected_peer: str | None) -> tuple[str, SecretConnection] | None:
        try:
            with trio.fail_after(self.limits.handshake_timeout_ms / 1000):
                return await handshake(
                    stream, chain_id=self.chain_id, node_id=self.node_id, signing_key=self.signing_key,
                    validators=self.peer_keys, frame_bytes_max=self.limits.frame_bytes_max,
                    expected_peer=expected_peer, first_bytes_timeout_ms=self.limits.handshake_first_bytes_timeout_ms)
        except trio.TooSlowError:
            self._refuse("handshake-timeout", expected_peer=expected_peer)
        except FrameError as exc:
            self._refuse(exc.reason, detail=exc.detail, expected_peer=expected_peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("handshake aborted", error=str(exc), expected_peer=expected_peer)
        except Exception as exc:
            # Bytes from a stranger made something raise that the handshake does not expect (a
            # RecursionError from a deeply nested frame, say): refuse that connection, nothing else.
            self._refuse("handshake-internal-error", detail=f"{type(exc).__name__}: {exc}"[:200],
                         expected_peer=expected_peer)
        await trio.aclose_forcefully(stream)
        return None

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            await self._accept_guarded(stream)
        except Exception as exc:
            self._link_failed(None, "accept", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept_guarded(self, stream: trio.SocketStream) -> None:
        source = _source_ip(stream)
        from_validator = source in self._validator_ips
        if self.inbound_allow_only_validators and not from_validator:
            self._refuse("not-a-validator-address", source=source)
            return
        if self._handshakes_by_source.get(source, 0) >= self.limits.inbound_handshakes_per_source_max:
            self._refuse("too-many-handshakes-from-source", source=source)
            return
        if not from_validator and self._stranger_handshakes >= self.limits.inbound_handshakes_max:
            # Strangers may not hold more than a bounded amount of our memory and descriptors.
            self._refuse("too-many-handshakes", source=source)
            return
        self._inbound_handshakes += 1
        self._stranger_handshakes += not from_validator
        self._handshakes_by_source[source] = self._handshakes_by_source.get(source, 0) + 1
        try:
            result = await self._handshake(stream, None)
        finally:
            self._inbound_handshakes -= 1
            self._stranger_handshakes -= not from_validator
            self._handshakes_by_source[source] -= 1
            if not self._handshakes_by_source[source]:
                del self._handshakes_by_source[source]
        if result is None:
            return
        peer_id, connection = result
        slot = self.slots.get(peer_id)
        if slot is None or peer_id in self.partitioned:
            self._refuse("peer-not-accepted", peer=peer_id,
                         detail="partitioned" if slot is not None else "not a configured peer")
            await connection.aclose()
            return
        now = trio.current_time()
        if now < slot.backoff_until:
            self._refuse("backed-off", peer=peer_id, remaining_ms=round((slot.backoff_until - now) * 1000))
            await connection.aclose()
            return
        if not self._is_primary(peer_id, slot) and slot.address is not None and (
                slot.connection is not None or now - slot.down_since < self.limits.reverse_dial_delay_ms / 1000):
            # We dial this peer ourselves: its reverse link is taken only when ours has failed for a while.
            self._refuse("wrong-direction", peer=peer_id, detail="the lower id dials")
            await connection.aclose()
            return
        await self._run_link(slot, connection, dialed_by=peer_id)

    def _dial_wait_s(self, slot: PeerSlot) -> float | None:
        """Seconds until `slot` may be dialed; None while a link is up (wait for it to end)."""
        if slot.connection is not None:
            return None
        now = trio.current_time()
        wait = slot.backoff_until - now
        if not self._is_primary(self.node_id, slot):
            wait = max(wait, slot.down_since + self.limits.reverse_dial_delay_ms / 1000 - now)
        return max(0.0, wait)

    async def _dial_loop(self, slot: PeerSlot) -> None:
        with slot.dial_scope:
            await self._dial_until_retired(slot)

    async def _dial_until_retired(self, slot: PeerSlot) -> None:
        attempt = 0
        while True:
            wait_s = self._dial_wait_s(slot)
            if wait_s is None:
                await slot.link_ended.wait()
                continue
            if wait_s > 0:
                await trio.sleep(wait_s)
                continue
            if slot.id not in self.partitioned:
                try:
                    if await self._dial(slot):
                        attempt = 0
                except Exception as exc:
                    self._link_failed(slot.id, "dial", exc)
            delay_ms = min(self.limits.reconnect_backoff_max_ms,
                           self.limits.reconnect_backoff_min_ms * 2 ** min(attempt, 20))
            attempt += 1
            # Jitter spreads redials so restarted nodes do not all dial in lockstep.
            await trio.sleep(delay_ms * self.rng.uniform(0.5, 1.0) / 1000)

    async def _dial(self, slot: PeerSlot) -> bool:
        """One dial; True when it made a link that lasted LINK_STABLE_S (the redial backoff starts over)."""
        stream = None
        # A peer host that drops SYNs would otherwise hold the dialer for the OS connect timeout.
        with trio.move_on_after(self.limits.handshake_timeout_ms / 1000):
            try:
                stream = await trio.open_tcp_stream(slot.address.host, slot.address.port)
            except OSError:
                stream = None
        if stream is None:
            return False
        try:
            result = await self._handshake(stream, slot.id)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if result is None:
            return False
        started = trio.current_time()
        await self._run_link(slot, result[1], dialed_by=self.node_id)
        return trio.current_time() - started >= LINK_STABLE_S

    async def _run_link(self, slot: PeerSlot, connection: SecretConnection, dialed_by: str) -> None:
        primary = self._is_primary(dialed_by, slot)
        if slot.connection is not None:
            if not primary and slot.dialed_by is not None and self._is_primary(slot.dialed_by, slot):
                # A reverse link never displaces a primary one (both sides apply this rule).
                self._refuse("duplicate-link", peer=slot.id, detail="a link dialed by the lower id is up")
                await connection.aclose()
                return
        if slot.link_scope is not None:
            slot.link_scope.cancel()      # the peer reconnected, or the primary link arrived: the old link is stale
        scope = trio.CancelScope()
        ended = trio.Event()
        slot.link_scope = scope
        slot.link_ended = ended
        slot.connection = connection
        slot.dialed_by = dialed_by
        slot.malformed = 0
        slot.links_opened += 1
        self.metrics.connected_peers.set(len(self.connected_peers()))
        log.info("peer connected", peer=slot.id, reconnect=slot.connected_once, dialed_by=dialed_by)
        slot.connected_once = True
        try:
            with scope:
                if self.on_link_change is not None:
                    self.on_link_change()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guarded, slot, "writer", self._write_loop, slot, connection,
                                       nursery.cancel_scope)
                    await self._guarded(slot, "reader", self._read_loop, slot, connection)
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            self._link_failed(slot.id, "link", exc)
        finally:
            if slot.connection is connection:
                slot.connection = None
                slot.dialed_by = None
                slot.down_since = trio.current_time()
                if slot.link_scope is scope:
                    slot.link_scope = None
            ended.set()
            self.metrics.connected_peers.set(len(self.connected_peers()))
            with trio.CancelScope(shield=True):
                await connection.aclose()
            log.info("peer disconnected", peer=slot.id)

    async def _guarded(self, slot: PeerSlot, task: str, loop, *args) -> None:
        """Run a link task; an exception it does not expect closes this link (logged), nothing else."""
        try:
            await loop(*args)
        except Exception as exc:
            self._link_failed(slot.id, task, exc)
            if slot.connection is args[1] and slot.link_scope is not None:
                slot.link_scope.cancel()

    async def _read_loop(self, slot: PeerSlot, connection: SecretConnection) -> None:
        while True:
            try:
                plaintext = await connection.receive_frame()
            except FrameError as exc:
                self._refuse(exc.reason, peer=slot.id, detail=exc.detail)
                if exc.reason in OFFENCE_FRAME_REASONS:
                    self.disconnect(slot.id, exc.reason)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if plaintext is None:
                return
            try:
                kind, payload = decode_frame(plaintext)
            except FrameError as exc:
                # Authenticated but malformed: drop the frame; past the peer's allowance, drop the link.
                self._refuse(exc.reason, peer=slot.id, detail=exc.detail)
                self.report_malformed(slot.id, exc.reason)
                continue
            # The peer's inbound budget: wait (TCP pushes back on this peer only) until the driver has
            # taken enough of what it sent before. One frame always fits an empty budget.
            budget_bytes = self.limits.peer_inbound_queue_bytes_max
            while slot.inbound_bytes and slot.inbound_bytes + len(payload) > budget_bytes:
                await slot.inbound_room.park()
            slot.inbound_bytes += len(payload)
            try:
                await self.inbound.send(InboundFrame(slot.id, kind, payload))
            except BaseException:
                slot.inbound_bytes -= len(payload)     # not delivered: never released
                raise

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
