"""`make bench`: a fresh 4-validator testnet driven to saturation by the load generator.

    DURATION=120 python -m testnet.bench [--validators 4] [--profile NODE] [--keep]
                                         [--link-delay-ms D] [--link-loss P]

Starts a network in a temporary directory, runs `python -m testnet.loadgen` in
its own process (phases and method in testnet/loadgen.py), then measures each
node's CPU seconds and peak RSS from /proc and the bytes its LevelDB grew per
committed commitment. Writes bench/results.json and bench/latency.png and
prints the results JSON as its last line.

DURATION (default 120, 5 to 3600) is the total seconds of measured load, at
most: 20 % saturation; 6 % for each open-loop phase, of which there are at
most 11 (the capacity steps at 20, 30, ... 100 % of saturation, one refinement
step, and 1000/s when that is below saturation and no step measured it), 66 %
in all; 14 % match proofs. The search stops after the first step whose p99
exceeds 250 ms (testnet/capacity.py), usually after 4 or 5 steps, so a typical
run measures about 70 % of DURATION. Drains between phases (the validators
settle: testnet/usage.py) and pre-signing are not counted. The default
saturates for 24 s, long enough for every node's LevelDB to write out and
compact its first memtables, which a sustained load pays for; a shorter
DURATION measures a burst.

Beyond the rates and latencies the results hold figures that travel between
machines (issue 19): the capacities (highest offered rate whose p99 is within
100 ms and 250 ms) and their ratios to saturation; the validators' CPU per
committed commitment and their Ed25519 checks per commitment in each phase;
and `signature_ceiling_ratio`, the saturated rate as a share of what the host's
verify speed would allow (`signature_ceiling_ratio` below).

`--link-delay-ms D` (0 to 10,000) and `--link-loss P` (0 <= P < 1) shape the
links between the nodes: passed to control.up only when nonzero, recorded in
the results either way. `--profile NODE` samples that node with py-spy for the whole load and writes
the flat profile to bench/profile-NODE.txt (the raw collapsed stacks stay in
the run directory, kept with --keep).

A benchmark, not a test: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

from node.rpc import RpcLimits

from . import capacity, control, host_probe
from .network import Network
from .ports import find_free_base_port
from .supervisor import process_usage, running_pid

RESULTS_DIR = Path("bench")
# Of DURATION: saturation, then each open-loop phase (a capacity step, or 1000/s), then match proofs.
PHASE_FRACTIONS = {"saturate": 0.20, "step": 0.06, "match": 0.14}
# Every capacity step and 1000/s: with all of them the phases take exactly DURATION (a test checks).
OPEN_LOOP_PHASES_MAX = capacity.STEPS_MAX + 1
duration_s_min = 5
duration_s_max = 3600
link_delay_ms_max = 10_000          # --link-delay-ms: one-way delay added to every link between nodes
link_loss_max = 1.0                 # --link-loss: share of frames lost, below this (all lost is no network)
profile_rate_hz = 100
# Load authors: each has its own nonces; 64 lanes share 32 authors, so at most 2 x WINDOW of an
# author's entries are in flight, well inside the ledger's 256-nonce replay window (workload.py).
BENCH_PROVIDERS = 32
CONNECTIONS = 64
# Requests in flight per connection (at most the node's rpc requests_in_flight_max, 32). The
# saturation phase must be limited by the nodes, not by the client: with 1,024 in flight in all
# the primary's blocks held ~280 entries and the rate was ~7 % lower than with 2,048, where blocks
# are full (500) and more in flight (3,072, 4,096) adds nothing (docs/PERFORMANCE.md, "What changed
# at 06:10-06:50").
WINDOW = 32
WINDOW_MAX = RpcLimits.requests_in_flight_max   # a node reads no further ahead on one connection
TARGETS = {"commits_per_s": 5000, "p99_ms_at_1000_per_s": 250, "match_per_s": 10000}


def check_link_options(delay_ms: float, loss: float) -> str | None:
    """Why --link-delay-ms / --link-loss are refused, or None if they are fine."""
    if not 0 <= delay_ms <= link_delay_ms_max:    # also refuses NaN
        return f"--link-delay-ms must be between 0 and {link_delay_ms_max}, got {delay_ms:g}"
    if not 0 <= loss < link_loss_max:
        return f"--link-loss must be at least 0 and below {link_loss_max:g}, got {loss:g}"
    return None


def link_options(delay_ms: float, loss: float) -> dict[str, float]:
    """control.up's link keywords, only those that are nonzero: a control.up without link shaping
    must still start an unshaped network."""
    options = {"link_delay_ms": delay_ms, "link_loss": loss}
    return {name: value for name, value in options.items() if value}


def control_up_accepts(names: Iterable[str]) -> bool:
    """True if control.up takes every keyword in `names` (link shaping is being added to it)."""
    return set(names) <= set(inspect.signature(control.up).parameters)


def capacity_ratio(capacity_per_s: float, commits_per_s: float) -> float | None:
    """A capacity as a share of the same run's saturated rate."""
    return round(capacity_per_s / commits_per_s, 3) if commits_per_s > 0 else None


