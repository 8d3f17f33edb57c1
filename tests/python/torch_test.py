"""inferscope.torch on CPU against a real inferscope-collector, with Debian's torch and the
HF-shaped models of hf_style_models.py (no transformers here; the GPU machine runs the same
checks on real transformers models: transformers_gpu_test.py).

Plain python3, no pytest: each check_* raises Failure; main() exits 1 if any failed.
Registered in ctest with label `python`; without torch it reports itself SKIPPED.
"""

import argparse
import io
import contextlib
import os
import pathlib
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE))
from harness import Failure, Harness, log, run_checks  # noqa: E402

try:
    import torch
except ImportError:
    print("SKIPPED: torch is not importable by this python3 (Debian: python3-torch)")
    sys.exit(0)

import hf_style_models as hf  # noqa: E402
from observe_checks import (LoadSpy, check_steps_exact, episodes, scrape, series,  # noqa: E402
                            truth_counts, truth_step, wait_counts_equal, wait_for)

inferscope = None  # imported in main() once sys.path and the environment are set


def observed(addrs, service, model, **kwargs):
    agent = inferscope.Agent(collector=addrs["ingest"], service=service)
    return agent, inferscope.torch.observe(model, agent, model_name=service, **kwargs)


def prompt(batch, length, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


# [SECTION] checks ---------------------------------------------------------------

def check_counts_exact(addrs):
    """For each router style, the collector's per-layer per-expert counts over whole
    generate() calls equal the model's own routing exactly; dense layers report nothing."""
    for style, dense in (("v4", 0), ("v5", 0), ("sigmoid_bias", 1)):
        torch.manual_seed(1)
        model = hf.TinyLM(style=style, layers=3, dense_layers=dense).eval()
        agent, obs = observed(addrs, f"torch-{style}", model)
        want_layers = sorted(model.moe_blocks())
        got_layers = sorted(e.layer for e in obs.layers)
        if got_layers != want_layers:
            raise Failure(f"{style}: found MoE layers {got_layers}, the model has {want_layers}: "
                          f"{obs.layers}")
        model.generate(prompt(2, 6), max_new_tokens=5)
        model.generate(prompt(3, 4, seed=1), max_new_tokens=7)
        if not obs.flush(10):
            raise Failure(f"{style}: flush failed: {agent.stats()}")
        truth = truth_counts({i: b.routed for i, b in model.moe_blocks().items()}, 8)
        wait_counts_equal(addrs["metrics"], f"torch-{style}", truth)
        st = obs.stats()
        # 2 generates: 5 + 7 forwards
        if st["steps"] != 12 or st["hook_errors"] or st["steps_dropped"]:
            raise Failure(f"{style}: observer stats {st}")
        if st["hook_ns"] <= 0:  # the hooks' own host time: what the overhead figure reads
            raise Failure(f"{style}: no hook time measured: {st}")
        if style == "sigmoid_bias" and st["shared_expert_tokens"] != 2 * (2 * 6 + 2 * 4 +
                                                                          3 * 4 + 3 * 6):
            raise Failure(f"{style}: shared expert tokens {st['shared_expert_tokens']}")
        obs.close()
        agent.close()
        log(f"     {style}: {sum(sum(v.values()) for v in truth.values())} assignments equal")


def check_per_step_counts_exact(addrs):
    """Counts of K steps copied together (steps_per_copy=K) still reach the agent per step,
    each with its own step number, exactly the model's routing of that forward; a generate() of
    a length not a multiple of K sends its last partial group at its end (no flush needed), and
    the collector's totals equal the model's. Then a generate() after one whose last group was
    full (the next group's run restarted with the old decode shape) stays exact."""
    for k, forwards in ((1, 5), (8, 16), (8, 21), (3, 7), (16, 37)):
        torch.manual_seed(10 + k)
        model = hf.TinyLM(style="v5", layers=3).eval()
        service = f"torch-k{k}-{forwards}"
        agent, obs = observed(addrs, service, model, steps_per_copy=k)
        spy = LoadSpy(agent)
        model.generate(prompt(2, 6, seed=k), max_new_tokens=forwards)
        want_calls = [k] * (forwards // k) + ([forwards % k] if forwards % k else [])
        if spy.calls != want_calls:
            raise Failure(f"K={k}, {forwards} forwards: steps per call {spy.calls}, want "
                          f"{want_calls} (the last partial group at generate()'s end)")
        blocks = model.moe_blocks()
        want = {s: {layer: truth_step(b.routed[s], 8) for layer, b in blocks.items()}
                for s in range(forwards)}
        check_steps_exact(spy, want, f"K={k}, {forwards} forwards")
        if any(d for layers in spy.loads.values() for _, _, d in layers.values()):
            raise Failure(f"K={k}: dropped ids sent for a router's own ids")
        obs.flush(10)
        st = obs.stats()
        if st["steps"] != forwards or st["steps_dropped"] or st["pending_steps"] or \
                st["steps_per_copy"] != k:
            raise Failure(f"K={k}: observer stats {st}")
        wait_counts_equal(addrs["metrics"], service,
                          truth_counts({i: b.routed for i, b in blocks.items()}, 8))
        obs.close()
        agent.close()
        log(f"     K={k}: {forwards} steps exact, sent in calls of {spy.calls} steps")
    torch.manual_seed(19)
    model = hf.TinyLM(style="v5", layers=3).eval()
    agent, obs = observed(addrs, "torch-k4-twice", model, steps_per_copy=4)
    spy = LoadSpy(agent)
    model.generate(prompt(2, 6), max_new_tokens=8)  # two full groups
    model.generate(prompt(1, 2, seed=1), max_new_tokens=6)  # a prefill of the decode's shape
    obs.flush(10)
    expect_model_steps_exact(spy, model, 14, "a generate() after full groups")
    obs.close()
    agent.close()


def expect_model_steps_exact(spy, model, steps, what, experts=8):
    """The loads the agent got for steps 0..steps-1 equal the model's own routing."""
    blocks = model.moe_blocks()
    check_steps_exact(spy, {s: {i: truth_step(b.routed[s], experts) for i, b in blocks.items()}
                            for s in range(steps)}, what)


def check_ids_passed_by_keyword(addrs):
    """An experts module called with its top-k ids by keyword (top_k_index=...), next to layers
    that pass them positionally: the capture takes the keyword, every step exact."""

    class KeywordMoe(hf.V5SparseMoe):
        def forward(self, x):
            h = x.reshape(-1, x.shape[-1])
            _, scores, ids = self.gate(h)
            self.routed.append(ids.clone())
            return self.experts(h, top_k_index=ids, top_k_weights=scores).view_as(x)

    torch.manual_seed(17)
    model = hf.TinyLM(style="v5", layers=3).eval()
    keyword = KeywordMoe(32, 8, 2)
    keyword.load_state_dict(model.model.layers[1].mlp.state_dict())
    model.model.layers[1].mlp = keyword
    agent, obs = observed(addrs, "torch-keyword", model, steps_per_copy=4)
    spy = LoadSpy(agent)
    model.generate(prompt(2, 5), max_new_tokens=6)
    obs.flush(10)
    if obs.stats()["hook_errors"] or [e.source for e in obs.layers].count(
            "experts(top_k_index)") != 3:
        raise Failure(f"keyword ids: stats {obs.stats()}, layers {obs.layers}")
    expect_model_steps_exact(spy, model, 6, "ids passed by keyword")
    obs.close()
    agent.close()


def check_inference_mode(addrs):
    """generate() under torch.inference_mode(), then flush() and a second generate() outside
    it: the observer's buffers take in-place updates in both (no hook errors), every step
    exact."""
    torch.manual_seed(14)
    model = hf.TinyLM(style="v5", layers=3).eval()
    agent, obs = observed(addrs, "torch-inference", model, steps_per_copy=4)
    spy = LoadSpy(agent)
    with torch.inference_mode():
        model.generate(prompt(2, 5), max_new_tokens=6)
    obs.flush(10)
    model.generate(prompt(2, 5, seed=1), max_new_tokens=3)
    obs.flush(10)
    st = obs.stats()
    if st["hook_errors"] or st["steps"] != 9:
        raise Failure(f"inference mode: observer stats {st}")
    expect_model_steps_exact(spy, model, 9, "inference mode")
    obs.close()
    agent.close()


def check_mixed_layers_exact(addrs):
    """Layers of different expert counts (counted one layer at a time, not by the group's
    scatter of uniform layers) and a step whose captured ids pass the taps' bound (counted
    early, in two parts): every step exact."""
    torch.manual_seed(13)
    model = hf.TinyLM(style="v5", layers=3).eval()
    model.model.layers[1].mlp = hf.V5SparseMoe(32, 4, 2)  # 4 experts between two of 8
    captured_max = inferscope.torch.CAPTURED_MAX
    inferscope.torch.CAPTURED_MAX = 3  # the taps' bound: 2 layers' ids (4 items) pass it
    try:
        agent, obs = observed(addrs, "torch-mixed", model, steps_per_copy=4)
    finally:
        inferscope.torch.CAPTURED_MAX = captured_max
    spy = LoadSpy(agent)
    model.generate(prompt(2, 5), max_new_tokens=6)
    obs.flush(10)
    blocks = model.moe_blocks()
    experts = {0: 8, 1: 4, 2: 8}
    want = {s: {i: truth_step(b.routed[s], experts[i]) for i, b in blocks.items()}
            for s in range(6)}
    check_steps_exact(spy, want, "mixed expert counts")
    obs.close()
    agent.close()


def check_group_checks_later_ids(addrs):
    """The usual decode step joins its group with only its first layer's ids checked; the
    other layers' are checked once per group by the group's `stack`. Ids of another dtype
    (int32) or shape (flat [tokens * k]) in later layers at some steps make their group count
    step by step, each tensor checked: every step exact, nothing dropped, no hook error."""

    class OwnIdsExperts(hf.V5Experts):
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return hf._combine(self.experts, hidden_states, self.ids, top_k_weights)

    class OddIdsMoe(hf.V5SparseMoe):
        def __init__(self, odd):
            super().__init__(32, 8, 2)
            self.experts = OwnIdsExperts(32, 8)
            self.odd, self.calls = odd, 0  # forward number -> how its ids are passed

        def forward(self, x):
            h = x.reshape(-1, x.shape[-1])
            _, scores, ids = self.gate(h)
            self.routed.append(ids.clone())
            kind = self.odd.get(self.calls)
            self.calls += 1
            self.experts.ids = ids
            passed = {"int32": ids.to(torch.int32), "flat": ids.reshape(-1)}.get(kind, ids)
            return self.experts(h, passed, scores).view_as(x)

    torch.manual_seed(17)
    model = hf.TinyLM(style="v5", layers=3).eval()
    odd = {1: {2: "int32", 5: "int32"}, 2: {6: "flat", 9: "int32"}}
    for i, layer in enumerate(model.model.layers):
        moe = OddIdsMoe(odd.get(i, {}))
        moe.load_state_dict(layer.mlp.state_dict())
        layer.mlp = moe
    agent, obs = observed(addrs, "torch-odd-ids", model, steps_per_copy=4)
    spy = LoadSpy(agent)
    model.generate(prompt(2, 5), max_new_tokens=12)
    obs.flush(10)
    st = obs.stats()
    if st["hook_errors"] or st["steps_dropped"] or st["steps"] != 12:
        raise Failure(f"odd ids: observer stats {st}")
    blocks = model.moe_blocks()
    want = {s: {i: truth_step(b.routed[s], 8) for i, b in blocks.items()} for s in range(12)}
    check_steps_exact(spy, want, "ids of other dtypes and shapes in later layers")
    obs.close()
    agent.close()


def check_group_split_by_new_layer(addrs):
    """A layer added in the middle of a group (watch_moe(), steps="manual"): the group's
    finished steps go at once in the old layout, the step in progress keeps what it counted
    before the layer came, and every step stays exact."""
    torch.manual_seed(11)
    model = hf.TinyLM(style="v5", layers=2).eval()
    agent, obs = observed(addrs, "torch-grow", model, moe=False, steps="manual",
                          steps_per_copy=4, requests=False)
    spy = LoadSpy(agent)
    gates = [model.model.layers[i].mlp.gate for i in range(2)]
    obs.watch_moe(gates[0], layer=0, num_experts=8)
    blocks = model.moe_blocks()
    with torch.no_grad():
        for s in range(3):
            model(input_ids=prompt(1, 3, seed=s))
            obs.end_step()
        model(input_ids=prompt(1, 3, seed=3))  # step 3: counted for layer 0 only
        if obs.stats()["pending_steps"] or spy.calls:
            raise Failure(f"copied before the group was full: {obs.stats()}, {spy.calls}")
        obs.watch_moe(gates[1], layer=1, num_experts=8)
        if obs.stats()["pending_steps"] != 3:  # copied now, sent at the next step's end
            raise Failure(f"a new layer copied {obs.stats()['pending_steps']} steps, want the "
                          "3 finished ones")
        obs.end_step()
        for s in range(4, 6):
            model(input_ids=prompt(1, 3, seed=s))
            obs.end_step()
    obs.flush(10)
    want = {s: {0: truth_step(blocks[0].routed[s], 8)} for s in range(4)}
    want.update({s: {i: truth_step(blocks[i].routed[s], 8) for i in range(2)}
                 for s in range(4, 6)})
    check_steps_exact(spy, want, "layer added mid-group")
    if spy.calls != [3, 3]:
        raise Failure(f"steps per call {spy.calls}, want [3, 3]")
    obs.close()
    agent.close()


def check_pending_bound_drops_counted(addrs):
    """Copies that never complete (a device far behind): groups beyond the bound are dropped
    and counted in steps_dropped, the hooks never wait; once the copies complete, flush()
    sends exactly the steps kept in flight."""

    class StuckEvent:
        done = False

        def query(self):
            return StuckEvent.done

        def synchronize(self):
            if not StuckEvent.done:
                raise Failure("the observer waited on a copy outside flush()")

    torch.manual_seed(12)
    model = hf.TinyLM(style="v5", layers=3).eval()
    agent, obs = observed(addrs, "torch-stuck", model, steps_per_copy=2)
    spy = LoadSpy(agent)
    copy = obs._moe._copy_to_host
    obs._moe._copy_to_host = lambda rows: (copy(rows)[0], StuckEvent())
    model.generate(prompt(2, 4), max_new_tokens=13)
    st = obs.stats()
    # 4 groups of 2 in flight (the bound: 8 steps, at least 2 groups); then (8, 9), (10, 11)
    # and generate()'s partial (12) dropped.
    if st["pending_steps"] != 8 or st["steps_dropped"] != 5 or spy.calls:
        raise Failure(f"stuck copies: stats {st}, sent {spy.calls}")
    StuckEvent.done = True
    obs.flush(10)
    blocks = model.moe_blocks()
    want = {s: {i: truth_step(b.routed[s], 8) for i, b in blocks.items()} for s in range(8)}
    check_steps_exact(spy, want, "kept in flight")
    wait_counts_equal(addrs["metrics"], "torch-stuck",
                      truth_counts({i: b.routed[:8] for i, b in blocks.items()}, 8))
    obs.close()
    agent.close()


def check_ids_changed_in_place_dropped(addrs):
    """A model that writes each step's top-k ids into the same tensor (in place), which the
    observer keeps until the group's end: the spoiled group is dropped and counted (never
    sent wrong), reported once, and from then on each step's ids are copied at its end, so
    every later step is exact."""

    class ReusingRouter(hf.V5Router):
        def forward(self, h):
            logits, scores, ids = super().forward(h)
            buf = getattr(self, "ids_buf", None)
            if buf is None or buf.shape != ids.shape:
                buf = self.ids_buf = ids.clone()
            else:
                buf.copy_(ids)  # in place: the kept tensor's version counter moves
            return logits, scores, buf

    torch.manual_seed(15)
    model = hf.TinyLM(style="v5", layers=3).eval()
    for layer in model.model.layers:
        router = ReusingRouter(32, 8, 2)
        router.load_state_dict(layer.mlp.gate.state_dict())
        layer.mlp.gate = router
    agent, obs = observed(addrs, "torch-reused-ids", model, steps_per_copy=4)
    spy = LoadSpy(agent)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        model.generate(prompt(2, 5), max_new_tokens=12)
    obs.flush(10)
    st = obs.stats()
    # Group 0 (the prefill, then 3 decode steps whose kept ids were overwritten) is dropped.
    if st["steps_dropped"] != 4 or st["hook_errors"] != 1 or st["steps"] != 12:
        raise Failure(f"ids changed in place: observer stats {st}")
    if err.getvalue().count("in place") != 1:
        raise Failure(f"not reported once on stderr: {err.getvalue()!r}")
    blocks = model.moe_blocks()
    want = {s: {i: truth_step(b.routed[s], 8) for i, b in blocks.items()} for s in range(4, 12)}
    check_steps_exact(spy, want, "after ids changed in place")
    obs.close()
    agent.close()


def check_forward_taps_keep_fast_path():
    """The model, its MoE layers and its decoder layers (layer_ranges) are observed through
    taps on their forward, not forward hooks (a hooked module takes PyTorch's slow call path):
    no hook anywhere while observed; a forward put on the instance before (as accelerate does)
    is still called, and close() puts back exactly what was there; a deepcopy of an observed
    module runs its own weights; a forward that raises still ends its step."""
    import copy
    torch.manual_seed(16)
    model = hf.TinyLM(style="v4", layers=2).eval()
    experts = hf.TinyLM(style="v5", layers=2).eval()
    calls = []
    gate = model.model.layers[0].mlp.gate
    own = gate.forward

    def instance_forward(x):  # an instance forward someone set before observe()
        calls.append(1)
        return own(x)
    gate.forward = instance_forward
    agent = inferscope.Agent(collector="")
    for m in (model, experts):
        obs = inferscope.torch.observe(m, agent, requests=False, layer_ranges=True)
        hooked = [n for n, sub in m.named_modules() if sub._forward_hooks or
                  sub._forward_pre_hooks]
        if hooked or len(obs.layers) != 2:
            raise Failure(f"forward hooks on {hooked}, layers {obs.layers}")
        with torch.no_grad():
            try:
                m(input_ids=torch.tensor([[500]]))  # outside the vocabulary: raises
                raise Failure("a forward outside the vocabulary did not raise")
            except IndexError:
                pass
            m(input_ids=prompt(1, 3))
            if obs._depth or obs.stats()["steps"] != 2:
                raise Failure(f"a raising forward left the step open: depth {obs._depth}, "
                              f"{obs.stats()}")
            if m is experts:
                twin = copy.deepcopy(m.model.layers[1].mlp)
                with torch.no_grad():
                    for p in twin.parameters():
                        p.mul_(0.5)
                h = torch.randn(4, 32)
                if torch.equal(twin(h), m.model.layers[1].mlp(h)):
                    raise Failure("the deepcopy ran the original module's forward")
        obs.close()
        if obs.stats()["moe_calls"] != (2 if m is model else 4):  # 2 forwards, twin, original
            raise Failure(f"moe_calls {obs.stats()['moe_calls']}")
        left = [n for n, sub in m.named_modules() if "forward" in vars(sub) and
                sub is not gate]
        if left:
            raise Failure(f"close() left a forward tap on {left}")
    if not calls or vars(gate).get("forward") is not instance_forward:
        raise Failure("the instance forward was not called through, or not put back")
    agent.close()


def check_steps_per_copy_validated():
    model = hf.TinyLM(style="v5", layers=1).eval()
    agent = inferscope.Agent(collector="")
    for bad in (0, -1, True, 1.5, "8", 257, None):
        try:
            inferscope.torch.observe(model, agent, steps_per_copy=bad)
        except ValueError:
            continue
        raise Failure(f"steps_per_copy={bad!r} was accepted")
    agent.close()


def check_injected_skew_named(addrs):
    """A skew injected at the gate (one expert favoured in layer 1, one never chosen in layer
    2) opens exactly those two episodes, naming layer and expert, and nothing else."""
    torch.manual_seed(2)
    model = hf.TinyLM(style="v5", layers=3).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.gate.bias[5] = 8.0    # chosen by every token: hot
        model.model.layers[2].mlp.gate.bias[3] = -30.0  # chosen by none: dead
    agent, obs = observed(addrs, "torch-skew", model)
    want = [("dead", 2, 3), ("hot", 1, 5)]
    seed = 0
    samples = []

    def generate_more(_):
        nonlocal seed, samples
        seed += 1
        model.generate(prompt(4, 16, seed=seed), max_new_tokens=4)
        obs.flush(10)
        samples = scrape(addrs["metrics"])
        return episodes(samples, "torch-skew") == want

    deadline_rounds = 400  # a liveness bound: the collector closes a window each second
    for _ in range(deadline_rounds):
        if generate_more(None):
            break
    got = episodes(samples, "torch-skew")
    if got != want:
        raise Failure(f"episodes {got}, want exactly {want}")
    obs.close()
    agent.close()


def check_memory_kv_and_ssm(addrs):
    """A hybrid model's cache: kv_cache and ssm_state bytes equal its tensors' bytes."""
    torch.manual_seed(3)
    model = hf.TinyLM(style="v5", layers=4, hybrid=True).eval()
    agent, obs = observed(addrs, "torch-hybrid", model)
    with torch.no_grad():
        out = model(input_ids=prompt(2, 5))
        out = model(input_ids=prompt(2, 1, seed=9), past_key_values=out.past_key_values)
    kv, ssm = out.past_key_values.tensors_bytes()
    if kv == 0 or ssm == 0:
        raise Failure("the hybrid test model holds no kv or no ssm bytes")
    if inferscope.torch.cache_bytes(out.past_key_values) != (kv, ssm):
        raise Failure(f"cache_bytes {inferscope.torch.cache_bytes(out.past_key_values)} != "
                      f"{(kv, ssm)}")
    obs.flush(10)

    def shows(samples):
        got = {lab["kind"]: v for lab, v in series(samples, "inferscope_memory_used_bytes",
                                                    model="torch-hybrid")}
        return got.get("kv_cache") == kv and got.get("ssm_state") == ssm
    wait_for(addrs["metrics"], f"memory kv_cache={kv} ssm_state={ssm}", shows)
    obs.close()
    agent.close()


def check_multimodal_stages_and_requests(addrs):
    """Vision tower, projector and language model become encoder / connector / prefill /
    decode stages of each request; generate() becomes one request per sequence."""
    torch.manual_seed(4)
    model = hf.TinyVLM(style="v5", layers=2).eval()
    agent, obs = observed(addrs, "torch-vlm", model)
    pixels = torch.randn(2, 3, 48)
    model.generate(prompt(2, 5), pixel_values=pixels, max_new_tokens=4)
    model.generate(prompt(2, 5, seed=3), pixel_values=pixels, max_new_tokens=4)
    obs.flush(10)

    def shows(samples):
        counts = {lab["stage"]: v for lab, v in series(
            samples, "inferscope_stage_duration_seconds_count", model="torch-vlm")}
        requests = sum(v for _, v in series(samples, "inferscope_requests_total",
                                            model="torch-vlm", status="ok"))
        out_tokens = sum(v for _, v in series(samples, "inferscope_request_tokens_total",
                                              model="torch-vlm", kind="output"))
        ttft = sum(v for _, v in series(samples, "inferscope_request_ttft_seconds_count",
                                        model="torch-vlm"))
        # 2 generates: one encoder, connector and prefill each; 3 decode forwards each
        return (counts.get("encoder") == 2 and counts.get("connector") == 2 and
                counts.get("backbone_prefill") == 2 and counts.get("backbone_decode") == 6 and requests == 4 and
                out_tokens == 16 and ttft == 4)
    try:
        wait_for(addrs["metrics"], "2 encoder/connector/prefill, 6 decode stages, 4 requests",
                 shows)
    except Failure:
        samples = scrape(addrs["metrics"])
        raise Failure("stages/requests: " + str(
            [(n, lab, v) for n, lab, v in samples if lab.get("model") == "torch-vlm" and
             ("stage" in n or "request" in n) and ("count" in n or "total" in n)])) from None
    obs.close()
    agent.close()


def check_explicit_api(addrs):
    """watch_moe() on a module nobody wrote for transformers, and record_topk() with ids a
    capacity limit dropped (-1) or that are out of range: counted as dropped, no crash."""

    class MyRouter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 6)

        def forward(self, x):
            return torch.topk(self.proj(x), 2, dim=-1).indices

    torch.manual_seed(5)
    router = MyRouter()
    agent, obs = observed(addrs, "torch-explicit", router, requests=False)
    obs.watch_moe(router, layer=7, num_experts=6)
    x = torch.randn(10, 16)
    ids = router(x)
    obs.record_topk(3, torch.tensor([[0, 1], [1, -1], [5, 9]]), num_experts=6)
    obs.end_step()  # record_topk's layer 3 is counted into the forward's step or this one
    obs.flush(10)
    truth = {7: {e: c for e, c in enumerate(torch.bincount(ids.reshape(-1), minlength=6)
                                             .tolist()) if c},
             3: {0: 1, 1: 2, 5: 1}}
    wait_counts_equal(addrs["metrics"], "torch-explicit", truth)
    wait_for(addrs["metrics"], "2 dropped tokens in layer 3", lambda s: sum(
        v for _, v in series(s, "inferscope_moe_dropped_tokens_total", model="torch-explicit",
                             layer=3)) == 2)
    for bad in (lambda: obs.watch_moe("router", 1, 4), lambda: obs.watch_moe(router, 7, 6),
                lambda: obs.watch_moe(router, 8, 0), lambda: obs.record_topk(99, ids)):
        try:
            bad()
        except (TypeError, ValueError):
            continue
        raise Failure("a bad watch_moe()/record_topk() call was accepted")
    obs.close()
    agent.close()


def check_hook_errors_never_reach_the_model():
    """A failing index extractor: the model's output is unchanged, the error is counted and
    reported once; close() removes every hook and restores generate()."""
    torch.manual_seed(6)
    model = hf.TinyLM(style="v4", layers=2).eval()
    ids = prompt(1, 4)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    agent = inferscope.Agent(collector="")
    auto = inferscope.torch.observe(model, agent, requests=False)
    try:  # a layer the layout sent to the collector does not have: a clear error, at once
        auto.watch_moe(model.model.layers[0].mlp.gate, layer=40, num_experts=8)
        raise Failure("watch_moe() of a layer outside the described layout was accepted")
    except ValueError:
        pass
    auto.close()
    obs = inferscope.torch.observe(model, agent, moe=False)

    def broken(*_):
        raise RuntimeError("extractor bug")
    obs.watch_moe(model.model.layers[0].mlp.gate, layer=40, num_experts=8, indices=broken)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), torch.no_grad():
        got = model(input_ids=ids).logits
        model(input_ids=ids)
    if not torch.equal(want, got):
        raise Failure("observing changed the model's output")
    if obs.stats()["hook_errors"] != 2 or err.getvalue().count("extractor bug") != 1:
        raise Failure(f"hook errors {obs.stats()['hook_errors']} (want 2), reported "
                      f"{err.getvalue().count('extractor bug')} times on stderr (want 1)")
    if "generate" not in vars(model):
        raise Failure("generate() was not wrapped")
    obs.close()
    if "generate" in vars(model) or any("forward" in vars(m) for m in model.modules()):
        raise Failure("close() left hooks or the generate() wrapper behind")
    calls = obs.stats()["moe_calls"]
    with torch.no_grad():
        model(input_ids=ids)
    if obs.stats()["moe_calls"] != calls:
        raise Failure("a closed observer still counts")
    agent.close()


