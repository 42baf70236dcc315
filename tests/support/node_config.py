"""A minimal node.toml for the config tests: the settings every node.toml must have (node hk-1, its
files, the three listen addresses), then whatever section a test adds."""

from __future__ import annotations

from pathlib import Path

from node.config import NodeConfig, load_config


def node_toml(key_file: str = "key.json", sections: str = "") -> str:
    """The required settings of a node.toml, with `key_file`, followed by `sections` (TOML text)."""
    return f"""
node_id = "hk-1"
key_file = "{key_file}"
genesis_file = "genesis.json"
data_dir = "data"
[listen]
p2p = "127.0.0.1:7000"
rpc = "127.0.0.1:7001"
metrics = "127.0.0.1:7002"
""" + sections


def load_toml(tmp_path: Path, text: str) -> NodeConfig:
    """`text` written to tmp_path/node.toml and loaded with node.config.load_config."""
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_config(path)
