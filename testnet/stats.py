"""Latency summaries for the benchmark: nearest-rank percentiles over exact samples.

Exact samples (not a histogram) because a run holds at most a few hundred
thousand latencies, and the nearest-rank method returns a value that was
actually observed, which keeps p99 honest on small samples.
"""

from __future__ import annotations

import math
from typing import Sequence


def percentile(sorted_samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least `fraction` of samples at or below it.

    `sorted_samples` must be sorted ascending and non-empty; `fraction` in (0, 1].
    """
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rank = math.ceil(fraction * len(sorted_samples))  # 1-based
    return sorted_samples[rank - 1]


def summarize_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max in milliseconds (rounded to 0.01 ms) and the sample count."""
    ordered = sorted(latencies_s)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2),
        "p95_ms": round(percentile(ordered, 0.95) * 1000, 2),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }
