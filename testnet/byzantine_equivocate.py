"""The `equivocate` behaviour: a real replica whose signed proposals and votes are split in two.

The process runs the real `consensus.replica.Replica` with the storage
`LedgerApplication`, on a copy of the node's own LevelDB (taken while the
honest daemon is stopped, so the copy is consistent and the honest data is
never touched). It therefore follows views, heights and blocks like the
honest node it replaces. Its host differs from the daemon's in two ways:
nothing is persisted (a Byzantine node need not keep its promises), and every
outbound message goes through `Equivocator.rewrite`:

- its own PRE-PREPARE goes unchanged to the peers of group 0 and, to the
  peers of group 1, as a second block for the same (view, height): the same
  entries one millisecond later, re-executed so that it is just as valid;
- its own PREPARE and COMMIT for a slot it split go to each group for that
  group's block;
- its PREPARE and COMMIT for another primary's block go unchanged to group 0
  and, to group 1, for a block that does not exist; the first peer of group 1
  gets both, so it holds proof of the equivocation.

Groups: the other validators in genesis order, alternating 0, 1, 0, ...
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import structlog
import trio

from consensus import codec, host, messages
from consensus.block import BlockHeader

log = structlog.get_logger()

headers_max = 1024
split_slots_max = 1024
inbound_messages_max = 4096
LEDGER_DIR_NAME = "ledger"
BYZANTINE_DATA_DIR_NAME = "byzantine-data"


def copy_ledger(data_dir: Path, node_dir: Path) -> Path:
    """A fresh copy of the node's ledger for the Byzantine replica; its path."""
    target = node_dir / BYZANTINE_DATA_DIR_NAME
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    source = data_dir / LEDGER_DIR_NAME
    if source.exists():
        shutil.copytree(source, target / LEDGER_DIR_NAME)
    return target / LEDGER_DIR_NAME


def replica_config(consensus_config):
    """The daemon's ReplicaConfig from the node's [consensus] and [limits] sections (fields it lacks keep
    the replica's defaults)."""
    from consensus.replica import ReplicaConfig

    wanted = ("batch_requests_max", "batch_wait_ms", "partial_batch_in_flight_max", "view_timeout_ms",
              "checkpoint_interval", "watermark_window", "vouch_wait_ms")
    fields = {f.name for f in dataclasses.fields(ReplicaConfig)}
    values = {name: getattr(consensus_config, name) for name in wanted
              if name in fields and hasattr(consensus_config, name)}
    return ReplicaConfig(**values)


