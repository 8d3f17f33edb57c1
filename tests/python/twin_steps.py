"""Decode steps of an observed model and of its unobserved twin (a deep copy: the same weights,
the same kernels), interleaved step by step in one greedy loop (decode_overhead.py).

    res = twin_steps(torch, model, observe, ids, seconds, sync, window=16)

Why: on the H100 host the speed of the machine changes by tens of percent within seconds (other
tenants), so even two back-to-back generate() calls of a second each can see different
machines. Here the observed step and the unobserved step run ~one step apart (tens of ms), in
alternating order (observed first on even steps, the twin first on odd ones), each followed by
a device sync as generate()'s stopping check does. Every WINDOW consecutive decode steps of a
sequence give one ratio (sum of the observed steps / sum of the unobserved ones; the observer
goes from one copy to the other between sequences, see twin_steps()): every cost that recurs
at most every WINDOW steps (the observer's group of K steps, its cache look every 16) is in each
window, and so is the first decode step's counting of the prefill. What a generate() adds
around its steps (its requests, its last partial group) is not here: decode_overhead.py's pairs
of whole calls have it.
"""

import copy
import time

__all__ = ["twin_steps"]


def twin_steps(torch, model, observe, ids, seconds, sync, window=16, seq_steps=64):
    """{"windows": [slowdown % per window pair], "twin_step_us": [...], "stats": [observer
    stats], "steps": decode steps per model}. observe(m) attaches to m and returns the
    observer. Sequences of `seq_steps` decode steps after a prefill of `ids`, as many as start
    within `seconds` (after two discarded); the observer is on the model in even sequences and
    on the twin in odd ones, and each window's slowdown is the geometric mean of its ratios in
    the two sequences of a pair, so that what differs between the two copies themselves (their
    objects' places in memory: a per-copy bias of 1-3 % on the dev VM) cancels."""
    twin = copy.deepcopy(model)
    perf = time.perf_counter

    def prefill(m):
        out = m(input_ids=ids, use_cache=True)
        return out.logits[:, -1:].argmax(-1), out.past_key_values

    def step(m, state):
        out = m(input_ids=state[0], past_key_values=state[1], use_cache=True)
        return out.logits[:, -1:].argmax(-1), out.past_key_values

    def one_after_other(first, first_state, second, second_state):
        """A step of `first`, then one of `second`, each ended by a device sync: their new
        states and times."""
        t0 = perf()
        first_state = step(first, first_state)
        sync()
        t1 = perf()
        second_state = step(second, second_state)
        sync()
        return first_state, second_state, t1 - t0, perf() - t1

    def sequence(on, off):
        """Step times (observed, unobserved) of one sequence, `on` observed."""
        obs = observe(on)
        try:
            a, b = prefill(on), prefill(off)  # the observer's setup: its first step, untimed
            sync()
            seq_on, seq_off = [], []
            for i in range(seq_steps):
                if i % 2 == 0:
                    a, b, t_on, t_off = one_after_other(on, a, off, b)
                else:
                    b, a, t_off, t_on = one_after_other(off, b, on, a)
                seq_on.append(t_on)
                seq_off.append(t_off)
        finally:
            stats.append(obs.stats())
            obs.close()
        return seq_on, seq_off

    def ratios(seq_on, seq_off):
        return [sum(seq_on[w:w + window]) / sum(seq_off[w:w + window])
                for w in range(0, seq_steps - window + 1, window)]

    windows, off_steps, stats = [], [], []
    with torch.no_grad():
        sequence(model, twin)  # warm-up, discarded
        sequence(twin, model)
        stats.clear()
        deadline = perf() + seconds
        while perf() < deadline:
            on_a, off_a = sequence(model, twin)
            on_b, off_b = sequence(twin, model)
            for x, y in zip(ratios(on_a, off_a), ratios(on_b, off_b)):
                windows.append(100 * ((x * y) ** 0.5 - 1))
            off_steps += off_a + off_b
    del twin
    return {"windows": windows, "twin_step_us": [1e6 * s for s in off_steps],
            "stats": stats, "steps": len(off_steps) // 2}
