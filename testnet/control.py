"""The subcommands of `python -m testnet`: up, down, status, kill, restart, logs, byzantine.

(partition and heal are in links.py, the validator-set commands in membership.py.)

Each returns an exit status and prints for a person; `status --json` prints the
machine-readable view the benchmark and tests use.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from node.client import Credentials
from node.keys import KeyFileError, load_key_file

from . import links, rpc
from .network import JOINING, REMOVED, ManifestError, Network, NodeEntry, plan_network
from .ports import (PORT_BLOCK_SIZE, PORT_BLOCKS, check_link_ports_free, check_ports_free, ephemeral_range,
                    link_ports_overlap_ephemeral, overlaps_ephemeral, plan_link_ports, plan_ports)
from .supervisor import exit_statuses, read_pid, running_pid, start_detached, start_node, stop_node

DEFAULT_RUN_DIR = Path("testnet/.run")
# Only a clone has it (not a wheel install): the hints say `make ...` only where make can run them.
MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
DEFAULT_BASE_PORT = 7700
DEFAULT_VALIDATORS = 4
status_timeout_s = 1.0            # one node's answer to `status` in `testnet status`
node_ready_timeout_s = 60.0       # every daemon answers RPC status after start
first_block_timeout_s = 60.0      # the sample commitment is committed
log_tail_lines = 20               # shown when a node fails to come up
poll_interval_s = 0.2


class TestnetError(Exception):
    """An expected failure of a subcommand: printed as one message, exit status 1."""


def dir_option(run_dir: Path) -> str:
    """` --dir D` for commands we print, or nothing for the default run dir."""
    return "" if Path(run_dir).resolve() == DEFAULT_RUN_DIR.resolve() else f" --dir {run_dir}"


byzantine_ready_timeout_s = 30.0  # a started Byzantine process listens on the node's p2p port


def node_pids(network: Network) -> dict[str, int | None]:
    """The running pid (or None) of each member (a removed node is never started again)."""
    return {n.name: running_pid(n.pid_path, n.config_path) for n in network.members}


def node_ports(network: Network, node: NodeEntry):
    """NODE's ports: they follow from its index in the manifest (removed nodes keep theirs)."""
    return plan_ports(network.base_port, len(network.nodes))[network.nodes.index(node)]


def tail(path: Path, lines: int = log_tail_lines) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


def node_status(node: NodeEntry, timeout_s: float = status_timeout_s) -> dict | None:
    """The node's full RPC `status` map (asked as the node's own validator identity: an anonymous
    caller gets only the reduced status), or None if it does not answer. A node whose key is not
    (yet, or any more) in the current set is refused the login: its reduced status is returned."""
    try:
        credentials = Credentials(node.name, load_key_file(node.key_path).signing_key)
        result = rpc.call(node.rpc, "status", [], timeout_s, ca_file=node.ca_path, credentials=credentials)
    except rpc.RpcError:
        return public_status(node, timeout_s)
    except (rpc.ConnectionLost, KeyFileError):
        return None
    return result if isinstance(result, dict) else None


def public_status(node: NodeEntry, timeout_s: float = status_timeout_s) -> dict | None:
    """The reduced status any caller gets (chain_id, node_id, height, version), or None."""
    try:
        result = rpc.call(node.rpc, "status", [], timeout_s, ca_file=node.ca_path)
    except (rpc.ConnectionLost, rpc.RpcError):
        return None
    return result if isinstance(result, dict) else None


# ---------------------------------------------------------------- up


def _start_all(network: Network) -> None:
    pids = node_pids(network)
    check_ports_free([node_ports(network, n) for n in network.members if pids[n.name] is None])
    for node in network.members:
        if pids[node.name] is None:
            pid = start_node(node.config_path, node.pid_path, node.log_path, cwd=network.run_dir)
            print(f"  started {node.name:<6} pid {pid:<7} log {node.log_path}")


