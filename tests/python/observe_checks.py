"""What the collector says about an observed torch model, compared with the model's own truth.
Shared by the CPU test (torch_test.py, hand-written HF-style models) and the GPU test
(transformers_gpu_test.py, real transformers models): one home for reading /metrics."""

import ctypes
import re
import time
import urllib.request

from harness import Failure


def scrape(metrics_addr):
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def series(samples, name, **labels):
    return [(lab, v) for n, lab, v in samples
            if n == name and all(lab.get(k) == str(w) for k, w in labels.items())]


def expert_counts(samples, model):
    """{layer: {expert: tokens}} from inferscope_moe_expert_tokens_total (--per-expert-metrics)."""
    out = {}
    for lab, v in series(samples, "inferscope_moe_expert_tokens_total", model=model):
        if v:  # experts the description announced but no token reached are 0
            out.setdefault(int(lab["layer"]), {})[int(lab["expert"])] = int(v)
    return out


def truth_counts(routed_by_layer, num_experts):
    """{layer: {expert: tokens}} from each layer's list of top-k id tensors (the model's own)."""
    import torch
    out = {}
    for layer, routed in routed_by_layer.items():
        total = torch.zeros(num_experts, dtype=torch.int64)
        for ids in routed:
            total += torch.bincount(ids.reshape(-1).cpu().to(torch.int64), minlength=num_experts)
        out[layer] = {e: int(c) for e, c in enumerate(total.tolist()) if c}
    return out


def wait_for(metrics_addr, what, predicate, timeout=30):
    """Polls /metrics until predicate(samples) is true (the collector aggregates on its own
    thread; the deadline is for liveness only: it fails a hung run, it bounds no latency)."""
    deadline = time.time() + timeout
    samples = []
    while time.time() < deadline:
        samples = scrape(metrics_addr)
        if predicate(samples):
            return samples
        time.sleep(0.25)
    raise Failure(f"collector /metrics never showed {what}")


def wait_counts_equal(metrics_addr, model, truth, timeout=30):
    got = {}

    def equal(samples):
        nonlocal got
        got = expert_counts(samples, model)
        return got == truth
    try:
        wait_for(metrics_addr, f"the expert counts of {model}", equal, timeout)
    except Failure:
        diff = {layer: (truth.get(layer), got.get(layer)) for layer in set(truth) | set(got)
                if truth.get(layer) != got.get(layer)}
        raise Failure(f"{model}: collector counts differ from the model's routing "
                      f"(layer: (truth, collector)): {diff}") from None
    return got


def episodes(samples, model):
    """[(kind, layer, expert)] of the open expert episodes."""
    return sorted((lab["kind"], int(lab["layer"]), int(lab["expert"]))
                  for lab, v in series(samples, "inferscope_moe_expert_episode", model=model)
                  if v == 1)


class LoadSpy:
    """Records what an observer hands its agent, per step (the uint32 rows at the addresses of
    each inferscope_expert_loads_steps call, read as the C side reads them), and passes every
    call on to the real agent."""

    def __init__(self, agent):
        self.calls = []  # steps per call, in call order
        self.loads = {}  # step -> {layer: (counts, tokens, dropped)}
        real = agent._expert_loads_steps

        def read(addr, n, ctype):
            return list((ctype * n).from_address(addr)) if n else []

        def spy(n_steps, steps, n_layers, layers, offsets, experts, counts, row, tokens):
            u32 = ctypes.c_uint32
            steps_ = read(steps, n_steps, ctypes.c_uint64)
            layers_, offsets_ = read(layers, n_layers, u32), read(offsets, n_layers, u32)
            experts_, tokens_ = read(experts, n_layers, u32), read(tokens, n_steps * n_layers, u32)
            for s, step in enumerate(steps_):
                if step in self.loads:
                    raise Failure(f"step {step} sent twice")
                values = read(counts + 4 * s * row, row, u32)
                self.loads[step] = {
                    layer: (values[o:o + e], tokens_[s * n_layers + i], values[o + e])
                    for i, (layer, o, e) in enumerate(zip(layers_, offsets_, experts_))
                    if tokens_[s * n_layers + i]}
            self.calls.append(n_steps)
            return real(n_steps, steps, n_layers, layers, offsets, experts, counts, row, tokens)
        agent._expert_loads_steps = spy


def truth_step(routed, num_experts):
    """(counts per expert, tokens) of one layer in one forward, from its own top-k ids."""
    import torch
    ids = routed.reshape(-1).cpu().to(torch.int64)
    return torch.bincount(ids, minlength=num_experts).tolist(), routed.shape[0]


def check_steps_exact(spy, want, what):
    """spy's loads equal want ({step: {layer: (counts, tokens)}}), step by step."""
    got = {step: {layer: (c, t) for layer, (c, t, _) in layers.items()}
           for step, layers in spy.loads.items()}
    if got != want:
        bad = sorted(s for s in set(got) | set(want) if got.get(s) != want.get(s))
        raise Failure(f"{what}: per-step loads differ at steps {bad[:5]}: sent "
                      f"{[got.get(s) for s in bad[:2]]}, model {[want.get(s) for s in bad[:2]]}")
