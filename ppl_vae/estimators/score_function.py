r"""Score-function gradients of guide sites without ``rsample``, and their variance reduction.

For a guide site y drawn without reparameterization (a discrete latent) the gradient of the
ELBO :math:`\mathbb E_q[f]`, :math:`f = \log p(x, \cdot) - \log q(\cdot|x)`, has the
score-function (REINFORCE) term (Williams 1992; Ranganath et al. 2014)

.. math:: \nabla_\phi \mathcal L = \mathbb E_q\big[\nabla_\phi f
          + \nabla_\phi \log q_\phi(y|\cdot)\; c(y)\big],

unbiased for any learning signal c(y) that adds to f only terms whose expectation given
y's parents does not depend on y. The estimators differ in c:

- Pyro's ``Trace_ELBO`` (``"sampled"``, ``"stl"``): every cost term in y's plate slice,
  :math:`c = \sum` log p − log q of the model's sites summed to y's plates (per row for a
  local y), so the noise of every other term of the row rides on ∇ log q(y).
- Pyro's ``TraceGraph_ELBO`` (``"graph"``): only the terms *downstream* of y in the
  dependency graph, those whose value depends on y (found by provenance tracking; Wingate et
  al. 2011), as in stochastic computation graphs (Schulman et al. 2015, Theorem 1):
  Rao-Blackwellization, since upstream and independent terms contribute zero in expectation
  and only noise. Minus a baseline b independent of y (Mnih & Gregor 2014, NVIL, §3.1):
  :math:`c = \text{downstream cost}(y) - b`. The baselines are Pyro's, per site with
  ``infer={"baseline": {...}}``: a decaying average of the downstream cost
  (``use_decaying_avg_baseline``, ``baseline_beta``), a network ``nn_baseline`` of
  ``nn_baseline_input`` trained on (cost − b)², or a ``baseline_value``.
- :class:`BaselineTraceGraph_ELBO` (``"graph_avg"``): ``TraceGraph_ELBO`` with a decaying
  average (β = ``baseline_beta``) at every score-function site that has no baseline of its own.

:class:`ScoreFunctionDraws` computes the same surrogates per draw and row at fixed parameters,
for :mod:`ppl_vae.evaluation.variance`: the pair is run once more on the particle engine's draws
under provenance tracking, and the baselines are read as the next step would use them, not updated.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyro.infer
import torch
from pyro.distributions.util import detach
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.tracegraph_elbo import TrackNonReparam, _get_baseline_options
from pyro.infer.util import MultiFrameTensor
from pyro.ops.provenance import detach_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from ..pair.dataset import Batch
from ..pair.traces import PairTraces, global_terms, is_guide_sample, local_terms, with_particles
from ..utils import params as param_io
from ..utils.errors import EstimatorError

if TYPE_CHECKING:
    from .terms import ParticleTerms


def average_baseline(beta: float) -> dict:
    """Pyro's baseline options for a decaying average of the downstream cost with decay β."""
    return {"use_decaying_avg_baseline": True, "baseline_beta": beta}


def lacks_baseline(site: dict) -> bool:
    """A guide site without ``rsample`` and without a baseline of its own."""
    return (is_guide_sample(site) and not getattr(site["fn"], "has_rsample", False)
            and not site["infer"].get("baseline"))


class BaselineTraceGraph_ELBO(pyro.infer.TraceGraph_ELBO):
    """``TraceGraph_ELBO`` with a decaying-average baseline (decay ``baseline_beta``) at every
    guide site without ``rsample`` that has no baseline of its own; sites with one keep theirs.
    The average lives in Pyro's param store (``__baseline_avg_downstream_cost_<site>``), so a
    checkpoint saves it and a resumed run continues it."""

    def __init__(self, *args, baseline_beta: float = 0.9, **kwargs):
        super().__init__(*args, **kwargs)
        self.baseline_beta = baseline_beta

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        for site in guide_trace.nodes.values():
            if lacks_baseline(site):
                site["infer"] = {**site["infer"], "baseline": average_baseline(self.baseline_beta)}
        return model_trace, guide_trace


class _Draws(Messenger):
    """Put given values at the guide's sample sites, as ``replay`` does but keeping each
    site's own ``infer`` (whose baseline inputs the rerun computes afresh); each value carries
    the provenance of its distribution's parameters, as a value drawn from it would."""

    def __init__(self, values: dict[str, torch.Tensor]):
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.values and not msg["is_observed"]:
            value = self.values[msg["name"]]
            with torch.no_grad():
                parents = get_provenance(msg["fn"].log_prob(value))
            msg["value"] = track_provenance(value, parents)
            msg["done"] = True


