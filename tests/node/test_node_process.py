"""One daemon process: start-up failures exit with a clear reason, SIGTERM and SIGINT stop it cleanly,
SIGHUP reloads the RPC certificate.

Uses the real CLI (`python -m node.cli node --config ...`) against a generated
4-validator network; only one node runs, which is enough for the process's
own lifecycle (no commits are needed).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node import tls
from node.config import RpcConfig, load_config, render_config
from tests.support.node_cluster import session_ca

pytestmark = pytest.mark.slow


def run_briefly(config_path, timeout_s=60):
    return subprocess.run([sys.executable, "-m", "node.cli", "node", "--config", str(config_path)],
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_node_cleanly(cluster, signum):
    """The node serves metrics, then exits 0 on the signal, logging why and its height."""
    cluster.start("hk-1")
    cluster.wait_serving("hk-1")
    node = cluster.nodes["hk-1"]
    assert "bayledger_height 0" in node.metrics_text()
    node.process.send_signal(signum)
    assert node.process.wait(30) == 0
    events = [line.get("event") for line in node.log_lines()]
    assert "node started" in events and "shutting down" in events and events[-1] == "stopped"
    started = next(line for line in node.log_lines() if line.get("event") == "node started")
    assert started["node"] == "hk-1" and started["level"] == "info" and started["timestamp"].endswith("Z")


def test_startup_failures_exit_1_with_a_reason(cluster):
    """A world-readable key file, a key that is not the genesis key, and a port in use each stop start-up
    with exit status 1 and one `cannot start` line naming the problem."""
    node = cluster.nodes["hk-1"]
    key_path = node.dir / "key.json"
    os.chmod(key_path, 0o644)
    result = run_briefly(node.config_path)
    assert result.returncode == 1 and "chmod 600" in result.stderr and "cannot start" in result.stderr
    os.chmod(key_path, 0o600)

    other = cluster.nodes["hk-2"].dir / "key.json"
    config_text = node.config_path.read_text()
    node.config_path.write_text(config_text.replace(str(key_path), str(other)))
    result = run_briefly(node.config_path)
    assert result.returncode == 1 and "does not hold the genesis key" in result.stderr
    node.config_path.write_text(config_text)

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.metrics))
        squatter.listen()
        result = run_briefly(node.config_path)
    assert result.returncode == 1 and "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_config_errors_exit_2_naming_the_key(cluster, tmp_path):
    node = cluster.nodes["hk-1"]
    bad = node.dir / "bad.toml"
    bad.write_text(node.config_path.read_text().replace("[consensus]", "[consensus]\nview_timeout = 5"))
    result = run_briefly(bad)
    assert result.returncode == 2
    assert "consensus.view_timeout: unknown key" in result.stderr and "Traceback" not in result.stderr


def test_a_plaintext_rpc_node_warns_at_start_and_serves_plain_msgpack_rpc(cluster):
    """rpc.plaintext = true is for development: the node says so in its log at start, and a plain TCP
    client (no TLS) gets the reduced status."""
    node = cluster.nodes["hk-1"]
    config = load_config(node.config_path)
    node.config_path.write_text(render_config(dataclasses.replace(config, rpc=RpcConfig(plaintext=True))))
    cluster.start("hk-1")
    cluster.wait_serving("hk-1")
    try:
        with socket.create_connection(("127.0.0.1", node.rpc), timeout=10) as plain:
            plain.sendall(msgpack.packb([0, 1, "status", []]))
            unpacker = msgpack.Unpacker(raw=False)
            while True:
                unpacker.feed(plain.recv(65536))
                answers = list(unpacker)
                if answers:
                    break
        assert answers[0][2] is None and set(answers[0][3]) == {"chain_id", "node_id", "height", "version"}
        warnings = [line for line in node.log_lines() if line.get("level") == "warning"
                    and "RPC without TLS" in line.get("event", "")]
        assert len(warnings) == 1 and warnings[0]["rpc"].endswith(str(node.rpc)), node.log_lines()
        node.process.send_signal(signal.SIGHUP)   # no certificate to reload: said, and the node serves on
        wait_for_event(node, "rpc certificate not reloaded: rpc.plaintext = true, the RPC port has no certificate", 1)
        assert node.process.poll() is None and node.metric("bayledger_rpc_certificate_not_after_seconds") == 0
        assert node.metric("bayledger_rpc_certificate_reloads_total") == 0
    finally:
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(30) == 0


def served_certificate(port: int) -> bytes:
    """The certificate (DER) the node's RPC port serves to a new TLS connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with tls.client_context(session_ca()[0]).wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            return sock.getpeercert(binary_form=True)


