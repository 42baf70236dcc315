"""Every place the simulator touches the replica's API or wire format, in one file.

The rest of the simulator speaks in Ready fields, bytes and ids; only this
module imports `consensus.replica` and `consensus.messages`.
"""

from __future__ import annotations

import dataclasses
import random

import nacl.signing

from consensus import codec, messages
from consensus.block import BlockHeader
from consensus.replica import Replica, ReplicaConfig
from consensus.validators import ValidatorSet

from . import app
from .checker import SafetyViolation

# Kinds of signed message whose (view, slot) an honest replica must never sign twice differently.
VOTE_KINDS = ("pre-prepare", "prepare", "commit", "checkpoint")


# Timers scaled to the simulator's 10 ms tick: short enough that several view changes and
# catch-ups fit in a run, long enough that a calm network never times out.
view_timeout_ms = 300
view_timeout_doublings_max = 4
retransmit_ms = 200
catch_up_timeout_ms = 200
batch_wait_ms = 20
vouch_wait_ms_choices = (0, 30, 100)


def replica_config(plan) -> ReplicaConfig:
    # From the seed, not drawn from the plan's random stream (so every seed keeps its plan): all
    # three ways a backup may treat signatures (0 = always check itself) get exercised.
    return ReplicaConfig(
        vouch_wait_ms=vouch_wait_ms_choices[plan.seed % len(vouch_wait_ms_choices)],
        batch_requests_max=plan.batch_requests_max,
        batch_wait_ms=batch_wait_ms,
        view_timeout_ms=view_timeout_ms,
        view_timeout_doublings_max=view_timeout_doublings_max,
        checkpoint_interval=plan.checkpoint_interval,
        watermark_window=max(2 * plan.checkpoint_interval, 8),
        retransmit_ms=retransmit_ms,
        catch_up_timeout_ms=catch_up_timeout_ms,
        forward_others_after_ms=plan.forward_others_after_ms,
    )


def margin_heights(plan) -> int:
    """The simulated chain's epoch margin: its replicas' watermark window (the smallest margin allowed)."""
    return replica_config(plan).watermark_window


def build_replica(plan, validators, me, signing_key, chain_id, application, *, persisted, last_applied,
                  spare_signing_keys=(), joining=False):
    return GuardedReplica(me, Replica(
        replica_config(plan), validators, me, signing_key, chain_id, application,
        persisted=persisted, last_applied=last_applied, margin_heights=margin_heights(plan),
        spare_signing_keys=tuple(spare_signing_keys), joining=joining,
    ))


class ReplicaRaised(SafetyViolation):
    """A replica's entry point raised: whatever a peer, a client or the clock gives it, a replica
    must answer with a Ready (a daemon would lose the node). The run fails with this seed."""


def _where(exc: BaseException) -> str:
    """The call chain that raised, compactly: `file:line function` per frame below the guard,
    repeated frames (a recursion) collapsed into one with a count."""
    chain: list[list] = []
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    while tb is not None:
        code = tb.tb_frame.f_code
        name = f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} {code.co_name}"
        if chain and chain[-1][0] == name:
            chain[-1][1] += 1
        else:
            chain.append([name, 1])
        tb = tb.tb_next
    if len(chain) > 8:
        chain = chain[:2] + [["...", 1]] + chain[-5:]
    return " > ".join(name if count == 1 else f"{name} (x{count})" for name, count in chain) or "?"


