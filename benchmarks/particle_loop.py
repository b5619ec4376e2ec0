"""What a pair that does not broadcast over particles costs to evaluate: ``vi_diagnostics``
with 1,000 samples on the Bayesian-regression tutorial's pair (a ``PyroModule[nn.Linear]``
whose sampled weight cannot take a leading particle dim, so ppl_vae draws the particles one
at a time), against Pyro's own loop over the same 1,000 particles (``Trace_ELBO(
num_particles=1000).loss``, one guide and one model trace per particle) and against the same
model written to broadcast (vectorized particles). Interleaved repeats, ratios per repeat.

``python -m benchmarks.particle_loop [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.nn import PyroModule, PyroSample

import ppl_vae


class TutorialRegression(PyroModule):
    """The tutorial's model: y ~ Normal(linear(x), sigma), the layer's weights sampled."""

    def __init__(self, features: int):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](features, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def broadcasting(x, y=None):
    """The same model written to broadcast over a leading particle dim (its own sites)."""
    sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    mean = (x * weight).sum(-1) + bias  # the particle plate gives them the shape (K, 1, ...)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    x = torch.randn(170, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(170)
    model = TutorialRegression(3)
    guide = AutoDiagonalNormal(model)
    ppl_vae.fit(model, guide, (x, y), num_steps=300, lr=0.05, seed=0)
    twin = AutoDiagonalNormal(broadcasting)
    ppl_vae.fit(broadcasting, twin, (x, y), num_steps=300, lr=0.05, seed=0)
    times: dict[str, list[float]] = {"looped": [], "pyro_loop": [], "vectorized": []}
    for rep in range(repeats):
        for name, run in (
            ("looped", lambda rep=rep: ppl_vae.vi_diagnostics(model, guide, (x, y), 1000,
                                                              seed=rep)),
            ("pyro_loop", lambda: pyro.infer.Trace_ELBO(num_particles=1000).loss(
                model, guide, x, y)),
            ("vectorized", lambda rep=rep: ppl_vae.vi_diagnostics(broadcasting, twin, (x, y),
                                                                  1000, seed=rep)),
        ):
            started = time.perf_counter()
            with torch.no_grad():
                run()
            times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        print(f"{name:>10}: median {statistics.median(values):.2f} s "
              f"(min {min(values):.2f}, max {max(values):.2f})")
    for other in ("pyro_loop", "vectorized"):
        ratios = [a / b for a, b in zip(times["looped"], times[other], strict=True)]
        print(f"looped / {other}: median {statistics.median(ratios):.1f} "
              f"(min {min(ratios):.1f}, max {max(ratios):.1f})")


if __name__ == "__main__":
    main()
