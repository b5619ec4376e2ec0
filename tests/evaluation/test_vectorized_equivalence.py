"""The vectorized particle code equals the naive per-sample loops that benchmarks/ times.

With the guide's reparameterization noise fixed (the same ε per draw for both contenders),
``log_likelihood`` (K particles in one pass) must equal a loop of K single traces, and the
per-draw gradients of ``gradient_draws`` (``is_grads_batched`` over chunks of draws) must equal
R separate ``loss_and_grads`` calls of Pyro's own ``Trace_ELBO`` and ``TraceMeanField_ELBO``.
"""

import pytest
import torch
from pyro.poutine.messenger import Messenger

import ppl_vae
from benchmarks.vectorized import naive_gradient_draws, naive_log_likelihood
from ppl_vae.evaluation.variance import gradient_draws

ROWS, X_DIM, Z_DIM = 12, 64, 3


class FixedNoise(Messenger):
    """The guide's site ``z`` = loc + scale · ε, ε taken in order from ``noise`` (T, N, d):
    one draw per call, or as many as the particle dim asks for when particles are vectorized.
    Used as a context around the whole computation, so that it sees the site after every
    plate (the particle plate included) has broadcast its distribution.
    """

    def __init__(self, noise: torch.Tensor):
        super().__init__()
        self.noise, self.used = noise, 0

    def _pyro_sample(self, msg):
        if msg["name"] != "z" or msg["value"] is not None:
            return
        normal = msg["fn"].base_dist
        if normal.loc.dim() == 3:  # (particles, rows, dims)
            count = normal.loc.shape[0]
            eps = self.noise[self.used : self.used + count]
        else:
            count, eps = 1, self.noise[self.used]
        assert self.used + count <= len(self.noise), "test noise exhausted"
        self.used += count
        msg["value"] = normal.loc + normal.scale * eps


@pytest.fixture
def setup(binary_digits):
    pair = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=X_DIM, z_dim=Z_DIM, hidden=16)
    x = binary_digits[0][:ROWS]
    return pair, x


def noise(draws: int) -> torch.Tensor:
    return torch.randn(draws, ROWS, Z_DIM, generator=torch.Generator().manual_seed(1))


def test_log_likelihood_equals_a_loop_over_samples(setup):
    (model, guide), x = setup
    k = 40
    eps = noise(k)
    # the vectorized path traces the pair once (its layout) before the K particles
    with FixedNoise(torch.cat([eps[:1], eps])) as fixed:
        vectorized = ppl_vae.log_likelihood(model, guide, x, k, particle_batch=k)
    assert fixed.used == k + 1  # every draw consumed, in the assumed order
    with FixedNoise(eps):
        naive = naive_log_likelihood(model, guide, x, k)
    assert torch.allclose(torch.tensor(vectorized.to_numpy()).float(), naive, atol=1e-4)
    # and the draws matter: other noise gives other values
    with FixedNoise(eps * 2):
        other = naive_log_likelihood(model, guide, x, k)
    assert not torch.allclose(other, naive, atol=1e-2)


@pytest.mark.parametrize("chunk", [1, 4])
def test_gradient_draws_equal_pyro_per_draw(setup, chunk):
    (model, guide), x = setup
    draws = 6  # with chunk 4: one full chunk and one partial
    eps = noise(draws)
    estimators = ("sampled", "analytic")
    with FixedNoise(torch.cat([eps[:1], eps])) as fixed:
        vectorized = gradient_draws(model, guide, x, estimators, draws, chunk=chunk)
    assert fixed.used == draws + 1
    for estimator in estimators:
        with FixedNoise(eps):
            naive = naive_gradient_draws(model, guide, x, estimator, draws)
        assert set(naive) == set(vectorized[estimator])
        for name, grads in naive.items():
            assert grads.abs().sum() > 0
            torch.testing.assert_close(vectorized[estimator][name], grads, rtol=1e-4, atol=1e-5)
    # the two estimators' decoder gradients agree (same reconstruction), encoder ones do not
    decoder = [n for n in naive if n.startswith("decoder")]
    encoder = [n for n in naive if n.startswith("encoder")]
    for name in decoder:
        torch.testing.assert_close(vectorized["sampled"][name], vectorized["analytic"][name])
    assert any(
        not torch.allclose(vectorized["sampled"][n], vectorized["analytic"][n]) for n in encoder
    )
