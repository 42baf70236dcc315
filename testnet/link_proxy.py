"""`python -m testnet.link_proxy --config FILE`: delay, loss and partitions on the testnet's validator links.

This machine's kernel has no netem, so `tc` cannot add delay; this proxy adds it in user space.

Links. The proxy listens on one 127.0.0.1 port per DIRECTED validator link (dialer A -> target B) and
forwards what arrives there to B's real p2p port. A's config lists, under [[peers]], B's address as
that port. A node authenticates its peer by the key in the handshake, never by the address it dialed
(node/transport.py), so the extra hop changes nothing but time. Only p2p links are proxied: RPC and
metrics are not delayed.

Delay. Per direction, each chunk read is stamped and written out at read time + delay_ms, in order (a
reader task and a writer task joined by a queue). The delay is one-way and applies in each direction:
a round trip between two validators takes 2 x delay. Bandwidth is not limited.

Loss, honestly. TCP cannot drop bytes from a stream without corrupting it, so no byte is ever dropped.
What a lost segment costs a TCP connection is time: the receiver gets nothing past the hole until the
sender retransmits, at the earliest one RTO later (Linux's minimum RTO is 200 ms). So a "lost" chunk
(probability P per chunk) is delivered max(200 ms, 2 x delay) late, and everything read after it on
that direction waits behind it (head-of-line blocking). Not emulated: fast retransmit (which repairs
many real losses in about one round trip), the sender's congestion window shrinking, lost ACKs. A
chunk is what one read returned (up to READ_CHUNK_BYTES), not a TCP segment, so P is a per-chunk, not
a per-packet, probability. The draws come from a random.Random seeded by (seed, link, connection
number, direction): with the same seed the n-th chunk of a direction has the same fate; which bytes
form a chunk depends on timing, so a run is reproduced in distribution, not byte for byte.

Partition. The state may hold groups of node names; a link whose ends are in different groups is cut:
its open connections are closed and new ones are closed at once, until a state without groups (heal).
Names in no group count as one more group.

Control. The testnet writes the state ({"generation", "delay_ms", "loss", "seed", "groups"}) to a
JSON file and the proxy polls it every STATE_POLL_INTERVAL_S. A new generation is applied (the cut
connections closed) and then written back to the ack file: the testnet's command returns once the ack
shows its generation. The first ack also says every listener is bound.

Limits, all per direction of one connection unless said: at most BUFFERED_BYTES_MAX bytes read and not
yet written and at most QUEUED_CHUNKS_MAX chunks (past either the reader stops reading, so TCP pushes
back on the sender and a flood cannot eat memory); reads of at most READ_CHUNK_BYTES; at most CONNECTIONS_PER_LINK_MAX connections per link;
CONNECT_TIMEOUT_S to reach the target.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

READ_CHUNK_BYTES = 64 * 1024             # one read from a source
BUFFERED_BYTES_MAX = 4 * 1024 * 1024     # per direction: read but not yet written (held for the delay)
QUEUED_CHUNKS_MAX = 4096                 # per direction: so a trickle of 1-byte reads cannot pile up objects
CONNECTIONS_PER_LINK_MAX = 16            # a link carries one node link and its redials; more is a flood
CONNECT_TIMEOUT_S = 5.0                  # reaching the target node's p2p port
STATE_POLL_INTERVAL_S = 0.1              # how often the state file is read
CUT_CLOSE_TIMEOUT_S = 1.0                # cut connections are gone before the ack (bounded wait)
RTO_MIN_MS = 200.0                       # Linux's minimum retransmission timeout
DELAY_MS_MAX = 10_000.0                  # one-way delay accepted
LOSS_MAX = 1.0                           # loss must stay below this (at 1 nothing would ever arrive)


class LinkProxyError(Exception):
    """A config or state the proxy cannot use; the message says which field and why."""


@dataclass(frozen=True)
class Link:
    """One directed validator link: `dialer` reaches `target` through `listen`, forwarded to `forward`."""
    dialer: str
    target: str
    listen: tuple[str, int]
    forward: tuple[str, int]

    @property
    def name(self) -> str:
        return f"{self.dialer}>{self.target}"


@dataclass(frozen=True)
class LinkState:
    generation: int = 0
    delay_ms: float = 0.0
    loss: float = 0.0
    seed: int = 0
    groups: tuple[tuple[str, ...], ...] | None = None   # None: no partition

    @property
    def retransmit_delay_ms(self) -> float:
        """How late a "lost" chunk arrives: one retransmission timeout."""
        return max(RTO_MIN_MS, 2 * self.delay_ms)

    def group_of(self, name: str) -> int:
        for index, group in enumerate(self.groups or ()):
            if name in group:
                return index
        return -1      # names in no group form one group together

    def cuts(self, link: Link) -> bool:
        return bool(self.groups) and self.group_of(link.dialer) != self.group_of(link.target)

    def to_document(self) -> dict:
        return {"generation": self.generation, "delay_ms": self.delay_ms, "loss": self.loss, "seed": self.seed,
                "groups": [list(g) for g in self.groups] if self.groups else None}


def check_delay_ms(value: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not 0 <= value <= DELAY_MS_MAX:
        raise LinkProxyError(f"link delay must be a number of milliseconds in 0..{DELAY_MS_MAX:.0f}, got {value!r}")
    return float(value)


def check_loss(value: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not 0 <= value < LOSS_MAX:
        raise LinkProxyError(f"link loss must be a probability with 0 <= P < 1, got {value!r}")
    return float(value)


def parse_state(document: object) -> LinkState:
    """The state file's JSON as a LinkState; LinkProxyError naming the bad field."""
    if not isinstance(document, dict):
        raise LinkProxyError("state: must be a JSON object")
    generation, seed, groups = document.get("generation"), document.get("seed", 0), document.get("groups")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise LinkProxyError(f"state.generation: a non-negative integer, got {generation!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LinkProxyError(f"state.seed: an integer, got {seed!r}")
    if groups is not None and not (isinstance(groups, list) and all(
            isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups)):
        raise LinkProxyError("state.groups: null or a list of lists of node names")
    return LinkState(generation=generation, delay_ms=check_delay_ms(document.get("delay_ms", 0.0)),
                     loss=check_loss(document.get("loss", 0.0)), seed=seed,
                     groups=tuple(tuple(g) for g in groups) if groups else None)


def _host_port(text: object, key: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LinkProxyError(f"{key}: HOST:PORT, got {text!r}")
    return host, int(port)


def parse_config(document: object) -> tuple[list[Link], Path, Path]:
    """(links, state file, ack file) from the config file's JSON."""
    try:
        links = [Link(dialer=str(item["dialer"]), target=str(item["target"]),
                      listen=_host_port(item["listen"], f"links[{i}].listen"),
                      forward=_host_port(item["forward"], f"links[{i}].forward"))
                 for i, item in enumerate(document["links"])]
        return links, Path(document["state_file"]), Path(document["ack_file"])
    except (KeyError, TypeError) as exc:
        raise LinkProxyError(f"config: missing or malformed field {exc}") from None


# ---------------------------------------------------------------- one direction of one connection


class Pipe:
    """source -> sink: the reader stamps each chunk with its release time, the writer sends it then."""

    def __init__(self, source: trio.abc.Stream, sink: trio.abc.Stream, state, rng: random.Random,
                 stats: "ProxyStats", buffered_bytes_max: int, chunk_bytes: int):
        self.source, self.sink, self.state, self.rng, self.stats = source, sink, state, rng, stats
        self.buffered_bytes_max, self.chunk_bytes = buffered_bytes_max, chunk_bytes
        self.buffered = 0                  # bytes read and not yet written
        self.queued = 0                    # chunks read and not yet written
        self._drained = trio.Event()

    async def run(self) -> None:
        send, receive = trio.open_memory_channel(math.inf)   # bounded in bytes by the reader's wait
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, send)
            nursery.start_soon(self._write, receive)

    async def _read(self, send) -> None:
        async with send:
            release_at = -math.inf
            while True:
                while (self.buffered + self.chunk_bytes > self.buffered_bytes_max
                       or self.queued >= QUEUED_CHUNKS_MAX):
                    self._drained = trio.Event()
                    await self._drained.wait()      # stop reading: TCP pushes back on the sender
                data = await self.source.receive_some(self.chunk_bytes)
                state: LinkState = self.state()
                late_ms = state.delay_ms
                if data and state.loss and self.rng.random() < state.loss:
                    late_ms += state.retransmit_delay_ms
                    self.stats.lost_chunks += 1
                # In order: a chunk never overtakes the one before it (head-of-line behind a "lost" one).
                release_at = max(release_at, trio.current_time() + late_ms / 1000)
                self.buffered += len(data)
                self.queued += 1
                self.stats.buffered_peak_bytes = max(self.stats.buffered_peak_bytes, self.buffered)
                await send.send((release_at, data))
                if not data:
                    return

    async def _write(self, receive) -> None:
        async with receive:
            async for release_at, data in receive:
                await trio.sleep_until(release_at)
                if not data:
                    try:
                        await self.sink.send_eof()   # half-close, as the source did
                    except (AttributeError, trio.ClosedResourceError, trio.BrokenResourceError, OSError):
                        pass
                    return
                await self.sink.send_all(data)
                self.buffered -= len(data)
                self.queued -= 1
                self._drained.set()


@dataclass
class ProxyStats:
    connections_total: int = 0
    refused_cut: int = 0                  # closed at once: the link is partitioned
    refused_full: int = 0                 # closed at once: CONNECTIONS_PER_LINK_MAX reached
    lost_chunks: int = 0
    buffered_peak_bytes: int = 0          # the most any one direction held at once


# ---------------------------------------------------------------- the proxy


@dataclass
class LinkProxy:
    links: list[Link]
    state: LinkState = field(default_factory=LinkState)
    buffered_bytes_max: int = BUFFERED_BYTES_MAX
    chunk_bytes: int = READ_CHUNK_BYTES

    def __post_init__(self):
        if self.chunk_bytes > self.buffered_bytes_max:
            raise LinkProxyError("buffered_bytes_max must hold at least one chunk")
        self.stats = ProxyStats()
        self.bound_ports: dict[str, int] = {}
        self._open: dict[str, set[trio.CancelScope]] = {link.name: set() for link in self.links}
        self._opened: dict[str, int] = {link.name: 0 for link in self.links}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind every link's listener, report {link name: port}, then serve until cancelled."""
        bound = []
        try:
            for link in self.links:
                try:
                    listeners = await trio.open_tcp_listeners(link.listen[1], host=link.listen[0])
                except OSError as exc:
                    raise LinkProxyError(f"cannot listen on {link.listen[0]}:{link.listen[1]} for link "
                                         f"{link.name}: {exc.strerror}") from None
                bound.append((link, listeners))
                self.bound_ports[link.name] = listeners[0].socket.getsockname()[1]
        except BaseException:
            for _, listeners in bound:
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
            raise
        async with trio.open_nursery() as nursery:
            for link, listeners in bound:
                nursery.start_soon(trio.serve_listeners, functools.partial(self._serve, link), listeners)
            task_status.started(dict(self.bound_ports))

    async def apply(self, state: LinkState) -> None:
        """Take `state`; once this returns, the connections of links it cuts are closed."""
        self.state = state
        cut = [link for link in self.links if state.cuts(link)]
        for link in cut:
            for scope in self._open[link.name]:
                scope.cancel()
        with trio.move_on_after(CUT_CLOSE_TIMEOUT_S):
            while any(self._open[link.name] for link in cut):
                await trio.sleep(0.005)

    async def _serve(self, link: Link, client: trio.SocketStream) -> None:
        async with client:
            if self.state.cuts(link):
                self.stats.refused_cut += 1
                return
            if len(self._open[link.name]) >= CONNECTIONS_PER_LINK_MAX:
                self.stats.refused_full += 1
                return
            number = self._opened[link.name]
            self._opened[link.name] += 1
            self.stats.connections_total += 1
            scope = trio.CancelScope()
            self._open[link.name].add(scope)
            try:
                with scope:
                    await self._forward(link, client, number)
            except* Exception as failure:
                # Our own bug in one connection costs that connection, never the proxy (and every link).
                log(f"connection {number} of {link.name} failed: {failure.exceptions!r}"[:500])
            finally:
                self._open[link.name].discard(scope)

    async def _forward(self, link: Link, client: trio.SocketStream, number: int) -> None:
        target = None
        with trio.move_on_after(CONNECT_TIMEOUT_S):
            try:
                target = await trio.open_tcp_stream(*link.forward)
            except OSError:
                return          # target down: the dialer sees its connection closed and redials later
        if target is None:
            return
        seed = self.state.seed
        async with target:
            pipes = [Pipe(source, sink, lambda: self.state, random.Random(f"{seed}/{link.name}/{number}/{way}"),
                          self.stats, self.buffered_bytes_max, self.chunk_bytes)
                     for way, source, sink in (("out", client, target), ("back", target, client))]
            async with trio.open_nursery() as nursery:
                for pipe in pipes:
                    nursery.start_soon(self._run_pipe, pipe, nursery.cancel_scope)

    @staticmethod
    async def _run_pipe(pipe: Pipe, connection: trio.CancelScope) -> None:
        try:
            await pipe.run()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):   # from the pipe's nursery
            connection.cancel()     # one side reset: the whole connection ends, as it would without us


