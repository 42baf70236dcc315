"""Bayledger storage layer: everything durable and everything provable.

- genesis.py  the genesis file (validated JSON) and its hash
- entries.py  ledger entries: encoding, client builders, the stateless check, commitments
- merkle.py   RFC 6962 / 9162 hashing, proofs and verifiers (pure)
- proofs.py   match proofs and consistency proofs, offline verification (no plyvel)
- smt.py      the revoked set: a sparse Merkle tree committed through results_hash (pure)
- ledger.py   the LevelDB store: atomic apply, indexes, speculative execution, proofs
- bench.py    `make bench-storage`

docs/PROTOCOL.md specifies the bytes.
"""
