"""Memoized signature verification for simulated runs.

Ed25519 verification is a pure function of (public key, signature, domain,
chain id, payload), and a simulated cluster verifies the same few thousand
signatures over and over (retransmits, duplicates, replays, catch-up): only
about 4% of the calls are distinct. While a run is active, `codec.verify` is
replaced by a memo keyed on every input, so a forged or altered signature is
still a different key and still verified for real. The original is restored
when the run ends, so nothing outside the simulator ever sees the memo.
"""

from __future__ import annotations

import contextlib

from consensus import codec

# Bounded: a run verifies far fewer distinct signatures than this; past it the memo starts over.
verify_memo_entries_max = 200_000


@contextlib.contextmanager
def memoized_verify():
    real_verify = codec.verify
    if getattr(real_verify, "is_sim_memo", False):   # nested run: the outer memo already applies
        yield
        return
    memo: dict[tuple, bool] = {}

    def verify(public_key, signature, domain, chain_id, payload):
        key = (public_key, signature, domain, chain_id, payload)
        result = memo.get(key)
        if result is None:
            if len(memo) >= verify_memo_entries_max:
                memo.clear()
            result = memo[key] = real_verify(public_key, signature, domain, chain_id, payload)
        return result

    verify.is_sim_memo = True
    codec.verify = verify
    try:
        yield
    finally:
        codec.verify = real_verify
