"""Requests and multimodal stages of an observed model (inferscope.torch): one request
record per sequence of a generate() call (arrival, first token, finish, tokens), and the
encoder / connector / backbone stages as agent ranges (NVTX-named) with stage records timed
by CUDA events, sent once the events have completed (never waited for during a step)."""

import torch as _torch

from ._hook_time import timed
from .agent import now_ns

__all__ = ["Requests"]

_STAGE_EVENTS_MAX = 4096  # stage records waiting for their events: beyond, dropped and counted


class Requests:
    """current: the generate() being observed (a dict: request ids, arrival, first token,
    forwards so far), None between calls. stats: the observer's (stages_dropped,
    hook_ns_stage); hook_error(where, exc) counts and reports an error."""

    def __init__(self, agent, stats, hook_error):
        self.agent, self._stats, self._hook_error = agent, stats, hook_error
        self.current = None
        self._next_id = 1
        self.stage_events = []  # (request_id, stage, start_ns, end_ns, start_ev, end_ev)
        self._open_stage = {}

    def request_id(self):
        g = self.current
        return g["ids"][0] if g is not None else 0

    # [SECTION] generate() ---------------------------------------------------------------

    def begin(self, ids_in):
        """A generate() call starts: one request id per sequence of ids_in."""
        batch = ids_in.shape[0] if isinstance(ids_in, _torch.Tensor) and ids_in.dim() > 1 \
            else 1
        first = self._next_id
        self._next_id += batch
        self.current = {"ids": list(range(first, first + batch)), "arrival_ns": now_ns(),
                        "first_token_ns": 0, "forwards": 0}
        return self.current

    def forward(self):
        """A step of the current generate() starts."""
        g = self.current
        g["forwards"] += 1
        if g["forwards"] == 2 and g["first_token_ns"] == 0:
            # generate() synchronised on the first token (its stopping check) before calling
            # the model again: the first token is on the host now.
            g["first_token_ns"] = now_ns()

    def end(self, g, ids_in, mask, out, finish_ns, status):
        """The generate() call `g` returned `out` (or raised: status "error"): its requests."""
        self.current = None
        self.resolve_stages(wait=True)  # generate() has synchronised: these are done
        seqs = getattr(out, "sequences", out)
        prompt_len = ids_in.shape[-1] if isinstance(ids_in, _torch.Tensor) else 0
        if isinstance(mask, _torch.Tensor) and mask.dim() == 2:
            prompts = [int(v) for v in mask.sum(-1).tolist()]
        else:
            prompts = [prompt_len] * len(g["ids"])
        out_len = seqs.shape[-1] - prompt_len if isinstance(seqs, _torch.Tensor) else 0
        first = g["first_token_ns"] or (finish_ns if out_len > 0 else 0)
        for i, rid in enumerate(g["ids"]):
            self.agent.request(rid, arrival_ns=g["arrival_ns"], finish_ns=finish_ns,
                               first_token_ns=first, prompt_tokens=prompts[i],
                               output_tokens=max(0, out_len), status=status)

    # [SECTION] stages -------------------------------------------------------------------

    @timed("stage")
    def stage_begin(self, stage):
        try:
            scope = self.agent.range(stage, request_id=self.request_id())
            scope.__enter__()
            ev = None
            if _torch.cuda.is_available() and _torch.cuda.is_initialized():
                ev = _torch.cuda.Event(enable_timing=True)
                ev.record()
            self._open_stage[stage] = (scope, now_ns(), ev)
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"stage {stage}", e)

    @timed("stage")
    def stage_end(self, stage):
        try:
            opened = self._open_stage.pop(stage, None)
            if opened is None:
                return
            scope, start_ns, start_ev = opened
            scope.__exit__(None, None, None)
            end_ev = None
            if start_ev is not None:
                end_ev = _torch.cuda.Event(enable_timing=True)
                end_ev.record()
            wire_stage = stage
            if stage == "backbone":
                g = self.current
                wire_stage = "prefill" if g is None or g["forwards"] <= 1 else "decode"
            self.stage_events.append((self.request_id(), wire_stage, start_ns, now_ns(),
                                      start_ev, end_ev))
            if len(self.stage_events) > _STAGE_EVENTS_MAX:  # the GPU is far behind: drop
                self.stage_events.pop(0)
                self._stats["stages_dropped"] += 1
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"stage {stage}", e)

    def resolve_stages(self, wait):
        """Sends the stage records whose events have completed (all of them with wait)."""
        events = self.stage_events
        while events:
            rid, stage, start_ns, end_ns, start_ev, end_ev = events[0]
            gpu_ns, device = 0, "cpu"
            if end_ev is not None:
                if not wait and not end_ev.query():
                    return
                end_ev.synchronize()
                gpu_ns, device = int(start_ev.elapsed_time(end_ev) * 1e6), "gpu"
            events.pop(0)
            self.agent.stage(rid, stage, start_ns, end_ns, device=device, gpu_ns=gpu_ns)
