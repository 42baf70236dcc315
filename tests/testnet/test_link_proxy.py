"""The link proxy (testnet/link_proxy.py): delay, loss emulation, partitions and its byte limit in-process
in front of a 127.0.0.1 echo server, then once through a real 4-validator testnet."""

from __future__ import annotations

import functools
import random
import socket
import statistics
import struct
import time

import pytest
import trio

from testnet import control, links, ports
from testnet.demo import bayledger, sample_commands
from testnet.link_proxy import RTO_MIN_MS, Link, LinkProxy, LinkState
from testnet.network import Network, plan_network
from tests.support.testnet_process import pid_exists, status_json

ECHO_HOST = "127.0.0.1"


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def start_echo(nursery, handler=echo) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=ECHO_HOST))
    return listeners[0].socket.getsockname()[1]


async def start_proxy(nursery, target_port: int, state: LinkState, **limits) -> tuple[LinkProxy, int]:
    link = Link("a", "b", listen=(ECHO_HOST, 0), forward=(ECHO_HOST, target_port))
    proxy = LinkProxy([link], state, **limits)
    bound = await nursery.start(proxy.run)
    return proxy, bound[link.name]


async def round_trips_ms(port: int, count: int) -> list[float]:
    stream = await trio.open_tcp_stream(ECHO_HOST, port)
    times = []
    async with stream:
        for i in range(count):
            started = trio.current_time()
            message = b"ping %d" % i
            await stream.send_all(message)
            assert await receive_exactly(stream, len(message)) == message
            times.append((trio.current_time() - started) * 1000)
    return times


async def receive_exactly(stream, count: int) -> bytes:
    parts, got = [], 0
    while got < count:
        data = await stream.receive_some(count - got)
        assert data, "closed early"
        parts.append(data)
        got += len(data)
    return b"".join(parts)


async def test_round_trip_is_twice_the_one_way_delay():
    async with trio.open_nursery() as nursery:
        proxy, port = await start_proxy(nursery, await start_echo(nursery), LinkState(delay_ms=40))
        times = await round_trips_ms(port, 8)
        assert min(times) >= 2 * 40
        assert statistics.median(times) < 2 * 40 + 60
        nursery.cancel_scope.cancel()


async def test_zero_delay_forwards_at_once():
    async with trio.open_nursery() as nursery:
        proxy, port = await start_proxy(nursery, await start_echo(nursery), LinkState(delay_ms=0))
        times = await round_trips_ms(port, 8)
        assert statistics.median(times) < 30
        nursery.cancel_scope.cancel()


async def test_loss_delays_chunks_by_a_retransmission_but_never_corrupts_or_reorders():
    payload = random.Random(7).randbytes(3 * 1024 * 1024)
    async with trio.open_nursery() as nursery:
        state = LinkState(delay_ms=5, loss=0.3, seed=11)
        proxy, port = await start_proxy(nursery, await start_echo(nursery), state)
        # Small writes, paced, so the stream is read as many chunks and some are "lost".
        stream = await trio.open_tcp_stream(ECHO_HOST, port)
        slowest_ms = 0.0
        async with stream:
            async def send():
                for offset in range(0, len(payload), 64 * 1024):
                    await stream.send_all(payload[offset:offset + 64 * 1024])
                    await trio.sleep(0.002)

            async def probe():
                nonlocal slowest_ms
                # Round trips on a second connection: some meet a "lost" chunk and wait a retransmission.
                probe_stream = await trio.open_tcp_stream(ECHO_HOST, port)
                async with probe_stream:
                    for i in range(12):
                        started = trio.current_time()
                        await probe_stream.send_all(b"probe %d" % i)
                        assert await receive_exactly(probe_stream, len(b"probe %d" % i)) == b"probe %d" % i
                        slowest_ms = max(slowest_ms, (trio.current_time() - started) * 1000)

            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                inner.start_soon(probe)
                echoed = await receive_exactly(stream, len(payload))
        assert echoed == payload                        # byte for byte, in order
        assert proxy.stats.lost_chunks > 0
        assert slowest_ms >= 2 * 5 + state.retransmit_delay_ms     # one direction waited a retransmission
        assert state.retransmit_delay_ms == RTO_MIN_MS
        nursery.cancel_scope.cancel()


async def test_the_same_seed_delays_the_same_chunks():
    async def late_round_trips(seed: int) -> list[bool]:
        async with trio.open_nursery() as nursery:
            proxy, port = await start_proxy(nursery, await start_echo(nursery), LinkState(loss=0.2, seed=seed))
            # One message per round trip: the i-th chunk of each direction, whatever the timing.
            times = await round_trips_ms(port, 8)
            nursery.cancel_scope.cancel()
        return [t >= RTO_MIN_MS for t in times]

    first = await late_round_trips(5)
    assert any(first) and not all(first)
    assert await late_round_trips(5) == first


