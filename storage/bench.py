"""Storage benchmark: apply N already-validated commitments in blocks, then measure proofs, size and reopen.

    N=1000000 python -m storage.bench        (make bench-storage)

Environment: N (commitments, default 1,000,000), BLOCK (entries per block,
default 1,000), AUTHORS (participants committing, default 20), DIR (store
directory; default a fresh temporary one, removed afterwards), PROOFS
(inclusion proofs to time, default 20,000), REVOKES (revoke entries added to each
block after the first, each of a random earlier commitment, default 1: revokes are
rare, but each updates one 256-node path of the revoked set).

What is timed:
- apply: for each block, `Ledger.execute` (what a replica does before voting)
  plus `Ledger.apply_block` (certificate check, execution reuse, one synced
  WriteBatch). Entry signatures are NOT checked at apply (replicas check them
  before voting, in check_request), so the bench builds entries with a random
  64-byte signature instead of signing each one (the fast path this benchmark
  documents); sizes and bytes are those of real entries. Building entries and
  signing the 3 commit votes per block are not timed.
- proofs: inclusion proofs for random leaves at the final tree size.
- match proofs: `Ledger.match_proof` for random commitments, with the status section (the
  head's certificate and the commitment's path in the revoked set); one of a really signed
  commit and one of a (really signed) revoked commitment are verified.
- entries_per_s counts the N commitments only (the few revokes are applied on top).
- bytes on disk per commitment: all files of the store after close and reopen (which turns
  LevelDB's write-ahead log into a compressed table), divided by N.
- reopen: `Ledger.open` of the closed store.
- CPU: `entries_per_thread_cpu_s` divides N by the CPU time of the applying thread alone
  (execute + apply; LevelDB compacts in its own thread); stderr also gives the process CPU
  time and the load average, since on a shared machine wall-clock rates depend on what
  else runs.

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import nacl.signing

from consensus import codec
from consensus.block import BlockHeader, CommitCertificate, CommitSignature, commit_vote_payload, entries_hash
from consensus.messages import CommittedBlock

from .genesis import Genesis
from .ledger import Ledger
from .proofs import verify_match_proof

CHAIN_ID = "bayledger-bench"
GENESIS_TIME_MS = 1_700_000_000_000


def _key(text: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(text.encode()).digest())


def make_genesis(authors: int) -> tuple[Genesis, dict[str, nacl.signing.SigningKey]]:
    validator_keys = {vid: _key(f"bench validator {vid}") for vid in ("hk-1", "hk-2", "cn-1", "cn-2")}
    raw = {
        "chain_id": CHAIN_ID,
        "genesis_time_ms": GENESIS_TIME_MS,
        "validators": [{"id": v, "public_key": bytes(k.verify_key).hex(), "jurisdiction": v[:2].upper()}
                       for v, k in validator_keys.items()],
        "governance": {side: {"keys": [{"id": f"{side.lower()}-regulator",
                                        "public_key": bytes(_key(f"bench regulator {side}").verify_key).hex()}],
                              "threshold": 1} for side in ("HK", "CN")},
        "participants": [{"id": f"provider-{i:03d}", "jurisdiction": "HK" if i % 2 else "CN",
                          "role": "credit-provider", "public_key": bytes(_key(f"bench author {i}").verify_key).hex()}
                         for i in range(authors)],
    }
    return Genesis.from_dict(raw), validator_keys


class EntryFactory:
    """Real commit entries (exact field set and canonical bytes) with a random stand-in signature."""

    def __init__(self, genesis: Genesis, seed: int = 1) -> None:
        self.random = random.Random(seed)
        self.authors = [(p.id, p.public_key, p.jurisdiction) for p in genesis.participants]
        self.author_keys = {p.id: _key(f"bench author {i}") for i, p in enumerate(genesis.participants)}
        self.signed_count = 0  # the first `signed_count` entries get real signatures (for the proof check)
        self.nonces = {p.id: 0 for p in genesis.participants}
        self.count = 0
        self.revoked: list[int] = []

    def commitment(self, n: int) -> bytes:
        return hashlib.sha256(b"bench commitment %d" % n).digest()

    def next(self) -> bytes:
        author, author_key, jurisdiction = self.authors[self.count % len(self.authors)]
        self.nonces[author] += 1
        nonce = self.nonces[author]
        # Keys in canonical order (byte-wise ascending), as codec.pack would write them.
        body = msgpack.packb({
            "author": author, "author_key": author_key, "chain_id": CHAIN_ID,
            "commitment": self.commitment(self.count), "expires_ms": None, "jurisdiction": jurisdiction,
            "kind": "credit-report", "nonce": nonce, "time_ms": GENESIS_TIME_MS + self.count, "type": "commit",
        }, use_bin_type=True)
        self.count += 1
        if self.count <= self.signed_count:
            signature = codec.sign(self.author_keys[author], codec.DOMAIN_ENTRY, CHAIN_ID, body)
        else:
            signature = self.random.randbytes(64)
        return msgpack.packb({"body": body, "sigs": [{"by": author, "sig": signature}]}, use_bin_type=True)


    def revoke(self, n: int) -> bytes:
        """A really signed revoke of commitment n by its submitter."""
        author, author_key, _ = self.authors[n % len(self.authors)]
        self.nonces[author] += 1
        body = codec.pack({
            "author": author, "author_key": author_key, "chain_id": CHAIN_ID, "commitment": self.commitment(n),
            "nonce": self.nonces[author], "reason": "bench", "time_ms": GENESIS_TIME_MS + self.count, "type": "revoke",
        })
        signature = codec.sign(self.author_keys[author], codec.DOMAIN_ENTRY, CHAIN_ID, body)
        self.revoked.append(n)
        return codec.pack({"body": body, "sigs": [{"by": author, "sig": signature}]})


def certified_block(genesis: Genesis, validator_keys, ledger: Ledger, entries: list[bytes], time_ms: int):
    parent = ledger.head()
    height = ledger.height() + 1
    started, thread_started = time.perf_counter(), time.thread_time()
    result = ledger.execute(parent, height, time_ms, entries)
    executed_s = time.perf_counter() - started
    executed_thread_s = time.thread_time() - thread_started
    header = BlockHeader(
        chain_id=CHAIN_ID, height=height, prev_hash=parent.hash() if parent else bytes(32), time_ms=time_ms,
        entries_hash=entries_hash(entries), entry_count=len(entries), tree_size=result.tree_size,
        tree_root=result.tree_root, results_hash=result.results_hash,
        validator_set_hash=genesis.validator_set.hash(),
    )
    payload = commit_vote_payload(0, height, header.hash())
    signatures = tuple(
        CommitSignature(v, codec.sign(validator_keys[v], codec.DOMAIN_COMMIT, CHAIN_ID, payload))
        for v in ("hk-1", "hk-2", "cn-1")
    )
    certificate = CommitCertificate(view=0, height=height, header_hash=header.hash(), signatures=signatures)
    return CommittedBlock(header, tuple(entries), certificate), executed_s, executed_thread_s


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def run(n: int, block: int, authors: int, proofs: int, directory: Path, revokes: int = 1) -> dict:
    genesis, validator_keys = make_genesis(authors)
    factory = EntryFactory(genesis)
    factory.signed_count = min(n, 100)
    ledger = Ledger.open(directory, genesis)
    applied = _apply_blocks(ledger, genesis, validator_keys, factory, n, block, revokes)
    size = ledger.tree_size()
    assert size == n + len(factory.revoked)  # a revoke is a leaf of the log too
    timed = _time_proofs(ledger, genesis, factory, n, proofs)

    root = ledger.tree_root()
    ledger.close()
    started = time.perf_counter()
    ledger = Ledger.open(directory, genesis)
    reopen_s = time.perf_counter() - started
    assert ledger.height() == applied["height"] and ledger.tree_root() == root
    ledger.close()
    # Measured after the reopen, which has turned LevelDB's write-ahead log into a compressed table.
    bytes_on_disk = directory_bytes(directory)
    print(f"{n:,} commitments and {len(factory.revoked):,} revokes in {applied['height']:,} blocks: "
          f"apply {applied['apply_s']:.1f} s (applying thread CPU {applied['apply_thread_s']:.1f} s; "
          f"process CPU {applied['apply_cpu_s']:.1f} s with entry building and LevelDB compaction), "
          f"{proofs:,} proofs {timed['proofs_s']:.2f} s (CPU {timed['proofs_cpu_s']:.2f} s), "
          f"{timed['match_count']:,} match proofs {timed['match_s']:.2f} s, {bytes_on_disk:,} bytes on disk, "
          f"reopen {reopen_s:.3f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs",
          file=sys.stderr, flush=True)
    return {
        "entries_per_s": round(n / applied["apply_s"]),
        "proofs_per_s": round(proofs / timed["proofs_s"]),
        "bytes_per_commitment": round(bytes_on_disk / n, 1),
        "reopen_s": round(reopen_s, 3),
        "match_proofs_per_s": round(timed["match_count"] / timed["match_s"]),
        "entries_per_thread_cpu_s": round(n / applied["apply_thread_s"]),
        "proofs_per_cpu_s": round(proofs / timed["proofs_cpu_s"]),
        "n": n,
        "revoked": len(factory.revoked),
        "block_entries": block,
    }


def _apply_blocks(ledger: Ledger, genesis: Genesis, validator_keys, factory: EntryFactory, n: int, block: int,
                  revokes: int) -> dict:
    """Execute and apply blocks of `block` entries until n commitments are in: the height and the times."""
    apply_s = 0.0
    apply_thread_s = 0.0  # CPU time of this thread alone in execute + apply: what the code costs per core
    cpu_started = time.process_time()  # this process, LevelDB's compaction thread included
    height = 0
    reported = time.monotonic()
    revoke_rng = random.Random(3)
    revoked: set[int] = set()
    while factory.count < n:
        entries = [factory.next() for _ in range(min(block, n - factory.count))]
        # Never the signed commitment 0 (its proof must stay a match), each commitment once.
        candidates = factory.count - len(entries) - 1
        for _ in range(min(revokes, max(0, candidates - len(revoked)))):
            m = 1 if not revoked else revoke_rng.randrange(1, candidates + 1)  # 1 is really signed: verified
            while m in revoked:
                m = revoke_rng.randrange(1, candidates + 1)
            revoked.add(m)
            entries.append(factory.revoke(m))
        height += 1
        committed, executed_s, executed_thread_s = certified_block(
            genesis, validator_keys, ledger, entries, GENESIS_TIME_MS + height)
        started, thread_started = time.perf_counter(), time.thread_time()
        outcomes = ledger.apply_block(committed)
        apply_s += executed_s + time.perf_counter() - started
        apply_thread_s += executed_thread_s + time.thread_time() - thread_started
        assert all(o.ok for o in outcomes), "bench entries must all be accepted"
        if time.monotonic() - reported > 5:
            reported = time.monotonic()
            print(f"applied {factory.count:,} entries in {height:,} blocks, "
                  f"{factory.count / apply_s:,.0f} entries/s", file=sys.stderr, flush=True)
    return {"height": height, "apply_s": apply_s, "apply_thread_s": apply_thread_s,
            "apply_cpu_s": time.process_time() - cpu_started}


def _time_proofs(ledger: Ledger, genesis: Genesis, factory: EntryFactory, n: int, proofs: int) -> dict:
    """Time `proofs` inclusion proofs and a tenth as many match proofs; verify a match and a revoked one."""
    rng = random.Random(2)
    leaves = [rng.randrange(ledger.tree_size()) for _ in range(proofs)]
    started, cpu_started = time.perf_counter(), time.process_time()
    for leaf in leaves:
        ledger.inclusion_proof(leaf)
    proofs_s = time.perf_counter() - started
    proofs_cpu_s = time.process_time() - cpu_started

    match_count = max(1, proofs // 10)
    picks = [factory.commitment(rng.randrange(n)) for _ in range(match_count)]
    started = time.perf_counter()
    for commitment in picks:
        ledger.match_proof(commitment)
    match_s = time.perf_counter() - started
    verdict = verify_match_proof(ledger.match_proof(factory.commitment(0)), genesis, factory.commitment(0))
    assert verdict.status == "match", verdict
    if factory.revoked:
        gone = factory.commitment(factory.revoked[0])
        verdict = verify_match_proof(ledger.match_proof(gone), genesis, gone)
        assert verdict.status == "revoked", verdict
    return {"proofs_s": proofs_s, "proofs_cpu_s": proofs_cpu_s, "match_count": match_count, "match_s": match_s}


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise SystemExit(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}")
    return value


def main() -> int:
    n = _env_int("N", 1_000_000)
    block = _env_int("BLOCK", 1_000)
    authors = _env_int("AUTHORS", 20)
    proofs = _env_int("PROOFS", 20_000)
    revokes = _env_int("REVOKES", 1, minimum=0)
    given = os.environ.get("DIR")
    if given:
        directory = Path(given)
        if directory.exists() and any(directory.iterdir()):
            raise SystemExit(f"DIR={given} exists and is not empty; the benchmark needs a fresh store")
        figures = run(n, block, authors, proofs, directory, revokes)
    else:
        parent = tempfile.mkdtemp(prefix="bayledger-bench-")
        try:
            figures = run(n, block, authors, proofs, Path(parent) / "ledger", revokes)
        finally:
            shutil.rmtree(parent, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
