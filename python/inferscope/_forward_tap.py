"""Taps on a module's forward without forward hooks (inferscope.torch's per-layer capture).

A module with any forward hook is called by PyTorch through the slow half of
Module._call_impl (in torch 2.x: a closure, a set, an import and an is_compiling() call per
call, outside the hook itself); a module without hooks goes straight to self.forward. A tap
puts a forward on the instance that calls the tap and then the class's forward (or the
instance's own forward someone had put there, such as accelerate's), so the module keeps
PyTorch's fast path and the tap costs one Python call. remove() puts back what was there.

    handle = tap_forward(module, before=fn)   # fn(module, args, kwargs) before the forward
    handle = tap_forward(module, after=fn)    # fn(module, args, kwargs, output) after it
    handle = tap_forward(module, before=f, after=g, always=True)  # g also when it raises
    handle = capture_argument(module, sink, tag, 1, ("top_k_index",))  # sink += [tag, arg]
    handle.remove()

A tap's return value is ignored (it cannot replace inputs or outputs). Where no instance
forward was there before, the tap is a method bound to the module, so copy.deepcopy(module)
binds the copy's tap to the copy (a closure over the module would run the original's
forward). inspect.signature(module.forward) still gives the module's own signature.
"""

import types

__all__ = ["tap_forward", "capture_argument", "ForwardTap"]


class ForwardTap:
    """What tap_forward() returns: remove() takes the tap off (idempotent)."""

    __slots__ = ("module", "forward", "previous", "active")

    def __init__(self, module, previous):
        self.module, self.previous, self.forward, self.active = module, previous, None, True

    def remove(self):
        # Inactive first: a forward someone put over ours later still calls ours, which then
        # only passes the call on.
        self.active = False
        module = self.module
        if module is None:
            return
        self.module = None
        if module.__dict__.get("forward") is self.forward:
            if self.previous is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = self.previous


def tap_forward(module, before=None, after=None, always=False):
    """Calls before(module, args, kwargs) ahead of each forward of `module` and/or
    after(module, args, kwargs, output) after it; when the forward raises, after is called
    (with output None, then the exception goes on) only with both taps and always=True, so
    that every before has its after."""
    if before is None and after is None:
        raise ValueError("tap_forward() needs before= or after=")

    def make(handle, call):
        if before is not None and after is not None and always:
            def forward(self, *args, **kwargs):
                if not handle.active:
                    return call(self, *args, **kwargs)
                before(self, args, kwargs)
                out = None
                try:
                    out = call(self, *args, **kwargs)
                finally:
                    after(self, args, kwargs, out)
                return out
        elif before is not None and after is not None:
            def forward(self, *args, **kwargs):
                if handle.active:
                    before(self, args, kwargs)
                out = call(self, *args, **kwargs)
                if handle.active:
                    after(self, args, kwargs, out)
                return out
        elif before is not None:
            def forward(self, *args, **kwargs):
                if handle.active:
                    before(self, args, kwargs)
                return call(self, *args, **kwargs)
        else:
            def forward(self, *args, **kwargs):
                out = call(self, *args, **kwargs)
                if handle.active:
                    after(self, args, kwargs, out)
                return out
        return forward
    return _install(module, make)


def capture_argument(module, sink, tag, position, names, limit=None, overflow=None):
    """Before each forward of `module`, appends `tag` and then one argument of the call to the
    list `sink`: the positional argument at `position`, else the first of the keywords `names`
    (None when neither is there). Nothing else runs in the tap's own frame (no call of another
    Python function): the cheapest capture there is, for a hook that runs once per layer per
    step (inferscope.torch's top-k ids). With a `limit`, overflow() is called once `sink`
    holds more items than that (it should empty it)."""
    def make(handle, call):
        append = sink.append
        if limit is None:
            def forward(self, *args, **kwargs):
                if handle.active:
                    append(tag)
                    try:
                        append(args[position])
                    except IndexError:  # passed by keyword (or not at all)
                        append(next((kwargs[n] for n in names if n in kwargs), None))
                return call(self, *args, **kwargs)
        else:
            def forward(self, *args, **kwargs):
                if handle.active:
                    append(tag)
                    try:
                        append(args[position])
                    except IndexError:
                        append(next((kwargs[n] for n in names if n in kwargs), None))
                    if len(sink) > limit:
                        overflow()
                return call(self, *args, **kwargs)
        return forward
    return _install(module, make)


def _install(module, make):
    """Puts make(handle, call)'s forward on the instance (call: what was there before, called
    with the module first) and returns its handle."""
    previous = module.__dict__.get("forward")
    handle = ForwardTap(module, previous)
    if previous is None:
        call = type(module).forward  # unbound: called with the module the tap is bound to
    else:
        def call(_self, *args, **kwargs):  # an instance forward already bound to its module
            return previous(*args, **kwargs)
    forward = make(handle, call)
    if previous is None:
        forward.__wrapped__ = call  # signature(bound tap) = the class forward's, less self
        bound = types.MethodType(forward, module)
    else:
        # A plain function over the bound forward that was there (no self to drop).
        def bound(*args, **kwargs):
            return forward(module, *args, **kwargs)
        bound.__wrapped__ = previous
    handle.forward = bound
    module.__dict__["forward"] = bound
    return handle
