"""The `make testnet` sample: the `bayledger` CLI used exactly as the README tells a newcomer to.

sz-credit-bureau (CN) submits a sample report to a CN node (the CLI salts and
hashes it, waits for the commit and writes a receipt holding the salt);
hk-bank (HK) verifies the report against an HK node (match proof asked with a
signed query and checked offline against the genesis file, saved to a file);
then the saved proof is checked again offline with no node at all. The
report, receipt and proof stay in the run dir for the tour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .network import Network

cli_timeout_s = 60.0     # one `bayledger` call: start-up, commit wait, answer


class DemoError(Exception):
    """A step of the sample failed; the message names the command, its output and the node's log."""


def bayledger(args: list[str], timeout_s: float = cli_timeout_s, log_hint: str = "") -> subprocess.CompletedProcess:
    """Run `bayledger ARGS` (as `python -m node.cli`, the same entry point); DemoError unless it exits 0."""
    command = [sys.executable, "-m", "node.cli", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise DemoError(f"`bayledger {' '.join(args)}` did not finish within {timeout_s:.0f} s{log_hint}") from None
    if done.returncode != 0:
        raise DemoError(f"`bayledger {' '.join(args)}` failed (exit {done.returncode}):\n"
                        f"{done.stdout}{done.stderr}{log_hint}")
    return done


def sample_commands(network: Network) -> dict[str, list[str]]:
    """The three CLI calls of the sample (also printed for the user to re-run)."""
    cn = network.nodes_in("CN")[0]
    hk = network.nodes_in("HK")[0]
    d = network.run_dir
    report, receipt, proof = d / "sample-report.txt", d / "sample-report.txt.receipt.json", d / "sample-proof.bin"
    genesis = str(network.genesis_path)
    return {
        "submit": ["submit", "--rpc", cn.rpc, "--ca", str(network.ca_path), "--key", network.participants["sz-credit-bureau"]["key"],
                   "--genesis", genesis, "--force", str(report)],
        "verify": ["verify", "--rpc", hk.rpc, "--ca", str(network.ca_path), "--key", network.participants["hk-bank"]["key"],
                   "--genesis", genesis, "--receipt", str(receipt), "--proof-out", str(proof), str(report)],
        "proof verify": ["proof", "verify", "--genesis", genesis, "--receipt", str(receipt), str(proof)],
    }


def run_sample(network: Network) -> dict:
    """Run the sample; its receipt (commitment, salt, height, leaf index), outputs and file paths."""
    cn = network.nodes_in("CN")[0]
    hk = network.nodes_in("HK")[0]
    d = network.run_dir
    report, receipt_path, proof = d / "sample-report.txt", d / "sample-report.txt.receipt.json", d / "sample-proof.bin"
    report.write_text(f"Sample credit report issued by sz-credit-bureau at "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: score 712\n")
    proof.unlink(missing_ok=True)
    commands = sample_commands(network)
    outputs = {
        "submit": bayledger(commands["submit"], log_hint=f"\nsee {cn.log_path}").stdout.strip(),
        "verify": bayledger(commands["verify"], log_hint=f"\nsee {hk.log_path}").stdout.strip(),
        "proof verify": bayledger(commands["proof verify"]).stdout.strip(),
    }
    try:
        receipt = json.loads(receipt_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DemoError(f"the receipt {receipt_path} written by submit cannot be read: {exc}") from None
    return {"receipt": receipt, "height": receipt.get("height"), "outputs": outputs, "commands": commands,
            "report": str(report), "receipt_path": str(receipt_path), "proof": str(proof),
            "submitted_to": cn.name, "verified_at": hk.name}
