"""Issue 15 end to end: a real testnet (4 daemons on 127.0.0.1, TLS on, real LevelDB), asked by a
plain client written here with only `ssl`, `socket`, `msgpack` and `nacl` (what a bank's engineer
would write from docs/PROTOCOL.md §8), and by the `bayledger` CLI.

One network serves every test of the module (starting one costs ~10 s); each test uses its own
commitments and nonces, so their order does not matter.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import nacl.signing
import pytest

from testnet import ports
from testnet.network import Network

pytestmark = pytest.mark.slow   # real validator processes: make test runs these alone (pyproject.toml)

REPO = Path(__file__).resolve().parents[2]
command_timeout_s = 120
commit_wait_ms = 20_000
AUTH_DOMAIN = b"bayledger/rpc-auth/v1"
ENTRY_DOMAIN = b"bayledger/entry/v1"
QUERY_DOMAIN = b"bayledger/query/v1"


# -- the plain client ---------------------------------------------------------------------------

def canonical(value) -> bytes:
    """Canonical msgpack (docs/PROTOCOL.md §1) of the maps built here: keys in ascending order of
    their UTF-8 bytes; msgpack-python already writes the shortest forms."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: item[0].encode())
        header = bytes([0x80 | len(items)]) if len(items) < 16 else b"\xde" + len(items).to_bytes(2, "big")
        return header + b"".join(canonical(k) + canonical(v) for k, v in items)
    return msgpack.packb(value, use_bin_type=True)


def load_key(path: str | Path) -> tuple[str, nacl.signing.SigningKey]:
    document = json.loads(Path(path).read_text())
    return document.get("id"), nacl.signing.SigningKey(bytes.fromhex(document["seed"]))


class PlainClient:
    """msgpack-RPC over the platform's TLS socket: nothing of Bayledger's code."""

    def __init__(self, address: str, ca_file: str | None, *, tls: bool = True) -> None:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        if tls:
            context = ssl.create_default_context(cafile=ca_file)
            sock = context.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgid = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def receive(self):
        while True:
            for message in self.unpacker:
                return message
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the node")
            self.unpacker.feed(data)

    def call(self, method: str, *params):
        """(error, result)."""
        self.msgid += 1
        self.sock.sendall(msgpack.packb([0, self.msgid, method, list(params)], use_bin_type=True))
        message = self.receive()
        assert message[0] == 1 and message[1] == self.msgid, message
        return message[2], message[3]

    def authenticate(self, identity: str, key: nacl.signing.SigningKey):
        error, challenge = self.call("challenge")
        assert error is None, error
        public_key = bytes(key.verify_key)
        payload = canonical({"type": "rpc-auth", "challenge": challenge["challenge"], "identity": identity,
                             "node": challenge["node"], "public_key": public_key})
        signed = AUTH_DOMAIN + b"\x00" + challenge["chain_id"].encode() + b"\x00" + payload
        return self.call("authenticate", identity, public_key, key.sign(signed).signature)


# -- the network --------------------------------------------------------------------------------

def run_testnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testnet", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=command_timeout_s)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=command_timeout_s, env={**os.environ, **(env or {})})


