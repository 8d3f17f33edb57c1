"""inferscope.torch's per-expert counting: top-k expert ids counted on the device, K steps per
copy to the host, each step with its own row and step number.

The taps append each MoE layer's ids to `captured` ([row, ids, row, ids, ...]: the layer's
row in `layers`, then the router's own tensor; _forward_tap.capture_argument), and nothing
else. At the step's end (end_step) the usual decode step (as many items as the group's run,
the first ids of its shape) joins the group's run as captured, unchecked; at the group's end
ONE list compare checks every step's rows, ONE `stack` of the group's kept ids (which checks
that they are tensors of one shape) and ONE `scatter_add_` count every step into its row of a
[K, bins] int32 buffer (a row: per layer its experts, then one bin of dropped ids), ONE
asynchronous copy takes the rows to pinned host memory with an event, ONE `zero_()` clears
them, and once the event has completed (queried at a later step, never waited for) ONE C call
hands all the group's steps to the agent. A run that fails the group's checks is counted step
by step, each item checked as other steps are at their end. A step of other shapes is checked
at its end and counted: the same stack and scatter as a group of one step (a prefill whose
ids are large), or one `index_add_` per layer (layers out of order, of other expert counts or
id shapes, other devices). No host sync anywhere.

Keeping the router's tensors until the group's end is exact while the model does not write
into them afterwards. A model that reuses an ids tensor (two kept tensors at one address) is
caught at the group's end: that group is dropped and counted (stats()["steps_dropped"]), and
from then on each step's ids are copied at its end (one `cat`), so later steps stay exact.
"""

import collections
import functools
import operator
from array import array as _array

import torch as _torch

__all__ = ["ExpertCounts", "MoELayer", "STEPS_PER_COPY_MAX", "STEPS_PER_COPY_DEFAULT",
           "CAPTURED_MAX"]

STEPS_PER_COPY_MAX = 256  # the buffers are K rows: device [K, bins] int32, pinned the same
# observe()'s K. A group's fixed work (its ops, event, C call: several hundred us of host time
# on the H100 host) is paid once per K steps; 16 halves it per step against 8, for counts that
# reach the agent up to 16 steps late.
STEPS_PER_COPY_DEFAULT = 16
# Groups of steps whose counts may be in flight to the host at once: at least 8 steps and at
# least 2 groups; a group ending with this many in flight is dropped (counted), never waited.
_PENDING_STEPS = 8
_PENDING_GROUPS_MIN = 2
# Captured items (a row and an ids tensor each) held in one step before they are counted
# early: bounds what a step with very many MoE calls (steps="manual" without end_step()) keeps.
CAPTURED_MAX = 1 << 14
# A step whose ids (all its layers) number at most this many waits for the group's end (decode
# steps); a larger one (a prefill) is counted at its own end, so kept ids stay small.
_RUN_IDS_MAX = 1 << 15
_INT64 = _torch.int64
_Tensor = _torch.Tensor
# What the usual step's check reads of each id tensor, in C (map() over it: no Python frame
# per item).
_KIND = operator.attrgetter("__class__", "dtype", "shape")
_DATA_PTR = _Tensor.data_ptr


def normal_tensors(method):
    """Runs `method` outside inference mode: the buffers and the views of them it makes and
    keeps are normal tensors, updated in place both inside a forward under
    torch.inference_mode() and outside it (flush(), close(): an inference tensor, or a view
    made in inference mode, refuses in-place updates there)."""
    @functools.wraps(method)
    def normal(*args, **kwargs):
        with _torch.inference_mode(False):
            return method(*args, **kwargs)
    return normal