class GuardedReplica:
    """The replica, with every exception out of an entry point turned into a failure of the run
    that names the replica, the call, the input and where it was raised (instead of an exception
    that would stop the whole sweep). Everything else is the replica's own attribute."""

    __slots__ = ("_me", "_replica")

    def __init__(self, me: str, replica: Replica):
        object.__setattr__(self, "_me", me)
        object.__setattr__(self, "_replica", replica)

    def __getattr__(self, name):
        return getattr(self._replica, name)

    def __setattr__(self, name, value):
        setattr(self._replica, name, value)

    def _raised(self, exc: Exception, call: str) -> ReplicaRaised:
        detail = str(exc)
        if len(detail) > 160:
            detail = detail[:160] + "..."
        return ReplicaRaised(f"replica {self._me} raised {type(exc).__name__} in {call} at {_where(exc)}: {detail}")

    def on_message(self, sender_id: str, data: bytes):
        try:
            return self._replica.on_message(sender_id, data)
        except Exception as exc:
            head = data[:24].hex() if isinstance(data, (bytes, bytearray)) else repr(data)[:48]
            raise self._raised(exc, f"on_message from {sender_id} ({len(data)} bytes {head}...)") from exc

    def on_request(self, request: bytes):
        try:
            return self._replica.on_request(request)
        except Exception as exc:
            raise self._raised(exc, f"on_request ({len(request)} bytes)") from exc

    def on_tick(self, now_ms: int):
        try:
            return self._replica.on_tick(now_ms)
        except Exception as exc:
            raise self._raised(exc, f"on_tick({now_ms})") from exc

    def on_persisted(self):
        try:
            return self._replica.on_persisted()
        except Exception as exc:
            raise self._raised(exc, "on_persisted") from exc


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


def classify_signed(data: bytes, sender: str) -> tuple[str, int, int, bytes] | None:
    """(kind, view, slot, digest) of a vote `sender` signed itself, else None.

    Reads the wire map directly (no signature check): this is our own honest
    replica's output, and a malformed one is reported by the checker as such.
    """
    try:
        wire = codec.unpack(data)
    except codec.EncodingError:
        return None
    if not isinstance(wire, dict) or wire.get("type") not in VOTE_KINDS or wire.get("sender") != sender:
        return None
    kind = wire["type"]
    try:
        if kind == "pre-prepare":
            header = BlockHeader.from_wire(wire["header"])
            return kind, wire["view"], header.height, header.hash()
        if kind == "checkpoint":
            return kind, 0, wire["height"], wire["header_hash"]
        return kind, wire["view"], wire["height"], wire["header_hash"]
    except Exception:  # our own replica's message we cannot read: the checker flags it
        return "unreadable", 0, 0, codec.sha256(data)


def encode_catch_up_response(blocks, chain_id) -> bytes:
    return messages.encode_catch_up_response(list(blocks)[: messages.CATCH_UP_BLOCKS_MAX])


# -- Byzantine rewriting -----------------------------------------------------------


class Context:
    """What a Byzantine node needs to rewrite messages: the set, its keys, headers it has seen."""

    headers_max = 512

    proposal_slots_max = 256
    proposals_per_slot_max = 8

    def __init__(
        self, validators: ValidatorSet, chain_id: str, signing_key: nacl.signing.SigningKey, me: str,
        collusion: dict | None = None,
    ):
        self.validators = validators
        self.chain_id = chain_id
        self.signing_key = signing_key
        self.me = me
        self.headers: dict[bytes, BlockHeader] = {}
        # (view, height) -> header hashes proposed for that slot, shared by all Byzantine nodes of a
        # run: colluders vote for every block an equivocating primary (or anyone) proposed there.
        shared = collusion if collusion is not None else {}
        self.proposals: dict[tuple[int, int], list[bytes]] = shared.setdefault("proposals", {})
        # (view, height) -> (hash for group 0, hash for group 1) of a split-brain primary.
        self.split: dict[tuple[int, int], tuple[bytes, bytes]] = shared.setdefault("split", {})

    def note_proposal(self, view: int, header: BlockHeader) -> None:
        key = (view, header.height)
        hashes = self.proposals.get(key)
        if hashes is None:
            if len(self.proposals) >= self.proposal_slots_max:
                self.proposals.pop(next(iter(self.proposals)))
            hashes = self.proposals[key] = []
        header_hash = header.hash()
        if header_hash not in hashes and len(hashes) < self.proposals_per_slot_max:
            hashes.append(header_hash)

    def decode(self, data: bytes):
        try:
            return messages.decode_message(data, self.validators, self.chain_id, verify=False)
        except Exception:  # MessageError, or a decoder bug: the attacker's tooling just moves on
            return None

    def remember(self, data: bytes) -> None:
        # Only proposals and catch-up blocks carry headers; skip the full decode for the rest.
        if b"pre-prepare" not in data and b"catch-up-response" not in data:
            return
        message = self.decode(data)
        headers = []
        if isinstance(message, messages.PrePrepare):
            headers.append(message.header)
            self.note_proposal(message.view, message.header)
        elif isinstance(message, messages.CatchUpResponse):
            headers.extend(b.header for b in message.blocks)
        for header in headers:
            if len(self.headers) >= self.headers_max:
                self.headers.pop(next(iter(self.headers)))
            self.headers[header.hash()] = header

    def resign(self, message) -> bytes:
        return messages.encode(messages.sign(message, self.signing_key, self.chain_id))


