"""`python -m testnet`: run a local Bayledger network of real daemon processes.

    python -m testnet up [--validators 4|7|10] [--base-port P] [--link-delay-ms D] [--link-loss P] [--dir D]
    python -m testnet status [--json] [--dir D]
    python -m testnet kill NODE | restart NODE | logs NODE [--dir D]
    python -m testnet down [--dir D]
    python -m testnet byzantine NODE --behaviour B [--dir D]
    python -m testnet partition 'A,B|C,D' [--dir D]   cut the links between groups (needs --link-delay-ms)
    python -m testnet heal [--dir D]                  restore them
    python -m testnet add-validator NAME --jurisdiction HK|CN [--dir D]   add a validator, wait for its epoch
    python -m testnet remove-validator NAME [--dir D]                     remove one, then stop its node
    python -m testnet rotate-key NAME [--dir D]                           give one a new key

The validator-set commands (issue 17) submit a `reconfigure` entry signed by the testnet's regulator
keys and wait until the new epoch has started (a testnet's genesis margin is 64 heights: seconds).
See docs/OPERATIONS.md, "Testnet: changing the validator set".
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import textwrap
from pathlib import Path

# Run outside the project's venv, the imports below would end in a ModuleNotFoundError traceback.
_MISSING = [name for name in ("msgpack", "trio", "nacl", "plyvel") if importlib.util.find_spec(name) is None]
if _MISSING:
    sys.exit(f"python -m testnet: {', '.join(_MISSING)} not installed for {sys.executable}.\n"
             f"Run `make testnet` (it builds .venv and uses it), or `source .venv/bin/activate` first "
             f"(after `make` has built .venv).")

from node.cli import run_main

from . import control, links
from .generate import GenerateError
from .link_proxy import DELAY_MS_MAX
from .links import LinkError, LinkUsageError, check_link_settings
from .network import VALIDATOR_COUNTS, ManifestError
from .ports import PortError
from .supervisor import SupervisorError


def _link_number(kind: type, check):
    """An argparse type: `kind` checked by `check` (a usage error, exit status 2, names the rule)."""
    def parse(text: str):
        try:
            value = kind(text)
            check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        except LinkUsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m testnet", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--dir", type=Path, default=control.DEFAULT_RUN_DIR,
                         help=f"run directory (default {control.DEFAULT_RUN_DIR})")
        return sub

    up = add("up", "generate (first time) and start the network, then submit and verify a sample commitment")
    up.add_argument("--validators", type=int, choices=VALIDATOR_COUNTS, default=None,
                    help=f"number of validators for a new network (default {control.DEFAULT_VALIDATORS})")
    up.add_argument("--base-port", type=int, default=None,
                    help=f"first port: p2p = P+i, rpc = P+100+i, metrics = P+200+i (default {control.DEFAULT_BASE_PORT})")
    up.add_argument("--no-demo", action="store_true", help="skip the sample submit and verify")
    up.add_argument("--force", action="store_true",
                    help="use a base port whose ports fall in the kernel's range for outgoing connections")
    up.add_argument("--link-delay-ms", type=_link_number(float, lambda v: check_link_settings(v, 0.0)), default=0.0,
                    metavar="D", help=f"a new network's validator links go through the link proxy, which delays "
                    f"each direction by D ms (0..{DELAY_MS_MAX:.0f}; a round trip takes 2 x D)")
    up.add_argument("--link-loss", type=_link_number(float, lambda v: check_link_settings(0.0, v)), default=0.0,
                    metavar="P", help="with probability P (0 <= P < 1) a chunk is \"lost\": delivered one "
                    "retransmission timeout late, max(200 ms, 2 x D), with everything behind it (docs/TESTNET.md)")
    up.add_argument("--link-seed", type=int, default=None, metavar="N",
                    help="seed of the proxy's loss draws (default: random, recorded in testnet.json)")
    add("down", "stop every node (SIGTERM, then SIGKILL after a deadline); data is kept")
    add("partition", "cut the validator links between groups of nodes (a network with --link-delay-ms or "
        "--link-loss): open connections closed, new ones refused until `heal`").add_argument(
        "groups", metavar="A,B|C,D", help="every member in exactly one group, groups separated by |")
    add("heal", "restore every validator link cut by `partition`")
    status = add("status", "height, view, epoch and peers of each node; joining and removed validators marked")
    status.add_argument("--json", action="store_true", help="print the machine-readable view")
    for name, help_text in (("kill", "SIGKILL one node (a crash)"),
                            ("restart", "stop one node if it runs, start it, wait until it answers")):
        add(name, help_text).add_argument("node", metavar="NODE")
    from . import byzantine as byz

    byzantine = commands.add_parser(
        "byzantine", help="stop one node's daemon and run a Byzantine validator with its key in its place",
        description="Stop NODE's honest daemon and run in its place a process that holds NODE's real key, "
                    "listens on its p2p port, completes the real handshake with the other validators, speaks "
                    "the real protocol and misbehaves as --behaviour says. Its pid is in nodes/NODE/byzantine.pid, "
                    "its log in nodes/NODE/byzantine.log, its counters in nodes/NODE/byzantine-stats.json. "
                    "`python -m testnet restart NODE` stops it and brings the honest daemon back; `kill` and "
                    "`down` stop it too.",
        epilog="behaviours:\n" + "\n".join(
            f"  {name}\n" + textwrap.fill(text, 100, initial_indent="      ", subsequent_indent="      ")
            for name, text in byz.BEHAVIOURS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    byzantine.add_argument("--dir", type=Path, default=control.DEFAULT_RUN_DIR,
                           help=f"run directory (default {control.DEFAULT_RUN_DIR})")
    byzantine.add_argument("node", metavar="NODE")
    byzantine.add_argument("--behaviour", "--behavior", required=True, choices=list(byz.BEHAVIOURS), metavar="B",
                           help=f"what it does, one of: {', '.join(byz.BEHAVIOURS)} (below)")
    byz.add_behaviour_options(byzantine)
    add_validator = add("add-validator", "add a validator: new key, ports and config (joining = true), the "
                        "reconfiguration signed by the regulators, start it, wait until its epoch has started")
    add_validator.add_argument("node", metavar="NAME")
    # Checked by the command, not argparse's choices: one clear line instead of a usage block.
    add_validator.add_argument("--jurisdiction", required=True, metavar="HK|CN")
    add("remove-validator", "remove a validator: submit the removal, wait for the epoch, stop its node and "
        "mark it removed").add_argument("node", metavar="NAME")
    add("rotate-key", "give a validator a new key: restart it holding the new key as a spare, submit the "
        "rotation, wait for the epoch, make the new key its key.json").add_argument("node", metavar="NAME")
    logs = add("logs", "print the end of one node's log")
    logs.add_argument("node", metavar="NODE")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, "python -m testnet")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            return control.up(args.dir, args.validators, args.base_port, demo=not args.no_demo, force=args.force,
                              link_delay_ms=args.link_delay_ms, link_loss=args.link_loss, link_seed=args.link_seed)
        if args.command == "down":
            return control.down(args.dir)
        if args.command == "status":
            return control.status(args.dir, args.json)
        if args.command == "kill":
            return control.kill(args.dir, args.node)
        if args.command == "restart":
            return control.restart(args.dir, args.node)
        if args.command == "byzantine":
            options = []
            for flag, value in (("--interval", args.interval), ("--rate", args.rate), ("--authors", args.authors),
                                ("--seed", args.seed)):
                if value is not None:
                    options += [flag, str(value)]
            if args.count != 3000:
                options += ["--count", str(args.count)]
            return control.byzantine(args.dir, args.node, args.behaviour, options)
        if args.command in ("add-validator", "remove-validator", "rotate-key"):
            return _membership_command(args)
        if args.command == "logs":
            return control.logs(args.dir, args.node, args.lines, args.follow)
        if args.command == "partition":
            return links.partition(args.dir, args.groups)
        if args.command == "heal":
            return links.heal(args.dir)
    except LinkUsageError as exc:
        print(f"testnet {args.command}: {exc}", file=sys.stderr)
        return 2
    except (control.TestnetError, GenerateError, LinkError, ManifestError, PortError, SupervisorError) as exc:
        print(f"testnet {args.command}: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


def _membership_command(args) -> int:
    from . import membership

    if args.command == "add-validator":
        return membership.add_validator(args.dir, args.node, args.jurisdiction)
    if args.command == "remove-validator":
        return membership.remove_validator(args.dir, args.node)
    return membership.rotate_key(args.dir, args.node)


if __name__ == "__main__":
    sys.exit(main())