class Equivocator:
    def __init__(self, ctx) -> None:
        from consensus.replica import Replica
        from storage.application import LedgerApplication
        from storage.ledger import Ledger

        self.ctx = ctx
        config = ctx.config
        self.ledger_path = copy_ledger(config.data_dir, ctx.node_dir)
        self.ledger = Ledger.open(self.ledger_path, ctx.genesis)
        self.app = LedgerApplication(self.ledger)
        height = self.ledger.height()
        header = self.ledger.header(height) if height else None
        self.replica = Replica(
            replica_config(config.consensus), ctx.validators, config.node_id, ctx.key.signing_key,
            ctx.genesis.chain_id, self.app, persisted=self.ledger.load_consensus_state(),
            last_applied=(height, header))
        self.others = [v.id for v in ctx.validators.validators if v.id != config.node_id]
        self.group = {peer: index % 2 for index, peer in enumerate(self.others)}
        self.headers: OrderedDict[bytes, BlockHeader] = OrderedDict()
        self.split: OrderedDict[tuple[int, int], tuple[bytes, bytes]] = OrderedDict()
        self.send_inbound, self.receive_inbound = trio.open_memory_channel(inbound_messages_max)
        self.tick_s = getattr(config.consensus, "tick_interval_ms", 10) / 1000
        log.info("equivocating replica ready", height=height, view=self.replica.view,
                 ledger=str(self.ledger_path))

    def close(self) -> None:
        self.ledger.close()

    # --- inbound ---------------------------------------------------------------------------------

    def on_frame(self, peer_id: str, kind: str, payload: bytes) -> None:
        if kind != "c":
            return
        self._remember(payload)
        try:
            self.send_inbound.send_nowait((peer_id, payload))
        except trio.WouldBlock:
            self.ctx.stats["inbound_dropped"] += 1

    def _remember(self, data: bytes) -> None:
        if b"pre-prepare" not in data and b"catch-up-response" not in data:
            return
        message = self._decode(data)
        if isinstance(message, messages.PrePrepare):
            self._note_header(message.header)
        elif isinstance(message, messages.CatchUpResponse):
            for block in message.blocks:
                self._note_header(block.header)

    def _note_header(self, header: BlockHeader) -> None:
        self.headers[header.hash()] = header
        while len(self.headers) > headers_max:
            self.headers.popitem(last=False)

    def _decode(self, data: bytes):
        try:
            return messages.decode_message(data, self.ctx.validators, self.ctx.genesis.chain_id, verify=False)
        except messages.MessageError:
            return None

    # --- the driver ------------------------------------------------------------------------------

    async def run(self) -> None:
        replica = self.replica
        await self.carry_out(replica.on_tick(int(time.time() * 1000)))
        next_tick = trio.current_time() + self.tick_s
        while True:
            events = []
            with trio.move_on_at(next_tick):
                events.append(await self.receive_inbound.receive())
            while events and len(events) < 256:
                try:
                    events.append(self.receive_inbound.receive_nowait())
                except trio.WouldBlock:
                    break
            for peer_id, payload in events:
                await self.carry_out(replica.on_message(peer_id, payload))
            if trio.current_time() >= next_tick:
                await self.carry_out(replica.on_tick(int(time.time() * 1000)))
                next_tick = trio.current_time() + self.tick_s
                self.ctx.stats["view"] = replica.view
                self.ctx.stats["height"] = self.ledger.height()
            await trio.sleep(0)

    async def carry_out(self, ready) -> None:
        # Through consensus.host, as an honest daemon; but nothing is persisted: the promises are
        # released at once, and a restart would forget them.
        for step in host.carry_out(self.replica, [ready], self.ledger.height()):
            if isinstance(step, (host.WriteBatch, host.Apply)):
                if step.block is not None:
                    self.ledger.apply_block(step.block)
                    self._note_header(step.block.header)
            elif isinstance(step, host.Send):
                for outbound in step.messages:
                    await self.send(outbound.to, outbound.data)
            elif isinstance(step, host.ServeCatchUp):
                for peer_id, first, last in step.ranges:
                    await self._serve_catch_up(peer_id, first, last)
            elif step.evidence:
                self.ctx.stats["evidence_seen"] += len(step.evidence)

    async def _serve_catch_up(self, peer_id: str, first: int, last: int) -> None:
        blocks = []
        for height in range(first, min(last, first + messages.CATCH_UP_BLOCKS_MAX - 1, self.ledger.height()) + 1):
            block = self.ledger.committed_block(height)
            if block is None:
                break
            blocks.append(block)
        if blocks:
            await self.ctx.links.send_message(peer_id, messages.encode_catch_up_response(blocks))

    async def send(self, to: str | None, data: bytes) -> None:
        destinations = [to] if to is not None else self.others
        for destination in destinations:
            for payload in self.rewrite(destination, data):
                await self.ctx.links.send_message(destination, payload)

    # --- the lies --------------------------------------------------------------------------------

    def rewrite(self, destination: str, data: bytes) -> list[bytes]:
        if b"pre-prepare" not in data and b"prepare" not in data and b"commit" not in data:
            return [data]
        message = self._decode(data)
        me = self.ctx.config.node_id
        group = self.group.get(destination, 0)
        if isinstance(message, messages.PrePrepare) and message.sender == me:
            self._note_header(message.header)
            key = (message.view, message.height)
            variant = self._variant(message)
            if group == 0:
                return [data]
            self.ctx.stats["pre_prepares_split"] += 1
            return [variant]
        if isinstance(message, (messages.Prepare, messages.Commit)) and message.sender == me:
            key = (message.view, message.height)
            pair = self.split.get(key)
            if pair is not None:
                if group == 0:
                    return [data]
                self.ctx.stats["votes_for_second_block"] += 1
                return [self._resign(dataclasses.replace(message, header_hash=pair[1]))]
            if group == 0:
                return [data]
            self.ctx.stats["conflicting_votes"] += 1
            fake = self._resign(dataclasses.replace(message, header_hash=codec.sha256(b"byzantine", message.header_hash)))
            if destination == self._first_of_group_1():
                return [fake, data]    # both to one peer: it can prove the equivocation
            return [fake]
        return [data]

    def _first_of_group_1(self) -> str | None:
        return self.others[1] if len(self.others) > 1 else None

    def _resign(self, message) -> bytes:
        return messages.encode(messages.sign(message, self.ctx.key.signing_key, self.ctx.genesis.chain_id))

    def _variant(self, pre: messages.PrePrepare) -> bytes:
        """The second block for the slot (cached), and the pair of hashes remembered for the votes."""
        key = (pre.view, pre.height)
        cached = getattr(self, "_variants", None)
        if cached is None:
            cached = self._variants = OrderedDict()
        if key in cached:
            return cached[key]
        header = pre.header
        fields = {"time_ms": header.time_ms + 1}
        parent = self._parent(header)
        if parent is not None or header.height == 1:
            result = self.app.execute(parent, header.height, header.time_ms + 1, pre.entries)
            if result is not None:
                fields.update(tree_size=result.tree_size, tree_root=result.tree_root,
                              results_hash=result.results_hash)
            else:
                self.ctx.stats["variant_not_executed"] += 1
        else:
            self.ctx.stats["variant_parent_unknown"] += 1
        new_header = BlockHeader(**{**header.to_wire(), **fields})
        variant = self._resign(dataclasses.replace(pre, header=new_header))
        self._note_header(new_header)
        self.split[key] = (header.hash(), new_header.hash())
        cached[key] = variant
        while len(self.split) > split_slots_max:
            self.split.popitem(last=False)
        while len(cached) > split_slots_max:
            cached.popitem(last=False)
        log.info("equivocating proposal", view=pre.view, height=pre.height,
                 first=header.hash().hex()[:16], second=new_header.hash().hex()[:16])
        return variant

    def _parent(self, header: BlockHeader) -> BlockHeader | None:
        if header.height <= 1:
            return None
        found = self.headers.get(header.prev_hash)
        if found is not None:
            return found
        stored = self.ledger.header(header.height - 1)
        if stored is not None and stored.hash() == header.prev_hash:
            return stored
        return None
