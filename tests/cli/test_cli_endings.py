"""How the command lines end when the user's side ends first (issue 18): a reader that stops early
(`| head -1`), Ctrl-C, a shell outside the venv; and `make testnet`'s and `up`'s port options.

Each runs a real subprocess: exit statuses and stderr are what a shell sees."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A main that writes far more than a pipe holds (so the write after the reader closed must fail), or
# one that waits for Ctrl-C; both through node.cli.run_main as `bayledger` and `python -m testnet` are.
_PROGRAM = """
import signal, sys, time
from node.cli import run_main
# A shell that starts jobs in the background (CI may) leaves SIGINT ignored in them; a terminal does not.
signal.signal(signal.SIGINT, signal.default_int_handler)
def flood(argv):
    for _ in range(10_000):
        print("x" * 1000)
    return 0
def wait(argv):
    print("ready", flush=True)
    time.sleep(60)
    return 0
sys.exit(run_main({"flood": flood, "wait": wait}[sys.argv[1]], None, "prog"))
"""


def test_a_reader_that_stops_early_ends_the_output_quietly():
    process = subprocess.Popen([sys.executable, "-c", _PROGRAM, "flood"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout.read(100) == b"x" * 100       # `head -c 100`, then the reader goes away
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(30) == 1 and stderr == "", stderr


def test_ctrl_c_is_one_line_and_exit_130():
    process = subprocess.Popen([sys.executable, "-c", _PROGRAM, "wait"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 130
    assert process.stderr.read() == "prog: interrupted\n"


def test_the_real_programs_help_piped_into_head_has_no_traceback():
    for command in ("-m node.cli --help", "-m testnet byzantine --help"):
        done = subprocess.run(f"{sys.executable} {command} | head -1", shell=True, cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.stdout.startswith("usage:") and "Traceback" not in done.stderr, done.stderr


def test_testnet_outside_the_venv_says_how_to_get_in():
    # -S: no site-packages, as a python that is not the project's venv has none of its dependencies.
    done = subprocess.run([sys.executable, "-S", "-m", "testnet", "status"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not installed for" in done.stderr and "make testnet" in done.stderr and ".venv/bin/activate" in done.stderr


def test_up_refuses_a_base_port_in_the_ephemeral_range_without_force(tmp_path):
    # Imported here, not at the top: tests/testnet is a package named `testnet` too, and importing the
    # project's `testnet` while pytest collects would hide it.
    from testnet import ports

    span = ports.ephemeral_range()
    if span is None:
        pytest.fail("this test needs Linux's /proc/sys/net/ipv4/ip_local_port_range")
    base = span[0] + 1000
    done = subprocess.run([sys.executable, "-m", "testnet", "up", "--dir", str(tmp_path / "run"), "--base-port",
                           str(base)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "--force" in done.stderr and f"{span[0]}-{span[1]}" in done.stderr, done.stderr
    assert not (tmp_path / "run" / "testnet.json").exists()          # nothing generated, nothing started
    assert all(not ports.overlaps_ephemeral(ports.plan_ports(ports.find_free_base_port(n), n)) for n in (4, 7))


def test_make_testnet_passes_validators_and_base_port():
    # --no-print-directory: under `make test` this make is a sub-make, which would name its directory.
    def commands(*arguments: str) -> list[str]:
        done = subprocess.run(["make", "--no-print-directory", "-n", "testnet", *arguments], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [line.strip() for line in done.stdout.splitlines() if "-m testnet up" in line]

    assert commands("VALIDATORS=7", "BASE_PORT=23000")[-1].endswith("-m testnet up --validators 7 --base-port 23000")
    assert commands()[-1].endswith("-m testnet up")
