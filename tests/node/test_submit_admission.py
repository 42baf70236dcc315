"""Submit checks at the door (issue 15): entries the applied state refuses never enter a pool or a
block, and each participant has its own submit rate and mempool share.

Daemon-level tests run four in-process daemons over real 127.0.0.1 links on real LevelDB ledgers
with real Ed25519 signatures (the harness of tests/support/daemon_net.py); SubmitShares is also tested on its
own with explicit times, where the edges are exact.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import trio

from node.api import ApiError
from node.keys import KeyPair
from node.submit_shares import SHARE_PRUNE_INTERVAL_MS, SHARE_SWEEP_ENTRIES_MIN, SubmitShares
from storage import entries as ledger_entries
from storage.genesis import Genesis
from storage.ledger import Ledger
from tests.support.submit_flood import Participant, flood_while_honest_commit
from tests.support.daemon_net import CHAIN, IDS, Net

ALL = [node_id for node_id, _ in IDS]
PARTICIPANTS = {"hk-bank": "HK", "hk-bureau": "HK", "cn-bureau": "CN"}


class LedgerNet(Net):
    """Four daemons on real LevelDB ledgers with a genesis of real participant and governance keys;
    `limits` overrides [limits] fields on every node (or per node in `node_limits`)."""

    def __init__(self, tmp_path, limits=None, node_limits=None, view_timeout_ms=600):
        super().__init__(tmp_path, view_timeout_ms=view_timeout_ms)
        self.limits = limits or {}
        self.node_limits = node_limits or {}
        self.participant_keys = {pid: KeyPair.generate(pid) for pid in PARTICIPANTS}
        self.governance_keys = {j: KeyPair.generate() for j in ("HK", "CN")}
        self.genesis = Genesis.from_dict({
            "chain_id": CHAIN, "genesis_time_ms": 1_700_000_000_000, "min_signers_per_jurisdiction": 1,
            "validators": [{"id": v.id, "public_key": v.public_key.hex(), "jurisdiction": v.jurisdiction}
                           for v in self.validators.validators],
            "governance": {j: {"keys": [{"id": f"gov-{j.lower()}", "public_key": k.public_key.hex()}], "threshold": 1}
                           for j, k in self.governance_keys.items()},
            "participants": [{"id": pid, "jurisdiction": j, "role": "credit-provider",
                              "public_key": self.participant_keys[pid].public_key.hex()}
                             for pid, j in PARTICIPANTS.items()],
        })
        self.ledgers = {node_id: Ledger.open(tmp_path / f"{node_id}-ledger", self.genesis) for node_id in ALL}

    def config(self, node_id):
        config = super().config(node_id)
        return replace(config, limits=replace(config.limits, **{**self.limits, **self.node_limits.get(node_id, {})}))

    def application(self):
        return None   # the daemon's own, over its real ledger: the door reads it

    def participant(self, pid):
        return Participant(pid, self.participant_keys[pid].signing_key, CHAIN, PARTICIPANTS[pid])

    def regulators(self, jurisdictions=("HK", "CN")):
        return [(f"gov-{j.lower()}", self.governance_keys[j].signing_key) for j in jurisdictions]

    def close(self):
        for ledger in self.ledgers.values():
            ledger.close()

    def all_block_entries(self, node_id):
        ledger = self.ledgers[node_id]
        return [e for h in range(1, ledger.height() + 1) for e in ledger.block_entries(h)]


async def refused(submit, code, *match):
    with pytest.raises(ApiError) as info:
        await submit
    assert info.value.code == code, (info.value.code, str(info.value))
    for text in match:
        assert text in str(info.value), (text, str(info.value))
    return info.value


async def wait_until(condition, poll_s=0.02):
    while not condition():
        await trio.sleep(poll_s)


def error_code(exc):
    return exc.code if isinstance(exc, ApiError) else None


# --- SubmitShares on its own: exact edges with explicit times --------------------------------------

def test_rate_edge_is_exact_and_refusals_cost_nothing():
    pool: dict[bytes, None] = {}
    shares = SubmitShares(rate_per_s=2, burst=3, pending_max=100)
    for n in range(3):
        assert shares.admit("a", b"a%d" % n, 10.0, pool.__contains__)
    error = pytest.raises(ApiError, shares.admit, "a", b"a3", 10.0, pool.__contains__).value
    assert error.code == "busy" and "'a'" in str(error) and "= 2" in str(error) and "bursts of 3" in str(error)
    assert shares.admit("b", b"b0", 10.0, pool.__contains__)          # another participant: untouched
    # 2/s: one token after exactly 0.5 s, not before; the refusal at 0.49 s took nothing.
    assert pytest.raises(ApiError, shares.admit, "a", b"a3", 10.49, pool.__contains__).value.code == "busy"
    assert shares.admit("a", b"a3", 10.5, pool.__contains__)
    assert pytest.raises(ApiError, shares.admit, "a", b"a4", 10.5, pool.__contains__).value.code == "busy"
    # The bucket holds at most `burst`, however long the pause.
    for n in range(3):
        shares.admit("a", b"a%d" % (10 + n), 1000.0, pool.__contains__)
    assert pytest.raises(ApiError, shares.admit, "a", b"a99", 1000.0, pool.__contains__).value.code == "busy"


def test_share_edge_release_and_duplicates():
    pool: dict[bytes, None] = {}
    shares = SubmitShares(rate_per_s=1, burst=1000, pending_max=2)
    assert shares.admit("a", b"e1", 0.0, pool.__contains__) and shares.admit("a", b"e2", 0.0, pool.__contains__)
    assert shares.pending("a") == 2
    for _ in range(5):   # refused at the share without taking a token: 998 remain
        error = pytest.raises(ApiError, shares.admit, "a", b"e3", 0.0, pool.__contains__).value
        assert error.code == "mempool-full" and "'a'" in str(error) and "= 2" in str(error)
    # The same bytes again take no room (the pool holds them once) but do take a token.
    assert shares.admit("a", b"e1", 0.0, pool.__contains__) is False and shares.pending("a") == 2
    shares.release(b"e1")                                     # committed
    assert shares.pending("a") == 1 and shares.admit("a", b"e3", 0.0, pool.__contains__)
    shares.release(b"e3")                                     # refused by the core
    shares.release(b"e3")                                     # twice: harmless
    shares.release(b"never-seen")
    assert shares.pending("a") == 1 and len(shares) == 1
    for n in range(996):   # the tokens left (the refusals at the share took none)
        shares.release(b"x")
        assert shares.admit("a", b"t%d" % n, 0.0, pool.__contains__)
        shares.release(b"t%d" % n)
    assert pytest.raises(ApiError, shares.admit, "a", b"last", 0.0, pool.__contains__).value.code == "busy"


def test_entries_the_core_dropped_leave_the_share():
    """An entry the core drops from its pool without a commit (found invalid, or its nonce spent by
    another) is forgotten when its participant is at the share, so the count cannot lock it out; one
    still queued for the driver (not pooled yet) is never forgotten that way."""
    pool: dict[bytes, None] = {}
    shares = SubmitShares(rate_per_s=1000, burst=1000, pending_max=2)
    shares.admit("a", b"e1", 0.0, pool.__contains__)
    shares.admit("a", b"e2", 0.0, pool.__contains__)
    shares.pooled(b"e1", b"id1")
    pool[b"id1"] = None
    # e1 is in the pool, e2 is still queued: both count.
    assert pytest.raises(ApiError, shares.admit, "a", b"e3", 1.0, pool.__contains__).value.code == "mempool-full"
    del pool[b"id1"]                                           # the core dropped e1
    # Looked up at most every SHARE_PRUNE_INTERVAL_MS: the refusal at 1.0 s looked already.
    early = 1.0 + SHARE_PRUNE_INTERVAL_MS / 1000 / 2
    assert pytest.raises(ApiError, shares.admit, "a", b"e3", early, pool.__contains__).value.code == "mempool-full"
    assert shares.admit("a", b"e3", 1.0 + SHARE_PRUNE_INTERVAL_MS / 1000, pool.__contains__)
    assert shares.pending("a") == 2                            # e2 (queued) and e3
    shares.pooled(b"gone", b"id-gone")                         # an entry no longer counted: ignored
    assert len(shares) == 2
    # Every counted entry dropped: the prune empties the participant's table, and the entry that
    # follows is counted in a live one (pooled, committed, counted down).
    for entry in (b"e2", b"e3"):
        shares.pooled(entry, b"id-" + entry)
    later = 2.0
    assert shares.admit("a", b"e4", later, pool.__contains__) and shares.pending("a") == 1
    shares.pooled(b"e4", b"id-e4")
    pool[b"id-e4"] = None
    assert shares.pending("a") == 1 and shares.admit("a", b"e5", later, pool.__contains__)
    shares.release_all([b"e4", b"e5"])
    assert shares.pending("a") == 0 and len(shares) == 0


def test_bookkeeping_is_swept_when_it_grows():
    """Buckets that refilled and entries the core dropped are swept once the tables double: memory
    follows what is really pending, not how many participants ever submitted."""
    pool: dict[bytes, None] = {}
    shares = SubmitShares(rate_per_s=1000, burst=10, pending_max=10)
    for n in range(5000):
        entry = b"e%d" % n
        shares.admit(f"p{n}", entry, 0.0, pool.__contains__)
        shares.pooled(entry, entry)      # pooled, then dropped by the core (never in `pool`)
    assert len(shares) < 5000                  # dropped entries were swept
    for n in range(5000, 10_000):              # a minute later the first 5,000 buckets are full again
        entry = b"e%d" % n
        shares.admit(f"p{n}", entry, 60.0, pool.__contains__)
        shares.pooled(entry, entry)
    assert not any(f"p{n}" in shares._buckets for n in range(5000))
    assert len(shares) <= 2 * SHARE_SWEEP_ENTRIES_MIN


# --- daemons on LevelDB ------------------------------------------------------------------------

async def test_entries_refused_at_the_door_are_in_no_block_and_no_pool(tmp_path):
    """The incident of issue 15: 200 entries of a never-admitted author ("mallory", throw-away key)
    are refused at submit with unknown-author on every node, as are an impostor (key-mismatch), an
    under-signed governance entry and, once suspended by governance, a suspended author; none is in any
    validator's pool or any block, while honest entries commit."""
    net = LedgerNet(tmp_path)
    mallory_key = KeyPair.generate("mallory")
    mallory = Participant("mallory", mallory_key.signing_key, CHAIN, "HK")
    impostor = Participant("hk-bank", mallory_key.signing_key, CHAIN, "HK")
    bank, bureau = net.participant("hk-bank"), net.participant("cn-bureau")
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for node_id in ALL:
                    await net.start(nursery, node_id)
                refused_entries = []
                for n in range(200):
                    entry = mallory.commit()
                    refused_entries.append(entry)
                    await refused(net.daemons[ALL[n % 4]].submit(entry, n % 2 == 0, 5), "bad-entry",
                                  "entry refused: unknown-author")
                entry = impostor.commit()
                refused_entries.append(entry)
                await refused(net.daemons["hk-2"].submit(entry, True, 5), "bad-entry", "entry refused: key-mismatch")
                under_signed = ledger_entries.build_suspend(net.regulators(("HK",)), CHAIN, "cn-bureau", 1, 1)
                refused_entries.append(under_signed)
                await refused(net.daemons["cn-1"].submit(under_signed, True, 5), "bad-entry",
                              "entry refused: governance-threshold")
                suspend = ledger_entries.build_suspend(net.regulators(), CHAIN, "cn-bureau", 1, 1)
                receipt = await net.daemons["cn-1"].submit(suspend, True, 20)
                assert receipt["status"] == "committed"
                await net.wait_height(ALL, receipt["height"])
                late = bureau.commit()
                refused_entries.append(late)
                for node_id in ALL:   # every node's applied state has the suspension
                    await refused(net.daemons[node_id].submit(late, False, 5), "bad-entry", "entry refused: suspended")
                # The same governance entry again: its nonce is spent.
                await refused(net.daemons["hk-1"].submit(suspend, True, 5), "bad-entry", "entry refused: replayed-nonce")
                honest = [bank.commit() for _ in range(5)]
                receipts = [await net.daemons[ALL[n % 4]].submit(e, True, 20) for n, e in enumerate(honest)]
                assert all(r["status"] == "committed" for r in receipts)
                top = max(r["height"] for r in receipts)
                await net.wait_height(ALL, top)
                for node_id in ALL:
                    on_ledger = net.all_block_entries(node_id)
                    assert sorted(on_ledger) == sorted([suspend] + honest)
                    daemon = net.daemons[node_id]
                    assert not any(_pooled(daemon, e) for e in refused_entries)
                    assert daemon.metrics.rejected_requests.get("unknown-author") == 50
                    assert daemon.metrics.rejected_requests.get("suspended") == 1
                    assert len(daemon._shares) == 0   # everything counted committed, or was refused
                nursery.cancel_scope.cancel()
    finally:
        net.close()


