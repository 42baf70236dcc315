"""Generate a testnet's keys, genesis and node configs with the operator CLI.

Keys and genesis are made by `bayledger keygen` and `bayledger genesis`, called
in-process through `node.cli.main` (the same code path as the shell command,
without paying a Python start-up per key). Node configs are written with
`node.config.render_config`, the daemon's own renderer, so every field is
spelled as the daemon reads it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from pathlib import Path

from node import tls
from node.cli import main as bayledger_main
from node.config import (ConfigError, ConsensusConfig, Listen, load_config, LogConfig, NodeConfig, parse_address,
                         Peer, render_config, RpcConfig)

from .links import proxied_peers
from .network import Network, NodeEntry

# Roles of the demo participants in genesis: the bureau records reports, the bank checks them, the
# auditor (issue 15) reads blocks and the query log.
PARTICIPANT_ROLES = {"sz-credit-bureau": "credit-provider", "hk-bank": "bank", "hk-auditor": "auditor"}
GOVERNANCE_THRESHOLD = 1          # signatures needed per jurisdiction (one regulator key each)
# Heights between a reconfiguration's commit and its epoch (the chain's default is 1024): small, so a
# testnet's validator-set change takes seconds. The nodes' consensus.watermark_window (default 64)
# must not exceed it.
EPOCH_MARGIN_HEIGHTS = 64


class GenerateError(Exception):
    """A `bayledger` admin command failed while generating the network."""



def run_bayledger(args: list[str]) -> tuple[int, str, str]:
    """Run `bayledger ARGS` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = bayledger_main(args)
        except SystemExit as exc:  # argparse usage errors
            status = exc.code if isinstance(exc.code, int) else 2
    return status, out.getvalue(), err.getvalue()


def run_cli(args: list[str]) -> str:
    """Run `bayledger ARGS` in-process; its stdout, or GenerateError with its messages."""
    status, out, err = run_bayledger(args)
    if status != 0:
        raise GenerateError(f"`bayledger {' '.join(args)}` failed (exit {status}): {err.strip()}")
    return out


def keygen(path: Path, key_id: str) -> str:
    return run_cli(["keygen", "--out", str(path), "--id", key_id]).strip()


def generate_network(network: Network, consensus: dict[str, int] | None = None) -> None:
    """Write every key, the genesis file and each node's config for `network` (a fresh run dir).

    `consensus` overrides fields of the nodes' [consensus] section (the benchmark's knobs)."""
    network.keys_dir.mkdir(parents=True, exist_ok=True)
    for node in network.nodes:
        node.dir.mkdir(parents=True, exist_ok=True)
        keygen(node.key_path, node.name)
    for jurisdiction, key_path in network.governance.items():
        keygen(Path(key_path), f"governance-{jurisdiction}")
    for name, info in network.participants.items():
        keygen(Path(info["key"]), name)

    args = ["genesis", "--chain-id", network.chain_id, "--out", str(network.genesis_path),
            "--epoch-margin-heights", str(EPOCH_MARGIN_HEIGHTS)]
    for node in network.nodes:
        p2p = parse_address(node.p2p, "p2p")
        rpc = parse_address(node.rpc, "rpc")
        args += ["--validator",
                 f"{node.name}:{node.jurisdiction}:{node.key_path}:{p2p.host}:{p2p.port}:{rpc.host}:{rpc.port}"]
    for jurisdiction, key_path in network.governance.items():
        args += ["--governance", f"{jurisdiction}:{key_path}", "--threshold", f"{jurisdiction}:{GOVERNANCE_THRESHOLD}"]
    for name, info in network.participants.items():
        role = PARTICIPANT_ROLES.get(name, "credit-provider")
        args += ["--participant", f"{name}:{info['jurisdiction']}:{role}:{info['key']}"]
    run_cli(args)

    # RPC over TLS: one CA for the network, one certificate per node for its RPC host.
    network.ca_path.parent.mkdir(parents=True, exist_ok=True)
    tls.make_ca(network.ca_path, network.ca_key_path, f"{network.chain_id} dev CA")
    for node in network.nodes:
        make_rpc_certificate(network, node)
    for node in network.nodes:
        peers = proxied_peers(network, node) if network.links_proxied else None
        write_node_config(network, node, ConsensusConfig(**(consensus or {})), peers=peers)


def make_rpc_certificate(network: Network, node: NodeEntry) -> None:
    """The node's RPC certificate for its RPC host, signed by the network's CA."""
    tls.make_node_certificate(network.ca_path, network.ca_key_path, node.rpc_cert_path, node.rpc_key_path,
                              node.name, [parse_address(node.rpc, "rpc").host])


def write_node_config(network: Network, node: NodeEntry, consensus: ConsensusConfig, *,
                      joining: bool = False, peers: tuple[Peer, ...] | None = None) -> None:
    """Write NODE's config.toml (checked with the daemon's own loader). `joining`: a validator added
    by a reconfiguration, which starts from an empty data dir and catches up from genesis. `peers`:
    where NODE dials each validator (the link proxy's ports), None for the genesis addresses."""
    config = NodeConfig(
        node_id=node.name,
        key_file=node.key_path,
        genesis_file=network.genesis_path,
        data_dir=node.data_dir,
        listen=Listen(p2p=parse_address(node.p2p, "p2p"), rpc=parse_address(node.rpc, "rpc"),
                      metrics=parse_address(node.metrics, "metrics")),
        peers=peers,
        joining=joining,
        log=LogConfig(format="json", level="info"),
        consensus=consensus,
        rpc=RpcConfig(tls_cert_file=node.rpc_cert_path, tls_key_file=node.rpc_key_path),
    )
    node.config_path.write_text(render_config(config))
    check_config(node)


def check_config(node: NodeEntry) -> NodeConfig:
    """The node's config as the daemon reads it; GenerateError if the daemon would refuse it."""
    try:
        return load_config(node.config_path)  # the daemon's own validation, before anything starts
    except ConfigError as exc:
        raise GenerateError(f"config of {node.name}: {exc}") from None


def rewrite_keys(node: NodeEntry, key_file: Path, spare_key_files: tuple[Path, ...]) -> None:
    """Change only the key files of NODE's config (a key rotation); the rest is kept as it is."""
    config = replace(check_config(node), key_file=key_file, spare_key_files=spare_key_files)
    tmp = node.config_path.with_suffix(".toml.tmp")
    tmp.write_text(render_config(config))
    tmp.replace(node.config_path)
    check_config(node)
