r"""Log-density terms of K particles, per row and joint, and how parts of them are put together.

:class:`ParticleTerms` holds what one scoring of the pair
(:func:`ppl_vae.estimators.particles.score`) gives: the local terms per particle and row ``(K,
N)``, the global ones per particle ``(K,)``, each site's log p and log q and, where one exists, its
closed-form KL. Batches are joined along the rows and one-particle runs along the particles,
keeping every site any part has: a site that a batch or particle lacks (a ``pyro.markov`` step past
its batch's longest sequence) scores 0 there, as it does in Pyro's sum. :func:`check_total` holds
the terms to that sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from pyro.poutine.trace_struct import Trace

from ..pair.traces import PairTraces
from ..utils.errors import ScoringError


def kl_term(terms, site: str, closed_form: bool) -> torch.Tensor:
    """A site's KL term: its closed form if asked for and available, else log q − log p."""
    closed = terms.closed_kl[site]
    if closed_form and closed is not None:
        return closed
    return terms.log_q[site] - terms.log_prior[site]


@dataclass(frozen=True)
class GlobalTerms:
    """Log-density terms of the global sites and global observations, each ``(K,)``."""

    log_likelihood: torch.Tensor
    log_prior: dict[str, torch.Tensor] = field(default_factory=dict)
    log_q: dict[str, torch.Tensor] = field(default_factory=dict)
    closed_kl: dict[str, torch.Tensor | None] = field(default_factory=dict)

    def log_weight(self) -> torch.Tensor:
        """log p(θ) − log q(θ) plus any observation outside the data plate, per particle."""
        return self.log_likelihood + sum(
            (self.log_prior[s] - self.log_q[s] for s in self.log_q),
            torch.zeros_like(self.log_likelihood),
        )

    def kl(self, site: str, closed_form: bool) -> torch.Tensor:
        """The KL term of global ``site`` per particle (see :func:`kl_term`)."""
        return kl_term(self, site, closed_form)


@dataclass(frozen=True)
class ParticleTerms:
    """Log-density terms per particle: local ones per row ``(K, N)``, global ones ``(K,)``.

    ``log_prior``/``log_q``/``closed_kl`` hold the local sites of q (an auxiliary site or a
    guide factor has log p = 0); ``globals`` the global ones. ``values`` are the guide's draws
    (particle dim first), ``deterministic`` the model's ``pyro.deterministic`` values.
    ``log_likelihood`` sums the model's observations (``observed``) and factors (``factors``)
    in the data plate: everything in log p that is not a latent's prior.
    ``score_function`` names the sampled sites without ``rsample`` (their gradient needs the
    score-function term); ``discrete_posteriors`` holds p(y_n = c | x_n, z_n, θ) of the
    model-enumerated sites where asked for (:func:`ppl_vae.estimators.enumeration.sums`).
    """

    log_likelihood: torch.Tensor  # observations and factors in the data plate
    log_prior: dict[str, torch.Tensor]
    log_q: dict[str, torch.Tensor]
    closed_kl: dict[str, torch.Tensor | None]
    globals: GlobalTerms
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's, in the rows
    summed_log_weight: torch.Tensor | None = None  # with guide-enumerated sites, (K, N)
    score_function: frozenset[str] = frozenset()  # sampled sites without rsample
    discrete_posteriors: dict[str, torch.Tensor] = field(default_factory=dict)  # (K, N, C)
    deterministic: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's values

    def log_weights(self) -> torch.Tensor:
        """Per row, log p(x_n, z_n | θ) − log q(z_n | x_n, θ): the local log weights ``(K, N)``.

        With guide-enumerated sites y, log Σ_y p(x_n, y, z_y | θ)/q(z_y | x_n, y, θ), which is
        above the ELBO terms' sum (their expectation over q(y|x_n)); see
        :mod:`ppl_vae.estimators.enumeration`."""
        if self.summed_log_weight is not None:
            return self.summed_log_weight
        return self.log_likelihood + sum(
            (self.log_prior[s] - self.log_q[s] for s in self.log_q),
            torch.zeros_like(self.log_likelihood),
        )

    def joint_log_weight(self) -> torch.Tensor:
        """log w_k of the whole data set (module doc), ``(K,)``."""
        return self.globals.log_weight() + self.log_weights().sum(1)

    def kl(self, site: str, closed_form: bool) -> torch.Tensor:
        """The KL term of local ``site`` per particle and row: closed-form if asked for and
        available, else log q − log p."""
        return kl_term(self, site, closed_form)

    def spread(self) -> ParticleTerms:
        """The global terms shared out evenly over the rows (1/N each), as local ones: for
        per-minibatch estimators, whose rows then sum to the joint terms."""
        n = self.log_likelihood.shape[1]
        g = self.globals

        def even(v):
            return None if v is None else (v / n).unsqueeze(1).expand(-1, n)

        return replace(
            self,
            log_likelihood=self.log_likelihood + even(g.log_likelihood),
            log_prior=self.log_prior | {s: even(v) for s, v in g.log_prior.items()},
            log_q=self.log_q | {s: even(v) for s, v in g.log_q.items()},
            closed_kl=self.closed_kl | {s: even(v) for s, v in g.closed_kl.items()},
            globals=GlobalTerms(torch.zeros_like(g.log_likelihood)),
            summed_log_weight=None if self.summed_log_weight is None
            else self.summed_log_weight + even(g.log_weight()),
        )


