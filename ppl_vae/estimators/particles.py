r"""The particle engine: K draws of the whole guide q, scored under the model, per row and joint.

For particles :math:`k = 1..K` of q, with global latents :math:`\theta_k` (guide sites outside
the data plate, an autoguide's auxiliary sites among them) and local latents :math:`z_{n,k}`
(sites in the data plate), the log importance weight of the data set factorizes as

.. math:: \log w_k = \underbrace{\log p(\theta_k) - \log q(\theta_k)}_{\text{global}}
          + \sum_n \underbrace{\log p(x_n, z_{n,k} | \theta_k) - \log q(z_{n,k} | x_n,
          \theta_k)}_{\text{local, row } n}.

Every sample site counts as ``Trace_ELBO`` counts it (docs/pairs.md, "The rule"): in log q
every guide site, auxiliary sites, the ``log_density`` of Delta sites (the Jacobian of an
autoguide's constrained site) and guide factors included. Each global site is drawn once
per particle for the whole data set: the first batch draws it, later batches replay it, so no
number depends on the evaluation batch size.

Particles are vectorized under a plate at ``-(max_plate_nesting + 1)``. A pair whose networks
do not broadcast over that extra dim is run once per particle instead, with the same numbers
(:class:`ParticleLoopWarning` says so once).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from pyro.poutine.trace_struct import Trace

from ..pair.dataset import Batch, Dataset
from ..pair.traces import (
    PAIR_FAILURES,
    BroadcastError,
    PairTraces,
    as_batch,
    global_terms,
    is_deterministic,
    is_factor,
    is_guide_sample,
    is_guide_term,
    is_latent,
    is_likelihood,
    trace_pair,
    with_particles,
)
from ..utils.errors import PairError, first_line
from . import enumeration
from .kl import closed_form_kl
from .terms import GlobalTerms, ParticleTerms, check_total, concat, stack


class ParticleLoopWarning(UserWarning):
    """The pair does not broadcast over a particle dim, so particles are drawn one by one."""


def score(
    model_trace: Trace,
    guide_trace: Trace,
    layout: PairTraces,
    num_particles: int,
    rows: int,
    posteriors: bool = False,
) -> ParticleTerms:
    """The terms of one run of the pair (``num_particles`` particles vectorized, or 1).

    Every sample site's log-density counts, as Pyro computes it (``Trace.compute_log_prob``:
    scaled and masked): in the guide every site but a plate's subsample (observed sites and
    factors too), in the model the latents' priors, the observations and the factors. Each is
    split per row through the data plate and summed jointly outside it; nothing else is
    decided here, so the terms add up to what ``Trace_ELBO`` sums (checked on every call
    without enumeration, :func:`check_total`).

    Enumerated sites are summed exactly (:mod:`ppl_vae.estimators.enumeration`): the local terms
    are then expectations over the guide's enumerated values, and the log weight their exact sum."""
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    exact = enumeration.sums(model_trace, guide_trace, layout, num_particles, rows, posteriors)
    enumerated = set(enumeration.guide_enumerated(guide_trace)) if exact.enum_dims else set()
    local: dict[str, dict] = {"p": {}, "q": {}, "kl": {}}
    glob: dict[str, dict] = {"p": {}, "q": {}, "kl": {}}
    values, integrand = {}, []  # log p − log q of the non-enumerated sites, summed over y
    for name, site in guide_trace.nodes.items():
        if not is_guide_term(site):
            continue
        model_site = model_trace.nodes.get(name)
        latent = is_guide_sample(site) and model_site is not None and is_latent(model_site)
        closed = closed_form_kl(site, model_site) if latent else None
        if is_guide_sample(site):
            values[name] = site["value"]
        if not layout.is_local(site):
            glob["q"][name] = global_terms(site["log_prob"], layout, num_particles)
            glob["p"][name] = (global_terms(model_site["log_prob"], layout, num_particles)
                               if latent else 0 * glob["q"][name])
            glob["kl"][name] = None if closed is None else global_terms(closed, layout,
                                                                         num_particles)
            continue
        log_q = exact.local(site["log_prob"])
        if name in exact.priors:
            log_p = exact.priors[name]
        elif latent and name not in exact.absorbed:
            log_p = exact.local(model_site["log_prob"])
        else:  # auxiliary or a guide factor, or a prior credited to another site of its marginal
            log_p = torch.zeros_like(log_q)
        if name in exact.absorbed:
            closed = None  # a prior with enumerated parents has no registered closed form
        integrand += [log_p] if name in enumerated else [log_p, -log_q]
        local["q"][name], local["p"][name] = exact.mean(log_q), exact.mean(log_p)
        local["kl"][name] = None if closed is None else exact.mean(exact.local(closed))
    observed, factors, global_ll = {}, {}, torch.zeros(num_particles)
    for name, site in model_trace.nodes.items():
        if not is_likelihood(site) or name in exact.absorbed:
            continue
        if layout.is_local(site):
            log_p = exact.local(site["log_prob"])
            integrand.append(log_p)
            (factors if is_factor(site) else observed)[name] = exact.mean(log_p)
        else:
            global_ll = global_ll.to(site["log_prob"]) + global_terms(
                site["log_prob"], layout, num_particles
            )
    for name, log_p in exact.likelihood.items():  # observations with enumerated parents
        integrand.append(log_p)
        observed[name] = exact.mean(log_p)
    first = next(iter((observed | factors).values()), None)
    like = torch.zeros(num_particles, rows) if first is None else torch.zeros_like(first)
    log_lik = sum((observed | factors).values(), like)
    terms = ParticleTerms(
        log_lik,
        local["p"],
        local["q"],
        local["kl"],
        GlobalTerms(global_ll.to(log_lik), glob["p"], glob["q"], glob["kl"]),
        values,
        observed,
        factors,
        None if exact.log_q_enum is None else exact.log_sum(sum(integrand)),
        frozenset(n for n, v in values.items() if n not in enumerated
                  and not getattr(guide_trace.nodes[n]["fn"], "has_rsample", False)),
        exact.posteriors,
        {n: s["value"] for n, s in model_trace.nodes.items() if is_deterministic(s)},
    )
    if not exact.enum_dims:
        check_total(terms, model_trace, guide_trace)
    return terms


