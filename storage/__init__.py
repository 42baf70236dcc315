"""Bayledger storage layer: everything durable and everything provable.

- genesis.py      the genesis file (validated JSON) and its hash
- entries.py      ledger entries: encoding, client builders, the stateless check, commitments
- merkle.py       RFC 6962 / 9162 hashing, proofs and verifiers (pure)
- proofs.py       match proofs and consistency proofs, offline verification (no plyvel)
- smt.py          the revoked set: a sparse Merkle tree committed through results_hash (pure)
- keys.py         the LevelDB key layout: every prefix, and the helpers that build keys
- records.py      the stored registry, commitment index and nonce-window records
- execution.py    the rules that execute a block's entries, one per entry type (no plyvel)
- ledger.py       the LevelDB store: open, atomic apply, reads, proofs, caches, speculative executions
- application.py  the consensus core's Application, backed by a Ledger
- bench.py        `make bench-storage`

docs/PROTOCOL.md specifies the bytes.
"""
