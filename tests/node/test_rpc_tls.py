"""TLS on the RPC port (issue 15), with real TLS over real TCP on 127.0.0.1, no mocks.

node.rpc.serve_rpc serves in the test's trio loop with a server context from node.tls; the
blocking clients (node.client.Client, the CLI, a stock ssl+socket+msgpack client) run in
worker threads. Certificates are made once per session with node.tls (a CA, a second CA no
client trusts, a node certificate for 127.0.0.1/localhost and one for another host only).
"""

from __future__ import annotations

import collections
import functools
import os
import socket
import ssl
import stat
import time

import msgpack
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node import tls
from node.cli import main as cli_main
from node.client import AsyncClient, Client, ClientError, ConnectionFailed
from node.config import ConfigError, NodeConfig, load_config, render_config
from node.daemon import StartupError, rpc_ssl_context
from node.rpc import RpcLimits, RpcServer, serve_rpc
from tests.support.node_config import load_toml, node_toml

HANDSHAKE_TIMEOUT_MS = 300       # short, so a stalled handshake is cut within the test
CALL_TIMEOUT_S = 10


class StatusApi:
    """Just `status`; a missing status field reads 0 (the RPC picks its public fields)."""

    ledger = None

    def status(self) -> dict:
        return collections.defaultdict(int, {"chain_id": "tls-test", "node_id": "hk-1", "height": 7})


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    tls.make_ca(d / "ca.pem", d / "ca-key.pem", "test CA")
    tls.make_ca(d / "other-ca.pem", d / "other-ca-key.pem", "a CA nobody trusts")
    tls.make_node_certificate(d / "ca.pem", d / "ca-key.pem", d / "node.pem", d / "node-key.pem", "hk-1",
                              ["node1.bank.example"])
    tls.make_node_certificate(d / "ca.pem", d / "ca-key.pem", d / "renewed.pem", d / "renewed-key.pem", "hk-1",
                              ["node1.bank.example"])
    tls.make_node_certificate(d / "ca.pem", d / "ca-key.pem", d / "elsewhere.pem", d / "elsewhere-key.pem",
                              "elsewhere", ["elsewhere.example"], loopback=False)
    return d


async def start(nursery, pki=None, cert="node", limits=RpcLimits()):
    """serve_rpc on 127.0.0.1:0 (TLS with `cert` unless pki is None); (server, "127.0.0.1:PORT")."""
    server = RpcServer(StatusApi(), limits)
    context = None if pki is None else tls.server_context(pki / f"{cert}.pem", pki / f"{cert}-key.pem")
    port = await nursery.start(functools.partial(
        serve_rpc, StatusApi(), "127.0.0.1", 0, limits=limits, server=server, ssl_context=context,
        tls_handshake_timeout_ms=HANDSHAKE_TIMEOUT_MS))
    return server, f"127.0.0.1:{port}"


async def connections_closed(server, timeout_s: float = 5) -> None:
    """Wait until the server has closed every connection (the client's close reaches it a moment later)."""
    with trio.fail_after(timeout_s):
        while server.connections:
            await trio.sleep(0.01)


def sync_call(endpoint, **options):
    with Client(endpoint, timeout_s=CALL_TIMEOUT_S, **options) as client:
        return client.call("status")


def failure_of(endpoint, **options) -> str:
    with pytest.raises(ConnectionFailed) as info:
        sync_call(endpoint, **options)
    return str(info.value)


async def test_tls_clients_call_the_node(pki):
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, pki)
        status = await trio.to_thread.run_sync(functools.partial(sync_call, endpoint, ca_file=pki / "ca.pem"))
        assert status["height"] == 7
        # The certificate names localhost too: the same node by name.
        by_name = endpoint.replace("127.0.0.1", "localhost")
        assert (await trio.to_thread.run_sync(functools.partial(sync_call, by_name, ca_file=pki / "ca.pem"))
                )["chain_id"] == "tls-test"
        async with AsyncClient([endpoint], ca_file=pki / "ca.pem", timeout_s=CALL_TIMEOUT_S) as client:
            assert (await client.call("status"))["node_id"] == "hk-1"
        assert server.counters["status"] == 3 and server.counters["tls-handshake-failed"] == 0
        nursery.cancel_scope.cancel()


