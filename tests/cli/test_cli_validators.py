"""`bayledger validator add|remove|rotate-key` and `bayledger validators` (issue 17) through node.cli.main,
against node.rpc over a real Ledger (tests/cli/conftest.py): argument errors, the entry they build
(decoded with storage.entries.validate_entry), the cosign flow, the local check against the node's set,
and the `validators` and `status` output."""

from __future__ import annotations

import json

import pytest

from consensus.epochs import AddValidator, RemoveValidator, RotateValidatorKey
from consensus.validators import Validator
from node.keys import KeyPair, write_key_file
from storage.entries import EntryError, decode_entry, validate_entry
from tests.support.cli import one_line_error, run

NEW_KEY = bytes(range(32))
ADD = ["validator", "add", "hk-3", "--public-key", NEW_KEY.hex(), "--jurisdiction", "HK",
       "--p2p", "10.0.0.7:26601", "--rpc", "10.0.0.7:26611"]


def run_or_usage(capsys, argv: list[str]) -> tuple[int, str, str]:
    """run(), with argparse's usage errors (SystemExit) as their exit status."""
    try:
        return run(capsys, argv)
    except SystemExit as exited:
        captured = capsys.readouterr()
        return int(exited.code), captured.out, captured.err


def node(server) -> list[str]:
    return ["--node", f"127.0.0.1:{server.port}"]


def regulators(files, *which: str) -> list[str]:
    return [arg for key_id in which for arg in ("--key", files[key_id])] + ["--genesis", files["genesis"]]


BOTH = ("hk-regulator-1", "cn-regulator-1")