async def test_partition_closes_open_connections_and_refuses_new_ones_until_heal():
    async with trio.open_nursery() as nursery:
        proxy, port = await start_proxy(nursery, await start_echo(nursery), LinkState(delay_ms=1))
        stream = await trio.open_tcp_stream(ECHO_HOST, port)
        await stream.send_all(b"hello")
        assert await receive_exactly(stream, 5) == b"hello"

        started = time.monotonic()
        await proxy.apply(LinkState(generation=1, delay_ms=1, groups=(("a",), ("b",))))
        assert time.monotonic() - started < 0.5
        with trio.fail_after(1):
            try:
                assert await stream.receive_some(100) == b""      # closed by the proxy
            except trio.BrokenResourceError:
                pass                                               # or reset: closed either way
        await stream.aclose()

        fresh = await trio.open_tcp_stream(ECHO_HOST, port)
        with trio.fail_after(1):
            try:
                assert await fresh.receive_some(100) == b""
            except trio.BrokenResourceError:
                pass
        await fresh.aclose()
        assert proxy.stats.refused_cut == 1

        # Groups that keep both ends together cut nothing; no groups at all is the heal.
        await proxy.apply(LinkState(generation=2, delay_ms=1, groups=(("a", "b"), ("c",))))
        assert (await round_trips_ms(port, 2))
        await proxy.apply(LinkState(generation=3, delay_ms=1))
        assert (await round_trips_ms(port, 2))
        nursery.cancel_scope.cancel()


async def test_a_target_that_resets_costs_one_connection_not_the_proxy():
    async def resets(stream):
        await stream.receive_some(100)
        # SO_LINGER 0: close() sends a RST, as a crashing peer's kernel does.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    async with trio.open_nursery() as nursery:
        proxy, port = await start_proxy(nursery, await start_echo(nursery, resets), LinkState(delay_ms=1))
        for _ in range(3):
            stream = await trio.open_tcp_stream(ECHO_HOST, port)
            with trio.fail_after(2):
                try:
                    await stream.send_all(b"x" * 100_000)
                    while await stream.receive_some(100):
                        pass
                except trio.BrokenResourceError:
                    pass
            await stream.aclose()
        assert proxy.stats.connections_total == 3      # the proxy still accepts after each reset
        nursery.cancel_scope.cancel()


async def test_a_flood_into_a_reader_that_never_reads_stays_within_the_byte_limit():
    limit = 256 * 1024
    stalled = trio.Event()

    async def never_reads(stream):
        async with stream:
            await stalled.wait()

    async with trio.open_nursery() as nursery:
        proxy, port = await start_proxy(nursery, await start_echo(nursery, never_reads), LinkState(delay_ms=1),
                                        buffered_bytes_max=limit, chunk_bytes=16 * 1024)
        stream = await trio.open_tcp_stream(ECHO_HOST, port)
        sent = 0
        block = bytes(64 * 1024)
        with trio.move_on_after(1.5):
            while True:
                await stream.send_all(block)
                sent += len(block)
        # The proxy stopped reading: the sender blocked after the kernel's buffers filled.
        assert limit // 2 <= proxy.stats.buffered_peak_bytes <= limit
        assert sent < 64 * 1024 * 1024
        stalled.set()
        await stream.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- the testnet's side: ports, groups, settings


def test_link_ports_are_the_block_after_metrics():
    plan = ports.plan_link_ports(7700, 4)
    assert len(plan) == 12 and plan[(0, 1)] == 8001 and plan[(3, 2)] == 8032
    assert len(set(ports.plan_link_ports(7700, ports.link_nodes_max).values())) == 90
    with pytest.raises(ports.PortError, match="link delay needs"):
        ports.plan_link_ports(7700, ports.link_nodes_max + 1)
    with pytest.raises(ports.PortError, match="no room"):
        ports.plan_link_ports(ports.PORT_MAX - 350, 4)


def test_partition_groups_name_every_member_exactly_once():
    members = ["hk-1", "cn-1", "hk-2", "cn-2"]
    assert links.parse_groups("hk-1|cn-1, hk-2,cn-2", members) == [["hk-1"], ["cn-1", "hk-2", "cn-2"]]
    for spec, message in (("hk-1,cn-1,hk-2,cn-2", "one group"), ("hk-1|cn-1,hk-2", "cn-2 is in no group"),
                          ("hk-1|cn-1,hk-2,cn-2,hk-9", "'hk-9' is not a member"),
                          ("hk-1,hk-1|cn-1,hk-2,cn-2", "hk-1 is named twice"), ("hk-1||cn-1,hk-2,cn-2", "empty name")):
        with pytest.raises(links.LinkUsageError, match=message):
            links.parse_groups(spec, members)


