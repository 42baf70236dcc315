"""The testnet's side of the link proxy (testnet/link_proxy.py): its ports, config and process, and the
`partition` and `heal` commands.

A network made with `up --link-delay-ms D` (or `--link-loss P`) has one proxy process. For each
directed validator link, dialer i -> target j, it listens on the port plan's link port
(ports.plan_link_ports) and forwards to j's p2p port; node i's config lists that port as j's address
under [[peers]]. Files, under RUN_DIR/link-proxy/:

    config.json   the links (written at each start of the proxy)
    state.json    {"generation", "delay_ms", "loss", "seed", "groups"}: what the proxy applies
    ack.json      {"generation", ...}: the last generation the proxy has applied
    proxy.pid     its pid; its command line names config.json, as a node's names its config
    proxy.log     its output

A command changes the state by writing state.json with the next generation and returns once ack.json
shows it (the proxy polls state.json every 100 ms). A start of the proxy heals any partition.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from node.config import Peer, parse_address

from .link_proxy import LinkProxyError, LinkState, check_delay_ms, check_loss, parse_state, write_json_atomically
from .network import HOST, Network, NodeEntry
from .ports import check_link_ports_free, plan_link_ports
from .supervisor import exit_statuses, read_pid, running_pid, start_detached, stop_node

PROXY_DIR = "link-proxy"
proxy_ready_timeout_s = 10.0       # a started proxy has bound every link port and acknowledged its state
state_ack_timeout_s = 2.0          # the proxy applies a new state (polled every 0.1 s, cut links closed)
poll_interval_s = 0.02
GROUP_SEPARATOR, NAME_SEPARATOR = "|", ","


class LinkError(Exception):
    """A link command that cannot be carried out; printed as one message, exit status 1."""


class LinkUsageError(LinkError):
    """Bad input to a link command (a partition that does not name the members right): exit status 2."""


def proxy_dir(network: Network) -> Path:
    return network.run_dir / PROXY_DIR


def proxy_paths(network: Network) -> dict[str, Path]:
    d = proxy_dir(network)
    return {"config": d / "config.json", "state": d / "state.json", "ack": d / "ack.json",
            "pid": d / "proxy.pid", "log": d / "proxy.log"}


def link_ports(network: Network) -> dict[tuple[int, int], int]:
    """The proxy port of each directed link, by (dialer index, target index) in the manifest."""
    return plan_link_ports(network.base_port, len(network.nodes))


def proxied_peers(network: Network, node: NodeEntry) -> tuple[Peer, ...]:
    """NODE's [[peers]]: every other validator at the proxy port of the link NODE -> it."""
    ports = link_ports(network)
    i = network.nodes.index(node)
    return tuple(Peer(id=other.name, address=parse_address(f"{HOST}:{ports[(i, j)]}", f"peers.{other.name}"))
                 for j, other in enumerate(network.nodes) if j != i)


def check_link_settings(delay_ms: float, loss: float) -> None:
    """LinkUsageError unless 0 <= delay_ms <= 10000 and 0 <= loss < 1."""
    try:
        check_delay_ms(delay_ms)
        check_loss(loss)
    except LinkProxyError as exc:
        raise LinkUsageError(str(exc)) from None


# ---------------------------------------------------------------- the proxy process


def proxy_command(network: Network) -> list[str]:
    return [sys.executable, "-m", "testnet.link_proxy", "--config", str(proxy_paths(network)["config"])]


def proxy_pid(network: Network) -> int | None:
    paths = proxy_paths(network)
    return running_pid(paths["pid"], paths["config"])


def _config_document(network: Network) -> dict:
    paths = proxy_paths(network)
    ports = link_ports(network)
    return {"links": [{"dialer": network.nodes[i].name, "target": network.nodes[j].name,
                       "listen": f"{HOST}:{port}", "forward": network.nodes[j].p2p}
                      for (i, j), port in sorted(ports.items())],
            "state_file": str(paths["state"]), "ack_file": str(paths["ack"])}


