"""The validator set changes under load, with real daemon processes over real TCP (issue 17).

A 4-validator cluster (2 HK, 2 CN) with a small epoch margin, while two load threads keep submitting
commitments: grows to 5 (hk-3), then to 7 (cn-3 and cn-4 in one reconfiguration), each new node
started with an empty data directory and `joining = true`, catching up and then voting; hk-1's key
is rotated (its node holds the new key as a spare key); cn-2 is removed; HK's regulator key is
replaced, and the new key then signs a governance entry the old one no longer can. Then: every acknowledged commitment is in every store, the stores are
identical, the rotated-out key is refused at the p2p door (and counted), and a node restarted with
an empty data directory syncs the whole history through every epoch, and a match proof issued before
and one issued after each change verify offline with `bayledger proof verify --genesis` alone. The
commit pauses around each change are printed (seen with -s), never asserted: speed belongs to the
benchmark."""

from __future__ import annotations

import shutil
import threading
import time

import trio

from consensus.epochs import AddValidator, RemoveValidator, RotateValidatorKey, SetMinSigners
from consensus.validators import Validator
from node.cli import main as cli_main
from node.client import build_match_query
from node.keys import load_key_file
from node.transport import FrameError, handshake
from storage.entries import build_commit, build_reconfigure
from storage.genesis import Genesis, GovernanceKey
from storage.ledger import Ledger
from storage.reconfiguration import SetGovernance
from tests.support.node_cluster import CHAIN_ID, Cluster, RpcClient, RpcError

MARGIN_HEIGHTS = 32           # >= the cluster's watermark_window (32)
LOAD_INTERVAL_S = 0.01        # each load lane waits this long between commitments
LOAD_AUTHORS = (("bank-hk", "HK"), ("bureau-cn", "CN"))   # one lane (thread) each
CHANGE_TIMEOUT_S = 120
MEMBERS_AT_END = ["hk-1", "hk-2", "hk-3", "cn-1", "cn-3", "cn-4"]


class Load:
    """Submits commitments at a steady rate through one node, one lane (thread) per author, each waiting
    for its commit, and remembers the acknowledged ones."""

    def __init__(self, cluster: Cluster, via: str):
        self.node = cluster.nodes[via]
        self.keys = {author: load_key_file(cluster.keys_dir / f"{author}.json").signing_key
                     for author, _ in LOAD_AUTHORS}
        self.acknowledged: list[tuple[float, bytes]] = []   # (when, commitment), appended by every lane
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(lane, author, jurisdiction), daemon=True)
                         for lane, (author, jurisdiction) in enumerate(LOAD_AUTHORS)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, lane: int, author: str, jurisdiction: str) -> None:
        client = self.node.rpc_client()
        nonce = 0
        try:
            while not self._stop.is_set():
                nonce += 1
                commitment = bytes([lane]) + nonce.to_bytes(31, "big")
                entry = build_commit(self.keys[author], author, CHAIN_ID, commitment, "credit-report", jurisdiction,
                                     nonce, int(time.time() * 1000))
                try:
                    receipt = client.call("submit", entry, {"wait": True, "timeout_ms": 30_000})
                except (RpcError, OSError) as exc:
                    self.errors.append(str(exc))
                    continue
                if receipt.get("status") == "committed":
                    self.acknowledged.append((time.monotonic(), commitment))
                time.sleep(LOAD_INTERVAL_S)
        finally:
            client.close()

    def longest_pause_s(self, since: float) -> float:
        times = sorted(when for when, _ in self.acknowledged if when >= since)
        return max((b - a for a, b in zip(times, times[1:])), default=float("nan"))


