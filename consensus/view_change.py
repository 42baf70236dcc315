"""View-change state: the latest VIEW-CHANGE of each validator (with its bytes), and the NEW-VIEW of
the view we are in. The rules that read them (join a view f + 1 reached, build a NEW-VIEW from a
minimal quorum of the smallest) are here; entering and leaving views is the replica's.
"""

from __future__ import annotations

from .messages import NewView, ViewChange, minimal_quorum
from .validators import ValidatorSet

__all__ = ["ViewChanges"]


class ViewChanges:
    def __init__(self, validators: ValidatorSet) -> None:
        self.validators = validators
        self.latest: dict[str, ViewChange] = {}   # latest VIEW-CHANGE per validator
        self.latest_bytes: dict[str, bytes] = {}
        self.new_view: NewView | None = None       # the NEW-VIEW of the view we are in (None: none yet)
        self.new_view_bytes: bytes | None = None

    def record(self, sender: str, message: ViewChange, data: bytes) -> bool:
        """Keep `sender`'s VIEW-CHANGE if it is for a newer view than the one we hold of it; True if kept."""
        previous = self.latest.get(sender)
        if previous is not None and previous.view >= message.view:
            return False
        self.latest[sender] = message
        self.latest_bytes[sender] = data
        return True

    def own(self, me: str, message: ViewChange, data: bytes) -> None:
        """Our own VIEW-CHANGE (always for a higher view than our last one: views only go up)."""
        self.latest[me] = message
        self.latest_bytes[me] = data

    def view_to_join(self, view: int) -> int | None:
        """The lowest view above `view` that f + 1 validators (one honest at least) moved to, or None."""
        higher = sorted((vc.view for vc in self.latest.values() if vc.view > view), reverse=True)
        f = self.validators.f
        return higher[f] if len(higher) >= f + 1 else None

    def quorum_joined(self, view: int) -> bool:
        """A quorum sent VIEW-CHANGEs for `view` or later."""
        return self.validators.is_quorum([v for v, vc in self.latest.items() if vc.view >= view])

    def new_view_quorum(self, view: int) -> tuple[ViewChange, ...] | None:
        """A quorum of VIEW-CHANGEs for exactly `view` to build its NEW-VIEW from, or None yet. Any quorum
        makes a safe choice: take a minimal one of the smallest, so the NEW-VIEW stays under its cap (a
        quorum of honest ones always fits: messages.new_view_bytes_bound)."""
        exact = {vc.sender: vc for _, vc in sorted(self.latest.items()) if vc.view == view}
        if not self.validators.is_quorum(exact):
            return None
        by_size = sorted(exact, key=lambda s: (len(self.latest_bytes.get(s, b"")), s))
        kept = set(minimal_quorum(self.validators, by_size))
        return tuple(vc for sender, vc in exact.items() if sender in kept)

    def entered(self, message: NewView | None, data: bytes | None) -> None:
        """The NEW-VIEW of the view we are in now (None, None: we left it for a view change)."""
        self.new_view, self.new_view_bytes = message, data

    def contradicts(self, message: NewView) -> bool:
        """A second NEW-VIEW for our view that chose other blocks: its primary equivocated."""
        return self.new_view_bytes is not None and self.new_view is not None and message.chosen != self.new_view.chosen
