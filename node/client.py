"""Client library: a synchronous and a trio msgpack-RPC client for Bayledger nodes, plus helpers.

    with Client(["127.0.0.1:26611", "127.0.0.1:26612"], ca_file="ca.pem",
                credentials=Credentials("hk-bank", signing_key)) as client:
        status = client.call("status")

    async with AsyncClient(["127.0.0.1:26611"]) as client:
        async with trio.open_nursery() as nursery:   # pipelining: calls share one connection
            ...

Both keep one connection open and reuse it; a node that is down (refused,
reset, unreachable, timed out on connect) is skipped for the next endpoint.
A call whose connection breaks before its answer, or that a draining node
answers `shutting-down`, is retried on the next endpoint: every Bayledger method is safe to repeat (entries carry a nonce, so a
repeated submit is answered already-committed or replayed-nonce, never
applied twice; a match query is re-signed per attempt, for the node it reaches).
With `credentials`, each new connection authenticates first (challenge, then
authenticate; docs/PROTOCOL.md §8); without them it is anonymous and may call
only the reduced `status`. Errors are typed:
`RpcError` (the node answered an error: `.code`, `.message`), `ConnectionFailed`
(no endpoint could be reached or none answered in time).

Helpers: `seal_document` (salt + commitment), entry builders with fresh nonces,
`build_match_query`, `verify_match_proof` (offline, against the genesis file).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import socket
import ssl
import time
from typing import Any, Iterable, NamedTuple, Sequence

import nacl.signing
import trio

from consensus import codec
from node import rpc_access
from node import tls as _tls
from node import tls_stream
from node import wire
from node.address import Address, parse_addresses
from node.wire import ERROR_NOT_FOUND, ERROR_SHUTTING_DOWN, WireError
from storage import entries as ledger_entries
from storage.genesis import Genesis, Participant
from storage.proofs import Verdict, verify_match_proof as _verify_match_proof

DEFAULT_TIMEOUT_S = 30.0
SUBMIT_WAIT_MS_DEFAULT = 30_000


class Credentials(NamedTuple):
    """Who a client authenticates as: an id in genesis or the registry, and that id's signing key."""

    identity: str
    signing_key: nacl.signing.SigningKey


class ClientError(Exception):
    """Base of the client's typed errors."""