def wait_until_ready(network: Network, timeout_s: float = node_ready_timeout_s,
                     names: list[str] | None = None) -> dict[str, dict]:
    """Wait until each node answers `status`; fail fast (with its log) if one exits."""
    wanted = [network.node(n) for n in names] if names else network.members
    deadline = time.monotonic() + timeout_s
    answers: dict[str, dict] = {}
    while True:
        for node in wanted:
            if node.name in answers:
                continue
            if running_pid(node.pid_path, node.config_path) is None:
                pid = read_pid(node.pid_path)
                code = exit_statuses.get(pid) if pid else None
                how = f" with status {code}" if code is not None else ""
                raise TestnetError(
                    f"node {node.name} exited during start-up{how}; last lines of {node.log_path}:\n{tail(node.log_path)}"
                )
            status = node_status(node)
            if status is not None:
                answers[node.name] = status
        if len(answers) == len(wanted):
            return answers
        if time.monotonic() > deadline:
            missing = [n for n in wanted if n.name not in answers]
            raise TestnetError(
                f"{', '.join(n.name for n in missing)} did not answer RPC status within {timeout_s:.0f} s; "
                f"see {missing[0].log_path}:\n{tail(missing[0].log_path)}"
            )
        time.sleep(poll_interval_s)


def wait_for_height(network: Network, height: int, timeout_s: float = first_block_timeout_s) -> dict[str, int]:
    """Wait until every running node reports at least `height`."""
    deadline = time.monotonic() + timeout_s
    while True:
        heights = {}
        for node in network.members:
            status = node_status(node)
            heights[node.name] = int(status.get("height", -1)) if status else -1
        if all(h >= height for h in heights.values()):
            return heights
        if time.monotonic() > deadline:
            lagging = [name for name, h in heights.items() if h < height]
            node = network.node(lagging[0])
            raise TestnetError(
                f"{', '.join(lagging)} did not reach height {height} within {timeout_s:.0f} s "
                f"(heights {heights}); see {node.log_path}:\n{tail(node.log_path)}"
            )
        time.sleep(poll_interval_s)


