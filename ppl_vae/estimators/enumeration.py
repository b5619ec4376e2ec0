r"""Exact sums over enumerated discrete latents, per datapoint.

A discrete latent marked ``infer={"enumerate": "parallel"}`` (or by
:func:`pyro.infer.config_enumerate`) is summed over its support instead of sampled, as Pyro's
:class:`~pyro.infer.TraceEnum_ELBO` does (Obermeyer et al. 2019, "Tensor variable elimination for
plated factor graphs"):

- **in the model** (the guide has no such site) it is marginalized out. For row :math:`n`, with
  :math:`\theta` the global and :math:`z_n` the guide's local latents,

  .. math:: \log p(x_n, z_n \mid \theta) = \log \sum_y p(y \mid \theta)\, p(x_n, z_n \mid y,
            \theta),

  computed by tensor variable elimination (:func:`pyro.ops.contract.contract_to_tensor`) down
  to the data plate, so each row keeps its own term. The factors that hold an observation and
  a guide site's prior split exactly into the marginal prior :math:`\log p(z_n) = \log\sum_y
  p(y)p(z_n|y)` (that site's KL term) and :math:`\log p(x_n | z_n) = \log p(x_n, z_n) - \log
  p(z_n)` (reconstruction);
- **in the guide** its expectation is an exact sum. With :math:`z_{n,y} \sim q(z|x_n, y)` drawn
  for every value :math:`y` at once (parallel enumeration),

  .. math:: \mathcal{L}_n = \sum_y q(y|x_n) \big[\log p(x_n, y, z_{n,y}) - \log q(y|x_n)
            - \log q(z_{n,y}|x_n, y)\big],

  so the KL term of the discrete site is :math:`\mathrm{KL}(q(y|x_n)\,\|\,p(y))` exactly, and
  the importance weight is :math:`w_n = \sum_y p(x_n, y, z_{n,y}) / q(z_{n,y}|x_n, y)`, unbiased
  for :math:`p(x_n)` (its :math:`q(y|x_n)` cancels), so that K such weights give the IWAE bound.

Enumerated sites must lie in the data plate: a global one (outside it) couples the rows, so it
has no per-datapoint split. A guide-enumerated site may sit in no plate but the data plate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.trace_struct import Trace

from ..pair.traces import (
    PARTICLE_PLATE,
    PairTraces,
    is_guide_sample,
    is_latent,
    is_likelihood,
    local_terms,
)
from ..utils.errors import PairError

PARALLEL = "parallel"


def marked(site: dict) -> str | None:
    """The enumeration strategy a site asks for (``"parallel"``, ``"sequential"``) or None."""
    return site["infer"].get("enumerate")


def model_enumerated(model_trace: Trace, guide_trace: Trace) -> list[str]:
    """Model latents marked for enumeration that the guide does not sample: summed out."""
    return [
        n for n, s in model_trace.nodes.items()
        if is_latent(s) and marked(s) and n not in guide_trace.nodes
    ]


def guide_enumerated(guide_trace: Trace) -> list[str]:
    """Guide sites marked for enumeration (``config_enumerate``): their expectation is a sum."""
    return [n for n, s in guide_trace.nodes.items() if is_guide_sample(s) and marked(s)]


def check_enumeration(layout: PairTraces) -> None:
    """Refuse enumeration that has no per-datapoint split: sequential, global, or (in the guide)
    nested in another plate; each with the fix."""
    sites = {n: layout.model.nodes[n] for n in model_enumerated(layout.model, layout.guide)}
    sites |= {n: layout.guide.nodes[n] for n in guide_enumerated(layout.guide)}
    for name, site in sites.items():
        if marked(site) != PARALLEL:
            raise PairError(
                f"site {name!r} asks for enumerate={marked(site)!r}; ppl_vae sums enumerated "
                "sites in parallel only: mark it infer={'enumerate': 'parallel'} "
                "(config_enumerate's default)"
            )
        if not site["fn"].has_enumerate_support:
            raise PairError(
                f"site {name!r} ({type(site['fn']).__name__}) is marked for enumeration but has "
                "no finite support to sum over; drop its 'enumerate' mark"
            )
        if not layout.is_local(site):
            raise PairError(
                f"the enumerated site {name!r} lies outside the data plate "
                f"{layout.data_plate!r}, so its sum couples all rows and has no per-datapoint "
                "value; move it into the data plate or sample it in the guide"
            )
    for name in guide_enumerated(layout.guide):
        plates = {f.name for f in layout.guide.nodes[name]["cond_indep_stack"] if f.vectorized}
        if plates - {layout.data_plate, PARTICLE_PLATE}:
            raise PairError(
                f"the guide enumerates site {name!r} inside plate(s) "
                f"{sorted(plates - {layout.data_plate})} nested in the data plate; enumerate it "
                "in the model instead (drop it from the guide) or sample it"
            )


def _sampled(msg: dict) -> dict:
    """``infer_config`` that switches a site's enumeration off: the site is sampled."""
    return {"enumerate": None} if msg["infer"].get("enumerate") else {}