def _alternative_block(ctx: Context, pre: messages.PrePrepare, rng: random.Random):
    """A different block for the same (view, height): valid if the parent is known, else just different."""
    header, entries = pre.header, list(pre.entries)
    parent = None if header.height == 1 else ctx.headers.get(header.prev_hash)
    choice = rng.randrange(3)
    if choice == 1 and (parent is not None or header.height == 1):
        # Other entries: drop some, and sometimes slip in a request that fails check_request.
        entries = entries[: rng.randrange(len(entries) + 1)]
        if rng.random() < 0.5:
            entries.append(app.make_request("byzantine", rng.randrange(1 << 30), rng.randbytes(4), valid=False))
        else:
            entries.append(app.make_request("byzantine", rng.randrange(1 << 30), rng.randbytes(4)))
        result = app.SimApplication().execute(parent, header.height, header.time_ms, entries)
        fields = {
            "entries_hash": messages.entries_hash(entries), "entry_count": len(entries),
            "tree_size": result.tree_size, "tree_root": result.tree_root, "results_hash": result.results_hash,
        }
    elif choice == 2:
        # Same entries, a header whose application fields are simply wrong.
        fields = {"tree_root": codec.sha256(b"wrong root", header.tree_root)}
    else:
        # Same entries, another timestamp: a perfectly valid conflicting block, or one whose
        # time is far in the future or before its parent's (both must be refused).
        roll = rng.random()
        if roll < 0.15:
            time_ms = header.time_ms + 10**8
        elif roll < 0.3 and parent is not None and parent.time_ms > 0:
            time_ms = parent.time_ms - 1
        else:
            time_ms = header.time_ms + rng.randint(1, 1000)
        fields = {"time_ms": time_ms}
    new_header = BlockHeader(**{**header.to_wire(), **fields})
    return dataclasses.replace(pre, header=new_header, entries=tuple(entries))


def equivocate(ctx: Context, data: bytes, rng: random.Random) -> bytes | None:
    message = ctx.decode(data)
    if not isinstance(message, messages.PrePrepare):
        return None
    alternative = _alternative_block(ctx, message, rng)
    ctx.note_proposal(alternative.view, alternative.header)
    return ctx.resign(alternative)


def conflicting_vote(ctx: Context, data: bytes, rng: random.Random) -> bytes | None:
    message = ctx.decode(data)
    if isinstance(message, (messages.Prepare, messages.Commit)):
        # Prefer a block really proposed for this slot (a vote that could complete a quorum for it).
        known = [h for h in ctx.proposals.get((message.view, message.height), ()) if h != message.header_hash]
        header_hash = rng.choice(known) if known and rng.random() < 0.8 else rng.randbytes(32)
        return ctx.resign(dataclasses.replace(message, header_hash=header_hash))
    if isinstance(message, messages.Checkpoint):
        return ctx.resign(dataclasses.replace(message, header_hash=rng.randbytes(32)))
    if isinstance(message, messages.PrePrepare):
        alternative = _alternative_block(ctx, message, rng)
        ctx.note_proposal(alternative.view, alternative.header)
        return ctx.resign(alternative)
    if isinstance(message, messages.ViewChange):
        # A lying VIEW-CHANGE: validly signed, but hides what it prepared or claims an old checkpoint.
        if message.prepared and rng.random() < 0.5:
            keep = rng.randrange(len(message.prepared))
            return ctx.resign(dataclasses.replace(message, prepared=message.prepared[:keep]))
        return ctx.resign(dataclasses.replace(message, checkpoint=messages.GENESIS_CHECKPOINT, prepared=()))
    if isinstance(message, messages.NewView):
        # A NEW-VIEW whose re-proposals do not follow from its VIEW-CHANGEs, or without a quorum of them.
        if message.chosen and rng.random() < 0.5:
            return ctx.resign(dataclasses.replace(message, chosen=message.chosen[:-1]))
        return ctx.resign(dataclasses.replace(message, view_changes=message.view_changes[:1]))
    return None


