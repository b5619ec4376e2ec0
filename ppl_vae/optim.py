r"""``ForeachAdam``: Pyro's ``Adam`` with one multi-tensor update for all parameters.

Adam (Kingma & Ba 2015, Algorithm 1) updates every parameter θ elementwise from its own
gradient g: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr·m̂/(√v̂ + ε) with bias-corrected
m̂, v̂. Nothing couples two parameters, so Pyro's ``pyro.optim.Adam`` — one
``torch.optim.Adam`` per parameter, stepped in a Python loop — and a single
``torch.optim.Adam(foreach=True)`` over all of them compute the same numbers; the second
launches one multi-tensor kernel per operation instead of one small optimizer step per
parameter (measured: benchmarks/profile.py, docs/performance.md). It is ``fit``'s default.

It is a :class:`pyro.optim.PyroOptim`: called with the step's parameters, and its
``get_state()`` / ``set_state()`` use Pyro's format (per parameter name, that parameter's own
``torch.optim.Adam`` state dict), so a state saved by either optimizer loads into the other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import pyro
import pyro.optim
import torch
from torch.nn.utils import clip_grad_norm_


class ForeachAdam(pyro.optim.PyroOptim):
    """Adam over all the step's parameters at once; numerically ``pyro.optim.Adam``.

    Args:
        optim_args: ``torch.optim.Adam`` keyword arguments (``lr``, ``betas``, ``eps``,
            ``weight_decay``, ``amsgrad``), shared by every parameter.
        clip_args: ``{"clip_norm": c}`` clips each parameter's gradient to norm ≤ c before
            the update, as ``pyro.optim`` does (per parameter, not jointly).
    """

    def __init__(self, optim_args: dict, clip_args: dict | None = None):
        if not isinstance(optim_args, dict):
            raise TypeError("ForeachAdam takes one dict of Adam arguments for all parameters")
        unknown = set(clip_args or {}) - {"clip_norm"}
        if unknown:
            raise TypeError(f"ForeachAdam takes clip_args={{'clip_norm': c}} only, not {unknown}")
        super().__init__(torch.optim.Adam, dict(optim_args), clip_args)
        self._optimizer: torch.optim.Adam | None = None
        self._seen: dict[torch.Tensor, None] = {}  # every parameter stepped, in first-seen order

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        """One Adam step for each of ``params`` that has a gradient (others are left alone)."""
        stepped = [p for p in params if p.grad is not None]
        if not stepped:
            return
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(stepped, foreach=True, **self.pt_optim_args)
        for p in stepped:
            if p not in self._seen:  # first sight: restore a waiting state if any
                self._seen[p] = None
                self._restore(p)
        clip_norm = self.pt_clip_args.get("clip_norm")
        if clip_norm is not None:
            for p in stepped:
                clip_grad_norm_(p, clip_norm)
        self._optimizer.param_groups[0]["params"] = stepped
        self._optimizer.step(*args, **kwargs)

    def get_state(self) -> dict:
        """Per parameter name, the state dict its own ``torch.optim.Adam`` would have."""
        store = pyro.get_param_store()
        return {store.param_name(p): self._single(p).state_dict() for p in self._seen}

    def _single(self, p: torch.Tensor) -> torch.optim.Adam:
        """A one-parameter Adam sharing ``p``'s moments (for Pyro's state format)."""
        single = torch.optim.Adam([p], foreach=True, **self.pt_optim_args)
        if self._optimizer is not None and p in self._optimizer.state:
            single.state[p] = self._optimizer.state[p]
        return single

    def _restore(self, p: torch.Tensor) -> None:
        name = pyro.get_param_store().param_name(p)
        state = self._state_waiting_to_be_consumed.pop(name, None)
        if state is None:
            return
        single = torch.optim.Adam([p], foreach=True, **self.pt_optim_args)
        # a copy: torch would alias the caller's tensors and step them in place
        single.load_state_dict(copy.deepcopy(state))  # moments cast to p's dtype and device
        if p in single.state:
            self._optimizer.state[p] = single.state[p]
