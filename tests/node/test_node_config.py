"""Config loading, key files and the metrics endpoint: every rule and limit at its edge.

Config tests write real TOML files to a tmp dir and check the exact key named
in each error; key tests check the file mode and the seed/public-key pairing;
the metrics test serves over a real 127.0.0.1 socket and speaks raw HTTP/1.0.
"""

from __future__ import annotations

import os
import stat

import pytest
import trio

from node.config import ConfigError, load_config, parse_address, render_config
from node.keys import KeyFileError, KeyPair, load_key_file, load_public_key, write_key_file
from node.metrics import NodeMetrics, serve_metrics
from tests.support.node_config import load_toml as load, node_toml

BASE = node_toml(key_file="keys/hk-1.json", sections='[rpc]\ntls_cert_file = "tls/node.pem"\ntls_key_file = "tls/node-key.pem"\n')


def error_of(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_minimal_config_gets_defaults_and_resolves_paths(tmp_path):
    config = load(tmp_path, BASE)
    assert config.node_id == "hk-1"
    assert config.key_file == tmp_path / "keys/hk-1.json"
    assert config.data_dir == tmp_path / "data"
    assert str(config.listen.p2p) == "127.0.0.1:7000"
    assert config.peers is None
    assert config.consensus.view_timeout_ms == 2000
    assert config.limits.frame_bytes_max == 64 * 1024 * 1024 + 1024
    assert config.testing.fault_injection is False


def test_rendered_config_loads_back_equal(tmp_path):
    config = load(tmp_path, BASE + '[[peers]]\nid = "cn-1"\naddress = "10.0.0.2:7000"\n')
    again = load(tmp_path, render_config(config))
    assert again.__dict__ | {"source": None} == config.__dict__ | {"source": None}


@pytest.mark.parametrize("extra, key", [
    ("bogus = 1\n", "bogus"),
    ("[consensus]\nview_timeout = 5\n", "consensus.view_timeout"),
    ("[limits]\nframe_bytes = 5\n", "limits.frame_bytes"),
    ("[log]\ncolour = true\n", "log.colour"),
    ("[testing]\nchaos = true\n", "testing.chaos"),
    ('[[peers]]\nid = "cn-1"\naddress = "h:1"\nport = 3\n', "peers[0].port"),
])
def test_unknown_keys_are_rejected_by_name(tmp_path, extra, key):
    text = BASE.replace("[listen]", extra + "[listen]") if not extra.startswith("[") else BASE + extra
    message = error_of(tmp_path, text)
    assert message.startswith(f"{key}: unknown key")


@pytest.mark.parametrize("section, key, low, high", [
    ("consensus", "view_timeout_ms", 100, 600_000),
    ("consensus", "batch_requests_max", 1, 4096),
    ("consensus", "vouch_wait_ms", 0, 60_000),
    ("limits", "frame_bytes_max", 1024, 256 * 1024 * 1024),
    ("limits", "mempool_requests_max", 1, 10_000_000),
])
def test_integer_limits_are_checked_at_their_edges(tmp_path, section, key, low, high):
    for good in (low, high):
        config = load(tmp_path, BASE + f"[{section}]\n{key} = {good}\n")
        assert getattr(getattr(config, section), key) == good
    for bad in (low - 1, high + 1, '"10"', "true", "1.5"):
        assert error_of(tmp_path, BASE + f"[{section}]\n{key} = {bad}\n").startswith(f"{section}.{key}:")


@pytest.mark.parametrize("mutation, key", [
    (("node_id = \"hk-1\"", "node_id = \"bad id!\""), "node_id"),
    (("node_id = \"hk-1\"\n", ""), "node_id"),
    (('p2p = "127.0.0.1:7000"', 'p2p = "127.0.0.1"'), "listen.p2p"),
    (('rpc = "127.0.0.1:7001"', 'rpc = "127.0.0.1:65536"'), "listen.rpc"),
    (('metrics = "127.0.0.1:7002"\n', ''), "listen.metrics"),
    (('data_dir = "data"', 'data_dir = ""'), "data_dir"),
])
def test_bad_values_name_their_key(tmp_path, mutation, key):
    assert error_of(tmp_path, BASE.replace(*mutation)).startswith(f"{key}:")


def test_cross_field_rules_and_peer_list(tmp_path):
    assert error_of(tmp_path, BASE + "[consensus]\ncheckpoint_interval = 50\nwatermark_window = 99\n").startswith(
        "consensus.watermark_window:")
    assert error_of(tmp_path, BASE + "[limits]\nreconnect_backoff_min_ms = 500\nreconnect_backoff_max_ms = 499\n"
                    ).startswith("limits.reconnect_backoff_max_ms:")
    assert error_of(tmp_path, BASE + '[[peers]]\nid = "hk-1"\naddress = "h:1"\n').startswith("peers[0].id:")
    two = '[[peers]]\nid = "cn-1"\naddress = "h:1"\n'
    assert error_of(tmp_path, BASE + two + two).startswith("peers[1].id:")
    assert error_of(tmp_path, BASE + '[log]\nformat = "xml"\n').startswith("log.format:")


def test_unreadable_or_invalid_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    assert "not valid TOML" in error_of(tmp_path, "node_id = ")


def test_address_parsing():
    assert str(parse_address("[::1]:80", "k")) == "[::1]:80"
    assert parse_address("example.org:0", "k").port == 0
    for bad in ("nohost", ":80", "h:", "h:-1", "h:x", 80):
        with pytest.raises(ConfigError):
            parse_address(bad, "k")


def test_key_file_round_trip_and_mode(tmp_path):
    path = tmp_path / "k.json"
    key = KeyPair.generate("hk-1")
    write_key_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key_file(path)
    assert loaded.public_key == key.public_key and loaded.id == "hk-1"
    assert load_public_key(str(path)) == key.public_key
    assert load_public_key(key.public_key.hex()) == key.public_key
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(path, key)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(path)


def test_malformed_key_files_are_refused(tmp_path):
    path = tmp_path / "k.json"
    other = KeyPair.generate()
    cases = {
        "not JSON": "{",
        "JSON object": "[]",
        "'seed' is missing": '{"public_key": "%s"}' % other.public_key.hex(),
        "'seed' is not hex": '{"seed": "zz", "public_key": "%s"}' % other.public_key.hex(),
        "must be 32 bytes": '{"seed": "00", "public_key": "%s"}' % other.public_key.hex(),
        "does not belong": '{"seed": "%s", "public_key": "%s"}' % ("11" * 32, other.public_key.hex()),
        # Nested past Python's recursion limit, within the 4 KiB size bound: a clear error, no traceback.
        "not JSON: RecursionError": "[" * 2000 + "]" * 2000,
        "'seed' is not hex|must be 32 bytes|'seed'": '{"seed": [[[[1]]]], "public_key": "%s"}' % other.public_key.hex(),
    }
    for expected, text in cases.items():
        path.write_text(text)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError, match=expected):
            load_key_file(path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(tmp_path / "none.json")


async def http(port, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    await stream.aclose()
    return b"".join(chunks)


async def test_metrics_endpoint_serves_text_format_and_refuses_the_rest():
    """GET /metrics returns every metric in Prometheus text format; other paths 404; oversized heads 400."""
    metrics = NodeMetrics()
    metrics.height.set(7)
    metrics.rejected_frames.inc(label_value="bad-shape")
    metrics.commit_latency.observe(0.03)
    metrics.commit_latency.observe(20)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(lambda task_status: serve_metrics(
                metrics, "127.0.0.1", 0, request_bytes_max=256, client_timeout_ms=500, task_status=task_status))
            port = listeners[0].socket.getsockname()[1]
            body = await http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert body.startswith(b"HTTP/1.0 200 OK")
            text = body.decode()
            assert "\nbayledger_height 7\n" in text
            assert 'bayledger_rejected_frames_total{reason="bad-shape"} 1' in text
            assert 'bayledger_block_commit_latency_seconds_bucket{le="0.05"} 1' in text
            assert 'bayledger_block_commit_latency_seconds_bucket{le="+Inf"} 2' in text
            assert "bayledger_block_commit_latency_seconds_count 2" in text
            assert (await http(port, b"GET /other HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404")
            assert (await http(port, b"POST /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 405")
            assert (await http(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.0 400")
            assert (await http(port, b"GET /metrics HTTP/1.0\r\nX: " + b"a" * 300 + b"\r\n\r\n")).startswith(
                b"HTTP/1.0 400")
            # A client that never finishes its request is cut off instead of holding a slot forever.
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            await stalled.send_all(b"GET /met")
            assert await stalled.receive_some(100) == b""
            nursery.cancel_scope.cancel()


def test_label_values_are_bounded():
    metrics = NodeMetrics()
    for index in range(100):
        metrics.rejected_messages.inc(label_value=f"reason-{index}")
    assert len(metrics.rejected_messages.values) == 65
    assert metrics.rejected_messages.get("other") == 36


def test_operations_doc_lists_every_config_field_with_its_default():
    """docs/OPERATIONS.md is the config reference: every field of every section appears with its default."""
    from dataclasses import fields as dataclass_fields
    from pathlib import Path

    from node.config import ConsensusConfig, LimitsConfig, LogConfig, NodeConfig, TestingConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()
    for name in [f.name for f in dataclass_fields(NodeConfig) if f.name != "source"] + ["p2p", "rpc", "metrics"]:
        assert f"`{name}`" in text or f"`[{name}]`" in text, name
    for section in (ConsensusConfig, LimitsConfig, LogConfig, TestingConfig):
        for field in dataclass_fields(section):
            default = field.default
            shown = ("true" if default else "false") if isinstance(default, bool) else str(default)
            assert f"| `{field.name}` | {shown} |" in text or f"| `{field.name}` | `{shown}` |" in text, field.name


def test_config_file_over_its_size_bound_is_refused_before_parsing(tmp_path):
    from node.config import CONFIG_FILE_BYTES_MAX
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * (CONFIG_FILE_BYTES_MAX // 10 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_config_file_nested_past_the_recursion_limit_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="too deeply|not valid TOML"):
        load_config(path)


def test_peer_limits_are_the_limits_section_with_its_defaults(tmp_path):
    """PeerLimits (node/transport.py) holds every [limits] key of the peer links under the same name,
    the same defaults, and a loaded config's values."""
    from dataclasses import fields

    from node.config import LimitsConfig
    from node.transport import PeerLimits

    assert PeerLimits() == PeerLimits.from_config(LimitsConfig())
    config = load(tmp_path, BASE + "[limits]\nreverse_dial_delay_ms = 7\npeer_send_queue_frames_max = 9\n")
    limits = PeerLimits.from_config(config.limits)
    assert (limits.reverse_dial_delay_ms, limits.peer_send_queue_frames_max) == (7, 9)
    assert {f.name for f in fields(PeerLimits)} <= {f.name for f in fields(LimitsConfig)}
