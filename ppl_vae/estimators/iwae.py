r"""The importance-weighted bound (Burda et al. 2016) and its doubly reparameterized gradient
(Tucker, Lawson, Gu & Maddison 2019).

With K reparameterized draws :math:`z_k = g_\phi(\epsilon_k, x)` and log weights
:math:`\log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k|x)`, the IWAE bound (Burda et al.
2016) is :math:`\hat{\mathcal L}_K = \log \frac1K \sum_k w_k`, and with the normalized weights
:math:`\tilde w_k = w_k / \sum_j w_j` its gradient is

.. math::
    \nabla \hat{\mathcal L}_K = \sum_k \tilde w_k \Big( \frac{\partial \log w_k}{\partial z_k}
        \frac{\partial z_k}{\partial \phi} - \frac{\partial \log q_\phi(z_k|x)}{\partial \phi}
        + \nabla_\theta \log p_\theta(x, z_k) \Big).

The score term :math:`\partial \log q_\phi(z|x)/\partial\phi` at fixed z has mean zero but
weighted by :math:`\tilde w_k` it does not vanish; as K grows the encoder's expected gradient
shrinks like 1/K while this noise shrinks only like :math:`1/\sqrt K`, so the encoder's
signal-to-noise ratio falls like :math:`1/\sqrt K` (Rainforth et al. 2018, "Tighter variational
bounds are not necessarily better"). Applying the reparameterization identity
:math:`\mathbb E_q[f(z)\,\partial_\phi \log q_\phi(z)] = \mathbb E_q[\partial_z f\,
\partial_\phi z]` to the score term gives the *doubly reparameterized* encoder gradient,
unbiased for the same quantity (Tucker et al. 2019, eq. 5):

.. math::
    \nabla_\phi \hat{\mathcal L}_K^{\mathrm{DReG}} = \sum_k \tilde w_k^2\,
        \frac{\partial \log w_k}{\partial z_k}\,\frac{\partial z_k}{\partial \phi},

computed as the gradient of :math:`\sum_k \mathrm{sg}(\tilde w_k^2) \log \bar w_k`, where
:math:`\log \bar w_k` is the log weight with q's parameters stopped (log q evaluated through
:math:`z_k` only: :func:`stop_score_terms`, the surrogate "sticking the landing" uses, Roeder et
al. 2017). The model's parameters keep the IWAE gradient :math:`\sum_k \tilde w_k
\nabla_\theta \log p_\theta(x, z_k)`. The two weightings apply to different parameters, so a
parameter that both model and guide read has no DReG gradient; :func:`check_disjoint` refuses
such a pair. As in the reference implementation, the identity is applied to each site's own
draw: where a guide site's distribution depends on another latent draw, stopping q's
parameters stops that dependence too, and the gradient is then the one-layer formula's.
"""

from __future__ import annotations

import math

import pyro.infer
import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, torch_item, torch_sum
from pyro.poutine.trace_struct import Trace

from ..pair.traces import PairTraces, is_latent
from ..utils.errors import EstimatorError


def stop_score_terms(guide_trace: Trace) -> None:
    """Give each reparameterized guide site the surrogate log q(z|x) − log q(z̄|x) +
    stop_grad(log q(z̄|x)), z̄ = stop_grad(z), as its ``entropy_term``: the value of log q and
    the gradient ∂ log q/∂z · ∂z/∂φ only (Roeder et al. 2017), scaled and masked as Pyro does."""
    for site in guide_trace.nodes.values():
        if not is_latent(site) or not site["fn"].has_rsample:
            continue
        fixed = site["fn"].log_prob(site["value"].detach())
        fixed = scale_and_mask(fixed, site["scale"], site["mask"])
        log_prob, score_function, _ = site["score_parts"]
        site["score_parts"] = ScoreParts(
            log_prob=log_prob,
            score_function=score_function,
            entropy_term=log_prob - fixed + fixed.detach(),
        )


