"""Every place the simulator touches the replica's API or wire format, in one file.

The rest of the simulator speaks in Ready fields, bytes and ids; only this
module imports `consensus.replica` and `consensus.messages`.
"""

from __future__ import annotations


def build_replica(plan, validators, me, signing_key, chain_id, application, *, persisted, last_applied):
    from consensus.replica import Replica  # noqa: PLC0415  (lands with the replica)

    raise NotImplementedError


def ready_persist(ready):
    return list(ready.persist)


def ready_messages(ready):
    return list(ready.messages)


def ready_committed(ready):
    return list(ready.committed)


def ready_serve_catch_up(ready):
    return list(ready.serve_catch_up)


def ready_evidence(ready):
    return list(ready.evidence)


def ready_rejected(ready):
    return list(ready.rejected)


def replica_view(replica) -> int:
    return int(getattr(replica, "view", 0))


def classify_signed(data: bytes):
    """(kind, view, slot, digest) of a signed PRE-PREPARE/PREPARE/COMMIT/VIEW-CHANGE, else None."""
    return None


def encode_catch_up_response(node, blocks, chain_id) -> bytes:
    raise NotImplementedError


def equivocate(data, signing_key, chain_id, rng):
    return None


def conflicting_vote(data, signing_key, chain_id, rng):
    return None


def forge_signature(data, stranger_key, chain_id, rng):
    return None


def shift_view(data, signing_key, chain_id, delta):
    return None
