"""What the RPC server needs from a running node (the daemon implements it).

Read-only ledger queries go straight to `storage` (the `ledger` attribute),
after awaiting the node's `ledger_quiet()` when it has one (the daemon applies
blocks in a worker thread); anything that touches consensus or waits for a
commit goes through here.
"""

from __future__ import annotations

from typing import Any, Protocol


class ApiError(Exception):
    """An expected RPC error: a stable string `code` and a human `message`."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message}


class NodeApi(Protocol):
    ledger: Any  # storage.ledger.Ledger, opened by the daemon

    def status(self) -> dict[str, Any]:
        """chain_id, node_id, jurisdiction, height, view, primary, tree_size, tree_root,
        peers, mempool_size, catch_up_target_height, version. (The RPC adds `epoch`, from the
        ledger; `validators` reads the ledger's epochs too.)"""

    async def submit(self, entry: bytes, wait: bool, timeout_s: float) -> dict[str, Any]:
        """Stateless-check the signed entry, hand it to consensus, and either return
        {"status": "pending", "id": entry_id} at once or, with wait, after commit:
        {"status": "committed", "height", "leaf_index", "id"} or
        {"status": "rejected", "height", "reason", "id"}. Raises ApiError."""