def test_link_settings_out_of_range_are_refused_before_anything_is_made(tmp_path):
    for delay, loss in ((-1, 0), (10_001, 0), (float("nan"), 0), (0, 1.0), (0, -0.1)):
        with pytest.raises(links.LinkUsageError):
            control.up(tmp_path / "run", 4, 7700, demo=False, link_delay_ms=delay, link_loss=loss)
    assert not (tmp_path / "run").exists()


def test_the_command_line_gives_usage_errors_status_2(tmp_path, capsys):
    from testnet.__main__ import main

    plan_network(tmp_path, 4, 7700).save()
    assert main(["partition", "hk-1|cn-1", "--dir", str(tmp_path)]) == 2
    assert "hk-2, cn-2 are in no group" in capsys.readouterr().err
    assert main(["partition", "hk-1|cn-1,hk-2,cn-2", "--dir", str(tmp_path)]) == 1
    assert "needs the link proxy" in capsys.readouterr().err
    for flag, value in (("--link-delay-ms", "10001"), ("--link-loss", "1"), ("--link-delay-ms", "soon")):
        with pytest.raises(SystemExit) as exited:
            main(["up", flag, value, "--dir", str(tmp_path / "other")])
        assert exited.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_the_manifest_keeps_the_link_settings(tmp_path):
    network = plan_network(tmp_path, 4, 7700)
    assert not network.links_proxied
    network.save()
    with pytest.raises(links.LinkError, match="needs the link proxy"):
        links.partition(tmp_path, "hk-1|cn-1,hk-2,cn-2")
    network.link_delay_ms, network.link_loss, network.link_seed = 15.0, 0.01, 42
    network.save()
    loaded = Network.load(tmp_path)
    assert (loaded.link_delay_ms, loaded.link_loss, loaded.link_seed, loaded.links_proxied) == (15.0, 0.01, 42, True)
    with pytest.raises(links.LinkError, match="link proxy .* is not running"):
        links.heal(tmp_path)
    peers = links.proxied_peers(loaded, loaded.node("cn-1"))
    assert [(p.id, str(p.address)) for p in peers] == [("hk-1", "127.0.0.1:8010"), ("hk-2", "127.0.0.1:8012"),
                                                        ("cn-2", "127.0.0.1:8013")]


# ---------------------------------------------------------------- a real testnet through the proxy


def submit_sample(network, name: str) -> None:
    """One commitment submitted through cn-1 with the CLI, waited for until committed."""
    report = network.run_dir / f"{name}.txt"
    report.write_text(f"credit report {name}\n")
    command = sample_commands(network)["submit"]
    bayledger([*command[:-1], str(report)])


def height_of(node, attempts: int = 5) -> int:
    """NODE's height; a node slow to answer (a loaded machine) is asked again."""
    for _ in range(attempts):
        status = control.node_status(node)
        if status is not None:
            return int(status["height"])
    raise AssertionError(f"{node.name} does not answer RPC status")


@pytest.mark.slow   # real validator processes: make test runs these alone (pyproject.toml)
def test_a_real_testnet_through_the_proxy_commits_partitions_heals_and_goes_down(run_dir):
    base = ports.find_free_base_port(4)
    assert control.up(run_dir, 4, base, demo=False, link_delay_ms=20) == 0
    network = Network.load(run_dir.resolve())
    assert network.link_delay_ms == 20 and network.links_proxied
    pid = links.proxy_pid(network)
    assert pid is not None and pid_exists(pid)
    proxy_ports = links.link_ports(network)
    assert len(proxy_ports) == 4 * 3
    assert not any(ports.port_is_free(port) for port in proxy_ports.values())
    assert status_json(run_dir)["links"] == {"delay_ms": 20.0, "loss": 0.0, "seed": network.link_seed,
                                             "proxy_pid": pid, "partition": None}

    # A daemon sends its ephemeral key as soon as it accepts: through the proxy, it arrives 20 ms late.
    with socket.create_connection((ECHO_HOST, proxy_ports[(0, 1)]), timeout=5) as probe:
        started = time.monotonic()
        assert len(probe.recv(32)) > 0
        assert time.monotonic() - started >= 0.020
    submit_sample(network, "first")
    assert min(control.wait_for_height(network, 1, timeout_s=20).values()) >= 1

    # cn-2 alone: the other three (hk-1 is the primary) still commit; cn-2 hears nothing until the heal.
    assert links.partition(run_dir, "cn-2|hk-1,cn-1,hk-2") == 0
    submit_sample(network, "second")
    assert height_of(network.node("cn-2")) == 1
    assert links.heal(run_dir) == 0
    assert min(control.wait_for_height(network, 2, timeout_s=20).values()) >= 2

    assert control.down(run_dir) == 0
    assert not pid_exists(pid)
    assert all(ports.port_is_free(port) for port in proxy_ports.values())
