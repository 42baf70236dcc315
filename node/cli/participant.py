"""Participant and governance subcommands: submit, verify, revoke, status, proof verify, admit, suspend, cosign.

Connection and identity come from options or the environment:
  --rpc HOST:PORT[,HOST:PORT...]   BAYLEDGER_RPC      nodes to ask, in order (the next when one is down)
  --key FILE                       BAYLEDGER_KEY      key file (`bayledger keygen`); its id is the
                                                      participant id (or governance key id)
  --genesis FILE                   BAYLEDGER_GENESIS  the chain's genesis file (offline verification)
  --ca FILE                        BAYLEDGER_CA       CA certificate(s) to trust for the nodes' TLS
                                                      (default: the system's trust store)
  --plaintext                      BAYLEDGER_PLAINTEXT=1  no TLS: development nodes only

Exit status (docs/PROTOCOL.md §8 has the table): 0 success (for verify: a verified MATCH); 1 a
definite no (NO MATCH, REVOKED, EXPIRED, STALE, DISAGREE, an entry the ledger refused, a node that
refused the caller: REFUSAL_CODES); 2 the answer is unknown (usage, connection or verification
errors, a node busy or timing out); 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from node.cli import CliError
from node.client import (
    Client, ClientError, ConnectionFailed, Credentials, RpcError, build_admit, build_commit, build_governance_revoke,
    build_revoke, build_suspend, cosign, match, seal_document, verify_match_proof,
)
from node.keys import KeyFileError, KeyPair, create_private_file, load_key_file, load_public_key
from node.query_log import PAGE_RECORDS_MAX as QUERY_LOG_PAGE_RECORDS_MAX
from node.wire import (
    ERROR_ALREADY_COMMITTED, ERROR_BAD_ENTRY, ERROR_BAD_SIGNATURE, ERROR_INVALID_PARAMS, ERROR_NOT_FOUND,
    ERROR_REPLAYED, ERROR_STALE, ERROR_TIMEOUT, ERROR_UNAUTHORIZED,
)
from storage.proofs import proof_bytes_max

EXIT_OK = 0
EXIT_NEGATIVE = 1       # a definite answer that is no: NO MATCH, REVOKED, STALE, DISAGREE, a refusal
EXIT_ERROR = 2          # usage, connection or verification error: the answer is unknown
EXIT_INTERRUPTED = 130  # Ctrl-C (node.cli.run_main says so for every other command)
# A node that answers one of these has decided against the caller (exit 1); any other error code
# (busy, timeout, shutting-down, internal, a protocol error) leaves the answer unknown (exit 2).
REFUSAL_CODES = frozenset({
    ERROR_UNAUTHORIZED, ERROR_BAD_SIGNATURE, ERROR_REPLAYED, ERROR_STALE, ERROR_BAD_ENTRY,
    ERROR_ALREADY_COMMITTED, ERROR_INVALID_PARAMS, ERROR_NOT_FOUND,
})
WAIT_MS_MAX = 600_000                   # --wait-ms: up to 10 minutes (a node caps its own wait lower)
TIMEOUT_S_MAX = 3600.0                  # --timeout: up to an hour per call
QUERY_LOG_LIMIT_MAX = 1_000_000         # queries --limit: records printed
EXPIRES_MS_MAX = 2**63 - 1              # submit --expires-ms: what the entry's int field holds
document_bytes_max = 1 << 30            # a document hashed by the CLI (streamed, but bound the wait)
receipt_bytes_max = 65_536
proof_file_bytes_max = proof_bytes_max   # storage.proofs: grows with the epochs a proof walks
entry_file_bytes_max = 65_536
RECEIPT_MODE = 0o600                    # it holds the salt: as private as the document
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_SUBMIT_WAIT_MS = 30_000

GOVERNANCE_NOTE = (
    "Governance entries need the signatures of the regulator keys of BOTH jurisdictions (the "
    "thresholds in genesis). Either pass every signer's --key at once, or co-sign in turns: the first "
    "regulator runs this with --out ENTRY (nothing is sent), the other runs `bayledger cosign ENTRY "
    "--key THEIRS --submit`.")

ENVIRONMENT_HELP = """\
environment:
  BAYLEDGER_RPC      default for --rpc (HOST:PORT[,HOST:PORT...])
  BAYLEDGER_KEY      default for --key
  BAYLEDGER_GENESIS  default for --genesis
  BAYLEDGER_CA       default for --ca (the CA that signed the nodes' RPC certificates)
  BAYLEDGER_PLAINTEXT=1  default for --plaintext (development nodes without TLS)

exit status: 0 success, 1 negative answer (no match, revoked, expired, stale, nodes disagree, refused),
2 error (usage, connection, invalid proof, node busy), 130 interrupted
"""


# -- shared options -------------------------------------------------------------------------------

def _add_rpc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpc", metavar="HOST:PORT[,...]", help="node(s) to ask, tried in order (env BAYLEDGER_RPC)")
    parser.add_argument("--timeout", type=timeout_arg, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"per-call timeout (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--ca", metavar="FILE", help="CA certificate to trust for the nodes' TLS (env BAYLEDGER_CA; "
                        "default: the system's trust store)")
    parser.add_argument("--plaintext", action="store_true",
                        help="connect without TLS, to a development node (env BAYLEDGER_PLAINTEXT=1)")


def _add_key(parser: argparse.ArgumentParser, *, many: bool = False, what: str = "participant") -> None:
    if many:
        parser.add_argument("--key", action="append", metavar="FILE",
                            help="a regulator key file (repeat for each signer; env BAYLEDGER_KEY for one)")
    else:
        parser.add_argument("--key", metavar="FILE", help=f"the {what}'s key file (env BAYLEDGER_KEY)")


def _add_genesis(parser: argparse.ArgumentParser, required_note: str = "") -> None:
    parser.add_argument("--genesis", metavar="FILE", help=f"genesis file (env BAYLEDGER_GENESIS){required_note}")


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Usage errors as one line (argparse prints the whole usage first), exit status 2."""
    def error(message: str) -> None:
        parser.exit(EXIT_ERROR, f"{parser.prog}: {message} (see {parser.prog} --help)\n")
    parser.error = error  # type: ignore[method-assign]
    return parser


def _new_parser(subparsers, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return _one_line_errors(subparsers.add_parser(name, help=help_text, description=description,
                                                  epilog=ENVIRONMENT_HELP,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))


def register(subparsers: argparse._SubParsersAction) -> None:
    submit = _new_parser(subparsers, "submit", "commit a document's salted hash; writes FILE.receipt.json",
                         "Hash FILE with a fresh random 32-byte salt, sign a commit entry with --key and submit "
                         "it; wait for the commit and write FILE.receipt.json (mode 0600) with the commitment, "
                         "the salt, chain id, height and leaf index. Only the commitment goes to the ledger: keep "
                         "the salt with the document and hand both to whoever must verify.")
    submit.add_argument("file", metavar="FILE", help="the document")
    submit.add_argument("--kind", default="credit-report", help="entry kind (default credit-report)")
    submit.add_argument("--jurisdiction", choices=("HK", "CN"),
                        help="jurisdiction of the commitment (default: the participant's)")
    submit.add_argument("--expires-ms", type=_positive_int("--expires-ms", EXPIRES_MS_MAX), default=None, metavar="MS",
                        help="expiry, ms since the epoch")
    submit.add_argument("--as", dest="participant", metavar="ID", help="participant id (default: the key file's id)")
    submit.add_argument("--receipt", metavar="FILE", help="where to write the receipt (default FILE.receipt.json)")
    submit.add_argument("--force", action="store_true", help="overwrite an existing receipt")
    submit.add_argument("--wait-ms", type=wait_ms_arg, default=DEFAULT_SUBMIT_WAIT_MS, metavar="MS",
                        help=f"how long the node waits for the commit (default {DEFAULT_SUBMIT_WAIT_MS})")
    _add_rpc(submit)
    _add_key(submit)
    _add_genesis(submit, " (optional: the chain id is asked from the node otherwise)")
    submit.set_defaults(handler=_guarded(run_submit))

    verify = _new_parser(subparsers, "verify", "check a document against the ledger (match proof, verified offline)",
                         "Recompute FILE's commitment with the salt (from --receipt or --salt), ask a node for its "
                         "match proof with a query signed by --key, and verify the proof offline against the "
                         "genesis file. Prints MATCH, REVOKED, EXPIRED, STALE or NO MATCH with height and time. "
                         "With several --rpc nodes, two of them are asked and must agree on whether the "
                         "commitment is revoked (else DISAGREE, exit 1). Exit 0 only for a verified match.")
    verify.add_argument("file", metavar="FILE", help="the document")
    salt = verify.add_mutually_exclusive_group(required=True)
    salt.add_argument("--receipt", metavar="FILE", help="the receipt written by submit (holds the salt)")
    salt.add_argument("--salt", metavar="HEX", help="the 32-byte salt in hex")
    verify.add_argument("--proof-out", metavar="FILE", help="save the match proof (its msgpack bytes)")
    verify.add_argument("--as", dest="participant", metavar="ID", help="participant id (default: the key file's id)")
    _add_max_status_age(verify)
    _add_rpc(verify)
    _add_key(verify)
    _add_genesis(verify, " (required)")
    verify.set_defaults(handler=_guarded(run_verify))

    receipt = _new_parser(subparsers, "receipt", "receipt tools (receipt refresh)", "Receipt tools.")
    receipt_commands = receipt.add_subparsers(dest="receipt_command", metavar="COMMAND")
    refresh = _new_parser(
        receipt_commands, "refresh", "record in a pending receipt the commit that happened meanwhile",
        "A receipt stays `pending` when submit stopped waiting (--wait-ms, Ctrl-C, a lost "
        "connection) before its entry committed. Ask a node for the commitment's match proof (a query signed by "
        "--key), verify it offline against the genesis file, and write the height and leaf into the receipt: "
        "COMMITTED (exit 0). PENDING (exit 1) if the ledger has no such commitment yet: if it never appears, "
        "the entry was lost; submit the document again (a new salt, a new receipt).")
    refresh.add_argument("receipt", metavar="RECEIPT", help="the receipt written by submit")
    refresh.add_argument("--as", dest="participant", metavar="ID", help="participant id (default: the key file's id)")
    _add_rpc(refresh)
    _add_key(refresh)
    _add_genesis(refresh, " (required)")
    refresh.set_defaults(handler=_guarded(run_receipt_refresh))
    receipt.set_defaults(handler=lambda args: _usage(receipt))

    proof = _new_parser(subparsers, "proof", "offline proof tools (proof verify)", "Offline proof tools.")
    proof_commands = proof.add_subparsers(dest="proof_command", metavar="COMMAND")
    proof_verify = _new_parser(
        proof_commands, "verify", "verify a saved match proof offline",
        "Offline: verify a match proof file (saved by verify --proof-out) against the genesis file, no "
        "node. The commitment checked is the one given (--commitment, --receipt, or FILE with --salt); without "
        "one, the proof's own. Prints MATCH / REVOKED / EXPIRED / STALE (exit 1), or INVALID PROOF naming the "
        "failed check (exit 2).")
    proof_verify.add_argument("proof", metavar="PROOF", help="the proof file")
    proof_verify.add_argument("--commitment", metavar="HEX", help="the commitment the proof must be about")
    proof_verify.add_argument("--receipt", metavar="FILE", help="take the commitment from a receipt")
    proof_verify.add_argument("--document", metavar="FILE", help="recompute the commitment from FILE and --salt")
    proof_verify.add_argument("--salt", metavar="HEX", help="salt for --document")
    _add_max_status_age(proof_verify)
    _add_genesis(proof_verify, " (required)")
    proof_verify.set_defaults(handler=_guarded(run_proof_verify))
    proof.set_defaults(handler=lambda args: _usage(proof))

    revoke = _new_parser(subparsers, "revoke", "withdraw a commitment (its author, or governance)",
                         "Sign and submit a revoke entry for a commitment (from --receipt, --commitment, or FILE "
                         "with --salt) with the author's --key; waits for the commit. With --governance, the "
                         "regulators revoke any participant's commitment instead: --key names regulator keys "
                         "and --genesis is required. " + GOVERNANCE_NOTE)
    revoke.add_argument("file", metavar="FILE", nargs="?", help="the document (with --salt)")
    revoke.add_argument("--receipt", metavar="FILE", help="the receipt written by submit")
    revoke.add_argument("--commitment", metavar="HEX", help="the commitment in hex")
    revoke.add_argument("--salt", metavar="HEX", help="salt for FILE")
    revoke.add_argument("--reason", default="withdrawn", help="why (up to 256 bytes, recorded on the ledger)")
    revoke.add_argument("--as", dest="participant", metavar="ID", help="participant id (default: the key file's id)")
    revoke.add_argument("--wait-ms", type=wait_ms_arg, default=DEFAULT_SUBMIT_WAIT_MS, metavar="MS")
    revoke.add_argument("--governance", action="store_true",
                        help="revoke as governance, signed by the regulator key(s) given with --key")
    revoke.add_argument("--out", metavar="ENTRY",
                        help="with --governance: write the (partly) signed entry here for `cosign` and do not submit")
    _add_rpc(revoke)
    revoke.add_argument("--key", action="append", metavar="FILE",
                        help="the author's key file; with --governance, a regulator key file (repeat for each "
                             "signer); env BAYLEDGER_KEY for one")
    _add_genesis(revoke, " (optional; required with --governance)")
    revoke.set_defaults(handler=_guarded(run_revoke))

    status = _new_parser(subparsers, "status", "show a node's status", "Ask a node for its status.")
    status.add_argument("--json", action="store_true", help="print JSON (bytes as hex)")
    status.add_argument("--key", metavar="FILE", help="authenticate with this key file for the full status "
                        "(env BAYLEDGER_KEY); without one a node shows chain, node id, height and version only")
    _add_rpc(status)
    status.set_defaults(handler=_guarded(run_status))

    queries = _new_parser(subparsers, "queries", "read a node's match-query log (regulators, auditors)",
                          "Print the node's log of match queries (who asked about which commitment, when, and "
                          "the answer), oldest first, one JSON object per line. Needs a regulator, auditor or "
                          "validator key. Each node keeps its own log: ask each node you audit.")
    queries.add_argument("--since", type=parse_duration_ms, default=parse_duration_ms("1h"), metavar="DURATION",
                         help="how far back (90s, 10m, 24h, 7d; default 1h)")
    queries.add_argument("--limit", type=_positive_int("--limit", QUERY_LOG_LIMIT_MAX), default=1000, metavar="N",
                         help=f"at most N records, 1 to {QUERY_LOG_LIMIT_MAX} (default 1000)")
    _add_rpc(queries)
    queries.add_argument("--key", metavar="FILE", help="the auditor's or regulator's key file (env BAYLEDGER_KEY)")
    queries.set_defaults(handler=_guarded(run_queries))

    admit = _new_parser(subparsers, "admit", "admit (or re-admit) a participant (governance)",
                        "Admit a participant to the registry. " + GOVERNANCE_NOTE)
    admit.add_argument("--id", required=True, dest="participant_id", help="participant id")
    admit.add_argument("--jurisdiction", required=True, choices=("HK", "CN"))
    admit.add_argument("--role", required=True, help="e.g. provider, bank")
    admit.add_argument("--public-key", required=True, metavar="HEX|FILE", help="the participant's public key")
    _add_governance_options(admit)
    admit.set_defaults(handler=_guarded(run_admit))

    suspend = _new_parser(subparsers, "suspend", "suspend a participant (governance)",
                          "Suspend a participant: it can no longer submit or query. " + GOVERNANCE_NOTE)
    suspend.add_argument("--id", required=True, dest="participant_id", help="participant id")
    _add_governance_options(suspend)
    suspend.set_defaults(handler=_guarded(run_suspend))

    cosign_parser = _new_parser(subparsers, "cosign", "add a regulator's signature to a governance entry file",
                                "Add the signature(s) of --key to ENTRY (written with --out by admit, suspend, "
                                "revoke --governance or validator add/remove/rotate-key), in place; with --submit, "
                                "send it once signed (a validator change: prints where its epoch starts). "
                                + GOVERNANCE_NOTE)
    cosign_parser.add_argument("entry", metavar="ENTRY", help="the entry file")
    cosign_parser.add_argument("--submit", action="store_true", help="submit the entry after signing")
    cosign_parser.add_argument("--wait-ms", type=wait_ms_arg, default=DEFAULT_SUBMIT_WAIT_MS, metavar="MS")
    _add_rpc(cosign_parser)
    _add_key(cosign_parser, many=True)
    _add_genesis(cosign_parser, " (required: the regulator keys and thresholds)")
    cosign_parser.set_defaults(handler=_guarded(run_cosign))


def _add_governance_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="ENTRY", help="write the (partly) signed entry here and do not submit")
    parser.add_argument("--wait-ms", type=wait_ms_arg, default=DEFAULT_SUBMIT_WAIT_MS, metavar="MS")
    _add_rpc(parser)
    _add_key(parser, many=True)
    _add_genesis(parser, " (required: chain id, regulator keys and thresholds)")


def _guarded(handler: Callable[[Any], int]) -> Callable[[Any], int]:
    """Typed client errors that escaped a handler become one-line CLI errors (exit 2)."""
    @functools.wraps(handler)
    def run(args) -> int:
        try:
            return handler(args)
        except RpcError as exc:
            raise refusal_or_error(exc, "node answered") from None
        except ClientError as exc:
            raise CliError(str(exc)) from None
    return run


def refusal_or_error(exc: RpcError, what: str) -> CliError:
    """A node's error answer as a one-line CLI error: exit 1 if the node refused, 2 if the answer is unknown."""
    code = EXIT_NEGATIVE if exc.code in REFUSAL_CODES else EXIT_ERROR
    return CliError(f"{what} {exc.code}: {exc.message}", code)


def _positive_int(flag: str, high: int, unit: str = ""):
    """argparse type of a count or time in whole units: 1 to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{unit and ' of' + unit}") from None
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"{value}{unit} is out of range: give 1 to {high}{unit}")
        return value
    parse.__name__ = flag          # argparse names the type in some messages
    return parse


wait_ms_arg = _positive_int("--wait-ms", WAIT_MS_MAX, " ms")


def timeout_arg(text: str) -> float:
    """argparse type of --timeout: seconds, above 0 and at most TIMEOUT_S_MAX."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= TIMEOUT_S_MAX:   # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} s is out of range: give more than 0 and at most {TIMEOUT_S_MAX:g}")
    return value


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_ERROR