class RunningTestnet:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.network = Network.load(run_dir)
        status = json.loads(run_testnet("status", "--json", "--dir", str(run_dir)).stdout)
        self.ca = status["ca"]
        self.genesis = status["genesis"]
        self.chain_id = self.network.chain_id
        self.rpc = {node.name: node.rpc for node in self.network.nodes}

    def key(self, name: str) -> tuple[str, nacl.signing.SigningKey]:
        if name in self.network.participants:
            path = self.network.participants[name]["key"]
        elif name.startswith("governance-"):
            path = self.network.governance[name.removeprefix("governance-")]
        else:
            path = self.network.node(name).key_path
        identity, key = load_key(path)
        return identity or name, key

    def wait_for_height(self, nodes: list[str], height: int, timeout_s: float = 30) -> None:
        """Until each of `nodes` has applied `height` (the anonymous status tells the height)."""
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            with self.client(node) as anonymous:
                while anonymous.call("status")[1]["height"] < height:
                    assert time.monotonic() < deadline, f"{node} did not reach height {height}"
                    time.sleep(0.05)

    def client(self, node: str, as_identity: str | None = None,
               key: nacl.signing.SigningKey | None = None) -> PlainClient:
        client = PlainClient(self.rpc[node], self.ca)
        if as_identity is not None:
            identity, key = (as_identity, key) if key is not None else self.key(as_identity)
            error, result = client.authenticate(identity, key)
            assert error is None, error
        return client


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("access") / "run"
    done = run_testnet("up", "--dir", str(run_dir), "--base-port", str(ports.find_free_base_port(4)))
    try:
        assert done.returncode == 0, done.stdout + done.stderr   # the demo's submit and verify ran over TLS
        yield RunningTestnet(run_dir)
    finally:
        run_testnet("down", "--dir", str(run_dir))


# -- entries, built by hand from PROTOCOL.md §2 ------------------------------------------------------

