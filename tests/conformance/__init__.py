"""Conformance pairs: model/guide pairs adapted minimally from Pyro's own examples and tutorials.

Each module of this package builds one family of pairs from a named file of pyro-ppl/pyro
(commit ff6ae1c9572591791aae8842bcd702fcf0b46fd6, 2024-10-24) and says in its docstring what
was changed. A builder returns a :class:`Pair`: the model, the guide, the ``data`` argument as
ppl_vae takes it (a tensor passed as ``model(x)``, a tuple of per-row arrays passed
positionally, or a dict of per-row arrays passed by keyword), optional ``model_kwargs``, and,
where one exists, an independent truth (a closed-form log evidence, exact posterior moments).

Where there is no closed form, the reference is Pyro's own estimator at the current
parameters: :func:`pyro_elbo` (``-Trace_ELBO().loss`` over the whole data set) and
:func:`pyro_iwae` (``-RenyiELBO(alpha=0).loss``, the importance-weighted bound), each with a
Monte Carlo standard error. Nothing here imports ppl_vae, so the truths can be checked while
the library is being rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

PYRO_COMMIT = "ff6ae1c9572591791aae8842bcd702fcf0b46fd6"


@dataclass
class Pair:
    """One conformance pair.

    Attributes:
        name: a short label.
        source: the file of pyro-ppl/pyro it is adapted from.
        model, guide: the Pyro pair.
        data: the ``data`` argument of ppl_vae (tensor, tuple or dict of per-row arrays).
        model_kwargs: extra keyword arguments passed unchanged on every call (or None).
        global_sites: latent sites outside the data plate.
        broadcasts: whether the pair runs under a leading vectorized particle dimension.
        exact_log_evidence: ``f() -> float``, the exact log p(X) of the whole data set under
            the current param store, where it is closed-form.
        exact_row_log_evidence: ``f() -> Tensor``, exact log p(x_n) per row (local-only
            models with a closed form).
        extras: anything else a pair module provides (exact posterior moments, helpers).
    """

    name: str
    source: str
    model: Callable
    guide: Callable
    data: Any
    model_kwargs: dict | None = None
    global_sites: tuple[str, ...] = ()
    broadcasts: bool = True
    exact_log_evidence: Callable[[], float] | None = None
    exact_row_log_evidence: Callable[[], torch.Tensor] | None = None
    extras: dict = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return num_rows(self.data)

    def call_args(self) -> tuple[tuple, dict]:
        return call_args(self.data, self.model_kwargs)


def call_args(data, model_kwargs: dict | None = None) -> tuple[tuple, dict]:
    """The positional and keyword arguments of ``model(...)`` for ppl_vae's ``data``."""
    kwargs = dict(model_kwargs or {})
    if isinstance(data, dict):
        return (), {**data, **kwargs}
    if isinstance(data, tuple):
        return data, kwargs
    return (data,), kwargs


def num_rows(data) -> int:
    if isinstance(data, dict):
        return next(iter(data.values())).shape[0]
    if isinstance(data, tuple):
        return data[0].shape[0]
    return data.shape[0]


def take_rows(data, index):
    """Rows ``index`` of every per-row array of ``data``."""
    if isinstance(data, dict):
        return {k: v[index] for k, v in data.items()}
    if isinstance(data, tuple):
        return tuple(v[index] for v in data)
    return data[index]


def mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def pyro_elbo(
    model: Callable,
    guide: Callable,
    data,
    num_particles: int = 2000,
    *,
    model_kwargs: dict | None = None,
    vectorize: bool = True,
    chunks: int = 50,
    max_plate_nesting: float = float("inf"),
) -> tuple[float, float]:
    """Pyro's ELBO of the whole data set at the current params, and its Monte Carlo se.

    The value is ``-Trace_ELBO(...).loss(model, guide, *args, **kwargs)``. With ``vectorize``,
    ``chunks`` independent calls of ``Trace_ELBO(num_particles=num_particles // chunks,
    vectorize_particles=True)``; their spread gives the standard error of their mean.
    Without it (pairs that do not broadcast over a particle dimension), ``num_particles``
    calls of ``Trace_ELBO()`` with one particle each.
    """
    args, kwargs = call_args(data, model_kwargs)
    if vectorize:
        per_chunk = max(1, num_particles // chunks)
        elbo = Trace_ELBO(
            num_particles=per_chunk,
            vectorize_particles=True,
            max_plate_nesting=max_plate_nesting,
        )
        count = chunks
    else:
        elbo, count = Trace_ELBO(max_plate_nesting=max_plate_nesting), num_particles
    with torch.no_grad():
        values = [-elbo.loss(model, guide, *args, **kwargs) for _ in range(count)]
    return mean_se(values)


def pyro_iwae(
    model: Callable,
    guide: Callable,
    data,
    num_particles: int = 1000,
    *,
    repeats: int = 20,
    model_kwargs: dict | None = None,
    max_plate_nesting: float = float("inf"),
) -> tuple[float, float]:
    """Pyro's importance-weighted bound of log p(X), whole data set, K = ``num_particles``.

    ``-RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True).loss`` is
    log (1/K) Σ_k p(X, z_k)/q(z_k) (Li & Turner 2016 with α = 0 is Burda et al.'s bound).
    Returns the mean of ``repeats`` independent estimates and the standard deviation of ONE
    estimate (the scale of the Monte Carlo error of any single K-sample IWAE estimate).
    """
    args, kwargs = call_args(data, model_kwargs)
    elbo = RenyiELBO(
        alpha=0.0,
        num_particles=num_particles,
        vectorize_particles=True,
        max_plate_nesting=max_plate_nesting,
    )
    with torch.no_grad():
        values = np.array([-elbo.loss(model, guide, *args, **kwargs) for _ in range(repeats)])
    return float(values.mean()), float(values.std(ddof=1))


def pyro_log_weights(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int,
    *,
    model_kwargs: dict | None = None,
    max_plate_nesting: int = 1,
) -> np.ndarray:
    """``num_samples`` importance log weights log p(X, z) − log q(z) of the whole data set,
    from Pyro's ``vectorized_importance_weights`` (one vectorized pass), float64."""
    from pyro.infer.importance import vectorized_importance_weights

    args, kwargs = call_args(data, model_kwargs)
    with torch.no_grad():
        log_w, _, _ = vectorized_importance_weights(
            model, guide, *args, num_samples=num_samples,
            max_plate_nesting=max_plate_nesting, normalized=False, **kwargs,
        )
    return log_w.detach().double().cpu().numpy()


def iwae_spread(
    log_w: np.ndarray, num_particles: int, *, draws: int = 400, seed: int = 0
) -> tuple[float, float]:
    """Mean and sd of the K-sample IWAE estimator log (1/K) Σ_k w_k, K = ``num_particles``,
    by resampling K of the pooled ``log_w`` ``draws`` times (with replacement)."""
    rng = np.random.default_rng(seed)
    picks = log_w[rng.integers(0, len(log_w), size=(draws, num_particles))]
    values = np.logaddexp.reduce(picks, axis=1) - math.log(num_particles)
    return float(values.mean()), float(values.std(ddof=1))


def pyro_svi(
    model: Callable,
    guide: Callable,
    data,
    num_steps: int,
    lr: float,
    *,
    model_kwargs: dict | None = None,
) -> None:
    """Plain Pyro SVI (Trace_ELBO, Adam) on the whole data set, for self-checks."""
    args, kwargs = call_args(data, model_kwargs)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for _ in range(num_steps):
        svi.step(*args, **kwargs)


def within(value: float, reference: float, *ses: float, sigmas: float = 3.0,
           atol: float = 1e-3, rtol: float = 1e-5) -> bool:
    """|value − reference| ≤ sigmas · sqrt(Σ se²) + atol + rtol·|reference|."""
    se = math.sqrt(sum(s * s for s in ses if s == s))  # NaN se (one particle) counts as 0
    return abs(value - reference) <= sigmas * se + atol + rtol * abs(reference)


def seeded(build: Callable, seed: int = 0):
    """``build()`` with torch's RNG seeded by ``seed`` (networks' initial weights), the
    caller's stream left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def checked(name: str, source: str, idioms, model: Callable, guide: Callable, data, **fields):
    """A pair of this package as ``tests/corpus`` checks it against Pyro (a
    ``tests.corpus.CorpusPair``): by default rows in one plate at dim -1, no global latents,
    nothing enumerated, no model keywords, minibatches of 8 rows; ``fields`` say otherwise
    (their ``skips`` add to the defaults')."""
    from tests.corpus import CorpusPair

    fields = dict(model_kwargs=None, max_plate_nesting=1, global_latents=False,
                  fit_batch_size=8) | fields
    skips = {} if fields.get("estimator") == "enum" else {
        "enum": "no site is marked for enumeration"}
    if fields["global_latents"]:
        skips["rows"] = "global latents couple the rows"
    fields["skips"] = skips | fields.get("skips", {})
    return CorpusPair(name=name, source=source, idioms=tuple(idioms), model=model, guide=guide,
                      data=data, **fields)


class LinearVAE(torch.nn.Module):
    """A linear ``encoder`` x → [loc, raw] (for :func:`amortized_normal`) and a linear
    ``decoder`` z → x: the networks of the small VAEs here."""

    def __init__(self, x_dim: int, z_dim: int):
        super().__init__()
        self.encoder = torch.nn.Linear(x_dim, 2 * z_dim)
        self.decoder = torch.nn.Linear(z_dim, x_dim)


def amortized_normal(encoder: Callable, x: torch.Tensor, z_dim: int):
    """q(z | x) = N(loc, softplus(raw) + 1e-3), ``.to_event(1)``, from ``encoder(x)`` =
    [loc, raw] along the last dim (the VAE examples' Normal encoder)."""
    import pyro.distributions as dist

    hidden = encoder(x)
    scale = torch.nn.functional.softplus(hidden[..., z_dim:]) + 1e-3
    return dist.Normal(hidden[..., :z_dim], scale).to_event(1)


def word_counts(probs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator
                ) -> torch.Tensor:
    """Per row, ``lengths[n]`` words drawn from ``probs[n]``, as float counts per word."""
    return torch.stack([
        torch.bincount(torch.multinomial(p, int(n), replacement=True, generator=generator),
                       minlength=probs.shape[-1])
        for p, n in zip(probs, lengths, strict=True)
    ]).float()


def digits(*, binarize: bool = False, split: str | None = None) -> torch.Tensor:
    """scikit-learn's 8×8 digits as ``ppl_vae.load_data("digits", split=..., binarize=...)``
    returns them (pixels / 16 in float32, thresholded at 0.5; the fixed split of
    ``ppl_vae.train_test_split``: a permutation seeded 0, the first 20% test), computed here
    so that the pairs do not import ppl_vae."""
    x, _ = digits_with_labels(binarize=binarize, split=split)
    return x


def digits_with_labels(
    *, binarize: bool = False, split: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, integer labels) of the digits, rows in the order of :func:`digits`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data / 16.0, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    if binarize:
        x = (x > 0.5).to(torch.float32)
    if split is not None:
        n = x.shape[0]
        n_test = int(round(n * 0.2))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        index = perm[n_test:] if split == "train" else perm[:n_test]
        x, y = x[index], y[index]
    return x, y
