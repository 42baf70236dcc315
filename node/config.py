"""The daemon's configuration: one frozen, typed object loaded from TOML.

Every field is validated when loaded and every error names the key, e.g.
`consensus.view_timeout_ms: must be an integer between 100 and 600000`.
Unknown keys are rejected by name so a typo never silently falls back to a
default. Relative paths are resolved against the config file's directory so a
node directory can be moved as a whole.

The full reference (every field, default and unit) is in docs/OPERATIONS.md.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from node import query_log
from node.address import Address, AddressError


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key."""


_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A config file is a few KiB. The bound also caps tomllib's cost, which grows with the square of a
# dotted key's length: a 20 KB key `a.a.a...` took 2.7 s and 400 MB here.
CONFIG_FILE_BYTES_MAX = 32_768
LOG_FORMATS = ("auto", "json", "console")
SPARE_KEY_FILES_MAX = 4   # a rotation needs one; a few allow a rotation planned while another is pending
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_address(text: object, key: str) -> Address:
    """HOST:PORT (node/address.py) under config key `key`; port 0 lets the OS choose."""
    try:
        return Address.parse(text, port_zero_ok=True)
    except AddressError as exc:
        raise ConfigError(f"{key}: {exc}") from None


@dataclass(frozen=True)
class Peer:
    id: str
    address: Address


@dataclass(frozen=True)
class Listen:
    p2p: Address
    rpc: Address
    metrics: Address


@dataclass(frozen=True)
class LogConfig:
    format: str = "auto"   # auto: JSON lines unless stderr is a terminal
    level: str = "info"


@dataclass(frozen=True)
class ConsensusConfig:
    batch_requests_max: int = 500      # entries per proposed block
    batch_wait_ms: int = 20            # how long the primary waits to fill a batch
    partial_batch_in_flight_max: int = 1  # a batch that is not full waits while this many blocks are in flight
    view_timeout_ms: int = 2000        # no progress for this long -> view change
    checkpoint_interval: int = 16      # blocks between checkpoints
    watermark_window: int = 64         # blocks in flight beyond the last stable checkpoint
    tick_interval_ms: int = 10         # how often the core is given the clock
    vouch_wait_ms: int = 1000          # a non-checking backup's wait for vouchers (at most view_timeout_ms / 2);
                                       # 0: always check signatures
    forward_others_after_ms: int = 100  # our clients' requests reach validators other than the primary only if
                                        # still pending this long after (capped at view_timeout_ms / 4); 0: at once


@dataclass(frozen=True)
class LimitsConfig:
    # One encrypted peer frame (ciphertext). A NEW-VIEW may carry up to consensus.messages.MESSAGE_BYTES_MAX
    # (64 MiB: 2f + 1 view changes with their prepared blocks); the frame adds msgpack and AEAD overhead.
    frame_bytes_max: int = 64 * 1024 * 1024 + 1024
    handshake_timeout_ms: int = 5000               # a peer must finish the handshake in this time
    handshake_first_bytes_timeout_ms: int = 1000   # ... and send its ephemeral key within this time
    inbound_handshakes_max: int = 64               # unauthenticated inbound handshakes at once (non-validator IPs)
    inbound_handshakes_per_source_max: int = 8     # unauthenticated inbound handshakes at once per source IP
    reverse_dial_delay_ms: int = 2000              # a higher id dials a lower one after its link is down this long
    peer_malformed_messages_max: int = 8           # undecodable frames/messages tolerated per link before it is cut
    peer_offence_backoff_min_ms: int = 1000        # a peer cut twice for misbehaviour is refused this long ...
    # ... doubling per offence up to this. Short on purpose: a Byzantine validator holds a real key and
    # rejoins anyway (each return costs us one refused frame), while an honest daemon restarted with
    # that key in place of a misbehaving process must get its links back within seconds.
    peer_offence_backoff_max_ms: int = 5000
    peer_inbound_queue_bytes_max: int = 128 * 1024 * 1024  # bytes read from one peer not yet taken by the core
    peer_send_queue_frames_max: int = 4096         # frames waiting for one slow peer
    peer_send_queue_bytes_max: int = 256 * 1024 * 1024  # bytes waiting for one slow peer
    inbound_queue_messages_max: int = 4096         # messages from all peers waiting for the core
    mempool_requests_max: int = 20000              # accepted entries not yet committed
    # Each participant's fair share of this node's submits (entry author; governance entries count
    # as "governance"): beyond either, its submits are refused at once and others' are not touched.
    # Far above the benchmark (testnet/bench.py: 32 authors, each on one node with at most 64 submits
    # waiting; 5,000-12,000/s in all is 160-375/s per author), so only a flood meets them; and one
    # flooding participant holds at most a tenth of the default mempool.
    submit_rate_per_participant_per_s: int = 1000  # token bucket refill: entries per second ...
    submit_burst_per_participant: int = 2000       # ... and its size: entries at once after a pause
    mempool_requests_per_participant_max: int = 2000  # its entries submitted here, not yet committed or refused
    rpc_connections_max: int = 256                 # concurrent RPC clients
    rpc_connections_per_source_max: int = 128      # of those, from one client address (the bench opens 64)
    catch_up_blocks_max: int = 64                  # blocks in one catch-up response (wire limit 64)
    reconnect_backoff_min_ms: int = 100            # first redial delay
    reconnect_backoff_max_ms: int = 5000           # redial delay cap
    metrics_request_bytes_max: int = 8192          # HTTP request head on the metrics port
    metrics_client_timeout_ms: int = 5000          # slow metrics clients are cut off
    submit_wait_timeout_ms_max: int = 60000        # longest a client may wait for a commit
    # After SIGTERM/SIGINT: how long waiting submits may still get their receipt before the node stops.
    shutdown_drain_ms: int = 5000