class RpcError(ClientError):
    """The node answered with an error map."""

    def __init__(self, code: str, message: str, endpoint: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.endpoint = endpoint


class ConnectionFailed(ClientError):
    """No endpoint could be reached, or the connection broke and no other endpoint answered."""


class TlsFailed(ConnectionFailed):
    """The TLS handshake with a node failed: a certificate not trusted or not for that host, or a
    node that does not speak TLS. The message says what to do."""


class CaFileError(ClientError):
    """The CA file given to trust cannot be used (missing, unreadable, no PEM certificate)."""


# OpenSSL's reasons when the other side answers a ClientHello with bytes that are not TLS.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                              "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "WRONG_SSL_VERSION", "UNEXPECTED_RECORD"})
_X509_NAME_MISMATCHES = (62, 64)   # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def _ssl_context(tls: bool, ca_file: str | os.PathLike | None) -> ssl.SSLContext | None:
    if not tls:
        return None
    try:
        return _tls.client_context(ca_file)
    except _tls.TlsError as exc:
        raise CaFileError(f"{exc} (--ca FILE / BAYLEDGER_CA)") from None


def _tls_failure(endpoint: "Endpoint", exc: BaseException) -> TlsFailed:
    """What a failed handshake with `endpoint` means, and what to do about it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _X509_NAME_MISMATCHES:
            return TlsFailed(f"{endpoint}: the node's certificate is not for {endpoint.host!r} "
                             f"({exc.verify_message}); dial a name or address its certificate holds")
        return TlsFailed(f"{endpoint}: the node's certificate is not trusted ({exc.verify_message}); give the CA "
                         f"that signed it with --ca FILE (or BAYLEDGER_CA)")
    if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS_REASONS:
        return TlsFailed(f"{endpoint} does not speak TLS (a plaintext development node?); --plaintext "
                         f"(BAYLEDGER_PLAINTEXT=1) connects without TLS, for development only")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)):
        return TlsFailed(f"{endpoint} closed the connection during the TLS handshake (busy, it refused this "
                         f"client, or it is not the node's RPC port: its p2p and metrics ports speak other protocols)")
    return TlsFailed(f"{endpoint}: TLS handshake failed: {getattr(exc, 'reason', None) or exc}")


class ProtocolError(ConnectionFailed):
    """A node sent something that is not a msgpack-RPC response (the connection is dropped)."""


Endpoint = Address              # a node's RPC address, as the client names it
# 'HOST:PORT[,HOST:PORT...]' (or a list of such strings) as endpoints; AddressError (a ValueError) says what is wrong.
parse_endpoints = parse_addresses


def _error_of(error: Any, endpoint: Endpoint) -> RpcError:
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return RpcError(error["code"], str(error.get("message", "")), str(endpoint))
    return RpcError("invalid-response", f"error of unexpected shape: {error!r}"[:200], str(endpoint))


# -- synchronous client ---------------------------------------------------------------------------

class Client:
    """A blocking client: one connection, reused; pipelined `call_many`; failover across endpoints.

    TLS by default: the node's certificate must be signed by `ca_file`'s CA (or one the system
    trusts, without ca_file) and name the endpoint's host. `tls=False` is for plaintext
    development nodes only."""

    def __init__(self, endpoints: str | Sequence[str] | Sequence[Endpoint], *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, ca_file: str | os.PathLike | None = None,
                 tls: bool = True, credentials: Credentials | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_s = timeout_s
        self._ssl_context = _ssl_context(tls, ca_file)
        self.credentials = credentials
        self.node_id: str | None = None      # the connected node's id (known once authenticated)
        self.role: str | None = None         # the role the node gave this client (rpc_access)
        self._index = 0
        self._sock: socket.socket | None = None
        self._reader: wire.ResponseReader | None = None
        self._msgids = itertools.count(1)

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = None

    def _connect(self) -> None:
        if self._sock is not None:
            return
        failures = []
        for attempt in range(len(self.endpoints)):
            endpoint = self.endpoints[self._index]
            try:
                self._sock = self._open(endpoint)
                self._reader = wire.ResponseReader()
            except TlsFailed as exc:
                failures.append(str(exc))
                self._index = (self._index + 1) % len(self.endpoints)
                continue
            except OSError as exc:
                failures.append(f"{endpoint}: {exc.strerror or exc}")
                self._index = (self._index + 1) % len(self.endpoints)
                continue
            try:
                self._authenticate()
                return
            except RpcError:
                self.close()
                raise                   # refused by the node: a clear answer, not a node that is down
            except (OSError, ProtocolError, ValueError) as exc:   # ValueError: WireError, a bad challenge
                self.close()
                failures.append(f"{endpoint}: {exc}")
                self._index = (self._index + 1) % len(self.endpoints)
        raise ConnectionFailed("cannot connect to any node (" + "; ".join(failures) + ")")

    def _authenticate(self) -> None:
        """With credentials, authenticate the new connection (docs/PROTOCOL.md §8, Authentication)."""
        self.node_id = self.role = None
        if self.credentials is None:
            return
        identity, signing_key = self.credentials
        [answer] = self._exchange([("challenge", [])])
        if isinstance(answer, RpcError):
            raise answer
        [result] = self._exchange([("authenticate", rpc_access.sign_authentication(signing_key, identity, answer))])
        if isinstance(result, RpcError):
            raise RpcError(result.code, f"authenticating as {identity!r}: {result.message}", result.endpoint)
        self.node_id, self.role = answer["node"], result.get("role") if isinstance(result, dict) else None

    def connected_node_id(self) -> str:
        """The id of the node this client is connected to (connecting, and asking status, if need be)."""
        self._connect()
        if self.node_id is None:
            status = self.call("status")
            if not isinstance(status, dict) or not isinstance(status.get("node_id"), str):
                raise ProtocolError(f"{self.endpoint}: status has no node_id")
            self.node_id = status["node_id"]
        return self.node_id

    def _open(self, endpoint: Endpoint) -> socket.socket:
        """The one connect step: TCP, then the TLS handshake (raises OSError or TlsFailed)."""
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=self.timeout_s)
        if self._ssl_context is None:
            return sock
        try:
            sock = self._ssl_context.wrap_socket(sock, server_hostname=endpoint.host)
        except (ssl.SSLError, ConnectionError) as exc:
            sock.close()
            raise _tls_failure(endpoint, exc) from None
        except OSError:
            sock.close()
            raise
        return sock

    def _next_msgid(self) -> int:
        return next(self._msgids) % (wire.msgid_max + 1)

    def call(self, method: str, *params: Any) -> Any:
        """One call; the result, or RpcError / ConnectionFailed."""
        return self.call_many([(method, list(params))])[0]

    def call_many(self, calls: Iterable[tuple[str, list]], *, raise_errors: bool = True) -> list[Any]:
        """Send every call at once (pipelined), then read the answers. With raise_errors=False an
        error comes back in the list as an RpcError instead of being raised."""
        calls = list(calls)
        failures = []
        # A reused connection may have been closed by the node meanwhile (idle timeout): that costs one
        # extra attempt, not the endpoint.
        attempts = len(self.endpoints) + (1 if self._sock is not None else 0)
        for attempt in range(attempts):
            self._connect()
            endpoint = self.endpoint
            try:
                # Params given as a function of the node id (a signed query names its node) are built
                # for the node this attempt reached.
                resolved = [(method, params(self.connected_node_id()) if callable(params) else params)
                            for method, params in calls]
                results = self._exchange(resolved)
            except (OSError, ProtocolError, ValueError) as exc:   # ValueError: WireError, a bad challenge
                failures.append(f"{endpoint}: {exc}")
                self.close()
                self._index = (self._index + 1) % len(self.endpoints)
                continue
            stopping = [r for r in results if isinstance(r, RpcError) and r.code == ERROR_SHUTTING_DOWN]
            if stopping and len(self.endpoints) > 1:
                # The node is draining before it stops: the next node can take the calls.
                failures.append(f"{endpoint}: {stopping[0].message}")
                self.close()
                self._index = (self._index + 1) % len(self.endpoints)
                continue
            if raise_errors:
                for result in results:
                    if isinstance(result, RpcError):
                        raise result
            return results
        raise ConnectionFailed("no node answered (" + "; ".join(failures) + ")")

    def _exchange(self, calls: list[tuple[str, list]]) -> list[Any]:
        assert self._sock is not None and self._reader is not None
        msgids = [self._next_msgid() for _ in calls]
        payload = b"".join(wire.encode_request(msgid, method, params) for msgid, (method, params) in zip(msgids, calls))
        self._sock.sendall(payload)
        waiting = {msgid: position for position, msgid in enumerate(msgids)}
        results: list[Any] = [None] * len(calls)
        while waiting:
            for msgid, error, result in self._responses():
                if msgid is None and error is not None:
                    # The node refused the connection or the stream (busy, parse error): not for one call.
                    raise ProtocolError(f"node closed the connection: {_error_of(error, self.endpoint)}")
                position = waiting.pop(msgid, None)
                if position is None:
                    continue  # an answer to a call abandoned earlier
                results[position] = _error_of(error, self.endpoint) if error is not None else result
                if not waiting:
                    break
            if not waiting:
                break
            data = self._sock.recv(wire.read_chunk_bytes_max)
            if not data:
                raise ProtocolError("connection closed by the node")
            self._reader.feed(data)
        return results

    def _responses(self):
        try:
            yield from self._reader.responses()
        except WireError as exc:
            # Bytes that are not msgpack-RPC: most often another of the node's ports (p2p, metrics).
            raise ProtocolError(f"{exc}; is {self.endpoint} the node's RPC port? (its p2p and metrics ports "
                                f"speak other protocols)") from None


# -- trio client ----------------------------------------------------------------------------------

class AsyncClient:
    """A trio client: one connection shared by concurrent calls (pipelined, answered in any order).

    Use `async with AsyncClient(endpoints) as client:`; the reader task lives in the
    context's nursery. A call waits at most `timeout_s`, then raises `CallTimeout` (a
    ConnectionFailed; not retried elsewhere: a slow node is not a node that is down).
    """

    def __init__(self, endpoints: str | Sequence[str] | Sequence[Endpoint], *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, ca_file: str | os.PathLike | None = None,
                 tls: bool = True, credentials: Credentials | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_s = timeout_s
        self._ssl_context = _ssl_context(tls, ca_file)   # as Client's: TLS unless tls=False
        self.credentials = credentials                   # as Client's
        self.node_id: str | None = None
        self.role: str | None = None
        self._refusal: str | None = None     # why the node closed the last connection, if it said
        self._index = 0
        self._stream: trio.abc.Stream | None = None
        self._waiting: dict[int, trio.MemorySendChannel] = {}
        self._msgids = itertools.count(1)
        self._send_lock = trio.Lock()
        self._connect_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._generation = 0

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index]

    async def __aenter__(self) -> "AsyncClient":
        self._exit_stack = contextlib.AsyncExitStack()
        await self._exit_stack.__aenter__()
        await self._exit_stack.enter_async_context(self._session())
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._exit_stack.__aexit__(*exc)

    @contextlib.asynccontextmanager
    async def _session(self):
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self._drop()

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        self._generation += 1
        for channel in self._waiting.values():
            channel.close()
        self._waiting.clear()
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connect(self) -> None:
        async with self._connect_lock:
            if self._stream is not None:
                return
            failures = []
            for attempt in range(len(self.endpoints)):
                endpoint = self.endpoints[self._index]
                try:
                    with trio.fail_after(self.timeout_s):
                        stream = await self._open(endpoint)
                        try:
                            await self._authenticate(stream)
                        except BaseException:
                            await trio.aclose_forcefully(stream)
                            raise
                    self._stream = stream
                    break
                except TlsFailed as exc:
                    failures.append(str(exc))
                    self._index = (self._index + 1) % len(self.endpoints)
                except (OSError, trio.TooSlowError, trio.BrokenResourceError, ProtocolError) as exc:
                    failures.append(f"{endpoint}: {getattr(exc, 'strerror', None) or exc or 'timed out'}")
                    self._index = (self._index + 1) % len(self.endpoints)
            else:
                raise ConnectionFailed("cannot connect to any node (" + "; ".join(failures) + ")")
            assert self._nursery is not None, "use AsyncClient in `async with`"
            self._nursery.start_soon(self._read_loop, self._stream, self._generation)

    async def _open(self, endpoint: Endpoint) -> trio.abc.Stream:
        """The one connect step: TCP, then the TLS handshake (raises OSError or TlsFailed)."""
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        self._refusal = None
        if self._ssl_context is None:
            return stream
        try:
            return await tls_stream.connect(stream, self._ssl_context, endpoint.host)
        except trio.BrokenResourceError as exc:
            raise _tls_failure(endpoint, exc.__cause__ or exc) from None

    async def _authenticate(self, stream: trio.abc.Stream) -> None:
        """With credentials, authenticate a new stream before its reader starts (as Client's)."""
        self.node_id = self.role = None
        if self.credentials is not None:
            self.node_id, self.role = await authenticate_stream(stream, self.credentials, str(self.endpoint))

    async def _read_loop(self, stream: trio.abc.Stream, generation: int) -> None:
        reader = wire.ResponseReader()
        try:
            while True:
                data = await stream.receive_some(wire.read_chunk_bytes_max)
                if not data:
                    break
                reader.feed(data)
                for msgid, error, result in reader.responses():
                    if msgid is None:
                        # The node refused the connection or the stream (busy, tls-required, parse error).
                        if error is not None:
                            self._refusal = f"node closed the connection: {_error_of(error, self.endpoint)}"
                        break
                    channel = self._waiting.pop(msgid, None)
                    if channel is not None:
                        channel.send_nowait((error, result))
                        channel.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError, WireError):
            pass
        if generation == self._generation:
            await self._drop()   # wakes every waiting call with a closed channel: they retry elsewhere

    async def call(self, method: str, *params: Any) -> Any:
        failures = []
        attempts = len(self.endpoints) + (1 if self._stream is not None else 0)  # as Client.call_many
        for attempt in range(attempts):
            await self._connect()
            endpoint = self.endpoint
            msgid = next(self._msgids) % (wire.msgid_max + 1)
            send_channel, receive_channel = trio.open_memory_channel(1)
            self._waiting[msgid] = send_channel
            try:
                with trio.fail_after(self.timeout_s):
                    async with self._send_lock:
                        if self._stream is None:   # dropped by the reader since _connect
                            raise trio.ClosedResourceError("connection lost")
                        await self._stream.send_all(wire.encode_request(msgid, method, params))
                    error, result = await receive_channel.receive()
            except trio.TooSlowError:
                self._waiting.pop(msgid, None)
                raise CallTimeout(f"{endpoint} did not answer {method} within {self.timeout_s} s") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
                self._waiting.pop(msgid, None)
                failures.append(f"{endpoint}: {self._refusal or f'connection lost ({type(exc).__name__})'}")
                await self._drop()
                self._index = (self._index + 1) % len(self.endpoints)
                continue
            if error is not None:
                failure = _error_of(error, endpoint)
                if failure.code == ERROR_SHUTTING_DOWN and len(self.endpoints) > 1:
                    failures.append(f"{endpoint}: {failure.message}")   # draining: try the next node
                    await self._drop()
                    self._index = (self._index + 1) % len(self.endpoints)
                    continue
                raise failure
            return result
        raise ConnectionFailed("no node answered (" + "; ".join(failures) + ")")


