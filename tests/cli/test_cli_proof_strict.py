"""Issue 15 through the CLI: `bayledger proof verify` refuses every malleated proof of
tests/support/proof_cases.py, printing the check and its reason, exit 2 (INVALID PROOF), in-process
through node.cli.main and, for a few, as the installed `bayledger` program."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.proof_cases import CASES, build_proofs, commitment_of
from tests.support.storage_helpers import make_world

from tests.support.cli import run

BAYLEDGER = Path(sys.executable).parent / "bayledger"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    directory = tmp_path_factory.mktemp("strict")
    world = make_world()
    made = build_proofs(world, directory, int(time.time() * 1000))   # fresh: only the malleation is wrong
    (directory / "genesis.json").write_text(world.genesis.to_json())
    made.genesis_path = str(directory / "genesis.json")
    made.directory = directory
    return made


def _proof_file(made, name: str, data: bytes) -> str:
    path = made.directory / f"{name}.proof"
    path.write_bytes(data)
    return str(path)


def test_the_genuine_proofs_pass(made, capsys):
    code, out, _ = run(capsys, ["proof", "verify", _proof_file(made, "match", made.match), "--genesis", made.genesis_path])
    assert code == 0 and out.startswith("MATCH:"), out
    code, out, _ = run(capsys, ["proof", "verify", _proof_file(made, "revoked", made.revoked),
                                "--genesis", made.genesis_path])
    assert code == 1 and out.startswith("REVOKED:"), out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_proof_verify_refuses_each_malleated_proof(made, capsys, case):
    path = _proof_file(made, case.name, case.make(made))
    code, out, err = run(capsys, ["proof", "verify", path, "--genesis", made.genesis_path,
                                  "--commitment", commitment_of(case).hex()])
    assert code == 2, (out, err)
    assert out.startswith(f"INVALID PROOF: check {case.check} failed: ") and case.says in out, out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out + err


@pytest.mark.parametrize("name", ["keys-reordered", "certificate-extra-key", "signatures-unsorted",
                                  "kind-not-in-genesis", "header-height-0"])
def test_the_installed_program_refuses_them_too(made, name):
    case = next(c for c in CASES if c.name == name)
    path = _proof_file(made, f"sub-{name}", case.make(made))
    done = subprocess.run([str(BAYLEDGER), "proof", "verify", path, "--genesis", made.genesis_path,
                           "--commitment", commitment_of(case).hex()], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert done.stdout.startswith(f"INVALID PROOF: check {case.check} failed: ") and case.says in done.stdout, done
