"""Where a ``fit`` step's time goes: ``python -m benchmarks.profile [STEPS] [ESTIMATOR]``.

Runs ``ppl_vae.fit`` on the digits-size model under ``cProfile`` (after a warm-up fit) and
splits the total into Pyro's tracing and scoring of the pair, the backward pass, the
optimizer (``fit``'s default ``ForeachAdam``: one multi-tensor Adam step), and the time spent
in ppl_vae's own code (``ppl_vae/*.py`` functions themselves but the optimizer, and the
non-finite gradient check's ``torch._foreach_norm``); the rest is the remainder. Prints a
markdown table.
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import pandas as pd
import torch

from .steps import CONFIGS, data_for, fresh_pair, run_ppl_vae
from .tables import markdown

# (part, function key as pstats names it: (file suffix, function name)), cumulative times
PARTS = (
    ("Pyro: trace guide and model, log-densities", ("pyro/infer/elbo.py", "_get_traces")),
    ("backward pass", ("torch/_tensor.py", "backward")),
    ("optimizer (ForeachAdam)", ("ppl_vae/optim.py", "__call__")),
)


def profile(steps: int = 400, estimator: str = "sampled") -> pd.DataFrame:
    config = CONFIGS[0]
    data = data_for(config)
    run_ppl_vae(fresh_pair(config), data, 50, config, estimator)  # warm-up
    pair = fresh_pair(config)
    profiler = cProfile.Profile()
    profiler.runcall(run_ppl_vae, pair, data, steps, config, estimator)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, ..)
    total = max(cumtime for _, _, _, cumtime, _ in stats.values())
    rows = []
    for part, (suffix, name) in PARTS:
        rows.append((part, sum(v[3] for k, v in stats.items() if _is(k, suffix, name))))
    own = sum(
        v[2]
        for k, v in stats.items()
        if ("/ppl_vae/" in k[0] and not k[0].endswith("ppl_vae/optim.py"))
        or k[2].endswith("norm>")
    )
    rows.append(("ppl_vae's own code (tottime)", own))
    rows.append(("other", total - sum(seconds for _, seconds in rows)))
    frame = pd.DataFrame(rows, columns=["part", "seconds"])
    frame["share"] = frame["seconds"] / total
    frame["ms_per_step"] = frame["seconds"] / steps * 1e3
    return frame


def _is(key: tuple, suffix: str, name: str) -> bool:
    return key[0].endswith(suffix) and key[2] == name


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = sys.argv[1:]
    table = profile(int(args[0]) if args else 400, args[1] if len(args) > 1 else "sampled")
    print(markdown(table))