def signature_ceiling_cores(validators: int) -> int:
    """Cores whose verify capacity the ceiling counts: the machine's, but no more than one per
    validator (each node is one Python process, which verifies on one core nearly all the time)."""
    return max(1, min(os.cpu_count() or 1, validators))


def signature_ceiling_ratio(commits_per_s: float, verify_per_s_one_core: float, cores: int,
                            checks_per_commitment: float | None) -> float | None:
    """commits_per_s / (cores x verify_per_s_one_core / checks_per_commitment).

    The denominator is the commit rate at which checking signatures alone would keep `cores` cores
    busy, given the checks each commitment took in the same phase (all validators together); the
    ratio is the share of that ceiling the run reached. None when a figure is missing."""
    if not checks_per_commitment or checks_per_commitment <= 0 or verify_per_s_one_core <= 0 or cores < 1:
        return None
    ceiling_per_s = cores * verify_per_s_one_core / checks_per_commitment
    return round(commits_per_s / ceiling_per_s, 3)


def capacity_figures(report: dict, commits_per_s: float) -> dict:
    """The results' capacity keys from the load generator's search."""
    figures: dict = {"capacity_steps": report.get("capacity_steps", [])}
    zero = []
    for bound in capacity.BOUNDS_MS:
        rate = report.get("capacity_per_s", {}).get(str(bound), 0.0)
        figures[f"capacity_p99_{bound}ms_per_s"] = rate
        figures[f"capacity_p99_{bound}ms_ratio"] = capacity_ratio(rate, commits_per_s)
        if not rate:
            zero.append(f"{bound} ms")
    if zero:
        figures["capacity_note"] = (f"no capacity step (the lowest at {capacity.STEP_FRACTIONS[0]:.0%} of "
                                    f"saturation) kept p99 within {' or '.join(zero)} with every request "
                                    f"committed: capacity 0")
    return figures


def signature_figures(report: dict, results_host: dict, commits_per_s: float, validators: int) -> dict:
    """signature_checks_per_commitment, and the saturated rate's share of the verify ceiling."""
    checks = report.get("signature_checks_per_commitment", {})
    cores = signature_ceiling_cores(validators)
    return {"signature_checks_per_commitment": checks,
            "signature_ceiling_cores": cores,
            "signature_ceiling_ratio": signature_ceiling_ratio(
                commits_per_s, results_host["ed25519_verify_per_s"], cores, checks.get("saturate"))}


def summary_lines(results: dict) -> list[str]:
    """The stderr summary of the figures that travel between machines."""
    saturated = results["commits_per_s"]
    lines = [f"bench: saturation {saturated:.0f}/s; p99 within 100 ms up to "
             f"{results['capacity_p99_100ms_per_s']:.0f}/s (ratio {results['capacity_p99_100ms_ratio']}), "
             f"within 250 ms up to {results['capacity_p99_250ms_per_s']:.0f}/s "
             f"(ratio {results['capacity_p99_250ms_ratio']}), over {len(results['capacity_steps'])} steps"]
    if "capacity_note" in results:
        lines.append(f"bench: {results['capacity_note']}")
    cpu = ", ".join(f"{key} {value}" for key, value in results["cpu_us_per_commitment"].items())
    lines.append(f"bench: validators' CPU us per commitment: {cpu}")
    checks = results["signature_checks_per_commitment"].get("saturate")
    lines.append(f"bench: signature checks per commitment at saturation {checks}; signature_ceiling_ratio "
                 f"{results['signature_ceiling_ratio']} (of {results['signature_ceiling_cores']} cores x "
                 f"{results['host_probe']['ed25519_verify_per_s']} verify/s / {checks})")
    return lines


