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
    handle.remove()

A tap's return value is ignored (it cannot replace inputs or outputs). Where no instance
forward was there before, the tap is a method bound to the module, so copy.deepcopy(module)
binds the copy's tap to the copy (a closure over the module would run the original's
forward). inspect.signature(module.forward) still gives the module's own signature.
"""

import types

__all__ = ["tap_forward", "ForwardTap"]


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
    previous = module.__dict__.get("forward")
    handle = ForwardTap(module, previous)
    if previous is None:
        call = type(module).forward  # unbound: called with the module the tap is bound to
    else:
        def call(_self, *args, **kwargs):  # an instance forward already bound to its module
            return previous(*args, **kwargs)
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
    elif after is not None:
        def forward(self, *args, **kwargs):
            out = call(self, *args, **kwargs)
            if handle.active:
                after(self, args, kwargs, out)
            return out
    else:
        raise ValueError("tap_forward() needs before= or after=")
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