def up(run_dir: Path, validators: int | None = None, base_port: int | None = None, demo: bool = True,
       extra_participants: dict[str, str] | None = None, consensus: dict[str, int] | None = None,
       force: bool = False, *, link_delay_ms: float = 0.0, link_loss: float = 0.0,
       link_seed: int | None = None) -> int:
    """Generate (first time) and start the network; if any node runs already, change nothing (but start
    its link proxy if it has one and it is not running).

    A base port whose ports fall in the kernel's range for outgoing connections is refused unless
    `force`: a node restarted there can find its port taken by a client connection for a minute.
    `link_delay_ms` (one-way, per direction) and `link_loss` put a new network's validator links
    through the link proxy (testnet/links.py); `link_seed` seeds its loss draws (random if None)."""
    from .generate import generate_network  # needs the node's admin commands

    links.check_link_settings(link_delay_ms, link_loss)
    run_dir = run_dir.resolve()
    try:
        network = Network.load(run_dir)
    except ManifestError:
        if (run_dir / "nodes").exists():
            raise TestnetError(f"{run_dir} holds files but no usable testnet.json; remove {run_dir} first")
        network = None
    if network is not None:
        if validators is not None and len(network.nodes) != validators:
            raise TestnetError(
                f"{run_dir} holds a {len(network.nodes)}-validator testnet; "
                f"run `python -m testnet down{dir_option(run_dir)}` and remove {run_dir} to start another size"
            )
        if base_port is not None and base_port != network.base_port:
            raise TestnetError(
                f"{run_dir} holds a testnet on base port {network.base_port}; "
                f"remove {run_dir} (after `down`) to use base port {base_port}"
            )
        asked = (link_delay_ms, link_loss)
        if asked != (0, 0) and asked != (network.link_delay_ms, network.link_loss):
            raise TestnetError(
                f"{run_dir} holds a testnet with link delay {network.link_delay_ms:g} ms and loss "
                f"{network.link_loss:g}; the links are set when a network is made: remove {run_dir} (after "
                f"`down`) to make one with delay {link_delay_ms:g} ms and loss {link_loss:g}"
            )
        pids = node_pids(network)
        running = [name for name, pid in pids.items() if pid is not None]
        if running:
            stopped = [name for name, pid in pids.items() if pid is None]
            proxy_started = network.links_proxied and links.proxy_pid(network) is None
            if proxy_started:
                print(f"  link proxy was not running: started pid {links.start_proxy(network)}")
            print(f"testnet in {run_dir} is already running ({len(running)} of {len(pids)} nodes up); "
                  f"{'nothing else' if proxy_started else 'nothing'} changed.")
            if stopped:
                print(f"  stopped: {', '.join(stopped)}: start one with `python -m testnet restart NODE{dir_option(run_dir)}`")
            print(f"  see `python -m testnet status{dir_option(run_dir)}`")
            return 0
        print(f"restarting the stopped testnet in {run_dir} (keys, genesis and data kept)")
    else:
        validators = validators or DEFAULT_VALIDATORS
        base_port = base_port or DEFAULT_BASE_PORT
        network = plan_network(run_dir, validators, base_port, extra_participants)
        network.link_delay_ms, network.link_loss = float(link_delay_ms), float(link_loss)
        network.link_seed = link_seed if link_seed is not None else random.randrange(2**31)
        proxy_ports = plan_link_ports(base_port, validators) if network.links_proxied else {}
        # The range first: it is refused whether or not its ports happen to be free right now.
        if overlaps_ephemeral(plan_ports(base_port, validators)) or link_ports_overlap_ephemeral(proxy_ports):
            low, high = ephemeral_range()
            message = (f"ports from base port {base_port} fall in {low}-{high}, the range the kernel gives "
                       f"outgoing connections (/proc/sys/net/ipv4/ip_local_port_range): a node restarted there "
                       f"can find its port taken for a minute or more")
            if not force:
                blocks = PORT_BLOCKS + (1 if proxy_ports else 0)
                raise TestnetError(f"{message}. Choose a base port below {low - PORT_BLOCK_SIZE * blocks}, or pass "
                                   f"--force to use it anyway")
            print(f"  note: {message} (--force)")
        check_ports_free(plan_ports(base_port, validators))
        check_link_ports_free(proxy_ports, [n.name for n in network.nodes])
        print(f"generating a {validators}-validator testnet in {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            generate_network(network, consensus)
        except Exception:
            # Leave no half-made network behind: the next `up` would refuse the directory.
            shutil.rmtree(run_dir / "nodes", ignore_errors=True)
            shutil.rmtree(network.keys_dir, ignore_errors=True)
            network.genesis_path.unlink(missing_ok=True)
            raise
        network.save()
    if network.links_proxied:
        # Before the nodes, so their first dials go through it.
        print(f"  link proxy pid {links.start_proxy(network)}: {network.link_delay_ms:g} ms one-way, loss "
              f"{network.link_loss:g}, seed {network.link_seed}; log {links.proxy_paths(network)['log']}")
    _start_all(network)
    try:
        wait_until_ready(network)
    except TestnetError as exc:
        # A network that cannot start is stopped whole, so the next `up` starts clean.
        for node in network.members:
            stop_node(node.pid_path, node.config_path)
        links.stop_proxy(network)
        raise TestnetError(f"{exc}\n(all nodes stopped; files kept in {run_dir})") from None
    print(f"  all {len(network.members)} nodes answer RPC")
    sample = run_demo(network) if demo else None
    print_summary(network, sample)
    return 0


def run_demo(network: Network) -> dict:
    """Submit a sample commitment as sz-credit-bureau (CN), verify its proof as hk-bank (HK)."""
    from .demo import DemoError, run_sample

    print("  sample: submit as sz-credit-bureau, verify as hk-bank, check the saved proof offline")
    try:
        sample = run_sample(network)
    except DemoError as exc:
        raise TestnetError(f"sample submit/verify failed: {exc}\n(the nodes keep running; "
                           f"`python -m testnet down{dir_option(network.run_dir)}` stops them)") from None
    for step, output in sample["outputs"].items():
        print(f"  $ bayledger {' '.join(sample['commands'][step])}")
        for line in output.splitlines():
            print(f"      {line}")
    heights = wait_for_height(network, int(sample["height"]))
    print(f"  heights: {', '.join(f'{n} {h}' for n, h in heights.items())}")
    return sample


def print_summary(network: Network, sample: dict | None) -> None:
    print()
    print(f"Bayledger testnet `{network.chain_id}` is running ({len(network.members)} validators).")
    print()
    print(f"  {'node':<6} {'jur':<3} {'rpc':<16} {'p2p':<16} {'metrics':<16} log")
    for n in network.members:
        print(f"  {n.name:<6} {n.jurisdiction:<3} {n.rpc:<16} {n.p2p:<16} {n.metrics:<16} {n.log_path}")
    print()
    print(f"  genesis       {network.genesis_path}")
    print(f"  RPC TLS CA    {network.ca_path}   (export BAYLEDGER_CA={network.ca_path})")
    for name, info in network.participants.items():
        print(f"  participant   {name} ({info['jurisdiction']}) key {info['key']}")
    for jurisdiction, key in network.governance.items():
        print(f"  governance    {jurisdiction} key {key}")
    if network.links_proxied:
        print(f"  links         {network.link_delay_ms:g} ms one-way delay, loss {network.link_loss:g} (link proxy "
              f"pid {links.proxy_pid(network)}, log {links.proxy_paths(network)['log']})")
    if sample:
        print(f"  sample        {sample['report']}, receipt (holds the salt) {sample['receipt_path']}, proof {sample['proof']}")
    print()
    print("Try next (README.md has the tour):")
    for line in next_commands(network, sample):
        print(f"  {line}")


def next_commands(network: Network, sample: dict | None) -> list[str]:
    """What to type next: the environment set once (export lines), then short commands that use it."""
    d = network.run_dir
    hk = network.nodes_in("HK")[0]
    cn = network.nodes_in("CN")[0]
    lines = []
    activate = Path(sys.executable).parent / "activate"
    if activate.exists():
        lines += [f"source {activate}   # puts bayledger and this python on PATH"]
    lines += [f"export BAYLEDGER_GENESIS={network.genesis_path} BAYLEDGER_CA={network.ca_path}",
              f"K={network.keys_dir}",
              f"bayledger status --rpc {hk.rpc} --key $K/hk-auditor.json"]
    if sample:
        lines += [f"bayledger verify --rpc {hk.rpc} --key $K/hk-bank.json --receipt {sample['receipt_path']} "
                  f"{sample['report']}",
                  f"bayledger proof verify --receipt {sample['receipt_path']} {sample['proof']}"]
    lines += [f"bayledger submit --rpc {cn.rpc} --key $K/sz-credit-bureau.json YOUR-REPORT-FILE",
              f"python -m testnet kill {network.members[-1].name}{dir_option(d)}   # then: restart {network.members[-1].name}",
              f"python -m testnet logs {hk.name}{dir_option(d)}",
              f"curl -s http://{hk.metrics}/metrics | head",
              "make testnet-down" if d == DEFAULT_RUN_DIR.resolve() and MAKEFILE.exists()
              else f"python -m testnet down{dir_option(d)}"]
    return lines


# ---------------------------------------------------------------- down, kill, restart


def down(run_dir: Path) -> int:
    network = Network.load(run_dir.resolve())
    for node in network.nodes:
        byzantine = stop_byzantine(node)
        outcome = stop_node(node.pid_path, node.config_path)
        if node.removed and outcome == "not running":
            outcome = "removed"
        print(f"  {node.name:<6} {outcome}" + (f" (byzantine {byzantine})" if byzantine else ""))
    if network.links_proxied:
        print(f"  link proxy {links.stop_proxy(network)}")
    print(f"testnet in {network.run_dir} is down (data kept; `python -m testnet up{dir_option(network.run_dir)}` starts it again)")
    return 0


def kill(run_dir: Path, name: str) -> int:
    network = Network.load(run_dir.resolve())
    node = network.node(name)
    byzantine = stop_byzantine(node, hard=True)
    outcome = stop_node(node.pid_path, node.config_path, hard=True)
    print(f"{name}: {outcome}" + (" (SIGKILL)" if outcome == "killed" else "")
          + (f"; byzantine process {byzantine}" if byzantine else ""))
    return 0


def restart(run_dir: Path, name: str) -> int:
    network = Network.load(run_dir.resolve())
    node = network.member(name)
    byzantine = stop_byzantine(node)
    if byzantine:
        print(f"{name}: byzantine process {byzantine}")
    outcome = stop_node(node.pid_path, node.config_path)
    check_ports_free([node_ports(network, node)])
    pid = start_node(node.config_path, node.pid_path, node.log_path, cwd=network.run_dir)
    print(f"{name}: {outcome}; started pid {pid}")
    status = wait_until_ready(network, names=[name])[name]
    print(f"{name}: answering at {node.rpc}, height {status.get('height')}, view {status.get('view')}")
    return 0


def logs(run_dir: Path, name: str, lines: int, follow: bool) -> int:
    network = Network.load(run_dir.resolve())
    node = network.node(name)
    if not node.log_path.exists():
        raise TestnetError(f"{name} has no log yet ({node.log_path})")
    if follow:
        return subprocess.call(["tail", "-n", str(lines), "-F", str(node.log_path)])
    print(tail(node.log_path, lines))
    return 0


# ---------------------------------------------------------------- byzantine
#
# `byzantine NODE --behaviour B` stops NODE's daemon and runs `python -m testnet.byzantine` in its place
# (testnet/byzantine.py). Its pid is in nodes/NODE/byzantine.pid, what it runs in nodes/NODE/byzantine.json,
# its output in nodes/NODE/byzantine.log. The command line names the node's config, so a pid file left
# by a dead process is recognised as stale, as for the daemons. restart, kill and down stop it.


def byzantine_paths(node: NodeEntry) -> dict[str, Path]:
    from . import byzantine as byz

    return {"pid": node.dir / byz.PID_FILE, "log": node.dir / byz.LOG_FILE, "record": node.dir / byz.RECORD_FILE,
            "stats": node.dir / byz.STATS_FILE}


def byzantine_command(network: Network, node: NodeEntry, behaviour: str, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "testnet.byzantine", "--config", str(node.config_path),
            "--behaviour", behaviour, "--dir", str(network.run_dir), *options]


def byzantine_running(node: NodeEntry) -> dict | None:
    """What runs in place of NODE ({"behaviour", "pid", ...}), or None if no Byzantine process runs."""
    paths = byzantine_paths(node)
    pid = running_pid(paths["pid"], node.config_path)
    if pid is None:
        return None
    try:
        record = json.loads(paths["record"].read_text())
    except (OSError, ValueError):
        record = {}
    return {**record, "pid": pid}


def stop_byzantine(node: NodeEntry, *, hard: bool = False) -> str | None:
    """Stop the Byzantine process running in place of NODE, by its pid; what happened, or None if none ran."""
    paths = byzantine_paths(node)
    if read_pid(paths["pid"]) is None:
        return None
    outcome = stop_node(paths["pid"], node.config_path, hard=hard, timeout_ms=5_000)
    paths["record"].unlink(missing_ok=True)
    return None if outcome == "not running" else outcome


def byzantine(run_dir: Path, name: str, behaviour: str, options: list[str] | None = None) -> int:
    """Stop NODE's daemon (and any Byzantine process already in its place) and start `behaviour` there."""
    from . import byzantine as byz
    from .ports import port_is_free

    if behaviour not in byz.BEHAVIOURS:
        raise TestnetError(f"unknown behaviour {behaviour!r}; one of {', '.join(byz.BEHAVIOURS)}")
    network = Network.load(run_dir.resolve())
    node = network.member(name)
    paths = byzantine_paths(node)
    previous = stop_byzantine(node)
    outcome = stop_node(node.pid_path, node.config_path)
    print(f"{name}: daemon {outcome}" + (f"; previous byzantine process {previous}" if previous else ""))
    p2p_port = node_ports(network, node).p2p
    deadline = time.monotonic() + byzantine_ready_timeout_s
    while not port_is_free(p2p_port):
        if time.monotonic() > deadline:
            raise TestnetError(f"p2p port {p2p_port} of {name} is still in use")
        time.sleep(poll_interval_s)
    command = byzantine_command(network, node, behaviour, list(options or []))
    pid = start_detached(command, paths["pid"], paths["log"], str(node.config_path), network.run_dir)
    paths["record"].write_text(json.dumps({"behaviour": behaviour, "pid": pid, "command": command,
                                           "started": time.time()}, indent=2) + "\n")
    # Ready when it listens on the node's p2p port; a process that exits first is reported with its log.
    while port_is_free(p2p_port):
        if running_pid(paths["pid"], node.config_path) is None:
            code = exit_statuses.get(pid)
            how = f" with status {code}" if code is not None else ""
            paths["record"].unlink(missing_ok=True)
            raise TestnetError(f"the byzantine process of {name} exited{how}; last lines of {paths['log']}:\n"
                               f"{tail(paths['log'])}")
        if time.monotonic() > deadline:
            raise TestnetError(f"the byzantine process of {name} (pid {pid}) does not listen on {node.p2p} "
                               f"after {byzantine_ready_timeout_s:.0f} s; see {paths['log']}")
        time.sleep(0.05)
    print(f"{name}: byzantine `{behaviour}` running, pid {pid}, listening on {node.p2p}; log {paths['log']}")
    print(f"  `python -m testnet restart {name}{dir_option(network.run_dir)}` stops it and starts the honest daemon")
    return 0


# ---------------------------------------------------------------- status


def epoch_schedule(network: Network, pids: dict[str, int | None]) -> list[dict]:
    """The chain's epochs, oldest first ({"epoch", "start_height", "validators": [ids]}), from the first
    running member that answers RPC `epochs` as itself; [] if none does."""
    for node in network.members:
        if pids.get(node.name) is None:
            continue
        try:
            credentials = Credentials(node.name, load_key_file(node.key_path).signing_key)
            answer = rpc.call(node.rpc, "epochs", [], status_timeout_s, ca_file=node.ca_path, credentials=credentials)
        except (rpc.ConnectionLost, rpc.RpcError, KeyFileError):
            continue
        return [{"epoch": e["epoch"], "start_height": e["start_height"],
                 "validators": [v["id"] for v in e["validators"]]} for e in answer["epochs"]]
    return []


def epoch_at(epochs: list[dict], height: int | None) -> int | None:
    """The epoch that certifies the block after `height` (a node's current epoch)."""
    if height is None or not epochs:
        return None
    return max(e["epoch"] for e in epochs if e["start_height"] <= height + 1)


def status_document(network: Network) -> dict:
    nodes = []
    pids = {n.name: running_pid(n.pid_path, n.config_path) for n in network.nodes}
    epochs = epoch_schedule(network, pids)
    for node in network.nodes:
        pid = pids[node.name]
        answer = node_status(node) if pid is not None else None
        nodes.append({
            "name": node.name,
            "jurisdiction": node.jurisdiction,
            "rpc": node.rpc,
            "p2p": node.p2p,
            "metrics": node.metrics,
            "data_dir": str(node.data_dir),
            "pid": pid,
            "height": answer.get("height") if answer else None,
            "view": answer.get("view") if answer else None,
            # The epoch certifying the node's next block (its head's epoch until the first block of a new one).
            "epoch": epoch_at(epochs, answer.get("height")) if answer else None,
            "membership": node.membership,
            "peers": _peer_count(answer.get("peers")) if answer else None,
            "byzantine": (byzantine_running(node) or {}).get("behaviour"),
        })
    return {
        "genesis": str(network.genesis_path),
        "ca": str(network.ca_path),
        "nodes": nodes,
        "participants": {name: info["key"] for name, info in network.participants.items()},
        "governance": dict(network.governance),
        "epochs": epochs,
        "links": links.describe(network),
    }


def _peer_count(peers: object) -> int | None:
    if isinstance(peers, int):
        return peers
    if isinstance(peers, (list, dict)):
        return len(peers)
    return None


def status(run_dir: Path, as_json: bool) -> int:
    network = Network.load(run_dir.resolve())
    document = status_document(network)
    if as_json:
        print(json.dumps(document, indent=2))
        return 0
    print(f"testnet {network.chain_id} in {network.run_dir}")
    print(f"  {'node':<6} {'jur':<3} {'pid':>7} {'height':>7} {'view':>5} {'epoch':>5} {'peers':>5}  rpc")
    for n in document["nodes"]:
        print(_status_line(n))
    if document["links"]:
        print(_links_line(document["links"]))
    return 0


def _links_line(described: dict) -> str:
    proxy = "not running" if described["proxy_pid"] is None else f"pid {described['proxy_pid']}"
    partition = described["partition"]
    return (f"  links: {described['delay_ms']:g} ms one-way delay, loss {described['loss']:g}, seed "
            f"{described['seed']}; link proxy {proxy}"
            + (f"; partitioned {' | '.join(','.join(g) for g in partition)}" if partition else ""))


def _status_line(n: dict) -> str:
    def show(v):
        return "-" if v is None else str(v)

    state = "-" if n["pid"] is None else str(n["pid"])
    notes = []
    if n["membership"] in (JOINING, REMOVED):
        notes.append(n["membership"])
    if n["pid"] is None and n["membership"] != REMOVED:
        notes.append("stopped")
    if n["pid"] and n["height"] is None:
        notes.append("not answering")
    if n.get("byzantine"):
        notes.append(f"byzantine: {n['byzantine']}")
    return (f"  {n['name']:<6} {n['jurisdiction']:<3} {state:>7} {show(n['height']):>7} {show(n['view']):>5} "
            f"{show(n['epoch']):>5} {show(n['peers']):>5}  {n['rpc']}" + "".join(f"  ({note})" for note in notes))
