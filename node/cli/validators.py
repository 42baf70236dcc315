"""Validator set subcommands (issue 17): `validator add | remove | rotate-key` and `validators`.

`validator ...` builds a `reconfigure` governance entry (storage/reconfiguration.py) signed by the
regulator keys given with --key, checks it locally against the set the node reports (the rule the
ledger applies, consensus.epochs), then either writes it for `bayledger cosign` (--out) or submits
it once every jurisdiction's threshold is met and prints the outcome: ACCEPTED with the height the
new epoch starts at, or REFUSED with the reason code. `validators` shows the epochs.

`validator add` has its own `--rpc`: the new validator's RPC address, recorded in the entry. The
node to ask is then `--node` (or BAYLEDGER_RPC); the other commands take either name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from consensus.epochs import (
    AddValidator, Change, ReconfigurationError, RemoveValidator, RotateValidatorKey, apply_changes,
)
from consensus.validators import JURISDICTIONS, Validator
from node.address import Address, AddressError, parse_addresses
from node.cli import CliError
from node.cli.participant import (
    DEFAULT_SUBMIT_WAIT_MS, ENVIRONMENT_HELP, EXIT_ERROR, EXIT_NEGATIVE, EXIT_OK, GOVERNANCE_NOTE, _call, _client,
    _finish_governance, _genesis, _governance_signers, _guarded, _new_parser, _printable, _require_signatures,
    _with_current_governance,
    _submit_entry, _usage, refusal_or_error, timeout_arg, wait_ms_arg,
)
from node.client import RpcError, build_reconfigure
from node.keys import KeyFileError, load_public_key
from node.validators_view import ValidatorsResultError, schedule_of
from storage.genesis import GovernanceKey, governance_keys_max, is_name
from storage.reconfiguration import SetGovernance, address_bytes_max, apply_governance

PUBLIC_KEY_HEX_CHARS = 64
EPOCH_MAX = 2**63 - 1                 # what the entry's epoch field holds

# One line on each reason a reconfiguration is refused (consensus.epochs, storage/reconfiguration.py):
# a block's outcome carries the code only.
REASON_TEXT = {
    "reconfigure-wrong-epoch": "the entry names an epoch that is not the chain's latest (another reconfiguration "
                               "applied meanwhile): build it again",
    "reconfigure-pending": "the latest epoch has not started yet: one reconfiguration at a time; submit again "
                           "once it has (see `bayledger validators`)",
    "reconfigure-unsafe": "the new set breaks the jurisdiction rule: each jurisdiction needs at least "
                          "min_signers_per_jurisdiction + f validators",
    "reconfigure-unknown-validator": "no validator with that id in the latest set",
    "reconfigure-duplicate-id": "a validator with that id is in the set",
    "reconfigure-duplicate-key": "a validator of the set holds that key",
    "reconfigure-reused-id": "that id was removed before; a removed id never returns",
    "reconfigure-reused-key": "that key was retired (removed or rotated out); it never signs again",
    "reconfigure-too-many-validators": "the set would exceed its size limit",
    "reconfigure-no-change": "the changes leave the set as it is",
    "governance-threshold": "the regulator signatures do not meet each jurisdiction's threshold",
}

RECONFIGURE_NOTE = (
    "The entry changes the chain's latest epoch (asked from the node, or --epoch N). It is checked locally "
    "against that epoch's set first, with the ledger's rule: a change the ledger would refuse "
    "(reconfigure-unsafe, -unknown-validator, -reused-key, ...) is reported and nothing is sent. Accepted, "
    "the new set takes over at height COMMIT + margin_heights + 1 (printed). " + GOVERNANCE_NOTE.replace(
        "runs this", "runs this command"))

VALIDATORS_HELP = (
    "Show the chain's validator set: the current epoch (the one certifying the next block) and its validators "
    "(id, jurisdiction, public key, p2p and rpc addresses), a scheduled epoch that has not started yet, and the "
    "history of epochs (epoch, start height, the height whose reconfiguration scheduled it, size, minimum "
    "signers per jurisdiction). Needs a regulator's, auditor's or validator's --key.")


# -- argument types ---------------------------------------------------------------------------------

def jurisdiction_arg(text: str) -> str:
    if text not in JURISDICTIONS:
        raise argparse.ArgumentTypeError(f"unknown jurisdiction {text[:20]!r}: give {' or '.join(JURISDICTIONS)}")
    return text


def epoch_arg(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > EPOCH_MAX:
        raise argparse.ArgumentTypeError(f"{text[:30]!r} is not an epoch number (0, 1, 2, ...)")
    return int(text)


def entry_address_arg(text: str) -> str:
    """A validator's HOST:PORT as a reconfigure entry records it (storage/reconfiguration.py's rule)."""
    try:
        address = Address.parse(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ":" in address.host:
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 address cannot be recorded in a reconfigure entry; "
                                         f"give a host name or an IPv4 address")
    if len(text.encode()) > address_bytes_max:
        raise argparse.ArgumentTypeError(f"address of {len(text.encode())} bytes; at most {address_bytes_max}")
    return text


def _validator_id(text: str) -> str:
    try:
        RemoveValidator(text)        # the id rule of consensus.epochs
    except ReconfigurationError as exc:
        raise CliError(f"validator id {text[:80]!r}: {exc}") from None
    return text


def _public_key(args) -> bytes:
    """--public-key HEX or --public-key-file FILE (a `bayledger keygen` file: its public half only)."""
    if args.public_key_file is not None:
        path = Path(args.public_key_file)
        if not path.is_file():
            raise CliError(f"--public-key-file {str(path)[:200]!r} is not a file")
        try:
            # As a path with a directory part: load_public_key never reads it as 64 hex characters.
            return load_public_key(str(path.absolute()))
        except KeyFileError as exc:
            raise CliError(f"--public-key-file: {exc}") from None
    text = args.public_key.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise CliError(f"--public-key {text[:80]!r} is not hex (an Ed25519 public key is "
                       f"{PUBLIC_KEY_HEX_CHARS} hex characters; or give --public-key-file FILE)") from None
    if len(raw) != 32:
        raise CliError(f"--public-key must be 32 bytes ({PUBLIC_KEY_HEX_CHARS} hex characters), got {len(raw)} bytes")
    return raw


# -- parsers ----------------------------------------------------------------------------------------

_NODE_ENVIRONMENT = ENVIRONMENT_HELP.replace("default for --rpc ", "default for --node ")
_COMMON = "--key keys/hkma.json --key keys/pboc.json --genesis genesis.json --node 10.0.0.1:26611"
EXAMPLES = {
    "add": f"""\
