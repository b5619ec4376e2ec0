r"""Encoder gradient variance of the score-function estimators at fixed parameters:
``python -m benchmarks.score_function``.

Two pairs of the zoo with discrete latents on the binarized digits: the unsupervised M2
(``models/m2_vae.py``: a class y with 10 values, which ``enum`` can sum) and a two-layer sigmoid
belief net (``models/sbn_vae.py``: binary vectors h1 of 16 and h2 of 8 units, which nothing can
sum). For each, at two sets of fixed parameters,

- *initial*: the seed-0 initialization, with graph_avg's decaying average first settled at
  these parameters by ``--prime`` evaluations of its ELBO on random minibatches (no step), and
- *trained*: after ``--steps`` steps of graph_avg (Adam, lr 3e-3, batch 128, seed 0), with
  the run's own average,

``ppl_vae.gradient_variance`` takes ``--draws`` gradient draws of sampled, graph, graph_avg
(and enum for M2) on one probe minibatch of 128 training rows, all but enum on the same draws,
and reports tr Cov(g) and SNR per layer of the guide (and for the model's parameters).

Writes ``benchmarks/results/score_function.csv`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pyro
import torch

import ppl_vae
from ppl_vae.pair.traces import run_pair
from ppl_vae.utils.params import BASELINE_AVERAGE

from .tables import markdown

RESULTS = Path(__file__).parent / "results"
BATCH = 128
# pair file -> (estimators, parameter groups by name prefix)
PAIRS = {
    "models/m2_vae.py": (
        ("sampled", "graph", "graph_avg", "enum"),
        {"q(y|x)": ("classifier$$$",), "q(z|x,y)": ("encoder$$$",), "model": ("decoder$$$",)},
    ),
    "models/sbn_vae.py": (
        ("sampled", "graph", "graph_avg"),
        {"q(h1|x)": ("recognition$$$h1.",), "q(h2|h1)": ("recognition$$$h2.",),
         "model": ("generative$$$", "prior_logits")},
    ),
}


def settle_average(pair, x: torch.Tensor, evaluations: int) -> None:
    """Evaluate graph_avg's ELBO on random minibatches at the current parameters, so that its
    decaying average is what it would be after that many steps here; the gradients are
    dropped."""
    elbo = ppl_vae.ESTIMATORS["graph_avg"].make(max_plate_nesting=1)
    generator = torch.Generator().manual_seed(1)
    for _ in range(evaluations):
        rows = torch.randperm(len(x), generator=generator)[:BATCH]
        elbo.loss_and_grads(pair.model, pair.guide, x[rows])
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None


def measure_pair(path: str, x: torch.Tensor, steps: int, draws: int, prime: int) -> pd.DataFrame:
    estimators, prefixes = PAIRS[path]
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = ppl_vae.load_pair(path, x_dim=x.shape[1])
    probe = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:BATCH]]
    run_pair(pair.model, pair.guide, probe)  # creates the parameters
    names = [n for n, _ in pyro.get_param_store().named_parameters()]
    groups = {g: [n for n in names if n.startswith(p)] for g, p in prefixes.items()}
    frames = []
    for when in ("initial", "trained"):
        if when == "initial":
            settle_average(pair, x, prime)
        else:
            store = pyro.get_param_store()
            for name in [n for n in store.keys() if n.startswith(BASELINE_AVERAGE)]:
                del store[name]  # the run accumulates its own
            ppl_vae.fit(pair.model, pair.guide, x, estimator="graph_avg", num_steps=steps,
                        lr=3e-3, batch_size=BATCH, seed=0)
        table = ppl_vae.gradient_variance(pair.model, pair.guide, probe, estimators, draws,
                                          groups=groups, seed=2)
        frames.append(table.assign(pair=Path(path).stem, parameters=when))
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="graph_avg steps (300)")
    parser.add_argument("--draws", type=int, default=100, help="gradient draws (100)")
    parser.add_argument("--prime", type=int, default=50,
                        help="ELBO evaluations that settle the average at initialization (50)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = ppl_vae.load_data("digits", split="train", binarize=True)
    results = pd.concat([measure_pair(path, x, args.steps, args.draws, args.prime)
                         for path in PAIRS], ignore_index=True)
    RESULTS.mkdir(exist_ok=True)
    results.to_csv(RESULTS / "score_function.csv", index=False)
    sampled = results[results["estimator"] == "sampled"].set_index(
        ["pair", "parameters", "param_group"])["variance"]
    keys = list(zip(results["pair"], results["parameters"], results["param_group"], strict=True))
    results["sampled ÷ this"] = [sampled[k] / v for k, v in zip(keys, results["variance"],
                                                                strict=True)]
    columns = ["pair", "parameters", "param_group", "estimator", "variance", "snr",
               "sampled ÷ this"]
    print(markdown(results[columns]))


if __name__ == "__main__":
    main()
