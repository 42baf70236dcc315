"""The shape of a local testnet and its manifest file (`testnet.json` in the run dir).

The manifest is written once by `up` and read by every other subcommand, so
`status`, `kill`, `logs` and the benchmark never guess paths or ports.
Run dir layout:

    testnet.json                 this manifest
    genesis.json                 the chain's genesis (validators, governance, participants)
    keys/                        governance and participant keys (mode 0600)
    tls/ca.pem, tls/ca-key.pem   the network's CA for RPC TLS (clients trust ca.pem: BAYLEDGER_CA)
    nodes/NAME/rpc-cert.pem      the node's RPC certificate (signed by the CA) and key (mode 0600)
    nodes/NAME/rpc-key.pem
    nodes/NAME/config.toml       one directory per validator
    nodes/NAME/key.json
    nodes/NAME/data/             its LevelDB
    nodes/NAME/node.log          its stdout and stderr
    nodes/NAME/node.pid
    link-proxy/                  only with link delay or loss (testnet/links.py): the proxy's config,
                                 state and ack files, pid file and log

Each node has a `membership` (issue 17): "genesis" (in the genesis set), "joining" (added by
`add-validator`, its epoch not seen started yet), "added" (added, its epoch started) or "removed"
(taken out by `remove-validator`: stopped, kept for its files and logs, never started again).
A node's ports come from its index in `nodes`, so a removed node keeps its place in the list.

`link_delay_ms`, `link_loss` and `link_seed` (issue 19) say how the link proxy delays the validators'
p2p links; both 0 means no proxy (the nodes dial each other directly).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .ports import HOST, plan_ports

MANIFEST_NAME = "testnet.json"
MANIFEST_VERSION = 2                 # 2: RPC over TLS (tls/ and nodes/NAME/rpc-*.pem)
VALIDATOR_COUNTS = (4, 7, 10)
DEMO_PARTICIPANTS = {"hk-bank": "HK", "sz-credit-bureau": "CN", "hk-auditor": "HK"}
JURISDICTIONS = ("HK", "CN")
CHAIN_ID = "bayledger-testnet"
GENESIS, JOINING, ADDED, REMOVED = "genesis", "joining", "added", "removed"   # NodeEntry.membership


class ManifestError(Exception):
    """A run dir without a usable manifest; the message says what to do."""


@dataclass(frozen=True)
class NodeEntry:
    name: str
    jurisdiction: str
    p2p: str
    rpc: str
    metrics: str
    node_dir: str
    membership: str = GENESIS

    @property
    def removed(self) -> bool:
        return self.membership == REMOVED

    @property
    def dir(self) -> Path:
        return Path(self.node_dir)

    @property
    def config_path(self) -> Path:
        return self.dir / "config.toml"

    @property
    def key_path(self) -> Path:
        return self.dir / "key.json"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "node.pid"

    @property
    def rpc_cert_path(self) -> Path:
        return self.dir / "rpc-cert.pem"

    @property
    def rpc_key_path(self) -> Path:
        return self.dir / "rpc-key.pem"

    @property
    def ca_path(self) -> Path:
        """The network's CA, which signed this node's RPC certificate (run_dir/tls/ca.pem)."""
        return self.dir.parent.parent / "tls" / "ca.pem"


@dataclass
class Network:
    run_dir: Path
    chain_id: str
    base_port: int
    nodes: list[NodeEntry]
    participants: dict[str, dict] = field(default_factory=dict)   # name -> {"key", "jurisdiction"}
    governance: dict[str, str] = field(default_factory=dict)      # jurisdiction -> key path
    link_delay_ms: float = 0.0     # one-way delay the link proxy adds to each p2p link direction
    link_loss: float = 0.0         # probability a chunk is "lost" (delivered a retransmission late)
    link_seed: int = 0             # seeds the proxy's loss draws

    @property
    def links_proxied(self) -> bool:
        """True if the validators' p2p links go through the link proxy (testnet/links.py)."""
        return self.link_delay_ms > 0 or self.link_loss > 0

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST_NAME

    @property
    def genesis_path(self) -> Path:
        return self.run_dir / "genesis.json"

    @property
    def keys_dir(self) -> Path:
        return self.run_dir / "keys"

    @property
    def ca_path(self) -> Path:
        """The CA certificate RPC clients trust (--ca / BAYLEDGER_CA)."""
        return self.run_dir / "tls" / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.run_dir / "tls" / "ca-key.pem"

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        raise ManifestError(f"no node {name!r} in {self.run_dir}; nodes: {', '.join(n.name for n in self.nodes)}")

    def member(self, name: str) -> NodeEntry:
        """NODE, which must not have been removed (a removed validator never runs again)."""
        node = self.node(name)
        if node.removed:
            raise ManifestError(f"{name} was removed from the validator set (remove-validator); it is never "
                                f"started again")
        return node

    def nodes_in(self, jurisdiction: str) -> list[NodeEntry]:
        return [n for n in self.members if n.jurisdiction == jurisdiction]

    @property
    def members(self) -> list[NodeEntry]:
        """The nodes that run: every node but the removed ones."""
        return [n for n in self.nodes if not n.removed]

    def set_membership(self, name: str, membership: str) -> None:
        self.nodes = [replace(n, membership=membership) if n.name == name else n for n in self.nodes]

    def save(self) -> None:
        document = {
            "version": MANIFEST_VERSION,
            "chain_id": self.chain_id,
            "base_port": self.base_port,
            "genesis": str(self.genesis_path),
            "ca": str(self.ca_path),
            "nodes": [asdict(n) for n in self.nodes],
            "participants": self.participants,
            "governance": self.governance,
            "link_delay_ms": self.link_delay_ms,
            "link_loss": self.link_loss,
            "link_seed": self.link_seed,
        }
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2) + "\n")
        tmp.replace(self.manifest_path)

    @classmethod
    def load(cls, run_dir: Path) -> "Network":
        path = run_dir / MANIFEST_NAME
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"no testnet in {run_dir} (no {MANIFEST_NAME}); start one with `python -m testnet up --dir {run_dir}`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} cannot be read: {exc}; remove {run_dir} and run `up` again") from None
        try:
            if document["version"] != MANIFEST_VERSION:
                raise ManifestError(f"{path} has version {document['version']}, expected {MANIFEST_VERSION}; "
                                    f"`python -m testnet down --dir {run_dir}`, remove {run_dir} and run `up` again")
            return cls(
                run_dir=run_dir,
                chain_id=document["chain_id"],
                base_port=document["base_port"],
                nodes=[NodeEntry(**n) for n in document["nodes"]],
                participants=document["participants"],
                governance=document["governance"],
                # Absent from manifests written before issue 19: no link proxy.
                link_delay_ms=float(document.get("link_delay_ms", 0.0)),
                link_loss=float(document.get("link_loss", 0.0)),
                link_seed=int(document.get("link_seed", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path} is malformed ({exc}); remove {run_dir} and run `up` again") from None


def validator_layout(count: int) -> list[tuple[str, str]]:
    """(name, jurisdiction) of `count` validators, split as evenly as possible, HK first.

    Interleaved (hk-1, cn-1, hk-2, ...) so successive primaries alternate jurisdictions.
    """
    if count not in VALIDATOR_COUNTS:
        raise ValueError(f"--validators must be one of {', '.join(map(str, VALIDATOR_COUNTS))}, got {count}")
    hk = (count + 1) // 2
    cn = count - hk
    names: list[tuple[str, str]] = []
    for i in range(max(hk, cn)):
        if i < hk:
            names.append((f"hk-{i + 1}", "HK"))
        if i < cn:
            names.append((f"cn-{i + 1}", "CN"))
    return names


def plan_network(run_dir: Path, validators: int, base_port: int,
                 extra_participants: dict[str, str] | None = None) -> Network:
    """The manifest of a network not yet generated: names, jurisdictions, ports, paths.

    `extra_participants` (name -> jurisdiction) are admitted at genesis besides the demo ones
    (the benchmark's load authors)."""
    run_dir = run_dir.resolve()
    layout = validator_layout(validators)
    ports = plan_ports(base_port, len(layout))
    nodes = [
        NodeEntry(
            name=name,
            jurisdiction=jurisdiction,
            p2p=f"{HOST}:{p.p2p}",
            rpc=f"{HOST}:{p.rpc}",
            metrics=f"{HOST}:{p.metrics}",
            node_dir=str(run_dir / "nodes" / name),
        )
        for (name, jurisdiction), p in zip(layout, ports)
    ]
    keys_dir = run_dir / "keys"
    return Network(
        run_dir=run_dir,
        chain_id=CHAIN_ID,
        base_port=base_port,
        nodes=nodes,
        participants={name: {"key": str(keys_dir / f"{name}.json"), "jurisdiction": j}
                      for name, j in {**DEMO_PARTICIPANTS, **(extra_participants or {})}.items()},
        governance={j: str(keys_dir / f"governance-{j}.json") for j in JURISDICTIONS},
    )