class MoELayer:
    """One observed MoE layer: where its top-k ids come from and where they are counted."""

    __slots__ = ("name", "layer", "num_experts", "top_k", "source", "offset", "trusted",
                 "shared_experts", "views", "row")

    def __init__(self, name, layer, num_experts, top_k, source, trusted, shared_experts=0):
        self.name, self.layer, self.num_experts, self.top_k = name, layer, num_experts, top_k
        self.source, self.trusted, self.shared_experts = source, trusted, shared_experts
        self.offset = 0  # first bin of this layer in a step's row of the device buffer
        self.row = 0  # its index in ExpertCounts.layers (the order of the rows' layer slices)
        self.views = ()  # its slice of each step row of the device buffer, made when used

    def __repr__(self):
        return (f"MoELayer({self.name!r}, layer={self.layer}, experts={self.num_experts}, "
                f"top_k={self.top_k}, source={self.source!r})")


class _Run:
    """Consecutive steps of a group (rows start .. start+count-1) whose ids have the same
    layers and size, counted together at the group's end. `items`: the steps' captured
    [row, ids, row, ids, ...] as the taps appended them (the router's own tensors), step after
    step; or, when `copied`, one copy of each step's ids (layer after layer)."""

    __slots__ = ("plan", "rows", "row_list", "n", "shape", "start", "count", "items", "copied",
                 "step_tokens", "items_per_step")

    def __init__(self, plan, rows, n, shape, start, copied, step_tokens):
        self.plan, self.rows, self.n, self.shape = plan, rows, n, shape
        self.row_list = list(rows)
        self.start, self.count, self.items, self.copied = start, 0, [], copied
        self.step_tokens = step_tokens  # tokens per layer (by row) of each step: a tuple
        self.items_per_step = 2 * len(rows)

    def restarted(self):
        """An empty run of the same steps from row 0: the next group's."""
        return _Run(self.plan, self.rows, self.n, self.shape, 0, self.copied, self.step_tokens)


