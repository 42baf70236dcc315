"""Port plan of a local testnet and the check that every planned port is free.

Node i (0-based) listens on three ports derived from the base port, so a
developer can guess them: p2p = base + i, rpc = base + 100 + i,
metrics = base + 200 + i. That leaves room for `validators_max` nodes.

A network with link delay (testnet/link_proxy.py) also has one proxy listener
per directed validator link, dialer i -> target j, on base + 300 + 10 i + j:
one more block, which holds the links of up to `link_nodes_max` nodes.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from node.address import PORT_MAX

HOST = "127.0.0.1"
PORT_BLOCK_SIZE = 100              # distance between the p2p, rpc and metrics blocks
PORT_BLOCKS = 3                    # p2p, rpc, metrics
validators_max = PORT_BLOCK_SIZE   # one port per node in each block
LINK_BLOCK_OFFSET = PORT_BLOCKS * PORT_BLOCK_SIZE   # the link proxy's block follows the metrics block
link_nodes_max = 10                # link i -> j at LINK_BLOCK_OFFSET + 10 i + j: 10 x 10 fill one block


class PortError(Exception):
    """A port plan that cannot be used; the message names the port and why."""


@dataclass(frozen=True)
class NodePorts:
    p2p: int
    rpc: int
    metrics: int


def plan_ports(base_port: int, node_count: int) -> list[NodePorts]:
    """The ports of `node_count` nodes starting at `base_port`; raise PortError when out of range."""
    if not 1 <= node_count <= validators_max:
        raise PortError(f"cannot plan ports for {node_count} nodes (1..{validators_max})")
    highest = base_port + (PORT_BLOCKS - 1) * PORT_BLOCK_SIZE + node_count - 1
    if base_port < 1 or highest > PORT_MAX:
        raise PortError(
            f"base port {base_port} does not fit {node_count} nodes: ports run up to "
            f"base + {(PORT_BLOCKS - 1) * PORT_BLOCK_SIZE + node_count - 1} = {highest}, "
            f"the range is 1..{PORT_MAX}"
        )
    return [
        NodePorts(p2p=base_port + i, rpc=base_port + PORT_BLOCK_SIZE + i, metrics=base_port + 2 * PORT_BLOCK_SIZE + i)
        for i in range(node_count)
    ]


def plan_link_ports(base_port: int, node_count: int) -> dict[tuple[int, int], int]:
    """The proxy port of each directed link (dialer index, target index) of `node_count` nodes."""
    if not 2 <= node_count <= link_nodes_max:
        raise PortError(f"link delay needs 2..{link_nodes_max} validators (one proxy port per directed link "
                        f"in one block of {PORT_BLOCK_SIZE}), not {node_count}")
    first = base_port + LINK_BLOCK_OFFSET
    if base_port < 1 or first + PORT_BLOCK_SIZE - 1 > PORT_MAX:
        raise PortError(f"base port {base_port} leaves no room for the link proxy's ports "
                        f"(base + {LINK_BLOCK_OFFSET} .. base + {LINK_BLOCK_OFFSET + PORT_BLOCK_SIZE - 1}, "
                        f"the range is 1..{PORT_MAX})")
    return {(i, j): first + link_nodes_max * i + j
            for i in range(node_count) for j in range(node_count) if i != j}


def check_link_ports_free(link_ports: dict[tuple[int, int], int], names: list[str], host: str = HOST) -> None:
    """Raise PortError naming the first link proxy port (and its link) something already listens on."""
    for (i, j), port in sorted(link_ports.items()):
        if not port_is_free(port, host):
            raise PortError(f"port {port} (link proxy of {names[i]} -> {names[j]}) on {host} is in use; "
                            f"stop what uses it or choose another --base-port")


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could listen on host:port now.

    SO_REUSEADDR is set as the daemon's listener sets it, so a port held only by
    connections in TIME_WAIT counts as free while a listening socket does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def check_ports_free(plan: list[NodePorts], host: str = HOST) -> None:
    """Raise PortError naming the first planned port something already listens on."""
    for index, ports in enumerate(plan):
        for role in ("p2p", "rpc", "metrics"):
            port = getattr(ports, role)
            if not port_is_free(port, host):
                raise PortError(
                    f"port {port} ({role} of node #{index + 1}) on {host} is in use; "
                    f"stop what uses it or choose another --base-port"
                )


def ephemeral_range() -> tuple[int, int] | None:
    """The kernel's range for outgoing connections' local ports (Linux), or None if unknown."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def overlaps_ephemeral(plan: list[NodePorts]) -> bool:
    """True if a planned port lies where outgoing connections take local ports: such a port is
    sometimes briefly taken (TIME_WAIT of a client connection) and the node cannot listen."""
    span = ephemeral_range()
    if span is None:
        return False
    return any(span[0] <= port <= span[1] for p in plan for port in (p.p2p, p.rpc, p.metrics))


def link_ports_overlap_ephemeral(link_ports: dict[tuple[int, int], int]) -> bool:
    """As overlaps_ephemeral, for the link proxy's ports."""
    span = ephemeral_range()
    return span is not None and any(span[0] <= port <= span[1] for port in link_ports.values())


def find_free_base_port(node_count: int, start: int = 20000, stop: int = 60000, step: int = 331) -> int:
    """A base port whose whole plan is free now and outside the kernel's range for outgoing
    connections (for tests and the benchmark). For up to `link_nodes_max` nodes the link proxy's
    block must be free too, so the same base port serves a network with link delay."""
    for base in range(start, stop, step):
        plan = plan_ports(base, node_count)
        if overlaps_ephemeral(plan):
            continue
        try:
            check_ports_free(plan)
            if 2 <= node_count <= link_nodes_max:
                link_ports = plan_link_ports(base, node_count)
                if link_ports_overlap_ephemeral(link_ports):
                    continue
                check_link_ports_free(link_ports, [str(i) for i in range(node_count)])
        except PortError:
            continue
        return base
    raise PortError(f"no base port in {start}..{stop} has {node_count * PORT_BLOCKS} free ports")