def compacted_bytes(data_dir: Path) -> int:
    """Bytes of a stopped node's data directory after a full compaction of each LevelDB store in it."""
    import plyvel

    for current in Path(data_dir).rglob("CURRENT"):
        try:
            db = plyvel.DB(str(current.parent))
        except plyvel.Error as exc:   # e.g. still locked by a node that did not stop: report it as is
            print(f"bench: cannot compact {current.parent}: {exc}", file=sys.stderr)
            continue
        try:
            db.compact_range()
        finally:
            db.close()
    return directory_bytes(data_dir)


def directory_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:
                pass  # LevelDB compaction removed it meanwhile
    return total


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": memory_gib,
            "python": platform.python_version(), "os": platform.platform(),
            # Other work on the machine skews every figure: record how busy it was.
            "load_average_1m_at_end": round(os.getloadavg()[0], 2)}


def plot(results: dict, path: Path) -> bool:
    """Latency percentiles against offered load (the capacity steps and 1000/s), with the p99 bounds
    and the capacities found for them; False if matplotlib is missing."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        print("  matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rates = sorted(results["p50_ms"], key=float)
    xs = [float(r) for r in rates]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        axes.plot(xs, [results[key][r] for r in rates], style, label=key.split("_")[0])
    for bound, color in zip(capacity.BOUNDS_MS, ("tab:green", "tab:red")):
        axes.axhline(bound, color=color, linestyle=":", linewidth=1, label=f"p99 bound {bound} ms")
        rate = results.get(f"capacity_p99_{bound}ms_per_s")
        if rate:
            axes.axvline(rate, color=color, linestyle="--", linewidth=1,
                         label=f"capacity at p99 <= {bound} ms: {rate:.0f}/s")
    axes.set_yscale("log")   # from tens of ms below capacity to seconds past it
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # Label 20, 50, 200, 500 ... between the decades, not every minor tick.
    axes.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))
    axes.set_xlabel("offered load (commitments/s)")
    axes.set_ylabel("submit-to-commit latency (ms)")
    machine = results["machine"]
    load = machine.get("load_average_1m_at_start")
    axes.set_title(f"Bayledger, {results['validators']} validators, saturation {results['commits_per_s']:.0f}/s\n"
                   f"{machine['cpus']} cores {machine.get('cpu_model', '')}"
                   + (f", load average {load} at start" if load is not None else "")
                   + (f", {results['date_utc']}" if results.get("date_utc") else ""), fontsize=10)
    axes.grid(True, alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def start_profiler(pid: int, out: Path, duration_s: float) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("  py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", str(profile_rate_hz), "--format", "raw",
         "--duration", str(int(duration_s)), "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def summarize_profile(raw: Path, out: Path, top: int = 40) -> None:
    """Turn py-spy's collapsed stacks into self and inclusive time per function."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples at {profile_rate_hz} Hz", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive %  function"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in inclusive.most_common(top)]
    out.write_text("\n".join(lines) + "\n")


