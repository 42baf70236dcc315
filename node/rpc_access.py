"""Who may call which RPC method: the connection's authentication and the roles (docs/PROTOCOL.md §8).

A connection starts anonymous. It may call only `status` (reduced to chain id,
node id, height and version), `challenge` and `authenticate`. To act as an
identity it authenticates once:

    challenge()  -> {"challenge": bin 32, "node": node id, "chain_id": str}
    authenticate(identity: str, public_key: bin 32, signature: bin 64)
                 -> {"identity": str, "role": str}

The signature is Ed25519 by `public_key` over

    "bayledger/rpc-auth/v1" 0x00 chain_id 0x00 canonical-msgpack({
        "challenge": <the challenge>, "identity": <identity>, "node": <node id>,
        "public_key": <public_key>, "type": "rpc-auth"})

The challenge is fresh, random, for this connection only and good for one
attempt; it names the node and the chain, so an authentication cannot be
relayed to another node, another chain or another connection. The identity is
looked up in this order: a validator of the current epoch (role `validator`; the genesis set until
a reconfiguration takes effect, issue 17), a
governance key of genesis (role `regulator`), an active participant of the
registry (role `auditor` if its registry role is "auditor", else
`participant`); the public key must be the one on record. A participant's
registry record is looked at again on every call, so a suspension takes effect
at once on open connections.

Pure (no I/O): the server (node.rpc) keeps one `Session` per connection, and
clients (node.client and the testnet's) sign with `sign_authentication`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nacl.signing

from consensus import codec

AUTH_DOMAIN = "bayledger/rpc-auth/v1"
AUTH_TYPE = "rpc-auth"
challenge_bytes = 32
identity_bytes_max = 64          # ids are genesis names (storage.genesis.name_bytes_max)

ROLE_VALIDATOR = "validator"
ROLE_REGULATOR = "regulator"
ROLE_AUDITOR = "auditor"         # also the registry role that makes a participant an auditor
ROLE_PARTICIPANT = "participant"
ROLES = (ROLE_VALIDATOR, ROLE_REGULATOR, ROLE_AUDITOR, ROLE_PARTICIPANT)

# Anyone, authenticated or not.
PUBLIC_METHODS = frozenset({"status", "challenge", "authenticate"})
# Who may call each other method. Validators may call everything.
READER_ROLES = (ROLE_AUDITOR, ROLE_REGULATOR, ROLE_VALIDATOR)
METHOD_ROLES: dict[str, tuple[str, ...]] = {
    "submit": (ROLE_PARTICIPANT, ROLE_AUDITOR, ROLE_REGULATOR, ROLE_VALIDATOR),
    "match": (ROLE_PARTICIPANT, ROLE_AUDITOR, ROLE_VALIDATOR),
    "header": READER_ROLES,
    "block": READER_ROLES,
    "participant": (ROLE_PARTICIPANT,) + READER_ROLES,     # a participant: its own record only (node.rpc)
    "validators": READER_ROLES,
    "epochs": READER_ROLES,
    "epoch_steps": READER_ROLES,
    "consistency": READER_ROLES,
    "queries": READER_ROLES,
}
# Fields of the reduced status an anonymous connection gets.
PUBLIC_STATUS_FIELDS = ("chain_id", "node_id", "height", "version")


def authentication_payload(chain_id: str, node_id: str, challenge: bytes, identity: str, public_key: bytes) -> bytes:
    """The canonical msgpack bytes that an authentication signs (under AUTH_DOMAIN and the chain id)."""
    return codec.pack({"type": AUTH_TYPE, "challenge": challenge, "identity": identity, "node": node_id,
                       "public_key": public_key})


def sign_authentication(signing_key: nacl.signing.SigningKey, identity: str, answer: Any) -> list:
    """The params of `authenticate` for a `challenge` answer: [identity, public_key, signature].

    Raises ValueError if the answer is not a challenge answer (a client talking to something else)."""
    if not (isinstance(answer, dict) and isinstance(answer.get("challenge"), bytes)
            and len(answer["challenge"]) == challenge_bytes
            and isinstance(answer.get("node"), str) and isinstance(answer.get("chain_id"), str)):
        raise ValueError(f"not a challenge answer: {answer!r}"[:200])
    public_key = bytes(signing_key.verify_key)
    payload = authentication_payload(answer["chain_id"], answer["node"], answer["challenge"], identity, public_key)
    return [identity, public_key, codec.sign(signing_key, AUTH_DOMAIN, answer["chain_id"], payload)]


@dataclass
class Session:
    """One connection's authentication state (node.rpc keeps one per connection)."""

    identity: str | None = None
    public_key: bytes | None = None
    role: str | None = None
    challenge: bytes | None = None     # the last one handed out, not yet used

    @property
    def authenticated(self) -> bool:
        return self.role is not None

    def describe(self) -> str:
        return f"{self.identity!r} ({self.role})" if self.authenticated else "this connection is not authenticated"


def role_of(identity: str, public_key: bytes, genesis: Any, participant_record: Any,
            validators: Any = None, governance: Any = None) -> str | None:
    """The role `identity` holds with `public_key`, or None (unknown identity, other key, or inactive).

    `participant_record` is the registry's record of `identity` (or None); `validators` and `governance`
    the validator set and regulator keys of the node's current epoch (default: genesis's); see the
    module doc for the order."""
    validator = (genesis.validator_set if validators is None else validators).get(identity)
    if validator is not None:
        return ROLE_VALIDATOR if validator.public_key == public_key else None
    governance_key = (genesis.governance if governance is None else governance).by_id.get(identity)
    if governance_key is not None:
        return ROLE_REGULATOR if governance_key.public_key == public_key else None
    return participant_role(participant_record, public_key)


def participant_role(record: Any, public_key: bytes) -> str | None:
    """ROLE_AUDITOR or ROLE_PARTICIPANT for an active registry record with this key, else None."""
    if record is None or record.public_key != public_key or record.status != "active":
        return None
    return ROLE_AUDITOR if record.role == ROLE_AUDITOR else ROLE_PARTICIPANT


def needed_roles_text(method: str) -> str:
    return " or ".join(METHOD_ROLES[method])
