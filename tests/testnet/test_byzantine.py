"""One Byzantine validator at a time in a real testnet under a steady load (issue 14).

Each behaviour of `python -m testnet byzantine` is one parametrized test. The
4-validator behaviours share one testnet (a module-scoped fixture; the node
is restarted honest between them); `equivocate` gets its own 7-validator
testnet and replaces the primary. Each test runs the load generator's open
loop (testnet/loadgen.py, pre-signed commits by load-only participants, to the
nodes that stay honest) for HONEST_S seconds with every node honest, then for
BYZANTINE_S seconds with the Byzantine process in place of one node, and
asserts, for the Byzantine phase:

- no honest daemon exits;
- no two honest nodes commit different blocks (RPC `header` at common heights);
- the committed rate (ok receipts that arrive within the phase, per second) is
  at least half the honest phase's;
- at most one view change (the view read from the honest nodes' `status`):
  one per behaviour per minute; a phase is 9 s in `make test`, a whole minute
  with BYZANTINE_SECONDS=60;
- after `python -m testnet restart NODE` the honest node is back and has all
  its links within LINKS_BACK_S, and catches up.
`handshake-flood` also restarts an honest validator while the flood runs and
asserts that it gets its links to the other honest validators back within
LINKS_BACK_S. The NEW-VIEW case (issue 14, point 6) has its own 7-validator
testnet with big blocks: its primary turns silent under a saturating load and the
others must agree on the next view and commit again.

The rates of both phases and their ratio, the views and the Byzantine
process's counters are written to a JSON file (RATES_FILE in pytest's base
temp dir, or $BYZANTINE_RATES_JSON) and printed, so the ratios can be quoted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from node.client import Credentials
from node.keys import load_key_file
from testnet import control, loadgen, rpc, workload
from testnet.network import Network
from testnet.ports import find_free_base_port
from testnet.supervisor import running_pid

pytestmark = pytest.mark.slow   # real validator processes: make test runs these alone (pyproject.toml)

REPO = Path(__file__).resolve().parents[2]
# Sized so the seven cases fit `make test`'s 10-minute budget. 9 s with the Byzantine node still
# tells "deposed once" from "deposed again and again": before the fix, the request flood deposed
# the primary after 2 s and its successor after 6 s more (at 8 s).
HONEST_S = 3.0              # the load with every node honest (600 commits at RATE_PER_S)
# The same load with one Byzantine node. $BYZANTINE_SECONDS lengthens it by hand (60: the issue's "at most
# one view change per behaviour per minute" over a whole minute); make test keeps it short.
BYZANTINE_S = float(os.environ.get("BYZANTINE_SECONDS") or 9.0)
assert 5.0 <= BYZANTINE_S <= 600.0, f"BYZANTINE_SECONDS={BYZANTINE_S}: 5..600"
RATE_PER_S = 200.0          # open loop: modest, far below saturation
LANES = 8                   # connections of the open loop, one load author each
LOAD_AUTHORS = {f"load-{i + 1}": "CN" for i in range(LANES)}
SUBMIT_WAIT_S = 20.0
DRAIN_S = 5.0               # after a phase, late receipts are waited for this long (loadgen's default: 35)
RATE_RATIO_MIN = 0.5
VIEW_CHANGES_MAX = 1        # per behaviour per minute; each phase is shorter than a minute
LINKS_BACK_S = 10.0
CATCH_UP_S = 30.0
VIEW_JOIN_S = 10.0          # a restarted node takes part in the current view again
SETTLE_S = 20.0             # before a test: every honest daemon answers and the heights meet
STATUS_POLL_S = 0.5
HEADERS_COMPARED_MAX = 400
COMMAND_TIMEOUT_S = 120
RATES_FILE = "byzantine-rates.json"
FOUR_NODE_BEHAVIOURS = ["silent", "nested-garbage", "oversize", "request-flood", "replay-committed",
                        "handshake-flood"]

_results: dict[str, dict] = {}


def record_rates(behaviour: str, entry: dict, directory: Path) -> Path:
    """Add one behaviour's measurements to the JSON file of this run and print them."""
    _results[behaviour] = entry
    path = Path(os.environ.get("BYZANTINE_RATES_JSON") or directory / RATES_FILE)
    path.write_text(json.dumps(_results, indent=2, sort_keys=True) + "\n")
    honest, byzantine = entry.get("honest", {}), entry.get("byzantine", {})
    print(f"\n[byzantine] {behaviour}: honest {honest.get('rate_per_s')}/s, byzantine "
          f"{byzantine.get('rate_per_s')}/s, ratio {entry.get('ratio')}, view changes "
          f"{byzantine.get('view_changes')}; written to {path}")
    return path


