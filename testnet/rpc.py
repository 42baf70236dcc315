"""A pipelined msgpack-RPC connection for the load generator.

The load generator keeps many requests in flight on each connection (each
with its own msgid), each request encoded once ahead of the run (`pack_call`),
and counts a lost connection as an error of the calls on it. The project's
client library (node/client.py) pipelines too, but it encodes every call and
retries a broken call on the next endpoint, which would hide the very errors a
benchmark must count. The wire format is the public msgpack-RPC one (node/wire.py):
request `[0, msgid, method, params]`, response `[1, msgid, error, result]`,
over TLS trusting the testnet's CA (`open_stream`; ca_file None is plaintext).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import trio

from node import wire
from node.address import Address
from node.client import ConnectionFailed, Credentials, RpcError as ClientRpcError, authenticate_stream

response_bytes_max = 16 * 1024 * 1024  # one decoded response (a match proof is a few KiB)
pack_call = wire.encode_method_and_params


async def open_stream(host: str, port: int, ca_file: str | Path | None,
                      credentials: Credentials | None = None) -> trio.abc.Stream:
    """The one connect step of the testnet's RPC clients: TCP, then TLS trusting `ca_file` (the
    network's CA) with the host name checked (None: plaintext, for in-process test servers), then
    with `credentials` the authentication (docs/PROTOCOL.md §8) as that identity."""
    from node import tls, tls_stream

    stream = await trio.open_tcp_stream(host, port)
    if ca_file is not None:
        stream = await tls_stream.connect(stream, tls.client_context(ca_file), host)
    try:
        if credentials is not None:
            await authenticate_stream(stream, credentials, f"{host}:{port}")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


class RpcError(Exception):
    """An error answered by the node: its stable `code` and human `message`."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(Exception):
    """The node closed the connection or sent something that is not msgpack-RPC."""


class PipelinedConnection:
    """One TCP connection with any number of outstanding calls; run `reader` in a nursery.

    Requests made while one write is under way go out together in the next write, as a
    pipelining client does: one system call (and one read on the node) for many requests."""

    def __init__(self, stream: trio.abc.Stream):
        self._stream = stream
        self._outbox: list[bytes] = []     # requests waiting for the next write
        self._writing = False               # a caller is writing the outbox (and loops until it is empty)
        self._pending: dict[int, tuple[trio.Event, list]] = {}
        self._msgids = itertools.cycle(range(wire.msgid_max + 1))
        self._closed: Exception | None = None

    @classmethod
    async def open(cls, host: str, port: int, ca_file: str | Path | None = None,
                   credentials: Credentials | None = None) -> "PipelinedConnection":
        return cls(await open_stream(host, port, ca_file, credentials))

    async def reader(self) -> None:
        reader = wire.ResponseReader(response_bytes_max)
        try:
            while True:
                data = await self._stream.receive_some(wire.read_chunk_bytes_max)
                if not data:
                    raise ConnectionLost("node closed the connection")
                reader.feed(data)
                for msgid, error, result in reader.responses():
                    waiter = self._pending.pop(msgid, None)
                    if waiter is not None:
                        waiter[1].append((error, result))
                        waiter[0].set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, wire.WireError, ConnectionLost) as exc:
            self._fail(exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc)))

    def _fail(self, exc: Exception) -> None:
        self._closed = exc
        for event, _ in self._pending.values():
            event.set()
        self._pending.clear()

    async def call(self, method: str, params: list) -> Any:
        return await self.call_packed(pack_call(method, params))

    async def call_packed(self, method_and_params: bytes) -> Any:
        """Call with the method and params already msgpack-encoded (see `pack_call`)."""
        if self._closed is not None:
            raise self._closed
        msgid = next(self._msgids)
        event = trio.Event()
        box: list = []
        self._pending[msgid] = (event, box)
        self._outbox.append(wire.encode_packed_request(msgid, method_and_params))
        if not self._writing:
            await self._write_outbox()
        try:
            await event.wait()
        finally:
            self._pending.pop(msgid, None)
        if not box:
            raise self._closed or ConnectionLost("connection closed")
        error, result = box[0]
        if error is not None:
            if isinstance(error, dict):
                raise RpcError(str(error.get("code")), str(error.get("message")))
            raise RpcError("error", str(error))
        return result

    async def _write_outbox(self) -> None:
        self._writing = True
        try:
            # Shielded: a send cut halfway would leave a torn frame on a shared connection.
            with trio.CancelScope(shield=True):
                await trio.sleep(0)   # callers woken with this one queue their requests first
                while self._outbox:
                    data = b"".join(self._outbox)
                    self._outbox.clear()
                    await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._outbox.clear()
            self._fail(ConnectionLost(str(exc)))   # wakes every caller waiting for an answer
        finally:
            self._writing = False

    async def aclose(self) -> None:
        await self._stream.aclose()


async def call_async(host: str, port: int, method: str, params: list, timeout_s: float,
                     ca_file: str | Path | None = None, credentials: Credentials | None = None) -> Any:
    """One call on a fresh connection; raise ConnectionLost on timeout or a refused connection."""
    with trio.move_on_after(timeout_s) as scope:
        try:
            connection = await PipelinedConnection.open(host, port, ca_file, credentials)
        except ClientRpcError as exc:           # the node refused the authentication
            raise RpcError(exc.code, exc.message) from None
        except ConnectionFailed as exc:         # not a Bayledger node's answer while authenticating
            raise ConnectionLost(str(exc)) from None
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        except trio.BrokenResourceError as exc:    # the TLS handshake failed
            raise ConnectionLost(f"TLS with {host}:{port} failed: {exc.__cause__ or exc}") from None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.reader)
                try:
                    return await connection.call(method, params)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await connection.aclose()
    assert scope.cancelled_caught
    raise ConnectionLost(f"{host}:{port} did not answer {method} within {timeout_s} s")


def call(address: str, method: str, params: list, timeout_s: float = 2.0, ca_file: str | Path | None = None,
         credentials: Credentials | None = None) -> Any:
    """Blocking form of `call_async` for the command line; address is HOST:PORT."""
    where = Address.parse(address)
    return trio.run(call_async, where.host, where.port, method, params, timeout_s, ca_file, credentials)