def junk_requests(rng: random.Random) -> bytes:
    """A REQUESTS message of well-formed requests with wrong checksums (their "signatures"): a
    backup that pools peers' requests unchecked must never forward, propose or commit them."""
    junk = tuple(app.make_request("junk", rng.randrange(1 << 30), rng.randbytes(4), valid=False)
                 for _ in range(rng.randint(1, 4)))
    return messages.encode(messages.Requests(junk))


def forge_signature(ctx: Context, data: bytes, stranger_key: nacl.signing.SigningKey, rng: random.Random):
    message = ctx.decode(data)
    if isinstance(message, messages.CatchUpResponse) and message.blocks:
        return messages.encode(messages.CatchUpResponse(_forged_blocks(message.blocks, rng)))
    if isinstance(message, messages.BlockResponse):
        return messages.encode(_forged_body(message, rng))
    if message is None or not isinstance(message, messages.SIGNED_TYPES):
        return None
    choice = rng.randrange(3)
    if choice == 0:
        flipped = bytearray(message.signature)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return messages.encode(dataclasses.replace(message, signature=bytes(flipped)))
    if choice == 1:
        return messages.encode(messages.sign(message, stranger_key, ctx.chain_id))
    # Impersonation: claims another validator as the sender, keeps our signature.
    others = [v.id for v in ctx.validators.validators if v.id != ctx.me]
    return messages.encode(dataclasses.replace(message, sender=rng.choice(others)))


def _forged_body(response, rng: random.Random):
    """A BLOCK-RESPONSE (a body fetched for a NEW-VIEW's chosen block) that must not be taken: a body
    that does not match its header (refused: bad-body), or another block, consistent in itself, that
    nobody asked for (ignored)."""
    extra = app.make_request("forger", rng.randrange(1 << 30), rng.randbytes(4))
    entries = response.entries + (extra,)
    if rng.random() < 0.5:
        return dataclasses.replace(response, entries=entries)
    header = BlockHeader(**{
        **response.header.to_wire(), "entries_hash": messages.entries_hash(entries), "entry_count": len(entries),
    })
    return messages.BlockResponse(header, entries)


def _forged_blocks(blocks, rng: random.Random):
    """Catch-up blocks whose certificate no longer covers them (or is no quorum)."""
    index = rng.randrange(len(blocks))
    block = blocks[index]
    if rng.random() < 0.5:
        # Another body and header under the old certificate.
        entries = block.entries + (app.make_request("forger", rng.randrange(1 << 30), rng.randbytes(4)),)
        header = BlockHeader(**{
            **block.header.to_wire(), "entries_hash": messages.entries_hash(entries), "entry_count": len(entries),
        })
        forged = messages.CommittedBlock(header, entries, block.certificate)
    else:
        # The right block with a certificate cut down to one signature.
        certificate = dataclasses.replace(block.certificate, signatures=block.certificate.signatures[:1])
        forged = messages.CommittedBlock(block.header, block.entries, certificate)
    return blocks[:index] + (forged,) + blocks[index + 1:]