def stock_client_status(port: int, ca_file) -> tuple[str, list]:
    """What a bank would write with its platform's TLS socket: ssl + socket + msgpack, nothing else."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(msgpack.packb([0, 1, "status", []]))
            unpacker = msgpack.Unpacker(raw=False)
            while True:
                data = sock.recv(65536)
                assert data, "node closed the connection before answering"
                unpacker.feed(data)
                for message in unpacker:
                    return sock.version(), message


async def test_a_stock_msgpack_rpc_client_works_over_its_platform_tls_socket(pki):
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, pki)
        port = int(endpoint.rpartition(":")[2])
        version, message = await trio.to_thread.run_sync(stock_client_status, port, pki / "ca.pem")
        assert version in ("TLSv1.2", "TLSv1.3")
        assert message[:3] == [1, 1, None] and message[3]["height"] == 7
        nursery.cancel_scope.cancel()


class StockSession:
    """A stock TLS client's open connection: the certificate it was served, and status calls on it."""

    def __init__(self, port: int, ca_file) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S)
        self.sock = ssl.create_default_context(cafile=str(ca_file)).wrap_socket(raw, server_hostname="127.0.0.1")
        self.certificate = self.sock.getpeercert(binary_form=True)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def status(self) -> dict:
        self.msgid += 1
        self.sock.sendall(msgpack.packb([0, self.msgid, "status", []]))
        while True:
            for message in self.unpacker:
                assert message[:3] == [1, self.msgid, None], message
                return message[3]
            data = self.sock.recv(65536)
            assert data, "node closed the connection before answering"
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()


def der_of(pem_path) -> bytes:
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_bytes(serialization.Encoding.DER)


async def test_a_replaced_certificate_serves_new_connections_and_open_ones_keep_theirs(pki):
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, pki)
        port = int(endpoint.rpartition(":")[2])
        before = await trio.to_thread.run_sync(StockSession, port, pki / "ca.pem")
        assert before.certificate == der_of(pki / "node.pem")
        server.replace_ssl_context(tls.server_context(pki / "renewed.pem", pki / "renewed-key.pem"))
        after = await trio.to_thread.run_sync(StockSession, port, pki / "ca.pem")
        assert after.certificate == der_of(pki / "renewed.pem") != before.certificate
        assert (await trio.to_thread.run_sync(before.status))["height"] == 7
        assert (await trio.to_thread.run_sync(after.status))["height"] == 7
        before.close()
        after.close()
        nursery.cancel_scope.cancel()


async def test_a_plaintext_server_has_no_certificate_to_replace(pki):
    async with trio.open_nursery() as nursery:
        server, _ = await start(nursery)
        with pytest.raises(ValueError, match="plaintext"):
            server.replace_ssl_context(tls.server_context(pki / "node.pem", pki / "node-key.pem"))
        assert server.ssl_context is None
        nursery.cancel_scope.cancel()


