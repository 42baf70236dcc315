"""Authenticated peer links for the Byzantine validator (testnet/byzantine.py).

The links are the daemon's own: `node.transport.handshake` (ephemeral X25519,
then the validator's Ed25519 signature over the transcript) and its
`SecretConnection` frames. What differs from `node.transport.PeerNetwork` is
what a hostile process needs:

- every send is awaited and written at once, with no queue that would drop or
  reorder what the behaviour wants on the wire;
- the connection's own frame limit is raised (`send_frame_bytes_max`), so a
  behaviour can send frames at and over the *peer's* limit, and `send_raw`
  writes bytes with no framing at all (a forged length prefix);
- links are taken from both directions: the listener accepts the peers that
  dial us (today the lower id dials), and we dial every higher id at once and
  every lower id that has not dialled us for a while (so this keeps working if
  the daemon starts dialling from both sides).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Callable

import nacl.signing
import structlog
import trio

from consensus.validators import ValidatorSet
from node import transport
from node.config import Address

log = structlog.get_logger()

redial_min_s = 0.2
redial_max_s = 2.0
lower_id_grace_s = 3.0          # wait this long for a lower id to dial us before dialling it ourselves
short_link_s = 1.0              # a link that dies younger than this (the peer refused or backed us off) backs off
receive_bytes_max_default = 128 * 1024 * 1024


@dataclass(eq=False)
class Link:
    peer_id: str
    connection: transport.SecretConnection
    inbound: bool
    opened_at: float = field(default_factory=trio.current_time)
    lock: trio.Lock = field(default_factory=trio.Lock)
    closed: trio.Event = field(default_factory=trio.Event)

    async def send_frames(self, plaintexts: list[bytes]) -> None:
        async with self.lock:
            await self.connection.send_frames(plaintexts)

    async def send_raw(self, data: bytes) -> None:
        async with self.lock:
            await self.connection.stream.send_all(data)


class Links:
    """At most one live authenticated link per peer (the newest wins)."""

    def __init__(self, *, me: str, chain_id: str, signing_key: nacl.signing.SigningKey, validators: ValidatorSet,
                 peers: dict[str, Address], listen: Address, send_frame_bytes_max: int,
                 handshake_timeout_s: float, on_frame: Callable[[str, str, bytes], None] | None = None,
                 rng: random.Random | None = None):
        self.me = me
        self.chain_id = chain_id
        self.signing_key = signing_key
        self.validators = validators
        self.peers = {p: a for p, a in peers.items() if p != me}
        self.listen = listen
        self.send_frame_bytes_max = send_frame_bytes_max
        self.handshake_timeout_s = handshake_timeout_s
        self.on_frame = on_frame
        self.rng = rng or random.Random()
        self.links: dict[str, Link] = {}
        self.changed = trio.Event()
        self.counters: dict[str, int] = {"links_opened": 0, "links_lost": 0, "frames_received": 0,
                                         "handshakes_refused": 0}

    # --- queries and sending ----------------------------------------------------------------------

    def live(self) -> dict[str, Link]:
        return dict(self.links)

    async def wait_changed(self) -> None:
        await self.changed.wait()

    def _signal(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def send(self, peer_id: str, plaintexts: list[bytes]) -> bool:
        """Send frames to the peer's live link; False (and the link dropped) if there is none or it broke."""
        link = self.links.get(peer_id)
        if link is None:
            return False
        try:
            await link.send_frames(plaintexts)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, transport.FrameError):
            await self.drop(link)
            return False

    async def send_message(self, peer_id: str, payload: bytes) -> bool:
        """One consensus message (the payload of a "c" frame)."""
        return await self.send(peer_id, [transport.encode_frame(transport.FRAME_KIND_CONSENSUS, payload)])

    async def send_raw(self, peer_id: str, data: bytes) -> bool:
        link = self.links.get(peer_id)
        if link is None:
            return False
        try:
            await link.send_raw(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self.drop(link)
            return False

    async def drop(self, link: Link) -> None:
        if self.links.get(link.peer_id) is link:
            del self.links[link.peer_id]
            self.counters["links_lost"] += 1
            log.info("link lost", peer=link.peer_id)
            self._signal()
        link.closed.set()
        with trio.CancelScope(shield=True):
            await link.connection.aclose()

    # --- running ------------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(functools.partial(trio.serve_tcp, self._accept, self.listen.port,
                                                  host=self.listen.host))
            for peer_id, address in self.peers.items():
                if address is not None:
                    nursery.start_soon(self._dial_loop, peer_id, address)
            task_status.started()

    async def _handshake(self, stream: trio.abc.Stream, expected_peer: str | None) -> tuple[str, transport.SecretConnection] | None:
        try:
            with trio.fail_after(self.handshake_timeout_s):
                return await transport.handshake(
                    stream, chain_id=self.chain_id, node_id=self.me, signing_key=self.signing_key,
                    validators=self.validators, frame_bytes_max=self.send_frame_bytes_max,
                    expected_peer=expected_peer)
        except (trio.TooSlowError, transport.FrameError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as exc:
            self.counters["handshakes_refused"] += 1
            log.debug("handshake failed", expected_peer=expected_peer, error=str(exc))
        await trio.aclose_forcefully(stream)
        return None

    async def _accept(self, stream: trio.SocketStream) -> None:
        result = await self._handshake(stream, None)
        if result is None:
            return
        peer_id, connection = result
        if peer_id not in self.peers:
            await connection.aclose()
            return
        await self._run_link(Link(peer_id, connection, inbound=True))

    async def _dial_loop(self, peer_id: str, address: Address) -> None:
        attempt = 0
        missing_since = trio.current_time()

        async def back_off() -> None:
            nonlocal attempt
            delay = min(redial_max_s, redial_min_s * 2 ** min(attempt, 10))
            attempt += 1
            await trio.sleep(delay * self.rng.uniform(0.5, 1.0))

        while True:
            link = self.links.get(peer_id)
            if link is not None:
                await link.closed.wait()
                missing_since = trio.current_time()
                if missing_since - link.opened_at < short_link_s:
                    await back_off()     # refused right after the handshake: do not hammer the peer
                else:
                    attempt = 0
                continue
            if self.me < peer_id or trio.current_time() - missing_since >= lower_id_grace_s:
                stream = None
                with trio.move_on_after(self.handshake_timeout_s):
                    try:
                        stream = await trio.open_tcp_stream(address.host, address.port)
                    except OSError:
                        stream = None
                if stream is not None and peer_id not in self.links:
                    result = await self._handshake(stream, peer_id)
                    if result is not None:
                        # Run the link in the background: a peer that refuses the direction closes it soon.
                        self._nursery.start_soon(self._run_link, Link(peer_id, result[1], inbound=False))
                        await trio.sleep(0.05)
                        continue
                elif stream is not None:
                    await trio.aclose_forcefully(stream)
            await back_off()

    async def _run_link(self, link: Link) -> None:
        old = self.links.get(link.peer_id)
        self.links[link.peer_id] = link
        self.counters["links_opened"] += 1
        log.info("link up", peer=link.peer_id, inbound=link.inbound)
        self._signal()
        if old is not None:
            await self.drop(old)
        try:
            await self._read_loop(link)
        finally:
            await self.drop(link)

    async def _read_loop(self, link: Link) -> None:
        while not link.closed.is_set():
            try:
                plaintext = await link.connection.receive_frame()
            except (transport.FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if plaintext is None:
                return
            self.counters["frames_received"] += 1
            if self.on_frame is None:
                continue
            try:
                kind, payload = transport.decode_frame(plaintext)
            except transport.FrameError:
                continue
            self.on_frame(link.peer_id, kind, payload)
