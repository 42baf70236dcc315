"""`bayledger keygen` and `bayledger genesis` through node.cli.main, as an operator would run them.

Checks the files they write (mode, content loadable by storage.genesis), and that
bad arguments end with exit status 2 and a one-line reason instead of a traceback.
"""

from __future__ import annotations

import stat

from node.cli import main
from node.keys import load_key_file
from storage.genesis import Genesis


def keygen(tmp_path, name):
    path = tmp_path / f"{name}.json"
    assert main(["keygen", "--out", str(path), "--id", name]) == 0
    return path


def genesis_args(tmp_path, out):
    keys = {name: keygen(tmp_path, name) for name in ("hk-1", "hk-2", "cn-1", "cn-2", "hkma", "pboc", "bank")}
    args = ["genesis", "--chain-id", "test-chain", "--out", str(out), "--time-ms", "1700000000000"]
    for index, (name, jurisdiction) in enumerate((("hk-1", "HK"), ("hk-2", "HK"), ("cn-1", "CN"), ("cn-2", "CN"))):
        args += ["--validator", f"{name}:{jurisdiction}:{keys[name]}:127.0.0.1:{7000 + index}:127.0.0.1:{8000 + index}"]
    args += ["--governance", f"HK:{keys['hkma']}", "--governance", f"CN:pboc-1:{keys['pboc']}",
             "--threshold", "HK:1", "--threshold", "CN:1",
             "--participant", f"bank-hk:HK:credit-provider:{keys['bank']}"]
    return keys, args


def test_keygen_writes_owner_only_key_and_prints_public_key(tmp_path, capsys):
    path = keygen(tmp_path, "hk-1")
    printed = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).public_key.hex() == printed
    assert main(["keygen", "--out", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_genesis_from_key_files_loads_back(tmp_path):
    out = tmp_path / "genesis.json"
    keys, args = genesis_args(tmp_path, out)
    assert main(args) == 0
    genesis = Genesis.load(out)
    assert [v.id for v in genesis.validator_set.validators] == ["hk-1", "hk-2", "cn-1", "cn-2"]
    assert genesis.validator_set.get("cn-1").public_key == load_key_file(keys["cn-1"]).public_key
    assert genesis.validator_addresses["hk-2"] == {"p2p": "127.0.0.1:7001", "rpc": "127.0.0.1:8001"}
    assert [k.id for k in genesis.governance.keys["HK"]] == ["hkma"]
    assert [k.id for k in genesis.governance.keys["CN"]] == ["pboc-1"]
    assert genesis.participants[0].id == "bank-hk" and genesis.genesis_time_ms == 1700000000000
    assert genesis.epoch_margin_heights == 1024 and "epoch_margin_heights" not in out.read_text()
    # Existing file: refused unless --force.
    assert main(args) == 2
    assert main(args + ["--force", "--epoch-margin-heights", "40"]) == 0
    assert Genesis.load(out).epoch_margin_heights == 40


def test_genesis_refuses_bad_input_with_one_line(tmp_path, capsys):
    out = tmp_path / "genesis.json"
    _, args = genesis_args(tmp_path, out)
    cases = [
        (["--validator", "x:HK:nokey:127.0.0.1:1:127.0.0.1:2"], "neither 64 hex"),
        (["--validator", "x:HK"], "expected ID:JURISDICTION:KEY"),
        (["--threshold", "XX:1"], "no --governance key for XX"),
        (["--threshold", "HK:5"], "threshold"),
        (["--min-signers-per-jurisdiction", "2"], "needs at least"),
        (["--epoch-margin-heights", "0"], "epoch_margin_heights must be an integer in 1..1000000"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert main(args + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()
