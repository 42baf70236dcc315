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
import time
from pathlib import Path

from node.cli import main as bayledger_main
from node.keys import KeyFileError, load_key_file
from node.config import ConfigError, ConsensusConfig, Listen, load_config, LogConfig, NodeConfig, parse_address, render_config

from .network import Network

# Roles of the demo participants in genesis: the bureau records reports, the bank checks them.
PARTICIPANT_ROLES = {"sz-credit-bureau": "credit-provider", "hk-bank": "bank"}
GOVERNANCE_THRESHOLD = 1          # signatures needed per jurisdiction (one regulator key each)


class GenerateError(Exception):
    """A `bayledger` admin command failed while generating the network."""


class DemoError(Exception):
    """A step of the sample submit and verify failed; the message names the step and node."""


def run_cli(args: list[str]) -> str:
    """Run `bayledger ARGS` in-process; its stdout, or GenerateError with its messages."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = bayledger_main(args)
        except SystemExit as exc:  # argparse usage errors
            status = exc.code if isinstance(exc.code, int) else 2
    if status != 0:
        raise GenerateError(f"`bayledger {' '.join(args)}` failed (exit {status}): {err.getvalue().strip()}")
    return out.getvalue()


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

    args = ["genesis", "--chain-id", network.chain_id, "--out", str(network.genesis_path)]
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

    for node in network.nodes:
        config = NodeConfig(
            node_id=node.name,
            key_file=node.key_path,
            genesis_file=network.genesis_path,
            data_dir=node.data_dir,
            listen=Listen(p2p=parse_address(node.p2p, "p2p"), rpc=parse_address(node.rpc, "rpc"),
                          metrics=parse_address(node.metrics, "metrics")),
            peers=None,  # from genesis
            log=LogConfig(format="json", level="info"),
            consensus=ConsensusConfig(**(consensus or {})),
        )
        node.config_path.write_text(render_config(config))
        try:
            load_config(node.config_path)  # the daemon's own validation, before anything starts
        except ConfigError as exc:
            raise GenerateError(f"config of {node.name}: {exc}") from None


def run_sample(network: Network, wait_s: float = 30.0) -> dict:
    """The `make testnet` demo, through the client library as an integrator would use it.

    sz-credit-bureau (CN) commits a salted hash of a sample report to a CN node and waits for
    the commit; hk-bank (HK) asks an HK node for the match proof and verifies it offline
    against the genesis file. The report, its salt and the proof are left in the run dir
    for the tour in the README. Raises DemoError saying which step failed.
    """
    from node.client import Client, ClientError, build_commit, match, seal_document, verify_match_proof
    from storage.genesis import Genesis

    cn = network.nodes_in("CN")[0]
    hk = network.nodes_in("HK")[0]
    bureau = network.participants["sz-credit-bureau"]
    bank = network.participants["hk-bank"]
    document = (f"Sample credit report issued by sz-credit-bureau at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: score 712\n").encode()
    commitment, salt = seal_document(document)
    paths = {"report": network.run_dir / "sample-report.txt", "salt": network.run_dir / "sample-report.salt",
             "proof": network.run_dir / "sample-proof.bin"}
    paths["report"].write_bytes(document)
    paths["salt"].write_text(salt.hex() + "\n")
    try:
        bureau_key = load_key_file(bureau["key"])
        entry = build_commit(bureau_key.signing_key, "sz-credit-bureau", network.chain_id, commitment,
                             jurisdiction=bureau["jurisdiction"])
        with Client([cn.rpc], timeout_s=wait_s + 5) as client:
            receipt = client.call("submit", entry, {"wait": True, "timeout_ms": int(wait_s * 1000)})
    except (ClientError, KeyFileError) as exc:
        raise DemoError(f"submit as sz-credit-bureau to {cn.name} ({cn.rpc}) failed: {exc}; see {cn.log_path}") from None
    if not isinstance(receipt, dict) or receipt.get("status") != "committed":
        raise DemoError(f"submit as sz-credit-bureau to {cn.name} was not committed: {receipt!r}")
    try:
        bank_key = load_key_file(bank["key"])
        with Client([hk.rpc], timeout_s=wait_s) as client:
            proof = match(client, bank_key.signing_key, "hk-bank", network.chain_id, commitment)
    except (ClientError, KeyFileError) as exc:
        raise DemoError(f"match as hk-bank at {hk.name} ({hk.rpc}) failed: {exc}; see {hk.log_path}") from None
    if proof is None:
        raise DemoError(f"{hk.name} has no proof for the commitment committed at height {receipt.get('height')}")
    paths["proof"].write_bytes(proof)
    verdict = verify_match_proof(proof, Genesis.load(network.genesis_path), commitment)
    if verdict.status != "match":
        raise DemoError(f"the match proof from {hk.name} does not verify offline: {verdict.status} "
                        f"{verdict.check or ''} {verdict.message}")
    return {"commitment": commitment.hex(), "salt": salt.hex(), "height": receipt.get("height"),
            "leaf_index": receipt.get("leaf_index"), "submitted_to": cn.name, "verified_at": hk.name,
            "verdict": verdict.status, "proof_bytes": len(proof), **{k: str(v) for k, v in paths.items()}}
