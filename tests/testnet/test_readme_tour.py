"""The README's tour, run as written against a real testnet, so the README cannot drift.

The test reads the `$ ` lines of README.md's "A five-minute tour" section and the output shown
under each, starts a 4-validator testnet as `make testnet` does (with its sample commit, so the
heights are those of a fresh `make testnet`) on free ports in a temporary directory, and runs every
command with bash, in order, in a scratch folder laid out like a clone (`testnet/.run`, `.venv`).
Only the ports are rewritten (the README's 7700/7800/7900 blocks to the test's). Shell state (the
`source`, `export`, `NAME=` and `cd` lines) is replayed before each command.

Each command's exit status must be the one its comment gives (`# exit N`, else 0) and its whole
output (stdout and stderr) must match the lines shown, where:
- `...` in a line matches any text, and a line that is only `...` any number of lines;
- a hash abbreviated as `6e8175c1...cb6d38` matches any 64 hex digits, a longer hex string any;
- times (ISO 8601), pids, and views are not compared, nor the height of a node that has just
  been restarted: they depend on the run. Heights, leaves, verdicts and messages are compared.
`python -m testnet status` is asked again for up to `status_settle_s` until it matches: a killed
node's peers notice the closed link, and a restarted node catches up, a moment later.
The teardown stops the testnet by pid (`python -m testnet down`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testnet import ports

pytestmark = pytest.mark.slow   # real validator processes: make test runs these alone (pyproject.toml)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TOUR_HEADING = "## A five-minute tour"
README_BASE_PORT = 7700          # the README's ports: p2p 7700+i, rpc 7800+i, metrics 7900+i
command_timeout_s = 120          # one tour command (a submit waits for its commit)
up_timeout_s = 180               # generate keys, start four daemons, run the sample
status_settle_s = 30.0           # a status table that does not match yet is asked again until then
status_poll_s = 0.5
up_attempts_max = 3              # another test may take the free base port between the probe and `up`


@dataclass
class Step:
    line: int                    # README line number of the `$ ` line, for failure messages
    command: str
    shown: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        found = re.search(r"\s#\s*exit (\d+)\b", self.command)
        return int(found.group(1)) if found else 0

    @property
    def changes_shell_state(self) -> bool:
        return bool(re.match(r"(source|export|cd)\s|[A-Za-z_][A-Za-z0-9_]*=", self.command)
                     or re.search(r"&&\s*cd\s", self.command))


def tour_steps(text: str) -> list[Step]:
    """The `$ ` commands of the tour section, each with the output lines shown under it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == TOUR_HEADING)
    steps: list[Step] = []
    current: Step | None = None
    for number, line in enumerate(lines[start + 1:], start=start + 2):
        if line.startswith("## "):
            break
        if line.startswith("    $ "):
            current = Step(number, line[len("    $ "):].strip())
            steps.append(current)
        elif line.startswith("    ") and line.strip() and current is not None:
            current.shown.append(line[4:].rstrip())
        else:
            current = None       # a blank or prose line ends the code block
    return steps


def rewrite_ports(text: str, base_port: int) -> str:
    def moved(match: re.Match) -> str:
        return f"127.0.0.1:{base_port + int(match.group(1)) - README_BASE_PORT}"
    return re.sub(r"127\.0\.0\.1:(7[789]\d\d)\b", moved, text)


# -- matching shown output ----------------------------------------------------------------------

_TOKENS = [
    (r"[0-9a-f]{4,}\.\.\.[0-9a-f]{4,}", r"[0-9a-f]{64}"),                    # abbreviated hash
    (r"\.\.\.", r".*"),
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"),
    (r"[0-9a-f]{16,}", r"[0-9a-f]+"),
    (r"(?<=pid )\d+", r"\d+"),
    (r"(?<=view )\d+", r"\d+"),
    (r"(?<=, height )\d+(?=, view)", r"\d+"),                                 # a restarted node's first answer
    (r" +", r" +"),
]
_TOKEN = re.compile("|".join(f"({pattern})" for pattern, _ in _TOKENS))
# A row of `python -m testnet status`: node, jurisdiction, pid, height, view, epoch, peers, rpc, notes.
_STATUS_ROW = re.compile(r"\s+(\S+)\s+(HK|CN)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)(.*)")


def line_pattern(shown: str) -> str:
    row = _STATUS_ROW.fullmatch(shown)
    if row:
        node, jurisdiction, _pid, height, _view, epoch, peers, rpc, notes = row.groups()
        cells = [re.escape(node), jurisdiction, r"(?:\d+|-)", re.escape(height), r"(?:\d+|-)", re.escape(epoch),
                 re.escape(peers), re.escape(rpc)]
        return r"\s+" + r"\s+".join(cells) + (r"\s+" + re.escape(notes.strip()) if notes.strip() else "")
    pattern, position = [], 0
    for match in _TOKEN.finditer(shown):
        pattern.append(re.escape(shown[position:match.start()]))
        pattern.append(_TOKENS[match.lastindex - 1][1])
        position = match.end()
    pattern.append(re.escape(shown[position:]))
    return "".join(pattern)


def output_matches(shown: list[str], actual: list[str]) -> bool:
    """True if the actual lines are the shown ones, a line of only `...` standing for any lines."""
    if not shown:
        return not actual
    if shown[0].strip() == "...":
        return any(output_matches(shown[1:], actual[skip:]) for skip in range(len(actual) + 1))
    return bool(actual) and re.fullmatch(line_pattern(shown[0]), actual[0]) is not None \
        and output_matches(shown[1:], actual[1:])