@dataclass(frozen=True)
class P2pConfig:
    # Accept inbound peer connections only from the IPs of the validators' p2p hosts (config peers or
    # genesis), checked before the handshake. Off by default: a validator behind NAT dials from another IP.
    inbound_allow_only_validators: bool = False


@dataclass(frozen=True)
class TestingConfig:
    # Lets the admin RPC cut peer links (partition tests). Never enable in production.
    fault_injection: bool = False


@dataclass(frozen=True)
class RpcConfig:
    # TLS is the default: both files are required unless plaintext = true (development only).
    tls_cert_file: Path | None = None      # the node's RPC certificate (PEM), then any intermediates
    tls_key_file: Path | None = None       # its private key (PEM, unencrypted; keep it mode 0600)
    plaintext: bool = False                # serve RPC without TLS; the daemon warns at start
    tls_handshake_timeout_ms: int = 10_000  # a client must finish its TLS handshake in this time


@dataclass(frozen=True)
class QueryLogConfig:
    # Where the match-query log goes (node/query_log.py); None: DATA_DIR/query-log.
    dir: Path | None = None
    file_bytes_max: int = 64 * 1024 * 1024   # a file is rotated before it would pass this many bytes
    files_max: int = 64                      # files kept; the oldest beyond are deleted (the retention)
    fsync_interval_ms: int = 1000            # appended lines are fsynced at most this long apart; 0: each line

    def directory(self, data_dir: Path) -> Path:
        return self.dir if self.dir is not None else data_dir / "query-log"


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    key_file: Path
    genesis_file: Path
    data_dir: Path
    listen: Listen
    peers: tuple[Peer, ...] | None = None    # None: take validator addresses from genesis
    # Keys this validator also holds: a rotated key, loaded before the epoch that names it starts.
    spare_key_files: tuple[Path, ...] = ()
    # A validator added by a reconfiguration: catch up from genesis, vote once its epoch starts.
    joining: bool = False
    log: LogConfig = field(default_factory=LogConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    p2p: P2pConfig = field(default_factory=P2pConfig)
    testing: TestingConfig = field(default_factory=TestingConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    query_log: QueryLogConfig = field(default_factory=QueryLogConfig)
    source: Path | None = None               # the file it was loaded from


# (minimum, maximum) for every integer field, by section.
_INT_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "consensus": {
        "batch_requests_max": (1, 4096),  # consensus.messages.BLOCK_REQUESTS_MAX
        "batch_wait_ms": (0, 60_000),
        "partial_batch_in_flight_max": (1, 1024),
        "view_timeout_ms": (100, 600_000),
        "checkpoint_interval": (1, 100_000),
        "watermark_window": (2, 1024),  # consensus.messages.PREPARED_CERTIFICATES_MAX
        "tick_interval_ms": (1, 1000),
        "vouch_wait_ms": (0, 60_000),
        "forward_others_after_ms": (0, 150_000),   # view_timeout_ms / 4 at its maximum
    },
    "limits": {
        "frame_bytes_max": (1024, 256 * 1024 * 1024),
        "handshake_timeout_ms": (100, 600_000),
        "handshake_first_bytes_timeout_ms": (100, 600_000),   # and at most handshake_timeout_ms
        "inbound_handshakes_max": (1, 100_000),
        "inbound_handshakes_per_source_max": (1, 100_000),
        "reverse_dial_delay_ms": (0, 600_000),                 # 0: both sides dial at once
        "peer_malformed_messages_max": (0, 1_000_000),         # 0: cut at the first
        "peer_offence_backoff_min_ms": (1, 3_600_000),
        "peer_offence_backoff_max_ms": (1, 86_400_000),
        "peer_inbound_queue_bytes_max": (1024, 16 * 1024 * 1024 * 1024),  # and at least frame_bytes_max
        "peer_send_queue_frames_max": (1, 1_000_000),
        "peer_send_queue_bytes_max": (1024, 16 * 1024 * 1024 * 1024),
        "inbound_queue_messages_max": (1, 1_000_000),
        "mempool_requests_max": (1, 10_000_000),
        "submit_rate_per_participant_per_s": (1, 1_000_000),
        "submit_burst_per_participant": (1, 10_000_000),
        "mempool_requests_per_participant_max": (1, 10_000_000),   # above mempool_requests_max: no share
        "rpc_connections_max": (1, 100_000),
        "rpc_connections_per_source_max": (1, 100_000),
        "catch_up_blocks_max": (1, 64),  # consensus.messages.CATCH_UP_BLOCKS_MAX
        "reconnect_backoff_min_ms": (1, 600_000),
        "reconnect_backoff_max_ms": (1, 3_600_000),
        "metrics_request_bytes_max": (256, 1024 * 1024),
        "metrics_client_timeout_ms": (100, 600_000),
        "submit_wait_timeout_ms_max": (100, 3_600_000),
        "shutdown_drain_ms": (0, 600_000),   # 0: answer waiting submits "shutting-down" at once
    },
}

_TOP_KEYS = ("node_id", "key_file", "genesis_file", "data_dir", "listen", "peers", "spare_key_files", "joining",
             "log", "consensus", "limits", "p2p", "testing", "rpc", "query_log")
_INT_RANGES["query_log"] = {
    "file_bytes_max": (query_log.FILE_BYTES_MIN, query_log.FILE_BYTES_MAX),   # 4 KiB (one line) - 1 GiB
    "files_max": (query_log.FILES_MIN, query_log.FILES_MAX),                  # 2 - 10000
    "fsync_interval_ms": (0, query_log.FSYNC_INTERVAL_MS_MAX),                # 0 - 60000
}
_REQUIRED_TOP = ("node_id", "key_file", "genesis_file", "data_dir", "listen")


def _reject_unknown(table: dict, allowed: tuple[str, ...] | list[str], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(allowed)})")