def enumerate_pair(
    model: Callable, guide: Callable, first_dim: int, guide_sums: bool
) -> tuple[Callable, Callable]:
    """Model and guide under parallel enumeration: the guide's dims from ``first_dim`` leftward,
    the model's after them (Pyro's allocation). With ``guide_sums`` False the guide's marked
    sites are sampled, as ``Trace_ELBO`` samples them."""
    if not guide_sums:
        guide = poutine.infer_config(guide, _sampled)
    return EnumMessenger()(model), EnumMessenger(first_available_dim=first_dim)(guide)


@dataclass
class Sums:
    """The exact sums of one enumerated run, per particle and row.

    Attributes:
        enum_dims: dims left of the particle axis that enumerated sites use.
        absorbed: model sites whose log p entered a marginal (not scored one by one).
        likelihood: observed site(s) → their marginal, ``(*enum, K, N)``, for the factors that
            hold an observation (named by their observed sites, joined by ``+``).
        priors: guide site → its marginal prior (model-enumerated parents summed out).
        log_q_enum: Σ log q of the guide's enumerated sites, ``(*enum, K, N)``, or None.
        local: a data-plate tensor as ``(*enum, K, N)`` (:func:`~ppl_vae.pair.traces.local_terms`).
    """

    enum_dims: int
    absorbed: set[str]
    likelihood: dict[str, torch.Tensor]
    priors: dict[str, torch.Tensor]
    log_q_enum: torch.Tensor | None
    local: Callable[[torch.Tensor], torch.Tensor]
    posteriors: dict[str, torch.Tensor]

    def mean(self, cost: torch.Tensor) -> torch.Tensor:
        """E over the guide's enumerated sites of a ``(*enum, K, N)`` cost: ``(K, N)``."""
        if self.log_q_enum is None:  # nothing left to average: the enumerated axes are 1
            return cost.reshape(cost.shape[-2:])
        prob = self.log_q_enum.exp()
        weighted = torch.where(prob > 0, prob * cost, torch.zeros_like(prob))
        return weighted.sum(tuple(range(self.enum_dims)))

    def log_sum(self, integrand: torch.Tensor) -> torch.Tensor:
        """log Σ over the guide's enumerated values of exp(``integrand``): ``(K, N)``."""
        return torch.logsumexp(integrand.flatten(0, self.enum_dims - 1), 0)


def enum_dim_count(layout: PairTraces, *traces: Trace) -> int:
    """How many dims left of the particle axis the enumerated sites of ``traces`` use."""
    first = layout.max_plate_nesting + 2  # the particle plate sits at -(mpn + 1)
    dims = [
        -s["infer"]["_enumerate_dim"] - first + 1
        for t in traces for s in t.nodes.values()
        if s["type"] == "sample" and s["infer"].get("_enumerate_dim") is not None
    ]
    return max(dims, default=0)