# -- loading --------------------------------------------------------------------------------------

def _rpc_endpoints(args) -> str:
    value = args.rpc or os.environ.get("BAYLEDGER_RPC")
    if not value:
        raise CliError("no node given: use --rpc HOST:PORT or set BAYLEDGER_RPC")
    return value


def _rpc_source(args) -> str:
    """Where the node addresses came from, for messages: the option or the environment variable."""
    return "--rpc" if args.rpc else "BAYLEDGER_RPC"


_TRUE_WORDS = ("1", "true", "yes")
_FALSE_WORDS = ("", "0", "false", "no")


def _transport(args) -> tuple[str | None, bool]:
    """(ca_file, tls) from --ca / --plaintext, else BAYLEDGER_CA / BAYLEDGER_PLAINTEXT; an option wins
    over the environment, and asking for both at one level is an error."""
    ca, plaintext = getattr(args, "ca", None), getattr(args, "plaintext", False)
    if ca and plaintext:
        raise CliError("--ca and --plaintext: give one (--plaintext turns TLS off)")
    if plaintext:
        return None, False
    if ca:
        return ca, True
    env_plaintext = os.environ.get("BAYLEDGER_PLAINTEXT", "").strip().lower()
    if env_plaintext not in _TRUE_WORDS + _FALSE_WORDS:
        raise CliError(f"BAYLEDGER_PLAINTEXT={env_plaintext!r}: must be 1 (no TLS) or 0")
    env_ca = os.environ.get("BAYLEDGER_CA") or None
    if env_plaintext in _TRUE_WORDS:
        if env_ca:
            raise CliError("BAYLEDGER_CA and BAYLEDGER_PLAINTEXT=1 are both set: unset one")
        return None, False
    return env_ca, True