example (signed by both regulators at once):
  bayledger validator add hk-3 --public-key-file keys/hk-3.json --jurisdiction HK \\
    --p2p 10.0.0.7:26601 --rpc 10.0.0.7:26611 \\
    {_COMMON}
in turns: the HK regulator adds --out hk-3.entry with its own --key only, then the CN regulator runs
  bayledger cosign hk-3.entry --key keys/pboc.json --genesis genesis.json --rpc 10.0.0.1:26611 --submit
""",
    "remove": f"example:\n  bayledger validator remove cn-2 \\\n    {_COMMON}\n",
    "rotate-key": f"""\
example (hk-1 made its new key with `bayledger keygen --out keys/hk-1-2027.json --id hk-1`):
  bayledger validator rotate-key hk-1 --public-key-file keys/hk-1-2027.json \\
    {_COMMON}
""",
    "rotate": f"""\
example (HKMA replaces hkma-1 by hkma-2, made with `bayledger keygen --out keys/hkma-2.json --id hkma-2`;
signed by the regulator keys of now, hkma-1 among them):
  bayledger governance rotate --jurisdiction HK --regulator hkma-2:<its 64 hex public key> --threshold 1 \\
    {_COMMON}
""",
}


def _command_parser(commands, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    parser = _new_parser(commands, name, help_text, description + " " + RECONFIGURE_NOTE)
    parser.epilog = EXAMPLES[name] + "\n" + _NODE_ENVIRONMENT
    return parser

def _add_node_options(parser: argparse.ArgumentParser, *, rpc_alias: bool) -> None:
    """Which node to ask, and how: --node (and --rpc unless the command records an --rpc address)."""
    names = ("--node", "--rpc") if rpc_alias else ("--node",)
    parser.add_argument(*names, dest="node", metavar="HOST:PORT[,...]",
                        help="node(s) to ask, tried in order (env BAYLEDGER_RPC)")
    parser.add_argument("--timeout", type=timeout_arg, default=30.0, metavar="SECONDS",
                        help="per-call timeout (default 30)")
    parser.add_argument("--ca", metavar="FILE", help="CA certificate to trust for the nodes' TLS (env BAYLEDGER_CA)")
    parser.add_argument("--plaintext", action="store_true",
                        help="connect without TLS, to a development node (env BAYLEDGER_PLAINTEXT=1)")


def _add_reconfigure_options(parser: argparse.ArgumentParser, *, rpc_alias: bool = True) -> None:
    parser.add_argument("--key", action="append", metavar="FILE",
                        help="a regulator key file (repeat for each signer; env BAYLEDGER_KEY for one); the "
                             "first also authenticates to the node")
    parser.add_argument("--genesis", metavar="FILE",
                        help="genesis file (env BAYLEDGER_GENESIS; required: chain id, regulator keys, thresholds)")
    parser.add_argument("--epoch", type=epoch_arg, metavar="N",
                        help="the epoch the entry changes (default: the chain's latest, asked from the node)")
    parser.add_argument("--out", metavar="ENTRY",
                        help="write the (partly) signed entry here for `bayledger cosign` and do not submit")
    parser.add_argument("--wait-ms", type=wait_ms_arg, default=DEFAULT_SUBMIT_WAIT_MS, metavar="MS",
                        help=f"how long the node waits for the commit (default {DEFAULT_SUBMIT_WAIT_MS})")
    _add_node_options(parser, rpc_alias=rpc_alias)


def _add_public_key_options(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--public-key", metavar="HEX", help="the validator's Ed25519 public key, 64 hex characters")
    key.add_argument("--public-key-file", metavar="FILE",
                     help="a key file written by `bayledger keygen` (only its public half is read)")


def register(subparsers: argparse._SubParsersAction) -> None:
    validator = _new_parser(subparsers, "validator", "change the validator set (governance): add, remove, "
                            "rotate-key", "Change the validator set with a reconfigure entry. " + RECONFIGURE_NOTE)
    validator.epilog = _NODE_ENVIRONMENT
    commands = validator.add_subparsers(dest="validator_command", metavar="COMMAND")

    add = _command_parser(commands, "add", "add a validator (appended to the order)",
                          "Add validator ID, appended to the order (the primary rotation).")
    add.add_argument("id", metavar="ID", help="the new validator's id (a removed id never returns)")
    _add_public_key_options(add)
    add.add_argument("--jurisdiction", required=True, type=jurisdiction_arg, metavar="HK|CN")
    add.add_argument("--p2p", required=True, type=entry_address_arg, metavar="HOST:PORT",
                     help="the new validator's peer address")
    add.add_argument("--rpc", dest="new_rpc", required=True, type=entry_address_arg, metavar="HOST:PORT",
                     help="the new validator's RPC address (the node to ask is --node here)")
    _add_reconfigure_options(add, rpc_alias=False)
    add.set_defaults(handler=_guarded(run_add))

    remove = _command_parser(commands, "remove", "remove a validator (its id and key are retired for good)",
                             "Remove validator ID; the others keep their order. Its id and key are retired: they "
                             "never return.")
    remove.add_argument("id", metavar="ID")
    _add_reconfigure_options(remove)
    remove.set_defaults(handler=_guarded(run_remove))

    rotate = _command_parser(commands, "rotate-key", "give a validator a new key (the old one is retired)",
                             "Give validator ID a new key; it keeps its place. The old key never signs again.")
    rotate.add_argument("id", metavar="ID")
    _add_public_key_options(rotate)
    _add_reconfigure_options(rotate)
    rotate.set_defaults(handler=_guarded(run_rotate_key))
    validator.set_defaults(handler=lambda args: _usage(validator))

    governance = _new_parser(subparsers, "governance", "change the regulator keys (governance): rotate",
                             "Change the regulator keys with a reconfigure entry. " + RECONFIGURE_NOTE)
    governance.epilog = _NODE_ENVIRONMENT
    governance_commands = governance.add_subparsers(dest="governance_command", metavar="COMMAND")
    rotate_regulators = _command_parser(
        governance_commands, "rotate", "replace one jurisdiction's regulator keys and threshold",
        "Replace JURISDICTION's regulator keys with the --regulator keys given (its whole new list) and its "
        "threshold. Signed by the regulator keys of now; from the new epoch on only the new ones sign "
        "governance entries.")
    rotate_regulators.add_argument("--jurisdiction", required=True, type=jurisdiction_arg, metavar="HK|CN")
    rotate_regulators.add_argument("--regulator", action="append", required=True, type=regulator_arg,
                                   metavar="ID:PUBLIC_KEY_HEX",
                                   help=f"a regulator key of the new list (repeat, 1..{governance_keys_max})")
    rotate_regulators.add_argument("--threshold", required=True, type=int, metavar="N",
                                   help="signatures of this jurisdiction each governance entry needs (1..keys)")
    _add_reconfigure_options(rotate_regulators)
    rotate_regulators.set_defaults(handler=_guarded(run_governance_rotate))
    governance.set_defaults(handler=lambda args: _usage(governance))

    validators = _new_parser(subparsers, "validators", "show the validator set and its epochs", VALIDATORS_HELP)
    validators.epilog = _NODE_ENVIRONMENT
    validators.add_argument("--json", action="store_true", help="print the node's answer as JSON (bytes as hex)")
    validators.add_argument("--key", metavar="FILE", help="a regulator's, auditor's or validator's key file "
                            "(env BAYLEDGER_KEY)")
    _add_node_options(validators, rpc_alias=True)
    validators.set_defaults(handler=_guarded(run_validators))


# -- asking the node --------------------------------------------------------------------------------

def _node_client(args):
    """A client for --node (or --rpc where it names the node; else BAYLEDGER_RPC)."""
    given = getattr(args, "node", None) or getattr(args, "rpc", None)     # cosign names it --rpc
    endpoints = given or os.environ.get("BAYLEDGER_RPC")
    if not endpoints:
        raise CliError("no node given: use --node HOST:PORT or set BAYLEDGER_RPC")
    try:
        parse_addresses(endpoints)
    except AddressError as exc:
        raise CliError(f"{'the node address' if given else 'BAYLEDGER_RPC'}: {exc}") from None
    return _client(argparse.Namespace(**{**vars(args), "rpc": endpoints}))


def _ask_validators(client) -> dict:
    try:
        return _call(client, "epochs")
    except RpcError as exc:
        raise refusal_or_error(exc, f"{client.endpoint} refused validators():") from None


class NodeView:
    """What the node says of the epochs (its `validators` answer) and its applied height."""

    def __init__(self, answer: dict, height: int, endpoint: Any) -> None:
        try:
            self.schedule = schedule_of(answer)
        except ValidatorsResultError as exc:
            raise CliError(f"{endpoint}: {exc}") from None
        self.answer = answer
        self.height = height
        self.endpoint = endpoint

    @property
    def latest(self):
        return self.schedule.latest

    @property
    def pending(self) -> bool:
        """The latest epoch has not started at the next height: a reconfiguration now is refused."""
        return self.latest.start_height > self.height + 1


def _node_view(client) -> NodeView:
    answer = _ask_validators(client)
    height = _call(client, "status")["height"]
    return NodeView(answer, height, client.endpoint)


# -- validator add | remove | rotate-key --------------------------------------------------------------

def run_add(args) -> int:
    validator_id = _validator_id(args.id)
    change = AddValidator(Validator(validator_id, _public_key(args), args.jurisdiction))
    addresses = {validator_id: {"p2p": args.p2p, "rpc": args.new_rpc}}
    return _reconfigure(args, (change,), addresses, f"add of validator {validator_id} ({args.jurisdiction})")


def regulator_arg(text: str) -> tuple[str, bytes]:
    """ID:PUBLIC_KEY_HEX of a regulator key."""
    key_id, _, hex_key = text.rpartition(":")
    try:
        public_key = load_public_key(hex_key)
    except KeyFileError as exc:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: {exc}") from None
    if not is_name(key_id):
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: the id must be letters, digits, '.', '_' or '-', "
                                         f"starting with a letter or digit")
    return key_id, public_key


def run_governance_rotate(args) -> int:
    keys = tuple(GovernanceKey(key_id, public_key, args.jurisdiction) for key_id, public_key in args.regulator)
    wire = {"op": SetGovernance.OP, "jurisdiction": args.jurisdiction, "threshold": args.threshold,
            "keys": [{"id": key.id, "public_key": key.public_key} for key in keys]}
    try:
        change = SetGovernance.from_wire(wire, "--regulator/--threshold")
    except ReconfigurationError as exc:
        raise CliError(str(exc)) from None
    names = ", ".join(key.id for key in keys)
    return _reconfigure(args, (), {}, f"regulator keys of {args.jurisdiction} -> {names} (threshold {args.threshold})",
                        (change,))


def run_remove(args) -> int:
    validator_id = _validator_id(args.id)
    return _reconfigure(args, (RemoveValidator(validator_id),), {}, f"removal of validator {validator_id}")


def run_rotate_key(args) -> int:
    validator_id = _validator_id(args.id)
    change = RotateValidatorKey(validator_id, _public_key(args))
    return _reconfigure(args, (change,), {}, f"key rotation of validator {validator_id}")


def _reconfigure(args, changes: tuple[Change, ...], addresses: dict, what: str,
                 governance: tuple[SetGovernance, ...] = ()) -> int:
    """Build, check and sign the entry; write it (--out) or submit it and print the outcome."""
    genesis = _genesis(args)
    if args.out and args.epoch is not None:
        # Everything is given: no node is asked (an entry prepared offline, checked when submitted).
        signers = _governance_signers(args, genesis)
        entry = _build(signers, genesis.chain_id, args.epoch, changes, addresses, governance)
        return _finish_governance(args, genesis, entry, what, args.out)
    with _node_client(args) as client:
        genesis = _with_current_governance(args, genesis, client)   # the regulator keys of now, not genesis's
        signers = _governance_signers(args, genesis)
        view = _node_view(client)
        epoch = view.latest.epoch if args.epoch is None else args.epoch
        _check_locally(view, epoch, changes, submitting=not args.out)
        _check_governance_locally(view, genesis, governance)
        entry = _build(signers, genesis.chain_id, epoch, changes, addresses, governance)
        if args.out:
            return _finish_governance(args, genesis, entry, what, args.out)
        _require_signatures(entry, genesis, what)
        return _submit_and_report(client, args, entry, what)


def _build(signers, chain_id: str, epoch: int, changes: tuple[Change, ...], addresses: dict,
           governance: tuple[SetGovernance, ...] = ()) -> bytes:
    from storage.entries import EntryError, decode_entry

    try:
        entry = build_reconfigure(signers, chain_id, epoch, changes, addresses, governance=governance)
        decode_entry(entry)     # the entry's own rules, before anyone co-signs it
    except EntryError as exc:
        raise CliError(f"the entry would be refused: {exc.reason}: {exc}") from None
    except Exception as exc:  # the codec refuses values it cannot encode
        raise CliError(f"cannot build the entry: {exc}") from None
    return entry


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _check_locally(view: NodeView, epoch: int, changes: tuple[Change, ...], *, submitting: bool) -> None:
    """Raise (exit 1, nothing sent) for what the ledger would refuse now. Writing with --out (not
    submitting), a pending epoch is only noted: it may have started by the time the entry is sent."""
    latest = view.latest
    unsent = "nothing was sent"
    if epoch != latest.epoch:      # an explicit --epoch: a closed epoch, or one not scheduled yet
        raise CliError(f"reconfigure-wrong-epoch: the entry would change epoch {epoch}; the chain's latest is "
                       f"{latest.epoch} ({unsent})", EXIT_NEGATIVE)
    if view.pending:
        message = (f"reconfigure-pending: epoch {latest.epoch} starts at height {latest.start_height} and the node is "
                   f"at height {view.height}; one reconfiguration at a time")
        if submitting:
            raise CliError(f"{message}: submit once it has started, or write the entry now with --out ({unsent})",
                           EXIT_NEGATIVE)
        _note(f"{message}: submit the entry once it has started")
    if not changes:
        return    # regulator keys only: _check_governance_locally
    try:
        apply_changes(latest.validators, changes, retired_ids=view.schedule.retired_ids,
                      retired_keys=view.schedule.retired_keys)
    except ReconfigurationError as exc:
        raise CliError(f"{exc.reason}: {exc} (checked against epoch {latest.epoch}'s set at {view.endpoint}; "
                       f"{unsent})", EXIT_NEGATIVE) from None


def _check_governance_locally(view: NodeView, genesis, governance: tuple[SetGovernance, ...]) -> None:
    """Raise (exit 1, nothing sent) for regulator keys the ledger would refuse (one held twice), or a
    change that leaves them as they are."""
    if not governance:
        return
    try:
        updated = apply_governance(genesis.governance, governance)
    except ReconfigurationError as exc:
        raise CliError(f"{exc.reason}: {exc} (nothing was sent)", EXIT_NEGATIVE) from None
    if updated == genesis.governance:
        raise CliError("reconfigure-no-change: the regulator keys would stay as they are (nothing was sent)",
                       EXIT_NEGATIVE)


def _reason_text(reason: str) -> str:
    code = reason.rsplit(" ", 1)[-1]
    return f" ({REASON_TEXT[code]})" if code in REASON_TEXT else ""


def _submit_and_report(client, args, entry: bytes, what: str) -> int:
    """Submit, wait, and print the reconfiguration's outcome: where the new epoch starts, or why not."""
    answer = _submit_entry(client, entry, args.wait_ms)
    if answer.get("status") != "committed":
        reason = str(answer.get("reason") or answer.get("status"))
        print(f"REFUSED: {what}: {reason}{_reason_text(reason)}")
        return EXIT_NEGATIVE
    height = answer["height"]
    epochs = _ask_validators(client)
    scheduled = next((e for e in epochs["epochs"] if e["epoch"] > 0 and e["scheduled_at"] == height), None)
    if scheduled is None:
        print(f"COMMITTED: {what} at height {height}, leaf {answer['leaf_index']}, but {client.endpoint} shows no "
              f"epoch scheduled at that height: check `bayledger validators`")
        return EXIT_ERROR
    print(f"ACCEPTED: {what}: committed at height {height}, leaf {answer['leaf_index']}; epoch {scheduled['epoch']} "
          f"({len(scheduled['validators'])} validators) starts at height {scheduled['start_height']} "
          f"(= {height} + margin {epochs['margin_heights']} + 1). Until then epoch {scheduled['epoch'] - 1} certifies; "
          f"watch it with `bayledger validators` and the epoch in `bayledger status`")
    return EXIT_OK


