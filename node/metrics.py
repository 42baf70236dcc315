"""Prometheus metrics: a tiny registry, the text exposition format, and an HTTP/1.0 server.

No client library: the text format is simple (https://prometheus.io/docs/instrumenting/exposition_formats/)
and the daemon needs only counters, gauges and one histogram. The server answers
`GET /metrics`, 404 for any other path, 400 for anything that is not a
well-formed request head within `request_bytes_max`, and drops clients that
take longer than `client_timeout_ms`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import trio

from consensus import codec

# Block commit latency buckets, seconds (proposal to local apply).
COMMIT_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABEL_VALUE_BYTES_MAX = 64     # peers choose reason strings: keep labels short
LABEL_VALUES_MAX = 64          # distinct label values per metric; more fold into "other"



def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass
class _Metric:
    name: str
    help: str
    kind: str  # counter | gauge
    label: str | None = None
    values: dict[str, float] = field(default_factory=dict)

    def _key(self, label_value: str | None) -> str:
        if self.label is None:
            return ""
        text = str(label_value)[:LABEL_VALUE_BYTES_MAX]
        if text not in self.values and len(self.values) >= LABEL_VALUES_MAX:
            return "other"
        return text

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        if self.label is None:
            yield f"{self.name} {_format_number(self.values.get('', 0))}"
            return
        for key in sorted(self.values):
            yield f'{self.name}{{{self.label}="{_escape(key)}"}} {_format_number(self.values[key])}'


class Counter(_Metric):
    def inc(self, amount: float = 1, label_value: str | None = None) -> None:
        assert amount >= 0, "counters only go up"
        key = self._key(label_value)
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, label_value: str | None = None) -> float:
        return self.values.get(self._key(label_value), 0)

    def mirror(self, total: float, label_value: str | None = None) -> None:
        """Take the total of a count kept elsewhere (which only goes up), e.g. the RPC server's."""
        self.values[self._key(label_value)] = total


class Gauge(_Metric):
    def set(self, value: float, label_value: str | None = None) -> None:
        self.values[self._key(label_value)] = value

    def get(self, label_value: str | None = None) -> float:
        return self.values.get(self._key(label_value), 0)


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        assert list(self.buckets) == sorted(self.buckets), "buckets must ascend"
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_format_number(float(bound))}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {_format_number(self.total)}"
        yield f"{self.name}_count {self.count}"


