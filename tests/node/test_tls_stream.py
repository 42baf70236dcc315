"""node.tls_stream: TLS over a non-blocking ssl.SSLSocket as a trio Stream, over real TCP on
127.0.0.1 with certificates from node.tls; its contract is trio's Stream (see the module)."""

from __future__ import annotations

import os
import socket
import ssl
import struct

import pytest
import trio
import trio.testing

from node import tls, tls_stream

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    tls.make_ca(d / "ca.pem", d / "ca-key.pem", "test CA")
    tls.make_node_certificate(d / "ca.pem", d / "ca-key.pem", d / "node.pem", d / "node-key.pem", "hk-1")
    return d


async def tcp_pair(pki, server_hostname="127.0.0.1"):
    """(server, client) TlsSocketStreams over one real TCP connection, before the handshakes."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    server_context = tls.server_context(pki / "node.pem", pki / "node-key.pem")
    client_context = tls.client_context(pki / "ca.pem")
    client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
    server_tcp = await listener.accept()
    await listener.aclose()
    server = tls_stream.wrap_server(server_tcp, server_context)
    client = tls_stream.wrap_client(client_tcp, client_context, server_hostname)
    return server, client


async def tls_pair(pki):
    """(server, client) TlsSocketStreams over one real TCP connection, both handshakes done."""
    server, client = await tcp_pair(pki)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def receive_exactly(stream, count: int) -> bytes:
    received = bytearray()
    while len(received) < count:
        data = await stream.receive_some(256 * 1024)
        assert data, f"end of stream after {len(received)} of {count} bytes"
        received += data
    return bytes(received)


async def test_megabytes_cross_both_ways_at_once_byte_for_byte(pki):
    server, client = await tls_pair(pki)
    up, down = os.urandom(3 * MIB + 7), os.urandom(2 * MIB + 3)
    got = {}

    async def take(name, stream, count):
        got[name] = await receive_exactly(stream, count)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, "server", server, len(up))
            nursery.start_soon(take, "client", client, len(down))
            nursery.start_soon(client.send_all, up)
            nursery.start_soon(server.send_all, down)
    assert got == {"server": up, "client": down}
    assert server.socket.version() in ("TLSv1.2", "TLSv1.3")
    await client.aclose()
    await server.aclose()


async def test_close_is_the_end_of_the_stream_for_the_peer_and_closed_for_us(pki):
    server, client = await tls_pair(pki)
    await client.send_all(b"last words")
    await client.aclose()
    with trio.fail_after(5):
        assert await receive_exactly(server, 10) == b"last words"
        assert await server.receive_some(100) == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some(100)
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"x")
    await client.aclose()          # twice is fine
    await server.aclose()


async def test_a_close_wakes_a_task_waiting_to_receive(pki):
    server, client = await tls_pair(pki)
    outcome = []

    async def wait_for_data():
        try:
            await server.receive_some(100)
        except trio.ClosedResourceError:
            outcome.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_data)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
    assert outcome == ["closed"]
    await client.aclose()


async def test_two_senders_or_two_receivers_at_once_are_refused(pki):
    server, client = await tls_pair(pki)
    # The client never reads, so a large send blocks once the socket buffers are full.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"\0" * 32 * MIB)
            nursery.start_soon(server.receive_some, 100)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.send_all(b"x")
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some(100)
            nursery.cancel_scope.cancel()
    await server.aclose()
    await client.aclose()


async def test_a_send_cancelled_half_way_breaks_the_stream_for_later_sends(pki):
    server, client = await tls_pair(pki)
    with trio.move_on_after(0.3) as scope:
        await server.send_all(b"\0" * 32 * MIB)     # the client does not read: this blocks
    assert scope.cancelled_caught

    async def drain():
        while await client.receive_some(256 * 1024):
            pass

    # OpenSSL holds part of a record and would take the rest from whatever bytes come next: a
    # later send with other bytes would corrupt the stream, so it fails cleanly instead, even
    # once the client reads again.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with pytest.raises(trio.BrokenResourceError):
                await server.send_all(b"\1" * 4 * MIB)
            nursery.cancel_scope.cancel()
    await server.aclose()
    await client.aclose()


async def test_a_reset_by_the_peer_is_a_broken_stream(pki):
    server, client = await tls_pair(pki)
    raw = client.socket
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()                     # RST: linger on with a zero timeout
    with trio.fail_after(5):
        try:
            data = await server.receive_some(100)
        except trio.BrokenResourceError:
            data = None
    assert data in (None, b"")      # a reset is broken; the kernel may report it as an end first
    await server.aclose()


async def test_a_wrong_host_name_fails_both_handshakes(pki):
    server, client = await tcp_pair(pki, server_hostname="elsewhere.example")
    server_failure = []

    async def serve():
        try:
            await server.do_handshake()
        except trio.BrokenResourceError as exc:
            server_failure.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(trio.BrokenResourceError) as failed:
                await client.do_handshake()
            await client.aclose()       # the server then sees the alert or the end
    # As with trio.SSLStream, the cause says why: callers print it.
    assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
    assert len(server_failure) == 1
    await server.aclose()


async def test_max_bytes_below_one_is_a_value_error(pki):
    server, client = await tls_pair(pki)
    with pytest.raises(ValueError):
        await server.receive_some(0)
    await server.aclose()
    await client.aclose()


def test_the_server_refuses_renegotiation(pki):
    # Each renegotiation is a full handshake of server work on a connection that already counts
    # once against the connection limits.
    context = tls.server_context(pki / "node.pem", pki / "node-key.pem")
    assert context.options & ssl.OP_NO_RENEGOTIATION