def _pooled(daemon, entry):
    from consensus import codec
    return codec.sha256(entry) in daemon.replica.pool


async def test_mempool_share_refuses_at_the_edge_and_frees_on_commit(tmp_path):
    """With a share of 3, a participant's 3 entries pending on a node pass and the 4th is refused at
    once (mempool-full, naming it and its share), while another participant's pass; the same bytes
    again take no room. Once the entries commit the share is free again."""
    net = LedgerNet(tmp_path, limits={"mempool_requests_per_participant_max": 3}, view_timeout_ms=60_000)
    bank, bureau = net.participant("hk-bank"), net.participant("hk-bureau")
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await net.start(nursery, "hk-1")   # alone: no quorum, so nothing commits yet
                node = net.daemons["hk-1"]
                first = [bank.commit() for _ in range(3)]
                for entry in first:
                    assert (await node.submit(entry, False, 1))["status"] == "pending"
                fourth = bank.commit()
                await refused(node.submit(fourth, False, 1), "mempool-full", "'hk-bank'", "= 3")
                await refused(node.submit(fourth, True, 1), "mempool-full")
                assert node._shares.pending("hk-bank") == 3 and not _pooled(node, fourth)
                assert (await node.submit(first[0], False, 1))["status"] == "pending"   # already counted
                assert (await node.submit(bureau.commit(), False, 1))["status"] == "pending"
                assert node.metrics.rejected_requests.get("mempool-full") == 2
                for node_id in ALL[1:]:
                    await net.start(nursery, node_id)
                await wait_until(lambda: node._shares.pending("hk-bank") == 0)
                assert set(first) <= set(net.all_block_entries("hk-1"))
                more = [bank.commit() for _ in range(3)]
                receipts = [await node.submit(entry, True, 20) for entry in more]
                assert all(r["status"] == "committed" for r in receipts)
                await net.wait_height(ALL, max(r["height"] for r in receipts))
                for node_id in ALL:
                    assert fourth not in net.all_block_entries(node_id)
                nursery.cancel_scope.cancel()
    finally:
        net.close()


