r"""The best q of the guide's own family at each datapoint, found by gradient ascent.

An amortized guide's Normal sites have parameters :math:`(\mu_\phi(x_n), \sigma_\phi(x_n))`
computed by the encoder. Here each datapoint's parameters become free tensors
:math:`(\mu_n, \log\sigma_n)`, initialized at the encoder's output and moved to maximize that
datapoint's ELBO with the decoder (the model's parameters) held fixed. The rows' problems are
independent, so they are solved together, vectorized: one Adam step moves every row, on the
ELBO with ``num_particles`` reparameterized draws per row and the closed-form KL where one is
registered (Cremer, Li & Duvenaud 2018, section 3: "optimal" q by local optimization; Kim et
al. 2018 refine the encoder's output the same way).

Supported are guides whose local sites are ``Normal`` (under ``.to_event`` or not; free
:math:`\log\sigma_n` per coordinate) or ``MultivariateNormal`` (free lower-triangular scale
:math:`L_n` per row, its diagonal through log), each with parameters that depend on the data
only: a site whose parameters depend on another site's draw (a hierarchical guide) has no
single per-datapoint Normal to optimize, and is refused, as are other families and global
sites.
"""

from __future__ import annotations

import torch
from pyro import distributions as dist
from pyro.poutine.messenger import Messenger

from ..estimators.particles import particle_terms
from ..estimators.terms import ParticleTerms
from ..pair.dataset import Batch
from ..pair.traces import PairTraces, is_guide_sample, trace_pair
from ..utils.errors import PairError

# site: (loc, raw scale, event dims, full covariance); raw scale: log σ (Normal), or the
# scale_tril with its diagonal through log (MultivariateNormal)
Parameters = dict[str, tuple[torch.Tensor, torch.Tensor, int, bool]]
NORMALS = (dist.Normal, torch.distributions.Normal)
MVNS = (dist.MultivariateNormal, torch.distributions.MultivariateNormal)


def _base(fn):
    """The distribution inside ``fn``'s ``Independent`` wrappers, and their event dims."""
    event = 0
    while isinstance(fn, torch.distributions.Independent):
        event += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, event


def encoder_output(guide, model, batch: Batch, layout: PairTraces) -> Parameters:
    """Each local Normal site's loc and log scale as the guide computes them for ``batch``
    (full shape: batch shape + event shape); refuses what :mod:`ppl_vae.evaluation.refine` cannot
    do."""
    if layout.global_sites():
        raise PairError(
            f"the guide has global sites {layout.global_sites()}; the amortization and "
            "approximation gaps are defined per datapoint, for guides with local latents only"
        )
    first = _parameters(guide, model, batch)
    second = _parameters(guide, model, batch)  # other draws: parameters must not change
    for name, (loc, raw, _, _) in first.items():
        if not (torch.equal(loc, second[name][0]) and torch.equal(raw, second[name][1])):
            raise PairError(
                f"the parameters of guide site {name!r} depend on the draws of other sites "
                "(a hierarchical guide); the per-datapoint optimum of its family is not "
                "defined by one Normal per site, so the gaps cannot be computed for it"
            )
    return first


def _parameters(guide, model, batch: Batch) -> Parameters:
    _, trace = trace_pair(model, guide, batch)
    found = {}
    for name, site in trace.nodes.items():
        if not is_guide_sample(site):
            continue
        base, event = _base(site["fn"])
        if type(base) not in NORMALS + MVNS:
            raise PairError(
                f"guide site {name!r} is a {type(base).__name__}; the per-datapoint optimum is "
                "computed for the Normal families only (dist.Normal, .to_event(...) allowed, "
                "and dist.MultivariateNormal)"
            )
        shape = site["fn"].batch_shape + site["fn"].event_shape
        loc = torch.broadcast_to(base.loc, shape).detach().clone()
        if type(base) in NORMALS:
            raw = torch.broadcast_to(base.scale, shape).detach().log()
            found[name] = (loc, raw, event, False)
        else:
            tril = torch.broadcast_to(base.scale_tril, shape + shape[-1:]).detach()
            diagonal = torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())
            found[name] = (loc, tril.tril(-1) + diagonal, event + 1, True)
    return found


def distribution(loc: torch.Tensor, raw: torch.Tensor, event: int, full: bool):
    """The Normal (or MultivariateNormal) with free parameters ``loc`` and ``raw``."""
    if full:
        tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        fn, event = dist.MultivariateNormal(loc, scale_tril=tril), event - 1
    else:
        fn = dist.Normal(loc, raw.exp())
    return fn.to_event(event) if event else fn


class Refined(Messenger):
    """Replaces the named guide sites' distributions by Normals with the given parameters."""

    def __init__(self, parameters: Parameters):
        super().__init__()
        self.parameters = parameters

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.parameters and not msg["is_observed"]:
            fn = distribution(*self.parameters[msg["name"]])
            msg["fn"] = fn.expand(msg["fn"].batch_shape)


def refined_guide(guide, parameters: Parameters):
    """``guide`` with its Normal sites' parameters replaced by ``parameters``."""

    def wrapped(*args, **kwargs):
        with Refined(parameters):
            return guide(*args, **kwargs)

    return wrapped


def elbo_draws(terms: ParticleTerms) -> torch.Tensor:
    """ELBO per particle and row ``(K, N)``: log p(x|z) minus the KL, closed-form where
    registered (else log q − log p)."""
    kl = sum((terms.kl(s, True) for s in terms.log_q), torch.zeros_like(terms.log_likelihood))
    return terms.log_likelihood - kl


def optimize(model, guide, batch: Batch, layout: PairTraces, start: Parameters, *,
             num_steps: int, lr: float, num_particles: int) -> tuple[Parameters, torch.Tensor]:
    """Adam on every row's ELBO from ``start``, the learning rate decaying linearly to 1% of
    ``lr``; returns the optimized parameters and the objective per step and row."""
    free = {n: (loc.clone().requires_grad_(), raw.clone().requires_grad_(), e, full)
            for n, (loc, raw, e, full) in start.items()}
    tensors = [t for loc, raw, _, _ in free.values() for t in (loc, raw)]
    optimizer = torch.optim.Adam(tensors, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1 - 0.99 * step / max(1, num_steps)
    )
    trace = []
    q = refined_guide(guide, free)
    for _ in range(num_steps):
        objective = elbo_draws(particle_terms(model, q, batch, num_particles, layout)).mean(0)
        grads = torch.autograd.grad(-objective.sum(), tensors)
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = grad
        optimizer.step()
        schedule.step()
        trace.append(objective.detach())
    done = {n: (loc.detach(), raw.detach(), e, full) for n, (loc, raw, e, full) in free.items()}
    return done, torch.stack(trace)