def shift_view(ctx: Context, data: bytes, delta: int) -> bytes | None:
    message = ctx.decode(data)
    if not isinstance(message, (messages.PrePrepare, messages.Prepare, messages.Commit, messages.ViewChange)):
        return None
    view = max(0, min(messages.INTEGER_MAX, message.view + delta))
    if isinstance(message, messages.ViewChange) and view < 1:
        return None
    if view == message.view:
        return None
    return ctx.resign(dataclasses.replace(message, view=view))


def absurd_signed(ctx: Context, data: bytes, rng: random.Random) -> bytes | None:
    """The message re-signed (so it passes every field and signature check) with its numbers at
    the edges: view, height or time at the 2^63 - 1 maximum (or just under it, or 0), a catch-up
    range at the top. None if `data` has no such numbers."""
    message = ctx.decode(data)
    edge = rng.choice((messages.INTEGER_MAX, messages.INTEGER_MAX - 1, messages.INTEGER_MAX // 2, 0))
    if isinstance(message, (messages.Prepare, messages.Commit)):
        field = rng.choice(("view", "height"))
        value = max(edge, 1) if field == "height" else edge
        return ctx.resign(dataclasses.replace(message, **{field: value}))
    if isinstance(message, messages.Checkpoint):
        return ctx.resign(dataclasses.replace(message, height=max(edge, 1)))
    if isinstance(message, messages.ViewChange):
        return ctx.resign(dataclasses.replace(message, view=max(edge, 1)))
    if isinstance(message, messages.PrePrepare):
        if rng.random() < 0.5:
            return ctx.resign(dataclasses.replace(message, view=edge))
        field = rng.choice(("height", "time_ms"))
        header = BlockHeader(**{**message.header.to_wire(), field: max(edge, 1)})
        return ctx.resign(dataclasses.replace(message, header=header))
    if isinstance(message, messages.CatchUpRequest):
        top = max(edge, 1)
        return messages.encode(messages.CatchUpRequest(max(1, top - rng.randrange(messages.CATCH_UP_BLOCKS_MAX)), top))
    return None


def check_evidence(evidence, validators: ValidatorSet, chain_id: str) -> str | None:
    """None if `evidence` really proves equivocation by `evidence.validator`, else what is wrong."""
    decoded = []
    for data in (evidence.first, evidence.second):
        try:
            decoded.append(messages.decode_message(data, validators, chain_id))
        except messages.MessageError as exc:
            return f"evidence holds a message that does not verify ({exc.reason})"
    first, second = decoded
    if type(first) is not type(second):
        return "evidence holds two different kinds of message"
    if getattr(first, "sender", None) != evidence.validator or getattr(second, "sender", None) != evidence.validator:
        return "evidence messages are not both signed by the accused"
    if getattr(first, "view", None) != getattr(second, "view", None):
        return "evidence messages are for different views"
    if getattr(first, "height", None) != getattr(second, "height", None):
        return "evidence messages are for different heights"
    if evidence.first == evidence.second:
        return "evidence holds the same message twice"
    return None


def split_brain(ctx: Context, data: bytes, group: int) -> bytes | None:
    """The coordinated attack: a primary proposes block A to group 0 and block B (A one ms later,
    equally valid) to group 1; every colluder votes A to group 0 and B to group 1. With more
    than f colluders this forks the chain; with at most f it must not."""
    message = ctx.decode(data)
    if isinstance(message, messages.PrePrepare) and message.sender == ctx.me:
        key = (message.view, message.height)
        variant = dataclasses.replace(
            message, header=BlockHeader(**{**message.header.to_wire(), "time_ms": message.header.time_ms + 1})
        )
        if len(ctx.split) >= ctx.proposal_slots_max and key not in ctx.split:
            ctx.split.pop(next(iter(ctx.split)))
        ctx.split[key] = (message.header.hash(), variant.header.hash())
        return data if group == 0 else ctx.resign(variant)
    if isinstance(message, (messages.Prepare, messages.Commit)):
        pair = ctx.split.get((message.view, message.height))
        if pair is None or pair[group] == message.header_hash:
            return None
        return ctx.resign(dataclasses.replace(message, header_hash=pair[group]))
    return None
