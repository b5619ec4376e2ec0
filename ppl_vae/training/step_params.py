"""Which parameters an SVI step read, found without an extra effect handler on every site.

Pyro's ``SVI.step`` wraps the whole ``loss_and_grads`` in ``poutine.trace(param_only=True)``
to learn which parameters to step: one more handler that every ``pyro.param`` and
``pyro.sample`` message of model and guide passes through (``pyro.module`` sends one message
per network parameter, on every call). The ELBO's own traces of model and guide record the
same param sites, so for ELBOs that build them with ``ELBO._get_traces`` (Trace_ELBO,
TraceMeanField_ELBO, RenyiELBO and ppl_vae's, not the JIT ones) the parameters can be read
from there. :class:`StepParams` checks that on the first step of a run, with both, and keeps
the capturing trace for good where the two differ (a custom ELBO that traces otherwise) and
for JIT ELBOs (which run ``_get_traces`` only while compiling), so the set, and so every
number, is ``SVI.step``'s either way. A decaying-average baseline's running average, which
``TraceGraph_ELBO`` reads with ``pyro.param`` outside the traces and replaces on every step,
has no gradient and is left out of both sets: no step moves it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro.infer
import torch
from pyro import poutine

from ..pair.dataset import Batch
from ..utils.params import BASELINE_AVERAGE


class StepParams:
    """Per run: ``trusted`` is None until a first step compared the ELBO's traces with
    Pyro's capturing trace, then whether they held the same parameters."""

    def __init__(self) -> None:
        self.trusted: bool | None = None

    def check(self, elbo: pyro.infer.ELBO) -> None:
        """A JIT ELBO runs ``_get_traces`` while compiling only: never trust its traces."""
        if any(cls.__name__.startswith("Jit") for cls in type(elbo).__mro__):
            self.trusted = False

    def loss_and_grads(self, elbo: pyro.infer.ELBO, model, guide, x: Batch
                       ) -> tuple[float, list[torch.Tensor]]:
        """``elbo.loss_and_grads`` on ``x`` and the parameters it read (each tensor once, in
        name order: one tensor may sit under two names, as AutoIAFNormal's
        ``_prototype_tensor`` does, and Pyro's SVI steps it once)."""
        if self.trusted is None:
            self.check(elbo)
        if self.trusted:
            with _recording(elbo) as seen:
                loss = elbo.loss_and_grads(model, guide, *x.args, **x.kwargs)
            return loss, _unique(seen)
        with poutine.trace(param_only=True) as capture, _recording(elbo) as seen:
            loss = elbo.loss_and_grads(model, guide, *x.args, **x.kwargs)
        captured = _unique({n: site["value"] for n, site in capture.trace.nodes.items()
                            if not n.startswith(BASELINE_AVERAGE)})
        if self.trusted is None:  # the first step
            found = _unique(seen)
            self.trusted = len(found) == len(captured) and all(
                a is b for a, b in zip(found, captured, strict=True))
        return loss, captured


@contextlib.contextmanager
def _recording(elbo: pyro.infer.ELBO) -> Iterator[dict]:
    """While active, the param sites of every trace pair ``elbo._get_traces`` yields, by name."""
    seen: dict[str, torch.Tensor] = {}
    get_traces = elbo._get_traces

    def recording(*args, **kwargs):
        for model_trace, guide_trace in get_traces(*args, **kwargs):
            for trace in (model_trace, guide_trace):
                for name, site in trace.nodes.items():
                    if site["type"] == "param":
                        seen[name] = site["value"]
            yield model_trace, guide_trace

    own = elbo.__dict__.get("_get_traces")
    elbo._get_traces = recording
    try:
        yield seen
    finally:
        if own is None:
            del elbo._get_traces  # the class's method again
        else:
            elbo._get_traces = own


def _unique(named: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The unconstrained tensors of ``named``'s values, each once, in name order."""
    return list({id(p): p for p in (named[n].unconstrained() for n in sorted(named))}.values())
