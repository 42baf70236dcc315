"""The signature-check count (issue 19): consensus.codec.verify counts each Ed25519 verification it
runs, and the node's metrics expose the process's total as bayledger_signature_checks_total."""

from __future__ import annotations

import nacl.signing

from consensus import codec
from node.metrics import NodeMetrics

METRIC = "bayledger_signature_checks_total"


def _scraped_total(metrics: NodeMetrics) -> int:
    values = [line.split()[1] for line in metrics.render().splitlines() if line.startswith(METRIC + " ")]
    assert len(values) == 1
    return int(values[0])


def test_each_verification_counts_whether_or_not_the_signature_holds():
    key = nacl.signing.SigningKey(bytes(32))
    public = bytes(key.verify_key)
    signature = codec.sign(key, codec.DOMAIN_ENTRY, "c", b"payload")
    before = codec.signature_checks_total()
    assert codec.verify(public, signature, codec.DOMAIN_ENTRY, "c", b"payload")
    assert not codec.verify(public, signature, codec.DOMAIN_ENTRY, "c", b"other payload")
    assert codec.signature_checks_total() == before + 2
    # A key or signature of the wrong length is refused before any Ed25519 work: not a check.
    assert not codec.verify(public[:-1], signature, codec.DOMAIN_ENTRY, "c", b"payload")
    assert codec.signature_checks_total() == before + 2


def test_the_metrics_text_carries_the_count_and_it_rises_after_a_verify():
    metrics = NodeMetrics()
    text = metrics.render()
    assert f"# TYPE {METRIC} counter" in text
    before = _scraped_total(metrics)
    key = nacl.signing.SigningKey(bytes(range(32)))
    signature = codec.sign(key, codec.DOMAIN_QUERY, "c", b"q")
    codec.verify(bytes(key.verify_key), signature, codec.DOMAIN_QUERY, "c", b"q")
    assert _scraped_total(metrics) == before + 1