async def test_core_refusals_release_the_share(tmp_path):
    """Submits that pass the daemon's checks together but that the core then refuses (its pool holds
    2) leave their participants' shares: what is counted is exactly what the pool holds."""
    net = LedgerNet(tmp_path, limits={"mempool_requests_max": 2}, view_timeout_ms=60_000)
    authors = [net.participant(pid) for pid in PARTICIPANTS]
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await net.start(nursery, "hk-1")
                node = net.daemons["hk-1"]
                batch = [author.commit() for author in authors for _ in range(2)]
                outcomes = {}

                async def one(entry):
                    try:
                        outcomes[entry] = (await node.submit(entry, False, 1))["status"]
                    except ApiError as exc:
                        outcomes[entry] = exc.code
                async with trio.open_nursery() as submits:   # all started in one batch, before the driver runs
                    for entry in batch:
                        submits.start_soon(one, entry)
                assert sorted(outcomes.values()) == ["mempool-full"] * 4 + ["pending"] * 2
                assert node.metrics.rejected_requests.get("request-pool-full") >= 1   # the core's refusals
                pooled = [e for e in batch if _pooled(node, e)]
                assert len(pooled) == 2
                assert sum(node._shares.pending(pid) for pid in PARTICIPANTS) == 2 == len(node._shares)
                assert all(outcomes[e] == "pending" for e in pooled)
                nursery.cancel_scope.cancel()
    finally:
        net.close()


async def test_rate_limit_refuses_past_the_burst_and_refills(tmp_path):
    """1 entry/s with bursts of 5: 5 submits at once pass, the 6th is refused busy (naming the
    participant and its rate), another participant's passes at the same moment, and after a second the
    participant may submit one more."""
    net = LedgerNet(tmp_path, limits={"submit_rate_per_participant_per_s": 1, "submit_burst_per_participant": 5})
    bank, bureau = net.participant("hk-bank"), net.participant("hk-bureau")
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await net.start(nursery, "hk-1")
                node = net.daemons["hk-1"]
                started = trio.current_time()
                for _ in range(5):
                    assert (await node.submit(bank.commit(), False, 1))["status"] == "pending"
                await refused(node.submit(bank.commit(), False, 1), "busy", "'hk-bank'", "= 1", "bursts of 5")
                assert (await node.submit(bureau.commit(), False, 1))["status"] == "pending"
                assert trio.current_time() - started < 0.5, "the edge is only exact within the first token's second"
                await trio.sleep_until(started + 1.0)
                assert (await node.submit(bank.commit(), False, 1))["status"] == "pending"
                await refused(node.submit(bank.commit(), False, 1), "busy")
                assert node.metrics.rejected_requests.get("busy") == 2
                assert node._shares.pending("hk-bank") == 6
                nursery.cancel_scope.cancel()
    finally:
        net.close()


