"""Messages that name the cause, the fix, and where the value came from (issue 18)."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from tests.support.cli import one_line_error, run


def test_a_url_given_as_rpc_is_named_a_url_with_its_source(capsys, monkeypatch):
    monkeypatch.delenv("BAYLEDGER_RPC", raising=False)
    code, _, err = run(capsys, ["status", "--rpc", "http://127.0.0.1:7800"])
    assert code == 2 and one_line_error(err) and "--rpc: 'http://127.0.0.1:7800' is a URL" in err, err
    assert "give HOST:PORT without 'http://' (127.0.0.1:7800)" in err
    monkeypatch.setenv("BAYLEDGER_RPC", "https://node.example.org:7800")
    code, _, err = run(capsys, ["status"])
    assert code == 2 and one_line_error(err) and err.startswith("bayledger status: BAYLEDGER_RPC: "), err
    monkeypatch.setenv("BAYLEDGER_RPC", "node.example.org")
    code, _, err = run(capsys, ["status"])
    assert code == 2 and "BAYLEDGER_RPC: 'node.example.org' is not HOST:PORT: no port" in err, err


@contextlib.contextmanager
def one_connection_server(answer: bytes):
    """A port that reads what a client first sends, answers `answer` (nothing: hangs up) and closes:
    another of the node's ports (p2p, metrics) as the CLI meets it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.recv(4096)
            connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=5)


@pytest.fixture
def not_rpc_port():
    with one_connection_server(b"\x78\x00\x00\x00\x10hello, validator") as port:
        yield port


def test_another_port_of_the_node_is_named_as_the_likely_mistake(capsys, not_rpc_port):
    code, _, err = run(capsys, ["status", "--rpc", f"127.0.0.1:{not_rpc_port}"])
    assert code == 2 and one_line_error(err), err
    assert f"is 127.0.0.1:{not_rpc_port} the node's RPC port?" in err and "p2p and metrics" in err, err


def test_a_config_error_names_the_file_once(capsys, tmp_path):
    broken = tmp_path / "node.toml"
    broken.write_text("x = [")
    code, _, err = run(capsys, ["node", "--config", str(broken)])
    assert code == 2 and one_line_error(err) and err.count("config file") == 1 and "config: " not in err, err
    assert f"config file {broken} is not valid TOML" in err
    incomplete = tmp_path / "incomplete.toml"
    incomplete.write_text("[consensus]\n")
    code, _, err = run(capsys, ["node", "--config", str(incomplete)])
    assert code == 2 and f"config file {incomplete}: node_id: required key is missing" in err, err


def test_an_unknown_kind_is_refused_with_the_kinds_this_chain_accepts(capsys, server, files, tmp_path, world):
    document = tmp_path / "report.txt"
    document.write_text("credit report\n")
    code, out, err = run(capsys, ["submit", str(document), "--kind", "horoscope", "--rpc", f"127.0.0.1:{server.port}",
                                  "--key", files["hk-bureau"], "--genesis", files["genesis"]])
    assert code == 1 and out.startswith("REFUSED: entry refused: unknown-kind"), (out, err)
    assert ", ".join(world.genesis.entry_kinds) in out and "--kind" in out


def test_a_file_that_is_no_proof_is_named_so_without_msgpack_internals(capsys, files, tmp_path):
    junk = tmp_path / "photo.jpg"
    junk.write_bytes(bytes(range(256)) * 4)
    code, out, err = run(capsys, ["proof", "verify", str(junk), "--genesis", files["genesis"],
                                  "--commitment", "ab" * 32])
    assert code == 2 and out.strip() == ("INVALID PROOF: check format failed: not a match proof: the bytes do not "
                                         "decode as msgpack"), out
    assert "verify --proof-out" in err


@pytest.fixture
def closes_during_tls():
    """Reads the TLS hello and hangs up, as a node's p2p port does (its handshake is another)."""
    with one_connection_server(b"") as port:
        yield port


def test_a_port_that_hangs_up_on_tls_may_be_another_port_of_the_node(capsys, closes_during_tls, monkeypatch):
    monkeypatch.delenv("BAYLEDGER_PLAINTEXT")      # TLS, as a real node's RPC
    code, _, err = run(capsys, ["status", "--rpc", f"127.0.0.1:{closes_during_tls}"])
    assert code == 2 and one_line_error(err), err
    assert "closed the connection during the TLS handshake" in err and "not the node's RPC port" in err, err
