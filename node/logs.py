"""structlog set up once per process: JSON lines for machines, a console view for people.

Every line carries the node id (bound as a context variable at start-up); tasks
bind `view`, `seq`, `height` or `peer` with `structlog.contextvars.bound_contextvars`
where those apply. trio tasks copy the context of their parent when spawned, so
values bound in the daemon's main task reach every line its children write.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog

LOG_LEVEL_NUMBERS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def wants_json(log_format: str, stream: IO[str]) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure_logging(node_id: str, *, log_format: str = "auto", level: str = "info",
                      stream: IO[str] | None = None) -> None:
    """Configure structlog for this process and bind `node` on every line."""
    stream = stream if stream is not None else sys.stderr
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if wants_json(log_format, stream):
        processors.append(structlog.processors.JSONRenderer(default=_json_default))
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVEL_NUMBERS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(node=node_id)


def _json_default(value: object) -> object:
    # Signed messages and hashes are bytes: hex keeps them readable and greppable.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    logger = structlog.get_logger()
    return logger.bind(component=name) if name else logger


class LogBudget:
    """A bounded number of lines per key and time window, for lines a peer can make us write.

    `admit(key, now_ms)` returns (write_this_line, left_out) where left_out is how many lines of
    `key` were left out in the window that just ended (report it once, then it resets). Keys are
    bounded too, so a peer choosing reason strings cannot grow this table.
    """

    keys_max = 256

    def __init__(self, lines_max: int, window_ms: int):
        self.lines_max = lines_max
        self.window_ms = window_ms
        self._windows: dict[str, tuple[float, int, int]] = {}   # key -> (window start, written, left out)

    def admit(self, key: str, now_ms: float) -> tuple[bool, int]:
        start_ms, written, left_out = self._windows.get(key, (now_ms, 0, 0))
        ended_left_out = 0
        if now_ms - start_ms >= self.window_ms:
            ended_left_out = left_out
            start_ms, written, left_out = now_ms, 0, 0
        admitted = written < self.lines_max
        if admitted:
            written += 1
        else:
            left_out += 1
        if key in self._windows or len(self._windows) < self.keys_max:
            self._windows[key] = (start_ms, written, left_out)
        return admitted, ended_left_out
