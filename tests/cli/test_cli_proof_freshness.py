"""Issue 15, freshness: `bayledger proof verify` and `bayledger verify` refuse a match whose status
section is older than --max-status-age (STALE, exit 1), accept a fresh one, refuse a bad duration as a
usage error; `verify` given several nodes asks two and refuses when they disagree on revocation.

The two-node checks run run_verify for real with the node answers supplied in-process
(`_ask_for_proof` replaced): the lead adds a real-process two-node test once TLS and authentication land.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.proof_cases import MINUTE_MS, build_proofs
from tests.support.storage_helpers import make_world

import node.cli.participant as cli_client  # noqa: E402
from node.cli import main  # noqa: E402
from node.client import ConnectionFailed, seal_document  # noqa: E402
from tests.support.cli import run

BAYLEDGER = Path(sys.executable).parent / "bayledger"
STALE_LINE = re.compile(r"STALE: status at height (\d+) is (\d+) minutes old")
SALT = bytes(range(32))


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def genesis_file(tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text(make_world().genesis.to_json())
    return str(path)


def proofs_aged(tmp_path, age_ms: int):
    """Proofs (tests/support/proof_cases.py) whose status header is `age_ms` old now."""
    directory = tmp_path / f"aged-{age_ms}"
    directory.mkdir()
    return build_proofs(make_world(), directory, now_ms() - age_ms)


def proof_verify(capsys, tmp_path, genesis_file, proof: bytes, *extra):
    path = tmp_path / "the.proof"
    path.write_bytes(proof)
    return run(capsys, ["proof", "verify", str(path), "--genesis", genesis_file, *extra])


def test_an_old_status_is_stale_by_default_and_a_fresh_one_passes(capsys, tmp_path, genesis_file):
    old = proofs_aged(tmp_path, 20 * MINUTE_MS)
    code, out, err = proof_verify(capsys, tmp_path, genesis_file, old.match)
    assert code == 1, (out, err)
    assert out.strip() == "STALE: status at height 2 is 20 minutes old"     # default 10m
    assert "--max-status-age" in err
    code, out, _ = proof_verify(capsys, tmp_path, genesis_file, old.match, "--max-status-age", "30m")
    assert code == 0 and out.startswith("MATCH:")
    fresh = proofs_aged(tmp_path, 5 * MINUTE_MS)
    code, out, _ = proof_verify(capsys, tmp_path, genesis_file, fresh.match)
    assert code == 0 and out.startswith("MATCH:")
    code, out, _ = proof_verify(capsys, tmp_path, genesis_file, fresh.match, "--max-status-age", "90s")
    assert code == 1 and STALE_LINE.fullmatch(out.strip()).groups() == ("2", "5")


@pytest.mark.parametrize("duration, stale", [("24h", True), ("7d", False), ("2879m", True), ("2881m", False),
                                             ("172900s", False)])
def test_each_unit_bounds_the_age(capsys, tmp_path, genesis_file, duration, stale):
    two_days = proofs_aged(tmp_path, 2 * 24 * 60 * MINUTE_MS)
    code, out, _ = proof_verify(capsys, tmp_path, genesis_file, two_days.match, "--max-status-age", duration)
    if stale:
        assert code == 1 and STALE_LINE.fullmatch(out.strip()).groups() == ("2", str(2 * 24 * 60)), out
    else:
        assert code == 0 and out.startswith("MATCH:"), out


def test_a_revocation_is_final_whatever_the_status_age(capsys, tmp_path, genesis_file):
    old = proofs_aged(tmp_path, 3 * 24 * 60 * MINUTE_MS)
    code, out, _ = proof_verify(capsys, tmp_path, genesis_file, old.revoked, "--max-status-age", "1m")
    assert code == 1 and out.startswith("REVOKED:")


@pytest.mark.parametrize("argv_tail", [["--max-status-age=-5m"], ["--max-status-age", "-5m"],
                                       ["--max-status-age", "0"], ["--max-status-age", "0m"],
                                       ["--max-status-age", "abc"], ["--max-status-age", "10x"],
                                       ["--max-status-age", "10M"], ["--max-status-age", "1.5h"],
                                       ["--max-status-age", "10"], ["--max-status-age", ""],
                                       ["--max-status-age", "366d"], ["--max-status-age", "9" * 40 + "d"],
                                       ["--max-status-age", "١٠m"]])   # Arabic-Indic digits: not ASCII
def test_a_bad_duration_is_a_usage_error(capsys, tmp_path, genesis_file, argv_tail):
    fresh = proofs_aged(tmp_path, 0)
    for command in (["proof", "verify", str(tmp_path / "x.proof"), "--genesis", genesis_file],
                    ["verify", str(tmp_path / "doc"), "--salt", SALT.hex(), "--genesis", genesis_file,
                     "--rpc", "127.0.0.1:1"]):
        (tmp_path / "x.proof").write_bytes(fresh.match)
        with pytest.raises(SystemExit) as exit_:
            main(command + argv_tail)
        captured = capsys.readouterr()
        assert exit_.value.code == 2 and captured.out == ""
        assert "--max-status-age" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
        assert "Traceback" not in captured.err


def test_the_installed_program_prints_stale_and_exits_1(tmp_path, genesis_file):
    old = proofs_aged(tmp_path, 15 * MINUTE_MS)
    path = tmp_path / "old.proof"
    path.write_bytes(old.match)
    done = subprocess.run([str(BAYLEDGER), "proof", "verify", str(path), "--genesis", genesis_file,
                           "--max-status-age", "10m"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout.strip() == "STALE: status at height 2 is 15 minutes old", done
    done = subprocess.run([str(BAYLEDGER), "proof", "verify", str(path), "--genesis", genesis_file,
                           "--max-status-age", "-5m"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--max-status-age" in done.stderr, done
    done = subprocess.run([str(BAYLEDGER), "proof", "verify", "--help"], capture_output=True, text=True, timeout=60)
    assert "--max-status-age DURATION" in done.stdout and "default 10m" in done.stdout


# -- bayledger verify: one node, several nodes ----------------------------------------------------

@pytest.fixture
def verify_setup(tmp_path, genesis_file, monkeypatch):
    """A document and `states(head_time_ms)`: its commitment's proof from a node without it, with it,
    and after its revoke; `serving[endpoint]` is what `_ask_for_proof` answers for that node."""
    from tests.support.storage_helpers import Author, next_block
    from storage.ledger import Ledger
    from node.keys import KeyPair, write_key_file

    for name in ("BAYLEDGER_RPC", "BAYLEDGER_KEY", "BAYLEDGER_GENESIS", "BAYLEDGER_CA", "BAYLEDGER_PLAINTEXT"):
        monkeypatch.delenv(name, raising=False)
    world = make_world()
    document = tmp_path / "report.pdf"
    document.write_bytes(b"credit report of Chan Tai Man: score 712\n")
    commitment, _ = seal_document(document.read_bytes(), SALT)
    key_path = tmp_path / "hk-bank.json"
    write_key_file(key_path, KeyPair(signing_key=world.participant_keys["hk-bank"], id="hk-bank"))

    def states(head_time_ms: int) -> dict[str, bytes | None]:
        store = Ledger.open(tmp_path / f"ledger-{head_time_ms}", world.genesis)
        try:
            author = Author(world, "hk-bureau")
            before = store.match_proof(commitment)
            store.apply_block(next_block(world, store, [author.commit(commitment)], time_ms=head_time_ms - 1000))
            kept = store.match_proof(commitment)
            store.apply_block(next_block(world, store, [author.revoke(commitment)], time_ms=head_time_ms))
            return {"none": before, "kept": kept, "revoked": store.match_proof(commitment)}
        finally:
            store.close()

    serving: dict[str, bytes | None | Exception] = {}
    asked: list[str] = []

    def ask(client, key, participant, genesis, commitment_):
        endpoint = str(client.endpoint)
        asked.append(endpoint)
        assert len(client.endpoints) == 1, "each node is asked on a client of its own"
        assert participant == "hk-bank" and commitment_ == commitment
        answer = serving[endpoint]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(cli_client, "_ask_for_proof", ask)

    def verify(capsys, rpc: str, *extra):
        return run(capsys, ["verify", str(document), "--salt", SALT.hex(), "--key", str(key_path),
                            "--genesis", genesis_file, "--rpc", rpc, "--plaintext", *extra])

    return states, serving, asked, verify


def test_verify_prints_stale_for_an_old_status_and_match_for_a_fresh_one(capsys, verify_setup):
    states, serving, _, verify = verify_setup
    serving["127.0.0.1:7001"] = states(now_ms() - 20 * MINUTE_MS)["kept"]
    code, out, _ = verify(capsys, "127.0.0.1:7001", "--max-status-age", "10m")
    assert code == 1 and out.strip() == "STALE: status at height 1 is 20 minutes old", out
    serving["127.0.0.1:7001"] = states(now_ms() - MINUTE_MS)["kept"]
    code, out, _ = verify(capsys, "127.0.0.1:7001", "--max-status-age", "10m")
    assert code == 0 and out.startswith("MATCH:"), out


def test_verify_refuses_two_nodes_that_disagree_on_revocation(capsys, verify_setup, tmp_path):
    states, serving, asked, verify = verify_setup
    state = states(now_ms())
    serving.update({"127.0.0.1:7001": state["revoked"], "127.0.0.1:7002": state["kept"],
                    "127.0.0.1:7003": state["revoked"]})
    code, out, _ = verify(capsys, "127.0.0.1:7001,127.0.0.1:7002")
    assert code == 1 and out.startswith("DISAGREE:"), out
    assert "127.0.0.1:7001 proves the commitment revoked at height 2" in out
    assert "127.0.0.1:7002 proves it not revoked as of height 1" in out
    assert asked == ["127.0.0.1:7001", "127.0.0.1:7002"]
    # Either way round; and two that agree give the verdict (the newest status), and save that proof.
    code, out, _ = verify(capsys, "127.0.0.1:7002,127.0.0.1:7001")
    assert code == 1 and out.startswith("DISAGREE:")
    saved = tmp_path / "saved.proof"
    code, out, _ = verify(capsys, "127.0.0.1:7001,127.0.0.1:7003", "--proof-out", str(saved))
    assert code == 1 and out.startswith("REVOKED:") and saved.read_bytes() == state["revoked"]


def test_verify_with_two_nodes_needs_two_answers(capsys, verify_setup):
    states, serving, asked, verify = verify_setup
    state = states(now_ms())
    serving.update({"127.0.0.1:7001": ConnectionFailed("127.0.0.1:7001: refused"), "127.0.0.1:7002": state["kept"],
                    "127.0.0.1:7003": state["kept"]})
    # A node that is down is skipped for the next: still two answers.
    code, out, _ = verify(capsys, "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003")
    assert code == 0 and out.startswith("MATCH:") and asked == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    # Only one answer: no cross-check, an error (exit 2), not a match.
    code, out, err = verify(capsys, "127.0.0.1:7001,127.0.0.1:7002")
    assert code == 2 and out == "" and "only 1 of 2 nodes answered" in err and "refused" in err
    # The same node twice is one node.
    asked.clear()
    code, out, _ = verify(capsys, "127.0.0.1:7002, 127.0.0.1:7002")
    assert code == 0 and asked == ["127.0.0.1:7002"]
    code, out, err = verify(capsys, " , ")
    assert code == 2 and "no node given" in err


def test_verify_refuses_a_node_without_the_record_another_proves(capsys, verify_setup):
    states, serving, _, verify = verify_setup
    state = states(now_ms())
    serving.update({"127.0.0.1:7001": state["none"], "127.0.0.1:7002": state["kept"], "127.0.0.1:7003": None})
    code, out, _ = verify(capsys, "127.0.0.1:7001,127.0.0.1:7002")
    assert code == 1 and out.startswith("DISAGREE: 127.0.0.1:7001 has no record"), out
    code, out, _ = verify(capsys, "127.0.0.1:7001,127.0.0.1:7003")
    assert code == 1 and out.startswith("NO MATCH:"), out


def test_verify_names_the_node_whose_proof_is_invalid(capsys, verify_setup):
    states, serving, _, verify = verify_setup
    state = states(now_ms())
    serving.update({"127.0.0.1:7001": state["kept"], "127.0.0.1:7002": state["kept"][:-1] + b"\x00"})
    code, out, err = verify(capsys, "127.0.0.1:7001,127.0.0.1:7002")
    assert code == 2 and out.startswith("INVALID PROOF: check ") and "127.0.0.1:7002" in err, (out, err)