class Proofs:
    """Match proofs fetched from hk-2 as the chain goes, each to be verified offline at the end."""

    def __init__(self, cluster: Cluster, load: Load):
        self.cluster, self.load = cluster, load
        self.fetched: list[tuple[str, bytes, bytes]] = []    # (when, commitment, proof bytes)

    def fetch(self, label: str, committed_after: float = 0.0) -> None:
        """A proof of the newest commitment acknowledged after `committed_after` (monotonic seconds)."""
        recent = self.cluster.wait_until(
            lambda: [c for when, c in self.load.acknowledged if when > committed_after], 60, f"a commitment ({label})")
        commitment = recent[-1]
        key = load_key_file(self.cluster.keys_dir / "bank-hk.json")
        client = RpcClient(self.cluster.nodes["hk-2"].rpc, key_file=self.cluster.keys_dir / "bank-hk.json")
        try:
            query = build_match_query(key.signing_key, "bank-hk", CHAIN_ID, commitment, node="hk-2")
            self.fetched.append((label, commitment, client.call("match", query)))
        finally:
            client.close()

    def verify_offline(self, tmp_path, capsys) -> None:
        for index, (label, commitment, proof) in enumerate(self.fetched):
            path = tmp_path / f"proof-{index}.msgpack"
            path.write_bytes(proof)
            capsys.readouterr()
            code = cli_main(["proof", "verify", str(path), "--commitment", commitment.hex(),
                             "--genesis", str(self.cluster.genesis_path)])
            out = capsys.readouterr().out
            assert code == 0 and "MATCH" in out, (label, code, out)


def _governance_signers(cluster: Cluster, names=("gov-cn", "gov-hk")):
    return [(name, load_key_file(cluster.keys_dir / f"{name}.json").signing_key) for name in names]


def _reconfigure(cluster: Cluster, via: str, epoch: int, changes, addresses=None, governance=(),
                 signers=("gov-cn", "gov-hk")) -> int:
    """Submit a reconfiguration and wait for it; the first height of the epoch it schedules."""
    entry = build_reconfigure(_governance_signers(cluster, signers), CHAIN_ID, epoch, changes, addresses or {},
                              nonce=epoch + 1, time_ms=int(time.time() * 1000), governance=governance)
    receipt = cluster.nodes[via].call("submit", entry, {"wait": True, "timeout_ms": 60_000})
    assert receipt["status"] == "committed", receipt
    return receipt["height"] + MARGIN_HEIGHTS + 1


def _add(cluster: Cluster, epoch: int, joiners: list[str]) -> int:
    """Add `joiners` in one reconfiguration and start their nodes (empty data, joining = true)."""
    changes, addresses = [], {}
    for joiner in joiners:
        node = cluster.nodes[joiner]
        key = load_key_file(node.dir / "key.json").public_key
        changes.append(AddValidator(Validator(joiner, key, node.jurisdiction)))
        addresses[joiner] = {"p2p": f"127.0.0.1:{node.p2p}", "rpc": f"127.0.0.1:{node.rpc}"}
    start = _reconfigure(cluster, "hk-2", epoch, changes, addresses)
    for joiner in joiners:
        cluster.start(joiner)
        cluster.wait_serving(joiner)
    return start


def _signers(cluster: Cluster, via: str, height: int) -> set[str]:
    certificate = cluster.nodes[via].call("block", height, 0, 0)["certificate"]
    return {signature["validator"] for signature in certificate["signatures"]}


def _wait_for_signer(cluster: Cluster, via: str, signer: str, from_height: int) -> int:
    """The first height at or above `from_height` whose certificate `signer` signed (waiting for blocks)."""
    height = from_height

    def signed():
        nonlocal height
        while cluster.status(via)["height"] >= height:
            if signer in _signers(cluster, via, height):
                return height
            height += 1
        return None
    return cluster.wait_until(signed, CHANGE_TIMEOUT_S, f"a certificate signed by {signer} from {from_height}")


def _public_height(cluster: Cluster, node_id: str) -> int:
    """A node's height through the public status (a joiner's or a rotated key may not log in as a
    validator before, or after, its epoch)."""
    client = RpcClient(cluster.nodes[node_id].rpc)
    try:
        return client.call("status")["height"]
    finally:
        client.close()


def _wait_height(cluster: Cluster, node_ids, height: int) -> None:
    cluster.wait_until(lambda: all(_public_height(cluster, n) >= height for n in node_ids), CHANGE_TIMEOUT_S,
                       f"height {height} on {node_ids}")


