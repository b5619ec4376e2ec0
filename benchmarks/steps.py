r"""Training steps per second: NumPyro, hand-written PyTorch, bare Pyro, ``ppl_vae.fit``.

All train the same Bernoulli VAE (``models/bernoulli_vae.py``: MLP encoder and decoder,
N(0, I) prior) from the same initial weights (NumPyro: its own), on the same minibatches in
the same order, with Adam at the same learning rate, one reparameterized particle per step,
each step's loss read as a number:

- ``torch``: the loss written by hand, :math:`-\sum_n \log p(x_n|z_n) + \mathrm{KL}_n` with
  :math:`z_n = \mu_n + \sigma_n\epsilon_n`; KL in closed form (``analytic``,
  Kingma & Welling 2014, appendix B) or :math:`\log q(z_n|x_n) - \log p(z_n)` (``sampled``);
  one ``torch.optim.Adam`` over all parameters; ``torch_compiled``: the same loss function
  under ``torch.compile`` (TorchInductor).
- ``numpyro``: NumPyro's jitted ``SVI.update`` (``benchmarks/numpyro_vae.py``), where the
  ``bench`` extra is installed.
- ``pyro``: ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO() | TraceMeanField_ELBO())`` and
  ``svi.step(batch)`` over pre-sliced batches: what a Pyro user writes.
- ``pyro_jit``: the same with ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO``.
- ``ppl_vae``: one ``ppl_vae.fit(...)`` call; ``ppl_vae_jit``: the same with ``jit=True``
  (sampled estimator only); ``ppl_vae_compiled``: with ``compile=True``.
- Ablations of ``fit``'s defaults: ``ppl_vae_validated`` (``validate_every_step=True``: Pyro's
  validation on every step, as bare Pyro runs) and ``ppl_vae_pyro_adam``
  (``optim=pyro.optim.Adam``: one ``torch.optim.Adam`` per parameter instead of
  ``ForeachAdam``). Both give the same numbers as ``ppl_vae``; only the time differs.

Each timing gives steps/s over the steps after the first (``steps_s``: no compilation or
first-call costs) and end to end (``end_to_end_steps_s``: the first step, and ``fit``'s
set-up, validation and probing the pair, included). Repeats are interleaved (the contenders'
order rotates every repeat) so that background load hits all alike; ratios are
taken within a repeat.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import pandas as pd
import pyro
import pyro.optim
import torch
import torch.nn.functional as F

import ppl_vae

from . import numpyro_vae

CONTENDERS = ("torch", "torch_compiled", "pyro", "pyro_jit", "ppl_vae", "ppl_vae_compiled",
              "ppl_vae_validated", "ppl_vae_pyro_adam")
# not run for the memory table: the same tensors as another contender, or another library
ABLATIONS = ("ppl_vae_validated", "ppl_vae_pyro_adam", "torch_compiled", "numpyro")
PYRO_ELBOS = {  # bare Pyro's own classes, eager and compiled
    False: {"sampled": pyro.infer.Trace_ELBO, "analytic": pyro.infer.TraceMeanField_ELBO},
    True: {"sampled": pyro.infer.JitTrace_ELBO, "analytic": pyro.infer.JitTraceMeanField_ELBO},
}
LR = 1e-3


@dataclass(frozen=True)
class Config:
    """A benchmark model: data width, hidden units, latent size, batch, number of rows."""

    name: str
    x_dim: int
    hidden: int
    z_dim: int
    batch_size: int = 128
    rows: int = 1408
    sites: int = 1  # the latent vector split into this many sample sites (of equal size)


CONFIGS = (
    Config("digits (64-128-8)", 64, 128, 8),
    Config("mnist-size (784-400-20)", 784, 400, 20, rows=4096),
)


def data_for(config: Config) -> torch.Tensor:
    """Binarized digits for the small model; seeded synthetic binary rows for the large one."""
    if config.x_dim == 64:
        return ppl_vae.load_data("digits", split="train", binarize=True)[: config.rows]
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(config.rows, config.x_dim, generator=generator)
    return torch.bernoulli(probs, generator=generator)


def batches_for(data: torch.Tensor, batch_size: int, steps: int, seed: int) -> list:
    """The minibatches ``fit`` draws with ``seed`` (one permutation per epoch), pre-sliced."""
    order = torch.Generator().manual_seed(seed)
    per_epoch = data.shape[0] // batch_size
    out = []
    for step in range(steps):
        epoch_position = step % per_epoch
        if epoch_position == 0:
            permutation = torch.randperm(data.shape[0], generator=order)
        index = permutation[epoch_position * batch_size : (epoch_position + 1) * batch_size]
        out.append(data[index])
    return out


def fresh_pair(config: Config) -> ppl_vae.ModelGuidePair:
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = ppl_vae.load_pair(
        "models/bernoulli_vae.py", x_dim=config.x_dim, z_dim=config.z_dim, hidden=config.hidden
    )
    return pair if config.sites == 1 else split_sites(pair, config.sites)


def split_sites(pair: ppl_vae.ModelGuidePair, sites: int) -> ppl_vae.ModelGuidePair:
    """The same VAE with its latent vector sampled as ``sites`` sites ``z0``, ``z1``, ... of
    equal size: the same ELBO, ``sites`` times the tracing work per step."""
    encoder, decoder = pair.modules
    size = encoder.loc.out_features // sites
    parts = [slice(k * size, (k + 1) * size) for k in range(sites)]

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            prior = pyro.distributions.Normal(x.new_zeros(size), x.new_ones(size)).to_event(1)
            z = [pyro.sample(f"z{k}", prior) for k in range(sites)]
            logits = decoder(torch.cat(z, dim=-1))
            pyro.sample("x", pyro.distributions.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            for k, part in enumerate(parts):
                pyro.sample(f"z{k}", pyro.distributions.Normal(loc[:, part], scale[:, part])
                            .to_event(1))

    return ppl_vae.ModelGuidePair(model, guide, name=f"{sites}_sites", modules=pair.modules,
                                  x_dim=pair.x_dim, binary=True)


def torch_loss(encoder, decoder, x: torch.Tensor, estimator: str) -> torch.Tensor:
    """The negative ELBO of the minibatch, written by hand (one reparameterized draw)."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    reconstruction = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    if estimator == "analytic":
        kl = 0.5 * (loc**2 + scale**2 - 1.0).sum() - scale.log().sum()
    else:
        eps = (z - loc) / scale
        kl = (0.5 * (z**2 - eps**2) - scale.log()).sum()
    return kl - reconstruction