class ScoreFunctionDraws:
    """The score-function sites of R particles (``terms``, drawn by the particle engine), and
    what their gradient surrogates need: q's log-density (differentiable), Trace_ELBO's and
    TraceGraph_ELBO's learning signals, the baselines' options (module doc)."""

    def __init__(self, model: Callable, guide: Callable, x: Batch, terms: ParticleTerms,
                 layout: PairTraces, provenance: bool = True):
        """``provenance``: track which terms depend on which site, which TraceGraph_ELBO's rule
        (``surrogate(rao_blackwellized=True)``) needs; without it the pair runs faster and
        only Trace_ELBO's rule is available."""
        self.layout = layout
        self.particles, self.rows = terms.log_likelihood.shape
        k, mpn = self.particles, layout.max_plate_nesting
        with TrackNonReparam() if provenance else contextlib.nullcontext():
            guide_trace = pyro.poutine.trace(_Draws(terms.values)(with_particles(guide, k, mpn))
                                             ).get_trace(*x.args, **x.kwargs)
            model_trace = pyro.poutine.trace(
                pyro.poutine.replay(with_particles(model, k, mpn), trace=guide_trace)
            ).get_trace(*x.args, **x.kwargs)
        guide_trace, model_trace = map(prune_subsample_sites, (guide_trace, model_trace))
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        self.sites = {name: site for name, site in guide_trace.nodes.items()  # in program order
                      if name in terms.score_function}
        self.log_r = _compute_log_r(model_trace, guide_trace)  # Trace_ELBO's signal
        self.downstream: dict[str, MultiFrameTensor] = defaultdict(MultiFrameTensor)
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    for key in get_provenance(site["log_prob_sum"]):
                        self.downstream[key].add((site["cond_indep_stack"],
                                                  sign * site["log_prob"]))

    def surrogate(self, rao_blackwellized: bool, average: float | None = None) -> torch.Tensor:
        """Per particle and row ``(R, N)``: zero in value; its gradient plus that of the
        pathwise ELBO estimate (whose −log q(y) it cancels) is the estimator's: Trace_ELBO's,
        or with ``rao_blackwellized`` TraceGraph_ELBO's with the pair's baselines and, with
        ``average`` = β, a decaying average at the sites without one."""
        parts = []
        for name, site in self.sites.items():
            stack = site["cond_indep_stack"]
            log_q = detach_provenance(site["log_prob"])
            baseline, baseline_loss = 0.0, None
            if rao_blackwellized:
                cost = detach_provenance(self.downstream[name].sum_to(stack)).detach()
                options = site["infer"].get("baseline") or (
                    average_baseline(average) if average is not None else {})
                baseline, baseline_loss = self._baseline(name, options, cost)
            else:
                cost = detach_provenance(self.log_r.sum_to(stack))
            signal = (1 + cost - baseline).detach()
            parts.append(self._rows(site, (log_q - log_q.detach()) * signal))
            if baseline_loss is not None:  # a trained baseline's own gradient
                parts.append(-self._rows(site, baseline_loss - baseline_loss.detach()))
        return sum(parts[1:], parts[0])

    @staticmethod
    def _baseline(name: str, options: dict, cost: torch.Tensor):
        """(b, its training loss (cost − b)² or None) for a site with baseline ``options`` as
        Pyro's TraceGraph_ELBO takes them on the next step: the decaying average read, not
        updated."""
        site = {"infer": {"baseline": options}}
        nn, nn_input, use_average, _, value = _get_baseline_options(site)
        baseline, loss = torch.zeros_like(cost), None
        if use_average:
            stored = param_io.value(param_io.BASELINE_AVERAGE + name)
            if stored is not None:
                baseline = baseline + _broadcast(name, stored.detach(), cost)
        if nn is not None or value is not None:
            own = nn(detach(nn_input)) if nn is not None else value
            baseline = baseline + _broadcast(name, detach_provenance(own), cost)
            loss = (cost - baseline) ** 2
        return baseline, loss

    def _rows(self, site: dict, value: torch.Tensor) -> torch.Tensor:
        """A site-shaped tensor summed per particle and row; a global site's shared evenly."""
        k, n = self.particles, self.rows
        if self.layout.is_local(site):
            return local_terms(value, self.layout, k, n)
        return (global_terms(value, self.layout, k) / n).unsqueeze(1).expand(k, n)


def _broadcast(name: str, baseline: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """``baseline`` in the shape of ``cost``, or a clear error."""
    try:
        return torch.broadcast_to(baseline, cost.shape)
    except RuntimeError:
        raise EstimatorError(
            f"the baseline of site {name!r} has shape {tuple(baseline.shape)}, which does not "
            f"broadcast to its downstream cost's {tuple(cost.shape)} here (a decaying average "
            "keeps the shape of the training minibatch's cost); measure on minibatches of the "
            "size it was trained with"
        ) from None
