"""The worked example of docs/PROTOCOL.md, rebuilt from fixed seeds (Ed25519 signing is deterministic).

    .venv/bin/python -m tests.support.protocol_example     prints every value as hex (from the repository root)
test_protocol_doc.py checks each value appears verbatim in docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import nacl.signing

from consensus import codec
from consensus.block import BlockHeader, CommitCertificate, CommitSignature, commit_vote_payload, entries_hash
from consensus.epochs import AddValidator
from consensus.messages import CommittedBlock
from consensus.validators import Validator
from storage import entries, merkle, smt
from storage.genesis import Genesis
from storage.ledger import Ledger, outcomes_hash
from storage.proofs import verify_match_proof

CHAIN_ID = "bayledger-example"
TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def key(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(f"bayledger example {name}".encode()).digest())


def example_genesis(**extra) -> Genesis:
    """The example's genesis: two validators, one regulator per side, one admitted bureau (and any
    `extra` top-level fields: the epoch example's epoch_margin_heights)."""
    validators = {"hk-1": key("hk-1"), "cn-1": key("cn-1")}
    bureau = key("hk-bureau")
    return Genesis.from_dict({**extra,
        "chain_id": CHAIN_ID,
        "genesis_time_ms": TIME_MS,
        "validators": [
            {"id": "hk-1", "public_key": bytes(validators["hk-1"].verify_key).hex(), "jurisdiction": "HK"},
            {"id": "cn-1", "public_key": bytes(validators["cn-1"].verify_key).hex(), "jurisdiction": "CN"},
        ],
        "governance": {
            "HK": {"keys": [{"id": "hkma", "public_key": bytes(key("hkma").verify_key).hex()}], "threshold": 1},
            "CN": {"keys": [{"id": "pboc", "public_key": bytes(key("pboc").verify_key).hex()}], "threshold": 1},
        },
        "participants": [{"id": "hk-bureau", "jurisdiction": "HK", "role": "credit-provider",
                          "public_key": bytes(bureau.verify_key).hex()}],
    })


def build() -> dict[str, bytes]:
    validators = {"hk-1": key("hk-1"), "cn-1": key("cn-1")}
    bureau = key("hk-bureau")
    genesis = example_genesis()
    out: dict[str, bytes] = {}
    document = b"Example credit report for ACME Trading Ltd\n"
    salt = bytes(range(32))
    out["validator_hk_1_public_key"] = bytes(validators["hk-1"].verify_key)
    out["validator_cn_1_public_key"] = bytes(validators["cn-1"].verify_key)
    out["participant_public_key"] = bytes(bureau.verify_key)
    out["document_sha256"] = hashlib.sha256(document).digest()
    out["commitment"] = entries.commitment_of_document(document, salt)
    block = []
    for nonce, c in ((1, hashlib.sha256(b"first").digest()), (2, out["commitment"]), (3, hashlib.sha256(b"third").digest())):
        block.append(entries.build_commit(bureau, "hk-bureau", CHAIN_ID, c, "credit-report", "HK", nonce,
                                          TIME_MS + nonce, None))
    entry = block[1]
    decoded = entries.decode_entry(entry)
    out["body"] = decoded.body
    out["signing_bytes"] = codec.signing_bytes(codec.DOMAIN_ENTRY, CHAIN_ID, decoded.body)
    out["signature"] = decoded.signatures[0][1]
    out["entry"] = entry
    out["leaf_hash"] = merkle.leaf_hash(entry)
    out["leaf_0_hash"] = merkle.leaf_hash(block[0])
    out["leaf_2_hash"] = merkle.leaf_hash(block[2])
    out["node_01"] = merkle.node_hash(out["leaf_0_hash"], out["leaf_hash"])
    out["results"] = codec.pack([0, 1, 2])
    out["outcomes_hash"] = outcomes_hash([0, 1, 2])
    out["empty_1"] = smt.EMPTY[1]
    out["revoked_root"] = smt.EMPTY_ROOT  # nothing revoked yet
    out["results_map"] = codec.pack({"outcomes_hash": out["outcomes_hash"], "revoked_root": out["revoked_root"]})
    out["results_hash"] = codec.sha256(out["results_map"])
    out["entries_hash"] = entries_hash(block)
    out["validator_set_hash"] = genesis.validator_set.hash()
    with tempfile.TemporaryDirectory() as directory:
        ledger = Ledger.open(Path(directory) / "ledger", genesis)
        result = ledger.execute(None, 1, TIME_MS + 1000, block)
        header = BlockHeader(
            chain_id=CHAIN_ID, height=1, prev_hash=bytes(32), time_ms=TIME_MS + 1000,
            entries_hash=out["entries_hash"], entry_count=3, tree_size=result.tree_size,
            tree_root=result.tree_root, results_hash=result.results_hash,
            validator_set_hash=out["validator_set_hash"],
        )
        assert header.results_hash == out["results_hash"]
        out["tree_root"] = header.tree_root
        out["header"] = header.encode()
        out["header_hash"] = header.hash()
        payload = commit_vote_payload(0, 1, header.hash())
        out["vote_payload"] = payload
        out["vote_signing_bytes"] = codec.signing_bytes(codec.DOMAIN_COMMIT, CHAIN_ID, payload)
        signatures = tuple(CommitSignature(v, codec.sign(k, codec.DOMAIN_COMMIT, CHAIN_ID, payload))
                           for v, k in validators.items())
        certificate = CommitCertificate(view=0, height=1, header_hash=header.hash(), signatures=signatures)
        out["certificate"] = codec.pack(certificate.to_wire())
        ledger.apply_block(CommittedBlock(header, tuple(block), certificate))
        out["match_proof"] = ledger.match_proof(out["commitment"])
        ledger.close()
    verdict = verify_match_proof(out["match_proof"], genesis, out["commitment"], now_ms=TIME_MS)
    assert verdict.status == "match", verdict
    out["genesis_hash"] = genesis.hash()
    # The revoked set alone (smt.py), for checking an SMT implementation: the set holding only
    # SHA-256("first"), its leaf, its root, and the proof that our commitment is NOT in it.
    first = hashlib.sha256(b"first").digest()
    nodes: dict[bytes, bytes] = {}
    nodes.update(smt.update(nodes.get, first))
    out["smt_first_leaf"] = smt.leaf_hash(first)
    out["smt_one_root"] = smt.root(nodes.get)
    absence = smt.prove(nodes.get, out["commitment"])
    out["smt_absence_bitmap"] = absence["bitmap"]
    out["smt_absence_sibling"], = absence["siblings"]
    assert smt.root_from_proof(out["commitment"], False, absence["bitmap"], absence["siblings"]) == out["smt_one_root"]
    out.update(build_epoch_example(out["commitment"]))
    return out


HK2_ADDRESSES = {"hk-2": {"p2p": "10.0.0.2:26601", "rpc": "10.0.0.2:26701"}}


def _certified_block(ledger: Ledger, entries_: list[bytes], signers: dict, epoch_config) -> CommittedBlock:
    """The next block of `entries_` on `ledger`'s head, certified by `signers` (id -> key), in `epoch_config`."""
    parent = ledger.head()
    height = 1 if parent is None else parent.height + 1
    time_ms = TIME_MS + 1000 * height
    result = ledger.execute(parent, height, time_ms, entries_)
    header = BlockHeader(
        chain_id=CHAIN_ID, height=height, prev_hash=parent.hash() if parent else bytes(32), time_ms=time_ms,
        entries_hash=entries_hash(entries_), entry_count=len(entries_), tree_size=result.tree_size,
        tree_root=result.tree_root, results_hash=result.results_hash,
        validator_set_hash=epoch_config.validators.hash(), epoch=epoch_config.epoch,
    )
    payload = commit_vote_payload(0, height, header.hash())
    signatures = tuple(CommitSignature(v, codec.sign(k, codec.DOMAIN_COMMIT, CHAIN_ID, payload))
                       for v, k in sorted(signers.items()))
    return CommittedBlock(header, tuple(entries_), CommitCertificate(0, height, header.hash(), signatures))


def build_epoch_example(commitment: bytes) -> dict[str, bytes]:
    """docs/PROTOCOL.md §7, "Epochs": the example chain with margin 1; block 1 adds validator hk-2
    (so epoch 1 starts at height 3), block 2 is empty, block 3 commits the example's commitment.
    The proof of it walks one epoch step."""
    genesis = example_genesis(epoch_margin_heights=1)
    signers = {"hk-1": key("hk-1"), "cn-1": key("cn-1")}
    hk2 = Validator("hk-2", bytes(key("hk-2").verify_key), "HK")
    regulators = [("hkma", key("hkma")), ("pboc", key("pboc"))]
    reconfigure = entries.build_reconfigure(regulators, CHAIN_ID, 0, [AddValidator(hk2)], HK2_ADDRESSES, 1,
                                            TIME_MS + 10)
    commit = entries.build_commit(key("hk-bureau"), "hk-bureau", CHAIN_ID, commitment, "credit-report", "HK", 2,
                                  TIME_MS + 2, None)
    out = {"epoch_hk_2_public_key": hk2.public_key, "epoch_genesis_hash": genesis.hash(),
           "epoch_reconfigure_body": entries.decode_entry(reconfigure).body, "epoch_reconfigure_entry": reconfigure}
    with tempfile.TemporaryDirectory() as directory:
        ledger = Ledger.open(Path(directory) / "ledger", genesis)
        for block_entries in ([reconfigure], []):
            ledger.apply_block(_certified_block(ledger, block_entries, signers, ledger.epochs.schedule.config_at(1)))
        epoch_1 = ledger.epochs.schedule.epochs[1]
        assert epoch_1.start_height == 3 and ledger.epochs.entry_leaves == (0,)
        ledger.apply_block(_certified_block(ledger, [commit], {**signers, "hk-2": key("hk-2")}, epoch_1))
        out["epoch_1_validator_set_hash"] = epoch_1.validators.hash()
        out["epoch_header_3"] = ledger.header(3).encode()
        proof = ledger.match_proof(commitment)
        ledger.close()
    # The document gives the `epochs` value: the rest of the proof is built as in the first example.
    out["epoch_steps"] = codec.pack(codec.unpack_canonical(proof)["epochs"])
    verdict = verify_match_proof(proof, genesis, commitment, now_ms=TIME_MS)
    assert verdict.status == "match" and verdict.details["height"] == 3 and len(proof) == 2947, verdict
    return out


def wrapped(data: bytes, width: int = 64) -> str:
    text = data.hex()
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


if __name__ == "__main__":
    for name, value in build().items():
        print(f"## {name} ({len(value)} bytes)\n{wrapped(value)}\n")