def _table(value: object, key: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table")
    return value


def _int_field(value: object, key: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{key}: must be an integer between {low} and {high}, got {value!r}")
    return value


def _validate_id(value: object, key: str) -> str:
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ConfigError(f"{key}: must be 1-64 characters of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty path string")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _int_section(raw: dict, name: str, cls: type) -> Any:
    table = _table(raw.get(name, {}), name)
    ranges = _INT_RANGES[name]
    _reject_unknown(table, list(ranges), name)
    values = {key: _int_field(value, f"{name}.{key}", *ranges[key]) for key, value in table.items()}
    return cls(**values)


def config_from_dict(raw: dict, base_dir: Path, source: Path | None = None) -> NodeConfig:
    """Validate a parsed TOML document; relative paths resolve against `base_dir`."""
    _reject_unknown(raw, _TOP_KEYS, "")
    for key in _REQUIRED_TOP:
        if key not in raw:
            raise ConfigError(f"{key}: required key is missing")
    node_id = _validate_id(raw["node_id"], "node_id")

    listen_table = _table(raw["listen"], "listen")
    _reject_unknown(listen_table, ("p2p", "rpc", "metrics"), "listen")
    for key in ("p2p", "rpc", "metrics"):
        if key not in listen_table:
            raise ConfigError(f"listen.{key}: required key is missing")
    listen = Listen(**{key: parse_address(listen_table[key], f"listen.{key}") for key in ("p2p", "rpc", "metrics")})

    peers: tuple[Peer, ...] | None = None
    if "peers" in raw:
        if not isinstance(raw["peers"], list):
            raise ConfigError("peers: must be an array of tables [[peers]]")
        seen: set[str] = set()
        parsed = []
        for index, item in enumerate(raw["peers"]):
            key = f"peers[{index}]"
            table = _table(item, key)
            _reject_unknown(table, ("id", "address"), key)
            for needed in ("id", "address"):
                if needed not in table:
                    raise ConfigError(f"{key}.{needed}: required key is missing")
            peer_id = _validate_id(table["id"], f"{key}.id")
            if peer_id == node_id:
                raise ConfigError(f"{key}.id: {peer_id!r} is this node itself")
            if peer_id in seen:
                raise ConfigError(f"{key}.id: peer {peer_id!r} is listed twice")
            seen.add(peer_id)
            parsed.append(Peer(id=peer_id, address=parse_address(table["address"], f"{key}.address")))
        peers = tuple(parsed)

    log_table = _table(raw.get("log", {}), "log")
    _reject_unknown(log_table, ("format", "level"), "log")
    log_format = log_table.get("format", LogConfig.format)
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log.format: must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    log_level = log_table.get("level", LogConfig.level)
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log.level: must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    consensus = _int_section(raw, "consensus", ConsensusConfig)
    if consensus.watermark_window < 2 * consensus.checkpoint_interval:
        raise ConfigError(
            f"consensus.watermark_window: must be at least 2 x consensus.checkpoint_interval "
            f"({2 * consensus.checkpoint_interval}) so proposals do not stall between checkpoints, "
            f"got {consensus.watermark_window}"
        )
    limits = _int_section(raw, "limits", LimitsConfig)
    if limits.reconnect_backoff_max_ms < limits.reconnect_backoff_min_ms:
        raise ConfigError("limits.reconnect_backoff_max_ms: must not be below limits.reconnect_backoff_min_ms")
    if limits.peer_offence_backoff_max_ms < limits.peer_offence_backoff_min_ms:
        raise ConfigError("limits.peer_offence_backoff_max_ms: must not be below limits.peer_offence_backoff_min_ms")
    if limits.handshake_first_bytes_timeout_ms > limits.handshake_timeout_ms:
        raise ConfigError(f"limits.handshake_first_bytes_timeout_ms: must not be above limits.handshake_timeout_ms "
                          f"({limits.handshake_timeout_ms}), got {limits.handshake_first_bytes_timeout_ms}")
    if "peer_inbound_queue_bytes_max" not in raw.get("limits", {}) and (
            limits.peer_inbound_queue_bytes_max < limits.frame_bytes_max):
        # Left at its default under a larger frame limit: the budget grows to hold one frame.
        limits = replace(limits, peer_inbound_queue_bytes_max=limits.frame_bytes_max)
    if limits.peer_inbound_queue_bytes_max < limits.frame_bytes_max:
        raise ConfigError(f"limits.peer_inbound_queue_bytes_max: must be at least limits.frame_bytes_max "
                          f"({limits.frame_bytes_max}) so one frame always fits, "
                          f"got {limits.peer_inbound_queue_bytes_max}")

    p2p_table = _table(raw.get("p2p", {}), "p2p")
    _reject_unknown(p2p_table, ("inbound_allow_only_validators",), "p2p")
    allow_only_validators = p2p_table.get("inbound_allow_only_validators", P2pConfig.inbound_allow_only_validators)
    if not isinstance(allow_only_validators, bool):
        raise ConfigError(f"p2p.inbound_allow_only_validators: must be true or false, got {allow_only_validators!r}")

    testing_table = _table(raw.get("testing", {}), "testing")
    _reject_unknown(testing_table, ("fault_injection",), "testing")
    fault_injection = testing_table.get("fault_injection", False)
    if not isinstance(fault_injection, bool):
        raise ConfigError(f"testing.fault_injection: must be true or false, got {fault_injection!r}")

    rpc = _rpc_section(raw, base_dir)

    query_log_table = _table(raw.get("query_log", {}), "query_log")
    query_log_ranges = _INT_RANGES["query_log"]
    _reject_unknown(query_log_table, ["dir", *query_log_ranges], "query_log")
    query_log_config = QueryLogConfig(
        dir=_path(query_log_table["dir"], "query_log.dir", base_dir) if "dir" in query_log_table else None,
        **{key: _int_field(value, f"query_log.{key}", *query_log_ranges[key])
           for key, value in query_log_table.items() if key != "dir"})

    spare_key_files = raw.get("spare_key_files", [])
    if not isinstance(spare_key_files, list) or len(spare_key_files) > SPARE_KEY_FILES_MAX:
        raise ConfigError(f"spare_key_files: must be a list of at most {SPARE_KEY_FILES_MAX} key file paths")
    joining = raw.get("joining", False)
    if not isinstance(joining, bool):
        raise ConfigError(f"joining: must be true or false, got {joining!r}")

    return NodeConfig(
        node_id=node_id,
        key_file=_path(raw["key_file"], "key_file", base_dir),
        spare_key_files=tuple(_path(item, f"spare_key_files[{index}]", base_dir)
                              for index, item in enumerate(spare_key_files)),
        joining=joining,
        genesis_file=_path(raw["genesis_file"], "genesis_file", base_dir),
        data_dir=_path(raw["data_dir"], "data_dir", base_dir),
        listen=listen,
        peers=peers,
        log=LogConfig(format=log_format, level=log_level),
        consensus=consensus,
        limits=limits,
        p2p=P2pConfig(inbound_allow_only_validators=allow_only_validators),
        testing=TestingConfig(fault_injection=fault_injection),
        rpc=rpc,
        query_log=query_log_config,
        source=source,
    )


_RPC_KEYS = ("tls_cert_file", "tls_key_file", "plaintext", "tls_handshake_timeout_ms")
RPC_TLS_HANDSHAKE_TIMEOUT_MS_RANGE = (100, 600_000)


def _rpc_section(raw: dict, base_dir: Path) -> RpcConfig:
    """[rpc]: TLS certificate and key (required unless plaintext = true); the files are read at start."""
    table = _table(raw.get("rpc", {}), "rpc")
    _reject_unknown(table, _RPC_KEYS, "rpc")
    plaintext = table.get("plaintext", RpcConfig.plaintext)
    if not isinstance(plaintext, bool):
        raise ConfigError(f"rpc.plaintext: must be true or false, got {plaintext!r}")
    timeout_ms = _int_field(table.get("tls_handshake_timeout_ms", RpcConfig.tls_handshake_timeout_ms),
                            "rpc.tls_handshake_timeout_ms", *RPC_TLS_HANDSHAKE_TIMEOUT_MS_RANGE)
    files = {}
    for key in ("tls_cert_file", "tls_key_file"):
        if key in table:
            if plaintext:
                # Ambiguous: a certificate that is configured but not served.
                raise ConfigError(f"rpc.{key}: set, but rpc.plaintext = true serves RPC without TLS; remove one")
            files[key] = _path(table[key], f"rpc.{key}", base_dir)
        elif not plaintext:
            raise ConfigError(f"rpc.{key}: required key is missing (RPC is served over TLS; "
                              f"rpc.plaintext = true turns TLS off, for development only)")
    return RpcConfig(plaintext=plaintext, tls_handshake_timeout_ms=timeout_ms, **files)


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a TOML config file; raise ConfigError with a clear reason."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    if len(data) > CONFIG_FILE_BYTES_MAX:
        raise ConfigError(f"config file {path} is larger than {CONFIG_FILE_BYTES_MAX} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
    return config_from_dict(raw, base_dir=path.resolve().parent, source=path)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, Path)):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render_config(config: NodeConfig) -> str:
    """The TOML text of `config` (every field written out); load_config reads it back equal."""
    lines = [
        f"node_id = {_toml_value(config.node_id)}",
        f"key_file = {_toml_value(config.key_file)}",
        f"genesis_file = {_toml_value(config.genesis_file)}",
        f"data_dir = {_toml_value(config.data_dir)}",
        f"spare_key_files = [{', '.join(_toml_value(path) for path in config.spare_key_files)}]",
        f"joining = {_toml_value(config.joining)}",
        "",
        "[listen]",
        f"p2p = {_toml_value(str(config.listen.p2p))}",
        f"rpc = {_toml_value(str(config.listen.rpc))}",
        f"metrics = {_toml_value(str(config.listen.metrics))}",
        "",
        "[log]",
        f"format = {_toml_value(config.log.format)}",
        f"level = {_toml_value(config.log.level)}",
    ]
    for section in ("consensus", "limits", "p2p", "testing"):
        value = getattr(config, section)
        lines += ["", f"[{section}]"]
        lines += [f"{f.name} = {_toml_value(getattr(value, f.name))}" for f in fields(value)]
    lines += ["", "[rpc]"]
    for f in fields(config.rpc):
        value = getattr(config.rpc, f.name)
        if value is not None:    # an unset file is left out (plaintext)
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines += ["", "[query_log]"]
    if config.query_log.dir is not None:     # unset: follows data_dir wherever the node directory moves
        lines.append(f"dir = {_toml_value(config.query_log.dir)}")
    lines += [f"{name} = {_toml_value(getattr(config.query_log, name))}" for name in _INT_RANGES["query_log"]]
    for peer in config.peers or ():
        lines += ["", "[[peers]]", f"id = {_toml_value(peer.id)}", f"address = {_toml_value(str(peer.address))}"]
    return "\n".join(lines) + "\n"
