r"""Training steps per second: hand-written PyTorch, bare Pyro ``SVI.step``, ``ppl_vae.fit``.

All three train the same Bernoulli VAE (``models/bernoulli_vae.py``: MLP encoder and decoder,
N(0, I) prior) from the same initial weights, on the same minibatches in the same order, with
Adam at the same learning rate, one reparameterized particle per step:

- ``torch``: the loss written by hand, :math:`-\sum_n \log p(x_n|z_n) + \mathrm{KL}_n` with
  :math:`z_n = \mu_n + \sigma_n\epsilon_n`; KL in closed form (``analytic``,
  Kingma & Welling 2014, appendix B) or :math:`\log q(z_n|x_n) - \log p(z_n)` (``sampled``);
  one ``torch.optim.Adam`` over all parameters.
- ``pyro``: ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO() | TraceMeanField_ELBO())`` and
  ``svi.step(batch)`` over pre-sliced batches: what a Pyro user writes.
- ``pyro_jit``: the same with ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO`` (compilation in
  the first step included).
- ``ppl_vae``: one ``ppl_vae.fit(...)`` call, set-up (validation, probing the pair) included.

Repeats are interleaved (the contenders' order rotates every repeat) so that the load of a
shared machine hits all three alike; ratios are taken within a repeat.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass

import pandas as pd
import pyro
import pyro.optim
import torch
import torch.nn.functional as F

import ppl_vae

CONTENDERS = ("torch", "pyro", "pyro_jit", "ppl_vae")
JIT_ELBOS = {
    "sampled": pyro.infer.JitTrace_ELBO,
    "analytic": pyro.infer.JitTraceMeanField_ELBO,
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
    return ppl_vae.load_pair(
        "models/bernoulli_vae.py", x_dim=config.x_dim, z_dim=config.z_dim, hidden=config.hidden
    )


def run_torch(pair, batches, estimator: str, seed: int = 0) -> None:
    encoder, decoder = pair.modules
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR)
    torch.manual_seed(seed)
    for x in batches:
        loc, scale = encoder(x)
        z = loc + scale * torch.randn_like(loc)
        reconstruction = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
        if estimator == "analytic":
            kl = 0.5 * (loc**2 + scale**2 - 1.0).sum() - scale.log().sum()
        else:
            eps = (z - loc) / scale
            kl = (0.5 * (z**2 - eps**2) - scale.log()).sum()
        loss = kl - reconstruction
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()


def run_pyro(pair, batches, estimator: str, seed: int = 0, jit: bool = False) -> None:
    elbos = JIT_ELBOS if jit else ppl_vae.ESTIMATORS
    elbo = elbos[estimator](**({"ignore_jit_warnings": True} if jit else {}))
    svi = pyro.infer.SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": LR}), elbo)
    pyro.set_rng_seed(seed)
    for x in batches:
        svi.step(x)


def run_ppl_vae(pair, data, steps: int, config: Config, estimator: str, seed: int = 0) -> None:
    ppl_vae.fit(
        pair.model,
        pair.guide,
        data,
        estimator=estimator,
        num_steps=steps,
        batch_size=config.batch_size,
        lr=LR,
        seed=seed,
    )


def time_contender(name: str, config: Config, estimator: str, data, batches) -> float:
    """Seconds for ``len(batches)`` steps of contender ``name`` from a fresh pair."""
    pair = fresh_pair(config)
    started = time.perf_counter()
    if name == "torch":
        run_torch(pair, batches, estimator)
    elif name in ("pyro", "pyro_jit"):
        run_pyro(pair, batches, estimator, jit=name == "pyro_jit")
    else:
        run_ppl_vae(pair, data, len(batches), config, estimator)
    return time.perf_counter() - started


def measure(config: Config, estimator: str, steps: int, repeats: int) -> pd.DataFrame:
    """One row per repeat and contender: seconds and steps/s; repeats interleaved."""
    data = data_for(config)
    batches = batches_for(data, config.batch_size, steps, seed=0)
    for name in CONTENDERS:  # warm-up, not recorded
        time_contender(name, config, estimator, data, batches[:20])
    rows = []
    for repeat in range(repeats):
        shift = repeat % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            seconds = time_contender(name, config, estimator, data, batches)
            rows.append((config.name, estimator, repeat, name, steps, seconds, steps / seconds))
    return pd.DataFrame(
        rows, columns=["model", "estimator", "repeat", "contender", "steps", "seconds", "steps_s"]
    )


def ratios(timings: pd.DataFrame) -> pd.DataFrame:
    """Per model and estimator: median steps/s per contender and the ratios' min/median/max."""
    rows = []
    for (model, estimator), group in timings.groupby(["model", "estimator"], sort=False):
        wide = group.pivot(index="repeat", columns="contender", values="steps_s")
        row = {"model": model, "estimator": estimator}
        row |= {f"{c}_steps_s": float(wide[c].median()) for c in CONTENDERS}
        for other in ("pyro", "torch"):
            ratio = (wide["ppl_vae"] / wide[other]).tolist()
            row |= {
                f"ppl_vae/{other}_min": min(ratio),
                f"ppl_vae/{other}_median": statistics.median(ratio),
                f"ppl_vae/{other}_max": max(ratio),
            }
        for name in ("pyro", "pyro_jit"):
            row[f"{name}/torch_median"] = float((wide[name] / wide["torch"]).median())
        row["pyro_jit/pyro_median"] = float((wide["pyro_jit"] / wide["pyro"]).median())
        rows.append(row)
    return pd.DataFrame(rows)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_main(argv: list[str]) -> None:
    """``python -m benchmarks.steps CONFIG_INDEX ESTIMATOR CONTENDER|none STEPS``: peak RSS."""
    config, estimator, name, steps = CONFIGS[int(argv[0])], argv[1], argv[2], int(argv[3])
    data = data_for(config)
    batches = batches_for(data, config.batch_size, steps, seed=0)
    if name != "none":
        time_contender(name, config, estimator, data, batches)
    print(peak_rss_mb())


if __name__ == "__main__":
    torch.set_num_threads(1)
    _memory_main(sys.argv[1:])