def _epoch_of(cluster: Cluster, via: str, height: int) -> int:
    return cluster.nodes[via].call("header", height)["header"].get("epoch", 0)


async def _handshake_with(port: int, node_id: str, signing_key, validators) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await handshake(stream, chain_id=CHAIN_ID, node_id=node_id, signing_key=signing_key, validators=validators,
                        frame_bytes_max=1 << 20)
        return "accepted"
    except FrameError as exc:
        return exc.reason
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return "closed"
    finally:
        await stream.aclose()


def _open_stores(cluster: Cluster, node_ids) -> dict[str, Ledger]:
    genesis = Genesis.load(cluster.genesis_path)
    return {node_id: Ledger.open(cluster.nodes[node_id].data_dir / "ledger", genesis, create=False)
            for node_id in node_ids}


def test_the_validator_set_grows_rotates_and_shrinks_under_load(tmp_path, capsys):
    cluster = Cluster(tmp_path, epoch_margin_heights=MARGIN_HEIGHTS,
                      joiners=(("hk-3", "HK"), ("cn-3", "CN"), ("cn-4", "CN")))
    pauses: dict[str, float] = {}
    try:
        cluster.start_all()
        with Load(cluster, "hk-2") as load:
            proofs = Proofs(cluster, load)
            # 1. Grow to 5: hk-3 joins with an empty data directory and votes from its epoch on.
            proofs.fetch("before adding hk-3")
            changed = time.monotonic()
            start_1 = _add(cluster, 0, ["hk-3"])
            _wait_for_signer(cluster, "hk-2", "hk-3", start_1)
            proofs.fetch("after adding hk-3", time.monotonic())
            assert _epoch_of(cluster, "hk-2", start_1) == 1 and _epoch_of(cluster, "hk-2", start_1 - 1) == 0
            pauses["add hk-3 (4 -> 5)"] = load.longest_pause_s(changed)
            # ... then to 7 in one reconfiguration (so f goes from 1 to 2).
            changed = time.monotonic()
            start_2 = _add(cluster, 1, ["cn-3", "cn-4"])
            for joiner in ("cn-3", "cn-4"):
                _wait_for_signer(cluster, "hk-2", joiner, start_2)
            proofs.fetch("after adding cn-3 and cn-4", time.monotonic())
            pauses["add cn-3, cn-4 (5 -> 7)"] = load.longest_pause_s(changed)

            # 2. Rotate hk-1's key: its node holds the new key as a spare, then the change is submitted.
            old_hk1 = load_key_file(cluster.nodes["hk-1"].dir / "key.json")
            new_key_path = cluster.nodes["hk-1"].dir / "key-next.json"
            new_hk1 = cluster._keygen(new_key_path, "hk-1")
            cluster.stop("hk-1")
            cluster._write_config(cluster.nodes["hk-1"], 1000, spare_key_files=(new_key_path,))
            cluster.start("hk-1")
            cluster.wait_serving("hk-1")
            changed = time.monotonic()
            start_3 = _reconfigure(cluster, "hk-2", 2, [RotateValidatorKey("hk-1", bytes.fromhex(new_hk1))])
            _wait_for_signer(cluster, "hk-2", "hk-1", start_3)
            proofs.fetch("after rotating hk-1", time.monotonic())
            assert _epoch_of(cluster, "hk-2", start_3) == 3
            pauses["rotate hk-1"] = load.longest_pause_s(changed)
            # The old key is refused at cn-1's p2p door from now on, and counted there.
            before = cluster.nodes["cn-1"].metric("bayledger_rejected_frames_total", 'reason="unknown-key"')
            genesis = Genesis.load(cluster.genesis_path)
            # (Our end of the handshake completes either way: each side judges the other's key on its own.)
            trio.run(_handshake_with, cluster.nodes["cn-1"].p2p, "hk-1", old_hk1.signing_key, genesis.validator_set)
            cluster.wait_until(
                lambda: cluster.nodes["cn-1"].metric("bayledger_rejected_frames_total", 'reason="unknown-key"')
                > before, 30, "cn-1 counting the rotated-out key")

            # 3. Remove cn-2: the others cut its links and go on without it.
            changed = time.monotonic()
            start_4 = _reconfigure(cluster, "hk-2", 3, [RemoveValidator("cn-2")])
            _wait_height(cluster, MEMBERS_AT_END, start_4 + 5)
            assert _epoch_of(cluster, "hk-2", start_4) == 4
            assert "cn-2" not in _signers(cluster, "hk-2", start_4 + 1)
            cluster.wait_until(lambda: "cn-2" not in cluster.status("hk-2")["peers"], 30, "cn-2's link cut")
            proofs.fetch("after removing cn-2", time.monotonic())
            pauses["remove cn-2"] = load.longest_pause_s(changed)

            # 4. Replace HK's regulator key: an epoch with the same validators and the new key.
            new_hk_hex = cluster._keygen(cluster.keys_dir / "gov-hk-2.json", "gov-hk-2")
            new_hk = load_key_file(cluster.keys_dir / "gov-hk-2.json")
            change = SetGovernance("HK", (GovernanceKey("gov-hk-2", bytes.fromhex(new_hk_hex), "HK"),), 1)
            changed = time.monotonic()
            start_5 = _reconfigure(cluster, "hk-2", 4, [], governance=[change])
            _wait_height(cluster, MEMBERS_AT_END, start_5)
            assert _epoch_of(cluster, "hk-2", start_5) == 5
            # The old HK key signs nothing any more; the new one does.
            old = build_reconfigure(_governance_signers(cluster), CHAIN_ID, 5, [SetMinSigners(0)], {}, nonce=90,
                                    time_ms=int(time.time() * 1000))
            try:
                cluster.nodes["hk-2"].call("submit", old, {"wait": True, "timeout_ms": 30_000})
                raise AssertionError("an entry signed with the replaced regulator key was taken")
            except RpcError as exc:
                assert "unknown-governance-key" in str(exc), exc
            assert new_hk.id == "gov-hk-2"
            start_6 = _reconfigure(cluster, "hk-2", 5, [SetMinSigners(0)], signers=("gov-cn", "gov-hk-2"))
            _wait_height(cluster, MEMBERS_AT_END, start_6)
            pauses["replace HK's regulator key"] = load.longest_pause_s(changed)
            proofs.fetch("after replacing HK's regulator key", time.monotonic())
        assert load.acknowledged, load.errors
        proofs.verify_offline(tmp_path, capsys)   # each carries the epochs up to its own status block

        # 5. A node with an empty data directory syncs the whole history through every epoch.
        cluster.stop("hk-2")
        shutil.rmtree(cluster.nodes["hk-2"].data_dir)
        cluster.start("hk-2")
        cluster.wait_serving("hk-2")
        _wait_height(cluster, ["hk-2"], _public_height(cluster, "cn-1"))

        for node_id in cluster.nodes:
            cluster.stop(node_id)
        stores = _open_stores(cluster, MEMBERS_AT_END)
        try:
            height = min(store.height() for store in stores.values())
            heads = {node_id: store.header(height).hash() for node_id, store in stores.items()}
            assert len(set(heads.values())) == 1, heads
            for node_id, store in stores.items():
                lost = [c.hex() for _, c in load.acknowledged if store.commitment_record(c) is None]
                assert not lost, f"{node_id} lacks acknowledged commitments {lost[:3]}"
                assert store.epochs.latest_epoch == 6 and store.epochs.schedule.latest.validators.get("cn-2") is None
                assert [k.id for k in store.epochs.governance_at(store.height()).keys["HK"]] == ["gov-hk-2"]
        finally:
            for store in stores.values():
                store.close()
        print(f"commit pauses (longest gap between acknowledged commits from each change's submission until its "
              f"epoch runs): {pauses}; "
              f"{len(load.acknowledged)} acknowledged, {len(load.errors)} submit errors")
    finally:
        cluster.teardown()