def check_total(terms: ParticleTerms, model_trace: Trace, guide_trace: Trace) -> None:
    """Refuse terms whose sum over particles differs from Pyro's own sum of the traces,
    Σ model log p − Σ guide log q (``Trace.log_prob_sum``), beyond float rounding (relative to
    the sites' summed magnitudes)."""
    sums = [s["log_prob_sum"] for t in (model_trace, guide_trace) for s in t.nodes.values()
            if s["type"] == "sample" and "log_prob_sum" in s]
    with torch.no_grad():
        pyros = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
        ours, pyros, scale = (float(v) for v in torch.stack([
            terms.joint_log_weight().double().sum(), torch.as_tensor(pyros).double(),
            1.0 + torch.stack([torch.as_tensor(v).double() for v in sums]).abs().sum(),
        ]))
    if not (math.isfinite(ours) and math.isfinite(pyros)):
        return  # a non-finite density is reported where it is used, with its site
    if abs(ours - pyros) > 1024 * torch.finfo(terms.log_likelihood.dtype).eps * scale:
        raise ScoringError(
            f"ppl_vae's split of the pair's log-density sums to {ours:.6g}, Pyro's "
            f"Trace_ELBO sum of the same traces is {pyros:.6g}; a site of this pair is "
            "scored in a way ppl_vae does not split (please report it with the pair)"
        )


def stack(parts: list[ParticleTerms], layout: PairTraces) -> ParticleTerms:
    """One-particle terms concatenated along the particle axis."""
    ndim = layout.max_plate_nesting
    values = {}
    for name, value in parts[0].values.items():
        shapes = [p.values[name] for p in parts]
        event = value.dim() - min(value.dim(), ndim)
        values[name] = torch.stack([_pad(v, ndim + event) for v in shapes])
    deterministic = {
        name: torch.stack([_pad(p.deterministic[name], ndim + value.dim() - min(value.dim(), ndim))
                           for p in parts])
        for name, value in parts[0].deterministic.items()
    }
    g = [p.globals for p in parts]
    sizes = [1] * len(parts)
    globals_ = GlobalTerms(
        _cat([x.log_likelihood for x in g], 0),
        *(_cat_dicts([getattr(x, f) for x in g], 0, sizes)
          for f in ("log_prior", "log_q", "closed_kl")),
    )
    return replace(concat(parts, 0, globals_, values), deterministic=deterministic)


def _cat(values: list, dim: int) -> torch.Tensor | None:
    return None if any(v is None for v in values) else torch.cat(values, dim)


def _cat_dicts(dicts: list[dict], dim: int, sizes: list[int], fill: float = 0.0) -> dict:
    """Each key's tensors concatenated along ``dim``; a part without the key (a site that
    its batch or particle does not have, e.g. a ``pyro.markov`` step past its batch's longest
    sequence) contributes ``fill`` over its ``sizes[i]`` entries: an absent site scores 0."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    merged = {}
    for key in keys:
        template = next(d[key] for d in dicts if d.get(key) is not None) if any(
            d.get(key) is not None for d in dicts) else None
        column = []
        for d, size in zip(dicts, sizes, strict=True):
            if key in d:
                column.append(d[key])
            elif template is not None:
                shape = list(template.shape)
                shape[dim] = size
                column.append(template.new_full(shape, fill))
        merged[key] = _cat(column, dim) if template is not None else None
    return merged


def concat(parts: list[ParticleTerms], dim: int, globals_: GlobalTerms, values: dict
            ) -> ParticleTerms:
    """The local terms of ``parts`` concatenated along ``dim`` (0: particles, 1: rows), the
    sites of all parts kept (see :func:`_cat_dicts`)."""
    sizes = [p.log_likelihood.shape[dim] for p in parts]

    def cat(field_: str, fill: float = 0.0) -> dict:
        return _cat_dicts([getattr(p, field_) for p in parts], dim, sizes, fill)

    return ParticleTerms(
        _cat([p.log_likelihood for p in parts], dim),
        cat("log_prior"),
        cat("log_q"),
        cat("closed_kl"),
        globals_,
        values,
        cat("observed"),
        cat("factors"),
        _cat([p.summed_log_weight for p in parts], dim),
        frozenset().union(*(p.score_function for p in parts)),
        cat("discrete_posteriors", float("nan")),
    )


def _pad(value: torch.Tensor, ndim: int) -> torch.Tensor:
    return value.reshape((1,) * max(0, ndim - value.dim()) + tuple(value.shape))
