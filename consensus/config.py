"""The replica's settings: `ReplicaConfig`, checked on construction (`ReplicaConfigError` names the setting)."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import BLOCK_REQUESTS_MAX, PREPARED_CERTIFICATES_MAX, REQUESTS_PER_MESSAGE_MAX

__all__ = ["ReplicaConfig", "ReplicaConfigError"]


class ReplicaConfigError(ValueError):
    """A replica configuration that cannot work (the message names the setting)."""


@dataclass(frozen=True)
class ReplicaConfig:
    batch_requests_max: int = 64         # requests in one block
    batch_wait_ms: int = 20              # how long the primary waits to fill a batch
    # A batch that is not full is proposed only while fewer blocks than this are in flight: under load,
    # requests gather into fuller blocks (less work per request) instead of more blocks.
    partial_batch_in_flight_max: int = 1
    view_timeout_ms: int = 2000          # no progress for this long -> view change; doubles per failed view
    view_timeout_doublings_max: int = 6  # the doubling stops at view_timeout_ms * 2^6
    checkpoint_interval: int = 8         # blocks between checkpoints
    watermark_window: int = 16           # blocks in flight above the stable checkpoint
    request_pool_max: int = 10_000       # pending requests; a full pool refuses new ones
    clock_skew_ms_max: int = 30_000      # how far a proposal's time may run ahead of ours
    retransmit_ms: int = 500             # resend unanswered votes and view changes this often
    catch_up_timeout_ms: int = 1000      # ask another peer when a catch-up request goes unanswered
    forward_requests_max: int = 256      # requests in one REQUESTS forward
    committed_request_ids_max: int = 100_000  # committed request ids remembered to refuse re-proposal
    committed_ids_heights_max: int = 1000  # blocks whose request ids are also persisted, to survive a restart
    catch_up_probe_ms: int = 2000        # ask one peer (rotating) for blocks past ours this often
    catch_up_serve_interval_ms: int = 10  # serve a peer's explicit catch-up requests at most this often
    # A backup that is neither the primary nor one of the f backups after it waits this long for f other
    # backups' PREPAREs (which, with the primary's proposal, vouch for the requests' signatures) before
    # checking the signatures itself. 0: every replica checks every request itself. Capped at
    # view_timeout_ms / 2 (vouch_wait_applied_ms), so that a down checker never times a view out. At 250
    # a loaded checker's PREPARE often came later, and the others then checked everything for 30 s:
    # 4.0-4.1 signature checks per commitment at saturation against 2.56-2.58 at 1000 (docs/PERFORMANCE.md).
    vouch_wait_ms: int = 1000
    # Our clients' requests go to the primary at the next tick, and to the other validators only if
    # still pending this long after (they need them only to detect a censoring primary; a block's
    # PRE-PREPARE carries its requests). 0: to every validator at once. Capped at view_timeout_ms / 4
    # (forward_others_delay_ms), so that they hold a censored request well before a view times out.
    forward_others_after_ms: int = 100

    @property
    def vouch_wait_applied_ms(self) -> int:
        """vouch_wait_ms as applied: at most half the (first) view timeout."""
        return min(self.vouch_wait_ms, self.view_timeout_ms // 2)

    @property
    def forward_others_delay_ms(self) -> int:
        """forward_others_after_ms as applied: at most a quarter of the (first) view timeout."""
        return min(self.forward_others_after_ms, self.view_timeout_ms // 4)

    def __post_init__(self) -> None:
        positive = (
            "batch_requests_max", "view_timeout_ms", "checkpoint_interval", "watermark_window", "request_pool_max",
            "retransmit_ms", "catch_up_timeout_ms", "forward_requests_max", "committed_request_ids_max",
            "committed_ids_heights_max", "catch_up_probe_ms", "catch_up_serve_interval_ms",
            "partial_batch_in_flight_max",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ReplicaConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("batch_wait_ms", "clock_skew_ms_max", "view_timeout_doublings_max", "vouch_wait_ms",
                     "forward_others_after_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ReplicaConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.watermark_window < 2 * self.checkpoint_interval:
            # The primary stops at the window's top edge until a checkpoint moves it.
            raise ReplicaConfigError("watermark_window must be at least 2 * checkpoint_interval")
        if self.batch_requests_max > BLOCK_REQUESTS_MAX:
            raise ReplicaConfigError(
                f"batch_requests_max must be at most {BLOCK_REQUESTS_MAX} (messages.BLOCK_REQUESTS_MAX)")
        if self.forward_requests_max > REQUESTS_PER_MESSAGE_MAX:
            raise ReplicaConfigError(f"forward_requests_max must be at most {REQUESTS_PER_MESSAGE_MAX}")
        if self.watermark_window > PREPARED_CERTIFICATES_MAX:
            raise ReplicaConfigError(
                f"watermark_window must be at most {PREPARED_CERTIFICATES_MAX} (messages.PREPARED_CERTIFICATES_MAX)")
