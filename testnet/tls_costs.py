"""What TLS costs an RPC server per request: `python -m testnet.tls_costs [--rate R] [--requests N]`.

A server process echoes 300-byte requests that 16 client connections send at a steady R per
second (one request per write, as an open-loop client does), and its CPU per request is read
from /proc for three kinds of stream: plaintext trio.SocketStream, trio.SSLStream (TLS through
memory BIOs, what the RPC port used until 2026-12-07) and node.tls_stream.TlsSocketStream (what
it uses now). The kinds alternate for `rounds` rounds; the medians are printed as JSON. Real TCP on
127.0.0.1, real certificates from node.tls. A benchmark, not a test (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
from pathlib import Path

import trio

from node import tls, tls_stream

from .supervisor import process_usage

KINDS = ("plaintext", "trio_sslstream", "tls_socket_stream")
request_bytes = 300
connections = 16
rate_default_per_s = 1000.0
requests_default = 4000
rounds_default = 3


async def _serve(kind: str, pki: Path, ports) -> None:
    context = tls.server_context(pki / "node.pem", pki / "node-key.pem")
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    ports.put(listener.socket.getsockname()[1])

    async def echo(tcp: trio.SocketStream) -> None:
        if kind == "plaintext":
            stream: trio.abc.Stream = tcp
        elif kind == "trio_sslstream":
            stream = trio.SSLStream(tcp, context, server_side=True)
            await stream.do_handshake()
        else:
            stream = tls_stream.wrap_server(tcp, context)
            await stream.do_handshake()
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    await trio.serve_listeners(echo, [listener])


def _server_process(kind: str, pki: Path, ports) -> None:
    trio.run(_serve, kind, pki, ports)


async def _load(kind: str, pki: Path, port: int, rate_per_s: float, count: int) -> None:
    context = tls.client_context(pki / "ca.pem")
    streams = []
    for _ in range(connections):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        if kind == "plaintext":
            streams.append(tcp)
        else:
            streams.append(await tls_stream.connect(tcp, context, "127.0.0.1"))
    request = b"r" * request_bytes

    async def read_echoes(stream, expected: int) -> None:
        while expected > 0:
            expected -= len(await stream.receive_some(65536))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index, stream in enumerate(streams):
            nursery.start_soon(read_echoes, stream, len(range(index, count, connections)) * request_bytes)
        for index in range(count):
            await trio.sleep_until(start + index / rate_per_s)
            await streams[index % connections].send_all(request)
    for stream in streams:
        await stream.aclose()


def measure(kind: str, pki: Path, rate_per_s: float, count: int) -> float:
    """The server's CPU microseconds per request for one kind of stream."""
    ports = multiprocessing.Queue()
    server = multiprocessing.Process(target=_server_process, args=(kind, pki, ports), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        trio.run(_load, kind, pki, port, rate_per_s, min(count, 2 * connections))   # handshakes, warm-up
        before = process_usage(server.pid)["cpu_s"]
        trio.run(_load, kind, pki, port, rate_per_s, count)
        return (process_usage(server.pid)["cpu_s"] - before) / count * 1e6
    finally:
        server.terminate()
        server.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.tls_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=rate_default_per_s, help="requests per second (default 1000)")
    parser.add_argument("--requests", type=int, default=requests_default, help="per kind and round (default 4000)")
    parser.add_argument("--rounds", type=int, default=rounds_default, help="alternating rounds (default 3)")
    args = parser.parse_args(argv)
    if not (args.rate > 0 and args.requests >= 1 and args.rounds >= 1):
        parser.error("--rate must be above 0, --requests and --rounds at least 1")
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="bayledger-tls-costs-") as directory:
        pki = Path(directory)
        tls.make_ca(pki / "ca.pem", pki / "ca-key.pem", "tls-costs CA")
        tls.make_node_certificate(pki / "ca.pem", pki / "ca-key.pem", pki / "node.pem", pki / "node-key.pem", "node")
        for round_index in range(args.rounds):
            for kind in KINDS:
                samples[kind].append(measure(kind, pki, args.rate, args.requests))
                print(f"  round {round_index + 1}/{args.rounds} {kind}: {samples[kind][-1]:.0f} µs/request",
                      file=sys.stderr)
    print(json.dumps({"rate_per_s": args.rate, "requests": args.requests, "rounds": args.rounds,
                      "server_cpu_us_per_request": {kind: round(statistics.median(v), 1) for kind, v in samples.items()},
                      "server_cpu_us_per_request_range": {kind: [round(min(v), 1), round(max(v), 1)]
                                                          for kind, v in samples.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
