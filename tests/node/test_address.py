"""node/address.py alone: HOST:PORT parses to one Address for config and clients, IPv6 in brackets,
written back the same way; each kind of bad text is refused with a message naming its cause."""

from __future__ import annotations

import pytest

from node.address import Address, AddressError, parse_addresses
from node.client import parse_endpoints
from node.config import ConfigError, parse_address


@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:26611", "127.0.0.1", 26611),
    ("node.example.org:65535", "node.example.org", 65535),
    ("[::1]:1", "::1", 1),
    ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
    ("::1:80", "::1", 80),           # unbracketed IPv6: up to the last colon, as both parsers read it before
])
def test_host_and_port_and_a_round_trip_through_str(text, host, port):
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert Address.parse(str(address)) == address
    assert str(Address("::1", 80)) == "[::1]:80" and str(Address("h", 1)) == "h:1"


@pytest.mark.parametrize("text, cause", [
    ("nohost", "no port"),
    (":80", "no host"),
    ("[]:80", "no host"),
    ("[::1]80", "needs ']:PORT'"),
    ("h:", "is not a number"),
    ("h:-1", "is not a number"),
    ("h:x", "is not a number"),
    ("h:65536", "above 65535"),
    ("h:0", "port 0 cannot be dialled"),
    ("a b:1", "contains whitespace"),
    (80, "must be a string"),
])
def test_each_bad_text_names_its_cause(text, cause):
    with pytest.raises(AddressError, match=cause):
        Address.parse(text)


def test_port_0_only_where_the_os_chooses_it():
    assert Address.parse("h:0", port_zero_ok=True).port == 0
    assert parse_address("example.org:0", "listen.rpc").port == 0     # config: a listening address
    with pytest.raises(ValueError, match="port 0"):
        parse_endpoints("h:0")                                         # client: an address to dial


def test_config_and_client_errors_say_where():
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.address: 'h' is not HOST:PORT: no port"):
        parse_address("h", "peers[0].address")
    with pytest.raises(ValueError, match="no node address given"):
        parse_addresses([])


def test_a_list_of_addresses_in_order_with_spaces_allowed():
    assert parse_addresses("a:1, [::1]:2,b:3") == [Address("a", 1), Address("::1", 2), Address("b", 3)]
    assert parse_addresses([Address("a", 1), "b:2"]) == [Address("a", 1), Address("b", 2)]
    with pytest.raises(AddressError, match="'' is not HOST:PORT"):
        parse_addresses("a:1,,b:2")