def run_torch(pair, batches, estimator: str, seed: int = 0, compiled: bool = False) -> float:
    """Train (``compiled``: the loss under ``torch.compile``, TorchInductor); returns the
    clock after the first step (compilation and lazy set-up done)."""
    encoder, decoder = pair.modules
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR)
    torch.manual_seed(seed)
    loss_of = torch.compile(torch_loss) if compiled else torch_loss
    first = math.nan
    for x in batches:
        loss = loss_of(encoder, decoder, x, estimator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        first = time.perf_counter() if math.isnan(first) else first
    return first


def run_pyro(pair, batches, estimator: str, seed: int = 0, jit: bool = False) -> float:
    """Train with ``SVI.step``; returns the clock after the first step."""
    elbo = PYRO_ELBOS[jit][estimator](**({"ignore_jit_warnings": True} if jit else {}))
    svi = pyro.infer.SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": LR}), elbo)
    pyro.set_rng_seed(seed)
    first = math.nan
    for x in batches:
        svi.step(x)
        first = time.perf_counter() if math.isnan(first) else first
    return first


def run_ppl_vae(
    pair, data, steps: int, config: Config, estimator: str, seed: int = 0, **options
) -> float:
    """Train with ``fit`` (``options``: more of its arguments); returns the clock after the
    first step (read by a callback)."""
    marks = []
    ppl_vae.fit(
        pair.model,
        pair.guide,
        data,
        estimator=estimator,
        num_steps=steps,
        batch_size=config.batch_size,
        lr=LR,
        seed=seed,
        callback=lambda info: info.step == 1 and marks.append(time.perf_counter()),
        **options,
    )
    return marks[0]


def fit_options(name: str) -> dict:
    """``fit`` arguments of a ``ppl_vae*`` contender."""
    return {
        "ppl_vae": {},
        "ppl_vae_jit": {"jit": True},
        "ppl_vae_compiled": {"compile": True},
        "ppl_vae_validated": {"validate_every_step": True},
        "ppl_vae_pyro_adam": {"optim": pyro.optim.Adam({"lr": LR})},
    }[name]


def contenders(estimator: str) -> tuple[str, ...]:
    """``ppl_vae_jit`` (``fit(jit=True)``) exists for the sampled estimator only; ``numpyro``
    runs where the ``bench`` extra is installed."""
    jit = ("ppl_vae_jit",) if ppl_vae.ESTIMATORS[estimator].jit else ()
    return CONTENDERS + jit + (("numpyro",) if numpyro_vae.available() else ())


def time_contender(name: str, config: Config, estimator: str, data, batches) -> tuple[float, float]:
    """Seconds for ``len(batches)`` steps of contender ``name`` from a fresh pair: in all, and
    for the steps after the first (no set-up, compilation or first-call costs)."""
    pair = fresh_pair(config)
    torch._dynamo.reset()  # a fresh compilation per run (Dynamo stops recompiling after 8)
    started = time.perf_counter()
    if name in ("torch", "torch_compiled"):
        first = run_torch(pair, batches, estimator, compiled=name == "torch_compiled")
    elif name == "numpyro":
        arrays = [x.numpy() for x in batches]
        first = numpyro_vae.run(config.x_dim, config.hidden, config.z_dim, arrays, estimator)
    elif name in ("pyro", "pyro_jit"):
        first = run_pyro(pair, batches, estimator, jit=name == "pyro_jit")
    else:
        first = run_ppl_vae(pair, data, len(batches), config, estimator, **fit_options(name))
    ended = time.perf_counter()
    return ended - started, ended - first


def measure(config: Config, estimator: str, steps: int, repeats: int) -> pd.DataFrame:
    """One row per repeat and contender: seconds and steps/s; repeats interleaved."""
    data = data_for(config)
    batches = batches_for(data, config.batch_size, steps, seed=0)
    names = contenders(estimator)
    for name in names:  # warm-up, not recorded
        time_contender(name, config, estimator, data, batches[:20])
    rows = []
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, steady = time_contender(name, config, estimator, data, batches)
            rows.append(
                (
                    config.name,
                    estimator,
                    repeat,
                    name,
                    steps,
                    seconds,
                    steps / seconds,
                    (steps - 1) / steady,
                )
            )
    columns = ["model", "estimator", "repeat", "contender", "steps", "seconds"]
    return pd.DataFrame(rows, columns=[*columns, "end_to_end_steps_s", "steps_s"])


def measure_compiled_estimators(steps: int, repeats: int, particles: int = 5) -> pd.DataFrame:
    """``fit`` eager against ``compile=True`` under the importance-weighted estimators (K =
    ``particles``, vectorized), digits-size model: steps/s after the first, repeats
    interleaved; the ratio compiled / eager within each repeat."""
    config = CONFIGS[0]
    data = data_for(config)
    rows = []
    for estimator in ("iwae", "dreg"):
        for repeat in range(repeats + 1):  # the first one warms up, not recorded
            names = ("ppl_vae", "ppl_vae_compiled")[::1 if repeat % 2 else -1]
            speeds = {}
            for name in names:
                pair = fresh_pair(config)
                torch._dynamo.reset()
                options = {"num_particles": particles} | fit_options(name)
                n = steps if repeat else 20
                started = run_ppl_vae(pair, data, n, config, estimator, **options)
                speeds[name] = (n - 1) / (time.perf_counter() - started)
            if repeat:
                rows += [(estimator, particles, repeat, name, v) for name, v in speeds.items()]
                rows.append((estimator, particles, repeat, "compiled / eager",
                             speeds["ppl_vae_compiled"] / speeds["ppl_vae"]))
    frame = pd.DataFrame(rows, columns=["estimator", "K", "repeat", "contender", "value"])
    grouped = frame.groupby(["estimator", "K", "contender"], sort=False)["value"]
    return grouped.agg(["median", "min", "max"]).reset_index()


RATIOS = (
    ("ppl_vae", "pyro"),
    ("ppl_vae", "torch"),
    ("ppl_vae_compiled", "torch"),
    ("ppl_vae_compiled", "numpyro"),
    ("ppl_vae", "numpyro"),
    ("ppl_vae_compiled", "ppl_vae"),
    ("ppl_vae_compiled", "torch_compiled"),
    ("torch_compiled", "torch"),
    ("numpyro", "torch"),
    ("pyro", "torch"),
    ("ppl_vae_validated", "ppl_vae"),
    ("ppl_vae_pyro_adam", "ppl_vae"),
    ("pyro_jit", "pyro"),
    ("ppl_vae_jit", "ppl_vae"),
    ("ppl_vae_jit", "pyro_jit"),
    ("ppl_vae_jit", "torch"),
)


def speeds(timings: pd.DataFrame) -> pd.DataFrame:
    """Per model, estimator and contender: steps/s median (min, max) over repeats, after the
    first step, and the end-to-end median (first step and ``fit``'s set-up included)."""
    grouped = timings.groupby(["model", "estimator", "contender"], sort=False)
    table = grouped["steps_s"].agg(["median", "min", "max"]).add_prefix("steps_s_")
    table["end_to_end_steps_s"] = grouped["end_to_end_steps_s"].median()
    return table.reset_index()


def ratios(timings: pd.DataFrame, column: str = "steps_s") -> pd.DataFrame:
    """Per model and estimator: ratios of ``column`` taken within each repeat, min/median/max."""
    rows = []
    for (model, estimator), group in timings.groupby(["model", "estimator"], sort=False):
        wide = group.pivot(index="repeat", columns="contender", values=column)
        for a, b in RATIOS:
            if a in wide and b in wide:
                ratio = wide[a] / wide[b]
                stats = {"min": ratio.min(), "median": ratio.median(), "max": ratio.max()}
                rows.append({"model": model, "estimator": estimator, "ratio": f"{a} / {b}"} | stats)
    return pd.DataFrame(rows)


def _memory_main(argv: list[str]) -> None:
    """``python -m benchmarks.steps CONFIG_INDEX ESTIMATOR CONTENDER|none STEPS``: train (or,
    with ``none``, only load the data and batches) for a peak-RSS measurement."""
    config, estimator, name, steps = CONFIGS[int(argv[0])], argv[1], argv[2], int(argv[3])
    data = data_for(config)
    batches = batches_for(data, config.batch_size, steps, seed=0)
    if name != "none":
        time_contender(name, config, estimator, data, batches)


if __name__ == "__main__":
    torch.set_num_threads(1)
    _memory_main(sys.argv[1:])
