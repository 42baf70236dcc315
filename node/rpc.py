"""The msgpack-RPC server: stock msgpack-RPC over TCP, so clients in any language can call a node.

Framing (https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md): a TCP
stream of msgpack values, no length prefix.

    request       [0, msgid, method, params]   msgid: uint32, method: str, params: array
    response      [1, msgid, error, result]    error: nil or {"code": str, "message": str}
    notification  [2, method, params]          accepted and ignored (no method has side effects
                                               worth doing without an answer)

Many requests may be in flight on one connection; each is answered when it
completes, so responses can come in any order (match them by msgid). Every
bound is an `RpcLimits` field. A message that cannot be parsed (the stream is
out of step) or is larger than `message_bytes_max` is answered with an error
whose msgid is nil, then the connection is closed; anything else that is wrong
gets an error response and the connection stays open. See docs/PROTOCOL.md §8.
The message shapes, error codes and encoders are node/wire.py's, shared with the clients.

Read-only methods read `api.ledger` (storage.ledger.Ledger) directly, in the
daemon's own trio thread (LevelDB point reads are short); `submit` goes to
`api.submit`. Match queries are signed by an admitted, active participant and
replay-protected here (see `QueryGuard`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgpack
import structlog
import trio

from consensus import codec
from node import rpc_access, tls, tls_stream
from node.api import ApiError, NodeApi
from node.query_log import PAGE_RECORDS_MAX as query_log_page_records_max, QueryLog, QueryLogError, QueryRecord
from node.rpc_access import Session
from node.tls_stream import TlsSocketStream
from node.validators_view import (
    applied_epoch, current_governance, current_validators, current_validators_list, epochs_result, ledger_epochs,
)
from node.wire import (
    ERROR_BAD_SIGNATURE, ERROR_BUSY, ERROR_INTERNAL, ERROR_INVALID_PARAMS, ERROR_INVALID_REQUEST,
    ERROR_METHOD_NOT_FOUND, ERROR_NOT_FOUND, ERROR_PARSE, ERROR_REPLAYED, ERROR_STALE, ERROR_TLS_REQUIRED,
    ERROR_TOO_LARGE, ERROR_UNAUTHORIZED, MESSAGE_NOTIFICATION, MESSAGE_REQUEST, QUERY_TYPE, encode_response,
    error_map as _error, is_msgid, read_chunk_bytes_max, unpacked,
)
from storage.entries import EntryError, decode_entry
from storage.genesis import GOVERNANCE_AUTHOR
from storage.proofs import encode_epoch_steps

log = structlog.get_logger("node.rpc")

# "node": the query is good at that node only (a query answered by one node cannot be replayed to another).
QUERY_FIELDS = frozenset(("type", "chain_id", "node", "participant", "participant_key", "commitment", "nonce",
                          "time_ms"))
query_bytes_max = 1024              # a signed query is ~250 bytes
reply_batch_bytes_max = 65_536      # answers of one read gathered into one send, flushed at this size

# Methods that may wait (for a commit): each runs in its own task. The others never wait on
# anything but a block being applied, so they are answered in the reading task itself and their
# answers to one read go out in one send (a pipelining client gets them in a few segments, and the
# node saves a task and a send per call).
WAITING_METHODS = frozenset({"submit"})


@dataclass(frozen=True)
class RpcLimits:
    message_bytes_max: int = 65_536          # one request; the largest legitimate one is a 4 KiB entry
    connections_max: int = 256               # open connections; more are told busy and closed
    connections_per_source_max: int = 128    # of those, from one client address: one host cannot take them all
    requests_in_flight_max: int = 32         # per connection; beyond it the server stops reading
    idle_timeout_ms: int = 120_000           # no request and nothing in flight: close
    send_timeout_ms: int = 10_000            # a client that does not read its responses is dropped
    submit_wait_ms_max: int = 60_000         # cap on submit's timeout_ms
    query_window_ms: int = 300_000           # a query's time_ms must be this close to the server's clock
    query_ids_max: int = 300_000             # remembered query ids, all participants (~320 bytes each: 96 MB)
    query_ids_per_participant_max: int = 100_000  # one participant's share: a flood from one costs others nothing
    block_entries_per_response_max: int = 10_000   # block(): entries per answer (page with first/count)


class QueryGuard:
    """Replay protection for signed queries: a query id (SHA-256 of the signed body) is accepted once.

    Queries older or newer than `window_ms` are refused as stale, so only ids inside
    the window need remembering; ids are forgotten when they leave it. If the memory
    is full of ids still inside the window, new queries are refused (busy) rather than
    forgetting an id that could then be replayed. Each participant may fill at most
    `ids_per_participant_max` of it: beyond that its own queries are refused (busy) and
    everyone else's still answered, so one participant's flood costs others nothing
    unless ids_max / ids_per_participant_max of them flood together.
    """

    def __init__(self, window_ms: int, ids_max: int, ids_per_participant_max: int | None = None) -> None:
        self.window_ms = window_ms
        self.ids_max = ids_max
        self.ids_per_participant_max = ids_max if ids_per_participant_max is None else ids_per_participant_max
        # id -> (expiry, participant), in arrival order; and how many ids each participant holds.
        self._seen: collections.OrderedDict[bytes, tuple[int, str]] = collections.OrderedDict()
        self._held: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._seen)

    def held_by(self, participant: str) -> int:
        return self._held[participant]

    def admit(self, query_id: bytes, query_time_ms: int, now_ms: int, participant: str = "") -> None:
        if abs(query_time_ms - now_ms) > self.window_ms:
            raise ApiError(ERROR_STALE, f"query time_ms is more than {self.window_ms} ms from the node's clock "
                           f"({now_ms}); check the clock and sign a fresh query")
        self._forget_expired(now_ms)
        if query_id in self._seen:
            raise ApiError(ERROR_REPLAYED, "this signed query was already answered; sign a fresh one (new nonce)")
        if self._held[participant] >= self.ids_per_participant_max:
            raise ApiError(ERROR_BUSY, f"{self._held[participant]} recent queries of this participant are "
                           f"remembered, its share; retry when the oldest leave the {self.window_ms} ms window")
        if len(self._seen) >= self.ids_max:
            raise ApiError(ERROR_BUSY, "too many recent queries to remember; retry shortly")
        self._seen[query_id] = (query_time_ms + self.window_ms, participant)
        self._held[participant] += 1

    def _forget_expired(self, now_ms: int) -> None:
        # Arrival order is not expiry order when clocks differ; scanning the head is enough to
        # bound memory, and the full-memory case above stays safe.
        while self._seen:
            first_id, (expiry, participant) = next(iter(self._seen.items()))
            if expiry >= now_ms:
                break
            del self._seen[first_id]
            self._held[participant] -= 1
            if not self._held[participant]:
                del self._held[participant]


@dataclass(frozen=True)
class MatchQuery:
    chain_id: str
    node: str
    participant: str
    participant_key: bytes
    commitment: bytes
    nonce: int
    time_ms: int
    query_id: bytes


def decode_query(data: Any, chain_id: str, node_id: str) -> MatchQuery:
    """Parse and check the signature of a signed match query (see docs/PROTOCOL.md §8); raise ApiError."""
    if not isinstance(data, bytes):
        raise ApiError(ERROR_INVALID_PARAMS, "match takes one bin parameter: the signed query")
    if len(data) > query_bytes_max:
        raise ApiError(ERROR_INVALID_PARAMS, f"signed query of {len(data)} bytes exceeds {query_bytes_max}")
    try:
        outer = codec.unpack(data)
    except codec.EncodingError as exc:
        raise ApiError(ERROR_INVALID_PARAMS, f"signed query is not msgpack: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"body", "sig"}:
        raise ApiError(ERROR_INVALID_PARAMS, "signed query must be a map of exactly body (bin) and sig (bin)")
    body_bytes, signature = outer["body"], outer["sig"]
    if not isinstance(body_bytes, bytes) or not isinstance(signature, bytes):
        raise ApiError(ERROR_INVALID_PARAMS, "signed query body and sig must be bin")
    try:
        body = codec.unpack_canonical(body_bytes)
    except codec.EncodingError as exc:
        raise ApiError(ERROR_INVALID_PARAMS, f"query body is not canonical msgpack: {exc}") from None
    if not isinstance(body, dict) or set(body) != QUERY_FIELDS:
        raise ApiError(ERROR_INVALID_PARAMS, f"query body must be a map of exactly {', '.join(sorted(QUERY_FIELDS))}")
    if body["type"] != QUERY_TYPE:
        raise ApiError(ERROR_INVALID_PARAMS, f"query type must be {QUERY_TYPE!r}")
    if body["chain_id"] != chain_id:
        raise ApiError(ERROR_INVALID_PARAMS, f"query is for chain {body['chain_id']!r}, not {chain_id!r}")
    if body["node"] != node_id:
        raise ApiError(ERROR_INVALID_PARAMS, f"query is for node {str(body['node'])[:64]!r}, not {node_id!r}: "
                       "a signed query is good at the node it names only; sign one for this node")
    if not isinstance(body["participant"], str):
        raise ApiError(ERROR_INVALID_PARAMS, "query participant must be a string")
    for name in ("participant_key", "commitment"):
        if not isinstance(body[name], bytes) or len(body[name]) != 32:
            raise ApiError(ERROR_INVALID_PARAMS, f"query {name} must be 32 bytes")
    for name in ("nonce", "time_ms"):
        if not _is_uint(body[name], 2**63 - 1):
            raise ApiError(ERROR_INVALID_PARAMS, f"query {name} must be an integer in 0..2**63-1")
    if not codec.verify(body["participant_key"], signature, codec.DOMAIN_QUERY, chain_id, body_bytes):
        raise ApiError(ERROR_BAD_SIGNATURE, "query signature does not verify under participant_key")
    return MatchQuery(chain_id=chain_id, node=node_id, participant=body["participant"],
                      participant_key=body["participant_key"],
                      commitment=body["commitment"], nonce=body["nonce"], time_ms=body["time_ms"],
                      query_id=hashlib.sha256(body_bytes).digest())


def _is_uint(value: Any, maximum: int) -> bool:
    return type(value) is int and 0 <= value <= maximum


def _param_uint(value: Any, name: str) -> int:
    if not _is_uint(value, 2**63 - 1):
        raise ApiError(ERROR_INVALID_PARAMS, f"{name} must be a non-negative integer")
    return value


def _check_arity(params: list, minimum: int, maximum: int, usage: str) -> None:
    if not minimum <= len(params) <= maximum:
        raise ApiError(ERROR_INVALID_PARAMS, f"usage: {usage}")


class RpcMethods:
    """The methods, by name. Each takes the params list and returns the result (or raises ApiError)."""

    def __init__(self, api: NodeApi, limits: RpcLimits, clock_ms: Callable[[], int],
                 query_log: QueryLog | None = None) -> None:
        self.api = api
        self.limits = limits
        self.clock_ms = clock_ms
        self.query_log = query_log
        self.queries = QueryGuard(limits.query_window_ms, limits.query_ids_max, limits.query_ids_per_participant_max)
        # Query ids are remembered in memory only: a query signed before this start is refused instead.
        self.started_ms = clock_ms()
        self._node_id: str | None = None
        self.table: dict[str, Callable] = {
            "status": self.status, "challenge": self.challenge, "authenticate": self.authenticate,
            "validators": self.validators, "epochs": self.epochs, "epoch_steps": self.epoch_steps,
            "header": self.header, "block": self.block,
            "submit": self.submit, "match": self.match, "consistency": self.consistency,
            "participant": self.participant, "queries": self.queries_page,
        }
        assert set(self.table) <= rpc_access.PUBLIC_METHODS | set(rpc_access.METHOD_ROLES)

    @property
    def node_id(self) -> str:
        if self._node_id is None:
            self._node_id = self.api.status()["node_id"]
        return self._node_id

    def check_access(self, method: str, session: Session) -> None:
        """Raise `unauthorized` unless the session may call `method` (node.rpc_access)."""
        if method in rpc_access.PUBLIC_METHODS:
            return
        if session.role == rpc_access.ROLE_VALIDATOR:
            self._check_still_validator(session)
        if session.role == rpc_access.ROLE_REGULATOR:
            self._check_still_regulator(session)
        if session.role in (rpc_access.ROLE_PARTICIPANT, rpc_access.ROLE_AUDITOR):
            # A suspension (or a re-admission with another key) takes effect on open connections too.
            record = self.ledger.participant(session.identity)
            role = rpc_access.participant_role(record, session.public_key)
            if role is None:
                status = record.status if record is not None else "gone"
                session.role = None
                raise ApiError(ERROR_UNAUTHORIZED, f"participant {session.identity!r} is {status}; "
                               "this connection is no longer authenticated")
            session.role = role
        if session.role not in rpc_access.METHOD_ROLES.get(method, (rpc_access.ROLE_VALIDATOR,)):
            how = "" if session.authenticated else " (call challenge, then authenticate)"
            raise ApiError(ERROR_UNAUTHORIZED, f"{method} needs the role {rpc_access.needed_roles_text(method)}; "
                           f"{session.describe()}{how}")

    def _check_still_regulator(self, session: Session) -> None:
        """A regulator key replaced since it authenticated is one no longer, from the new epoch on."""
        key = current_governance(self.ledger).by_id.get(session.identity)
        if key is None or key.public_key != session.public_key:
            session.role = None
            raise ApiError(ERROR_UNAUTHORIZED, f"{session.identity!r} is no longer a regulator key (the regulator "
                           "keys changed); this connection is no longer authenticated")

    def _check_still_validator(self, session: Session) -> None:
        """A validator removed (or its key rotated out) since it authenticated is one no longer: once the
        new epoch starts, its open connections are anonymous again, as a suspended participant's are."""
        validator = current_validators(self.ledger).get(session.identity)
        if validator is None or validator.public_key != session.public_key:
            session.role = None
            raise ApiError(ERROR_UNAUTHORIZED, f"{session.identity!r} is no longer a validator with this key "
                           "(the validator set changed); this connection is no longer authenticated")

    @property
    def ledger(self) -> Any:
        return self.api.ledger

    async def _ledger_quiet(self) -> None:
        # The daemon applies blocks in a worker thread; a method's reads of the ledger start when no
        # apply is under way and do not yield until done, so they see one consistent state.
        quiet = getattr(self.api, "ledger_quiet", None)
        if quiet is not None:
            await quiet()

    async def status(self, params: list, session: Session) -> dict:
        _check_arity(params, 0, 0, "status()")
        status = self.api.status()
        if session.authenticated:
            # The schedule only gains epochs that start above the applied head, so the epoch of
            # `height` is right whether the epochs were read just before or after it.
            return {**status, "epoch": applied_epoch(ledger_epochs(self.ledger), status["height"])}
        return {name: status[name] for name in rpc_access.PUBLIC_STATUS_FIELDS}

    async def challenge(self, params: list, session: Session) -> dict:
        _check_arity(params, 0, 0, "challenge()")
        session.challenge = os.urandom(rpc_access.challenge_bytes)
        return {"challenge": session.challenge, "node": self.node_id, "chain_id": self.ledger_chain_id()}

    async def authenticate(self, params: list, session: Session) -> dict:
        challenge, session.challenge = session.challenge, None    # one attempt per challenge, whatever it holds
        if session.authenticated:
            raise ApiError(ERROR_INVALID_REQUEST, f"already authenticated as {session.describe()}; "
                           "a connection authenticates once")
        if challenge is None:
            raise ApiError(ERROR_INVALID_REQUEST, "call challenge first: authenticate signs its answer")
        _check_arity(params, 3, 3, "authenticate(identity: str, public_key: bin 32, signature: bin 64)")
        identity, public_key, signature = params
        if not isinstance(identity, str) or not 0 < len(identity) <= rpc_access.identity_bytes_max:
            raise ApiError(ERROR_INVALID_PARAMS, f"identity must be a string of 1..{rpc_access.identity_bytes_max} "
                           "characters")
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise ApiError(ERROR_INVALID_PARAMS, "public_key must be 32 bytes (bin)")
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise ApiError(ERROR_INVALID_PARAMS, "signature must be 64 bytes (bin)")
        chain_id = self.ledger_chain_id()
        payload = rpc_access.authentication_payload(chain_id, self.node_id, challenge, identity, public_key)
        if not codec.verify(public_key, signature, rpc_access.AUTH_DOMAIN, chain_id, payload):
            raise ApiError(ERROR_BAD_SIGNATURE, "the signature does not verify over this connection's challenge "
                           "(see docs/PROTOCOL.md section 8, Authentication); call challenge again")
        await self._ledger_quiet()
        role = rpc_access.role_of(identity, public_key, self.ledger.genesis, self.ledger.participant(identity),
                                  current_validators(self.ledger), current_governance(self.ledger))
        if role is None:
            # One answer for an unknown id, another key and a suspended participant: the registry is not
            # for anonymous callers to probe.
            raise ApiError(ERROR_UNAUTHORIZED, f"{identity!r} with this key is not a validator, regulator or "
                           "active participant")
        session.identity, session.public_key, session.role = identity, public_key, role
        return {"identity": identity, "role": role}

    async def validators(self, params: list, session: Session) -> list:
        """The validators of the current epoch, as the method has always answered (a list)."""
        _check_arity(params, 0, 0, "validators()")
        await self._ledger_quiet()
        return current_validators_list(self.ledger)

    async def epochs(self, params: list, session: Session) -> dict:
        """The current epoch and set and every epoch before (node.validators_view has the shape)."""
        _check_arity(params, 0, 0, "epochs()")
        await self._ledger_quiet()
        return epochs_result(ledger_epochs(self.ledger), self.ledger.height())

    def _certified_header(self, height: int) -> tuple[Any, Any]:
        header = self.ledger.header(height)
        if header is None:
            raise ApiError(ERROR_NOT_FOUND, f"no block at height {height} (height is {self.ledger.height()})")
        return header, self.ledger.certificate(height)

    async def header(self, params: list, session: Session) -> dict:
        _check_arity(params, 1, 1, "header(height: uint)")
        await self._ledger_quiet()
        header, certificate = self._certified_header(_param_uint(params[0], "height"))
        return {"header": header.to_wire(), "hash": header.hash(), "certificate": certificate.to_wire()}

    async def block(self, params: list, session: Session) -> dict:
        usage = "block(height: uint, first?: uint, count?: uint)"
        _check_arity(params, 1, 3, usage)
        height = _param_uint(params[0], "height")
        first = _param_uint(params[1], "first") if len(params) > 1 else 0
        count_max = self.limits.block_entries_per_response_max
        count = _param_uint(params[2], "count") if len(params) > 2 else count_max
        if count > count_max:
            raise ApiError(ERROR_INVALID_PARAMS, f"count {count} exceeds {count_max} entries per response")
        await self._ledger_quiet()
        header, certificate = self._certified_header(height)
        if first > header.entry_count:
            raise ApiError(ERROR_INVALID_PARAMS, f"first {first} is past the block's {header.entry_count} entries")
        # A block may hold up to 100,000 entries: answered in pages of at most count_max.
        last = min(header.entry_count, first + count)
        return {"header": header.to_wire(), "hash": header.hash(), "certificate": certificate.to_wire(),
                "first": first, "entries": list(self.ledger.block_entries(height)[first:last]),
                "results": list(self.ledger.block_results(height)[first:last])}

    async def submit(self, params: list, session: Session) -> dict:
        _check_arity(params, 1, 2, "submit(entry: bin, opts: {wait: bool, timeout_ms: uint})")
        entry = params[0]
        if not isinstance(entry, bytes):
            raise ApiError(ERROR_INVALID_PARAMS, "entry must be bin (the signed entry's msgpack bytes)")
        opts = params[1] if len(params) == 2 else {}
        if opts is None:
            opts = {}
        if not isinstance(opts, dict) or not set(opts) <= {"wait", "timeout_ms"}:
            raise ApiError(ERROR_INVALID_PARAMS, "opts must be a map with at most wait (bool) and timeout_ms (uint)")
        wait = opts.get("wait", False)
        if not isinstance(wait, bool):
            raise ApiError(ERROR_INVALID_PARAMS, "opts.wait must be a boolean")
        timeout_ms = opts.get("timeout_ms", self.limits.submit_wait_ms_max)
        timeout_ms = min(_param_uint(timeout_ms, "opts.timeout_ms"), self.limits.submit_wait_ms_max)
        self._check_submitter(entry, session)
        return await self.api.submit(entry, wait, timeout_ms / 1000)

    @staticmethod
    def _check_submitter(entry: bytes, session: Session) -> None:
        """Participants submit what they author, regulators governance entries; validators anything."""
        if session.role == rpc_access.ROLE_VALIDATOR:
            return
        try:
            author = decode_entry(entry).author
        except EntryError:
            return    # not an entry: the node's own check refuses it with its reason code
        allowed = GOVERNANCE_AUTHOR if session.role == rpc_access.ROLE_REGULATOR else session.identity
        if author != allowed:
            raise ApiError(ERROR_UNAUTHORIZED, f"{session.describe()} may submit only entries authored by "
                           f"{allowed!r}, not by {author[:64]!r}")

    async def match(self, params: list, session: Session) -> bytes:
        _check_arity(params, 1, 1, "match(signed_query: bin)")
        query = decode_query(params[0], self.ledger_chain_id(), self.node_id)
        if session.role != rpc_access.ROLE_VALIDATOR and query.participant != session.identity:
            raise ApiError(ERROR_UNAUTHORIZED, f"{session.describe()} may ask only its own queries, not "
                           f"{query.participant[:64]!r}'s")
        if query.time_ms < self.started_ms:
            raise ApiError(ERROR_STALE, "query signed before this node started (its answered queries are not "
                           "remembered across a restart); sign a fresh one")
        await self._ledger_quiet()
        # Replay protection first: each query id reaches the log at most once, so no one can push real
        # records out of the (size-bounded) log by replaying a captured query.
        self.queries.admit(query.query_id, query.time_ms, self.clock_ms(), query.participant)
        record = self.ledger.participant(query.participant)
        if record is None or record.public_key != query.participant_key:
            self._log_query(query, f"refused:{ERROR_UNAUTHORIZED}")
            raise ApiError(ERROR_UNAUTHORIZED, f"{query.participant!r} with this key is not an admitted participant")
        if record.status != "active":
            self._log_query(query, f"refused:{ERROR_UNAUTHORIZED}")
            raise ApiError(ERROR_UNAUTHORIZED, f"participant {query.participant!r} is {record.status}")
        proof = self.ledger.match_proof(query.commitment)
        if proof is None:
            self._log_query(query, "not-found")
            raise ApiError(ERROR_NOT_FOUND, "no such commitment on the ledger")
        commitment = self.ledger.commitment_record(query.commitment)
        self._log_query(query, "revoked" if commitment is not None and commitment.revoke_leaf is not None else "match")
        return proof

    def _log_query(self, query: MatchQuery, outcome: str) -> None:
        """Append the query to the node's query log (docs/OPERATIONS.md, Query log) before answering.

        A query the log cannot take is not answered: regulators must be able to see every answer."""
        if self.query_log is None:
            return
        try:
            self.query_log.append(QueryRecord(participant=query.participant, commitment=query.commitment,
                                              query_id=query.query_id, query_time_ms=query.time_ms,
                                              time_ms=self.clock_ms(), outcome=outcome))
        except QueryLogError as exc:
            log.error("query log append failed", error=str(exc))
            raise ApiError(ERROR_INTERNAL, "the node cannot write its query log; ask another node") from None

    async def queries_page(self, params: list, session: Session) -> dict:
        """queries(since_ms, limit?, after_seq?): the query log from since_ms on, oldest first, in
        pages; `next` ([time_ms, seq] of the last record, or nil at the end) continues it."""
        usage = "queries(since_ms: uint, limit?: uint, after_seq?: uint)"
        _check_arity(params, 1, 3, usage)
        since_ms = _param_uint(params[0], "since_ms")
        limit = _param_uint(params[1], "limit") if len(params) > 1 else query_log_page_records_max
        after_seq = _param_uint(params[2], "after_seq") if len(params) > 2 else 0
        if not 1 <= limit <= query_log_page_records_max:
            raise ApiError(ERROR_INVALID_PARAMS, f"limit must be 1..{query_log_page_records_max}")
        if self.query_log is None:
            raise ApiError(ERROR_NOT_FOUND, "this node keeps no query log")
        # A page reads files (about 10 ms for a full one): off the event loop; reading never
        # touches the writer's state.
        records, cursor = await trio.to_thread.run_sync(self.query_log.read, since_ms, limit, after_seq)
        return {"records": records, "next": list(cursor) if cursor is not None else None}

    def ledger_chain_id(self) -> str:
        return self.ledger.genesis.chain_id

    async def consistency(self, params: list, session: Session) -> dict:
        _check_arity(params, 2, 2, "consistency(size1: uint, size2: uint)")
        size1 = _param_uint(params[0], "size1")
        size2 = _param_uint(params[1], "size2")
        await self._ledger_quiet()
        tree_size = self.ledger.tree_size()
        if not 1 <= size1 <= size2 <= tree_size:
            raise ApiError(ERROR_INVALID_PARAMS, f"need 1 <= size1 <= size2 <= tree size {tree_size}")
        return {"size1": size1, "size2": size2, "root1": self.ledger.tree_root(size1),
                "root2": self.ledger.tree_root(size2), "proof": self.ledger.consistency_proof(size1, size2)}

    async def epoch_steps(self, params: list, session: Session) -> list:
        """The epoch steps from genesis to the epoch of block `height` (a match proof's `epochs`): what a
        verifier holding only genesis needs to check that block's certificate, e.g. for `consistency`."""
        _check_arity(params, 1, 1, "epoch_steps(height: uint)")
        height = _param_uint(params[0], "height")
        await self._ledger_quiet()
        if not 1 <= height <= self.ledger.height():
            raise ApiError(ERROR_NOT_FOUND, f"no block at height {height} (height {self.ledger.height()})")
        steps = self.ledger.epoch_steps(height)
        # The ledger keeps headers and certificates pre-encoded for proofs: answered as plain maps.
        return codec.unpack(encode_epoch_steps(steps)) if steps else []

    async def participant(self, params: list, session: Session) -> dict:
        _check_arity(params, 1, 1, "participant(id: str)")
        participant_id = params[0]
        if not isinstance(participant_id, str) or not participant_id or len(participant_id) > 256:
            raise ApiError(ERROR_INVALID_PARAMS, "id must be a non-empty string")
        if session.role == rpc_access.ROLE_PARTICIPANT and participant_id != session.identity:
            raise ApiError(ERROR_UNAUTHORIZED, f"{session.describe()} may read only its own record; another's "
                           f"needs the role {' or '.join(rpc_access.READER_ROLES)}")
        await self._ledger_quiet()
        record = self.ledger.participant(participant_id)
        if record is None:
            raise ApiError(ERROR_NOT_FOUND, f"no participant {participant_id!r}")
        return {"id": record.id, "jurisdiction": record.jurisdiction, "role": record.role,
                "public_key": record.public_key, "status": record.status}


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