# ---------------------------------------------------------------- the process


def write_json_atomically(path: Path, document: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


def read_state(path: Path) -> LinkState:
    try:
        return parse_state(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise LinkProxyError(f"state file {path}: {exc}") from None


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} link-proxy: {message}", flush=True)


async def follow_state_file(proxy: LinkProxy, state_path: Path, ack_path: Path) -> None:
    """Apply each new generation of the state file, then acknowledge it in the ack file."""
    applied: int | None = None
    last_error = ""
    while True:
        try:
            state = read_state(state_path)
        except LinkProxyError as exc:
            if str(exc) != last_error:
                log(f"keeping the current state: {exc}")   # a torn or bad write is retried, never fatal
                last_error = str(exc)
        else:
            last_error = ""
            if state.generation != applied:
                await proxy.apply(state)
                applied = state.generation
                try:
                    write_json_atomically(ack_path, {"generation": applied, "pid": os.getpid(),
                                                     "ports": proxy.bound_ports})
                except OSError as exc:       # the waiting command times out and says so; the links keep going
                    log(f"cannot write {ack_path}: {exc}")
                groups = " | ".join(",".join(g) for g in state.groups) if state.groups else "none"
                log(f"generation {applied}: delay {state.delay_ms:g} ms, loss {state.loss:g}, partition {groups}")
        await trio.sleep(STATE_POLL_INTERVAL_S)


async def serve(config_path: Path) -> None:
    try:
        links, state_path, ack_path = parse_config(json.loads(config_path.read_text()))
    except (OSError, ValueError) as exc:
        raise LinkProxyError(f"config {config_path}: {exc}") from None
    proxy = LinkProxy(links, read_state(state_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)   # every listener bound (LinkProxyError names one that is not)
        log(f"{len(links)} links listening")
        nursery.start_soon(follow_state_file, proxy, state_path, ack_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.link_proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the proxy's JSON config (written by the testnet)")
    args = parser.parse_args(argv)
    status = 0
    try:
        trio.run(serve, args.config)
    except* LinkProxyError as errors:     # raised inside a nursery, so it arrives in a group
        for error in errors.exceptions:
            print(f"link-proxy: {error}", file=sys.stderr)
        status = 1
    except* KeyboardInterrupt:
        pass
    return status


if __name__ == "__main__":
    sys.exit(main())