def _client(args) -> Client:
    ca_file, tls = _transport(args)
    try:
        # A submit waits up to wait_ms at the node before answering: the socket must outlast that.
        return Client(_rpc_endpoints(args), timeout_s=args.timeout + max(0, getattr(args, "wait_ms", 0)) / 1000,
                      ca_file=ca_file, tls=tls, credentials=_credentials(args))
    except ValueError as exc:
        raise CliError(f"{_rpc_source(args)}: {exc}") from None


def _credentials(args) -> Credentials | None:
    """Who the CLI authenticates as: the (first) --key, or BAYLEDGER_KEY, under --as or the key file's id.
    None without a key: the connection stays anonymous and gets the reduced status only."""
    key_option = getattr(args, "key", None)
    path = (key_option[0] if key_option else None) if isinstance(key_option, list) else key_option
    path = path or os.environ.get("BAYLEDGER_KEY")
    if not path:
        return None
    key = _load_key(path)
    identity = getattr(args, "participant", None) or key.id
    if not identity:
        raise CliError(f"key file {path} has no id: pass --as ID")
    return Credentials(identity, key.signing_key)


def _key_path(value: str | None) -> str:
    value = value or os.environ.get("BAYLEDGER_KEY")
    if not value:
        raise CliError("no key given: use --key FILE or set BAYLEDGER_KEY")
    return value


