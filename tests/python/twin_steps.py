"""Decode steps of an observed model and of its unobserved twin (a deep copy: the same weights,
the same kernels), interleaved in one greedy loop (decode_overhead.py).

    res = twin_steps(torch, model, observe, ids, seconds, sync, window=16, interleave="block")

Why: on the H100 host the speed of the machine changes by tens of percent within seconds (other
tenants), so even two back-to-back generate() calls of a second each can see different
machines. Here the observed and the unobserved steps run close together, each followed by a
device sync as generate()'s stopping check does, in one of two interleavings:

- "step": one step of each model in turn (observed first on even steps, the twin first on odd
  ones). The two run ~one step apart, but each step starts with the caches full of the other
  model's work: on the H100 host (22:38 UTC 2026-12-07) an unobserved step took 19.3 ms here
  against 13.8 ms inside generate() a few seconds earlier, so the slowdown is a share of a
  baseline that is ~40 % too slow.
- "block": WINDOW steps of one model, then WINDOW of the other (observed first in even windows,
  the twin first in odd ones): a model's steps follow each other as in generate(), and the two
  blocks of a window still run within a second.

Every WINDOW consecutive decode steps of a sequence give one ratio (sum of the observed steps /
sum of the unobserved ones; the observer goes from one copy to the other between sequences, see
twin_steps()): every cost that recurs at most every WINDOW steps (the observer's group of K
steps, its cache look every 16) is in each window, and so is the first decode step's counting of
the prefill. What a generate() adds around its steps (its requests, its last partial group) is
not here: decode_overhead.py's pairs of whole calls have it.
"""

import copy
import time

__all__ = ["twin_steps"]


def twin_steps(torch, model, observe, ids, seconds, sync, window=16, seq_steps=64,
               interleave="block"):
    """{"windows": [slowdown % per window pair], "copy_bias": [% per window pair],
    "twin_step_us": [...], "stats": [observer stats], "steps": decode steps per model}.
    observe(m) attaches to m and returns the observer. Sequences of `seq_steps` decode steps
    after a prefill of `ids`, as many as start within `seconds` (after two discarded); the
    observer is on the model in even sequences and on the twin in odd ones, and each window's
    slowdown is the geometric mean of its ratios in the two sequences of a pair, so that what
    differs between the two copies themselves (their objects' places in memory: a per-copy bias
    of 1-3 % on the dev VM) cancels; copy_bias is that difference (the model against its twin,
    the observer's cost cancelled), per window pair."""
    if interleave not in ("step", "block"):
        raise ValueError(f"interleave must be 'step' or 'block', not {interleave!r}")
    if seq_steps % window:
        raise ValueError("seq_steps must be a multiple of window")
    twin = copy.deepcopy(model)
    perf = time.perf_counter

    def prefill(m):
        out = m(input_ids=ids, use_cache=True)
        return out.logits[:, -1:].argmax(-1), out.past_key_values

    def step(m, state):
        out = m(input_ids=state[0], past_key_values=state[1], use_cache=True)
        return out.logits[:, -1:].argmax(-1), out.past_key_values

    def timed_steps(m, state, n, times):
        """n steps of m from state, each ended by a device sync, their times appended."""
        for _ in range(n):
            t0 = perf()
            state = step(m, state)
            sync()
            times.append(perf() - t0)
        return state

    def sequence(on, off):
        """Step times (observed, unobserved) of one sequence, `on` observed."""
        obs = observe(on)
        try:
            a, b = prefill(on), prefill(off)  # the observer's setup: its first step, untimed
            sync()
            seq_on, seq_off = [], []
            # "step": runs of 1 step, "block": runs of a window; the observed side first in
            # even runs, the unobserved in odd ones.
            run = 1 if interleave == "step" else window
            for i in range(seq_steps // run):
                if i % 2 == 0:
                    a = timed_steps(on, a, run, seq_on)
                    b = timed_steps(off, b, run, seq_off)
                else:
                    b = timed_steps(off, b, run, seq_off)
                    a = timed_steps(on, a, run, seq_on)
        finally:
            stats.append(obs.stats())
            obs.close()
        return seq_on, seq_off

    def ratios(seq_on, seq_off):
        return [sum(seq_on[w:w + window]) / sum(seq_off[w:w + window])
                for w in range(0, seq_steps - window + 1, window)]

    windows, bias, off_steps, stats = [], [], [], []
    with torch.no_grad():
        sequence(model, twin)  # warm-up, discarded
        sequence(twin, model)
        stats.clear()
        deadline = perf() + seconds
        while perf() < deadline:
            on_a, off_a = sequence(model, twin)  # x = model observed / twin
            on_b, off_b = sequence(twin, model)  # y = twin observed / model
            for x, y in zip(ratios(on_a, off_a), ratios(on_b, off_b)):
                windows.append(100 * ((x * y) ** 0.5 - 1))
                bias.append(100 * ((x / y) ** 0.5 - 1))  # the model's steps against the twin's
            off_steps += off_a + off_b
    del twin
    return {"windows": windows, "copy_bias": bias, "twin_step_us": [1e6 * s for s in off_steps],
            "stats": stats, "steps": len(off_steps) // 2, "interleave": interleave}