async def authenticate_stream(stream: trio.abc.Stream, credentials: Credentials, where: str) -> tuple[str, str | None]:
    """Authenticate a new stream on which nothing else is in flight: (node id, role), or RpcError
    (the node refused: the message names the identity) or ProtocolError (not a Bayledger node)."""
    identity, signing_key = credentials
    reader = wire.ResponseReader()

    async def call(msgid: int, method: str, params: list) -> Any:
        # Nothing else is in flight on the stream: the next message is this call's answer.
        await stream.send_all(wire.encode_request(msgid, method, params))
        while True:
            for answer_id, error, result in reader.responses():
                if error is not None:
                    failure = _error_of(error, where)
                    raise RpcError(failure.code, f"authenticating as {identity!r}: {failure.message}", where)
                if answer_id != msgid:
                    raise ProtocolError(f"{where}: answer {answer_id!r} to call {msgid}")
                return result
            data = await stream.receive_some(wire.read_chunk_bytes_max)
            if not data:
                raise ProtocolError(f"{where}: connection closed while authenticating")
            reader.feed(data)

    try:
        answer = await call(0, "challenge", [])
        params = rpc_access.sign_authentication(signing_key, identity, answer)
        result = await call(1, "authenticate", params)
    except ValueError as exc:   # WireError, or a challenge answer that cannot be signed
        raise ProtocolError(f"{where}: {exc}") from None
    return answer["node"], result.get("role") if isinstance(result, dict) else None