# -- the testnet and the scratch clone ----------------------------------------------------------

def run_testnet(*args: str, timeout_s: float = command_timeout_s) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testnet", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.fixture
def clone(tmp_path):
    """A folder laid out like a clone after `make testnet`: `.venv` (this interpreter's venv) and a
    running testnet in `testnet/.run` on free ports. Yields (folder, base port); stops the testnet."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file() or shutil.which("bash") is None:
        pytest.fail("the tour needs bash and a venv to `source`: run the tests from .venv, as `make test` does")
    (tmp_path / ".venv").symlink_to(sys.prefix)
    run_dir = tmp_path / "testnet" / ".run"
    try:
        for attempt in range(up_attempts_max):
            base_port = ports.find_free_base_port(4, start=20000 + 97 * attempt)
            done = run_testnet("up", "--dir", str(run_dir), "--base-port", str(base_port), timeout_s=up_timeout_s)
            if done.returncode == 0 or "is in use" not in done.stderr or (run_dir / "testnet.json").exists():
                break
        assert done.returncode == 0, done.stdout + done.stderr
        yield tmp_path, base_port
    finally:
        if (run_dir / "testnet.json").exists():
            run_testnet("down", "--dir", str(run_dir))


def shell_environment() -> dict[str, str]:
    """The caller's environment without settings the tour makes itself (or that would change it)."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith("BAYLEDGER_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    # `python -m testnet` from the scratch folder finds the project even without an installed copy.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return environment


def run_step(folder: Path, state: list[str], command: str) -> subprocess.CompletedProcess:
    script = "\n".join([*state, command]) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=folder, env=shell_environment(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=command_timeout_s)


def output_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


# -- the tests ----------------------------------------------------------------------------------

def test_the_tour_parses_into_commands_with_outputs():
    # The parser finds the tour: its setup, a submit and a crash, outputs under the commands.
    steps = tour_steps(README.read_text())
    commands = [s.command for s in steps]
    assert commands[0].startswith("source ") and any(c.startswith("bayledger submit") for c in commands)
    assert any(c.startswith("python -m testnet kill") for c in commands)
    assert sum(1 for s in steps if s.shown) >= 10
    assert any(s.exit_status == 1 for s in steps)
    assert rewrite_ports("--rpc 127.0.0.1:7801 x 127.0.0.1:7903", 20000) == "--rpc 127.0.0.1:20101 x 127.0.0.1:20203"


def test_shown_lines_mask_only_what_depends_on_the_run():
    # Hashes, times, pids and views are masked; verdicts, heights and leaves are not.
    shown = "MATCH: commitment 6e8175c1...cb6d38 recorded at height 2 at 2026-12-06T16:58:46.392Z (leaf 1, x)"
    actual = "MATCH: commitment " + "ab" * 32 + " recorded at height 2 at 2027-01-01T00:00:00.001Z (leaf 1, x)"
    assert output_matches([shown], [actual])
    assert not output_matches([shown], [actual.replace("height 2", "height 3")])
    assert not output_matches([shown], [actual.replace("MATCH", "NO MATCH", 1)])
    row = "  hk-1   HK    16516       5     0     0     2  127.0.0.1:7800"
    assert output_matches([row], ["  hk-1   HK      812       5     3     0     2  127.0.0.1:7800"])
    assert not output_matches([row], ["  hk-1   HK      812       4     0     0     2  127.0.0.1:7800"])
    assert not output_matches([row], ["  hk-1   HK      812       5     0     1     2  127.0.0.1:7800"])
    assert output_matches(["a", "...", "b"], ["a", "x", "y", "b"]) and not output_matches(["a"], ["a", "b"])


def test_the_readme_tour_runs_as_written(clone):
    # Every `$ ` line of the tour, in order, in bash: its exit status and output are the README's.
    folder, base_port = clone
    steps = tour_steps(README.read_text())
    state: list[str] = []
    for step in steps:
        command = rewrite_ports(step.command, base_port)
        shown = [rewrite_ports(line, base_port) for line in step.shown]
        deadline = time.monotonic() + (status_settle_s if command.startswith("python -m testnet status") else 0)
        while True:
            done = run_step(folder, state, command)
            actual = output_lines(done.stdout)
            if (done.returncode == step.exit_status and output_matches(shown, actual)) \
                    or time.monotonic() > deadline:
                break
            time.sleep(status_poll_s)
        assert done.returncode == step.exit_status and output_matches(shown, actual), (
            f"README.md line {step.line}: `{step.command}`\n"
            f"exit status {done.returncode} (README: {step.exit_status})\n"
            "README shows:\n" + "\n".join(f"    {line}" for line in shown) + "\n"
            "the command printed:\n" + "\n".join(f"    {line}" for line in actual))
        if step.changes_shell_state:
            state.append(command)
    # Everything the tour wrote is in its scratch folder, which git ignores.
    assert sorted(p.name for p in folder.iterdir()) == [".venv", "testnet", "tour"]
    assert (folder / "tour" / "report.txt.receipt.json").is_file()
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "tour/report.txt.receipt.json"])
        assert ignored.returncode == 0, "git does not ignore the tour's folder (add /tour/ to .gitignore)"


def test_the_readme_stays_short():
    """A newcomer's page: under 200 lines; the benchmark history lives in docs/PERFORMANCE.md."""
    assert len(README.read_text().splitlines()) < 200
