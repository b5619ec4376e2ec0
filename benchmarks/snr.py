r"""Gradient signal-to-noise against K for the iwae, dreg and stl estimators (Rainforth et al.
2018, Figure 1; Tucker et al. 2019, Figure 1): ``python -m benchmarks.snr``.

The zoo's Bernoulli VAE (8 latent dimensions, 128 hidden units) is trained on the binarized
digits for ``--steps`` steps of the sampled ELBO (Adam, lr 3e-3, batch 128, seed 0); at those
fixed parameters, for each K, ``ppl_vae.gradient_variance`` takes ``--draws`` gradient draws
of every estimator on one probe minibatch of ``--rows`` training rows, all estimators on the
same draws. A draw of iwae and dreg is K particles per datapoint; stl scores each draw's first
particle, so its numbers do not depend on K (a reference line). SNR = ‖E g‖ / sqrt(tr Cov g)
per parameter group (encoder: the guide's parameters; decoder: the model's).

Writes ``benchmarks/results/snr.csv``, prints a markdown table, and draws
``docs/figures/snr_vs_k.png``: encoder and decoder SNR against K, log–log.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import pyro
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

import ppl_vae

from .tables import markdown

RESULTS = Path(__file__).parent / "results"
FIGURE = Path(__file__).parent.parent / "docs" / "figures" / "snr_vs_k.png"
ESTIMATORS = ("iwae", "dreg", "stl")


def measure(steps: int, ks: list[int], draws: int, rows: int) -> pd.DataFrame:
    """One row per (K, estimator, parameter group): variance, SNR, ‖E g‖, seconds."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = ppl_vae.load_data("digits", split="train", binarize=True)
    pair = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=64)
    ppl_vae.fit(pair.model, pair.guide, x, estimator="sampled", num_steps=steps, lr=3e-3,
                batch_size=128, seed=0)
    probe = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:rows]]
    frames = []
    for k in ks:
        started = time.perf_counter()
        table = ppl_vae.gradient_variance(pair.model, pair.guide, probe, ESTIMATORS, draws,
                                          iwae_particles=k, seed=k)
        frames.append(table.assign(K=k, seconds=time.perf_counter() - started))
    return pd.concat(frames, ignore_index=True)


def figure(results: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, group in zip(axes, ("encoder", "decoder"), strict=True):
        mine = results[results["param_group"] == group]
        for estimator in ESTIMATORS:
            line = mine[mine["estimator"] == estimator]
            one = estimator == "stl"  # scores each draw's first particle: no K
            ax.plot(line["K"], line["snr"], marker="o", linestyle="--" if one else "-",
                    label=f"{estimator} (one particle)" if one else estimator)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ks = sorted(mine["K"].unique())
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("K (particles per datapoint)")
        ax.set_title(f"{group} gradient SNR")
        ax.legend()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps first (1000)")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 5, 10, 20, 50])
    parser.add_argument("--draws", type=int, default=200, help="gradient draws per K (200)")
    parser.add_argument("--rows", type=int, default=32, help="rows of the probe minibatch (32)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = measure(args.steps, args.k, args.draws, args.rows)
    RESULTS.mkdir(exist_ok=True)
    results.to_csv(RESULTS / "snr.csv", index=False)
    figure(results, FIGURE)
    wide = results.pivot_table(index="K", columns=["param_group", "estimator"], values="snr")
    wide.columns = [f"{group} SNR {estimator}" for group, estimator in wide.columns]
    print(markdown(wide.reset_index().round(3)))


if __name__ == "__main__":
    main()
