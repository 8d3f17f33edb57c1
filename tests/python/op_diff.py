"""Where observe()'s added host time goes, op by op (decode_overhead.py --op-diff-reps).

    diff = op_diff(torch, run, attach, steps, reps=3)

torch.profiler with CPU activities only, over `reps` calls of run() unobserved and `reps`
observed (attach() before each, its detach() after), in alternating profiling sessions. Per
aten op (and per other event the profiler records: record_function ranges, the CUDA runtime
calls it sees on the host): the calls and the self CPU time per decode step that observing
adds. The rest, the step's wall time outside every recorded op, is Python between ops: the
taps' frames, the hooks' Python, generate()'s own code. Why: the pairs of whole generate()
calls on the H100 host measured ~150-300 us a step added against 67-137 us of the hooks' own
timed work (docs/integrations.md, torch4 rounds 2 and 3); this says whether the rest is more
ops, slower ops (the allocator with kept tensors, say) or Python outside them.

The profiler costs time per op on both sides; an op observing adds costs its overhead too, so
compare the counts with the times.
"""

import time

__all__ = ["op_diff", "report_lines"]


def _profile(torch, run, reps, attach=None):
    """({op: (calls, self cpu us)}, wall s) of reps calls of run(), each observed when
    attach is given."""
    wall = 0.0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            detach = attach() if attach is not None else None
            try:
                t0 = time.perf_counter()
                run()
                wall += time.perf_counter() - t0
            finally:
                if detach is not None:
                    detach()
    ops = {}
    for evt in prof.key_averages():
        calls, us = ops.get(evt.key, (0, 0.0))
        ops[evt.key] = (calls + evt.count, us + evt.self_cpu_time_total)
    return ops, wall


def op_diff(torch, run, attach, steps, reps=3, rounds=2):
    """{"ops": [(name, calls added per step, self us added per step)] sorted by |us| then
    |calls|, "ops_us_per_step": (unobserved, observed), "outside_us_per_step": (unobserved,
    observed), "wall_us_per_step": (unobserved, observed)}; `steps` forwards per run()."""
    run()  # the profiler's own first-use costs, outside both sides
    sides = {False: [{}, 0.0], True: [{}, 0.0]}
    for r in range(rounds):
        for observed in ((False, True) if r % 2 == 0 else (True, False)):
            ops, wall = _profile(torch, run, reps, attach if observed else None)
            acc = sides[observed]
            for k, (c, us) in ops.items():
                c0, us0 = acc[0].get(k, (0, 0.0))
                acc[0][k] = (c0 + c, us0 + us)
            acc[1] += wall
    n = reps * rounds * steps
    off, on = sides[False], sides[True]
    names = set(off[0]) | set(on[0])
    rows = []
    for k in names:
        c_off, us_off = off[0].get(k, (0, 0.0))
        c_on, us_on = on[0].get(k, (0, 0.0))
        rows.append((k, (c_on - c_off) / n, (us_on - us_off) / n))
    rows.sort(key=lambda r: (-abs(r[2]), -abs(r[1])))
    ops_us = tuple(sum(us for _, us in side[0].values()) / n for side in (off, on))
    wall_us = tuple(1e6 * side[1] / n for side in (off, on))
    return {"ops": rows, "ops_us_per_step": ops_us, "wall_us_per_step": wall_us,
            "outside_us_per_step": tuple(w - o for w, o in zip(wall_us, ops_us))}


def report_lines(diff, top=10):
    """Lines for a log: the totals, then the `top` ops that differ most."""
    (w0, w1), (o0, o1), (x0, x1) = (diff["wall_us_per_step"], diff["ops_us_per_step"],
                                    diff["outside_us_per_step"])
    lines = [f"per step, unobserved -> observed (us, under the profiler): wall {w0:.0f} -> "
             f"{w1:.0f} ({w1 - w0:+.0f}), in recorded ops {o0:.0f} -> {o1:.0f} ({o1 - o0:+.0f}), outside "
             f"them {x0:.0f} -> {x1:.0f} ({x1 - x0:+.0f})"]
    lines += [f"  {name[:60]:60s} calls {calls:+.2f}/step, self {us:+.1f} us/step"
              for name, calls, us in diff["ops"][:top]]
    return lines