def _read_json(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def current_state(network: Network) -> LinkState | None:
    """What state.json says now, or None if it is missing or unreadable."""
    document = _read_json(proxy_paths(network)["state"])
    try:
        return parse_state(document) if document is not None else None
    except LinkProxyError:
        return None


def acknowledged_generation(network: Network) -> int | None:
    document = _read_json(proxy_paths(network)["ack"])
    generation = document.get("generation") if document else None
    return generation if isinstance(generation, int) else None


def _write_state(network: Network, groups: list[list[str]] | None) -> int:
    """Write the next generation of the state (the manifest's delay, loss and seed, and `groups`)."""
    previous = current_state(network)
    generation = 1 + max(previous.generation if previous else 0, acknowledged_generation(network) or 0)
    state = LinkState(generation=generation, delay_ms=network.link_delay_ms, loss=network.link_loss,
                      seed=network.link_seed, groups=tuple(tuple(g) for g in groups) if groups else None)
    write_json_atomically(proxy_paths(network)["state"], state.to_document())
    return generation


def _wait_for_ack(network: Network, generation: int, timeout_s: float, what: str) -> None:
    from .control import tail

    paths = proxy_paths(network)
    deadline = time.monotonic() + timeout_s
    while (acknowledged_generation(network) or 0) < generation:
        if proxy_pid(network) is None:
            pid = read_pid(paths["pid"])
            code = exit_statuses.get(pid) if pid else None
            how = f" with status {code}" if code is not None else ""
            raise LinkError(f"the link proxy exited{how} before {what}; last lines of {paths['log']}:\n"
                            f"{tail(paths['log'])}")
        if time.monotonic() > deadline:
            raise LinkError(f"the link proxy (pid {proxy_pid(network)}) did not confirm {what} within "
                            f"{timeout_s:g} s; see {paths['log']}")
        time.sleep(poll_interval_s)


def start_proxy(network: Network) -> int:
    """Start the proxy (healed: no partition) unless it runs; wait until every link port listens. Its pid."""
    running = proxy_pid(network)
    if running is not None:
        return running
    paths = proxy_paths(network)
    check_link_ports_free(link_ports(network), [n.name for n in network.nodes])
    paths["config"].parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(paths["config"], _config_document(network))
    paths["ack"].unlink(missing_ok=True)
    generation = _write_state(network, None)
    pid = start_detached(proxy_command(network), paths["pid"], paths["log"], str(paths["config"]), network.run_dir)
    try:
        _wait_for_ack(network, generation, proxy_ready_timeout_s, "listening on its link ports")
    except LinkError:
        stop_node(paths["pid"], paths["config"], timeout_ms=2_000)
        raise
    return pid


def stop_proxy(network: Network) -> str:
    """Stop the proxy by its pid; what happened ("not running", "stopped", ...)."""
    paths = proxy_paths(network)
    return stop_node(paths["pid"], paths["config"], timeout_ms=5_000)


def describe(network: Network) -> dict | None:
    """The links' settings for `status`: {"delay_ms", "loss", "seed", "proxy_pid", "partition"}, or None
    when the network has no link proxy."""
    if not network.links_proxied:
        return None
    pid = proxy_pid(network)
    state = current_state(network) if pid is not None else None
    return {"delay_ms": network.link_delay_ms, "loss": network.link_loss, "seed": network.link_seed,
            "proxy_pid": pid, "partition": [list(g) for g in state.groups] if state and state.groups else None}


# ---------------------------------------------------------------- partition, heal


def parse_groups(text: str, members: list[str]) -> list[list[str]]:
    """`A,B|C,D` as groups of member names; LinkUsageError unless every member is in exactly one group
    and there are at least two groups."""
    groups = [[name.strip() for name in part.split(NAME_SEPARATOR)] for part in text.split(GROUP_SEPARATOR)]
    shape = f"give groups of node names like {NAME_SEPARATOR.join(members[:2])}{GROUP_SEPARATOR}" \
            f"{NAME_SEPARATOR.join(members[2:])}"
    if len(groups) < 2:
        raise LinkUsageError(f"{text!r} is one group, which cuts nothing; {shape}")
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        if not all(group):
            raise LinkUsageError(f"{text!r}: group {index + 1} has an empty name; {shape}")
        for name in group:
            if name not in members:
                raise LinkUsageError(f"{name[:40]!r} is not a member of this testnet "
                                     f"(members: {', '.join(members)})")
            if name in seen:
                raise LinkUsageError(f"{name} is named twice; each member goes in exactly one group")
            seen[name] = index
    missing = [name for name in members if name not in seen]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise LinkUsageError(f"{', '.join(missing)} {verb} in no group; each member goes in exactly one group "
                             f"({shape})")
    return groups


def _dir_option(network: Network) -> str:
    from .control import dir_option   # control imports this module

    return dir_option(network.run_dir)


def _check_proxy_runs(network: Network, command: str) -> None:
    if not network.links_proxied:
        raise LinkError(f"`{command}` needs the link proxy, and the testnet in {network.run_dir} has none: "
                        f"make a network with `python -m testnet up --link-delay-ms D` (D > 0) or --link-loss P")
    if proxy_pid(network) is None:
        raise LinkError(f"the link proxy of {network.run_dir} is not running; `python -m testnet up"
                        f"{_dir_option(network)}` starts it")


def partition(run_dir: Path, spec: str) -> int:
    network = Network.load(run_dir.resolve())
    groups = parse_groups(spec, [n.name for n in network.members])   # bad input first: exit status 2
    _check_proxy_runs(network, "partition")
    started = time.monotonic()
    generation = _write_state(network, groups)
    _wait_for_ack(network, generation, state_ack_timeout_s, f"the partition (generation {generation})")
    shown = f" {GROUP_SEPARATOR} ".join(NAME_SEPARATOR.join(g) for g in groups)
    print(f"partitioned: {shown} (links between groups closed and refused; applied in "
          f"{(time.monotonic() - started) * 1000:.0f} ms). `python -m testnet heal{_dir_option(network)}` restores them")
    return 0


def heal(run_dir: Path) -> int:
    network = Network.load(run_dir.resolve())
    _check_proxy_runs(network, "heal")
    generation = _write_state(network, None)
    _wait_for_ack(network, generation, state_ack_timeout_s, f"the heal (generation {generation})")
    print("healed: every validator link is open again (the nodes redial within their reconnect backoff)")
    return 0