def check_layer_and_step_ranges_keep_outputs():
    """observe(layer_ranges=True) (a range per decoder layer) and the per-step "forward" range
    change nothing the model computes: the logits are bit-identical (a hook that returned its
    range object would have replaced the layer's input)."""
    torch.manual_seed(7)
    model = hf.TinyLM(style="v5", layers=3).eval()
    ids = prompt(2, 5)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    agent = inferscope.Agent(collector="")
    obs = inferscope.torch.observe(model, agent, layer_ranges=True)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    st = obs.stats()
    obs.close()
    agent.close()
    if not torch.equal(want, got):
        raise Failure("layer / step ranges changed the model's output")
    if st["hook_errors"]:
        raise Failure(f"hook errors with layer ranges: {st}")


def check_step_ranges_follow_gpu_trace():
    """The per-step "forward" range (two C calls) opens while the agent traces the GPU
    (step_ranges=True, the default), on every step with "always", never with False; the
    agent's mode is read again at each generate(), and the range carries the request id."""
    torch.manual_seed(18)
    model = hf.TinyLM(style="v5", layers=2).eval()
    agent = inferscope.Agent(collector="")
    opened, mode = [], ["off"]
    prepared = agent._range_calls

    def counting(name, request_id=0):
        begin, end = prepared(name, request_id)

        def counted_begin():
            opened.append((name, request_id))
            begin()
        return counted_begin, end
    agent._range_calls = counting
    agent.gpu_trace_mode = lambda: mode[0]
    for setting, trace, want in ((True, "off", 0), (True, "sampled", 3), ("always", "off", 3),
                                 (False, "full", 0)):
        opened.clear()
        mode[0] = trace
        obs = inferscope.torch.observe(model, agent, step_ranges=setting)
        model.generate(prompt(1, 3), max_new_tokens=3)  # 3 forwards, request id 1
        if opened != [("forward", 1)] * want:
            raise Failure(f"step_ranges={setting!r}, GPU trace {trace}: ranges opened "
                          f"{opened}, want {want} of request 1")
        if setting is True and trace == "off":
            opened.clear()
            mode[0] = "full"  # switched at run time: the next generate() reads it
            model.generate(prompt(1, 3), max_new_tokens=2)
            if opened != [("forward", 2)] * 2:
                raise Failure(f"the GPU trace switched on between generate() calls: ranges "
                              f"opened {opened}, want 2 of request 2")
        obs.close()
    try:
        inferscope.torch.observe(model, agent, step_ranges="sometimes")
        raise Failure("step_ranges='sometimes' was accepted")
    except ValueError:
        pass
    agent.close()