async def test_an_entry_the_core_drops_does_not_lock_its_participant_out(tmp_path):
    """cn-2, cut off from its peers, pools hk-bank's entry A (share 1: hk-bank is now at its share
    there). The others commit B, another entry of hk-bank with A's nonce. cn-2 rejoins and catches up:
    A can never apply, and the core drops it from its pool without a commit. cn-2 must then take
    hk-bank's next entry (the count did not leak), and A is in no block."""
    net = LedgerNet(tmp_path, node_limits={"cn-2": {"mempool_requests_per_participant_max": 1}},
                    view_timeout_ms=60_000)
    bank = net.participant("hk-bank")
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for node_id in ALL:
                    await net.start(nursery, node_id)
                cn2 = net.daemons["cn-2"]
                await wait_until(lambda: all(len(net.daemons[n].network.connected_peers()) == 3 for n in ALL))
                cn2.network.set_partitioned(frozenset(ALL[:3]))     # both sides: no link comes up meanwhile
                for node_id in ALL[:3]:
                    net.daemons[node_id].network.set_partitioned(frozenset({"cn-2"}))
                await wait_until(lambda: not cn2.network.connected_peers())
                a = bank.commit()
                b = ledger_entries.build_commit(bank.key, "hk-bank", CHAIN, b"\x01" * 32, "credit-report", "HK",
                                                bank.nonce, int(time.time() * 1000))
                assert (await cn2.submit(a, False, 1))["status"] == "pending"
                nxt = bank.commit()
                await refused(cn2.submit(nxt, False, 1), "mempool-full")
                receipt = await net.daemons["hk-2"].submit(b, True, 20)
                assert receipt["status"] == "committed"
                for node_id in ALL:
                    net.daemons[node_id].network.set_partitioned(frozenset())
                await net.wait_height(["cn-2"], receipt["height"])
                dropped_at = None
                while True:   # refused while A is in cn-2's pool, taken soon after the core dropped it
                    try:
                        receipt = await cn2.submit(nxt, True, 20)
                        break
                    except ApiError as exc:
                        assert exc.code == "mempool-full", exc
                        if dropped_at is None and not _pooled(cn2, a):
                            dropped_at = trio.current_time()
                        # Looked up again within the prune interval (one poll of slack).
                        assert dropped_at is None or (
                            trio.current_time() - dropped_at <= SHARE_PRUNE_INTERVAL_MS / 1000 + 0.1), exc
                        await trio.sleep(0.02)
                assert receipt["status"] == "committed" and not _pooled(cn2, a)
                await net.wait_height(ALL, receipt["height"])
                for node_id in ALL:
                    assert a not in net.all_block_entries(node_id)
                nursery.cancel_scope.cancel()
    finally:
        net.close()