def plain_exchange(port: int, payload: bytes) -> tuple[list, bytes]:
    """Send `payload` on plain TCP; the messages the node answers and what follows until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S) as sock:
        sock.sendall(payload)
        received = b""
        while data := sock.recv(65536):
            received += data
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(received)
    return list(unpacker), received


async def test_a_plain_client_gets_a_clean_tls_required_error_and_the_node_keeps_serving(pki):
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, pki)
        port = int(endpoint.rpartition(":")[2])
        messages, _ = await trio.to_thread.run_sync(plain_exchange, port, msgpack.packb([0, 1, "status", []]))
        assert messages == [[1, None, {"code": "tls-required", "message": tls.TLS_REQUIRED_MESSAGE}, None]]
        assert "--ca FILE or BAYLEDGER_CA" in tls.TLS_REQUIRED_MESSAGE
        assert server.counters["tls-required"] == 1 and server.counters["status"] == 0
        # node.client without TLS says what the node said.
        message = await trio.to_thread.run_sync(functools.partial(failure_of, endpoint, tls=False))
        assert "tls-required" in message and "--ca" in message
        assert (await trio.to_thread.run_sync(functools.partial(sync_call, endpoint, ca_file=pki / "ca.pem"))
                )["height"] == 7
        await connections_closed(server)
        nursery.cancel_scope.cancel()


async def test_untrusted_ca_and_wrong_host_fail_with_what_to_do(pki):
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, pki)
        message = await trio.to_thread.run_sync(functools.partial(failure_of, endpoint,
                                                                  ca_file=pki / "other-ca.pem"))
        assert "not trusted" in message and "--ca FILE" in message and "BAYLEDGER_CA" in message
        # Without a CA file the system store is used: it does not know the test CA either.
        message = await trio.to_thread.run_sync(functools.partial(failure_of, endpoint))
        assert "not trusted" in message
        _, elsewhere = await start(nursery, pki, cert="elsewhere")
        message = await trio.to_thread.run_sync(functools.partial(failure_of, elsewhere, ca_file=pki / "ca.pem"))
        assert "not for '127.0.0.1'" in message
        await connections_closed(server)   # the server side of the refused handshakes has finished
        assert server.counters["tls-handshake-failed"] == 2
        with pytest.raises(ClientError, match="does not exist"):
            Client(endpoint, ca_file=pki / "missing.pem")
        nursery.cancel_scope.cancel()


async def test_a_tls_client_to_a_plaintext_node_is_told_so(pki):
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, None)
        message = await trio.to_thread.run_sync(functools.partial(failure_of, endpoint, ca_file=pki / "ca.pem"))
        assert "does not speak TLS" in message and "--plaintext" in message
        assert (await trio.to_thread.run_sync(functools.partial(sync_call, endpoint, tls=False)))["height"] == 7
        nursery.cancel_scope.cancel()


async def test_hostile_handshakes_cost_only_their_connection(pki):
    limits = RpcLimits(connections_max=3)
    async with trio.open_nursery() as nursery:
        server, endpoint = await start(nursery, pki, limits=limits)
        port = int(endpoint.rpartition(":")[2])
        # Garbage after the handshake record type: the handshake fails, the connection is closed.
        _, received = await trio.to_thread.run_sync(plain_exchange, port, b"\x16" + os.urandom(300))
        assert not received.startswith(b"\x94")    # no msgpack answer: TLS alert bytes at most
        assert server.counters["tls-handshake-failed"] == 1
        # Two stalled handshakes hold two of the three slots until the handshake timeout cuts them.
        stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        for stream in stalled:
            await stream.send_all(b"\x16\x03\x01")
        with trio.fail_after(5):
            while server.connections < 2:
                await trio.sleep(0.01)
        ok = await trio.to_thread.run_sync(functools.partial(sync_call, endpoint, ca_file=pki / "ca.pem"))
        assert ok["height"] == 7                   # served meanwhile
        # A fourth connection beyond the limit (two stalled + one held by us) is closed unanswered.
        held = await trio.open_tcp_stream("127.0.0.1", port)
        await held.send_all(b"\x16\x03\x01")
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await extra.receive_some(100) == b""
        assert server.counters["refused-connection"] == 1
        started = time.monotonic()
        for stream in stalled:
            with trio.fail_after(5):
                assert await stream.receive_some(100) == b""   # closed by the node's timeout
        assert time.monotonic() - started < 3
        assert server.counters["tls-handshake-timeout"] >= 2, dict(server.counters)
        for stream in (*stalled, held, extra):
            await stream.aclose()
        assert (await trio.to_thread.run_sync(functools.partial(sync_call, endpoint, ca_file=pki / "ca.pem"))
                )["height"] == 7
        nursery.cancel_scope.cancel()


def run_cli(capsys, argv):
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_cli_ca_option_and_environment(pki, capsys, monkeypatch):
    for name in ("BAYLEDGER_CA", "BAYLEDGER_PLAINTEXT", "BAYLEDGER_RPC"):
        monkeypatch.delenv(name, raising=False)
    async with trio.open_nursery() as nursery:
        _, endpoint = await start(nursery, pki)

        async def cli(*argv):
            return await trio.to_thread.run_sync(run_cli, capsys, ["status", "--json", "--rpc", endpoint, *argv])

        code, out, err = await cli("--ca", str(pki / "ca.pem"))
        assert code == 0 and '"height": 7' in out, err
        code, out, err = await cli()
        assert code == 2 and "--ca FILE" in err and "BAYLEDGER_CA" in err
        code, out, err = await cli("--plaintext")
        assert code == 2 and "tls-required" in err
        code, out, err = await cli("--ca", str(pki / "ca.pem"), "--plaintext")
        assert code == 2 and "give one" in err
        monkeypatch.setenv("BAYLEDGER_CA", str(pki / "ca.pem"))
        code, out, err = await cli()
        assert code == 0 and '"height": 7' in out, err
        monkeypatch.setenv("BAYLEDGER_PLAINTEXT", "1")
        code, out, err = await cli()
        assert code == 2 and "both set" in err
        monkeypatch.setenv("BAYLEDGER_PLAINTEXT", "maybe")
        code, out, err = await cli()
        assert code == 2 and "BAYLEDGER_PLAINTEXT" in err
        monkeypatch.setenv("BAYLEDGER_CA", str(pki / "missing.pem"))
        monkeypatch.delenv("BAYLEDGER_PLAINTEXT")
        code, out, err = await cli()
        assert code == 2 and "missing.pem does not exist" in err
        nursery.cancel_scope.cancel()


# -- config and start-up ---------------------------------------------------------------------------

BASE = node_toml()


def load(tmp_path, rpc_section: str) -> NodeConfig:
    return load_toml(tmp_path, BASE + rpc_section)


def config_error(tmp_path, rpc_section: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, rpc_section)
    return str(info.value)


def test_config_requires_tls_files_unless_plaintext(tmp_path):
    assert config_error(tmp_path, "").startswith("rpc.tls_cert_file: required")
    assert config_error(tmp_path, '[rpc]\ntls_cert_file = "c.pem"\n').startswith("rpc.tls_key_file: required")
    assert config_error(tmp_path, '[rpc]\nplaintext = "yes"\n').startswith("rpc.plaintext:")
    assert config_error(tmp_path, '[rpc]\nplaintext = true\ntls_cert_file = "c.pem"\n').startswith(
        "rpc.tls_cert_file: set, but rpc.plaintext = true")
    assert config_error(tmp_path, '[rpc]\nplaintext = true\ntls = 1\n').startswith("rpc.tls: unknown key")
    assert config_error(tmp_path, '[rpc]\nplaintext = true\ntls_handshake_timeout_ms = 99\n').startswith(
        "rpc.tls_handshake_timeout_ms:")
    config = load(tmp_path, '[rpc]\ntls_cert_file = "tls/c.pem"\ntls_key_file = "/abs/k.pem"\n')
    assert config.rpc.tls_cert_file == tmp_path / "tls/c.pem" and str(config.rpc.tls_key_file) == "/abs/k.pem"
    assert config.rpc.plaintext is False and config.rpc.tls_handshake_timeout_ms == 10_000
    (tmp_path / "again.toml").write_text(render_config(config))
    assert load_config(tmp_path / "again.toml").rpc == config.rpc
    plain = load(tmp_path, "[rpc]\nplaintext = true\n")
    (tmp_path / "again.toml").write_text(render_config(plain))
    assert load_config(tmp_path / "again.toml").rpc == plain.rpc and plain.rpc.tls_cert_file is None


def test_startup_names_the_field_of_a_missing_unusable_or_mismatched_file(tmp_path, pki):
    def startup_error(cert, key) -> str:
        config = load(tmp_path, f'[rpc]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n')
        with pytest.raises(StartupError) as info:
            rpc_ssl_context(config)
        return str(info.value)

    assert rpc_ssl_context(load(tmp_path, "[rpc]\nplaintext = true\n")) is None
    good = rpc_ssl_context(load(tmp_path, f'[rpc]\ntls_cert_file = "{pki / "node.pem"}"\n'
                                          f'tls_key_file = "{pki / "node-key.pem"}"\n'))
    assert good.minimum_version >= ssl.TLSVersion.TLSv1_2
    message = startup_error(tmp_path / "none.pem", pki / "node-key.pem")
    assert message.startswith("rpc.tls_cert_file:") and "does not exist" in message
    message = startup_error(pki / "node.pem", tmp_path / "none.pem")
    assert message.startswith("rpc.tls_key_file:") and "does not exist" in message
    message = startup_error(pki / "node.pem", pki / "other-ca-key.pem")
    assert message.startswith("rpc.tls_key_file:") and "does not match the certificate" in message
    message = startup_error(pki / "node-key.pem", pki / "node-key.pem")
    assert message.startswith("rpc.tls_cert_file:") and "no PEM certificate" in message
    message = startup_error(pki / "node.pem", pki / "node.pem")
    assert message.startswith("rpc.tls_key_file:") and "no PEM private key" in message
    message = startup_error(pki, pki / "node-key.pem")
    assert message.startswith("rpc.tls_cert_file:") and "directory" in message


def test_generated_keys_are_private_and_certificates_name_the_rpc_host(pki):
    for key in ("ca-key.pem", "node-key.pem"):
        assert stat.S_IMODE(os.stat(pki / key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((pki / "node.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "node1.bank.example"}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(FileExistsError):          # a key is never overwritten unless asked
        tls.make_ca(pki / "ca.pem", pki / "ca-key.pem")
