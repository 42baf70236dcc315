"""Operator subcommands: `keygen`, `genesis` and `node` (run the daemon)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from node.cli import CliError
from node.config import ConfigError, parse_address
from node.keys import KeyFileError, KeyPair, load_public_key, write_key_file

GENESIS_HELP = """\
Write a genesis file from the validators, governance keys and initial participants.

  --validator ID:JURISDICTION:KEY:P2P_HOST:P2P_PORT:RPC_HOST:RPC_PORT   (repeat; order fixes the primary rotation)
  --governance JURISDICTION[:ID]:KEY                                  (repeat; regulator keys per jurisdiction;
                                                                      ID defaults to the key file's id)
  --threshold JURISDICTION:N                                          (governance signatures needed, per jurisdiction)
  --participant ID:JURISDICTION:ROLE:KEY                              (repeat; admitted at genesis)

KEY is 64 hex characters of an Ed25519 public key or the path of a key file
written by `bayledger keygen` (only its public half is read). JURISDICTION is HK or CN.

Example:
  bayledger genesis --chain-id bayledger-test \\
    --validator hk-1:HK:keys/hk-1.json:127.0.0.1:26601:127.0.0.1:26611 ... \\
    --governance HK:keys/hkma.json --governance CN:keys/pboc.json \\
    --threshold HK:1 --threshold CN:1 \\
    --participant bank-hk:HK:provider:keys/bank-hk.json --out genesis.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    keygen = subparsers.add_parser("keygen", help="create an Ed25519 key file (mode 0600)",
                                   description="Create an Ed25519 key file readable by its owner only; "
                                   "prints the public key in hex.")
    keygen.add_argument("--out", required=True, help="key file to create (never overwritten)")
    keygen.add_argument("--id", help="name stored in the key file (e.g. the validator id)")
    keygen.set_defaults(handler=run_keygen)

    genesis = subparsers.add_parser("genesis", help="write a genesis file", description=GENESIS_HELP,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    genesis.add_argument("--chain-id", required=True)
    genesis.add_argument("--validator", action="append", default=[], metavar="SPEC")
    genesis.add_argument("--governance", action="append", default=[], metavar="JURISDICTION:KEY")
    genesis.add_argument("--threshold", action="append", default=[], metavar="JURISDICTION:N")
    genesis.add_argument("--participant", action="append", default=[], metavar="ID:JURISDICTION:ROLE:KEY")
    genesis.add_argument("--entry-kind", action="append", default=[], metavar="KIND",
                         help="an allowed entry kind (repeat; default: storage's standard kinds)")
    genesis.add_argument("--min-signers-per-jurisdiction", type=int, default=1,
                         help="COMMIT signers needed from each jurisdiction in every certificate (default 1)")
    genesis.add_argument("--epoch-margin-heights", type=int, default=None, metavar="N",
                         help="heights between a reconfiguration's commit and its new epoch (default 1024); every "
                              "validator's consensus.watermark_window must be at most N")
    genesis.add_argument("--time-ms", type=int, default=None, help="genesis time, ms since the epoch (default now)")
    genesis.add_argument("--out", required=True, help="genesis file to write")
    genesis.add_argument("--force", action="store_true", help="overwrite an existing file")
    genesis.set_defaults(handler=run_genesis)

    node = subparsers.add_parser("node", help="run a validator daemon",
                                 description="Run the validator daemon until SIGTERM or SIGINT; SIGHUP reloads the "
                                 "RPC certificate and key (rpc.tls_cert_file, rpc.tls_key_file). "
                                 "The config reference is docs/OPERATIONS.md in the source tree (every key, its "
                                 "range and default); unknown keys are refused by name.")
    node.add_argument("--config", required=True, help="node TOML config file")
    node.set_defaults(handler=run_node)


def run_keygen(args: argparse.Namespace) -> int:
    key = KeyPair.generate(args.id)
    try:
        write_key_file(args.out, key)
    except KeyFileError as exc:
        raise CliError(str(exc)) from None
    print(key.public_key.hex())
    return 0


def _split(text: str, parts: int, what: str, option: str) -> list[str]:
    # Host parts may be IPv6 in brackets; keep them simple: split from the left, exactly `parts` fields.
    fields = text.split(":")
    if len(fields) != parts or not all(fields):
        raise CliError(f"--{option} {text!r}: expected {what}")
    return fields


def _public_key(text: str, option: str) -> bytes:
    try:
        return load_public_key(text)
    except KeyFileError as exc:
        raise CliError(f"--{option}: {exc}") from None


def _key_id(text: str) -> str | None:
    """The "id" stored in a key file, if `text` names one."""
    path = Path(text)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    value = document.get("id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def genesis_document(args: argparse.Namespace) -> dict:
    """The genesis JSON document described by the command line (validated afterwards by storage.genesis)."""
    validators = []
    for spec in args.validator:
        vid, jurisdiction, key, p2p_host, p2p_port, rpc_host, rpc_port = _split(
            spec, 7, "ID:JURISDICTION:KEY:P2P_HOST:P2P_PORT:RPC_HOST:RPC_PORT", "validator")
        try:
            p2p = parse_address(f"{p2p_host}:{p2p_port}", f"validator {vid} p2p")
            rpc = parse_address(f"{rpc_host}:{rpc_port}", f"validator {vid} rpc")
        except ConfigError as exc:
            raise CliError(f"--validator: {exc}") from None
        validators.append({"id": vid, "public_key": _public_key(key, "validator").hex(), "jurisdiction": jurisdiction,
                           "p2p": str(p2p), "rpc": str(rpc)})
    if not validators:
        raise CliError("at least one --validator is needed")
    governance: dict[str, dict] = {}
    for spec in args.governance:
        fields = spec.split(":")
        if len(fields) == 3 and all(fields):
            jurisdiction, key_id, key = fields
        else:
            jurisdiction, key = _split(spec, 2, "JURISDICTION:KEY or JURISDICTION:ID:KEY", "governance")
            key_id = _key_id(key) or f"{jurisdiction.lower()}-governance-{len(governance.get(jurisdiction, {}).get('keys', [])) + 1}"
        governance.setdefault(jurisdiction, {"keys": [], "threshold": 1})["keys"].append(
            {"id": key_id, "public_key": _public_key(key, "governance").hex()})
    for spec in args.threshold:
        jurisdiction, count = _split(spec, 2, "JURISDICTION:N", "threshold")
        if jurisdiction not in governance:
            raise CliError(f"--threshold {spec!r}: no --governance key for {jurisdiction}")
        if not count.isdigit():
            raise CliError(f"--threshold {spec!r}: N must be a positive integer")
        governance[jurisdiction]["threshold"] = int(count)
    participants = []
    for spec in args.participant:
        pid, jurisdiction, role, key = _split(spec, 4, "ID:JURISDICTION:ROLE:KEY", "participant")
        participants.append({"id": pid, "jurisdiction": jurisdiction, "role": role,
                             "public_key": _public_key(key, "participant").hex()})
    document = {
        "chain_id": args.chain_id,
        "genesis_time_ms": args.time_ms if args.time_ms is not None else int(time.time() * 1000),
        "min_signers_per_jurisdiction": args.min_signers_per_jurisdiction,
        "validators": validators,
        "governance": governance,
        "participants": participants,
    }
    if args.entry_kind:
        document["entry_kinds"] = list(args.entry_kind)
    if args.epoch_margin_heights is not None:
        document["epoch_margin_heights"] = args.epoch_margin_heights
    return document


def run_genesis(args: argparse.Namespace) -> int:
    from storage.genesis import Genesis, GenesisError

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError(f"{out} already exists (use --force to overwrite)")
    try:
        genesis = Genesis.from_dict(genesis_document(args))
    except GenesisError as exc:
        raise CliError(f"invalid genesis: {exc}") from None
    temporary = out.with_name(out.name + ".tmp")
    try:
        temporary.write_text(genesis.to_json())
        os.replace(temporary, out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    print(f"wrote {out} ({genesis.validator_set.n} validators, chain {genesis.chain_id})")
    return 0


def run_node(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.daemon import run_daemon

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # A file-level error names the file already; a field error gets it in front.
        message = str(exc)
        raise CliError(message if message.startswith("config file ") else f"config file {args.config}: {message}") from None
    return run_daemon(config)