async def test_a_flooding_participant_does_not_stop_anothers_entries(tmp_path):
    """hk-bank floods cn-1 (8 tasks, 1,500 entries, next one as soon as answered) at 100/s with
    bursts and a share of 20; hk-bureau's 10 entries, submitted on the same node meanwhile with wait,
    all commit. The flood is held to its rate: what the node took is at most the burst plus the rate
    over the flood's time, the rest refused busy or mempool-full."""
    limits = {"submit_rate_per_participant_per_s": 100, "submit_burst_per_participant": 20,
              "mempool_requests_per_participant_max": 20}
    net = LedgerNet(tmp_path, limits=limits)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for node_id in ALL:
                    await net.start(nursery, node_id)
                node = net.daemons["cn-1"]
                result = await flood_while_honest_commit(
                    node.submit, node.submit, error_code, net.participant("hk-bank"), net.participant("hk-bureau"),
                    flood_count=1500)
                assert not result.honest_errors and len(result.honest_receipts) == 10
                assert all(r["status"] == "committed" for r in result.honest_receipts)
                # Which limit meets the flood first depends on how fast its entries commit: either will do.
                assert set(result.flood_refused) <= {"busy", "mempool-full"} and result.flood_refused.total() > 1000
                assert result.flood_accepted + sum(result.flood_refused.values()) == 1500
                assert result.flood_accepted <= 20 + 100 * result.flood_seconds + 1, result
                await wait_until(lambda: len(node._shares) == 0)   # the flood's accepted entries committed
                nursery.cancel_scope.cancel()
    finally:
        net.close()


# --- the [limits] fields -----------------------------------------------------------------------

@pytest.mark.parametrize("key, low, high", [
    ("submit_rate_per_participant_per_s", 1, 1_000_000),
    ("submit_burst_per_participant", 1, 10_000_000),
    ("mempool_requests_per_participant_max", 1, 10_000_000),
])
def test_share_limits_load_at_their_bounds_and_are_refused_past_them(tmp_path, key, low, high):
    from node.config import ConfigError, load_config, render_config

    base = ('node_id = "hk-1"\nkey_file = "k.json"\ngenesis_file = "g.json"\ndata_dir = "d"\n'
            '[listen]\np2p = "127.0.0.1:7000"\nrpc = "127.0.0.1:7001"\nmetrics = "127.0.0.1:7002"\n'
            '[rpc]\nplaintext = true\n[limits]\n')
    path = tmp_path / "node.toml"
    for value in (low, high):
        path.write_text(base + f"{key} = {value}\n")
        config = load_config(path)
        assert getattr(config.limits, key) == value
        path.write_text(render_config(config))             # rendered and read back the same
        assert load_config(path) == replace(config, source=path)
    for value in (low - 1, high + 1, "1", 1.5, True):
        path.write_text(base + f"{key} = {value!r}\n".replace("'", '"').replace("True", "true"))
        with pytest.raises(ConfigError, match=f"limits.{key}: must be an integer between {low} and {high}"):
            load_config(path)