class CallTimeout(ConnectionFailed):
    """A node accepted the call but did not answer within the client's timeout."""


# -- helpers --------------------------------------------------------------------------------------

def seal_document(document: bytes, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """(commitment, salt) for a document: SHA-256(domain tag || salt || SHA-256(document)).

    A fresh random 32-byte salt unless one is given (to recompute a commitment). The salt
    must travel only with the document, never to the ledger.
    """
    salt = ledger_entries.new_salt() if salt is None else salt
    return ledger_entries.commitment_of(hashlib.sha256(document).digest(), salt), salt


def fresh_nonce() -> int:
    """A nonce without local state: microseconds since the epoch (unique per author in practice,
    increasing, and the ledger accepts a window of out-of-order nonces)."""
    return time.time_ns() // 1000


def now_ms() -> int:
    return int(time.time() * 1000)


def build_commit(key: nacl.signing.SigningKey, author: str, chain_id: str, commitment: bytes, *,
                 kind: str = "credit-report", jurisdiction: str, expires_ms: int | None = None,
                 nonce: int | None = None) -> bytes:
    return ledger_entries.build_commit(key, author, chain_id, commitment, kind, jurisdiction,
                                       fresh_nonce() if nonce is None else nonce, now_ms(), expires_ms)


def build_revoke(key: nacl.signing.SigningKey, author: str, chain_id: str, commitment: bytes, reason: str, *,
                 nonce: int | None = None) -> bytes:
    return ledger_entries.build_revoke(key, author, chain_id, commitment, reason,
                                       fresh_nonce() if nonce is None else nonce, now_ms())


def build_governance_revoke(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, commitment: bytes,
                            reason: str, *, nonce: int | None = None) -> bytes:
    """A revoke by governance (any commitment, whoever submitted it): regulator signatures meeting
    both jurisdictions' thresholds, here or added later with `cosign`."""
    return ledger_entries.build_governance_revoke(signers, chain_id, commitment, reason,
                                                  fresh_nonce() if nonce is None else nonce, now_ms())


def build_admit(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, participant: Participant, *,
                nonce: int | None = None) -> bytes:
    return ledger_entries.build_admit(signers, chain_id, participant, fresh_nonce() if nonce is None else nonce,
                                      now_ms())


def build_suspend(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, participant_id: str, *,
                  nonce: int | None = None) -> bytes:
    return ledger_entries.build_suspend(signers, chain_id, participant_id,
                                        fresh_nonce() if nonce is None else nonce, now_ms())


def build_reconfigure(signers: Iterable[tuple[str, nacl.signing.SigningKey]], chain_id: str, epoch: int,
                      changes: Iterable[Any], addresses: dict[str, dict[str, str]], *,
                      nonce: int | None = None, governance: Iterable[Any] = ()) -> bytes:
    """A reconfigure entry changing `epoch` (the chain's latest; consensus.epochs changes; `addresses`:
    each added validator's {"p2p", "rpc"}). Its replay guard is the epoch; the nonce is only a field."""
    return ledger_entries.build_reconfigure(signers, chain_id, epoch, changes, addresses,
                                            fresh_nonce() if nonce is None else nonce, now_ms(), governance)


cosign = ledger_entries.cosign


def build_match_query(key: nacl.signing.SigningKey, participant: str, chain_id: str, commitment: bytes, *,
                      node: str, nonce: int | None = None, time_ms: int | None = None) -> bytes:
    """A signed match query for one node (`node`: its id; another node refuses it):
    {"body": canonical map, "sig": Ed25519 over DOMAIN_QUERY, chain_id, body}."""
    body = codec.pack({
        "type": wire.QUERY_TYPE, "chain_id": chain_id, "node": node, "participant": participant,
        "participant_key": bytes(key.verify_key), "commitment": commitment,
        "nonce": int.from_bytes(os.urandom(8), "big") >> 1 if nonce is None else nonce,
        "time_ms": now_ms() if time_ms is None else time_ms,
    })
    return codec.pack({"body": body, "sig": codec.sign(key, codec.DOMAIN_QUERY, chain_id, body)})


def verify_match_proof(proof: bytes | dict, genesis: Genesis, commitment: bytes, now_ms: int | None = None, *,
                       max_status_age_ms: int | None = None) -> Verdict:
    """Offline verification against the genesis file (no node trusted); see storage.proofs.
    With `max_status_age_ms`, a match whose status section is older than that is `stale`."""
    return _verify_match_proof(proof, genesis, commitment, now_ms, max_status_age_ms=max_status_age_ms)


def match(client: Client, key: nacl.signing.SigningKey, participant: str, chain_id: str,
          commitment: bytes) -> bytes | None:
    """Ask for the MatchProof of `commitment`: its bytes, or None if the ledger has no such commitment."""
    try:
        # Signed for whichever node the call reaches (a query is good at the node it names only).
        return client.call_many([("match", lambda node: [build_match_query(key, participant, chain_id, commitment,
                                                                         node=node)])])[0]
    except RpcError as exc:
        if exc.code == ERROR_NOT_FOUND:
            return None
        raise
