"""Paired measurement of what attaching something costs a repeated call, with a confidence
interval instead of a spread (tests/python/decode_overhead.py, transformers_gpu_test.py).

    pairs = paired_calls(call, attach, seconds=60)   # [(off result, on result), ...]
    med, lo, hi = median_ci([slowdown(off, on) for off, on in pairs])
    verdict(lo, hi, aim=1.0)

Each pair is one call without and one with the thing attached, back to back, in alternating
order (off-on, on-off, ...), so a drift of the machine cancels within a pair; the median of the
per-pair differences is robust to the bursts a shared host adds to single calls, and its
interval comes from order statistics (no assumption about their distribution).
"""

import math
import statistics
import time

__all__ = ["paired_calls", "median_ci", "verdict"]


def paired_calls(call, attach, pairs=None, seconds=None):
    """[(call() unattached, call() with attach()'s thing attached), ...]: `pairs` of them, or
    as many as start within `seconds` (a budget fixed beforehand, never a look at the results).
    attach() attaches and returns detach()."""
    if pairs is None and seconds is None:
        raise ValueError("paired_calls() needs pairs= or seconds=")
    out = []
    deadline = None if seconds is None else time.monotonic() + seconds

    def attached():
        detach = attach()
        try:
            return call()
        finally:
            detach()
    while pairs is None or len(out) < pairs:
        if deadline is not None and time.monotonic() >= deadline:
            break
        if len(out) % 2 == 0:
            off = call()
            on = attached()
        else:
            on = attached()
            off = call()
        out.append((off, on))
    return out


def median_ci(xs, confidence=0.95):
    """(median, low, high): the median of xs and a distribution-free confidence interval for
    the median of what they sample: the order statistics x(k) and x(n+1-k), k the largest with
    P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. low and high are None when there are too
    few values for that confidence (fewer than 6 at 95 %)."""
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None, None, None
    tail = (1 - confidence) / 2
    k, below = 0, 0  # below: the number of outcomes of n fair coins with fewer than k+1 heads
    total = 1 << n
    while k < n:
        below += math.comb(n, k)
        if below / total > tail:
            break
        k += 1
    if k == 0:
        return statistics.median(xs), None, None
    return statistics.median(xs), xs[k - 1], xs[n - k]


def verdict(low, high, aim):
    """Whether an interval [low, high] for a cost establishes it at or under `aim`: "met" only
    when its upper end is; "not met" when its lower end is above; otherwise "not established"
    (the interval straddles the aim, or there are too few pairs for one)."""
    if high is None:
        return "not established (too few pairs for an interval)"
    if high <= aim:
        return f"met (upper bound {high:+.2f} <= {aim:g})"
    if low > aim:
        return f"not met (lower bound {low:+.2f} > {aim:g})"
    return f"not established (interval {low:+.2f} .. {high:+.2f} contains {aim:g})"
