"""The client subcommands through `node.cli.main(argv)` against a node.rpc server on 127.0.0.1 that
reads a real LevelDB ledger with certified blocks (tests/support/rpc_helpers.py), with capsys.

Checks the exit codes (0 verified match, 1 negative answer, 2 error), the receipt, offline proof
verification (a tampered proof is refused naming the failed check), two-jurisdiction governance,
the environment variables, and that every usage or connection error is one line with no traceback.
"""

from __future__ import annotations

import json
import socket
import stat

import msgpack
import pytest

from node.cli import main
from node.client import Client, Credentials, RpcError
from node.keys import load_key_file
from tests.support.cli import one_line_error, run

CLIENT_COMMANDS = ("submit", "verify", "revoke", "status", "admit", "suspend", "cosign")


def rpc(server) -> list[str]:
    return ["--rpc", f"127.0.0.1:{server.port}"]


@pytest.fixture
def document(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF credit report of Chan Tai Man: score 712\n" * 20)
    return path


def submit(capsys, server, files, document, key="hk-bureau"):
    return run(capsys, ["submit", str(document), *rpc(server), "--key", files[key], "--genesis", files["genesis"]])


def verify(capsys, server, files, document, *extra, key="hk-bank"):
    return run(capsys, ["verify", str(document), *rpc(server), "--key", files[key], "--genesis", files["genesis"],
                        *extra])


def test_submit_writes_a_private_receipt_and_verify_matches(capsys, server, files, document, tmp_path, world):
    code, out, err = submit(capsys, server, files, document)
    assert code == 0, err
    assert "COMMITTED at height 6" in out      # populate's 4 blocks and a fresh empty one (conftest), then this
    receipt_path = tmp_path / "report.pdf.receipt.json"
    receipt = json.loads(receipt_path.read_text())
    assert receipt["chain_id"] == world.chain_id and receipt["height"] == 6 and receipt["leaf_index"] == 5
    assert receipt["author"] == "hk-bureau" and receipt["kind"] == "credit-report" and receipt["jurisdiction"] == "HK"
    assert len(bytes.fromhex(receipt["commitment"])) == 32 and len(bytes.fromhex(receipt["salt"])) == 32
    assert stat.S_IMODE(receipt_path.stat().st_mode) == 0o600
    # The salt never reached the ledger: it is in no entry the node holds.
    salt = bytes.fromhex(receipt["salt"])
    assert all(salt not in entry for entry in server.api.submitted)

    proof_path = tmp_path / "report.proof"
    code, out, err = verify(capsys, server, files, document, "--receipt", str(receipt_path),
                            "--proof-out", str(proof_path))
    assert code == 0, err
    assert out.startswith("MATCH") and "height 6" in out and "Z" in out and "hk-bureau" in out
    code, out, _ = verify(capsys, server, files, document, "--salt", receipt["salt"])
    assert code == 0 and out.startswith("MATCH")

    code, out, _ = run(capsys, ["proof", "verify", str(proof_path), "--genesis", files["genesis"]])
    assert code == 0 and out.startswith("MATCH")
    code, out, _ = run(capsys, ["proof", "verify", str(proof_path), "--genesis", files["genesis"],
                                "--receipt", str(receipt_path)])
    assert code == 0 and out.startswith("MATCH")
    code, out, _ = run(capsys, ["proof", "verify", str(proof_path), "--genesis", files["genesis"],
                                "--commitment", "00" * 32])
    assert code == 2 and "check commitment" in out

    # A receipt is never overwritten by accident (its salt would be lost).
    code, _, err = submit(capsys, server, files, document)
    assert code == 2 and "already exists" in err and one_line_error(err)


@pytest.mark.parametrize("field, check", [
    ("inclusion_path", "inclusion"),
    ("certificate", "certificate"),
    ("header", "certificate"),        # a changed header no longer matches the certified hash
    ("leaf_index", "inclusion"),
    ("entry", "inclusion"),           # a changed entry is not the leaf the path leads from
    ("entry-garbage", "entry"),
])
def test_a_tampered_proof_is_refused_offline_naming_the_check(capsys, server, files, document, tmp_path, field, check):
    assert submit(capsys, server, files, document)[0] == 0
    proof_path = tmp_path / "report.proof"
    receipt = str(tmp_path / "report.pdf.receipt.json")
    assert verify(capsys, server, files, document, "--receipt", receipt, "--proof-out", str(proof_path))[0] == 0
    proof = msgpack.unpackb(proof_path.read_bytes(), raw=False)
    if field == "inclusion_path":
        proof["inclusion_path"][0] = bytes(32)
    elif field == "certificate":
        signature = proof["certificate"]["signatures"][0]
        signature["sig"] = bytes(64)
    elif field == "header":
        proof["header"]["time_ms"] += 1
    elif field == "leaf_index":
        proof["leaf_index"] += 1 if proof["leaf_index"] + 1 < proof["tree_size"] else -1
    elif field == "entry":
        proof["entry"] = proof["entry"][:-1] + bytes([proof["entry"][-1] ^ 1])
    elif field == "entry-garbage":
        proof["entry"] = b"\xc1"
    tampered = tmp_path / "tampered.proof"
    tampered.write_bytes(msgpack.packb(proof, use_bin_type=True))
    code, out, _ = run(capsys, ["proof", "verify", str(tampered), "--genesis", files["genesis"], "--receipt", receipt])
    assert code == 2 and out.startswith("INVALID PROOF") and f"check {check}" in out, out


def test_garbage_proof_file(capsys, files, tmp_path):
    garbage = tmp_path / "garbage.proof"
    garbage.write_bytes(b"\xc1 not a proof")
    code, out, _ = run(capsys, ["proof", "verify", str(garbage), "--genesis", files["genesis"]])
    assert code == 2 and "INVALID PROOF" in out
    code, out, _ = run(capsys, ["proof", "verify", str(garbage), "--genesis", files["genesis"], "--commitment", "11" * 32])
    assert code == 2 and "check format" in out


def test_no_match_and_revoked(capsys, server, files, document, tmp_path):
    other = tmp_path / "other.pdf"
    other.write_bytes(b"a report nobody committed")
    code, out, _ = verify(capsys, server, files, other, "--salt", "ab" * 32)
    assert code == 1 and out.startswith("NO MATCH")

    assert submit(capsys, server, files, document)[0] == 0
    receipt = str(tmp_path / "report.pdf.receipt.json")
    code, out, err = run(capsys, ["revoke", *rpc(server), "--key", files["hk-bureau"], "--receipt", receipt,
                                  "--reason", "report superseded"])
    assert code == 0 and out.startswith("COMMITTED"), err
    proof_path = tmp_path / "revoked.proof"
    code, out, _ = verify(capsys, server, files, document, "--receipt", receipt, "--proof-out", str(proof_path))
    assert code == 1 and out.startswith("REVOKED") and "report superseded" in out and "hk-bureau" in out
    code, out, _ = run(capsys, ["proof", "verify", str(proof_path), "--genesis", files["genesis"]])
    assert code == 1 and out.startswith("REVOKED")
    # A second revoke is refused by the ledger: a negative answer, exit 1.
    code, out, _ = run(capsys, ["revoke", *rpc(server), "--key", files["hk-bureau"], "--receipt", receipt])
    assert code == 1 and out.startswith("REFUSED")


def test_governance_revokes_any_participants_commitment(capsys, server, files, document, tmp_path):
    """The regulators of both jurisdictions revoke a bureau's commitment: one alone is refused; HK
    signs to a file, CN co-signs and submits; the proof then shows REVOKED by governance."""
    assert submit(capsys, server, files, document)[0] == 0
    receipt = str(tmp_path / "report.pdf.receipt.json")
    revoke = ["revoke", "--governance", "--receipt", receipt, "--reason", "court order 42", *rpc(server),
              "--genesis", files["genesis"]]
    code, out, err = run(capsys, [*revoke, "--key", files["cn-regulator-1"]])
    assert code == 2 and "HK needs 1 more" in err and "nothing was sent" in err and one_line_error(err), (out, err)
    # Sent anyway (by another client), the node refuses it: the ledger's own check, not only the CLI's.
    alone = tmp_path / "cn-alone.entry"
    assert run(capsys, [*revoke, "--key", files["cn-regulator-1"], "--out", str(alone)])[0] == 0
    credentials = Credentials("cn-regulator-1", load_key_file(files["cn-regulator-1"]).signing_key)
    with Client([f"127.0.0.1:{server.port}"], tls=False, credentials=credentials) as client:
        with pytest.raises(RpcError) as refused:
            client.call("submit", alone.read_bytes(), {"wait": True, "timeout_ms": 5000})
    assert refused.value.code == "bad-entry" and "governance-threshold" in refused.value.message
    code, out, _ = verify(capsys, server, files, document, "--receipt", receipt)
    assert code == 0 and out.startswith("MATCH")

    entry = tmp_path / "revoke.entry"
    code, out, err = run(capsys, [*revoke, "--key", files["hk-regulator-1"], "--out", str(entry)])
    assert code == 0 and "CN needs 1 more" in out, (out, err)
    code, out, err = run(capsys, ["cosign", str(entry), "--key", files["cn-regulator-1"], "--submit",
                                  *rpc(server), "--genesis", files["genesis"]])
    assert code == 0 and out.startswith("COMMITTED"), (out, err)
    code, out, _ = verify(capsys, server, files, document, "--receipt", receipt)
    assert code == 1 and out.startswith("REVOKED") and "by governance" in out and "court order 42" in out, out

    # Both keys at once, for a commitment nobody holds: the ledger's refusal is a negative answer.
    code, out, err = run(capsys, ["revoke", "--governance", "--commitment", "ab" * 32, *rpc(server),
                                  "--genesis", files["genesis"], "--key", files["hk-regulator-1"],
                                  "--key", files["cn-regulator-1"]])
    assert code == 1 and "REFUSED" in out and "unknown-commitment" in out, (out, err)


def test_admission_needs_both_jurisdictions(capsys, server, files, tmp_path, document):
    """One regulator alone: refused. HK signs to a file, CN co-signs and submits: admitted, and the
    new participant can submit and query."""
    admit = ["admit", "--id", "hk-newbank", "--jurisdiction", "HK", "--role", "bank",
             "--public-key", files["hk-newbank"], *rpc(server), "--genesis", files["genesis"]]
    height = server.api.ledger.height()
    code, out, err = run(capsys, [*admit, "--key", files["hk-regulator-1"]])
    assert code == 2 and "CN needs 1 more" in err and "nothing was sent" in err, (out, err)
    assert "--out ENTRY" in err and "bayledger cosign ENTRY" in err and one_line_error(err)
    code, out, err = run(capsys, [*admit, "--key", files["cn-regulator-1"]])
    assert code == 2 and "HK needs 1 more" in err and one_line_error(err)
    assert server.api.ledger.height() == height            # stopped locally: nothing reached the ledger

    code, _, err = submit(capsys, server, files, document, key="hk-newbank")
    assert code == 1 and "not a validator, regulator or active participant" in err and one_line_error(err)  # not admitted yet

    entry = tmp_path / "admit.entry"
    code, out, _ = run(capsys, [*admit, "--key", files["hk-regulator-1"], "--out", str(entry)])
    assert code == 0 and "CN needs 1 more" in out
    code, out, err = run(capsys, ["cosign", str(entry), "--key", files["cn-regulator-1"], "--submit",
                                  *rpc(server), "--genesis", files["genesis"]])
    assert code == 0 and out.startswith("COMMITTED"), (out, err)

    code, out, err = submit(capsys, server, files, document, key="hk-newbank")
    assert code == 0, err
    code, out, _ = verify(capsys, server, files, document, "--receipt", str(tmp_path / "report.pdf.receipt.json"),
                          key="hk-newbank")
    assert code == 0 and out.startswith("MATCH")


def test_suspended_participant_can_neither_submit_nor_query(capsys, server, files, document):
    code, out, err = run(capsys, ["suspend", "--id", "hk-bank", *rpc(server), "--genesis", files["genesis"],
                                  "--key", files["hk-regulator-1"], "--key", files["cn-regulator-1"]])
    assert code == 0 and out.startswith("COMMITTED"), err
    code, out, err = verify(capsys, server, files, document, "--salt", "00" * 32)
    assert code == 1 and "unauthorized" in err and one_line_error(err)   # refused: exit 1
    code, out, err = submit(capsys, server, files, document, key="hk-bank")   # cannot even authenticate
    assert code == 1 and "'hk-bank' with this key is not" in err and one_line_error(err)


def test_environment_variables_stand_in_for_options(capsys, server, files, document, monkeypatch, tmp_path):
    monkeypatch.setenv("BAYLEDGER_RPC", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("BAYLEDGER_KEY", files["hk-bureau"])
    monkeypatch.setenv("BAYLEDGER_GENESIS", files["genesis"])
    code, out, err = run(capsys, ["submit", str(document)])
    assert code == 0, err
    monkeypatch.setenv("BAYLEDGER_KEY", files["hk-bank"])
    code, out, _ = run(capsys, ["verify", str(document), "--receipt", str(tmp_path / "report.pdf.receipt.json")])
    assert code == 0 and out.startswith("MATCH")
    code, out, _ = run(capsys, ["status", "--json"])
    assert code == 0 and json.loads(out)["height"] == 6


def test_status_fails_over_to_a_live_node(capsys, server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]        # bound but not listening: connection refused
        code, out, err = run(capsys, ["status", "--rpc", f"127.0.0.1:{dead},127.0.0.1:{server.port}"])
    assert code == 0 and f"127.0.0.1:{server.port}" in out and "height: 5" in out


def test_usage_and_connection_errors_are_one_line(capsys, files, document, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
        cases = [
            (["status"], "BAYLEDGER_RPC"),
            (["status", "--rpc", "nonsense"], "HOST:PORT"),
            (["status", "--rpc", dead], "cannot connect"),
            (["submit", str(document), "--rpc", dead], "BAYLEDGER_KEY"),
            (["submit", str(document), "--rpc", dead, "--key", str(tmp_path / "missing.json")], "does not exist"),
            (["submit", str(tmp_path / "missing.pdf"), "--rpc", dead, "--key", files["hk-bureau"]], "does not exist"),
            (["submit", str(document), "--rpc", dead, "--key", files["hk-bureau"]], "cannot connect"),
            (["verify", str(document), "--salt", "00" * 32, "--rpc", dead, "--key", files["hk-bank"]], "genesis"),
            (["verify", str(document), "--salt", "zz", "--rpc", dead, "--key", files["hk-bank"],
              "--genesis", files["genesis"]], "hex"),
            (["verify", str(document), "--receipt", str(document), "--rpc", dead, "--key", files["hk-bank"],
              "--genesis", files["genesis"]], "JSON"),
            (["verify", str(document), "--salt", "00" * 32, "--rpc", dead, "--key", files["hk-bank"],
              "--genesis", str(document)], "genesis"),
            (["proof", "verify", str(tmp_path / "none.proof"), "--genesis", files["genesis"]], "does not exist"),
            (["admit", "--id", "x", "--jurisdiction", "HK", "--role", "bank", "--public-key", "00",
              "--genesis", files["genesis"], "--key", files["hk-regulator-1"], "--rpc", dead], "public-key"),
            (["suspend", "--id", "x", "--genesis", files["genesis"], "--key", files["hk-bank"], "--rpc", dead],
             "not a governance key"),
            (["cosign", str(document), "--genesis", files["genesis"], "--key", files["cn-regulator-1"]], "entry file"),
            (["revoke", "--commitment", "00" * 32, "--governance", "--key", files["hk-bank"],
              "--genesis", files["genesis"], "--rpc", dead], "not a governance key"),
            (["revoke", "--commitment", "00" * 32, "--governance", "--key", files["hk-regulator-1"], "--rpc", dead],
             "genesis"),
            (["revoke", "--commitment", "00" * 32, "--governance", "--as", "hk-bank", "--key", files["hk-regulator-1"],
              "--genesis", files["genesis"], "--rpc", dead], "--as"),
            (["revoke", "--commitment", "00" * 32, "--out", str(tmp_path / "x.entry"), "--key", files["hk-bureau"],
              "--rpc", dead], "--governance"),
            (["revoke", "--commitment", "00" * 32, "--key", files["hk-bureau"], "--key", files["hk-bank"],
              "--rpc", dead], "one --key"),
            (["revoke", "--governance", "--key", files["hk-regulator-1"], "--genesis", files["genesis"],
              "--rpc", dead], "say which commitment"),
            (["revoke", "--commitment", "00" * 32, "--key", files["hk-regulator-1"], "--genesis", files["genesis"],
              "--rpc", dead], "takes --governance"),
        ]
        for argv, reason in cases:
            code, out, err = run(capsys, argv)
            assert code == 2, (argv, out, err)
            assert one_line_error(err) and reason in err, (argv, err)


@pytest.mark.parametrize("command", CLIENT_COMMANDS + ("proof",))
def test_help_on_every_command(capsys, command):
    with pytest.raises(SystemExit) as exit_status:
        main([command, "--help"])
    assert exit_status.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bayledger" in out
    if command != "proof":
        assert "BAYLEDGER_" in out


def test_help_on_proof_verify(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["proof", "verify", "--help"])
    assert exit_status.value.code == 0 and "offline" in capsys.readouterr().out.lower()


def test_an_altered_document_does_not_match(capsys, server, files, document, tmp_path):
    assert submit(capsys, server, files, document)[0] == 0
    receipt = str(tmp_path / "report.pdf.receipt.json")
    document.write_bytes(document.read_bytes().replace(b"712", b"812"))
    code, out, err = verify(capsys, server, files, document, "--receipt", receipt)
    assert code == 1 and out.startswith("NO MATCH") and "does not hash to the receipt" in err


def test_submit_keeps_the_salt_when_the_node_goes_away(capsys, files, document, tmp_path, node):
    """The receipt (with the salt) is written before the entry is sent: a lost answer loses no salt."""
    from tests.support.rpc_helpers import ServerThread

    node.hold = True
    server = ServerThread(node)
    try:
        code, out, err = run(capsys, ["submit", str(document), *rpc(server), "--key", files["hk-bureau"],
                                      "--genesis", files["genesis"], "--wait-ms", "1"])
    finally:
        server.stop()
    assert code == 2 and "salt is kept" in err and one_line_error(err)
    receipt = json.loads((tmp_path / "report.pdf.receipt.json").read_text())
    assert receipt["status"] == "pending" and len(bytes.fromhex(receipt["salt"])) == 32


@pytest.mark.parametrize("argv", [
    ["submit"], ["verify", "x"], ["verify", "x", "--salt", "00", "--receipt", "r"], ["proof", "verify"],
    ["admit", "--id", "x"], ["status", "--timeout", "soon"], ["submit", "f", "--jurisdiction", "US"],
])
def test_usage_errors_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_status:
        main(argv)
    err = capsys.readouterr().err
    assert exit_status.value.code == 2 and one_line_error(err) and err.startswith("bayledger "), err


def test_version_names_the_installed_package(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"bayledger {importlib.metadata.version('bayledger')}"
