r"""KL warm-up (β annealing) by scaling the latent sites of both model and guide.

With every latent site scaled by β in the model *and* the guide, Trace_ELBO optimizes
:math:`\mathbb{E}_q[\log p(x|z)] + \beta\,\mathbb{E}_q[\log p(z) - \log q(z|x)]` and
TraceMeanField_ELBO :math:`\mathbb{E}_q[\log p(x|z)] - \beta\,\mathrm{KL}(q\|p)` (Pyro scales the
analytic KL by the *guide* site's scale only, so scaling the model alone would not anneal it).
β rises linearly from 1/W to 1 over the first W steps (Bowman et al. 2016; Sønderby et al.
2016), staying above 0 as ``poutine.scale`` requires.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


def kl_weight(step: int, warmup_steps: int) -> float:
    """β at 1-based ``step`` for a linear warm-up over ``warmup_steps`` (0: no warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


class LatentScale(Messenger):
    """Multiply the scale of every unobserved sample site by ``self.beta`` (> 0)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = msg["scale"] * self.beta


def anneal(fn: Callable, scale: LatentScale) -> Callable:
    """``fn`` with its latent sites scaled by ``scale.beta`` at call time."""

    def annealed(*args, **kwargs):
        with scale:
            return fn(*args, **kwargs)

    return annealed