def sums(
    model_trace: Trace,
    guide_trace: Trace,
    layout: PairTraces,
    num_particles: int,
    rows: int,
    posteriors: bool = False,
) -> Sums:
    """Marginalize the model-enumerated sites per row (module doc), ``(*enum, K, N)`` each.
    Both traces have their log-densities computed. With ``posteriors``, also p(y_n = c | x_n,
    z_n, θ) per particle, ``(K, N, C)``, for each model-enumerated site y in no plate but the
    data plate (the factors of its marginal, normalized over its support)."""
    enum_dims = enum_dim_count(layout, model_trace, guide_trace)

    def reduce(value: torch.Tensor) -> torch.Tensor:
        return local_terms(value, layout, num_particles, rows, enum_dims)

    if not enum_dims:
        return Sums(0, set(), {}, {}, None, reduce, {})
    guide_trace.pack_tensors()
    model_trace.pack_tensors(guide_trace.plate_to_symbol)
    summed = {
        model_trace.nodes[n]["infer"]["_enumerate_symbol"]
        for n in model_enumerated(model_trace, guide_trace)
    }
    factors = {}  # model site → its packed log-density, for sites touching a summed dim
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not (is_latent(site) or is_likelihood(site)):
            continue
        log_prob = site["packed"]["log_prob"]
        if summed.intersection(log_prob._pyro_dims):
            factors[name] = log_prob
    components = _components(factors, summed)
    target = frozenset(
        guide_trace.plate_to_symbol[p] for p in (PARTICLE_PLATE, layout.data_plate)
        if p in guide_trace.plate_to_symbol
    )

    def contract(names: list[str], keep: set | None = None) -> torch.Tensor:
        tree = OrderedDict()
        for n in names:
            tree.setdefault(_ordinal(model_trace, n), []).append(factors[n])
        present = set().union(*(factors[n]._pyro_dims for n in names))
        # a plate of size 1 (a one-row minibatch, one particle) is packed away: not a target
        term = contract_to_tensor(tree, summed & present, target & present, keep)
        return reduce(packed.unpack(term, model_trace.symbol_to_dim))

    likelihood, priors, conditionals = {}, {}, {}
    for names in components:
        observed = [n for n in names if is_likelihood(model_trace.nodes[n])]
        guided = [n for n in names if n in guide_trace.nodes]
        total = contract(names)
        if guided:
            prior = contract([n for n in names if n not in observed])
            priors[guided[0]] = prior  # the joint prior of several sites goes to the first
            if observed:
                likelihood["+".join(observed)] = total - prior
        elif observed:
            likelihood["+".join(observed)] = total
        for name in names if posteriors else ():
            site = model_trace.nodes[name]
            plates = {f.name for f in site["cond_indep_stack"] if f.vectorized}
            if marked(site) and name not in guide_trace.nodes and plates <= {
                layout.data_plate, PARTICLE_PLATE
            }:
                joint = contract(names, {site["infer"]["_enumerate_symbol"]}) - total
                conditionals[name] = _support_last(joint, site, layout)
    enumerated = guide_enumerated(guide_trace)
    log_q_enum = None
    if enumerated:
        log_q_enum = sum(reduce(guide_trace.nodes[n]["log_prob"]) for n in enumerated)
    return Sums(enum_dims, set(factors), likelihood, priors, log_q_enum, reduce, conditionals)


def _support_last(log_probs: torch.Tensor, site: dict, layout: PairTraces) -> torch.Tensor:
    """``(*enum, K, N)`` with one enumerated axis (``site``'s) as ``(K, N, C)`` probabilities."""
    axis = log_probs.dim() - 2 - (-site["infer"]["_enumerate_dim"] - layout.max_plate_nesting - 1)
    return log_probs.movedim(axis, -1).reshape(log_probs.shape[-2:] + (-1,)).exp()


def _ordinal(trace: Trace, name: str) -> frozenset:
    site = trace.nodes[name]
    frames = site["cond_indep_stack"]
    return frozenset(trace.plate_to_symbol[f.name] for f in frames if f.vectorized)


def _components(factors: dict[str, torch.Tensor], summed: set) -> list[list[str]]:
    """The factors grouped by shared summed dims (connected components), in trace order."""
    groups: list[tuple[set, list[str]]] = []
    for name, log_prob in factors.items():
        dims = summed.intersection(log_prob._pyro_dims)
        merged = [g for g in groups if g[0] & dims]
        for g in merged:
            groups.remove(g)
            dims |= g[0]
        names = [n for g in merged for n in g[1]] + [name]
        groups.append((dims, sorted(names, key=list(factors).index)))
    return sorted((g[1] for g in groups), key=lambda names: list(factors).index(names[0]))
