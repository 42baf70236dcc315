"""Genesis: round trip, hash, and a clear error naming the field for every kind of bad input."""

from __future__ import annotations

import copy
import json

import pytest

from storage import genesis as genesis_module
from storage.genesis import Genesis, GenesisError
from tests.support.storage_helpers import make_world


def _raw():
    return make_world().genesis.to_dict()


def test_round_trip_and_hash_stable(tmp_path):
    g = make_world().genesis
    path = tmp_path / "genesis.json"
    path.write_text(g.to_json())
    loaded = Genesis.load(path)
    assert loaded == g
    assert loaded.hash() == g.hash()
    assert loaded.validator_set.hash() == g.validator_set.hash()
    assert loaded.validator_addresses["hk-1"] == {"p2p": "127.0.0.1:26600", "rpc": "127.0.0.1:26700"}
    assert loaded.entry_kinds == ("credit-report", "credit-score", "kyc-attestation")


def test_hash_changes_with_any_field():
    raw = _raw()
    other = copy.deepcopy(raw)
    other["entry_kinds"].append("income-statement")
    assert Genesis.from_dict(raw).hash() != Genesis.from_dict(other).hash()
    assert "income-statement" in Genesis.from_dict(other).entry_kinds


def _mutations():
    def drop(key):
        return lambda r: r.pop(key)

    def setter(path, value):
        def apply(r):
            target = r
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = value
        return apply

    return [
        ("lacks chain_id", drop("chain_id")),
        ("chain_id", setter(["chain_id"], "has space")),
        ("chain_id", setter(["chain_id"], "x" * (genesis_module.chain_id_bytes_max + 1))),
        ("genesis_time_ms", setter(["genesis_time_ms"], -1)),
        ("genesis_time_ms", setter(["genesis_time_ms"], True)),
        ("unknown genesis field", setter(["colour"], "blue")),
        ("validators[0].public_key", setter(["validators", 0, "public_key"], "zz" * 32)),
        ("validators[0].public_key", setter(["validators", 0, "public_key"], "AB" * 32)),
        ("validators[1].p2p", setter(["validators", 1, "p2p"], "localhost")),
        ("validators[1].rpc", setter(["validators", 1, "rpc"], "127.0.0.1:70000")),
        ("validators[2]: unknown field", setter(["validators", 2, "weight"], 3)),
        ("jurisdiction", setter(["validators", 3, "jurisdiction"], "US")),
        ("appears twice", setter(["validators", 1, "id"], "hk-1")),
        ("min_signers_per_jurisdiction", setter(["min_signers_per_jurisdiction"], 2)),
        ("governance lacks jurisdiction", lambda r: r["governance"].pop("CN")),
        ("governance.HK.threshold", setter(["governance", "HK", "threshold"], 0)),
        ("governance.CN.threshold", setter(["governance", "CN", "threshold"], 2)),
        ("governance.HK.keys", setter(["governance", "HK", "keys"], [])),
        ("entry_kinds", setter(["entry_kinds"], ["credit-report", "credit-report"])),
        ("entry_kinds", setter(["entry_kinds"], [])),
        ("participants[1].id", setter(["participants", 1, "id"], "governance")),
        ("participants[2].id", setter(["participants", 2, "id"], "hk-bureau")),
        ("participants[0].role", setter(["participants", 0, "role"], "")),
        ("participants[0] lacks", lambda r: r["participants"][0].pop("jurisdiction")),
    ]


@pytest.mark.parametrize("expected,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_field_is_named(expected, mutate):
    raw = _raw()
    mutate(raw)
    with pytest.raises(GenesisError) as caught:
        Genesis.from_dict(raw)
    assert expected.split()[0].rstrip(":") in str(caught.value), str(caught.value)


def test_unsafe_validator_set_refused():
    """3 HK + 1 CN with f = 1 and one signer needed from CN: one faulty CN validator halts the chain."""
    raw = _raw()
    raw["validators"][3]["jurisdiction"] = "HK"
    raw["validators"][2]["jurisdiction"] = "HK"
    raw["validators"].append(dict(raw["validators"][0], id="cn-3", public_key="11" * 32, jurisdiction="CN"))
    with pytest.raises(GenesisError, match="validators: jurisdiction CN"):
        Genesis.from_dict(raw)


def test_not_json_and_not_object():
    with pytest.raises(GenesisError, match="not valid JSON"):
        Genesis.from_json("{")
    with pytest.raises(GenesisError, match="JSON object"):
        Genesis.from_json("[]")


def test_file_size_limit_edge(tmp_path):
    """A file of exactly genesis_file_bytes_max bytes is read; one byte more is refused unread."""
    text = make_world().genesis.to_json()
    limit = genesis_module.genesis_file_bytes_max
    path = tmp_path / "genesis.json"
    path.write_text(text + " " * (limit - len(text.encode())))
    assert Genesis.load(path).chain_id == "bayledger-test"
    path.write_text(text + " " * (limit - len(text.encode()) + 1))
    with pytest.raises(GenesisError, match="larger than"):
        Genesis.load(path)


def test_defaults():
    raw = _raw()
    del raw["entry_kinds"], raw["participants"], raw["min_signers_per_jurisdiction"]
    g = Genesis.from_dict(raw)
    assert g.entry_kinds == genesis_module.DEFAULT_ENTRY_KINDS
    assert g.participants == ()
    assert g.min_signers_per_jurisdiction == 1
    assert json.loads(g.to_json())["entry_kinds"] == list(genesis_module.DEFAULT_ENTRY_KINDS)


def test_addresses_are_not_hashed():
    """Moving a validator to another host keeps the chain (and its stores) the same."""
    raw = _raw()
    moved = copy.deepcopy(raw)
    moved["validators"][0]["p2p"] = "10.0.0.7:26600"
    assert Genesis.from_dict(moved).hash() == Genesis.from_dict(raw).hash()
    moved["validators"][0]["public_key"] = "22" * 32
    assert Genesis.from_dict(moved).hash() != Genesis.from_dict(raw).hash()


def test_the_epoch_margin_is_hashed_only_when_set_and_bounded_at_its_edges():
    """A genesis written before epochs keeps its hash (the default margin is not written); a chain
    with another margin is another chain; 1 and the maximum load, 0 and one past do not."""
    raw = _raw()
    default_hash = Genesis.from_dict(raw).hash()
    assert Genesis.from_dict(dict(raw, epoch_margin_heights=1024)).hash() == default_hash
    assert "epoch_margin_heights" not in Genesis.from_dict(raw).to_json()
    assert Genesis.from_dict(dict(raw, epoch_margin_heights=40)).hash() != default_hash
    top = genesis_module.epoch_margin_heights_max
    for good in (1, top):
        loaded = Genesis.from_json(Genesis.from_dict(dict(raw, epoch_margin_heights=good)).to_json())
        assert loaded.epoch_margin_heights == good
    for bad in (0, top + 1, -1, "40", True, 1.5):
        with pytest.raises(GenesisError, match="epoch_margin_heights"):
            Genesis.from_dict(dict(raw, epoch_margin_heights=bad))
