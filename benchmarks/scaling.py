"""How a training step's cost grows: steps/s against batch size, latent size and the number
of latent sample sites, for hand-written PyTorch, bare Pyro ``SVI.step`` and ``ppl_vae.fit``
(eager and ``compile=True``).

Each axis varies one setting of the digits-size VAE (64-128-8, batch 128, sampled ELBO) with
the others fixed: the batch size (32 … 1024: where the arithmetic starts to outweigh the
per-step overhead), the latent size (2 … 128), and the number of latent sites (1, 2, 4, 8:
the same 8-dim latent vector sampled as that many sites, ``steps.split_sites``, so that the
ELBO is the same and only the tracing work grows). Repeats are interleaved as in ``steps``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from .steps import CONFIGS, batches_for, data_for, time_contender

AXES = {
    "batch size": ("batch_size", (32, 64, 128, 256, 512, 1024)),
    "latent size": ("z_dim", (2, 8, 32, 128)),
    "latent sites": ("sites", (1, 2, 4, 8)),
}
CONTENDERS = ("torch", "pyro", "ppl_vae", "ppl_vae_compiled")


def measure(steps: int, repeats: int) -> pd.DataFrame:
    """One row per axis value, repeat and contender: steps/s after the first step."""
    base = CONFIGS[0]
    data = data_for(base)
    rows = []
    for axis, (field, values) in AXES.items():
        for value in values:
            config = replace(base, **{field: value})
            batches = batches_for(data, config.batch_size, steps, seed=0)
            for repeat in range(repeats):
                shift = repeat % len(CONTENDERS)
                for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    _, steady = time_contender(name, config, "sampled", data, batches)
                    rows.append((axis, value, repeat, name, (steps - 1) / steady))
    return pd.DataFrame(rows, columns=["axis", "value", "repeat", "contender", "steps_s"])


def summary(timings: pd.DataFrame) -> pd.DataFrame:
    """Median (min, max) steps/s per axis value and contender."""
    grouped = timings.groupby(["axis", "value", "contender"], sort=False)["steps_s"]
    return grouped.agg(["median", "min", "max"]).add_prefix("steps_s_").reset_index()


def relative(timings: pd.DataFrame, to: str = "torch") -> pd.DataFrame:
    """Per axis value and contender: steps/s over ``to``'s in the same repeat, median (min,
    max): the ratios that changing background load cancels out of."""
    wide = timings.pivot_table(index=["axis", "value", "repeat"], columns="contender",
                               values="steps_s")
    ratios = wide.div(wide[to], axis=0).stack().rename("ratio").reset_index()
    grouped = ratios.groupby(["axis", "value", "contender"])["ratio"]
    return grouped.agg(["median", "min", "max"]).add_prefix("steps_s_").reset_index()


def plot(timings: pd.DataFrame, path: Path) -> None:
    """Per axis, steps/s (top) and steps/s over hand-written torch's in the same repeat
    (bottom): medians with min–max bars, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, panels = plt.subplots(2, len(AXES), figsize=(4.2 * len(AXES), 6.6), sharex="col")
    for row, (table, label) in enumerate(((summary(timings), "steps/s"),
                                          (relative(timings), "steps/s over torch's"))):
        for panel, axis in zip(panels[row], AXES, strict=True):
            for name in CONTENDERS:
                rows = table[(table["axis"] == axis) & (table["contender"] == name)]
                rows = rows.sort_values("value")
                median = rows["steps_s_median"]
                spread = [median - rows["steps_s_min"], rows["steps_s_max"] - median]
                panel.errorbar(rows["value"], median, yerr=spread, marker="o", capsize=2,
                               label=name)
            panel.set(xscale="log", yscale="log", ylabel=label)
            panel.set_xticks(AXES[axis][1], [str(v) for v in AXES[axis][1]])
            panel.xaxis.set_minor_formatter(NullFormatter())
            panel.grid(alpha=0.3)
            if row:
                panel.set_xlabel(axis)
    panels[0][0].legend(fontsize="small")
    figure.suptitle("digits VAE (64-128-8, batch 128, sampled ELBO), one core", fontsize="medium")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
