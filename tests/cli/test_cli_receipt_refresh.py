"""`bayledger receipt refresh`: a receipt left `pending` (submit stopped waiting) learns its commit."""

from __future__ import annotations

import json
import os

from node.cli import main
from tests.support.cli import run


def test_a_pending_receipt_is_completed_from_a_verified_proof(capsys, server, files, tmp_path):
    document = tmp_path / "report.txt"
    document.write_text("credit report of Chan Tai Man, score 712\n")
    node = ["--rpc", f"127.0.0.1:{server.port}", "--genesis", files["genesis"]]
    code, out, err = run(capsys, ["submit", str(document), *node, "--key", files["hk-bureau"]])
    assert code == 0, err
    receipt_path = tmp_path / "report.txt.receipt.json"
    committed = json.loads(receipt_path.read_text())
    # As submit leaves it when it stops waiting before the commit:
    receipt_path.write_text(json.dumps({**committed, "status": "pending", "height": None, "leaf_index": None}))
    os.chmod(receipt_path, 0o600)

    refresh = ["receipt", "refresh", str(receipt_path), *node, "--key", files["hk-bureau"]]
    code, out, err = run(capsys, refresh)
    assert code == 0 and out.startswith(f"COMMITTED at height {committed['height']}, leaf {committed['leaf_index']}"), (
        out, err)
    assert json.loads(receipt_path.read_text()) == committed          # the salt and the rest untouched
    assert receipt_path.stat().st_mode & 0o777 == 0o600
    code, out, _ = run(capsys, refresh)
    assert code == 0 and "already in" in out


def test_a_commitment_the_ledger_does_not_hold_stays_pending(capsys, server, files, tmp_path):
    receipt_path = tmp_path / "lost.receipt.json"
    pending = {"commitment": "ab" * 32, "salt": "cd" * 32, "status": "pending", "height": None, "leaf_index": None}
    receipt_path.write_text(json.dumps(pending))
    code, out, err = run(capsys, ["receipt", "refresh", str(receipt_path), "--rpc", f"127.0.0.1:{server.port}",
                                  "--genesis", files["genesis"], "--key", files["hk-bank"]])
    assert code == 1 and out.startswith("PENDING: commitment " + "ab" * 32 + " is not on the ledger"), (out, err)
    assert "submit the document again" in out
    assert json.loads(receipt_path.read_text()) == pending


def test_a_receipt_of_another_chain_is_refused(capsys, files, tmp_path):
    receipt_path = tmp_path / "other.receipt.json"
    receipt_path.write_text(json.dumps({"commitment": "ab" * 32, "salt": "cd" * 32, "status": "pending",
                                        "chain_id": "another-chain"}))
    code, out, err = run(capsys, ["receipt", "refresh", str(receipt_path), "--rpc", "127.0.0.1:1",
                                  "--genesis", files["genesis"], "--key", files["hk-bank"]])
    assert code == 2 and "another-chain" in err and len(err.strip().splitlines()) == 1, err


def test_receipt_without_a_command_shows_its_usage(capsys):
    assert main(["receipt"]) == 2
    assert "refresh" in capsys.readouterr().err


def test_ctrl_c_while_submit_waits_keeps_the_receipt_and_names_the_refresh(capsys, server, files, tmp_path,
                                                                          monkeypatch):
    from node.cli import participant

    def interrupted(client, entry, wait_ms):
        raise KeyboardInterrupt      # what Ctrl-C raises while the CLI waits for the node's answer
    monkeypatch.setattr(participant, "_submit_entry", interrupted)
    document = tmp_path / "report.txt"
    document.write_text("credit report\n")
    code, out, err = run(capsys, ["submit", str(document), "--rpc", f"127.0.0.1:{server.port}",
                                  "--genesis", files["genesis"], "--key", files["hk-bureau"]])
    receipt_path = tmp_path / "report.txt.receipt.json"
    assert code == 130 and len(err.strip().splitlines()) == 1, err
    assert "interrupted; the entry may still commit" in err and f"bayledger receipt refresh {receipt_path}" in err
    assert json.loads(receipt_path.read_text())["status"] == "pending"