def _load_key(path: str) -> KeyPair:
    try:
        return load_key_file(path)
    except KeyFileError as exc:
        raise CliError(str(exc)) from None


def _keys(args) -> list[KeyPair]:
    paths = args.key if isinstance(args.key, list) and args.key else [_key_path(None if isinstance(args.key, list) else args.key)]
    return [_load_key(p) for p in paths]


def _participant_id(args, key: KeyPair) -> str:
    participant = getattr(args, "participant", None) or key.id
    if not participant:
        raise CliError("the key file has no id: pass --as PARTICIPANT_ID")
    return participant


def _genesis(args, required: bool = True):
    from storage.genesis import Genesis, GenesisError

    path = args.genesis or os.environ.get("BAYLEDGER_GENESIS")
    if not path:
        if required:
            raise CliError("no genesis file given: use --genesis FILE or set BAYLEDGER_GENESIS")
        return None
    try:
        return Genesis.load(path)
    except GenesisError as exc:
        raise CliError(f"genesis file {path}: {exc}") from None
    except OSError as exc:
        raise CliError(f"genesis file {path}: {exc.strerror}") from None


def _read_file(path: str | Path, limit: int, what: str) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise CliError(f"{what} {path} is {size} bytes, above the {limit} limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"{what} {path} is a directory") from None
    except OSError as exc:
        raise CliError(f"{what} {path} cannot be read: {exc.strerror}") from None


def _hex32(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise CliError(f"{what} is not hex") from None
    if len(value) != 32:
        raise CliError(f"{what} must be 32 bytes (64 hex characters), got {len(value)}")
    return value


def _load_receipt(path: str) -> dict:
    data = _read_file(path, receipt_bytes_max, "receipt")
    try:
        receipt = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CliError(f"receipt {path} is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(receipt, dict):
        raise CliError(f"receipt {path} must hold a JSON object")
    for field in ("commitment", "salt"):
        if not isinstance(receipt.get(field), str):
            raise CliError(f"receipt {path}: field {field!r} is missing")
        _hex32(receipt[field], f"receipt {path}: {field}")
    return receipt


def _call(client: Client, method: str, *params: Any) -> Any:
    try:
        return client.call(method, *params)
    except ConnectionFailed as exc:
        raise CliError(str(exc)) from None


def _time_text(time_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    try:
        create_private_file(path, data, RECEIPT_MODE, overwrite=overwrite)
    except FileExistsError:
        raise CliError(f"{path} already exists (use --force to overwrite)") from None
    except OSError as exc:
        raise CliError(f"{path} cannot be written: {exc.strerror}") from None


def _write_file(path: str | Path, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise CliError(f"{path} cannot be written: {exc.strerror}") from None


def _submit_entry(client: Client, entry: bytes, wait_ms: int) -> dict:
    """Submit and wait; raise CliError for errors; a refused or rejected entry comes back as a result."""
    try:
        return client.call("submit", entry, {"wait": True, "timeout_ms": max(0, wait_ms)})
    except ConnectionFailed as exc:
        raise CliError(str(exc)) from None
    except RpcError as exc:
        if exc.code in (ERROR_BAD_ENTRY, ERROR_ALREADY_COMMITTED, "rejected"):
            return {"status": "rejected", "reason": exc.message, "code": exc.code}
        if exc.code == ERROR_TIMEOUT:
            raise CliError(f"not committed within {wait_ms} ms; the entry may still commit") from None
        raise refusal_or_error(exc, "node refused:") from None


# -- submit ---------------------------------------------------------------------------------------

def run_submit(args) -> int:
    key = _load_key(_key_path(args.key))
    participant = _participant_id(args, key)
    document = _read_file(args.file, document_bytes_max, "document")
    receipt_path = Path(args.receipt or f"{args.file}.receipt.json")
    if receipt_path.exists() and not args.force:
        raise CliError(f"{receipt_path} already exists (use --force to overwrite; its salt would be lost)")
    genesis = _genesis(args, required=False)
    with _client(args) as client:
        chain_id = genesis.chain_id if genesis is not None else _call(client, "status")["chain_id"]
        jurisdiction = args.jurisdiction
        if jurisdiction is None:
            try:
                jurisdiction = _call(client, "participant", participant)["jurisdiction"]
            except RpcError as exc:
                refusal = refusal_or_error(exc, f"cannot submit as {participant!r}:")
                raise CliError(f"{refusal}; the id comes from the --key file, and only an admitted participant's "
                               f"key submits commitments (not a validator's or a regulator's)", refusal.code) from None
        commitment, salt = seal_document(document)
        try:
            entry = build_commit(key.signing_key, participant, chain_id, commitment, kind=args.kind,
                                 jurisdiction=jurisdiction, expires_ms=args.expires_ms)
        except Exception as exc:  # the codec refuses values it cannot encode (e.g. a huge expiry)
            raise CliError(f"cannot build the entry: {exc}") from None
        receipt = {
            "commitment": commitment.hex(), "salt": salt.hex(), "chain_id": chain_id, "author": participant,
            "kind": args.kind, "jurisdiction": jurisdiction, "expires_ms": args.expires_ms,
            "entry_id": hashlib.sha256(entry).hexdigest(), "status": "pending",
            "height": None, "leaf_index": None,
        }
        # Written before sending: if the answer is lost, the salt is not.
        _write_private(receipt_path, _receipt_bytes(receipt), overwrite=args.force)
        pending = (f"the salt is kept in {receipt_path}, status pending; later, "
                   f"`bayledger receipt refresh {receipt_path}` records the commit")
        try:
            answer = _submit_entry(client, entry, args.wait_ms)
        except CliError as exc:
            raise CliError(f"{exc} ({pending})") from None
        except KeyboardInterrupt:
            # Sent, perhaps: the entry may commit. One line, the usual exit status of Ctrl-C.
            raise CliError(f"interrupted; the entry may still commit ({pending})", EXIT_INTERRUPTED) from None
    if answer.get("status") != "committed":
        receipt_path.unlink(missing_ok=True)
        reason = answer.get("reason") or answer.get("status")
        print(f"REFUSED: {reason}{_what_is_accepted(reason, genesis)}")
        return EXIT_NEGATIVE
    receipt.update(status="committed", height=answer["height"], leaf_index=answer["leaf_index"])
    _write_private(receipt_path, _receipt_bytes(receipt), overwrite=True)
    print(f"COMMITTED at height {answer['height']}, leaf {answer['leaf_index']}; commitment {commitment.hex()}")
    print(f"receipt: {receipt_path} (holds the salt: keep it with the document)")
    return EXIT_OK


def _what_is_accepted(reason: str, genesis) -> str:
    """For a refusal the caller can fix by choosing another value: what this chain accepts."""
    if reason.endswith("unknown-kind"):
        kinds = f"this chain's kinds are {', '.join(genesis.entry_kinds)}" if genesis is not None else (
            "the genesis file lists this chain's kinds under entry_kinds")
        return f" ({kinds}: choose one with --kind)"
    return ""


def _receipt_bytes(receipt: dict) -> bytes:
    return (json.dumps(receipt, indent=2, sort_keys=True) + "\n").encode()


# -- receipt refresh ------------------------------------------------------------------------------

def run_receipt_refresh(args) -> int:
    genesis = _genesis(args)
    key = _load_key(_key_path(args.key))
    participant = _participant_id(args, key)
    receipt = _load_receipt(args.receipt)
    if receipt.get("chain_id") not in (None, genesis.chain_id):
        raise CliError(f"receipt {args.receipt} is for chain {receipt['chain_id']!r}, the genesis file for "
                       f"{genesis.chain_id!r}: give the genesis of the receipt's chain")
    if receipt.get("status") == "committed":
        print(f"COMMITTED at height {receipt.get('height')}, leaf {receipt.get('leaf_index')} (already in {args.receipt})")
        return EXIT_OK
    commitment = bytes.fromhex(receipt["commitment"])
    with _client(args) as client:
        proof = _ask_for_proof(client, key, participant, genesis, commitment)
        endpoint = client.endpoint
        height = _call(client, "status").get("height") if proof is None else None
    if proof is None:
        print(f"PENDING: commitment {commitment.hex()} is not on the ledger (as of height {height} at {endpoint}). "
              f"If it never appears, the entry was lost: submit the document again (a new salt, a new receipt)")
        return EXIT_NEGATIVE
    verdict = verify_match_proof(proof, genesis, commitment)
    if verdict.status == "invalid":
        return _print_verdict(verdict, commitment)
    details = verdict.details
    receipt.update(status="committed", height=details["height"], leaf_index=details["leaf_index"])
    _write_private(Path(args.receipt), _receipt_bytes(receipt), overwrite=True)
    print(f"COMMITTED at height {details['height']}, leaf {details['leaf_index']}; {args.receipt} updated")
    return EXIT_OK


# -- verify and proof verify ----------------------------------------------------------------------

_DURATION_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
duration_digits_max = 12                      # no bound needs more; keeps int() of the text cheap
status_age_ms_max = 365 * 86_400_000          # a year: a freshness bound beyond that bounds nothing


def parse_duration_ms(text: str) -> int:
    """--max-status-age: a positive whole number and a unit, s m h or d (90s, 10m, 24h, 7d), as ms."""
    digits, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS_MS or not (digits.isascii() and digits.isdigit()) or len(digits) > duration_digits_max:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a duration: a whole number and a unit s, m, h or d "
                                         "(e.g. 90s, 10m, 24h, 7d)")
    value_ms = int(digits) * _DURATION_UNITS_MS[unit]
    if value_ms <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a status age bound must be above zero")
    if value_ms > status_age_ms_max:
        raise argparse.ArgumentTypeError(f"{text!r} is above the limit of {status_age_ms_max // 86_400_000}d")
    return value_ms


def _duration_text(value_ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if value_ms % _DURATION_UNITS_MS[unit] == 0:
            return f"{value_ms // _DURATION_UNITS_MS[unit]}{unit}"
    return f"{value_ms}ms"


def _add_max_status_age(parser: argparse.ArgumentParser) -> None:
    from storage.proofs import MAX_STATUS_AGE_MS_DEFAULT

    parser.add_argument(
        "--max-status-age", dest="max_status_age_ms", type=parse_duration_ms, default=MAX_STATUS_AGE_MS_DEFAULT,
        metavar="DURATION",
        help="refuse a match whose status section (the serving node's latest certified block, which proves the "
             "commitment not revoked) is older than this: STALE, exit 1. A whole number with s, m, h or d, e.g. "
             f"90s, 10m, 24h, 7d (default {_duration_text(MAX_STATUS_AGE_MS_DEFAULT)}, at most "
             f"{_duration_text(status_age_ms_max)})")


def _print_verdict(verdict, commitment: bytes) -> int:
    details = verdict.details
    if verdict.status == "invalid":
        print(f"INVALID PROOF: check {verdict.check} failed: {verdict.message}")
        if verdict.check == "format":
            print("note: a match proof file is what `bayledger verify --proof-out FILE` saves (docs/PROTOCOL.md §5)",
                  file=sys.stderr)
        return EXIT_ERROR
    if verdict.status == "stale":
        print(f"STALE: {verdict.message}")
        print("note: the proof holds, but says nothing of a revocation since; ask a node that is up to date, or "
              "accept an older status with --max-status-age", file=sys.stderr)
        return EXIT_NEGATIVE
    where = (f"height {details['height']} at {_time_text(details['time_ms'])} (leaf {details['leaf_index']}, "
             f"author {details['author']}, {details['jurisdiction']}, kind {details['kind']})")
    # The status section proves (non-)revocation as of the serving node's latest block: say which.
    as_of = f"as of height {details['status_height']} ({_time_text(details['status_time_ms'])})"
    if verdict.status == "match":
        print(f"MATCH: commitment {commitment.hex()} recorded at {where}; not revoked {as_of}")
        return EXIT_OK
    if verdict.status == "revoked":
        print(f"REVOKED: at height {details['revoked_height']} at {_time_text(details['revoked_time_ms'])} by "
              f"{details['revoked_by']} ({details['revoke_reason']}); recorded at {where}")
        return EXIT_NEGATIVE
    if verdict.status == "expired":
        print(f"EXPIRED: at {_time_text(details['expires_ms'])}; recorded at {where}; not revoked {as_of}")
        return EXIT_NEGATIVE
    raise AssertionError(f"unknown verdict {verdict.status}")


def _ask_for_proof(client: Client, key: KeyPair, participant: str, genesis, commitment: bytes) -> bytes | None:
    """The node's match proof for `commitment`, or None if it has no such commitment. The query is
    built here, per call: it names the node it is for."""
    try:
        proof = match(client, key.signing_key, participant, genesis.chain_id, commitment)
    except RpcError as exc:
        raise refusal_or_error(exc, f"{client.endpoint} refused the query:") from None
    if proof is None:
        return None
    if not isinstance(proof, bytes):
        raise CliError(f"{client.endpoint} answered match with something that is not a proof")
    return proof


def _ask_two_nodes(args, endpoints: list[str], key: KeyPair, participant: str, genesis,
                   commitment: bytes) -> list[tuple[str, bytes | None]]:
    """(endpoint, proof or None) from the first two of `endpoints` that answer, each asked on its own
    connection; a node that cannot be reached is skipped for the next."""
    answers: list[tuple[str, bytes | None]] = []
    failures: list[str] = []
    for endpoint in endpoints:
        if len(answers) == 2:
            break
        one = argparse.Namespace(**{**vars(args), "rpc": endpoint})
        try:
            with _client(one) as client:
                answers.append((endpoint, _ask_for_proof(client, key, participant, genesis, commitment)))
        except ConnectionFailed as exc:
            failures.append(str(exc))
    if len(answers) < 2:
        raise CliError(f"only {len(answers)} of {len(endpoints)} nodes answered; two are needed to cross-check "
                       f"whether the commitment is revoked ({'; '.join(failures)})")
    return answers


def run_verify(args) -> int:
    from storage.proofs import revocation_disagreement

    genesis = _genesis(args)
    key = _load_key(_key_path(args.key))
    participant = _participant_id(args, key)
    document = _read_file(args.file, document_bytes_max, "document")
    receipt = None
    if args.receipt:
        receipt = _load_receipt(args.receipt)
        salt = bytes.fromhex(receipt["salt"])
    else:
        salt = _hex32(args.salt, "--salt")
    commitment, _ = seal_document(document, salt)
    if receipt is not None and receipt["commitment"] != commitment.hex():
        print(f"note: {args.file} does not hash to the receipt's commitment (a different or altered document)",
              file=sys.stderr)
    # Several nodes: two are asked, so one node alone cannot hide a revocation behind an old status.
    endpoints = list(dict.fromkeys(item.strip() for item in _rpc_endpoints(args).split(",") if item.strip()))
    if not endpoints:
        raise CliError("--rpc: no node given (HOST:PORT[,HOST:PORT...])")
    if len(endpoints) >= 2:
        answers = _ask_two_nodes(args, endpoints, key, participant, genesis, commitment)
    else:
        with _client(argparse.Namespace(**{**vars(args), "rpc": endpoints[0]})) as client:
            answers = [(str(client.endpoint), _ask_for_proof(client, key, participant, genesis, commitment))]
            if answers[0][1] is None:
                # Say as of when: a node that lags behind may not have a just-committed entry yet.
                try:
                    height = client.call("status").get("height")
                except ClientError:
                    height = "unknown"
                print(f"NO MATCH: commitment {commitment.hex()} is not on the ledger "
                      f"(as of height {height} at {client.endpoint})")
                return EXIT_NEGATIVE
    found = [(endpoint, proof) for endpoint, proof in answers if proof is not None]
    if not found:
        print(f"NO MATCH: commitment {commitment.hex()} is not on the ledger "
              f"(at {' and '.join(endpoint for endpoint, _ in answers)})")
        return EXIT_NEGATIVE
    judged = [(endpoint, proof, verify_match_proof(proof, genesis, commitment, max_status_age_ms=args.max_status_age_ms))
              for endpoint, proof in found]
    invalid = [item for item in judged if item[2].status == "invalid"]
    if invalid:
        endpoint, proof, verdict = invalid[0]
        if args.proof_out:
            _write_file(args.proof_out, proof)     # the evidence of a node serving a bad proof
        if len(answers) > 1:
            print(f"note: the proof from {endpoint} is invalid", file=sys.stderr)
        return _print_verdict(verdict, commitment)
    if len(found) < len(answers):
        missing = next(endpoint for endpoint, proof in answers if proof is None)
        endpoint, _, verdict = judged[0]
        print(f"DISAGREE: {missing} has no record of commitment {commitment.hex()}; {endpoint} proves it recorded "
              f"at height {verdict.details['height']} (a node that lags behind may not have it yet: ask again)")
        return EXIT_NEGATIVE
    disagreement = revocation_disagreement([(endpoint, verdict) for endpoint, _, verdict in judged])
    if disagreement is not None:
        print(f"DISAGREE: the nodes contradict each other on whether commitment {commitment.hex()} is revoked: "
              f"{disagreement}")
        return EXIT_NEGATIVE
    # They agree: the proof with the newest status is the best news (the freshness bound applies to it).
    _, proof, verdict = max(judged, key=lambda item: item[2].details["status_height"])
    if args.proof_out:
        _write_file(args.proof_out, proof)
    return _print_verdict(verdict, commitment)


def run_proof_verify(args) -> int:
    from consensus import codec

    genesis = _genesis(args)
    proof = _read_file(args.proof, proof_file_bytes_max, "proof file")
    if args.commitment:
        commitment = _hex32(args.commitment, "--commitment")
    elif args.receipt:
        commitment = bytes.fromhex(_load_receipt(args.receipt)["commitment"])
    elif args.document:
        if not args.salt:
            raise CliError("--document needs --salt")
        commitment, _ = seal_document(_read_file(args.document, document_bytes_max, "document"),
                                      _hex32(args.salt, "--salt"))
    else:
        commitment = _commitment_in(proof, codec)
        if commitment is None:
            print("INVALID PROOF: check format failed: no commitment can be read from the proof")
            return EXIT_ERROR
    return _print_verdict(verify_match_proof(proof, genesis, commitment, max_status_age_ms=args.max_status_age_ms),
                          commitment)


def _commitment_in(proof: bytes, codec) -> bytes | None:
    """The commitment a proof's entry names (no check: verification follows)."""
    try:
        body = codec.unpack(codec.unpack(proof)["entry"])["body"]
        value = codec.unpack(body)["commitment"]
    except Exception:  # any malformed proof: reported as an invalid format by the caller
        return None
    return value if isinstance(value, bytes) and len(value) == 32 else None


# -- revoke, status -------------------------------------------------------------------------------

def run_revoke(args) -> int:
    commitment = _revoke_target(args)
    if args.governance:
        return _run_governance_revoke(args, commitment)
    if args.out:
        raise CliError("--out is for a governance revoke (--governance), which regulators co-sign")
    keys = _keys(args)
    if len(keys) != 1:
        raise CliError(f"a participant's revoke is signed with one --key, not {len(keys)} (several are for --governance)")
    key = keys[0]
    participant = _participant_id(args, key)
    genesis = _genesis(args, required=False)
    if genesis is not None and participant in genesis.governance.by_id:
        raise CliError(f"{participant!r} is a regulator key: a revoke by the regulators takes --governance")
    with _client(args) as client:
        chain_id = genesis.chain_id if genesis is not None else _call(client, "status")["chain_id"]
        try:
            entry = build_revoke(key.signing_key, participant, chain_id, commitment, args.reason)
        except Exception as exc:
            raise CliError(f"cannot build the entry: {exc}") from None
        answer = _submit_entry(client, entry, args.wait_ms)
    return _print_answer(answer, f"revoke of {commitment.hex()}")


def _run_governance_revoke(args, commitment: bytes) -> int:
    if args.participant:
        raise CliError("--as names a participant; a --governance revoke is signed by regulator keys")
    genesis = _genesis(args)
    genesis = _with_current_governance(args, genesis)
    signers = _governance_signers(args, genesis)
    entry = _build_governance(build_governance_revoke, signers, genesis.chain_id, commitment, args.reason)
    return _finish_governance(args, genesis, entry, f"revoke of {commitment.hex()} by governance", args.out)


def _revoke_target(args) -> bytes:
    if args.commitment:
        commitment = _hex32(args.commitment, "--commitment")
    elif args.receipt:
        commitment = bytes.fromhex(_load_receipt(args.receipt)["commitment"])
    elif args.file and args.salt:
        commitment, _ = seal_document(_read_file(args.file, document_bytes_max, "document"),
                                      _hex32(args.salt, "--salt"))
    else:
        raise CliError("say which commitment: --receipt R, --commitment HEX, or FILE --salt HEX")
    return commitment


def _print_answer(answer: dict, what: str) -> int:
    if answer.get("status") == "committed":
        print(f"COMMITTED: {what} at height {answer['height']}, leaf {answer['leaf_index']}")
        return EXIT_OK
    print(f"REFUSED: {what}: {answer.get('reason') or answer.get('status')}")
    return EXIT_NEGATIVE


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def run_status(args) -> int:
    with _client(args) as client:
        try:
            status = _call(client, "status")
        except RpcError as exc:
            raise refusal_or_error(exc, "node answered") from None
        endpoint = client.endpoint
    status = _printable(status)
    if args.json:
        print(json.dumps(status, sort_keys=True))
        return EXIT_OK
    where = f" ({status['jurisdiction']})" if "jurisdiction" in status else ""
    print(f"node {status.get('node_id')}{where} at {endpoint}, chain {status.get('chain_id')}")
    for field in ("height", "epoch", "view", "primary", "tree_size", "tree_root", "peers", "mempool_size", "version"):
        if field in status:    # an anonymous caller gets the reduced status (docs/PROTOCOL.md §8)
            print(f"  {field}: {status[field]}")
    return EXIT_OK


def run_queries(args) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    if _credentials(args) is None:
        raise CliError("no key given: the query log is for regulators and auditors (--key FILE or BAYLEDGER_KEY)")
    since_ms, after_seq = max(0, int(time.time() * 1000) - args.since), 0
    printed = 0
    with _client(args) as client:
        while printed < args.limit:
            page = _call(client, "queries", since_ms, min(args.limit - printed, QUERY_LOG_PAGE_RECORDS_MAX), after_seq)
            for record in page["records"]:
                print(json.dumps(record, sort_keys=True))
            printed += len(page["records"])
            if page["next"] is None or not page["records"]:
                break
            since_ms, after_seq = page["next"]
    return EXIT_OK


# -- governance -----------------------------------------------------------------------------------

def _with_current_governance(args, genesis, client=None):
    """`genesis` with the regulator keys of the chain's current epoch: they change with reconfigurations
    (`bayledger governance rotate`), so they are asked of the node when one is given (--rpc, --node or
    BAYLEDGER_RPC; or `client`); without a node, or one that cannot tell, genesis's (the node judges the
    entry when it is sent)."""
    import dataclasses

    from storage.genesis import GenesisError, governance_from_wire

    if client is None and not (getattr(args, "rpc", None) or getattr(args, "node", None)
                               or os.environ.get("BAYLEDGER_RPC")):
        return genesis
    try:
        if client is None:
            with _client(args) as own:
                answer = own.call("epochs")
        else:
            answer = client.call("epochs")
        current = next(e for e in answer["epochs"] if e["epoch"] == answer["current_epoch"])
        return dataclasses.replace(genesis, governance=governance_from_wire(current["governance"]))
    except (RpcError, ClientError, GenesisError, KeyError, TypeError, StopIteration, OSError):
        # A node that cannot tell (unreachable, older): genesis's keys; the node judges what is sent.
        return genesis


def _governance_signers(args, genesis) -> list[tuple[str, Any]]:
    signers = []
    for key in _keys(args):
        if key.id is None or key.id not in genesis.governance.by_id:
            raise CliError(f"key {key.id!r} is not a governance key of this genesis "
                           f"({', '.join(sorted(genesis.governance.by_id))})")
        if genesis.governance.by_id[key.id].public_key != key.public_key:
            raise CliError(f"key file for {key.id!r} does not hold the public key genesis names for it")
        signers.append((key.id, key.signing_key))
    return signers


def _missing_signatures(entry: bytes, genesis) -> list[str]:
    from storage.entries import decode_entry

    signers = {by for by, _ in decode_entry(entry).signatures}
    missing = []
    for jurisdiction, keys in genesis.governance.keys.items():
        have = sum(1 for k in keys if k.id in signers)
        need = genesis.governance.thresholds[jurisdiction]
        if have < need:
            missing.append(f"{jurisdiction} needs {need - have} more")
    return missing


def _finish_governance(args, genesis, entry: bytes, what: str, out: str | None) -> int:
    missing = _missing_signatures(entry, genesis)
    if out:
        _write_file(out, entry)
        state = "fully signed" if not missing else "still to co-sign: " + "; ".join(missing)
        print(f"wrote {what} to {out} ({state})")
        return EXIT_OK
    _require_signatures(entry, genesis, what)
    with _client(args) as client:
        answer = _submit_entry(client, entry, args.wait_ms)
    return _print_answer(answer, what)


def _require_signatures(entry: bytes, genesis, what: str) -> None:
    """Raise unless the entry meets every jurisdiction's threshold (else the ledger refuses it:
    governance-threshold), saying how to gather the rest."""
    missing = _missing_signatures(entry, genesis)
    if missing:
        raise CliError(f"{what} lacks signatures ({'; '.join(missing)}); nothing was sent. Write it with --out ENTRY, "
                       f"then the other regulator runs `bayledger cosign ENTRY --key THEIRS --submit`; or pass "
                       f"every signer's --key at once")


def _build_governance(builder: Callable[..., bytes], *arguments: Any) -> bytes:
    try:
        return builder(*arguments)
    except Exception as exc:  # the codec refuses values it cannot encode
        raise CliError(f"cannot build the entry: {exc}") from None


def run_admit(args) -> int:
    from storage.genesis import GenesisError, Participant, check_participant_fields

    genesis = _genesis(args)
    genesis = _with_current_governance(args, genesis)
    signers = _governance_signers(args, genesis)
    try:
        public_key = load_public_key(args.public_key)
    except KeyFileError as exc:
        raise CliError(f"--public-key: {exc}") from None
    try:
        participant = check_participant_fields({"id": args.participant_id, "jurisdiction": args.jurisdiction,
                                                "role": args.role, "public_key": public_key}, "participant")
    except GenesisError as exc:
        raise CliError(str(exc)) from None
    assert isinstance(participant, Participant)
    entry = _build_governance(build_admit, signers, genesis.chain_id, participant)
    return _finish_governance(args, genesis, entry, f"admit of {args.participant_id}", args.out)


def run_suspend(args) -> int:
    genesis = _genesis(args)
    genesis = _with_current_governance(args, genesis)
    signers = _governance_signers(args, genesis)
    entry = _build_governance(build_suspend, signers, genesis.chain_id, args.participant_id)
    return _finish_governance(args, genesis, entry, f"suspend of {args.participant_id}", args.out)


def run_cosign(args) -> int:
    from storage.entries import EntryError, decode_entry

    genesis = _genesis(args)
    genesis = _with_current_governance(args, genesis)
    signers = _governance_signers(args, genesis)
    entry = _read_file(args.entry, entry_file_bytes_max, "entry file")
    try:
        decoded = decode_entry(entry)
    except EntryError as exc:
        raise CliError(f"entry file {args.entry}: {exc}") from None
    if not decoded.is_governance:
        raise CliError(f"entry file {args.entry} is not a governance entry")
    if decoded.chain_id != genesis.chain_id:
        raise CliError(f"entry file {args.entry} is for chain {decoded.chain_id!r}, not {genesis.chain_id!r}")
    for signer_id, signing_key in signers:
        entry = cosign(entry, signer_id, signing_key)
    what = f"{decoded.type} entry"
    if not args.submit:
        return _finish_governance(args, genesis, entry, what, args.entry)
    _write_file(args.entry, entry)
    if decoded.type == "reconfigure":
        from node.cli.validators import submit_reconfigure   # it imports this module

        return submit_reconfigure(args, genesis, entry, what)
    return _finish_governance(args, genesis, entry, what, None)


__all__ = ["register", "ClientError"]
