"""The benchmark's Bernoulli VAE in NumPyro, trained by its jitted ``SVI.update``.

The same architecture as ``models/bernoulli_vae.py`` (``Linear → Softplus → Linear`` decoder;
encoder ``Linear → Softplus`` then a loc head and a softplus(·) + 10⁻⁴ scale head; N(0, I)
prior), written as NumPyro's own VAE example writes it (``jax.example_libraries.stax`` nets
registered with ``numpyro.module``), with ``Trace_ELBO`` (sampled) or ``TraceMeanField_ELBO``
(analytic) and ``numpyro.optim.Adam``. Its initial weights are NumPyro's, not the torch pair's;
only the time per step is compared.

Importing this module needs the optional ``bench`` extra (``pip install -e '.[bench]'``,
``make bench-peers``); :func:`available` says whether it is installed. XLA is asked for one
thread (``XLA_FLAGS``) before JAX is imported, as torch runs on one thread here.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np

MIN_SCALE = 1e-4


def available() -> bool:
    """Whether numpyro and jax are installed (the ``bench`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in ("numpyro", "jax"))


def _jax():
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    return jax


def backend() -> str:
    """JAX's version, backend and devices, for the benchmark's header."""
    jax = _jax()
    return f"jax {jax.__version__} ({jax.default_backend()}, {jax.devices()})"


def run(x_dim: int, hidden: int, z_dim: int, batches: list[np.ndarray], estimator: str,
        seed: int = 0, lr: float = 1e-3) -> float:
    """Train on ``batches``, reading each step's loss as a float (as the other contenders
    do); returns the clock after the first step (compilation done)."""
    jax = _jax()
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

    encoder = stax.serial(
        stax.Dense(hidden), stax.Softplus, stax.FanOut(2),
        stax.parallel(stax.Dense(z_dim),
                      stax.serial(stax.Dense(z_dim), stax.Softplus,
                                  stax.elementwise(lambda s: s + MIN_SCALE))),
    )
    decoder = stax.serial(stax.Dense(hidden), stax.Softplus, stax.Dense(x_dim))
    rows = batches[0].shape[0]

    def model(x):
        decode = numpyro.module("decoder", decoder, (rows, z_dim))
        with numpyro.plate("data", rows):
            prior = dist.Normal(jnp.zeros(z_dim), jnp.ones(z_dim)).to_event(1)
            z = numpyro.sample("z", prior)
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    def guide(x):
        encode = numpyro.module("encoder", encoder, (rows, x_dim))
        with numpyro.plate("data", rows):
            loc, scale = encode(x)
            numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

    elbo = {"sampled": Trace_ELBO, "analytic": TraceMeanField_ELBO}[estimator]()
    svi = SVI(model, guide, numpyro.optim.Adam(lr), elbo)
    data = [jnp.asarray(b) for b in batches]
    state = svi.init(jax.random.PRNGKey(seed), data[0])
    update = jax.jit(svi.update)
    first = math.nan
    for x in data:
        state, loss = update(state, x)
        float(loss)
        first = time.perf_counter() if math.isnan(first) else first
    return first
