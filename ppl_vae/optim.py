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

:func:`adam_update` is the same update written as a function of tensors, for the compiled
step (``fit(compile=True)``), which runs it inside its graph on the optimizer's own state
tensors (:meth:`ForeachAdam.state_tensors`): the operations of ``torch.optim.Adam``'s
multi-tensor path, each step's bias corrections computed from the step counters in the graph,
and nothing applied (parameters, moments and counters unchanged) unless the loss and every
gradient are finite.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

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
        self._track(stepped)
        clip_norm = self.pt_clip_args.get("clip_norm")
        if clip_norm is not None:
            for p in stepped:
                clip_grad_norm_(p, clip_norm)
        self._optimizer.step(*args, **kwargs)

    def _track(self, params: list[torch.Tensor]) -> None:
        """Make ``params`` the ones the next step updates, restoring a waiting (loaded) state
        for each parameter seen for the first time."""
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(params, foreach=True, **self.pt_optim_args)
        for p in params:
            if p not in self._seen:
                self._seen[p] = None
                self._restore(p)
        self._optimizer.param_groups[0]["params"] = params

    def fusable(self) -> str | None:
        """Why :func:`adam_update` cannot stand in for this optimizer's step, or None: it
        takes ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad`` and ``clip_norm``."""
        other = set(self.pt_optim_args) - {"lr", "betas", "eps", "weight_decay", "amsgrad"}
        return f"Adam arguments {sorted(other)}" if other else None

    def state_tensors(self, params: list[torch.Tensor]) -> AdamTensors:
        """The moments and step counters of ``params``, created as ``torch.optim.Adam`` creates
        them on a first step (or restored from a loaded state), as the tensors that
        :func:`adam_update` updates in place; ``get_state()`` reads the same tensors."""
        self._track(list(params))
        group = self._optimizer.param_groups[0]
        for p in params:
            state = self._optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
        states = [self._optimizer.state[p] for p in params]
        beta1, beta2 = group["betas"]
        return AdamTensors(
            steps=[s["step"] for s in states],
            exp_avgs=[s["exp_avg"] for s in states],
            exp_avg_sqs=[s["exp_avg_sq"] for s in states],
            max_exp_avg_sqs=[s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
            settings=AdamSettings(beta1, beta2, group["eps"], group["weight_decay"],
                                  self.pt_clip_args.get("clip_norm")),
        )

    def lr(self) -> float:
        """The learning rate the next step uses."""
        if self._optimizer is None:
            return self.pt_optim_args.get("lr", 1e-3)
        return self._optimizer.param_groups[0]["lr"]

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


@dataclass(frozen=True)
class AdamSettings:
    """The constant arguments of an Adam step."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    clip_norm: float | None


@dataclass(frozen=True)
class AdamTensors:
    """Per parameter, in one order: the step counter (a 0-d tensor), the two moments and, for
    AMSGrad, the running maximum of the second; and the settings."""

    steps: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    max_exp_avg_sqs: list[torch.Tensor]
    settings: AdamSettings

    def flat(self) -> list[torch.Tensor]:
        """All the state tensors, in the order :meth:`unflat` reads them."""
        return [*self.steps, *self.exp_avgs, *self.exp_avg_sqs, *self.max_exp_avg_sqs]

    def unflat(self, tensors: list[torch.Tensor]) -> AdamTensors:
        """The same structure over ``tensors`` (e.g. the inputs of a traced function)."""
        n = len(self.steps)
        parts = [tensors[k * n:(k + 1) * n] for k in range(3)] + [tensors[3 * n:]]
        return AdamTensors(*parts, settings=self.settings)


def adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], state: AdamTensors,
                lr: torch.Tensor, apply: torch.Tensor) -> None:
    r"""One Adam step (Kingma & Ba 2015, Algorithm 1) of ``params`` in place, where ``apply``
    (a 0-d bool tensor) is True; otherwise nothing changes.

    The operations are those of ``torch.optim.Adam``'s multi-tensor path (so of
    ``pyro.optim.Adam``'s numbers): each gradient clipped to norm ≤ c as
    ``clip_grad_norm_`` does (``pyro.optim``'s per-parameter ``clip_norm``), L2 weight decay
    g ← g + λθ, then with t ← t + 1

    .. math::
        m \leftarrow m + (1-\beta_1)(g - m),\quad v \leftarrow \beta_2 v + (1-\beta_2)g^2,
        \quad \theta \leftarrow \theta - \frac{\mathrm{lr}}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    (AMSGrad: the running maximum of v in the denominator). ``lr`` is a 0-d float64 tensor, so
    that a compiled step reads it as an input rather than a constant.
    """
    settings = state.settings
    if settings.clip_norm is not None:
        grads = [_clipped(g, settings.clip_norm) for g in grads]
    if settings.weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=settings.weight_decay)
    steps = [t + apply.to(t.dtype) for t in state.steps]
    exp_avgs = torch._foreach_lerp(state.exp_avgs, grads, 1 - settings.beta1)
    exp_avg_sqs = torch._foreach_addcmul(torch._foreach_mul(state.exp_avg_sqs, settings.beta2),
                                         grads, grads, 1 - settings.beta2)
    t = [s.to(torch.float64) for s in steps]
    step_size = [-lr / (1 - torch.pow(settings.beta1, s)) for s in t]
    bias_correction2_sqrt = [(1 - torch.pow(settings.beta2, s)) ** 0.5 for s in t]
    denominators = exp_avg_sqs
    if state.max_exp_avg_sqs:
        denominators = torch._foreach_maximum(state.max_exp_avg_sqs, exp_avg_sqs)
        _write(state.max_exp_avg_sqs, denominators, apply)
    denominators = torch._foreach_add(
        torch._foreach_div(torch._foreach_sqrt(denominators), bias_correction2_sqrt),
        settings.eps)
    # addcdiv's order of operations, θ + (s·m)/d, with s a tensor (addcdiv takes a number)
    new_params = [p + (s * m) / d
                  for p, s, m, d in zip(params, step_size, exp_avgs, denominators, strict=True)]
    _write(params, new_params, apply)
    _write(state.exp_avgs, exp_avgs, apply)
    _write(state.exp_avg_sqs, exp_avg_sqs, apply)
    _write(state.steps, steps, apply)


def _clipped(grad: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """``clip_grad_norm_(p, clip_norm)``'s operations on one gradient, out of place."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([grad], 2.0)), 2.0)
    return grad * torch.clamp(clip_norm / (norm + 1e-6), max=1.0)


def _write(targets: list[torch.Tensor], values: list[torch.Tensor], apply: torch.Tensor) -> None:
    for target, value in zip(targets, values, strict=True):
        target.copy_(torch.where(apply, value, target))