def submit_reconfigure(args, genesis, entry: bytes, what: str) -> int:
    """`cosign --submit` of a reconfigure entry: submit once signed and print the outcome as above."""
    _require_signatures(entry, genesis, what)
    with _node_client(args) as client:
        return _submit_and_report(client, args, entry, what)


# -- validators ---------------------------------------------------------------------------------------

def run_validators(args) -> int:
    with _node_client(args) as client:
        answer = _ask_validators(client)
        view = NodeView(answer, _call(client, "status")["height"], client.endpoint)
    if args.json:
        print(json.dumps(_printable(answer), sort_keys=True))
        return EXIT_OK
    for line in _validators_text(view):
        print(line)
    return EXIT_OK


def _set_lines(epoch: dict) -> list[str]:
    width = max(len(v["id"]) for v in epoch["validators"])
    return [f"  {v['id']:<{width}}  {v['jurisdiction']}  {v['public_key'].hex()}  p2p {v['p2p'] or '-'}  "
            f"rpc {v['rpc'] or '-'}" for v in epoch["validators"]]


def _epoch_title(epoch: dict) -> str:
    return (f"epoch {epoch['epoch']} from height {epoch['start_height']}: {len(epoch['validators'])} validators, "
            f"at least {epoch['min_signers_per_jurisdiction']} signer(s) per jurisdiction in every quorum")


def _validators_text(view: NodeView) -> list[str]:
    """The current epoch and its set, a scheduled one not started yet, then the history of epochs."""
    answer = view.answer
    epochs = answer["epochs"]
    current = epochs[answer["current_epoch"]]
    lines = [f"current {_epoch_title(current)} (the node is at height {view.height})", *_set_lines(current)]
    for upcoming in epochs[answer["current_epoch"] + 1:]:
        lines += [f"next {_epoch_title(upcoming)} (scheduled at height {upcoming['scheduled_at']}; "
                  f"not started yet)", *_set_lines(upcoming)]
    lines += ["", f"history (an epoch starts at its reconfiguration's commit height + margin "
                  f"{answer['margin_heights']} + 1):", "  epoch  start_height  scheduled_at  size  min_signers_per_jurisdiction"]
    lines += [f"  {e['epoch']:>5}  {e['start_height']:>12}  {e['scheduled_at'] or '-':>12}  {len(e['validators']):>4}  "
              f"{e['min_signers_per_jurisdiction']:>28}" for e in epochs]
    return lines