# ---------------------------------------------------------------- the harness


def _accept_recording(committed_at: list[float]):
    """The load generator's judge of a submit answer that also notes when each commit receipt came."""
    def accept(reply: object) -> str:
        outcome = loadgen._accept_submit(reply)
        if outcome == "ok":
            committed_at.append(trio.current_time())
        return outcome
    return accept


def run_testnet(*args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testnet", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s)


class Harness:
    def __init__(self, run_dir: Path, validators: int, consensus: dict[str, int] | None = None):
        self.run_dir = run_dir
        with contextlib.redirect_stdout(io.StringIO()):
            control.up(run_dir, validators, find_free_base_port(validators), demo=False,
                       extra_participants=LOAD_AUTHORS, consensus=consensus)
        self.network = Network.load(run_dir.resolve())
        self.ca = str(self.network.ca_path)   # the nodes' RPC is TLS, signed by the testnet's CA
        self.plan = {
            "chain_id": self.network.chain_id,
            "providers": [{"name": name, "key": self.network.participants[name]["key"], "jurisdiction": j}
                          for name, j in LOAD_AUTHORS.items()],
        }

    def down(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            control.down(self.run_dir)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.network.nodes]

    def node(self, name: str):
        return self.network.node(name)

    def validator_credentials(self, name: str) -> Credentials:
        """The validator's own identity: its RPC answers a validator the full status."""
        return Credentials(name, load_key_file(self.node(name).key_path).signing_key)

    def status(self, name: str, timeout_s: float = 2.0) -> dict | None:
        return control.node_status(self.node(name), timeout_s)

    def daemon_pid(self, name: str) -> int | None:
        node = self.node(name)
        return running_pid(node.pid_path, node.config_path)

    def log_tail(self, name: str, lines: int = 12) -> str:
        return control.tail(self.node(name).log_path, lines)

    def primary(self) -> str:
        votes: dict[str, int] = {}
        for name in self.names:
            status = self.status(name)
            if status and status.get("primary"):
                votes[status["primary"]] = votes.get(status["primary"], 0) + 1
        return max(votes, key=votes.get) if votes else self.names[0]

    def settle(self) -> dict:
        """Bring back any daemon that is not running (a crash in an earlier test) and wait until every
        node answers, the heights meet and the views agree; the last statuses seen."""
        for name in self.names:
            if self.daemon_pid(name) is None:
                done = run_testnet("restart", name, "--dir", str(self.run_dir))
                assert done.returncode == 0, f"cannot restart {name}: {done.stdout}{done.stderr}"
        deadline = time.monotonic() + SETTLE_S
        while True:
            statuses = {name: self.status(name) or {} for name in self.names}
            heights = [s.get("height") for s in statuses.values()]
            views = {s.get("view") for s in statuses.values()}
            if None not in heights and max(heights) - min(heights) <= 1 and len(views) == 1:
                return {n: {"height": s.get("height"), "view": s.get("view")} for n, s in statuses.items()}
            if time.monotonic() > deadline:
                # Measured anyway (the views of each phase are recorded); the assertions say what is wrong.
                return {n: {"height": s.get("height"), "view": s.get("view"), "unsettled": True}
                        for n, s in statuses.items()}
            time.sleep(STATUS_POLL_S)

    def measure(self, label: str, duration_s: float, honest: list[str], baseline_view: int | None = None) -> dict:
        """The open-loop load on the honest nodes for `duration_s`, with their views polled meanwhile.
        View changes count from `baseline_view` (the highest view before the phase's setup) if given."""
        addresses = [self.node(name).rpc for name in honest]
        count = int(RATE_PER_S * duration_s) + LANES
        queues, _ = workload.presigned_submits(self.plan, count, LANES, SUBMIT_WAIT_S)
        heights_before = {name: (self.status(name) or {}).get("height") for name in honest}
        saved = loadgen.drain_timeout_s
        loadgen.drain_timeout_s = DRAIN_S
        try:
            result = trio.run(self._measure, label, addresses, queues, duration_s, honest, baseline_view)
        finally:
            loadgen.drain_timeout_s = saved
        result["heights_before"] = heights_before
        result["heights_after"] = {name: (self.status(name) or {}).get("height") for name in honest}
        return result

    async def _measure(self, label: str, addresses: list[str], queues, duration_s: float, honest: list[str],
                       baseline_view: int | None) -> dict:
        arrivals: list[float] = []
        accept = _accept_recording(arrivals)
        views: dict[str, list[int]] = {name: [] for name in honest}

        async def poll_views() -> None:
            while True:
                for name in honest:
                    host, _, port = self.node(name).rpc.rpartition(":")
                    try:
                        status = await rpc.call_async(host, int(port), "status", [], 1.0, self.ca,
                                                      self.validator_credentials(name))
                    except (rpc.ConnectionLost, rpc.RpcError, OSError):
                        continue
                    if isinstance(status, dict) and isinstance(status.get("view"), int):
                        views[name].append(status["view"])
                await trio.sleep(STATUS_POLL_S)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll_views)
            start = trio.current_time() + 0.05          # open_loop schedules its first send then
            phase = await loadgen.open_loop(label, addresses, queues, accept, RATE_PER_S, duration_s, self.ca,
                                            workload.submit_lane_credentials(self.plan, len(queues)))
            await trio.sleep(STATUS_POLL_S)
            nursery.cancel_scope.cancel()
        in_window = sum(1 for t in arrivals if start <= t <= start + duration_s)
        # The network's view changes: the highest view any honest node reports, at the end against the start
        # (a node still joining a view it missed is not a view change of its own).
        first = [v[0] for v in views.values() if v]
        last = [v[-1] for v in views.values() if v]
        start_view = max(first) if baseline_view is None or not first else min(baseline_view, max(first))
        view_changes = max(last) - start_view if first and last else 0
        return {
            "rate_per_s": round(in_window / duration_s, 1),
            "offered_per_s": RATE_PER_S,
            "duration_s": duration_s,
            "sent": phase.sent,
            "ok_total": phase.ok,
            "errors": dict(phase.errors),
            "latency_ms": {k: v for k, v in phase.to_json()["latency"].items() if k in ("p50_ms", "p99_ms", "max_ms")},
            "views": {name: sorted(set(v)) for name, v in views.items()},
            "view_changes": view_changes,
        }

    def byzantine(self, name: str, behaviour: str) -> None:
        done = run_testnet("byzantine", name, "--behaviour", behaviour, "--dir", str(self.run_dir))
        assert done.returncode == 0, f"byzantine {name} {behaviour} failed: {done.stdout}{done.stderr}"

    def byzantine_stats(self, name: str) -> dict:
        try:
            return json.loads((self.node(name).dir / "byzantine-stats.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_linked(self, name: str, honest: list[str], timeout_s: float = 5.0) -> float | None:
        """Seconds until every honest node lists `name` among its peers, or None."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            peers = [(self.status(h) or {}).get("peers") or [] for h in honest]
            if all(isinstance(p, list) and name in p for p in peers):
                return round(time.monotonic() - started, 2)
            time.sleep(0.1)
        return None

    def restart(self, name: str, expected_peers: list[str]) -> dict:
        """`python -m testnet restart NAME`; how long until it answers and until its links are back."""
        started = time.monotonic()
        done = run_testnet("restart", name, "--dir", str(self.run_dir))
        answered = time.monotonic()
        outcome = {"returncode": done.returncode, "output": (done.stdout + done.stderr)[-2000:],
                   "answer_s": round(answered - started, 2), "links_back_s": None}
        if done.returncode != 0:
            return outcome
        while time.monotonic() - answered < LINKS_BACK_S + 5:
            peers = (self.status(name) or {}).get("peers") or []
            if isinstance(peers, list) and set(expected_peers) <= set(peers):
                outcome["links_back_s"] = round(time.monotonic() - answered, 2)
                break
            time.sleep(0.1)
        return outcome

    def views(self, names: list[str]) -> dict[str, int | None]:
        return {n: (self.status(n) or {}).get("view") for n in names}

    def wait_same_view(self, name: str, honest: list[str], timeout_s: float = None) -> float | None:
        """Seconds until `name` reports the highest view of the honest nodes, or None."""
        started = time.monotonic()
        while time.monotonic() - started < (timeout_s or VIEW_JOIN_S):
            views = self.views([name, *honest])
            known = [v for v in views.values() if v is not None]
            if views[name] is not None and views[name] == max(known):
                return round(time.monotonic() - started, 2)
            time.sleep(STATUS_POLL_S)
        return None

    def wait_height(self, name: str, height: int, timeout_s: float = CATCH_UP_S) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ((self.status(name) or {}).get("height") or 0) >= height:
                return True
            time.sleep(STATUS_POLL_S)
        return False

    def divergent_heights(self, honest: list[str], from_height: int) -> list[str]:
        """Heights at which two honest nodes hold different header hashes (RPC `header`)."""
        return trio.run(self._divergent_heights, honest, from_height)

    async def _divergent_heights(self, honest: list[str], from_height: int) -> list[str]:
        heights = {}
        for name in honest:
            host, _, port = self.node(name).rpc.rpartition(":")
            status = await rpc.call_async(host, int(port), "status", [], 2.0, self.ca)
            heights[name] = status["height"]
        top = min(heights.values())
        first = max(1, min(from_height, top))
        step = max(1, (top - first + 1) // HEADERS_COMPARED_MAX)
        wanted = sorted(set(range(first, top + 1, step)) | {top}) if top >= 1 else []
        hashes: dict[str, dict[int, bytes]] = {}
        for name in honest:
            host, _, port = self.node(name).rpc.rpartition(":")
            connection = await rpc.PipelinedConnection.open(host, int(port), self.ca, self.validator_credentials(name))
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(connection.reader)
                    found = {}
                    for h in wanted:
                        found[h] = (await connection.call("header", [h]))["hash"]
                    hashes[name] = found
                    nursery.cancel_scope.cancel()
            finally:
                await connection.aclose()
        problems = []
        for h in wanted:
            distinct = {hashes[name][h] for name in honest}
            if len(distinct) > 1:
                problems.append(f"height {h}: " + ", ".join(f"{n} {hashes[n][h].hex()[:12]}" for n in honest))
        return problems


def run_behaviour(net: Harness, behaviour: str, byzantine_node: str, results_dir: Path,
                  extra=None, settled: dict | None = None) -> None:
    """Honest phase, Byzantine phase, restart; record everything; then assert."""
    names = net.names
    honest = [n for n in names if n != byzantine_node]
    failures: list[str] = []
    entry: dict = {"validators": len(names), "byzantine_node": byzantine_node, "honest_nodes": honest,
                   "primary_before": net.primary(), "settled": settled}
    honest_pids = {name: net.daemon_pid(name) for name in honest}
    start_height = min((net.status(n) or {}).get("height") or 0 for n in honest)
    restarted = False
    try:
        entry["honest"] = net.measure(f"{behaviour} honest", HONEST_S, honest)
        # View changes of the Byzantine phase count from here: one while the process starts is its doing too.
        baseline = max((v for v in net.views(honest).values() if v is not None), default=None)
        entry["view_before_byzantine"] = baseline
        net.byzantine(byzantine_node, behaviour)
        if behaviour != "handshake-flood":
            entry["linked_s"] = net.wait_linked(byzantine_node, honest)
        else:
            time.sleep(1.0)
        entry["byzantine"] = net.measure(f"{behaviour} byzantine", BYZANTINE_S, honest, baseline)
        entry["byzantine_process"] = net.byzantine_stats(byzantine_node).get("counters", {})
        if extra is not None:
            extra(net, honest, byzantine_node, entry, failures)
        exited = [name for name in honest if net.daemon_pid(name) is None]
        for name in exited:
            failures.append(f"honest daemon {name} exited; last lines of its log:\n{net.log_tail(name)}")
        for name in honest:
            if name not in exited and net.daemon_pid(name) != honest_pids[name] and name not in entry.get(
                    "restarted_honest", []):
                failures.append(f"honest daemon {name} was replaced (pid {honest_pids[name]} -> {net.daemon_pid(name)})")
        alive = [name for name in honest if name not in exited]
        if len(alive) >= 2:
            divergent = net.divergent_heights(alive, start_height)
            entry["divergent_heights"] = divergent[:10]
            if divergent:
                failures.append(f"honest nodes committed different blocks: {divergent[:5]}")
        honest_rate = entry["honest"]["rate_per_s"]
        byzantine_rate = entry["byzantine"]["rate_per_s"]
        entry["ratio"] = round(byzantine_rate / honest_rate, 3) if honest_rate else None
        if honest_rate <= 0:
            failures.append(f"no commits in the honest phase: {entry['honest']}")
        elif byzantine_rate < RATE_RATIO_MIN * honest_rate:
            failures.append(f"committed rate with the Byzantine node {byzantine_rate}/s is below "
                            f"{RATE_RATIO_MIN} x the honest {honest_rate}/s (errors {entry['byzantine']['errors']})")
        if entry["byzantine"]["view_changes"] > VIEW_CHANGES_MAX:
            failures.append(f"{entry['byzantine']['view_changes']} view changes in {BYZANTINE_S:.0f} s "
                            f"(views {entry['byzantine']['views']}); at most {VIEW_CHANGES_MAX} allowed")
        # The node comes back honest: it answers, has every link within LINKS_BACK_S and catches up.
        target = max((net.status(n) or {}).get("height") or 0 for n in alive) if alive else 0
        entry["restart"] = net.restart(byzantine_node, [n for n in names if n != byzantine_node])
        restarted = True
        if entry["restart"]["returncode"] != 0:
            failures.append(f"restart {byzantine_node} failed: {entry['restart']['output']}")
        elif entry["restart"]["links_back_s"] is None or entry["restart"]["links_back_s"] > LINKS_BACK_S:
            failures.append(f"{byzantine_node} did not get all its links back within {LINKS_BACK_S:.0f} s "
                            f"of its restart (status {net.status(byzantine_node)})")
        elif not net.wait_height(byzantine_node, target):
            failures.append(f"{byzantine_node} did not catch up to height {target} within {CATCH_UP_S:.0f} s")
        else:
            entry["view_joined_s"] = net.wait_same_view(byzantine_node, honest)
            if entry["view_joined_s"] is None:
                failures.append(f"{byzantine_node}, restarted, did not join the honest nodes' view within "
                                f"{VIEW_JOIN_S:.0f} s (views {net.views(names)})")
        entry["after_restart"] = {n: {k: v for k, v in (net.status(n) or {}).items() if k in ("height", "view")}
                                  for n in names}
        if net.byzantine_stats(byzantine_node) and control.byzantine_running(net.node(byzantine_node)):
            failures.append(f"the byzantine process of {byzantine_node} still runs after restart")
    finally:
        if not restarted:
            net.restart(byzantine_node, [])
        record_rates(behaviour, entry, results_dir)
    assert not failures, f"{behaviour}:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def testnet4(tmp_path_factory):
    net = Harness(tmp_path_factory.mktemp("byzantine4") / "run", 4)
    try:
        yield net
    finally:
        net.down()


def pick_backup(net: Harness, index: int) -> str:
    """A node that is neither the primary nor the next one, different for successive behaviours."""
    names = net.names
    primary = net.primary()
    following = names[(names.index(primary) + 1) % len(names)]
    candidates = [n for n in names if n not in (primary, following)]
    return candidates[index % len(candidates)]


def restart_honest_under_flood(net: Harness, honest: list[str], byzantine_node: str, entry: dict,
                               failures: list[str]) -> None:
    """While the flood goes on: restart an honest validator that is not the primary; its links to the
    other honest validators must be back within LINKS_BACK_S."""
    primary = net.primary()
    victim = next(n for n in honest if n != primary)
    others = [n for n in honest if n != victim]
    outcome = net.restart(victim, others)
    entry["restart_honest_under_flood"] = {"node": victim, **outcome}
    entry["restarted_honest"] = [victim]
    if outcome["returncode"] != 0:
        failures.append(f"restarting honest {victim} during the flood failed: {outcome['output']}")
    elif outcome["links_back_s"] is None or outcome["links_back_s"] > LINKS_BACK_S:
        failures.append(f"honest {victim}, restarted during the handshake flood, did not link to {others} within "
                        f"{LINKS_BACK_S:.0f} s (status {net.status(victim)})")


@pytest.mark.parametrize("behaviour", FOUR_NODE_BEHAVIOURS)
def test_one_byzantine_validator_of_four(testnet4, results_dir, behaviour):
    settled = testnet4.settle()
    node = pick_backup(testnet4, FOUR_NODE_BEHAVIOURS.index(behaviour))
    extra = restart_honest_under_flood if behaviour == "handshake-flood" else None
    run_behaviour(testnet4, behaviour, node, results_dir, extra, settled)


def test_equivocating_primary_of_seven(tmp_path, results_dir):
    """The primary of a 7-validator network proposes two blocks per slot and votes both ways; as a
    backup after the view change it sends conflicting votes."""
    net = Harness(tmp_path / "run", 7)
    try:
        settled = net.settle()
        run_behaviour(net, "equivocate", net.primary(), results_dir, settled=settled)
    finally:
        net.down()


# Issue 14, point 6: a view change with large prepared blocks in flight. VIEW-CHANGE and NEW-VIEW carry
# block headers and the new primary fetches the bodies it lacks (BLOCK-REQUEST); with whole blocks in them,
# n = 7 and full windows of 1 MiB blocks made a NEW-VIEW larger than the 64 MiB frame limit
# (tests/consensus/test_view_change_bodies.py has the arithmetic). Here the same path runs in real processes.
BIG_BLOCK_ENTRIES = 2000           # ~0.7 MiB blocks of ~330-byte commit entries
# Blocks fill up: a partial one only after a second, and then only with nothing else in flight. With
# blocks this big on two cores shared by seven daemons and the load, the next primary's NEW-VIEW, body
# fetches and first proposal took more than the default 2 s view timeout in one CI run (a second view
# change): the timeout is sized to the blocks, as an operator would.
BIG_BLOCK_CONSENSUS = {"batch_requests_max": BIG_BLOCK_ENTRIES, "batch_wait_ms": 1000, "partial_batch_in_flight_max": 1,
                       "view_timeout_ms": 4000}
BIG_BLOCK_LOAD_S = 20.0            # saturating load; the primary turns silent 5-11 s into it
BIG_BLOCK_SWITCH_AFTER_S = 5.0     # at the earliest, and once a block of at least half the size has committed:
BIG_BLOCK_SWITCH_BY_S = 11.0       # a loaded host took more than 5 s for the first one; switched by then anyway
BIG_BLOCK_WARMUP_S = 1.0           # the rate before the switch counts from here
BIG_BLOCK_LANES = 128              # connections, each with the node's limit of 32 waiting submits: 4,096 in flight
BIG_BLOCK_WINDOW = 32
BIG_BLOCK_VIEW_CHANGE_S = 30.0     # the honest six agree on a new view and commit again within this


def test_a_view_change_with_large_prepared_blocks_in_flight_completes_in_seven(tmp_path, results_dir):
    """The primary of 7 turns `silent` while blocks of up to 2,000 entries are prepared under a saturating
    load: the six others agree on the next view, commit again, hold the same blocks, and commit at least
    half the rate they did before."""
    net = Harness(tmp_path / "run", 7, consensus=BIG_BLOCK_CONSENSUS)
    try:
        net.settle()
        primary = net.primary()
        honest = [n for n in net.names if n != primary]
        honest_pids = {name: net.daemon_pid(name) for name in honest}
        view_before = max(v for v in net.views(honest).values() if v is not None)
        entry = trio.run(_silence_the_primary_under_big_blocks, net, primary, honest, view_before)
        statuses = [net.status(name) or {} for name in honest]
        entry["view_after"] = min((s.get("view") for s in statuses if s.get("view") is not None), default=None)
        entry["height_after"] = min((s.get("height") or 0 for s in statuses), default=0)
        replaced = [name for name in honest if net.daemon_pid(name) != honest_pids[name]]
        entry["divergent_heights"] = net.divergent_heights(honest, 1)[:10]
        path = Path(os.environ.get("BYZANTINE_RATES_JSON") or results_dir / RATES_FILE)
        recorded = json.loads(path.read_text()) if path.exists() else {}
        recorded["new-view-big-blocks"] = entry
        path.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        print(f"\n[byzantine] new-view-big-blocks: {entry}")
        assert not replaced, f"honest daemons exited: {replaced}"
        assert not entry["divergent_heights"], entry
        assert entry["largest_block_entries_before"] >= BIG_BLOCK_ENTRIES // 2, entry   # big blocks were in flight
        # One view change, or two when the next primary, fetching 2,000-entry bodies on an overloaded two-core
        # host, is itself timed out (docs/BYZANTINE.md): never a series.
        assert entry["view_before"] + 1 <= entry["view_after"] <= entry["view_before"] + 2, entry
        assert entry["height_after"] > entry["height_at_switch"], entry        # commits resumed after it
        assert entry["ratio"] >= RATE_RATIO_MIN, entry
    finally:
        net.down()


async def _silence_the_primary_under_big_blocks(net: Harness, primary: str, honest: list[str],
                                                view_before: int) -> dict:
    # The primary takes load too (its lanes break when it goes silent): forwarded requests alone arrive in
    # REQUESTS of at most 256, too slowly to fill big blocks.
    addresses = [net.node(name).rpc for name in [primary] + honest]
    queues, _ = workload.presigned_submits(net.plan, 40_000, BIG_BLOCK_LANES, SUBMIT_WAIT_S)
    entry: dict = {"primary": primary, "view_before": view_before}
    committed_at: list[float] = []
    accept = _accept_recording(committed_at)

    async def switch_then_watch(start: float) -> None:
        await trio.sleep(BIG_BLOCK_SWITCH_AFTER_S)
        while True:
            # One node asked, on one connection: under this load a status call on a fresh one can time out.
            entry["height_at_switch"], entry["largest_block_entries_before"] = await _height_and_largest_block(
                net, honest[0])
            big = entry["largest_block_entries_before"] >= BIG_BLOCK_ENTRIES // 2
            if big or trio.current_time() - start >= BIG_BLOCK_SWITCH_BY_S:
                break
            await trio.sleep(STATUS_POLL_S)
        entry["switched_at_s"] = round(trio.current_time() - start, 1)
        await trio.to_thread.run_sync(net.byzantine, primary, "silent")
        switched = trio.current_time()
        while trio.current_time() - switched < BIG_BLOCK_VIEW_CHANGE_S:
            statuses = [await trio.to_thread.run_sync(net.status, name) for name in honest]
            views = {s.get("view") for s in statuses if s}
            heights = [s.get("height") or 0 for s in statuses if s]
            moved_on = len(views) == 1 and views != {entry["view_before"]}
            if moved_on and heights and min(heights) > entry["height_at_switch"]:
                entry["view_change_s"] = round(trio.current_time() - switched, 1)
                break
            await trio.sleep(STATUS_POLL_S)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(switch_then_watch, start)
        phase = await loadgen.closed_loop("big blocks", addresses, queues, accept, BIG_BLOCK_LOAD_S,
                                          BIG_BLOCK_WINDOW, net.ca,
                                          workload.submit_lane_credentials(net.plan, len(queues)))
    switch = start + entry.get("switched_at_s", BIG_BLOCK_SWITCH_AFTER_S)
    before = sum(1 for t in committed_at if start + BIG_BLOCK_WARMUP_S <= t < switch) / (
        switch - start - BIG_BLOCK_WARMUP_S)
    end = start + BIG_BLOCK_LOAD_S
    after = sum(1 for t in committed_at if switch <= t <= end) / (end - switch)
    entry["rate_before_per_s"], entry["rate_after_per_s"] = round(before, 1), round(after, 1)
    entry["ratio"] = round(after / before, 3) if before else None
    entry["load"] = {"sent": phase.sent, "ok": phase.ok, "errors": dict(phase.errors)}
    return entry


async def _height_and_largest_block(net: Harness, name: str) -> tuple[int, int]:
    """The node's height and the most entries in one of its last five blocks (RPC, as a validator)."""
    host, _, port = net.node(name).rpc.rpartition(":")
    connection = await rpc.PipelinedConnection.open(host, int(port), net.ca, net.validator_credentials(name))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.reader)
            with trio.fail_after(30):
                top = (await connection.call("status", []))["height"]
                counts = [(await connection.call("header", [height]))["header"]["entry_count"]
                          for height in range(max(1, top - 4), top + 1)]
            nursery.cancel_scope.cancel()
    finally:
        await connection.aclose()
    return top, max(counts, default=0)


# ---------------------------------------------------------------- the tool itself (fast)


def test_help_explains_every_behaviour():
    from testnet import byzantine

    done = run_testnet("byzantine", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for name, description in byzantine.BEHAVIOURS.items():
        assert name in text and " ".join(description.split())[:60] in text
    assert set(byzantine.BEHAVIOURS) == {"nested-garbage", "oversize", "equivocate", "request-flood",
                                         "replay-committed", "silent", "handshake-flood"}


def test_unknown_behaviour_and_missing_testnet_are_refused(tmp_path):
    done = run_testnet("byzantine", "hk-1", "--behaviour", "nonsense", "--dir", str(tmp_path))
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = run_testnet("byzantine", "hk-1", "--behaviour", "silent", "--dir", str(tmp_path))
    assert done.returncode == 1 and "no testnet in" in done.stderr and "Traceback" not in done.stderr


def test_hostile_payloads_are_what_they_claim():
    from consensus import codec
    from testnet import byzantine

    for size in (70_000, 1_000_000, 1_000_001):     # the same arithmetic as at a 64 MiB limit
        frame = byzantine.requests_frame_of_size(size)
        assert len(frame) == size
        kind, payload = codec.unpack(frame)
        assert kind == "c" and codec.unpack(payload)["type"] == "requests"
    empty = byzantine.empty_arrays(4 * 1024 * 1024)
    assert len(empty) == 4 * 1024 * 1024 and empty[:1] == b"\xdd"
    nested = dict(byzantine.nested_payloads())
    assert nested["message-nested-arrays"] == b"\x91" * byzantine.NESTING_DEPTH + b"\x90"
    assert codec.unpack(nested["requests-entry-nested"])["requests"][0] == nested["message-nested-arrays"]
    for label, data in byzantine.declared_length_payloads():
        with pytest.raises(codec.EncodingError):
            codec.unpack(data)