def squared_weight_surrogate(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`\sum_k \mathrm{sg}(\tilde w_k^2) \log w_k` along ``dim`` (the particles), whose
    gradient through path-stopped log weights is the DReG encoder gradient (module doc)."""
    weights = torch.softmax(log_w.detach(), dim=dim)
    return (weights**2 * log_w).sum(dim)


def parameter_roles(model_trace: Trace, guide_trace: Trace) -> tuple[set[str], set[str]]:
    """(names of the parameters the guide reads, names of those only the model reads)."""
    guide = {n for n, s in guide_trace.nodes.items() if s["type"] == "param"}
    model = {n for n, s in model_trace.nodes.items() if s["type"] == "param"} - guide
    return guide, model


def check_disjoint(layout: PairTraces) -> None:
    """Refuse a pair whose model and guide read a common parameter (module doc)."""
    guide = {n for n, s in layout.guide.nodes.items() if s["type"] == "param"}
    shared = sorted(guide & {n for n, s in layout.model.nodes.items() if s["type"] == "param"})
    if shared:
        raise EstimatorError(
            f"parameter(s) {shared} are read by both the model and the guide; the dreg "
            "estimator weights the guide's gradient by the squared importance weights and the "
            "model's by the weights, so a shared parameter has no DReG gradient; give model and "
            "guide parameters of their own, or use estimator='iwae'"
        )


class IWAE_ELBO(pyro.infer.RenyiELBO):
    """The importance-weighted bound (Burda et al. 2016): ``RenyiELBO(alpha=0)``.

    Per datapoint (sites inside the data plate), L_K(x) = log (1/K) Σ_k p(x, z_k)/q(z_k|x)
    with K = ``num_particles`` reparameterized draws; its gradient is the IWAE gradient, each
    particle's weighted by its normalized importance weight. Latents outside every plate make
    the minibatch one joint importance weight, as Pyro computes it. Guide sites without
    ``rsample`` are refused: Pyro's surrogate term for them, α/(1 − α) · log q, vanishes at
    α = 0, so their parameters would get no gradient at all.
    """

    def __init__(
        self,
        num_particles: int = 2,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
    ):
        super().__init__(
            alpha=0,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )

    def log_weights(self, model, guide, args: tuple, kwargs: dict
                    ) -> tuple[torch.Tensor, set[str], set[str]]:
        """(log w_k = log p(x, z_k) − log q(z_k|x) with the particles on dim 0, per row where
        every site lies in the data plate, as ``RenyiELBO`` sums them; the names of the
        parameters the guide reads; those only the model reads)."""
        log_w, guide_names, model_names = [], set(), set()
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            particle = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    particle = particle + torch_sum(site["log_prob"], sum_dims)
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    particle = particle - torch_sum(site["score_parts"].entropy_term, sum_dims)
            log_w.append(particle)
            guide_reads, model_reads = parameter_roles(model_trace, guide_trace)
            guide_names |= guide_reads
            model_names |= model_reads
        log_w = log_w[0] if self.vectorize_particles else torch.stack(log_w)
        return log_w, guide_names, model_names

    def surrogates(self, model, guide, args: tuple, kwargs: dict
                   ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, set[str] | None]]]:
        r"""(minus the bound summed over the rows, [(a surrogate loss, the names of the
        parameters it differentiates, None for all)]): here one, :math:`-\sum_k
        \mathrm{sg}(\tilde w_k) \log w_k`, whose gradient is the IWAE gradient (module doc).
        The compiled step (``fit(compile=True)``) traces this; eagerly the estimator is
        ``RenyiELBO(alpha=0)``'s own ``loss_and_grads``."""
        log_w, _, _ = self.log_weights(model, guide, args, kwargs)
        weights = torch.softmax(log_w.detach(), dim=0)
        return -self._bound(log_w).sum(), [(-(weights * log_w).sum(), None)]

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)


class DReG_ELBO(IWAE_ELBO):
    """The IWAE bound (``RenyiELBO(alpha=0)``'s value) with the doubly reparameterized encoder
    gradient (module doc): ∇_φ = Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ for the guide's parameters,
    the IWAE gradient Σ_k w̃_k ∇_θ log p(x, z_k) for the model's, K = ``num_particles``.

    Per datapoint where every latent site lies in the data plate; with latents outside it the
    minibatch is one joint weight, as for :class:`IWAE_ELBO`. Guide sites
    without ``rsample`` have no path derivative and are refused before training.
    """

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = super()._get_trace(model, guide, args, kwargs)
        stop_score_terms(guide_trace)
        return model_trace, guide_trace

    def surrogates(self, model, guide, args: tuple, kwargs: dict
                   ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, set[str] | None]]]:
        """(minus the IWAE bound summed over the rows, [(minus the bound, the parameters only
        the model reads), (minus the squared-weight surrogate, the guide's parameters)])."""
        log_w, guide_names, model_names = self.log_weights(model, guide, args, kwargs)
        loss = -self._bound(log_w).sum()
        return loss, [(loss, model_names),
                      (-squared_weight_surrogate(log_w, dim=0).sum(), guide_names)]

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Minus the IWAE bound (summed over the rows); leaves the DReG gradient in ``.grad``
        of the guide's parameters and the IWAE gradient in that of the model's."""
        loss, parts = self.surrogates(model, guide, args, kwargs)
        store = pyro.get_param_store()
        for surrogate, names in parts:
            inputs = list({id(p): p for p in (store[n].unconstrained() for n in names)}.values())
            if inputs and surrogate.requires_grad:
                torch.autograd.backward(surrogate, inputs=inputs, retain_graph=True)
        return torch_item(loss)
