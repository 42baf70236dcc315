"""The CLI's exit statuses, one rule for every command (docs/OPERATIONS.md, "Exit status"):
0 verified or done, 1 a definite no (a negative verdict, or a node's refusal), 2 usage or
connection error (the answer is unknown), 130 interrupted (tests/cli/test_cli_endings.py)."""

from __future__ import annotations

import pytest

from node import wire
from node.cli import main
from node.cli.participant import REFUSAL_CODES, refusal_or_error
from node.client import RpcError
from node.keys import KeyPair, write_key_file
from tests.support.cli import one_line_error

ERROR_CODES = {value for name, value in vars(wire).items() if name.startswith("ERROR_")}


@pytest.mark.parametrize("argv, named", [
    (["submit", "f", "--wait-ms", "-5"], "--wait-ms"),
    (["submit", "f", "--wait-ms", "0"], "--wait-ms"),
    (["submit", "f", "--wait-ms", "600001"], "--wait-ms"),
    (["submit", "f", "--wait-ms", "1.5"], "--wait-ms"),
    (["revoke", "--commitment", "00" * 32, "--wait-ms", "-1"], "--wait-ms"),
    (["status", "--timeout", "0"], "--timeout"),
    (["status", "--timeout", "-1"], "--timeout"),
    (["status", "--timeout", "nan"], "--timeout"),
    (["status", "--timeout", "inf"], "--timeout"),
    (["verify", "f", "--salt", "00" * 32, "--timeout", "3601"], "--timeout"),
    (["queries", "--limit", "-5"], "--limit"),
    (["queries", "--limit", "0"], "--limit"),
    (["submit", "f", "--expires-ms", "0"], "--expires-ms"),
    (["submit", "f", "--expires-ms", str(2**63)], "--expires-ms"),
])
def test_nonsensical_numbers_are_refused_naming_the_flag_and_the_range(capsys, argv, named):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and one_line_error(err), err
    assert named in err and ("out of range" in err or "not a" in err), err


@pytest.mark.parametrize("argv", [["status", "--timeout", "0.5", "--rpc", "127.0.0.1:1"],
                                  ["status", "--timeout", "3600", "--rpc", "127.0.0.1:1"]])
def test_the_edges_of_the_ranges_are_accepted(capsys, argv):
    assert main(argv) == 2                      # accepted; then nobody listens on port 1: a connection error
    assert "see bayledger" not in capsys.readouterr().err


def test_every_error_code_is_a_refusal_or_an_unknown_answer():
    assert REFUSAL_CODES < ERROR_CODES
    for code in sorted(ERROR_CODES):
        error = refusal_or_error(RpcError(code, "because"), "node answered")
        assert error.code == (1 if code in REFUSAL_CODES else 2), code
        assert str(error) == f"node answered {code}: because"
    for unknown in ("busy", "timeout", "shutting-down", "internal", "mempool-full"):
        assert unknown not in REFUSAL_CODES


def test_a_validator_key_cannot_submit_and_the_message_says_whose_key_can(capsys, server, world, tmp_path, files):
    name = next(iter(world.validator_keys))
    key_file = tmp_path / "validator.json"
    write_key_file(key_file, KeyPair(signing_key=world.validator_keys[name], id=name))
    document = tmp_path / "report.txt"
    document.write_text("credit report\n")
    code = main(["submit", str(document), "--rpc", f"127.0.0.1:{server.port}", "--key", str(key_file),
                 "--genesis", files["genesis"]])
    err = capsys.readouterr().err
    assert code == 1 and one_line_error(err), err
    assert f"cannot submit as {name!r}" in err and "--key" in err and "admitted participant" in err, err