def check_broken_extractor_counted():
    """The extractor's exception is counted in stats()['hook_errors'] (not raised)."""
    router = torch.nn.Linear(4, 4)
    agent = inferscope.Agent(collector="")
    obs = inferscope.torch.observe(router, agent, requests=False)

    def broken(*_):
        raise RuntimeError("extractor bug")
    obs.watch_moe(router, layer=0, num_experts=4, indices=broken)
    with contextlib.redirect_stderr(io.StringIO()):
        for _ in range(3):
            router(torch.randn(2, 4))
    if obs.stats()["hook_errors"] != 3:
        raise Failure(f"hook_errors {obs.stats()['hook_errors']}, want 3")
    obs.close()
    agent.close()


def main():
    global inferscope
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--library", required=True)
    ap.add_argument("--python-dir", required=True)
    args = ap.parse_args()
    os.environ["INFERSCOPE_AGENT_LIBRARY"] = str(pathlib.Path(args.library).resolve())
    sys.path.insert(0, str(pathlib.Path(args.python_dir).resolve()))
    import inferscope as mod
    import inferscope.torch  # noqa: F401
    inferscope = mod
    log(f"torch {torch.__version__}")

    h = Harness(pathlib.Path(tempfile.mkdtemp(prefix="inferscope-torch-")))
    failed = []
    try:
        collector = pathlib.Path(args.build_dir).resolve() / "collector" / "inferscope-collector"
        _, addrs = h.start_collector(collector, "collector", [
            # More models than the default bound of 16 (each check names its own).
            "--window", "1s", "--hot-windows", "2", "--per-expert-metrics", "--max-models",
            "64"])
        checks = {
            "counts_exact": lambda: check_counts_exact(addrs),
            "per_step_counts_exact": lambda: check_per_step_counts_exact(addrs),
            "inference_mode": lambda: check_inference_mode(addrs),
            "ids_passed_by_keyword": lambda: check_ids_passed_by_keyword(addrs),
            "mixed_layers_exact": lambda: check_mixed_layers_exact(addrs),
            "group_checks_later_ids": lambda: check_group_checks_later_ids(addrs),
            "group_split_by_new_layer": lambda: check_group_split_by_new_layer(addrs),
            "pending_bound_drops_counted": lambda: check_pending_bound_drops_counted(addrs),
            "ids_changed_in_place_dropped": lambda: check_ids_changed_in_place_dropped(addrs),
            "forward_taps_keep_fast_path": check_forward_taps_keep_fast_path,
            "steps_per_copy_validated": check_steps_per_copy_validated,
            "injected_skew_named": lambda: check_injected_skew_named(addrs),
            "memory_kv_and_ssm": lambda: check_memory_kv_and_ssm(addrs),
            "multimodal_stages_and_requests": lambda: check_multimodal_stages_and_requests(addrs),
            "explicit_api": lambda: check_explicit_api(addrs),
            "hook_errors_never_reach_the_model": check_hook_errors_never_reach_the_model,
            "layer_and_step_ranges_keep_outputs": check_layer_and_step_ranges_keep_outputs,
            "broken_extractor_counted": check_broken_extractor_counted,
            "step_ranges_follow_gpu_trace": check_step_ranges_follow_gpu_trace,
        }
        failed = run_checks(checks)
    finally:
        if failed:
            h.dump_logs()
        h.close()
    print("FAIL: " + ", ".join(failed) if failed else "PASS", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
