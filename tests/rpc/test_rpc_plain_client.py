"""A stock msgpack-RPC client written here with only socket, msgpack (and nacl/hashlib to sign and hash,
following docs/PROTOCOL.md §8) calls every method of a node.rpc server over real TCP on 127.0.0.1.

The server reads a real LevelDB ledger holding certified blocks (see tests/support/rpc_helpers.py); nothing of
the project is used on the client side, so this is what a client in another language sees.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time

import msgpack
import nacl.signing

from storage.proofs import verify_match_proof  # only to check the answer, not to make the call


def pack(value) -> bytes:
    """Canonical msgpack as docs/PROTOCOL.md §8 says: map keys sorted by their UTF-8 bytes, bytes as bin."""
    def canonical(v):
        if isinstance(v, dict):
            return {k: canonical(v[k]) for k in sorted(v, key=str.encode)}
        if isinstance(v, list):
            return [canonical(x) for x in v]
        return v
    return msgpack.packb(canonical(value), use_bin_type=True)


class PlainClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.msgid = 0

    def call(self, method: str, *params):
        self.msgid += 1
        self.sock.sendall(msgpack.packb([0, self.msgid, method, list(params)], use_bin_type=True))
        while True:
            for message in self.unpacker:
                assert message[0] == 1 and message[1] == self.msgid
                return message[2], message[3]
            data = self.sock.recv(65536)
            assert data, "server closed the connection"
            self.unpacker.feed(data)

    def close(self) -> None:
        self.sock.close()


def sign(key: nacl.signing.SigningKey, domain: str, chain_id: str, payload: bytes) -> bytes:
    return key.sign(domain.encode() + b"\x00" + chain_id.encode() + b"\x00" + payload).signature


def authenticate(client: PlainClient, identity: str, key: nacl.signing.SigningKey):
    """docs/PROTOCOL.md §8 Authentication: sign the challenge answer, send it; (error, result)."""
    error, answer = client.call("challenge")
    assert error is None and len(answer["challenge"]) == 32
    public_key = bytes(key.verify_key)
    payload = pack({"challenge": answer["challenge"], "identity": identity, "node": answer["node"],
                    "public_key": public_key, "type": "rpc-auth"})
    return client.call("authenticate", identity, public_key,
                       sign(key, "bayledger/rpc-auth/v1", answer["chain_id"], payload))


def signed_query(key, participant: str, chain_id: str, node: str, commitment: bytes) -> bytes:
    body = pack({"type": "match-query", "chain_id": chain_id, "node": node, "participant": participant,
                 "participant_key": bytes(key.verify_key), "commitment": commitment,
                 "nonce": int.from_bytes(os.urandom(7), "big"), "time_ms": int(time.time() * 1000)})
    return pack({"body": body, "sig": sign(key, "bayledger/query/v1", chain_id, body)})


def signed_commit(key, author: str, chain_id: str, commitment: bytes, nonce: int) -> bytes:
    body = pack({"type": "commit", "chain_id": chain_id, "author": author, "nonce": nonce,
                 "time_ms": int(time.time() * 1000), "author_key": bytes(key.verify_key),
                 "commitment": commitment, "kind": "credit-report", "jurisdiction": "HK", "expires_ms": None})
    return pack({"body": body, "sigs": [{"by": author, "sig": sign(key, "bayledger/entry/v1", chain_id, body)}]})


def test_a_plain_client_calls_every_method(server, world, commitments):
    """Every method answers per docs/PROTOCOL.md §8 to a client that authenticates as the doc says:
    a validator reads, a participant (hk-bank) matches with its own queries, another (hk-bureau)
    submits its own entries; the match proof verifies offline; submit commits."""
    client = PlainClient(server.port)
    chain_id = world.chain_id

    error, status = client.call("status")                  # anonymous: the reduced status
    assert error is None and status == {"chain_id": chain_id, "node_id": status["node_id"], "height": 4,
                                        "version": status["version"]}
    node_id = status["node_id"]
    error, result = client.call("validators")
    assert error["code"] == "unauthorized" and result is None

    error, result = authenticate(client, "hk-1", world.validator_keys["hk-1"])
    assert error is None and result == {"identity": "hk-1", "role": "validator"}

    error, status = client.call("status")
    assert error is None
    assert status["chain_id"] == chain_id and status["height"] == 4 and status["tree_size"] == 5
    for field in ("node_id", "jurisdiction", "view", "primary", "tree_root", "peers", "mempool_size", "version"):
        assert field in status
    assert status["epoch"] == 0

    error, validators = client.call("validators")
    assert error is None and [v["id"] for v in validators] == ["hk-1", "hk-2", "cn-1", "cn-2"]
    assert validators[0] == {"id": "hk-1", "public_key": world.genesis.validator_set.get("hk-1").public_key,
                             "jurisdiction": "HK", "address": "127.0.0.1:26600"}
    error, epochs = client.call("epochs")
    assert error is None and epochs["epoch"] == epochs["current_epoch"] == 0
    assert [v["id"] for v in epochs["epochs"][0]["validators"]] == ["hk-1", "hk-2", "cn-1", "cn-2"]

    error, header = client.call("header", 1)
    assert error is None and header["header"]["height"] == 1 and len(header["certificate"]["signatures"]) == 3
    assert len(header["hash"]) == 32

    error, block = client.call("block", 1)
    assert error is None and len(block["entries"]) == 2 and block["results"] == [0, 1]

    error, proof = client.call("consistency", 1, 5)
    assert error is None and proof["size1"] == 1 and proof["size2"] == 5 and all(len(h) == 32 for h in proof["proof"])

    error, participant = client.call("participant", "hk-bank")
    assert error is None and participant["status"] == "active" and participant["jurisdiction"] == "HK"
    error, participant = client.call("participant", "cn-bureau")
    assert error is None and participant["status"] == "suspended"

    error, result = client.call("header", 99)
    assert error == {"code": "not-found", "message": error["message"]} and result is None
    client.close()

    bank = PlainClient(server.port)
    bank_key = world.participant_keys["hk-bank"]
    error, result = authenticate(bank, "hk-bank", bank_key)
    assert error is None and result == {"identity": "hk-bank", "role": "participant"}
    error, proof_bytes = bank.call("match", signed_query(bank_key, "hk-bank", chain_id, node_id, commitments["active"]))
    assert error is None and isinstance(proof_bytes, bytes)
    assert verify_match_proof(proof_bytes, world.genesis, commitments["active"]).status == "match"
    error, proof_bytes = bank.call("match", signed_query(bank_key, "hk-bank", chain_id, node_id, commitments["revoked"]))
    assert error is None
    assert verify_match_proof(proof_bytes, world.genesis, commitments["revoked"]).status == "revoked"
    error, result = bank.call("match", signed_query(bank_key, "hk-bank", chain_id, node_id, commitments["unknown"]))
    assert error["code"] == "not-found" and result is None
    bank.close()

    bureau = PlainClient(server.port)
    bureau_key = world.participant_keys["hk-bureau"]
    error, result = authenticate(bureau, "hk-bureau", bureau_key)
    assert error is None and result == {"identity": "hk-bureau", "role": "participant"}
    fresh = hashlib.sha256(b"a fresh commitment").digest()
    error, receipt = bureau.call("submit", signed_commit(bureau_key, "hk-bureau", chain_id, fresh, 100), {"wait": True})
    assert error is None and receipt["status"] == "committed" and receipt["height"] == 5 and receipt["leaf_index"] == 5
    error, receipt = bureau.call("submit", signed_commit(bureau_key, "hk-bureau", chain_id, os.urandom(32), 101))
    assert error is None and receipt["status"] == "pending" and len(receipt["id"]) == 32
    error, receipt = bureau.call("submit", signed_commit(bureau_key, "hk-bureau", chain_id, fresh, 100), {"wait": True})
    assert error is None and receipt["status"] == "rejected" and receipt["reason"]
    bureau.close()
