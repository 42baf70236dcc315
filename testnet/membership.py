"""`add-validator`, `remove-validator` and `rotate-key`: change a running testnet's validator set (issue 17).

Each submits a `reconfigure` governance entry signed by the testnet's two regulator keys
(keys/governance-HK.json, keys/governance-CN.json) with the operator CLI, `bayledger validator
add | remove | rotate-key`, run in-process: the CLI checks the change against the chain's latest
set first (the ledger's own rule) and prints ACCEPTED or REFUSED with the reason code. The new set
takes over at height COMMIT + margin + 1 (the testnet's genesis sets a margin of 64 heights; an
idle chain fills empty blocks while an epoch is pending, so it gets there in seconds). Each command
then waits, with progress, until that epoch has started:

- add-validator: the new node gets the next free ports, its key, RPC certificate and a config with
  `joining = true`; it starts (empty data dir) after the change is accepted and catches up from genesis.
  Refused on a network with link delay or loss (`up --link-delay-ms`): the link proxy's links are fixed.
- remove-validator: once the epoch without it has started, its daemon is stopped by pid and the
  manifest marks it removed: `status` shows it so and `up` never starts it again.
- rotate-key: the new key (nodes/NAME/key-next.json) goes into the node's `spare_key_files` and the
  node restarts holding both keys; then the rotation is submitted. Once the new epoch has started
  the key files are swapped on disk (key.json becomes the new key, the old one
  key-retired-EPOCH.json) and the config names key.json with no spare: the running daemon keeps the
  keys it loaded, and any later restart starts it with the new key only.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from consensus.epochs import ReconfigurationError, RemoveValidator
from node.client import Credentials
from node.keys import load_key_file

from . import rpc
from .control import (TestnetError, dir_option, node_ports, node_status, public_status, stop_byzantine,
                      tail, wait_until_ready)
from .generate import check_config, keygen, make_rpc_certificate, rewrite_keys, run_bayledger, write_node_config
from .network import ADDED, HOST, JOINING, JURISDICTIONS, REMOVED, Network, NodeEntry
from .ports import check_ports_free, plan_ports, validators_max
from .supervisor import running_pid, start_node, stop_node

epoch_wait_timeout_s = 180.0      # a change's epoch starts (margin 64 heights) and a joiner catches up
progress_interval_s = 2.0         # a progress line at most this often while waiting
submit_wait_ms = 30_000           # how long the node waits for the reconfiguration's commit
rpc_timeout_s = 5.0
poll_interval_s = 0.25
NEXT_KEY_NAME = "key-next.json"
REFUSAL_CODE = re.compile(r"\b(reconfigure-[a-z-]+|governance-threshold)\b")


# ---------------------------------------------------------------- shared steps


def answering_member(network: Network) -> NodeEntry:
    """A member that answers RPC (to submit through); TestnetError if none does."""
    for node in network.members:
        if running_pid(node.pid_path, node.config_path) is not None and node_status(node) is not None:
            return node
    raise TestnetError(f"the testnet in {network.run_dir} is down (no validator answers); start it with "
                       f"`python -m testnet up{dir_option(network.run_dir)}`")


def submit_change(network: Network, via: NodeEntry, args: list[str]) -> dict:
    """Run `bayledger validator ARGS` through VIA signed by both regulators; the epoch it scheduled
    ({"epoch", "start_height", "scheduled_at", ...}). TestnetError with the reason code if refused."""
    keys = [arg for jurisdiction in JURISDICTIONS for arg in ("--key", network.governance[jurisdiction])]
    command = ["validator", *args, *keys, "--genesis", str(network.genesis_path), "--node", via.rpc,
               "--ca", str(network.ca_path), "--wait-ms", str(submit_wait_ms)]
    code, out, err = run_bayledger(command)
    text = (out + err).strip()
    if code != 0 or not text.startswith("ACCEPTED"):
        found = REFUSAL_CODE.search(text)
        reason = found.group(1) if found else f"exit {code}"
        raise TestnetError(f"reconfiguration refused: {reason}: {_one_line(text)}")
    print(f"  {_one_line(text)}")
    return latest_epoch(via)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else "(no output)"


def latest_epoch(via: NodeEntry) -> dict:
    """The chain's latest scheduled epoch as VIA reports it (RPC `epochs`, asked as VIA's validator)."""
    try:
        credentials = Credentials(via.name, load_key_file(via.key_path).signing_key)
        answer = rpc.call(via.rpc, "epochs", [], rpc_timeout_s, ca_file=via.ca_path, credentials=credentials)
    except (rpc.ConnectionLost, rpc.RpcError) as exc:
        raise TestnetError(f"the change is committed but {via.name} did not answer epochs(): {exc}") from None
    return max(answer["epochs"], key=lambda e: e["epoch"])


def height_of(node: NodeEntry) -> int | None:
    status = public_status(node)
    return int(status["height"]) if status else None


def wait_for_epoch(network: Network, via: NodeEntry, epoch: dict, watch: NodeEntry | None = None) -> int:
    """Wait until the epoch has started at VIA (and WATCH, if given): their head is at least the height
    before its start, so it certifies their next block (an idle chain makes no block past that one).
    Prints progress; returns VIA's height. TestnetError (with the lagging node's log) on timeout."""
    last = epoch["start_height"] - 1
    deadline = time.monotonic() + epoch_wait_timeout_s
    shown, last_print = "", 0.0
    while True:
        heights = {node.name: height_of(node) for node in (via, watch) if node is not None}
        if all(h is not None and h >= last for h in heights.values()):
            return heights[via.name]
        now = time.monotonic()
        line = ", ".join(f"{name} at {'-' if h is None else h}" for name, h in heights.items())
        if line != shown and now - last_print >= progress_interval_s:
            print(f"  waiting for epoch {epoch['epoch']} (certifies from height {last + 1}): {line}", flush=True)
            shown, last_print = line, now
        if now > deadline:
            lagging = next(network.node(name) for name, h in heights.items() if h is None or h < last)
            raise TestnetError(f"epoch {epoch['epoch']} not reached on {lagging.name} within "
                               f"{epoch_wait_timeout_s:.0f} s (heights {heights}; the change is committed, it "
                               f"takes effect anyway); see {lagging.log_path}:\n{tail(lagging.log_path)}")
        time.sleep(poll_interval_s)


def print_scheduled(what: str, epoch: dict) -> None:
    print(f"{what}: committed at height {epoch['scheduled_at']}; epoch {epoch['epoch']} "
          f"({len(epoch['validators'])} validators) starts at height {epoch['start_height']}")


# ---------------------------------------------------------------- add-validator

NAME_RULE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")    # also a directory name under nodes/


def check_new_name(network: Network, name: str, jurisdiction: str) -> None:
    if jurisdiction not in JURISDICTIONS:
        raise TestnetError(f"unknown jurisdiction {jurisdiction[:20]!r}: give {' or '.join(JURISDICTIONS)}")
    if not NAME_RULE.fullmatch(name):
        raise TestnetError(f"node name {name[:40]!r}: use 1-32 lower-case letters, digits and '-' "
                           f"(starting with a letter or digit)")
    try:
        RemoveValidator(name)           # the ledger's rule for a validator id
    except ReconfigurationError as exc:
        raise TestnetError(f"node name {name!r}: {exc}") from None
    for node in network.nodes:
        if node.name == name:
            was = " (it was removed: a removed id never returns)" if node.removed else ""
            raise TestnetError(f"name {name} is already used in {network.run_dir}{was}; choose another")
    if len(network.nodes) >= validators_max:
        raise TestnetError(f"the port plan holds {validators_max} nodes; {network.run_dir} has them all")


def plan_new_node(network: Network, name: str, jurisdiction: str) -> NodeEntry:
    """NAME's manifest entry on the next ports of the testnet's scheme (index = len(nodes))."""
    ports = plan_ports(network.base_port, len(network.nodes) + 1)[-1]
    check_ports_free([ports])
    return NodeEntry(name=name, jurisdiction=jurisdiction, p2p=f"{HOST}:{ports.p2p}", rpc=f"{HOST}:{ports.rpc}",
                     metrics=f"{HOST}:{ports.metrics}", node_dir=str(network.run_dir / "nodes" / name),
                     membership=JOINING)


def prepare_new_node(network: Network, node: NodeEntry, like: NodeEntry) -> None:
    """Key, RPC certificate and config (joining = true, the consensus settings of LIKE) of NODE."""
    if node.dir.exists():
        raise TestnetError(f"{node.dir} exists but is not in the manifest; remove it first")
    node.dir.mkdir(parents=True)
    keygen(node.key_path, node.name)
    make_rpc_certificate(network, node)
    write_node_config(network, node, check_config(like).consensus, joining=True)


def add_validator(run_dir: Path, name: str, jurisdiction: str) -> int:
    network = Network.load(run_dir.resolve())
    if network.links_proxied:
        # The proxy's links and every node's [[peers]] are fixed when the network is made.
        raise TestnetError(f"add-validator is not supported on a testnet with link delay or loss (this one has "
                           f"{network.link_delay_ms:g} ms, loss {network.link_loss:g}): the link proxy serves the "
                           f"validators the network was made with. Make a network without --link-delay-ms and "
                           f"--link-loss to change its validator set")
    check_new_name(network, name, jurisdiction)
    via = answering_member(network)
    node = plan_new_node(network, name, jurisdiction)
    prepare_new_node(network, node, via)
    print(f"{name}: key {node.key_path}, p2p {node.p2p}, rpc {node.rpc}, metrics {node.metrics} (joining = true)")
    try:
        epoch = submit_change(network, via, ["add", name, "--public-key-file", str(node.key_path),
                                             "--jurisdiction", jurisdiction, "--p2p", node.p2p, "--rpc", node.rpc])
    except TestnetError:
        _discard(node)      # nothing was added: the name stays free
        raise
    network.nodes.append(node)
    network.save()
    print_scheduled(f"add {name} ({jurisdiction})", epoch)
    pid = start_node(node.config_path, node.pid_path, node.log_path, cwd=network.run_dir)
    print(f"  started {name} pid {pid} (empty data dir: it catches up from genesis); log {node.log_path}")
    wait_until_ready(network, names=[name])
    height = wait_for_epoch(network, via, epoch, watch=node)
    network.set_membership(name, ADDED)
    network.save()
    print(f"epoch {epoch['epoch']} has started (it certifies from height {epoch['start_height']}; chain at {height}): {name} has caught up and is a validator "
          f"({len(epoch['validators'])} in the set)")
    return 0


def _discard(node: NodeEntry) -> None:
    """Remove the files made for a node whose addition was refused (only what add-validator wrote)."""
    for path in (node.config_path, node.key_path, node.rpc_cert_path, node.rpc_key_path):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        node.dir.rmdir()


# ---------------------------------------------------------------- remove-validator


def remove_validator(run_dir: Path, name: str) -> int:
    network = Network.load(run_dir.resolve())
    node = network.member(name)
    answering_member(network)           # a clear "the testnet is down" first
    via = _other_member(network, node)
    epoch = submit_change(network, via, ["remove", name])
    print_scheduled(f"remove {name}", epoch)
    height = wait_for_epoch(network, via, epoch)
    byzantine = stop_byzantine(node)
    outcome = stop_node(node.pid_path, node.config_path)
    network.set_membership(name, REMOVED)
    network.save()
    print(f"epoch {epoch['epoch']} has started (it certifies from height {epoch['start_height']}; chain at {height}) without {name}: its daemon {outcome}"
          + (f" (byzantine process {byzantine})" if byzantine else "")
          + f"; marked removed (files kept in {node.dir}, never started again)")
    return 0


def _other_member(network: Network, node: NodeEntry) -> NodeEntry:
    """A running member other than NODE, to submit through and watch the chain by."""
    for other in network.members:
        if other is not node and running_pid(other.pid_path, other.config_path) is not None \
                and node_status(other) is not None:
            return other
    raise TestnetError(f"no validator other than {node.name} answers in {network.run_dir}")


# ---------------------------------------------------------------- rotate-key


def rotate_key(run_dir: Path, name: str) -> int:
    network = Network.load(run_dir.resolve())
    node = network.member(name)
    answering_member(network)           # a clear "the testnet is down" first
    via = _other_member(network, node)
    new_key = node.dir / NEXT_KEY_NAME
    if not new_key.exists():        # left by an attempt that was refused: used again
        keygen(new_key, name)
    print(f"{name}: new key {new_key}; restarting {name} with it in spare_key_files")
    rewrite_keys(node, node.key_path, (new_key,))
    stop_byzantine(node)
    stop_node(node.pid_path, node.config_path)
    check_ports_free([node_ports(network, node)])
    pid = start_node(node.config_path, node.pid_path, node.log_path, cwd=network.run_dir)
    wait_until_ready(network, names=[name])
    print(f"  {name} restarted, pid {pid}, holding its current and its new key")
    epoch = submit_change(network, via, ["rotate-key", name, "--public-key-file", str(new_key)])
    print_scheduled(f"rotate the key of {name}", epoch)
    height = wait_for_epoch(network, via, epoch, watch=node)
    retired = node.dir / f"key-retired-{epoch['epoch']}.json"
    node.key_path.replace(retired)
    new_key.replace(node.key_path)
    rewrite_keys(node, node.key_path, ())
    print(f"epoch {epoch['epoch']} has started (it certifies from height {epoch['start_height']}; chain at {height}): {name} signs with its new key. "
          f"key.json is now the new key (the old one is {retired.name}); the config names it with no spare, "
          f"which the running daemon takes at its next restart")
    return 0
