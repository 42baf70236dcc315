"""TLS over a non-blocking stdlib `ssl.SSLSocket`, as a trio Stream: the RPC port's TLS.

trio.SSLStream runs TLS through memory BIOs, and each read or write passes several times
between Python and OpenSSL, with locks and conflict checks in between. Here OpenSSL reads and
writes the socket itself, and Python only waits for readiness when OpenSSL asks for it. On the
bench host (2026-12-07, `python -m testnet.tls_costs`: 300-byte requests at 1,000/s, one per
write) a server spent 245-280 µs of CPU per request through trio.SSLStream, 172-178 µs through
this stream and 142-148 µs in plaintext (docs/PERFORMANCE.md).

The contract is trio's Stream: `receive_some` returns b"" at the end of the stream (a TLS
close_notify or a bare close) and raises trio.BrokenResourceError for a reset or a TLS error;
`send_all` is not to be called from two tasks at once (trio.BusyResourceError); `aclose`
sends close_notify when the socket takes it at once, and never waits for the peer's.
"""

from __future__ import annotations

import socket
import ssl

import trio

SEND_CHUNK_BYTES = 64 * 1024        # plaintext per SSL_write: four full records
UNREAD_DISCARD_BYTES_MAX = 64 * 1024  # unread bytes dropped at close, so the close is a FIN, not a reset
BUSY_RETRY_S = 0.001                # both directions wanted the same readiness (renegotiation, key update)


class TlsSocketStream(trio.abc.Stream):
    """One TLS connection over a non-blocking ssl.SSLSocket (see the module docstring)."""

    def __init__(self, tls_socket: ssl.SSLSocket) -> None:
        self._socket = tls_socket
        self._sending = False
        self._receiving = False
        self._closed = False
        self._write_interrupted = False   # a write stopped half-way (cancelled): OpenSSL cannot take another

    @property
    def socket(self) -> ssl.SSLSocket:
        """The TLS socket (for getpeername and the negotiated version)."""
        return self._socket

    async def _wait(self, want: ssl.SSLError) -> None:
        """Wait for what OpenSSL asked for. The other direction's task may already wait on the same
        readiness (trio allows one waiter per socket and direction): then poll until it is ours."""
        wait = trio.lowlevel.wait_readable if isinstance(want, ssl.SSLWantReadError) else trio.lowlevel.wait_writable
        try:
            await wait(self._socket)
        except trio.BusyResourceError:
            await trio.sleep(BUSY_RETRY_S)

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream is closed")

    async def do_handshake(self) -> None:
        """The TLS handshake. As trio.SSLStream's, a failure raises trio.BrokenResourceError whose
        __cause__ says why (an ssl.SSLError such as a certificate that does not verify, or the
        peer's close)."""
        while True:
            self._check_open()
            try:
                self._socket.do_handshake()
                return
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                await self._wait(want)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
                raise trio.BrokenResourceError(f"the peer closed during the TLS handshake: {exc}") from exc
            except OSError as exc:     # ssl.SSLError among them
                raise trio.BrokenResourceError(f"the TLS handshake failed: {exc}") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            size = SEND_CHUNK_BYTES if max_bytes is None else max_bytes
            if size < 1:
                raise ValueError("max_bytes must be at least 1")
            while True:
                self._check_open()
                try:
                    data = self._socket.recv(size)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    await self._wait(want)
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""        # close_notify, or a close without it: the end either way
                except OSError as exc:     # ssl.SSLError and resets among them: the peer's doing
                    if self._closed:
                        raise trio.ClosedResourceError("this TLS stream is closed") from exc
                    raise trio.BrokenResourceError(str(exc)) from exc
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._write_interrupted:
                raise trio.BrokenResourceError("an earlier write on this TLS stream was interrupted")
            view = memoryview(data)
            while view:
                self._check_open()
                # After a want-read or want-write, OpenSSL needs the same bytes again (the socket's
                # SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move).
                chunk = view[:SEND_CHUNK_BYTES]
                try:
                    sent = self._socket.send(chunk)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    self._write_interrupted = True     # until the same bytes go out
                    await self._wait(want)
                    continue
                except OSError as exc:     # ssl.SSLError and resets among them: the peer's doing
                    if self._closed:
                        raise trio.ClosedResourceError("this TLS stream is closed") from exc
                    raise trio.BrokenResourceError(str(exc)) from exc
                self._write_interrupted = False
                view = view[sent:]
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._socket)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._socket.unwrap()             # close_notify if it goes out at once; no wait for the peer's
            except (ssl.SSLError, OSError, ValueError):
                pass
            _discard_unread(self._socket)
            trio.lowlevel.notify_closing(self._socket)
            self._socket.close()
        await trio.lowlevel.checkpoint()


def _discard_unread(tls_socket: ssl.SSLSocket) -> None:
    """Drop the bytes the peer sent that no one read (after a failed handshake, the rest of its
    records): closing over unread bytes sends a reset, which can overtake our last TLS alert."""
    discarded = 0
    while discarded < UNREAD_DISCARD_BYTES_MAX:
        try:
            # The plain socket's recv: the raw bytes, not TLS records.
            data = socket.socket.recv(tls_socket, UNREAD_DISCARD_BYTES_MAX - discarded, socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            return
        if not data:
            return
        discarded += len(data)


def _stdlib_socket(stream: trio.SocketStream) -> socket.socket:
    """The connected socket of a trio SocketStream, taken over (the SocketStream is left empty)."""
    raw = socket.socket(fileno=stream.socket.detach())
    raw.setblocking(False)
    return raw


def wrap_server(stream: trio.SocketStream, context: ssl.SSLContext) -> TlsSocketStream:
    """The server side of a TLS connection over `stream`'s socket; call do_handshake() next."""
    return TlsSocketStream(context.wrap_socket(_stdlib_socket(stream), server_side=True,
                                               do_handshake_on_connect=False, suppress_ragged_eofs=False))


def wrap_client(stream: trio.SocketStream, context: ssl.SSLContext, server_hostname: str) -> TlsSocketStream:
    """The client side of a TLS connection over `stream`'s socket; call do_handshake() next."""
    return TlsSocketStream(context.wrap_socket(_stdlib_socket(stream), server_side=False,
                                               do_handshake_on_connect=False, suppress_ragged_eofs=False,
                                               server_hostname=server_hostname))


async def connect(stream: trio.SocketStream, context: ssl.SSLContext, server_hostname: str) -> TlsSocketStream:
    """A client's TLS connection over `stream`, handshake done; on any failure the connection is
    closed and the error raised (trio.BrokenResourceError with the cause, as do_handshake's)."""
    try:
        secure = wrap_client(stream, context, server_hostname)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        await secure.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(secure)
        raise
    return secure


__all__ = ["TlsSocketStream", "wrap_server", "wrap_client", "connect", "SEND_CHUNK_BYTES"]