# -- help -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["validator", "add"], ["validator", "remove"], ["validator", "rotate-key"]])
def test_each_change_command_explains_itself(capsys, command):
    with pytest.raises(SystemExit) as exited:
        run(capsys, [*command, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    for needed in ("--key", "--genesis", "--epoch", "--out", "--wait-ms", "--node", "example", "bayledger cosign",
                   "margin_heights", "BAYLEDGER_RPC"):
        assert needed in out, (command, needed)


def test_validator_without_a_command_shows_its_commands(capsys):
    code, out, err = run_or_usage(capsys, ["validator"])
    assert code == 2 and "add" in err and "rotate-key" in err and "remove" in err


def test_validators_help_names_what_it_shows(capsys):
    with pytest.raises(SystemExit):
        run(capsys, ["validators", "--help"])
    out = capsys.readouterr().out
    assert "history" in out and "--json" in out and "start height" in out


# -- argument errors: one line, exit 2, nothing sent ------------------------------------------------

def _replace(argv: list[str], option: str, value: str) -> list[str]:
    index = argv.index(option)
    return argv[:index + 1] + [value] + argv[index + 2:]


@pytest.mark.parametrize("argv, expected", [
    (_replace(ADD, "--public-key", "zz" * 32), "is not hex"),
    (_replace(ADD, "--public-key", "ab" * 31), "must be 32 bytes (64 hex characters), got 31 bytes"),
    (_replace(ADD, "--jurisdiction", "US"), "unknown jurisdiction 'US': give HK or CN"),
    (_replace(ADD, "--p2p", "10.0.0.7"), "no port"),
    (_replace(ADD, "--p2p", "10.0.0.7:70000"), "above 65535"),
    (_replace(ADD, "--rpc", "[::1]:26611"), "IPv6"),
    (_replace(ADD, "--rpc", "10.0.0.7:0"), "port 0"),
    (ADD[:2] + ["_bad"] + ADD[3:], "validator id '_bad'"),
    (ADD[:2] + ["x" * 65] + ADD[3:], "at most 64 bytes"),
    (ADD + ["--epoch", "minus-one"], "not an epoch number"),
    (["validator", "rotate-key", "hk-1", "--public-key-file", "/nonexistent/key.json"], "--public-key-file"),
    (["validator", "rotate-key", "hk-1"], "--public-key"),
    (["validator", "remove"], "ID"),
])
def test_argument_errors_are_one_line(capsys, files, argv, expected):
    code, out, err = run_or_usage(capsys, [*argv, *regulators(files, *BOTH), "--node", "127.0.0.1:1"])
    assert code == 2 and expected in err and one_line_error(err), err
    assert out == ""


def test_keys_and_genesis_are_checked_before_anything_is_sent(capsys, files, server):
    """A key that is not a regulator key of now (asked of the node: they change with the epochs)."""
    code, _, err = run(capsys, [*ADD, "--key", files["hk-bank"], "--genesis", files["genesis"],
                                "--node", f"127.0.0.1:{server.port}"])
    assert code == 2 and "not a governance key" in err and one_line_error(err)
    assert server.api.submitted == []
    code, _, err = run(capsys, [*ADD, "--key", files["hk-regulator-1"], "--node", "127.0.0.1:1"])
    assert code == 2 and "no genesis file" in err and one_line_error(err)
    code, _, err = run(capsys, [*ADD, *regulators(files, *BOTH)])
    assert code == 2 and "no node given" in err and "--node" in err and one_line_error(err)
    code, _, err = run(capsys, [*ADD, *regulators(files, *BOTH), "--node", "nonsense"])
    assert code == 2 and "HOST:PORT" in err and one_line_error(err)


# -- the entry --------------------------------------------------------------------------------------

def test_add_with_out_and_epoch_writes_the_entry_offline(capsys, files, world, tmp_path):
    """--out with --epoch: no node is asked; the entry is the add, signed by HK, for CN to co-sign."""
    entry_path = tmp_path / "hk-3.entry"
    code, out, err = run(capsys, [*ADD, "--epoch", "0", "--out", str(entry_path),
                                  *regulators(files, "hk-regulator-1")])
    assert code == 0 and "still to co-sign: CN needs 1 more" in out, (out, err)
    data = entry_path.read_bytes()
    with pytest.raises(EntryError) as refused:
        validate_entry(data, world.genesis)
    assert refused.value.reason == "governance-threshold"
    entry = decode_entry(data)
    assert entry.type == "reconfigure" and entry.author == "governance" and entry.chain_id == world.chain_id
    reconfiguration = entry.fields["changes"]
    assert reconfiguration.epoch == 0
    assert reconfiguration.changes == (AddValidator(Validator("hk-3", NEW_KEY, "HK")),)
    assert reconfiguration.addresses == {"hk-3": {"p2p": "10.0.0.7:26601", "rpc": "10.0.0.7:26611"}}
    assert [by for by, _ in entry.signatures] == ["hk-regulator-1"]

    # The CN regulator co-signs the file: now it passes the full stateless check.
    code, out, err = run(capsys, ["cosign", str(entry_path), "--key", files["cn-regulator-1"],
                                  "--genesis", files["genesis"]])
    assert code == 0 and "reconfigure entry" in out and "fully signed" in out, (out, err)
    cosigned = validate_entry(entry_path.read_bytes(), world.genesis)
    assert cosigned.fields["changes"].changes == reconfiguration.changes
    assert [by for by, _ in cosigned.signatures] == ["cn-regulator-1", "hk-regulator-1"]


def test_remove_and_rotate_key_build_their_changes(capsys, files, world, tmp_path):
    key_file = tmp_path / "hk-1-new.json"
    new = KeyPair.generate("hk-1")
    write_key_file(key_file, new)
    cases = [(["validator", "remove", "cn-2"], RemoveValidator("cn-2")),
             (["validator", "rotate-key", "hk-1", "--public-key-file", str(key_file)],
              RotateValidatorKey("hk-1", new.public_key)),
             (["validator", "rotate-key", "hk-2", "--public-key", NEW_KEY.hex().upper()],
              RotateValidatorKey("hk-2", NEW_KEY))]
    for argv, change in cases:
        entry_path = tmp_path / "entry"
        code, out, err = run(capsys, [*argv, "--epoch", "3", "--out", str(entry_path), *regulators(files, *BOTH)])
        assert code == 0 and "fully signed" in out, (out, err)
        entry = validate_entry(entry_path.read_bytes(), world.genesis)
        assert entry.fields["changes"].epoch == 3 and entry.fields["changes"].changes == (change,)


def test_out_without_epoch_asks_the_node_for_the_latest(capsys, server, files, world, tmp_path):
    entry_path = tmp_path / "cn-2.entry"
    code, out, err = run(capsys, ["validator", "remove", "cn-2", "--out", str(entry_path), *node(server),
                                  *regulators(files, "cn-regulator-1")])
    assert code == 0 and "still to co-sign: HK needs 1 more" in out, (out, err)
    assert decode_entry(entry_path.read_bytes()).fields["changes"].epoch == 0
    assert server.api.submitted == []


def test_submitting_without_every_jurisdiction_sends_nothing(capsys, server, files):
    code, out, err = run(capsys, [*ADD, *node(server), *regulators(files, "hk-regulator-1")])
    assert code == 2 and "lacks signatures" in err and "--out ENTRY" in err and one_line_error(err)
    assert server.api.submitted == []


# -- the local check against the node's set ---------------------------------------------------------

@pytest.mark.parametrize("argv, reason", [
    (["validator", "remove", "hk-9"], "reconfigure-unknown-validator"),
    (["validator", "rotate-key", "hk-1", "--public-key", "KEY OF cn-1"], "reconfigure-duplicate-key"),
    (_replace(ADD, "--public-key", "KEY OF hk-2"), "reconfigure-duplicate-key"),
    (ADD[:2] + ["cn-1"] + ADD[3:], "reconfigure-duplicate-id"),
    (ADD + ["--epoch", "1"], "reconfigure-wrong-epoch"),     # submitting: the chain's latest is 0
])
def test_what_the_ledger_would_refuse_is_refused_before_sending(capsys, server, files, world, argv, reason):
    argv = [bytes(world.validator_keys[a[len("KEY OF "):]].verify_key).hex() if a.startswith("KEY OF ") else a
            for a in argv]
    code, out, err = run(capsys, [*argv, *node(server), *regulators(files, *BOTH)])
    assert code == 1 and err.startswith(f"bayledger validator: {reason}: ") and "nothing was sent" in err, err
    assert one_line_error(err) and server.api.submitted == []


# -- validators and status ----------------------------------------------------------------------------

def test_validators_shows_the_current_set_and_the_history(capsys, server, files, world):
    code, out, err = run(capsys, ["validators", *node(server), "--key", files["hk-regulator-1"]])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("current epoch 0 from height 1: 4 validators, at least 1 signer(s) per jurisdiction")
    hk1 = bytes(world.validator_keys["hk-1"].verify_key).hex()
    assert any(line.split()[:3] == ["hk-1", "HK", hk1] and "p2p 127.0.0.1:26600" in line
               and "rpc 127.0.0.1:26700" in line for line in lines), out
    history = lines[lines.index(next(line for line in lines if line.startswith("history"))) + 1:]
    assert history[0].split() == ["epoch", "start_height", "scheduled_at", "size", "min_signers_per_jurisdiction"]
    assert history[1].split() == ["0", "1", "-", "4", "1"]


def test_validators_json_is_the_nodes_answer_with_hex_keys(capsys, server, files, world):
    code, out, _ = run(capsys, ["validators", "--json", "--rpc", f"127.0.0.1:{server.port}",
                                "--key", files["cn-regulator-1"]])
    answer = json.loads(out)
    assert code == 0 and answer["epoch"] == answer["current_epoch"] == 0 and answer["margin_heights"] == 1024
    [epoch] = answer["epochs"]
    assert epoch["start_height"] == 1 and epoch["scheduled_at"] == 0 and epoch["min_signers_per_jurisdiction"] == 1
    assert epoch["validators"][0] == {"id": "hk-1", "jurisdiction": "HK", "p2p": "127.0.0.1:26600",
                                      "rpc": "127.0.0.1:26700",
                                      "public_key": bytes(world.validator_keys["hk-1"].verify_key).hex()}


def test_validators_needs_a_reader(capsys, server, files):
    code, _, err = run(capsys, ["validators", *node(server)])
    assert code == 1 and "unauthorized" in err and one_line_error(err)
    code, _, err = run(capsys, ["validators", *node(server), "--key", files["hk-bank"]])
    assert code == 1 and "unauthorized" in err and one_line_error(err)


def test_status_shows_the_epoch(capsys, server, files):
    code, out, err = run(capsys, ["status", "--rpc", f"127.0.0.1:{server.port}", "--key", files["hk-regulator-1"]])
    assert code == 0 and "  epoch: 0" in out.splitlines(), (out, err)
    code, out, _ = run(capsys, ["status", "--json", "--rpc", f"127.0.0.1:{server.port}",
                                "--key", files["hk-regulator-1"]])
    assert code == 0 and json.loads(out)["epoch"] == 0
