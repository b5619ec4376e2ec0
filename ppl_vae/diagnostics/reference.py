r"""A reference posterior by NUTS, and VI set side by side with it.

With the decoder's parameters fixed at their trained values, the posterior
:math:`p(z|x) \propto p(z)\, p_\theta(x|z)` of the selected datapoints is sampled by Pyro's
No-U-Turn sampler (Hoffman & Gelman 2014) and converted to ArviZ the way ``az.from_pyro``
does (which arviz ≥ 1.0 no longer has): the draws as ``posterior``, NUTS's divergent
transitions as ``sample_stats/diverging``, and ``observed_data``. It is what
the guide q(z|x) approximates, so comparing the two — per latent, mean and sd, and the
marginal densities overlaid — shows what the amortized mean-field guide gets wrong. Only for
models small enough: the cost grows with the number of datapoints times the latent size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS

from .. import arviz_compat
from ..pair.dataset import Batch, select_rows
from ..pair.traces import PairTraces, data_plate, is_latent, is_observed
from ..utils import params
from ..utils.errors import DataError, PairError, check_positive
from ..utils.rng import seeded
from .inference_data import row_dim, site_dims

NAMED_GROUPS = ("posterior", "observed_data")  # sample_stats/diverging is (chain, draw)


def reference_posterior(
    model: Callable,
    data,
    num_samples: int = 500,
    *,
    warmup_steps: int = 500,
    num_chains: int = 1,
    seed: int = 0,
    obs: Sequence[int] | None = None,
    progress: bool = False,
    model_kwargs: Mapping[str, object] | None = None,
) -> arviz_compat.InferenceData:
    """NUTS draws of every latent site of ``model`` given the selected rows of ``data``.

    The model's parameters (``pyro.param``, ``pyro.module``) are read from the param store and
    held fixed: train or load them first. Chains run one after another, chain ``c`` seeded
    with ``seed + c``. Dims and coords match :func:`~ppl_vae.to_inference_data`, so the two
    can be compared directly.

    Returns:
        ArviZ's object (``InferenceData``; ``DataTree`` under arviz ≥ 1.0): posterior,
        sample_stats (``diverging``), observed data; ``attrs["inference"] = "NUTS"``.
    """
    check_positive(num_samples=num_samples, num_chains=num_chains)
    x, index = select_rows(data, obs, params.device(), model_kwargs)
    trace = _trace_with_trained_params(model, x)
    plate = data_plate(trace, x.rows)
    layout = PairTraces(trace, trace, 0, plate.dim, plate.name)
    row = row_dim(layout)
    dims = {
        name: site_dims(name, site, layout, row)
        for name, site in trace.nodes.items()
        if is_latent(site) or is_observed(site)
    }
    runs = []
    for chain in range(num_chains):
        kernel = NUTS(model, jit_compile=False)
        run = MCMC(kernel, num_samples, warmup_steps=warmup_steps, disable_progbar=not progress)
        with seeded(seed + chain):
            run.run(*x.args, **x.kwargs)
        runs.append(run)
    attrs = {
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "inference": "NUTS",
        "seed": seed,
        "warmup_steps": warmup_steps,
    }
    groups = _groups(runs, trace)
    dims = {group: {name: dims[name] for name in groups[group]} for group in NAMED_GROUPS}
    return arviz_compat.from_dict(groups, dims, {row: index.tolist()}, attrs | {"row_dim": row})


def _groups(runs: list[MCMC], trace) -> dict[str, dict[str, np.ndarray]]:
    """Single-chain runs → posterior ``(chain, draw, ...)``, ``diverging`` ``(chain, draw)``
    and the observed data, as ``az.from_pyro`` lays them out."""
    samples = [run.get_samples(group_by_chain=True) for run in runs]
    diverging = np.zeros((len(runs), runs[0].num_samples), dtype=bool)
    for chain, run in enumerate(runs):
        diverging[chain, run.diagnostics()["divergences"]["chain 0"]] = True
    return {
        "posterior": {
            name: np.concatenate([s[name].detach().cpu().numpy() for s in samples])
            for name in samples[0]
        },
        "sample_stats": {"diverging": diverging},
        "observed_data": {
            name: site["value"].detach().cpu().numpy()
            for name, site in trace.nodes.items()
            if is_observed(site)
        },
    }


def _trace_with_trained_params(model: Callable, x: Batch):
    """Trace the model once; refuse (and undo) if it had to create parameters."""
    with params.created() as created, torch.no_grad():
        trace = x(poutine.trace(model).get_trace)
    if created:
        params.forget(created)
        raise PairError(
            f"the model's parameter(s) {sorted(created)} are not in Pyro's param store; fit the "
            "pair or load its params.pt before sampling the reference posterior"
        )
    return trace


def compare_posteriors(
    approx: arviz_compat.InferenceData,
    reference: arviz_compat.InferenceData,
    *,
    labels: tuple[str, str] = ("vi", "nuts"),
    var_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per latent element: mean and sd under each posterior, and how far apart they are.

    Returns one row per element (``z[obs=3, z_dim_0=1]``) with ``mean_{a}``, ``sd_{a}``,
    ``mean_{b}``, ``sd_{b}`` for labels ``(a, b)``, ``z_score`` = (mean_a − mean_b) / sd_b and
    ``sd_ratio`` = sd_a / sd_b. Draws of all chains are pooled.
    """
    a, b = labels
    shared = arviz_compat.variables(approx).keys() & arviz_compat.variables(reference).keys()
    names = list(var_names) if var_names is not None else sorted(shared)
    rows = {}
    for name in names:
        dims = arviz_compat.variables(approx)[name][2:]
        coords = [arviz_compat.coordinate(approx, "posterior", d) for d in dims]
        first, second = (arviz_compat.draws(idata, name) for idata in (approx, reference))
        if first.shape[2:] != second.shape[2:]:
            raise DataError(
                f"{name!r} has shape {first.shape[2:]} in one posterior and "
                f"{second.shape[2:]} in the other; export the same datapoints (obs=) from both"
            )
        shape = first.shape[2:]
        first, second = (v.reshape(v.shape[0] * v.shape[1], -1) for v in (first, second))
        for flat, element in enumerate(np.ndindex(*shape)):
            where = ", ".join(f"{d}={c[i]}" for d, c, i in zip(dims, coords, element, strict=True))
            rows[f"{name}[{where}]"] = (first[:, flat], second[:, flat])
    table = pd.DataFrame(
        {
            f"mean_{a}": [u.mean() for u, _ in rows.values()],
            f"sd_{a}": [u.std(ddof=1) for u, _ in rows.values()],
            f"mean_{b}": [v.mean() for _, v in rows.values()],
            f"sd_{b}": [v.std(ddof=1) for _, v in rows.values()],
        },
        index=pd.Index(list(rows), name="latent"),
    )
    table["z_score"] = (table[f"mean_{a}"] - table[f"mean_{b}"]) / table[f"sd_{b}"]
    table["sd_ratio"] = table[f"sd_{a}"] / table[f"sd_{b}"]
    return table