def wait_for_event(node, event: str, count: int, timeout_s: float = 20) -> list[dict]:
    """The node's log lines of `event` once there are `count` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in node.log_lines() if line.get("event") == event]
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"no {count} x {event!r} in the log: {node.log_lines()[-5:]}"
        time.sleep(0.05)


def test_sighup_reloads_the_rpc_certificate_and_a_bad_pair_keeps_the_old_one(cluster, tmp_path):
    """An operator renews the RPC certificate in place and sends SIGHUP: new connections get the new one,
    an open connection keeps working, the node keeps running. A pair that would not start the node
    (here a key of another certificate) is refused by name and the node goes on serving the last good one."""
    node = cluster.nodes["hk-1"]
    cert_file, key_file = node.dir / "rpc-cert.pem", node.dir / "rpc-key.pem"
    cluster.start("hk-1")
    cluster.wait_serving("hk-1")
    try:
        first = served_certificate(node.rpc)
        assert first == x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)
        open_client = node.rpc_client()
        assert open_client.call("status")["node_id"] == "hk-1"

        ca_cert, ca_key = session_ca()
        tls.make_node_certificate(ca_cert, ca_key, tmp_path / "new.pem", tmp_path / "new-key.pem", "hk-1",
                                  ["127.0.0.1"], valid_days=30)
        shutil.copyfile(tmp_path / "new-key.pem", key_file)
        shutil.copyfile(tmp_path / "new.pem", cert_file)
        node.process.send_signal(signal.SIGHUP)
        reloaded = wait_for_event(node, "rpc certificate reloaded", 1)
        renewed = x509.load_pem_x509_certificate(cert_file.read_bytes())
        assert served_certificate(node.rpc) == renewed.public_bytes(serialization.Encoding.DER) != first
        assert reloaded[0]["not_after"] == renewed.not_valid_after_utc.isoformat()
        assert open_client.call("status")["node_id"] == "hk-1"     # the open connection keeps its session
        assert node.metric("bayledger_rpc_certificate_reloads_total", 'outcome="ok"') == 1
        assert node.metric("bayledger_rpc_certificate_not_after_seconds") == int(renewed.not_valid_after_utc.timestamp())
        expires_in = renewed.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(days=29) < expires_in <= datetime.timedelta(days=30)

        tls.make_node_certificate(ca_cert, ca_key, tmp_path / "other.pem", tmp_path / "other-key.pem", "hk-1",
                                  ["127.0.0.1"])
        shutil.copyfile(tmp_path / "other-key.pem", key_file)     # the key no longer matches the certificate
        node.process.send_signal(signal.SIGHUP)
        refused = wait_for_event(node, "rpc certificate not reloaded; the previous one is still served", 1)
        assert refused[0]["level"] == "error" and "rpc.tls_key_file" in refused[0]["reason"], refused
        assert "does not match the certificate" in refused[0]["reason"]
        assert served_certificate(node.rpc) == renewed.public_bytes(serialization.Encoding.DER)
        assert node.metric("bayledger_rpc_certificate_reloads_total", 'outcome="failed"') == 1
        assert node.process.poll() is None
        open_client.close()
    finally:
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(30) == 0