def run(duration_s: float, validators: int, profile_node: str | None, keep: bool,
        consensus: dict[str, int] | None = None, window: int = WINDOW,
        link_delay_ms: float = 0.0, link_loss: float = 0.0) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="bayledger-bench-"))
    base_port = find_free_base_port(validators)
    load_before = round(os.getloadavg()[0], 2)
    host = host_probe.probe(min(host_probe.PROBE_SECONDS_DEFAULT, duration_s))   # before any node runs
    RESULTS_DIR.mkdir(exist_ok=True)
    print(f"bench: {validators} validators in {run_dir}, base port {base_port}, DURATION={duration_s:g}s", file=sys.stderr)
    try:
        providers = {f"bench-provider-{i + 1}": "CN" for i in range(BENCH_PROVIDERS)}
        with contextlib.redirect_stdout(sys.stderr):   # stdout carries only the results JSON
            control.up(run_dir, validators, base_port, demo=False, extra_participants=providers, consensus=consensus,
                       **link_options(link_delay_ms, link_loss))
        network = Network.load(run_dir)
        before_bytes = {n.name: directory_bytes(n.data_dir) for n in network.nodes}
        before_tree = _tree_size(network)
        plan = {
            "chain_id": network.chain_id,
            "genesis": str(network.genesis_path),
            "ca": str(network.ca_path),
            "submit_rpcs": [n.rpc for n in network.nodes],
            "match_rpc": network.nodes_in("HK")[0].rpc,
            "match_node": network.nodes_in("HK")[0].name,
            "providers": [{"name": name, "key": network.participants[name]["key"], "jurisdiction": "CN"}
                          for name in providers],
            "verifier": {"name": "hk-bank", "key": network.participants["hk-bank"]["key"]},
            "connections": CONNECTIONS,
            "window": window,
            "phase_s": {name: duration_s * fraction for name, fraction in PHASE_FRACTIONS.items()},
            "validators": validator_usage_targets(network),
        }
        plan_path = run_dir / "loadgen-plan.json"
        report_path = run_dir / "loadgen-report.json"
        plan_path.write_text(json.dumps(plan, indent=2))
        profiler = None
        if profile_node:
            node = network.node(profile_node)
            pid = running_pid(node.pid_path, node.config_path)
            profiler = start_profiler(pid, run_dir / "profile.raw", duration_s * 1.2 + 30) if pid else None
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "testnet.loadgen", "--plan", str(plan_path),
                               "--out", str(report_path)])
        wall_s = time.monotonic() - started
        if done.returncode != 0:
            raise control.TestnetError(f"load generator failed (exit {done.returncode}); node logs are in {run_dir}/nodes")
        report = json.loads(report_path.read_text())
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
            if (run_dir / "profile.raw").exists():
                # The collapsed stacks (for flame graphs) stay in the run dir: see --keep.
                summarize_profile(run_dir / "profile.raw", RESULTS_DIR / f"profile-{profile_node}.txt")
        after_tree = _tree_size(network)
        nodes = {}
        for node in network.nodes:
            pid = running_pid(node.pid_path, node.config_path)
            usage = process_usage(pid) if pid else None
            answer = control.node_status(node, 5.0) or {}
            # A node whose view differs from the others' sat out part of the run (view change).
            nodes[node.name] = {**(usage or {"cpu_s": None, "peak_rss_mib": None}),
                                "disk_bytes": directory_bytes(node.data_dir) - before_bytes[node.name],
                                "height": answer.get("height"), "view": answer.get("view")}
        committed = max(after_tree - before_tree, 0)
        disk = [v["disk_bytes"] for v in nodes.values()]
        # Live sizes include the write-ahead log and not-yet-compacted tables, so they swing with the
        # moment of measurement; the settled figure compacts each stopped store first.
        with contextlib.redirect_stdout(sys.stderr):
            control.down(run_dir)
        for node in network.nodes:
            nodes[node.name]["disk_bytes_compacted"] = compacted_bytes(node.data_dir) - before_bytes[node.name]
        settled = [v["disk_bytes_compacted"] for v in nodes.values()]
        commits_per_s = report["commits_per_s"]
        results = {
            "validators": validators,
            "consensus_config": consensus or "defaults",
            "link_delay_ms": link_delay_ms,
            "link_loss": link_loss,
            "load": {"connections": CONNECTIONS, "in_flight_per_connection": window},
            "loadgen_cpu_s": report.get("loadgen_cpu_s"),
            "duration_s": round(wall_s, 1),
            "commits_per_s": commits_per_s,
            "p50_ms": {rate: v.get("p50_ms") for rate, v in report["latency"].items()},
            "p95_ms": {rate: v.get("p95_ms") for rate, v in report["latency"].items()},
            "p99_ms": {rate: v.get("p99_ms") for rate, v in report["latency"].items()},
            **capacity_figures(report, commits_per_s),
            "cpu_us_per_commitment": report.get("cpu_us_per_commitment", {}),
            **signature_figures(report, host, commits_per_s, validators),
            "match_per_s": report["match_per_s"],
            "bytes_per_commitment": round(sum(settled) / len(settled) / committed, 1) if committed else None,
            "bytes_per_commitment_live": round(sum(disk) / len(disk) / committed, 1) if committed else None,
            "committed_total": committed,
            "nodes": nodes,
            "phases": report["phases"],
            "presign_per_s": report.get("presign_per_s"),
            **{key: report[key] for key in ("target_rate_note", "match_error") if key in report},
            "targets": TARGETS,
            "machine": {**machine_info(), "load_average_1m_at_start": load_before},
            "host_probe": host,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return results
    finally:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                control.down(run_dir)
        except Exception as exc:  # the run's own error matters more; report this one too
            print(f"bench: stopping the testnet failed: {exc}", file=sys.stderr)
        if keep:
            print(f"bench: kept {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def validator_usage_targets(network: Network) -> list[dict]:
    """Each validator's pid and metrics address, for the load generator's usage samples
    (testnet/usage.py); none if any node is not running (a partial sum would mislead)."""
    targets = []
    for node in network.nodes:
        pid = running_pid(node.pid_path, node.config_path)
        if pid is None:
            print(f"bench: {node.name} is not running: no CPU or signature figures", file=sys.stderr)
            return []
        targets.append({"name": node.name, "pid": pid, "metrics": node.metrics})
    return targets


def _tree_size(network: Network) -> int:
    sizes = [s.get("tree_size", 0) for s in (control.node_status(n, 5.0) for n in network.nodes) if s]
    return max(sizes) if sizes else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testnet.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--validators", type=int, default=4, choices=(4, 7, 10))
    parser.add_argument("--profile", metavar="NODE", help="sample NODE with py-spy during the load")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, data)")
    parser.add_argument("--batch-requests-max", type=int, help="nodes' consensus.batch_requests_max (default: the node's)")
    parser.add_argument("--batch-wait-ms", type=int, help="nodes' consensus.batch_wait_ms (default: the node's)")
    parser.add_argument("--window", type=int, default=WINDOW, metavar="N",
                        help=f"requests in flight per connection in the closed-loop phases, 1-{WINDOW_MAX} "
                             f"(default {WINDOW}; {CONNECTIONS} connections)")
    parser.add_argument("--link-delay-ms", type=float, default=0.0, metavar="D",
                        help=f"one-way delay added to each link between nodes, 0-{link_delay_ms_max} ms (default 0)")
    parser.add_argument("--link-loss", type=float, default=0.0, metavar="P",
                        help="share of frames lost on each link between nodes, 0 <= P < 1 (default 0)")
    args = parser.parse_args(argv)
    refusal = check_link_options(args.link_delay_ms, args.link_loss)
    if refusal:
        print(f"bench: {refusal}", file=sys.stderr)
        return 2
    if not control_up_accepts(link_options(args.link_delay_ms, args.link_loss)):
        print("bench: this testnet's control.up cannot shape links (no link_delay_ms / link_loss): "
              "run without --link-delay-ms and --link-loss", file=sys.stderr)
        return 2
    if not 1 <= args.window <= WINDOW_MAX:
        print(f"bench: --window must be between 1 and {WINDOW_MAX} (the node's requests in flight per "
              f"connection), got {args.window}", file=sys.stderr)
        return 2
    text = os.environ.get("DURATION", "120")
    try:
        duration_s = float(text)
    except ValueError:
        print(f"bench: DURATION={text!r} is not a number of seconds", file=sys.stderr)
        return 2
    if not duration_s_min <= duration_s <= duration_s_max:
        print(f"bench: DURATION must be between {duration_s_min} and {duration_s_max} seconds, got {text}", file=sys.stderr)
        return 2
    try:
        consensus = {key: value for key, value in (("batch_requests_max", args.batch_requests_max),
                                                   ("batch_wait_ms", args.batch_wait_ms)) if value is not None}
        results = run(duration_s, args.validators, args.profile, args.keep, consensus or None, args.window,
                      args.link_delay_ms, args.link_loss)
    except (control.TestnetError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    (RESULTS_DIR / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for line in summary_lines(results):
        print(line, file=sys.stderr)
    if plot(results, RESULTS_DIR / "latency.png"):
        print(f"bench: wrote {RESULTS_DIR / 'results.json'} and {RESULTS_DIR / 'latency.png'}", file=sys.stderr)
    print(json.dumps(results, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
