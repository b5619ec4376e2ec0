"""Where a ``fit`` step's time goes:
``python -m benchmarks.profile [STEPS] [ESTIMATOR] [compile]``.

Runs ``ppl_vae.fit`` on the digits-size model under ``cProfile`` (after a warm-up fit) and
splits the time of the steps after the first (``Trainer.update``) into Pyro's tracing and
scoring of the pair (and, within it, ``pyro.module`` registering the networks' parameters
again on every call), the backward pass, the compiled step's one call (``compile=True``: loss,
gradients, the finite check and the Adam update), the eager optimizer (``fit``'s default
``ForeachAdam``: one multi-tensor Adam step), and the time spent in ppl_vae's own code
(``ppl_vae/*.py`` functions themselves but the optimizer and the compiled call, and the
non-finite gradient check's ``torch._foreach_norm``); the rest is the remainder. Prints a
markdown table.
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import pandas as pd
import torch

import ppl_vae

from .steps import CONFIGS, LR, data_for, fresh_pair, run_ppl_vae
from .tables import markdown

# (part, function key as pstats names it: (file suffix, function name)), cumulative times
PARTS = (
    ("Pyro: trace guide and model, log-densities", ("pyro/infer/elbo.py", "_get_traces")),
    ("backward pass", ("torch/_tensor.py", "backward")),
    ("compiled step: loss, gradients, Adam (one call)", ("ppl_vae/training/compiled.py", "step")),
    ("optimizer (ForeachAdam)", ("ppl_vae/optim.py", "__call__")),
)
WITHIN = (  # parts of the parts above, not counted again in the remainder
    ("  of which pyro.module re-registering parameters", ("pyro/primitives.py", "module")),
)
NOT_OWN = ("ppl_vae/optim.py", "ppl_vae/training/compiled.py")


def profile(steps: int = 400, estimator: str = "sampled", compile: bool = False) -> pd.DataFrame:
    config = CONFIGS[0]
    data = data_for(config)
    options = {"compile": True} if compile else {}
    run_ppl_vae(fresh_pair(config), data, 50, config, estimator, **options)  # warm-up
    profiler = cProfile.Profile()

    def start(info) -> None:  # after step 1: set-up, compiling and first-call costs done
        if info.step == 1:
            profiler.enable()

    pyro_fit(fresh_pair(config), data, steps + 1, config, estimator, callback=start, **options)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, ..)
    rows = []
    for part, (suffix, name) in PARTS:
        rows.append((part, sum(v[3] for k, v in stats.items() if _is(k, suffix, name))))
    own = sum(
        v[2]
        for k, v in stats.items()
        if ("/ppl_vae/" in k[0] and not k[0].endswith(NOT_OWN)) or k[2].endswith("norm>")
    )
    rows.append(("ppl_vae's own code (tottime)", own))
    # the steps (Trainer.update), as history's time_s counts them
    total = sum(v[3] for k, v in stats.items() if _is(k, "ppl_vae/training/svi.py", "update"))
    rows.append(("other", total - sum(seconds for _, seconds in rows)))
    rows[1:1] = [(part, sum(v[3] for k, v in stats.items() if _is(k, suffix, name)))
                 for part, (suffix, name) in WITHIN]
    frame = pd.DataFrame(rows, columns=["part", "seconds"])
    frame["share"] = frame["seconds"] / total
    frame["ms_per_step"] = frame["seconds"] / steps * 1e3
    return frame


def pyro_fit(pair, data, steps: int, config, estimator: str, **options) -> None:
    ppl_vae.fit(pair.model, pair.guide, data, estimator=estimator, num_steps=steps,
                batch_size=config.batch_size, lr=LR, **options)


def _is(key: tuple, suffix: str, name: str) -> bool:
    return key[0].endswith(suffix) and key[2] == name


if __name__ == "__main__":
    torch.set_num_threads(1)
    args = sys.argv[1:]
    table = profile(int(args[0]) if args else 400, args[1] if len(args) > 1 else "sampled",
                    compile=args[2:] == ["compile"])
    print(markdown(table))
