"""Log configuration: JSON lines off a terminal, console text on one, node id and bound values on every line."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from node.logs import configure_logging, wants_json


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_json_lines_carry_node_and_bound_context():
    stream = io.StringIO()
    configure_logging("hk-1", log_format="auto", stream=stream)
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(view=3, height=7):
        log.info("block committed", entries=2, first=b"\x01\x02")
    log.debug("hidden at info level")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert (line["node"], line["view"], line["height"], line["event"], line["level"]) == (
        "hk-1", 3, 7, "block committed", "info")
    assert line["first"] == "0102"                       # bytes as hex
    assert line["timestamp"].endswith("Z")                # ISO 8601, UTC


def test_console_format_on_a_terminal_and_explicit_formats():
    terminal = FakeTerminal()
    configure_logging("cn-1", log_format="auto", level="debug", stream=terminal)
    structlog.get_logger().debug("peer connected", peer="hk-1")
    text = terminal.getvalue()
    assert "peer connected" in text and "node=cn-1" in text and not text.lstrip().startswith("{")
    assert wants_json("json", FakeTerminal()) and not wants_json("console", io.StringIO())