class NodeMetrics:
    """Every metric the daemon exports, by attribute."""

    def __init__(self) -> None:
        self.height = Gauge("bayledger_height", "Height of the last block applied to storage.", "gauge")
        self.view = Gauge("bayledger_view", "Current consensus view.", "gauge")
        self.epoch = Gauge("bayledger_epoch", "Epoch of the next height to decide (its validator set certifies it).",
                           "gauge")
        self.view_changes = Counter("bayledger_view_changes_total", "Views entered after the first.", "counter")
        self.committed_entries = Counter(
            "bayledger_committed_entries_total", "Entries in blocks applied to storage.", "counter")
        self.committed_blocks = Counter("bayledger_committed_blocks_total", "Blocks applied to storage.", "counter")
        self.mempool_size = Gauge("bayledger_mempool_size", "Accepted entries not yet committed.", "gauge")
        self.checks_all_signatures = Gauge(
            "bayledger_checks_all_signatures",
            "1 while this validator checks every entry's signature itself, 0 while it lets f + 1 others vouch.",
            "gauge")
        self.vouch_fallbacks = Counter(
            "bayledger_vouch_fallbacks_total",
            "Times vouchers came later than vouch_wait_ms and this validator checked signatures itself.", "counter")
        self.connected_peers = Gauge("bayledger_connected_peers", "Authenticated peer links up.", "gauge")
        self.catch_up_target_height = Gauge(
            "bayledger_catch_up_target_height", "Highest height a peer has shown us (0 if none).", "gauge")
        self.catch_up_blocks = Counter(
            "bayledger_catch_up_blocks_total", "Blocks applied while behind the highest certified height seen.", "counter")
        self.rejected_messages = Counter(
            "bayledger_rejected_messages_total", "Peer messages refused by consensus, by reason.", "counter",
            label="reason")
        self.rejected_frames = Counter(
            "bayledger_rejected_frames_total", "Peer frames or connections refused by the transport, by reason.",
            "counter", label="reason")
        self.peer_disconnects = Counter(
            "bayledger_peer_disconnects_total",
            "Authenticated peer links closed for misbehaviour (undecodable or oversized frames), by reason.",
            "counter", label="reason")
        self.rejected_requests = Counter(
            "bayledger_rejected_requests_total", "Client or gossiped entries refused, by reason.", "counter",
            label="reason")
        self.dropped_frames = Counter(
            "bayledger_dropped_frames_total", "Frames dropped because a peer's send queue was full.", "counter")
        self.evidence = Counter(
            "bayledger_equivocation_evidence_total", "Equivocations detected (two conflicting signed messages).",
            "counter")
        self.commit_latency = Histogram(
            "bayledger_block_commit_latency_seconds",
            "Time from a block's proposal timestamp to its local apply.", COMMIT_LATENCY_BUCKETS_S)
        self.rpc_calls = Counter(
            "bayledger_rpc_calls_total", "RPC calls answered with a result, by method.", "counter", label="method")
        self.rpc_errors = Counter(
            "bayledger_rpc_errors_total", "RPC answers that were errors (and refused connections), by code.",
            "counter", label="code")
        self.rpc_connections = Gauge("bayledger_rpc_connections", "Open RPC connections.", "gauge")
        self.rpc_certificate_not_after = Gauge(
            "bayledger_rpc_certificate_not_after_seconds",
            "When the RPC port's certificate expires (Unix time); 0 with rpc.plaintext.", "gauge")
        self.rpc_certificate_reloads = Counter(
            "bayledger_rpc_certificate_reloads_total",
            "SIGHUP reloads of the RPC certificate, by outcome (ok, failed).", "counter", label="outcome")
        self.signature_checks = Counter(
            "bayledger_signature_checks_total",
            "Ed25519 signature verifications run by this process (entries, votes, certificates, logins), "
            "valid or not.", "counter")
        # Called before each scrape to copy counts kept elsewhere (the RPC server's, the codec's) into
        # the metrics above.
        self.collectors: list[Callable[[], None]] = [self._collect_signature_checks]

    def _collect_signature_checks(self) -> None:
        # The codec counts for the whole process: verify is called from every layer, none of which
        # holds the metrics.
        self.signature_checks.mirror(codec.signature_checks_total())

    def all(self) -> list:
        return [value for value in vars(self).values() if isinstance(value, (_Metric, Histogram))]

    def render(self) -> str:
        for collect in self.collectors:
            collect()
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


async def _read_request_head(stream: trio.abc.Stream, request_bytes_max: int) -> bytes | None:
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer and b"\n\n" not in buffer:
        if len(buffer) > request_bytes_max:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return bytes(buffer) if buffer else None
        buffer += chunk
    head = bytes(buffer)
    end = head.find(b"\r\n\r\n") if b"\r\n\r\n" in head else head.find(b"\n\n")
    return head[:end] if end <= request_bytes_max else None


async def handle_metrics_client(stream: trio.abc.Stream, metrics: NodeMetrics, *,
                                request_bytes_max: int, client_timeout_ms: int) -> None:
    try:
        with trio.move_on_after(client_timeout_ms / 1000):
            head = await _read_request_head(stream, request_bytes_max)
            if head is None:
                await stream.send_all(_response("400 Bad Request", b"request head missing or too large\n"))
                return
            parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
                await stream.send_all(_response("400 Bad Request", b"malformed request line\n"))
                return
            method, target = parts[0], parts[1].split(b"?", 1)[0]
            if method != b"GET":
                await stream.send_all(_response("405 Method Not Allowed", b"only GET\n"))
            elif target != b"/metrics":
                await stream.send_all(_response("404 Not Found", b"try /metrics\n"))
            else:
                await stream.send_all(_response(
                    "200 OK", metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def serve_metrics(metrics: NodeMetrics, host: str, port: int, *, request_bytes_max: int,
                        client_timeout_ms: int, connections_max: int = 64,
                        task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve GET /metrics until cancelled; reports the bound listeners through task_status."""
    limiter = trio.CapacityLimiter(connections_max)

    async def handler(stream: trio.SocketStream) -> None:
        if limiter.available_tokens == 0:
            await trio.aclose_forcefully(stream)
            return
        async with limiter:
            await handle_metrics_client(stream, metrics, request_bytes_max=request_bytes_max,
                                        client_timeout_ms=client_timeout_ms)

    await trio.serve_tcp(handler, port, host=host, task_status=task_status)
