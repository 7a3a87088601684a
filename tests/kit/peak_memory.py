"""Peak bytes of the tensors an operation allocates, on any device, CPU included (no CUDA counters needed).

``with PeakMemory() as pm: f()`` counts every tensor storage created by a torch op inside the block while it is
alive (views share their base's storage and are counted once); ``pm.peak`` is the largest total reached between
ops. Inputs made before the block are not counted, so it is the operation's *extra* memory. Buffers a kernel frees
before returning (inside one op) are invisible, as they are to any between-op measure.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.refs: dict[int, list] = {}  # storage pointer -> [live tensors, bytes]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self.refs[key]
            self.current -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key in self.refs:
                self.refs[key][0] += 1
            else:
                if inputs is None:
                    inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                              if isinstance(a, torch.Tensor)}
                if key in inputs or st.nbytes() == 0:
                    continue  # a view or in-place result of a tensor made outside the block
                self.refs[key] = [1, st.nbytes()]
                self.current += st.nbytes()
                self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._release, key)
        return out