def _encode_answer(msgid: int, method: str, error: dict | None, result: Any) -> bytes:
    try:
        return encode_response(msgid, error, result)
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("rpc result cannot be encoded", method=method, error=str(exc))
        return encode_response(msgid, _error(ERROR_INTERNAL, "result cannot be encoded"), None)


# The deepest legitimate request is [0, msgid, method, [params...]] with a bin or scalar per
# param: 2 levels. Allow a little more, and never enough for a recursive consumer to overflow.
request_depth_max = 8


class RequestReader:
    """A connection's bytes cut into msgpack messages, each within the request limits (no I/O).

    `feed` bytes as they arrive (EncodingError("too-large") once more than message_bytes_max are
    buffered), then take `messages()` until it stops (EncodingError for bytes that are not
    msgpack, or a message nested deeper than request_depth_max or longer than the limits allow).
    """

    def __init__(self, limits: RpcLimits) -> None:
        bytes_max = limits.message_bytes_max
        bounds = codec.DecodeLimits(
            bytes_max=bytes_max, depth_max=request_depth_max, array_len_max=bytes_max, map_len_max=bytes_max,
            bin_len_max=bytes_max, str_len_max=bytes_max, items_max=bytes_max)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, **codec.unpacker_limits(bounds))
        self.bytes_max = bytes_max
        self._fed = 0
        self._complete = 0   # stream offset just after the last complete message (tell() is only exact there)

    @property
    def pending_bytes(self) -> int:
        return self._fed - self._complete

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise codec.EncodingError(f"a message exceeds {self.bytes_max} bytes", "too-large") from None
        self._fed += len(data)

    def messages(self) -> Iterator[Any]:
        for message in unpacked(self._unpacker):   # raises WireError, a codec.EncodingError
            self._complete = self._unpacker.tell()
            codec.check_depth(message, request_depth_max)
            yield message