class ParticleSampler:
    """Draws K particles of q batch by batch, each global site once per particle.

    The first batch decides whether the particles are vectorized or looped (the pair's
    networks may not broadcast) and draws the global sites; later batches replay them.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        layout: PairTraces,
        num_particles: int,
        guide_sums: bool = True,
        posteriors: bool = False,
    ):
        self.model, self.guide, self.layout = model, guide, layout
        self.num_particles = num_particles
        # enumeration: the sites the model sums out always, the guide's marked ones if asked
        summed_in_guide = guide_sums and bool(enumeration.guide_enumerated(layout.guide))
        summed_in_model = bool(enumeration.model_enumerated(layout.model, layout.guide))
        self.enumerate = summed_in_guide or summed_in_model
        if self.enumerate:
            enumeration.check_enumeration(layout)
        self.guide_sums, self.posteriors = guide_sums, posteriors
        self.vectorized: bool | None = None
        self.replay: list[Trace] | None = None  # one trace (vectorized) or one per particle

    def terms(self, batch: Batch | torch.Tensor) -> ParticleTerms:
        """The terms of all K particles on ``batch`` (its rows), globals shared across calls."""
        batch = as_batch(batch)
        if self.vectorized is None:
            try:
                result = self._vectorized(batch)
                self.vectorized = True
                return result
            except PAIR_FAILURES as e:
                if isinstance(e, PairError) and not isinstance(e, BroadcastError):
                    raise
                warnings.warn(
                    f"the pair does not broadcast over a vectorized particle dim "
                    f"({type(e).__name__}: {first_line(e)}); drawing the {self.num_particles} "
                    "particles one at a time instead (same numbers, slower)",
                    ParticleLoopWarning,
                    stacklevel=3,
                )
                self.vectorized = False
                self.replay = None
        return self._vectorized(batch) if self.vectorized else self._looped(batch)

    def _vectorized(self, batch: Batch) -> ParticleTerms:
        k, mpn = self.num_particles, self.layout.max_plate_nesting
        traces = trace_pair(
            *self._wrapped(with_particles(self.model, k, mpn), with_particles(self.guide, k, mpn)),
            batch,
            None if self.replay is None else self.replay[0],
        )
        if self.replay is None:
            self.replay = [self._globals(traces[1])]
        return score(*traces, self.layout, k, batch.rows, self.posteriors)

    def _looped(self, batch: Batch) -> ParticleTerms:
        parts = []
        for i in range(self.num_particles):
            replay = None if self.replay is None or len(self.replay) <= i else self.replay[i]
            try:
                traces = trace_pair(*self._wrapped(self.model, self.guide), batch, replay)
            except PAIR_FAILURES as e:
                raise PairError(
                    f"running the pair on a batch of shape {batch.describe()} failed "
                    f"({type(e).__name__}: {first_line(e)})"
                ) from e
            if replay is None:
                self.replay = (self.replay or []) + [self._globals(traces[1])]
            parts.append(score(*traces, self.layout, 1, batch.rows, self.posteriors))
        return stack(parts, self.layout)

    def _wrapped(self, model: Callable, guide: Callable) -> tuple[Callable, Callable]:
        """The pair under parallel enumeration where it marks sites for it, the enumerated
        dims left of the particle plate."""
        if not self.enumerate:
            return model, guide
        first = -(self.layout.max_plate_nesting + 2)
        return enumeration.enumerate_pair(model, guide, first, self.guide_sums)

    def _globals(self, guide_trace: Trace) -> Trace:
        """A trace holding the guide's global sites, to replay on later batches."""
        kept = Trace()
        for name, site in guide_trace.nodes.items():
            if is_guide_sample(site) and not self.layout.is_local(site):
                kept.add_node(name, **site)
        return kept


def particle_terms(
    model: Callable,
    guide: Callable,
    batch: Batch,
    num_particles: int,
    layout: PairTraces,
    guide_sums: bool = True,
) -> ParticleTerms:
    """``num_particles`` particles of q on one batch, scored (globals drawn for this batch);
    ``guide_sums``: sum the guide's enumerated sites (else sample them)."""
    return ParticleSampler(model, guide, layout, num_particles, guide_sums).terms(batch)


def dataset_terms(
    model: Callable,
    guide: Callable,
    dataset: Dataset,
    num_particles: int,
    layout: PairTraces,
    batch_size: int,
    device: torch.device,
    guide_sums: bool = True,
) -> ParticleTerms:
    """K particles over every row of ``dataset``, batch by batch, each global drawn once per
    particle; local terms ``(K, N)`` in row order. Draw values are not kept."""
    sampler = ParticleSampler(model, guide, layout, num_particles, guide_sums)
    parts = [sampler.terms(batch.to(device)) for batch in dataset.batches(batch_size)]
    return concat(parts, 1, parts[0].globals, {})
