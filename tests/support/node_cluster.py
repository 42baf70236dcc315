"""A real 4-validator cluster (2 HK, 2 CN) of daemon processes on 127.0.0.1, for integration tests.

`Cluster` generates keys, a genesis file and one config per node with the real
CLI (`bayledger keygen`, `bayledger genesis`), starts `python -m node.cli node`
subprocesses, talks to them over msgpack-RPC and the metrics port, and kills
every process it started by pid at teardown.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from node import tls
from node.keys import load_key_file
from node.rpc_access import sign_authentication
from node.cli import main as cli_main
from node.config import (
    Address, ConsensusConfig, LimitsConfig, Listen, LogConfig, NodeConfig, RpcConfig, TestingConfig, render_config,
)

VALIDATORS = (("hk-1", "HK"), ("hk-2", "HK"), ("cn-1", "CN"), ("cn-2", "CN"))
CHAIN_ID = "bayledger-it"
RPC_TIMEOUT_S = 30
PROCESS_STOP_TIMEOUT_S = 10
WAIT_STEP_S = 0.05
REPO = Path(__file__).resolve().parents[2]


# Listening ports are drawn below the kernel's ephemeral range, so an outgoing connection (a dialing
# peer, an RPC client) can never take a port a node has not bound yet.
PORT_RANGE = (20000, 32000)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1, held bound until all are chosen so none repeats."""
    import random

    rng = random.Random()
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", rng.randrange(*PORT_RANGE)))
            except OSError:
                probe.close()
                continue
            held.append(probe)
        return [probe.getsockname()[1] for probe in held]
    finally:
        for probe in held:
            probe.close()


_session_ca: tuple[Path, Path] | None = None


def session_ca() -> tuple[Path, Path]:
    """(certificate, key) of one test CA per test process; every cluster's node certificates are
    signed by it, so an RpcClient needs no more than a port."""
    global _session_ca
    if _session_ca is None:
        directory = Path(tempfile.mkdtemp(prefix="bayledger-test-ca-"))
        atexit.register(shutil.rmtree, directory, True)
        tls.make_ca(directory / "ca.pem", directory / "ca-key.pem", "Bayledger test CA")
        _session_ca = (directory / "ca.pem", directory / "ca-key.pem")
    return _session_ca


class RpcError(Exception):
    def __init__(self, error):
        super().__init__(f"{error}")
        self.error = error
        self.code = error.get("code") if isinstance(error, dict) else None