class ExpertCounts:
    """The MoE layers of one observer and their counts; see the module's docstring.
    stats: the observer's stats dict (steps, steps_dropped, moe_calls, invalid_expert_ids,
    hook_ns_step_* are updated here); hook_error(where, exc) counts and reports an error."""

    def __init__(self, agent, steps_per_copy, stats, hook_error):
        self.agent, self.k, self._stats, self._hook_error = agent, steps_per_copy, stats, hook_error
        self._pending_max = max(_PENDING_GROUPS_MIN, -(-_PENDING_STEPS // steps_per_copy))
        self.layers = []  # MoELayer, in registration order
        self.by_layer = {}  # layer index -> MoELayer
        self.captured = []  # the step's [row, ids, ...], appended by the taps
        # Tokens routed through each layer (by row) in the current step: a list once counted
        # into, else a shared tuple (_no_tokens, or a run's step_tokens), never written.
        self._tokens = self._no_tokens = ()
        self._all_rows = ()  # (0, 1, .., layers - 1): a step that went through every layer
        self._step = 0
        self._counts = None  # device buffer [K, bins], int32: row j holds step j of the group
        self._slot = 0  # the row the current step counts into
        self._slot_views = ()  # self._counts[j] for each j, made when first used
        self._group_steps = []  # step numbers of the group's finished steps (rows 0..)
        self._group_tokens = []  # their tokens, len(self.layers) per step
        self._meta = None  # the layer arrays of the C call, per layer set
        self._ones = None
        self._ones_by_n = {}
        self._plans = {}  # rows of a step's ids -> (first row, layers, offset, experts) or None
        self._scatter_views = {}  # (plan, n, start, count) -> (target rows, ones)
        self._run = None
        # The router's ids are kept (not copied) until the group's end, until a model is seen
        # writing into them; that group is then dropped (counted).
        self._keep_ids = True
        self._group_spoiled = False
        self.pending = collections.deque()  # (steps, tokens, host rows, event or None, meta)
        self._free_host = []

    # [SECTION] layers and ids --------------------------------------------------------

    def register(self, entry):
        entry.offset = sum(e.num_experts + 1 for e in self.layers)
        entry.row = len(self.layers)
        self.layers.append(entry)
        self.by_layer[entry.layer] = entry
        self._no_tokens = (0,) * len(self.layers)
        self._tokens = [*self._tokens, 0] if any(self._tokens) else self._no_tokens
        self._all_rows = tuple(range(len(self.layers)))
        if self._counts is not None:  # grown in place: counts of this step are kept
            self._grow(self._counts.device)
        return entry

    def count(self, entry, ids):
        """Ids of any integer dtype and shape: a trusted layer's (a router's) are captured for
        the step's end like the taps'; others (watch_moe(), record_topk()) are range-checked
        and counted now."""
        try:
            if entry.trusted:
                captured = self.captured
                captured += (entry.row, ids)
                if len(captured) > CAPTURED_MAX:
                    self.overflow()
                return
            _check_integers(ids)
            n = ids.numel()
            if n == 0:
                return
            self._add_tokens(entry, ids.shape, n)
            counts = self._counts
            if counts is None or counts.device != ids.device:
                self._grow(ids.device)
            # Ids from outside: anything not in [0, E) lands in the layer's last bin
            # (dropped) instead of tripping a device-side assert.
            e = entry.num_experts
            flat = ids.reshape(-1).to(_INT64).clamp(-1, e).remainder(e + 1)
            self._layer_view(entry, self._slot).index_add_(0, flat, self._ones_n(n))
            self._stats["moe_calls"] += 1
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error(f"MoE layer {entry.layer}", e)

    def overflow(self):
        """The taps' bound: the step's captured ids are counted now."""
        try:
            self._take_captured(step_end=False)
        except Exception as e:  # noqa: BLE001 -- never into the model
            self._hook_error("MoE ids", e)

    def _take_captured(self, step_end):
        """Checks the step's captured ids and counts them: kept for the group's end (step_end,
        the usual step), or now. The usual step is checked in one go (one set of (class,
        dtype, shape) over them, made in C); anything else item by item (_take_checked)."""
        captured = self.captured
        if not captured:
            return
        rows, values = captured[0::2], captured[1::2]
        captured.clear()
        try:  # the usual step: int64 tensors of one shape [tokens, k]
            kinds = set(map(_KIND, values))
        except AttributeError:  # None, or not a tensor
            kinds = ()
        if len(kinds) == 1:
            cls, dtype, shape = next(iter(kinds))
            if cls is _Tensor and dtype is _INT64 and len(shape) == 2 and shape[0] and shape[1]:
                key = tuple(rows)
                if key == self._all_rows and not any(self._tokens):
                    self._tokens = [shape[0]] * len(key)  # every layer, once
                else:
                    step_tokens = self._mutable_tokens()
                    for row in key:
                        step_tokens[row] += shape[0]
                self._count_step(key, values, True, step_end)
                return
        self._take_checked(rows, values, step_end)

    def _join_usual_step(self):
        """The usual decode step joins the group's run as the taps captured it, unchecked:
        what a step's items hold is checked once per group, at its end (_flush_run: the rows
        in one list compare, the tensors' class, dtype and shape by the `stack` that counts
        them, in C); a run that fails there is counted step by step, each item checked
        (_replay_checked). Only the number of items (the run's layers), the first ids' shape
        and that nothing was counted earlier in the step are checked here."""
        run = self._run
        if run is None or run.copied or run.start + run.count != self._slot:
            return False
        captured = self.captured
        if len(captured) != run.items_per_step or self._tokens is not self._no_tokens:
            return False
        try:  # a prefill and the decode steps after it differ here (the tokens)
            if captured[1].shape != run.shape:
                return False
        except AttributeError:  # None, or not a tensor
            return False
        run.items += captured
        captured.clear()
        run.count += 1
        self._tokens = run.step_tokens
        self._stats["moe_calls"] += len(run.rows)
        return True

    def _mutable_tokens(self):
        tokens = self._tokens
        if tokens.__class__ is tuple:
            tokens = self._tokens = list(tokens)
        return tokens

    def _take_checked(self, rows, values, step_end):
        """_take_captured's general case: each item checked on its own."""
        tokens = self._mutable_tokens()
        tensors, kept_rows = [], []
        shape0, same_shape = None, True
        for row, ids, n in self._checked(rows, values):
            shape = ids.shape
            tokens[row] += self._tokens_of(self.layers[row], shape, n)
            if shape0 is None:
                shape0 = shape
            elif shape != shape0:
                same_shape = False
            tensors.append(ids)
            kept_rows.append(row)
        if tensors:
            self._count_step(tuple(kept_rows), tensors, same_shape, step_end)

    def _checked(self, rows, values):
        """(row, ids as int64, number of ids) for each (row, ids) that holds integer ids; a
        wrong one is counted as a hook error and left out, None and empty ones skipped."""
        for row, ids in zip(rows, values):
            if ids is None:
                continue
            try:
                if ids.__class__ is not _Tensor or ids.dtype is not _INT64:
                    _check_integers(ids)
                    ids = ids.to(_INT64)
                n = ids.numel()
            except Exception as e:  # noqa: BLE001 -- never into the model
                self._hook_error(f"MoE layer {self.layers[row].layer} ids", e)
                continue
            if n:
                yield row, ids, n

    def _add_tokens(self, entry, shape, n):
        self._mutable_tokens()[entry.row] += self._tokens_of(entry, shape, n)

    @staticmethod
    def _tokens_of(entry, shape, n):
        """The tokens of n ids of this shape: rows of top-k ids ([tokens, k]), or flat ids of
        the layer's top-k (taken from the first ids with rows when it was not given)."""
        k = shape[-1] if len(shape) > 1 else (entry.top_k or 1)
        if entry.top_k is None:
            entry.top_k = k
        return n // k

    def _count_step(self, key, tensors, same_shape, step_end):
        """Counts a step's checked ids (tensors[i] of layer row key[i])."""
        self._stats["moe_calls"] += len(tensors)
        try:
            if self._counts is None:
                self._grow(tensors[0].device)
            plan = self._plans.get(key, False)
            if plan is False:
                plan = self._plan(key)
            if plan is None or not same_shape:
                self._count_one_by_one(zip(tensors, key))
                return
            n = tensors[0].numel()
            if step_end and n * len(tensors) <= _RUN_IDS_MAX:
                self._join_run(plan, key, n, tensors)
            else:  # a group of one step, counted now
                self._scatter(plan, n, self._slot, 1, tensors)
        except (RuntimeError, IndexError):
            # Ids on another device than the buffer (a model moved, or split over devices), or
            # shapes that do not lay out as [layers, ids]: one layer at a time.
            self._count_one_by_one(zip(tensors, key))

    def _plan(self, key):
        """(first row, layers, first offset, experts) when the rows are consecutive layers of
        one expert count (their bins lie as [layers, experts + 1]); else None."""
        if len(self._plans) >= 64:
            self._plans.clear()
        entries = [self.layers[r] for r in key]
        experts = entries[0].num_experts
        plan = None
        if (key == tuple(range(key[0], key[0] + len(key))) and
                all(e.num_experts == experts for e in entries)):
            plan = (key[0], len(key), entries[0].offset, experts)
        self._plans[key] = plan
        return plan

    def _join_run(self, plan, key, n, tensors):
        run = self._run
        if run is None or run.plan is not plan or run.n != n or \
                run.start + run.count != self._slot:
            if run is not None:
                self._flush_run(tensors)
            shape = tensors[0].shape
            step_tokens = [0] * len(self.layers)
            for row in key:
                step_tokens[row] = self._tokens_of(self.layers[row], shape, n)
            run = self._run = _Run(plan, key, n, shape, self._slot, not self._keep_ids,
                                   tuple(step_tokens))
        if run.copied:  # the model writes into its ids later: a copy now (one cat)
            run.items.append(_torch.cat(tensors))
        else:
            for item in zip(key, tensors):
                run.items += item
        run.count += 1

    def _flush_run(self, newer=()):
        """Counts the run's steps into their rows (one cat, one scatter_add_). Two kept
        tensors at one address (among them and the next step's, `newer`) mean the model wrote
        into one after its step: the group is spoiled (_send_group drops it)."""
        run, self._run = self._run, None
        if run is None or not run.count:
            return
        if run.copied:
            tensors = run.items
        else:
            items = run.items
            if items[0::2] != run.row_list * run.count:  # a step's layers differ: replayed
                self._replay_checked(run)
                return
            tensors = items[1::2]
            try:
                ptrs = list(map(_DATA_PTR, tensors))
                ptrs += map(_DATA_PTR, newer)
            except TypeError:  # not a tensor
                self._replay_checked(run)
                return
            if len(set(ptrs)) != len(ptrs):
                self._ids_changed()
                return
        try:
            self._scatter(run.plan, run.n, run.start, run.count, tensors)
        except (RuntimeError, IndexError, TypeError):
            # Ids the usual steps' join did not check that fail here (not a tensor, not int64,
            # another shape), or ids on other devices: step by step, each checked.
            self._replay_checked(run)

    def _replay_checked(self, run):
        """Counts a run's steps one layer at a time into their rows, each tensor checked as
        _take_checked does, and sets each step's tokens from its own ids."""
        n_layers, n_rows = len(run.rows), len(self.layers)
        group_tokens = self._group_tokens
        per_step = run.items_per_step
        for i in range(run.count):
            if run.copied:  # checked at its step; one cat of its layers' ids
                rows, parts = run.rows, run.items[i].view(n_layers, -1).unbind(0)
            else:
                step = run.items[i * per_step:(i + 1) * per_step]
                rows, parts = step[0::2], step[1::2]
            slot = run.start + i
            tokens = [0] * n_rows
            pairs = []
            for row, ids, n in self._checked(rows, parts):
                tokens[row] += self._tokens_of(self.layers[row], ids.shape, n)
                pairs.append((ids, row))
            if len(group_tokens) >= (slot + 1) * n_rows:  # its step has ended
                group_tokens[slot * n_rows:(slot + 1) * n_rows] = tokens
            self._count_one_by_one(pairs, slot)

    def _ids_changed(self):
        self._group_spoiled = True
        self._keep_ids = False
        self._hook_error("kept top-k ids", RuntimeError(
            "the model changed a router's top-k ids in place after their step (two kept id "
            "tensors at one address): this group's steps are dropped (stats()['steps_dropped']); "
            "from now on each step's ids are copied at its end"))

    def _scatter(self, plan, n, start, count, tensors):
        """Counts `count` steps' ids (layer after layer, step after step; n ids per layer and
        step) into rows start.. of the buffer: one stack (which also checks that they are
        tensors of one shape), one scatter_add_."""
        _, n_layers, _, _ = plan
        idx = tensors[0] if len(tensors) == 1 else _torch.stack(tensors)
        if idx.dtype is not _INT64:
            raise TypeError(f"top-k ids of dtype {idx.dtype}")
        vkey = (plan, n, start, count)
        views = self._scatter_views.get(vkey)
        if views is None:  # made once per shape: a full group's is the usual one
            views = self._make_scatter_views(vkey)
        target, ones = views
        target.scatter_add_(2, idx.view(count, n_layers, n), ones)

    @normal_tensors
    def _make_scatter_views(self, vkey):
        (_, n_layers, offset, experts), n, start, count = vkey
        if len(self._scatter_views) >= 64:
            self._scatter_views.clear()
        views = self._scatter_views[vkey] = (
            self._counts[start:start + count].narrow(1, offset, n_layers * (experts + 1))
            .view(count, n_layers, experts + 1),
            self._ones_n(n).expand(count, n_layers, n))
        return views

    def _count_one_by_one(self, pairs, slot=None):
        """Counts (ids, layer row) pairs into step row `slot` (default: the current step's)
        one layer at a time: ids of any shape, on any device."""
        pairs = list(pairs)
        if not pairs:
            return
        device = pairs[0][0].device
        if (slot is None and device != self._counts.device and
                all(t.device == device for t, _ in pairs)):
            self._grow(device)  # the model moved: the buffer follows it
        counts = self._counts
        slot = self._slot if slot is None else slot
        for t, row in pairs:
            self._layer_view(self.layers[row], slot).index_add_(
                0, t.reshape(-1).to(counts.device), self._ones_n(t.numel()))

    # [SECTION] views and buffers --------------------------------------------------------

    def _slot_view(self, slot):
        """Step row `slot` of the device buffer (a view made once per row, when first used:
        an observer that only counts full groups never makes one)."""
        view = self._slot_views[slot]
        return view if view is not None else self._make_slot_view(slot)

    @normal_tensors
    def _make_slot_view(self, slot):
        view = self._slot_views[slot] = self._counts[slot]
        return view

    def _layer_view(self, entry, slot):
        """The layer's bins in step row `slot` (made once, when first used)."""
        view = entry.views[slot]
        return view if view is not None else self._make_layer_view(entry, slot)

    @normal_tensors
    def _make_layer_view(self, entry, slot):
        view = entry.views[slot] = self._slot_view(slot).narrow(0, entry.offset,
                                                                entry.num_experts + 1)
        return view

    def _ones_n(self, n):
        """A length-n view of a ones buffer, kept per n (a handful of batch shapes) so the hot
        path makes no new tensor."""
        view = self._ones_by_n.get(n)
        if view is not None:
            return view
        return self._new_ones_view(n)

    @normal_tensors
    def _new_ones_view(self, n):
        if self._ones.numel() < n:
            self._ones = _torch.ones(max(n, 2 * self._ones.numel()), dtype=_torch.int32,
                                     device=self._ones.device)
            self._ones_by_n.clear()
            self._scatter_views.clear()  # their ones are views of the old buffer
        if len(self._ones_by_n) >= 256:
            self._ones_by_n.clear()
        view = self._ones_by_n[n] = self._ones[:n]
        return view

    @normal_tensors
    def _grow(self, device):
        """(Re)allocates the buffer for every registered layer on `device`. The finished steps
        of the group are sent first (in the old layout); the step in progress keeps its counts
        (copied into row 0 of the new buffer, stream-ordered) and becomes row 0."""
        old = self._counts
        current = None
        if old is not None:
            if self.captured:
                self._take_captured(step_end=False)  # into the old buffer, copied below
            current = self._slot_view(self._slot)
            self._send_group()
        self._run = None
        self._scatter_views = {}
        size = sum(e.num_experts + 1 for e in self.layers)
        # int32: a step's count per expert stays far below 2**31, and the host reads the rows
        # as the C API's uint32 with no conversion.
        counts = _torch.zeros(self.k, size, dtype=_torch.int32, device=device)
        if current is not None and old.device == device:
            counts[0, :current.numel()].copy_(current)
        self._counts = counts
        self._slot = 0
        # Views made when first used (a view is a PyTorch op: tens of us on a GPU host).
        self._slot_views = [None] * self.k
        for e in self.layers:  # each layer's slice: its experts, then one bin for dropped ids
            e.views = [None] * self.k
        if self._ones is None or self._ones.device != device:
            self._ones = _torch.ones(1024, dtype=_torch.int32, device=device)
            self._ones_by_n = {}
        self._plans = {}
        self._free_host = []  # pinned buffers (and their events) of the old size are not reused
        arrays = (_array("I", [e.layer for e in self.layers]),
                  _array("I", [e.offset for e in self.layers]),
                  _array("I", [e.num_experts for e in self.layers]))
        self._meta = (len(self.layers), [a.buffer_info()[0] for a in arrays], size, arrays)
        return counts

    # [SECTION] steps and groups ---------------------------------------------------------

    def end_step(self, t, lap):
        """Ends a step: its captured ids are counted (kept for the group, usually), its step
        number and tokens join the group; the K-th step sends the group (_send_group).
        lap(key, t) adds the time since t to stats()[key] and returns now."""
        if self.captured and not self._join_usual_step():
            self._take_captured(step_end=True)
        step = self._step
        self._step += 1
        self._stats["steps"] += 1
        tokens = self._tokens
        if self._counts is None or not any(tokens):
            lap("hook_ns_step_count", t)
            return
        self._tokens = self._no_tokens
        self._group_steps.append(step)
        self._group_tokens += tokens
        if len(self._group_steps) < self.k:
            self._slot = len(self._group_steps)
            lap("hook_ns_step_count", t)
            return
        t = lap("hook_ns_step_count", t)
        self._send_group()
        t = lap("hook_ns_step_copy", t)
        self.drain(wait=False)
        lap("hook_ns_step_drain", t)

    def send_group_now(self):
        """Sends the finished steps of a partial group (flush, close, generate()'s end). A step
        in progress (ids counted, its end not reached) moves to row 0."""
        used = len(self._group_steps)
        if not used:
            return
        if self.captured:
            self._take_captured(step_end=False)
        in_progress = any(self._tokens)
        self._send_group()
        if in_progress:
            self._slot_view(0).copy_(self._slot_view(used))
            self._slot_view(used).zero_()

    def _send_group(self):
        """One asynchronous copy of the group's rows to the host, one event, one zero_(); the
        rows are sent to the agent once the event has completed (drain). With too many groups
        in flight (the device far behind the host) the group is dropped and counted instead:
        never a wait."""
        used = len(self._group_steps)
        if not used:
            return
        run = self._run
        if run is not None:
            self._flush_run()
            # The next group's steps join a run like this one from its first step on, instead
            # of its first step taking the checked path to start one.
            if run.copied == (not self._keep_ids):
                self._run = run.restarted()
        steps, tokens = self._group_steps, self._group_tokens
        self._group_steps, self._group_tokens = [], []
        self._slot = 0
        counts = self._counts
        rows = counts if used == self.k else counts[:used]
        spoiled, self._group_spoiled = self._group_spoiled, False
        if spoiled or len(self.pending) >= self._pending_max:
            self._stats["steps_dropped"] += used
            rows.zero_()
            return
        host, event = self._copy_to_host(rows)
        rows.zero_()  # stream-ordered after the copy
        self.pending.append((steps, tokens, host, event, self._meta))

    def _copy_to_host(self, rows):
        """(host tensor whose first rows will hold `rows`, an event completing with the copy, or
        None where the copy is synchronous)."""
        if not rows.is_cuda:
            return rows.clone(), None
        # Pinned buffer and event reused together (a new cudaEvent per copy cost host time
        # for nothing; at most _pending_max pairs ever exist).
        host, event = self._free_host.pop() if self._free_host else self._new_host_buffer()
        (host if rows.shape[0] == self.k else host[:rows.shape[0]]).copy_(rows,
                                                                           non_blocking=True)
        event.record()
        return host, event

    @normal_tensors
    def _new_host_buffer(self):
        return (_torch.empty(self._counts.shape, dtype=_torch.int32, pin_memory=True),
                _torch.cuda.Event())

    def pending_steps(self):
        return sum(len(p[0]) for p in self.pending)

    def drain(self, wait):
        """Sends each completed group: one C call for all its steps and layers, reading the
        host rows where the copy put them (int32 counts are the C API's uint32)."""
        pending = self.pending
        while pending:
            steps, tokens, host, event, meta = pending[0]
            if event is not None:
                if not wait and not event.query():
                    return
                event.synchronize()
            pending.popleft()
            n_layers, addr, row_size, _ = meta
            step_array = _array("Q", steps)
            try:
                token_array = _array("I", tokens)
            except OverflowError:  # more than 2**32 tokens in a step: saturate
                token_array = _array("I", [min(t, 2**32 - 1) for t in tokens])
            dropped = self.agent._expert_loads_steps(
                len(steps), step_array.buffer_info()[0], n_layers, addr[0], addr[1], addr[2],
                host.data_ptr(), row_size, token_array.buffer_info()[0])
            if dropped:
                self._stats["invalid_expert_ids"] += dropped
            if event is not None and meta is self._meta:
                self._free_host.append((host, event))


def _check_integers(ids):
    if not isinstance(ids, _torch.Tensor):
        raise TypeError(f"top-k ids must be a tensor, not {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == _torch.bool:
        raise TypeError(f"top-k ids must be integers, not {ids.dtype}")
