"""The CUDA path: fit, evaluate and log_likelihood with everything on the GPU.

Skipped where no GPU is present (CI has none)."""

import numpy as np
import pyro

import ppl_vae
from models import bernoulli_vae
from tests.conftest import requires_cuda


@requires_cuda
def test_fit_evaluate_and_log_likelihood_on_cuda(binary_digits):
    train, test = binary_digits
    model, guide = pair = bernoulli_vae.make_pair()
    for module in pair.modules:
        module.to("cuda")
    result = ppl_vae.fit(model, guide, train, num_steps=50, device="cuda", seed=0)
    assert all(p.is_cuda for _, p in pyro.get_param_store().named_parameters())
    assert np.isfinite(result.history["elbo"]).all()
    terms = ppl_vae.evaluate(model, guide, test, num_particles=10, seed=0)
    ll = ppl_vae.log_likelihood(model, guide, test, num_samples=100, seed=0)
    assert len(terms) == len(ll) == test.shape[0]
    assert (ll > terms["elbo"] - 1.0).mean() > 0.9
