"""Start, watch and stop the daemons of a local testnet as background processes.

Each node runs `python -m node.cli node --config CONFIG` in its own session
(so a Ctrl-C in the terminal that ran `make testnet` does not reach it), with
stdout and stderr appended to its log file and its pid written to a pid file.

A pid file can outlive its process and the pid can be reused by an unrelated
program, so a node counts as running only if the pid is alive, not a zombie,
and its command line names the node's config file. Anything else is a stale
pid file, which `stop_node` and `start_node` remove.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

stop_timeout_ms = 10_000          # SIGTERM grace before SIGKILL
kill_wait_timeout_ms = 5_000      # how long SIGKILL may take to land
poll_interval_ms = 50
start_settle_timeout_ms = 5_000   # a started node's command line shows up in /proc
settle_poll_interval_ms = 2


class SupervisorError(Exception):
    """A node that cannot be started or stopped; the message says why and where to look."""


def node_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "node.cli", "node", "--config", str(config_path)]


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file`, or None if the file is missing or does not hold a pid."""
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit() or int(text) <= 0:
        return None
    return int(text)


# Exit statuses of children this process reaped, by pid, for error messages.
exit_statuses: dict[int, int] = {}


def _reap_if_child(pid: int) -> bool:
    """Collect `pid` if it is our exited child; True if it was reaped (so it is gone)."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    if reaped == pid:
        exit_statuses[pid] = os.waitstatus_to_exitcode(status)
        return True
    return False


def process_exists(pid: int) -> bool:
    """True while `pid` is a process that has not exited (a zombie has; ours get reaped here)."""
    if _reap_if_child(pid):
        return False
    try:
        status = (Path("/proc") / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if status.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        _reap_if_child(pid)
        return False
    return True


def process_matches(pid: int, marker: str) -> bool:
    """True if `pid` is a live (non-zombie) process whose command line contains `marker`."""
    if _reap_if_child(pid):
        return False
    proc = Path("/proc") / str(pid)
    try:
        status = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # The state letter follows the parenthesized command name, which may contain spaces.
    state = status.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        _reap_if_child(pid)  # it may have exited between the first reap and the read
        return False
    return marker in cmdline


def running_pid(pid_file: Path, config_path: Path) -> int | None:
    """The pid of the node if it is running, else None (the pid file may be stale)."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    return pid if process_matches(pid, str(config_path)) else None


def start_node(config_path: Path, pid_file: Path, log_file: Path, cwd: Path | None = None) -> int:
    """Start a node in the background; raise SupervisorError if it is already running."""
    existing = running_pid(pid_file, config_path)
    if existing is not None:
        raise SupervisorError(f"node of {config_path} is already running (pid {existing})")
    return start_detached(node_command(config_path), pid_file, log_file, str(config_path), cwd)


def start_detached(command: list[str], pid_file: Path, log_file: Path, marker: str, cwd: Path | None) -> int:
    """Start `command` in its own session, output appended to `log_file`; write its pid to
    `pid_file` once its command line shows `marker` (what running_pid checks it by)."""
    pid_file.unlink(missing_ok=True)  # stale
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"--- testnet: starting {' '.join(command)} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        log.flush()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SupervisorError(f"cannot start {command[0]}: {exc.strerror}") from None
    # Just after exec, /proc/PID/cmdline is briefly empty (the new image is still being set
    # up); until it names the marker, `running_pid` could not tell our process from a stranger.
    deadline = time.monotonic() + start_settle_timeout_ms / 1000
    while not process_matches(process.pid, marker) and process_exists(process.pid):
        if time.monotonic() > deadline:
            break
        time.sleep(settle_poll_interval_ms / 1000)
    tmp = pid_file.with_suffix(".pid.tmp")
    tmp.write_text(f"{process.pid}\n")
    tmp.replace(pid_file)
    # Popen keeps a handle to reap later; we reap by pid ourselves instead.
    process.returncode = 0
    return process.pid


def _wait_gone(pid: int, timeout_ms: int) -> bool:
    # Existence, not the command line: an exiting process drops its cmdline before it is gone.
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if not process_exists(pid):
            return True
        time.sleep(poll_interval_ms / 1000)
    return not process_exists(pid)


def stop_node(pid_file: Path, config_path: Path, *, hard: bool = False,
              timeout_ms: int = stop_timeout_ms) -> str:
    """Stop the node by pid: SIGTERM, then SIGKILL after `timeout_ms` (at once with `hard`).

    Returns what happened: "not running", "stale pid file removed", "stopped" or "killed".
    """
    pid = read_pid(pid_file)
    if pid is None:
        return "not running"
    marker = str(config_path)
    if not process_matches(pid, marker):
        pid_file.unlink(missing_ok=True)
        return "stale pid file removed"
    outcome = "killed"
    if not hard:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if _wait_gone(pid, timeout_ms):
            outcome = "stopped"
    if outcome == "killed":
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait_gone(pid, kill_wait_timeout_ms):
            raise SupervisorError(f"pid {pid} survived SIGKILL for {kill_wait_timeout_ms} ms")
    pid_file.unlink(missing_ok=True)
    return outcome


def process_usage(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) and peak resident memory of a live process, from /proc."""
    proc = Path("/proc") / str(pid)
    try:
        stat_fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        status = (proc / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields after the command name start at field 3 (state); utime and stime are fields 14 and 15.
    cpu_s = (int(stat_fields[11]) + int(stat_fields[12])) / ticks
    peak_rss_kib = 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            peak_rss_kib = int(line.split()[1])
    return {"cpu_s": round(cpu_s, 2), "peak_rss_mib": round(peak_rss_kib / 1024, 1)}