_nonces = iter(range(time.time_ns() // 1000, 2**62))


def commit_entry(chain_id: str, author: str, key: nacl.signing.SigningKey, commitment: bytes) -> bytes:
    from node.client import build_commit     # the builders are the reference; the bytes are what matter
    return build_commit(key, author, chain_id, commitment, jurisdiction="HK", nonce=next(_nonces))


def submit(client: PlainClient, entry: bytes):
    return client.call("submit", entry, {"wait": True, "timeout_ms": commit_wait_ms})


def every_entry(client: PlainClient) -> list[bytes]:
    error, status = client.call("status")
    assert error is None, error
    entries = []
    for height in range(1, status["height"] + 1):
        error, block = client.call("block", height)
        assert error is None, error
        entries += block["entries"]
    return entries


def authors(entries: list[bytes]) -> set[str]:
    from storage.entries import decode_entry
    return {decode_entry(entry).author for entry in entries}


# -- the tests ------------------------------------------------------------------------------------

def test_a_plain_tcp_connection_to_a_tls_node_fails_cleanly(testnet):
    with PlainClient(testnet.rpc["hk-1"], None, tls=False) as plain:
        plain.sock.sendall(msgpack.packb([0, 1, "status", []]))
        message = plain.receive()
        assert message[0] == 1 and message[1] is None and message[2]["code"] == "tls-required"
        assert plain.sock.recv(100) == b""      # and the node closed the connection
    done = run_cli("status", "--rpc", testnet.rpc["hk-1"], "--plaintext")
    assert done.returncode != 0 and "TLS" in done.stderr and "Traceback" not in done.stderr


def test_anonymous_callers_get_the_reduced_status_and_nothing_else(testnet):
    with testnet.client("hk-1") as anonymous:
        error, status = anonymous.call("status")
        assert error is None and set(status) == {"chain_id", "node_id", "height", "version"}
        for method, params in (("block", [1]), ("header", [1]), ("participant", ["hk-bank"]), ("validators", []),
                               ("consistency", [1, 1]), ("queries", [0])):
            error, _ = anonymous.call(method, *params)
            assert error["code"] == "unauthorized", (method, error)
            assert "auditor" in error["message"], error


def test_a_participant_submits_and_matches_but_cannot_read_blocks(testnet):
    identity, key = testnet.key("sz-credit-bureau")
    commitment = os.urandom(32)
    with testnet.client("hk-1", "sz-credit-bureau") as bureau:
        error, receipt = submit(bureau, commit_entry(testnet.chain_id, identity, key, commitment))
        assert error is None and receipt["status"] == "committed", (error, receipt)
        error, _ = bureau.call("block", 1)
        assert error["code"] == "unauthorized"
        error, _ = bureau.call("queries", 0)
        assert error["code"] == "unauthorized"
        # Another participant's entry is not the bureau's to submit.
        bank, bank_key = testnet.key("hk-bank")
        error, _ = submit(bureau, commit_entry(testnet.chain_id, bank, bank_key, os.urandom(32)))
        assert error["code"] == "unauthorized"
    with testnet.client("hk-2", "hk-bank") as bank_client:
        error, proof = bank_client.call("match", match_query(testnet, "hk-bank", "hk-2", commitment))
        assert error is None and isinstance(proof, bytes)
        error, _ = bank_client.call("header", 1)
        assert error["code"] == "unauthorized"


def match_query(testnet: RunningTestnet, participant: str, node: str, commitment: bytes, time_ms: int | None = None) -> bytes:
    identity, key = testnet.key(participant)
    body = canonical({"type": "match-query", "chain_id": testnet.chain_id, "node": node, "participant": identity,
                      "participant_key": bytes(key.verify_key), "commitment": commitment,
                      "nonce": next(_nonces), "time_ms": int(time.time() * 1000) if time_ms is None else time_ms})
    signature = key.sign(QUERY_DOMAIN + b"\x00" + testnet.chain_id.encode() + b"\x00" + body).signature
    return canonical({"body": body, "sig": signature})


def test_an_auditor_reads_blocks_and_the_query_log(testnet):
    identity, key = testnet.key("sz-credit-bureau")
    commitment = os.urandom(32)
    with testnet.client("hk-1", "sz-credit-bureau") as bureau:
        assert submit(bureau, commit_entry(testnet.chain_id, identity, key, commitment))[0] is None
    asked_ms = int(time.time() * 1000)
    with testnet.client("cn-1", "hk-bank") as bank:
        assert bank.call("match", match_query(testnet, "hk-bank", "cn-1", commitment))[0] is None
    with testnet.client("cn-1", "hk-auditor") as auditor:
        error, block = auditor.call("block", 1)
        assert error is None and block["entries"]
        error, page = auditor.call("queries", asked_ms - 1000)
        assert error is None, error
        mine = [r for r in page["records"] if r["commitment"] == commitment.hex()]
        assert len(mine) == 1 and mine[0]["participant"] == "hk-bank" and mine[0]["outcome"] == "match", page
    # The same log through the CLI, as JSON lines; a participant's key is refused it.
    auditor_key = testnet.network.participants["hk-auditor"]["key"]
    done = run_cli("queries", "--rpc", testnet.rpc["cn-1"], "--ca", testnet.ca, "--key", auditor_key, "--since", "10m")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and any(r["commitment"] == commitment.hex() for r in records), done.stderr
    bank_key = testnet.network.participants["hk-bank"]["key"]
    done = run_cli("queries", "--rpc", testnet.rpc["cn-1"], "--ca", testnet.ca, "--key", bank_key)
    assert done.returncode == 1 and "unauthorized" in done.stderr and "auditor" in done.stderr   # a refusal


def test_unadmitted_and_suspended_authors_are_refused_at_the_door_and_in_no_block(testnet):
    from node.client import build_admit, build_suspend
    from storage.genesis import Participant
    mallory_key = nacl.signing.SigningKey.generate()
    regulators = [testnet.key("governance-HK"), testnet.key("governance-CN")]
    erin_key = nacl.signing.SigningKey.generate()
    with testnet.client("hk-1", "hk-1") as validator:
        # A validator may relay any entry; the door still refuses an author the ledger does not know.
        error, _ = submit(validator, commit_entry(testnet.chain_id, "mallory", mallory_key, os.urandom(32)))
        assert error["code"] == "bad-entry" and "unknown-author" in error["message"], error
        erin = Participant(id="erin", jurisdiction="HK", role="credit-provider", public_key=bytes(erin_key.verify_key))
        assert submit(validator, build_admit(regulators, testnet.chain_id, erin))[0] is None
    with testnet.client("hk-2", "erin", erin_key) as erin_session:
        assert submit(erin_session, commit_entry(testnet.chain_id, "erin", erin_key, os.urandom(32)))[0] is None
        with testnet.client("hk-2", "governance-HK") as regulator:
            assert submit(regulator, build_suspend(regulators, testnet.chain_id, "erin"))[0] is None
            time.sleep(0.5)     # hk-2 applies the block
            # A suspended participant's open session is refused at its next call ...
            error, _ = submit(erin_session, commit_entry(testnet.chain_id, "erin", erin_key, os.urandom(32)))
            assert error["code"] == "unauthorized" and "suspended" in error["message"], error
    # ... it cannot authenticate again, and its entries relayed by a validator are refused at the door.
    with testnet.client("hk-2") as fresh:
        error, _ = fresh.authenticate("erin", erin_key)
        assert error["code"] == "unauthorized"
    with testnet.client("cn-1", "cn-1") as validator:
        error, _ = submit(validator, commit_entry(testnet.chain_id, "erin", erin_key, os.urandom(32)))
        assert error["code"] == "bad-entry" and "suspended" in error["message"], error
    with testnet.client("cn-2", "hk-auditor") as auditor:
        seen = authors(every_entry(auditor))
    assert "mallory" not in seen and "erin" in seen


def test_a_query_answered_by_one_node_is_refused_by_another_and_after_a_restart(testnet):
    identity, key = testnet.key("sz-credit-bureau")
    commitment = os.urandom(32)
    with testnet.client("hk-1", "sz-credit-bureau") as bureau:
        assert submit(bureau, commit_entry(testnet.chain_id, identity, key, commitment))[0] is None
    query = match_query(testnet, "hk-bank", "hk-2", commitment)
    with testnet.client("hk-2", "hk-bank") as bank:
        assert bank.call("match", query)[0] is None
        assert bank.call("match", query)[0]["code"] == "replayed"
    with testnet.client("cn-1", "hk-bank") as bank:
        error, _ = bank.call("match", query)
        assert error["code"] == "invalid-params" and "hk-2" in error["message"], error
    assert run_testnet("restart", "hk-2", "--dir", str(testnet.run_dir)).returncode == 0
    deadline = time.monotonic() + 60
    while True:
        try:
            bank = testnet.client("hk-2", "hk-bank")
            break
        except (OSError, AssertionError):
            assert time.monotonic() < deadline, "hk-2 did not come back"
            time.sleep(0.5)
    with bank:
        error, _ = bank.call("match", query)
        assert error["code"] == "stale-query" and "before this node started" in error["message"], error


def test_a_proof_fetched_before_a_revocation_goes_stale(testnet, tmp_path):
    document = tmp_path / "report.txt"
    document.write_bytes(os.urandom(64))
    env = {"BAYLEDGER_CA": testnet.ca, "BAYLEDGER_GENESIS": testnet.genesis, "BAYLEDGER_RPC": testnet.rpc["hk-1"]}
    bureau_key = testnet.network.participants["sz-credit-bureau"]["key"]
    bank_key = testnet.network.participants["hk-bank"]["key"]
    receipt = tmp_path / "report.receipt.json"
    done = run_cli("submit", str(document), "--key", bureau_key, "--receipt", str(receipt), env=env)
    assert done.returncode == 0, done.stderr
    proof = tmp_path / "proof.bin"
    done = run_cli("verify", str(document), "--receipt", str(receipt), "--key", bank_key, "--proof-out", str(proof),
                   env=env)
    assert done.returncode == 0 and "MATCH" in done.stdout, done.stdout + done.stderr
    # Asked of two nodes at once, both must agree that the commitment is not revoked.
    two = f"{testnet.rpc['hk-2']},{testnet.rpc['cn-2']}"
    testnet.wait_for_height(["hk-2", "cn-2"], json.loads(receipt.read_text())["height"])
    done = run_cli("verify", str(document), "--receipt", str(receipt), "--key", bank_key, "--rpc", two, env=env)
    assert done.returncode == 0 and done.stdout.startswith("MATCH"), done.stdout + done.stderr
    done = run_cli("revoke", "--receipt", str(receipt), "--key", bureau_key, env=env)
    assert done.returncode == 0, done.stderr
    time.sleep(2.5)
    done = run_cli("proof", "verify", str(proof), "--receipt", str(receipt), "--max-status-age", "2s", env=env)
    assert done.returncode == 1 and "STALE: status at height" in done.stdout + done.stderr, done.stdout + done.stderr
    # The same proof within a long bound still says MATCH as of its (old) status height: the bound is the point.
    done = run_cli("proof", "verify", str(proof), "--receipt", str(receipt), "--max-status-age", "1h", env=env)
    assert done.returncode == 0 and "MATCH" in done.stdout, done.stdout + done.stderr


# The flood's node gets a per-participant rate this far below the default (1,000/s, burst 2,000): a
# loaded 2-core host answers fewer than 1,000 submits a second on one connection, so at the default
# the bucket never ran dry and the test measured the host, not the limit.
FLOOD_RATE_PER_S = 100
FLOOD_BURST = 200


def lower_submit_rate_and_restart(testnet, node: str) -> None:
    config = testnet.network.node(node).config_path
    text = config.read_text()
    for key, value in (("submit_rate_per_participant_per_s", FLOOD_RATE_PER_S),
                       ("submit_burst_per_participant", FLOOD_BURST)):
        text, count = re.subn(rf"^{key} = \d+$", f"{key} = {value}", text, flags=re.M)
        assert count == 1, key
    config.write_text(text)
    done = run_testnet("restart", node, "--dir", str(testnet.run_dir))
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_participant_flooding_submits_does_not_stop_another(testnet):
    """The bureau sends 8,000 submits as fast as one connection carries them (far past its rate of
    100/s and burst of 200 on this node); the bank's entries still commit, each within the usual wait."""
    lower_submit_rate_and_restart(testnet, "hk-1")
    bureau, bureau_key = testnet.key("sz-credit-bureau")
    bank, bank_key = testnet.key("hk-bank")
    flood = [commit_entry(testnet.chain_id, bureau, bureau_key, os.urandom(32)) for _ in range(8000)]
    stop = threading.Event()
    flood_answers: list[str] = []

    def send_flood() -> None:
        with testnet.client("hk-1", "sz-credit-bureau") as flooder:
            for first in range(0, len(flood), 500):
                if stop.is_set():
                    break
                payload = b""
                for entry in flood[first:first + 500]:
                    flooder.msgid += 1
                    payload += msgpack.packb([0, flooder.msgid, "submit", [entry]], use_bin_type=True)
                flooder.sock.sendall(payload)
                for _ in range(len(flood[first:first + 500])):
                    message = flooder.receive()
                    flood_answers.append(message[2]["code"] if message[2] else "ok")

    thread = threading.Thread(target=send_flood, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while all(code == "ok" for code in flood_answers) and thread.is_alive():   # until the bureau is refused
            assert time.monotonic() < deadline, "the flood was never refused"
            time.sleep(0.05)
        with testnet.client("hk-1", "hk-bank") as bank_client:
            for _ in range(5):
                error, receipt = submit(bank_client, commit_entry(testnet.chain_id, bank, bank_key, os.urandom(32)))
                assert error is None and receipt["status"] == "committed", (error, receipt)
    finally:
        stop.set()
        thread.join(timeout=60)
    # The flood was real: the bureau was refused beyond its share while the bank's entries committed.
    counts = {code: flood_answers.count(code) for code in set(flood_answers)}
    assert counts.get("ok", 0) > 0 and set(counts) - {"ok"} <= {"busy", "mempool-full"}, counts
    assert sum(counts.values()) - counts.get("ok", 0) > 0, counts