class _Connection:
    def __init__(self, server: "RpcServer", stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.send_lock = trio.Lock()
        self.in_flight = trio.Semaphore(server.limits.requests_in_flight_max)
        self.nursery: trio.Nursery | None = None
        self._replies: list[bytes] = []      # answers of immediate methods not yet sent
        self._reply_bytes = 0
        self._answers: list[bytes] = []      # answers of waiting methods not yet sent (see _answer)
        self._answers_writing = False
        self.session = Session()             # who this connection acts as (node.rpc_access)

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            with trio.move_on_after(self.server.limits.send_timeout_ms / 1000) as scope:
                await self.stream.send_all(data)
        if scope.cancelled_caught:
            self.server.counters["send-timeout"] += 1
            log.info("rpc client does not read its responses; closing")
            raise trio.BrokenResourceError("send timeout")

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                drain = await self._read_loop(nursery)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                drain = False
            if not drain:
                nursery.cancel_scope.cancel()
            # Otherwise the client closed its side after its requests: answer them (each is bounded
            # by its own timeout) before closing.

    def _queue_reply(self, data: bytes) -> None:
        self._replies.append(data)
        self._reply_bytes += len(data)

    async def _flush_replies(self) -> None:
        if self._replies:
            data = b"".join(self._replies)
            self._replies.clear()
            self._reply_bytes = 0
            await self.send(data)

    async def _read_loop(self, nursery: trio.Nursery) -> bool:
        """Read and dispatch until end of stream (True: answer what is in flight) or a fatal error (False)."""
        limits = self.server.limits
        reader = RequestReader(limits)
        while True:
            # Drain every complete message before reading more, so the buffer holds at most one partial one.
            try:
                for message in reader.messages():
                    await self._dispatch(nursery, message)
                    if self._reply_bytes >= reply_batch_bytes_max:
                        await self._flush_replies()
            except codec.EncodingError as exc:
                await self._fatal(ERROR_PARSE, f"not msgpack: {exc}")
                return False
            await self._flush_replies()
            pending = reader.pending_bytes
            if pending >= limits.message_bytes_max:
                await self._fatal(ERROR_TOO_LARGE, f"message exceeds {limits.message_bytes_max} bytes")
                return False
            # Never read past the limit: a message of exactly message_bytes_max fits, one byte more does not.
            data = await self._receive(min(read_chunk_bytes_max, limits.message_bytes_max - pending))
            if not data:
                return True
            try:
                reader.feed(data)
            except codec.EncodingError:
                await self._fatal(ERROR_TOO_LARGE, f"message exceeds {limits.message_bytes_max} bytes")
                return False

    async def _receive(self, max_bytes: int) -> bytes:
        idle_s = self.server.limits.idle_timeout_ms / 1000
        while True:
            with trio.move_on_after(idle_s):
                return await self.stream.receive_some(max_bytes)
            if self.in_flight.value == self.server.limits.requests_in_flight_max:
                log.debug("rpc connection idle; closing")
                return b""

    async def _fatal(self, code: str, message: str) -> None:
        self.server.counters[code] += 1
        try:
            # Answers to the well-formed requests before the bad bytes go first.
            self._queue_reply(encode_response(None, _error(code, message), None))
            await self._flush_replies()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _dispatch(self, nursery: trio.Nursery, message: Any) -> None:
        if isinstance(message, list) and len(message) == 3 and message[0] == MESSAGE_NOTIFICATION:
            self.server.counters["notification"] += 1
            return
        msgid = None
        if isinstance(message, list) and len(message) == 4 and is_msgid(message[1]):
            msgid = message[1]
        if not (isinstance(message, list) and len(message) == 4 and message[0] == MESSAGE_REQUEST
                and type(message[0]) is int and msgid is not None):
            self.server.counters[ERROR_INVALID_REQUEST] += 1
            await self.send(encode_response(msgid, _error(
                ERROR_INVALID_REQUEST, "expected a request [0, msgid (uint32), method (str), params (array)]"), None))
            return
        _, msgid, method, params = message
        if not isinstance(method, str) or not isinstance(params, list):
            self.server.counters[ERROR_INVALID_REQUEST] += 1
            await self.send(encode_response(msgid, _error(
                ERROR_INVALID_REQUEST, "method must be a string and params an array"), None))
            return
        if method not in WAITING_METHODS:
            error, result = await self.server.call(method, params, self.session)
            self._queue_reply(_encode_answer(msgid, method, error, result))
            return
        # Back-pressure: with requests_in_flight_max unanswered, stop reading until one completes.
        try:
            self.in_flight.acquire_nowait()   # no checkpoint per request: the reads yield already
        except trio.WouldBlock:
            await self.in_flight.acquire()
        self.server.waiting_call_started()
        nursery.start_soon(self._answer, msgid, method, params)

    async def _answer(self, msgid: int, method: str, params: list) -> None:
        try:
            error, result = await self.server.call(method, params, self.session)
            answer = _encode_answer(msgid, method, error, result)
        except BaseException:
            # Cancelled, or our bug (which closes this connection): either way the call has ended, and
            # a draining daemon must not wait for it.
            self._calls_ended(1)
            raise
        # One commit wakes many waiting calls of a connection at once: their answers leave in one
        # write. The first to queue writes for all, and each call ends (its in-flight slot freed)
        # only once its answer is written, so a client that does not read still holds its slots.
        self._answers.append(answer)
        if self._answers_writing:
            return
        self._answers_writing = True
        try:
            await trio.sleep(0)    # the calls woken with this one queue their answers meanwhile
            while self._answers:
                answers, self._answers = self._answers, []
                try:
                    await self.send(b"".join(answers))
                finally:
                    self._calls_ended(len(answers))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            assert self.nursery is not None
            self.nursery.cancel_scope.cancel()
        finally:
            self._answers_writing = False
            if self._answers:      # cancelled before writing them: the connection is closing
                self._calls_ended(len(self._answers))
                self._answers = []

    def _calls_ended(self, count: int) -> None:
        for _ in range(count):
            self.in_flight.release()
            self.server.waiting_call_ended()


class RpcServer:
    """Serves connections (`handle`) with one shared method table and limits."""

    def __init__(self, api: NodeApi, limits: RpcLimits = RpcLimits(), *,
                 clock_ms: Callable[[], int] = _wall_clock_ms, query_log: QueryLog | None = None) -> None:
        self.limits = limits
        self.methods = RpcMethods(api, limits, clock_ms, query_log)
        self.connections = 0
        self._per_source: collections.Counter[str] = collections.Counter()   # open connections per client address
        self.counters: collections.Counter[str] = collections.Counter()
        # Calls of WAITING_METHODS dispatched and not yet answered (or given up: client gone); a
        # stopping daemon waits for them so that answers it gave are written, not cut off.
        self.waiting_calls = 0
        self._waiting_calls_ended = trio.lowlevel.ParkingLot()
        # serve_rpc accepts connections inside this scope; stop_accepting cancels it (entered once).
        self._accepting = trio.CancelScope()
        # The TLS context of connections accepted from now on (serve_rpc sets it; None: plaintext).
        self.ssl_context: ssl.SSLContext | None = None

    def replace_ssl_context(self, context: ssl.SSLContext) -> None:
        """Serve connections accepted from now on with `context` (a renewed certificate); open ones
        keep the session they have. A plaintext server stays plaintext: ValueError."""
        if self.ssl_context is None:
            raise ValueError("this RPC server is plaintext: it has no certificate to replace")
        self.ssl_context = context

    def stop_accepting(self) -> None:
        """Close the listening sockets (new connections are refused); open connections stay served."""
        self._accepting.cancel()

    def waiting_call_started(self) -> None:
        self.waiting_calls += 1

    def waiting_call_ended(self) -> None:
        assert self.waiting_calls > 0, "waiting_call_ended without waiting_call_started"
        self.waiting_calls -= 1
        if self.waiting_calls == 0:
            self._waiting_calls_ended.unpark_all()

    async def waiting_calls_answered(self) -> None:
        """Return when no waiting call is unanswered (the caller bounds how long it waits)."""
        while self.waiting_calls:
            await self._waiting_calls_ended.park()

    async def call(self, method: str, params: list, session: Session | None = None) -> tuple[dict | None, Any]:
        """(error, result) of one call by `session` (None: an anonymous one); never raises for bad input."""
        handler = self.methods.table.get(method)
        if handler is None:
            self.counters[ERROR_METHOD_NOT_FOUND] += 1
            return _error(ERROR_METHOD_NOT_FOUND, f"no method {method[:64]!r}; see docs/PROTOCOL.md section 8"), None
        if session is None:
            session = Session()
        try:
            self.methods.check_access(method, session)
            result = await handler(params, session)
        except ApiError as exc:
            self.counters[exc.code] += 1
            return exc.to_wire(), None
        except Exception as exc:  # our bug or the ledger's: answer, log, keep serving
            self.counters[ERROR_INTERNAL] += 1
            log.exception("rpc method failed", method=method)
            return _error(ERROR_INTERNAL, f"internal error in {method}: {type(exc).__name__}"), None
        self.counters[method] += 1
        return None, result

    async def handle(self, stream: trio.abc.Stream, ssl_context: ssl.SSLContext | None = None,
                     tls_handshake_timeout_ms: int = tls.TLS_HANDSHAKE_TIMEOUT_MS) -> None:
        """Serve one connection; with `ssl_context`, over TLS (handshake in here, under its timeout)."""
        secure: TlsSocketStream | None = None
        source = _peer_host(stream)
        peer = _peer_name(stream)     # now: under TLS the socket moves to the TLS stream (tls_stream)
        try:
            refusal = None
            if self.connections >= self.limits.connections_max:
                refusal = f"{self.connections} connections open; the limit is {self.limits.connections_max}"
            elif source is not None and self._per_source[source] >= self.limits.connections_per_source_max:
                refusal = (f"{self._per_source[source]} connections from {source} open; the limit per client "
                           f"address is {self.limits.connections_per_source_max}")
            if refusal is not None:
                self.counters["refused-connection"] += 1
                if ssl_context is None:
                    with trio.move_on_after(self.limits.send_timeout_ms / 1000):
                        await stream.send_all(encode_response(None, _error(ERROR_BUSY, refusal), None))
                # Under TLS a plain answer is unreadable to the client, and a handshake for a refused
                # connection would cost what the limit saves: it is closed without a word.
                return
            self.connections += 1
            if source is not None:
                self._per_source[source] += 1
            try:
                # The handshake holds a connection slot: a flood of slow handshakes meets connections_max.
                if ssl_context is not None:
                    secure = await _tls_accept(self, stream, peer, ssl_context, tls_handshake_timeout_ms)
                    if secure is None:
                        return
                await _Connection(self, secure or stream).run()
            finally:
                self.connections -= 1
                if source is not None:
                    self._per_source[source] -= 1
                    if not self._per_source[source]:
                        del self._per_source[source]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug of ours: lose this connection, never the server (and the node)
            self.counters[ERROR_INTERNAL] += 1
            log.exception("rpc connection failed", peer=peer)
        finally:
            if secure is not None:
                await trio.aclose_forcefully(secure)
            await trio.aclose_forcefully(stream)


def _peer_host(stream: trio.abc.Stream) -> str | None:
    """The client's address (for the per-address connection limit); None when the stream has no socket."""
    try:
        return str(stream.socket.getpeername()[0])
    except (AttributeError, OSError, TypeError, ValueError, IndexError):
        return None


def _peer_name(stream: trio.abc.Stream) -> str:
    """HOST:PORT of the client, for logs; "?" when the stream has no socket."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError, TypeError, ValueError):
        return "?"
    return f"{host}:{port}"


async def _tls_accept(server: RpcServer, stream: trio.abc.Stream, peer: str, ssl_context: ssl.SSLContext,
                      timeout_ms: int) -> TlsSocketStream | None:
    """The TLS handshake of one connection, or None (counted and logged) if it fails or is too slow.

    A client that sends something other than a TLS handshake record first (a plain msgpack-RPC
    client) is told, in plain msgpack-RPC, to connect with TLS.
    """
    refused = False
    secure: TlsSocketStream | None = None
    with trio.move_on_after(timeout_ms / 1000):
        first = await _peek_byte(stream)
        if first is None:
            return None                       # closed before a byte
        if first != tls.TLS_RECORD_HANDSHAKE:
            server.counters[ERROR_TLS_REQUIRED] += 1
            log.debug("rpc client without TLS", peer=peer)
            refused = True
            await _refuse_plaintext(stream)
            return None
        secure = tls_stream.wrap_server(stream, ssl_context)   # takes the socket over from `stream`
        try:
            await secure.do_handshake()
        except trio.BrokenResourceError as exc:
            server.counters["tls-handshake-failed"] += 1
            reason = exc.__cause__ or exc
            log.debug("rpc tls handshake failed", peer=peer, reason=str(getattr(reason, "reason", None) or reason))
            await trio.aclose_forcefully(secure)
            return None
        return secure
    if not refused:                           # (a plain client that did not close in time is counted above)
        server.counters["tls-handshake-timeout"] += 1
        log.debug("rpc tls handshake timed out", peer=peer, timeout_ms=timeout_ms)
    if secure is not None:
        await trio.aclose_forcefully(secure)
    return None


async def _peek_byte(stream: trio.abc.Stream) -> int | None:
    """The first byte the client sent, left in the socket for the TLS layer; None at end of stream."""
    data = await stream.socket.recv(1, socket.MSG_PEEK)
    return data[0] if data else None


async def _refuse_plaintext(stream: trio.abc.Stream) -> None:
    await stream.send_all(encode_response(None, _error(ERROR_TLS_REQUIRED, tls.TLS_REQUIRED_MESSAGE), None))
    # Closing with the client's request unread would reset the connection, and the reset can
    # overtake the answer: end our side, then read (a bounded amount) until the client closes.
    await stream.send_eof()
    discarded = 0
    while discarded < read_chunk_bytes_max and (data := await stream.receive_some(read_chunk_bytes_max)):
        discarded += len(data)


async def serve_rpc(api: NodeApi, host: str, port: int, *, limits: RpcLimits = RpcLimits(),
                    server: RpcServer | None = None, ssl_context: ssl.SSLContext | None = None,
                    tls_handshake_timeout_ms: int = tls.TLS_HANDSHAKE_TIMEOUT_MS,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Serve msgpack-RPC on host:port (0 = any free port) until cancelled; reports the bound port.

    Pass `server` (an RpcServer over the same api) to read its `counters` (per method and per
    error code) for metrics; `limits` is then the server's own. With `ssl_context`
    (node.tls.server_context) every connection is TLS, and `server.replace_ssl_context` renews
    its certificate; None serves plaintext (development nodes and in-process tests).
    """
    server = RpcServer(api, limits) if server is None else server
    server.ssl_context = ssl_context

    async def handle(stream: trio.SocketStream) -> None:
        # The context is read per connection: replace_ssl_context takes effect at the next accept.
        await server.handle(stream, ssl_context=server.ssl_context, tls_handshake_timeout_ms=tls_handshake_timeout_ms)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def accept(handlers: trio.Nursery) -> None:
        # Connections run in `handlers`, outside the accepting scope: stop_accepting closes the
        # listeners (serve_listeners closes them on the way out) and leaves open connections be.
        try:
            with server._accepting:
                await trio.serve_listeners(handle, listeners, handler_nursery=handlers)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
        log.info("rpc no longer accepting connections", port=bound)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept, nursery)
        log.info("rpc serving", host=host, port=bound, tls=ssl_context is not None)
        task_status.started(bound)


__all__ = ["RpcLimits", "RpcServer", "QueryGuard", "decode_query", "serve_rpc", "encode_response"]
