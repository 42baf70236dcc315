"""HOST:PORT: one type for the addresses a node listens on and dials (node/config.py, genesis) and
the nodes a client asks (node/client.py, the CLI's --rpc, testnet/).

    127.0.0.1:26611    node.example.org:26611    [::1]:26611 (IPv6 in brackets)

An IPv6 host without brackets is read up to its last colon (`::1:26611`), as it always was, but
written with them, so what `str` gives always parses back to the same address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PORT_MAX = 65535
_EXAMPLES = "e.g. 127.0.0.1:26611, node.example.org:26611, or [::1]:26611 for IPv6"


class AddressError(ValueError):
    """Text that is not HOST:PORT; the message says what is wrong and shows the form."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: object, *, port_zero_ok: bool = False) -> "Address":
        """HOST:PORT as an Address, or AddressError. Port 0 (the OS chooses) only where
        `port_zero_ok`: a listening address may say it, an address to dial may not."""
        if not isinstance(text, str):
            raise AddressError(f"must be a string HOST:PORT ({_EXAMPLES}), got {type(text).__name__}")
        if text.startswith("["):
            host, sep, port_text = text[1:].partition("]:")
            if not sep:
                raise AddressError(f"{text!r} is not HOST:PORT: an IPv6 host in brackets needs ']:PORT' after it "
                                   f"({_EXAMPLES})")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise AddressError(f"{text!r} is not HOST:PORT: no port ({_EXAMPLES})")
        if not host:
            raise AddressError(f"{text!r} is not HOST:PORT: no host ({_EXAMPLES})")
        if not (port_text.isascii() and port_text.isdigit()):
            raise AddressError(f"{text!r} is not HOST:PORT: port {port_text!r} is not a number 0-{PORT_MAX} "
                               f"({_EXAMPLES})")
        port = int(port_text)
        if port > PORT_MAX:
            raise AddressError(f"{text!r}: port {port} is above {PORT_MAX}")
        if port == 0 and not port_zero_ok:
            raise AddressError(f"{text!r}: port 0 cannot be dialled (it means any free port when listening); "
                               f"give the node's port")
        if any(c.isspace() for c in host):
            raise AddressError(f"{text!r}: host {host!r} contains whitespace")
        return cls(host=host, port=port)


def parse_addresses(text: str | Sequence[str | Address]) -> list[Address]:
    """'HOST:PORT[,HOST:PORT...]' (or a list of such strings or Addresses) to dial, in order;
    AddressError says what is wrong. Spaces around each item are allowed (`a:1, b:2`)."""
    items: list = text.split(",") if isinstance(text, str) else list(text)
    addresses = [item if isinstance(item, Address) else Address.parse(item.strip()) for item in items]
    if not addresses:
        raise AddressError(f"no node address given (HOST:PORT[,HOST:PORT...], {_EXAMPLES})")
    return addresses