class RpcClient:
    """Just enough msgpack-RPC ([0, msgid, method, params] -> [1, msgid, error, result]) for tests,
    over TLS trusting the session CA, as a stock client would (ssl + socket + msgpack)."""

    def __init__(self, port: int, timeout_s: float = RPC_TIMEOUT_S, *, key_file: Path | None = None):
        """With `key_file`, the connection authenticates as the key file's id (docs/PROTOCOL.md §8)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock = tls.client_context(session_ca()[0]).wrap_socket(sock, server_hostname="127.0.0.1")
        self.unpacker = msgpack.Unpacker(raw=False)
        self.next_id = 0
        if key_file is not None:
            key = load_key_file(key_file)
            self.call("authenticate", *sign_authentication(key.signing_key, key.id, self.call("challenge")))

    def call(self, method: str, *params):
        self.next_id += 1
        self.sock.sendall(msgpack.packb([0, self.next_id, method, list(params)], use_bin_type=True))
        while True:
            for message in self.unpacker:
                if isinstance(message, list) and len(message) == 4 and message[0] == 1 and message[1] == self.next_id:
                    if message[2] is not None:
                        raise RpcError(message[2])
                    return message[3]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("RPC connection closed")
            self.unpacker.feed(data)

    def close(self):
        self.sock.close()


@dataclass
class NodeHandle:
    id: str
    jurisdiction: str
    dir: Path
    p2p: int
    rpc: int
    metrics: int
    process: subprocess.Popen | None = None
    log_handles: list = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.dir / "node.toml"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return lines

    def rpc_client(self) -> RpcClient:
        """A connection authenticated as this validator (which may call every method)."""
        return RpcClient(self.rpc, key_file=self.dir / "key.json")

    def call(self, method: str, *params):
        client = self.rpc_client()
        try:
            return client.call(method, *params)
        finally:
            client.close()

    def metrics_text(self) -> str:
        with socket.create_connection(("127.0.0.1", self.metrics), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        body = b"".join(chunks).decode()
        return body.split("\r\n\r\n", 1)[1]

    def metric(self, name: str, label: str | None = None) -> float:
        wanted = f"{name}{{{label}}}" if label else name
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted or (label is None and key.startswith(name + "{")):
                total += float(value)
        return total


class Cluster:
    def __init__(self, root: Path, *, view_timeout_ms: int = 1000, epoch_margin_heights: int | None = None,
                 joiners: tuple[tuple[str, str], ...] = ()):
        """`joiners`: (id, jurisdiction) of validators outside genesis, for a reconfiguration to add; their
        nodes are set up (keys, config with joining = true) but not started by start_all."""
        self.root = root
        self.nodes: dict[str, NodeHandle] = {}
        self.keys_dir = root / "keys"
        self.keys_dir.mkdir()
        self.genesis_path = root / "genesis.json"
        self.epoch_margin_heights = epoch_margin_heights
        self.joiners = tuple(node_id for node_id, _ in joiners)
        ports = iter(free_ports(3 * (len(VALIDATORS) + len(joiners))))
        for node_id, jurisdiction in VALIDATORS + tuple(joiners):
            node_dir = root / node_id
            node_dir.mkdir()
            self.nodes[node_id] = NodeHandle(node_id, jurisdiction, node_dir, next(ports), next(ports), next(ports))
        self._keygen_all()
        self._write_genesis()
        for node in self.nodes.values():
            self._write_config(node, view_timeout_ms)

    def _keygen(self, path: Path, key_id: str) -> str:
        assert cli_main(["keygen", "--out", str(path), "--id", key_id]) == 0
        return json.loads(path.read_text())["public_key"]

    def _keygen_all(self) -> None:
        for node in self.nodes.values():
            self._keygen(node.dir / "key.json", node.id)
        for name in ("gov-hk", "gov-cn", "bank-hk", "bureau-cn"):
            self._keygen(self.keys_dir / f"{name}.json", name)

    def _write_genesis(self) -> None:
        args = ["genesis", "--chain-id", CHAIN_ID, "--out", str(self.genesis_path)]
        for node in (n for n in self.nodes.values() if n.id not in self.joiners):
            args += ["--validator", f"{node.id}:{node.jurisdiction}:{node.dir / 'key.json'}:"
                     f"127.0.0.1:{node.p2p}:127.0.0.1:{node.rpc}"]
        args += ["--governance", f"HK:{self.keys_dir / 'gov-hk.json'}",
                 "--governance", f"CN:{self.keys_dir / 'gov-cn.json'}",
                 "--threshold", "HK:1", "--threshold", "CN:1",
                 "--participant", f"bank-hk:HK:provider:{self.keys_dir / 'bank-hk.json'}",
                 "--participant", f"bureau-cn:CN:provider:{self.keys_dir / 'bureau-cn.json'}"]
        if self.epoch_margin_heights is not None:
            args += ["--epoch-margin-heights", str(self.epoch_margin_heights)]
        assert cli_main(args) == 0

    @property
    def ca_path(self) -> Path:
        """The CA to trust for the nodes' RPC (--ca / BAYLEDGER_CA)."""
        return session_ca()[0]

    def _write_config(self, node: NodeHandle, view_timeout_ms: int, spare_key_files: tuple[Path, ...] = ()) -> None:
        ca_cert, ca_key = session_ca()
        if not (node.dir / "rpc-cert.pem").exists():   # a config written again keeps the node's certificate
            tls.make_node_certificate(ca_cert, ca_key, node.dir / "rpc-cert.pem", node.dir / "rpc-key.pem", node.id,
                                      ["127.0.0.1"])
        config = NodeConfig(
            node_id=node.id, key_file=node.dir / "key.json", genesis_file=self.genesis_path,
            data_dir=node.data_dir, spare_key_files=spare_key_files, joining=node.id in self.joiners,
            listen=Listen(Address("127.0.0.1", node.p2p), Address("127.0.0.1", node.rpc),
                          Address("127.0.0.1", node.metrics)),
            log=LogConfig(format="json", level="info"),
            consensus=ConsensusConfig(view_timeout_ms=view_timeout_ms, batch_wait_ms=5, checkpoint_interval=8,
                                      watermark_window=32),
            limits=LimitsConfig(reconnect_backoff_min_ms=50, reconnect_backoff_max_ms=500),
            testing=TestingConfig(fault_injection=True),
            rpc=RpcConfig(tls_cert_file=node.dir / "rpc-cert.pem", tls_key_file=node.dir / "rpc-key.pem"),
        )
        node.config_path.write_text(render_config(config))

    # --- processes ------------------------------------------------------------------------------

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.process is None or node.process.poll() is not None
        log = open(node.log_path, "ab")
        node.log_handles.append(log)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        node.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(node.dir), env=env, start_new_session=True)

    def start_all(self) -> None:
        """Start every genesis validator (not the joiners) and wait until each serves."""
        started = [node_id for node_id in self.nodes if node_id not in self.joiners]
        for node_id in started:
            self.start(node_id)
        for node_id in started:
            self.wait_serving(node_id)

    def wait_serving(self, node_id: str, timeout_s: float = 30) -> None:
        node = self.nodes[node_id]
        deadline = time.monotonic() + timeout_s
        while True:
            if node.process.poll() is not None:
                raise AssertionError(f"{node_id} exited with {node.process.returncode}:\n{node.log_path.read_text()[-3000:]}")
            try:
                # The metrics port answers once the node has bound all its ports and started its driver.
                node.metrics_text()
                return
            except (OSError, ConnectionError, IndexError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node_id} does not answer on its metrics port:\n{node.log_path.read_text()[-3000:]}")
                time.sleep(WAIT_STEP_S)

    def kill(self, node_id: str) -> None:
        """kill -9, by pid."""
        node = self.nodes[node_id]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(PROCESS_STOP_TIMEOUT_S)

    def stop(self, node_id: str) -> int:
        """SIGTERM and wait; the exit status."""
        node = self.nodes[node_id]
        if node.process is None or node.process.poll() is not None:
            return node.process.returncode if node.process else 0
        node.process.send_signal(signal.SIGTERM)
        return node.process.wait(PROCESS_STOP_TIMEOUT_S)

    def teardown(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGKILL)
                node.process.wait(PROCESS_STOP_TIMEOUT_S)
            for handle in node.log_handles:
                handle.close()

    # --- fault injection -------------------------------------------------------------------------

    def partition(self, node_id: str) -> None:
        """Cut every link of `node_id`: it refuses all peers, and all peers refuse it."""
        for other in self.nodes.values():
            words = "*" if other.id == node_id else node_id
            (other.data_dir / "fault-partition").write_text(words)

    def heal(self) -> None:
        for other in self.nodes.values():
            path = other.data_dir / "fault-partition"
            if path.exists():
                path.unlink()

    # --- observing -------------------------------------------------------------------------------

    def status(self, node_id: str) -> dict:
        return self.nodes[node_id].call("status")

    def wait_until(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = predicate()
            except (OSError, ConnectionError, RpcError):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.id}\n{n.log_path.read_text()[-2000:]}" for n in self.nodes.values()
                                  if n.log_path.exists())
                raise AssertionError(f"timed out waiting for {what}\n{logs}")
            time.sleep(WAIT_STEP_S)

    def wait_height(self, node_ids, height: int, timeout_s: float = 60) -> None:
        self.wait_until(lambda: all(self.status(n)["height"] >= height for n in node_ids), timeout_s,
                        f"height {height} on {list(node_ids)}")

