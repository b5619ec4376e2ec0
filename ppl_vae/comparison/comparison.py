r"""``compare_estimators``: the sampled-KL and analytic-KL ELBO measured side by side.

For every seed and estimator the pair is trained by :func:`~ppl_vae.fit` from the same initial
parameters, and these are measured (definitions in docs/estimators.md):

1. *Estimate variance at fixed parameters*: at checkpoints (step 0 = initialization, then
   log-spaced to the end), R draws of the minibatch ELBO estimate and of its KL term on one
   fixed probe minibatch, under every estimator at the same parameters and on the same draws
   (:func:`~ppl_vae.evaluation.variance.estimate_draws`).
2. *Gradient variance and SNR* at the same checkpoints: tr Cov(g) and ‖E g‖ / sqrt(tr Cov g)
   per parameter group, encoder (φ) and decoder (θ) (Rainforth et al. 2018;
   :func:`~ppl_vae.evaluation.variance.gradient_variance`).
3. *Convergence*: the training ELBO per datapoint at every step and the held-out ELBO at
   ``num_evals`` evenly spaced steps, against steps and training seconds (measurements are
   excluded from the clock).
4. *Cost*: median milliseconds per step; the memory of one loss-and-gradient pass on the
   probe minibatch: ``graph_mb``, the bytes of the tensors autograd saves for the backward
   pass (activations, parameters excluded; counted with ``saved_tensors_hooks``, the same on
   every device), and on CUDA ``cuda_peak_mb``, the allocator's peak above what was allocated
   before the pass (NaN on CPU, where no allocator peak is kept).
5. *Final quality*: held-out ELBO (closed-form KL where registered, K = ``final_particles``,
   with its Monte Carlo standard error) and the importance-sampled log-likelihood per
   datapoint, from one call of :func:`~ppl_vae.elpd` with S = ``ll_samples`` draws: ``elpd``
   (PSIS-smoothed; with global latents and no ``test_data``, PSIS-LOO) and
   ``log_likelihood``, its raw-weight estimate (the IWAE bound, Burda et al. 2016, without
   global latents), the pointwise values in ``Comparison.elpd`` and the report's
   ``az.compare`` of the runs; with ``exact_log_likelihood`` also the exact log p(x) and the
   true gap log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)); and on the first ``gap_rows`` held-out
   rows its split into the amortization and approximation gaps
   (:func:`~ppl_vae.inference_gap`; Cremer et al. 2018). Differences to the first estimator
   are paired by seed, with a 95% Student-t interval over seeds.
6. *Sites*: which latent sites got a closed-form KL under each estimator.

Besides ``"sampled"`` and ``"analytic"``, any registered estimator can be added to
``estimators``: ``"stl"``, ``"enum"``, ``"graph"`` and ``"graph_avg"``, and ``"iwae"`` and
``"dreg"`` (K = ``iwae_particles`` per training step and per measured draw).

Initial parameters. Seed ``s`` fixes them: Pyro's RNGs are seeded with ``s``, every module in
``modules`` is re-initialized with its layers' ``reset_parameters()``, and every parameter the
pair creates itself on its first run (``pyro.param`` with an initial value, ``pyro.module``
registrations) is created afresh. Parameters that were already in the store when
``compare_estimators`` was called and belong to no module in ``modules`` start every run from
their value at that time. All estimators of one seed start from identical parameters.

Isolation. The runs share nothing: each starts by copying its seed's initial values into the
store in place. On return (or error) the store holds exactly the parameters it held before,
with their values, the modules' weights are put back, and Pyro's RNG state is restored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..estimators.estimators import get
from ..pair.dataset import as_dataset
from ..training.training import DEFAULT_BATCH_SIZE
from ..utils import params as param_io
from ..utils.errors import OutputError, PplVaeError, check_integers, check_seed
from ..utils.files import atomic_write_text
from ..utils.runs import read_json, run_directory, versions, write_json
from . import report
from .measure import measure_runs
from .measurements import ComparisonTables
from .tables import assemble

FORMAT = "ppl_vae.comparison/2"


@dataclass(frozen=True)
class Comparison(ComparisonTables):
    """The measurements of :func:`compare_estimators`, as pandas DataFrames.

    Attributes:
        summary: one row per estimator: each headline figure as its mean over seeds with
            ``*_sd`` its standard deviation: ``test_elbo``, ``log_likelihood`` (and
            ``exact_log_likelihood``, ``gap`` when exact), ``train_elbo``, ``ms_per_step``,
            ``graph_mb``, ``cuda_peak_mb``, and at initialization/the end of its own run
            ``elbo_sd_init``, ``elbo_sd_final`` and ``encoder_variance_init``/``_final``,
            ``decoder_variance_init``/``_final``.
        differences: per estimator other than the first and per quality metric, the mean
            paired difference (estimator − first) over seeds and its 95% t-interval.
        runs: one row per (estimator, seed) with the final numbers behind ``summary``.
        curves: long: ``estimator, seed, step, time_s, train_elbo, test_elbo`` (``test_elbo``
            only at evaluation steps, NaN elsewhere; step 0 is the initialization).
        gradients: ``run`` (estimator trained), ``seed``, ``step``, ``estimator`` (whose
            gradient), ``param_group``, ``variance``, ``snr``, ``mean_norm``, ``num_params``.
        estimates: ``run, seed, step, estimator``, mean and sd over draws of the ELBO
            estimate (``elbo_mean``, ``elbo_sd``) and of its KL term (``kl_mean``, ``kl_sd``).
        draws: the individual draws behind ``estimates`` (``draw, elbo, kl``).
        sites: per estimator and latent site: q, p, whether a closed form is registered, and
            ``kl``: ``"closed-form"`` or ``"sampled"``.
        elpd: long: ``estimator, seed, datapoint, elpd, pareto_k, iwae``, the final held-out
            ELPD of every run per datapoint (:func:`~ppl_vae.elpd`, S = ``ll_samples``), from
            which the report's ``az.compare`` of the runs is made (:meth:`elpd_data`).
        settings: the arguments, what was measured how, and package versions.
    """

    def save(
        self,
        path: str | Path,
        overwrite: bool = False,
        *,
        command: str = "",
        description: str = "a model/guide pair",
    ) -> Path:
        """Write the comparison into a new directory ``path``, whole or not at all (an existing
        run is replaced only with ``overwrite=True``): ``report.md`` with its PNG figures
        (:mod:`ppl_vae.comparison.report`), every table as ``NAME.csv`` and ``settings.json``, which
        :meth:`load` reads back. Returns the path of ``report.md``."""
        with run_directory(path, overwrite) as staging:
            for name, table in self.tables().items():
                atomic_write_text(staging / f"{name}.csv", table.to_csv(index=False))
            write_json(staging / "settings.json", {"format": FORMAT, **self.settings})
            report.write_files(self, staging, command=command, description=description)
        return Path(path) / "report.md"

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read a comparison written by :meth:`save`."""
        path = Path(path)
        settings = read_json(path / "settings.json")
        if settings.pop("format", None) != FORMAT:
            raise OutputError(f"{str(path)!r} does not hold a {FORMAT} comparison")
        tables = {}
        for f in fields(cls):
            if f.name == "settings":
                continue
            file = path / f"{f.name}.csv"
            if not file.is_file():
                raise OutputError(f"{str(file)!r} is missing; the comparison is incomplete")
            tables[f.name] = pd.read_csv(file)
        return cls(**tables, settings=settings)


@dataclass(frozen=True)
class ComparisonSettings:
    """What :func:`compare_estimators` trains and measures; checked when made.

    Attributes:
        estimators: names from :data:`~ppl_vae.ESTIMATORS`; the first is the reference of the
            paired differences.
        seeds: one run per estimator and seed; a seed fixes initial parameters (see module
            doc), minibatch order and Monte Carlo draws.
        num_steps, batch_size, lr: as for :func:`~ppl_vae.fit` (Adam; batch 128 or all rows).
        num_draws: R draws for estimate and gradient variance at each checkpoint (≥ 2).
        iwae_particles: K of an importance-weighted estimator (≥ 2): its particles per
            training step and per measured draw; the others train with one particle per step.
        num_checkpoints: checkpoints after initialization, log-spaced up to ``num_steps``.
        num_evals, eval_particles: held-out ELBO at this many steps, with this many particles.
        final_particles, ll_samples: particles of the final held-out ELBO and IWAE bound.
        gap_rows, gap_steps: the amortization and approximation gaps
            (:func:`~ppl_vae.inference_gap`) of each final run on the first ``gap_rows``
            held-out rows (0 skips them), with ``gap_steps`` steps of the per-datapoint
            optimization.
        device: where training runs.
        progress: show one bar over all runs' steps.
    """

    estimators: Sequence[str] = ("sampled", "analytic")
    seeds: Sequence[int] = (0, 1, 2)
    num_steps: int = 3000
    batch_size: int | None = None
    lr: float = 1e-3
    num_draws: int = 100
    iwae_particles: int = 5
    num_checkpoints: int = 5
    num_evals: int = 20
    eval_particles: int = 10
    final_particles: int = 100
    ll_samples: int = 1000
    gap_rows: int = 100
    gap_steps: int = 300
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self):
        estimators = tuple(get(e).name for e in self.estimators)
        if not estimators or len(set(estimators)) != len(estimators):
            raise PplVaeError(f"estimators must be distinct names, at least one, not {estimators}")
        seeds = tuple(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise PplVaeError(f"seeds must be distinct integers, at least one, not {list(seeds)}")
        object.__setattr__(self, "estimators", estimators)
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))
        least = dict(num_steps=1, batch_size=1, num_draws=2, iwae_particles=2, num_checkpoints=0,
                     num_evals=1, eval_particles=1, final_particles=2, ll_samples=1,
                     gap_rows=0, gap_steps=1)
        for name, bound in least.items():
            if getattr(self, name) is not None or name != "batch_size":
                check_integers(bound, **{name: getattr(self, name)})
        for seed in self.seeds:
            check_seed(seed)
        object.__setattr__(self, "device", str(param_io.check_device(self.device)))

    def checkpoints(self) -> list[int]:
        """Step 0 and ``num_checkpoints`` steps log-spaced from ``num_steps``/100 to the end."""
        if self.num_checkpoints == 0:
            return [0]
        start = max(1.0, self.num_steps / 100)
        count = self.num_checkpoints
        spaced = np.geomspace(start, self.num_steps, count) if count > 1 else [self.num_steps]
        return sorted({0, *(int(round(s)) for s in spaced)})

    def evals(self) -> set[int]:
        """The ``num_evals + 1`` evenly spaced steps of the held-out ELBO, 0 included."""
        return {int(s) for s in np.linspace(0, self.num_steps, self.num_evals + 1).round()}

    def record(self) -> dict:
        """The settings as ``Comparison.settings`` reports them."""
        return {
            "estimators": list(self.estimators),
            "seeds": list(self.seeds),
            "num_steps": self.num_steps,
            "batch_size": self.batch_size,
            "learning_rate": self.lr,
            "num_draws": self.num_draws,
            "iwae_particles": self.iwae_particles,
            "checkpoints": self.checkpoints(),
            "eval_particles": self.eval_particles,
            "final_particles": self.final_particles,
            "ll_samples": self.ll_samples,
            "gap_rows": self.gap_rows,
            "gap_steps": self.gap_steps,
            "device": self.device,
        }


def compare_estimators(
    model: Callable,
    guide: Callable,
    data,
    test_data=None,
    settings: ComparisonSettings | None = None,
    *,
    modules: Sequence[torch.nn.Module] = (),
    exact_log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    **options,
) -> Comparison:
    """Train ``guide`` to ``model`` with each estimator and seed, and measure them side by side.

    Args:
        model, guide: a Pyro pair as for :func:`~ppl_vae.fit`.
        data, test_data: training and held-out rows (an array, or a tuple or dict of per-row
            arrays, as for :func:`~ppl_vae.fit`); without ``test_data`` the "held-out"
            numbers are computed on ``data`` (``settings["evaluated_on"]`` says which).
            Held-out ELBO and log-likelihood are the data set's joint numbers per row
            (global latents counted once; see docs/pairs.md).
        settings: a :class:`ComparisonSettings`; ``options`` (its field names, e.g.
            ``num_steps=500``) replace some of its values.
        modules: ``torch.nn.Module`` objects to re-initialize per seed (``pair.modules``);
            they are moved to the settings' device.
        exact_log_likelihood: ``f(x) -> log p(x)`` per row under the current parameters, when
            the model has one; adds the exact gap log p(x) − ELBO.
        model_kwargs: constant keyword arguments passed to model and guide with every call.

    Returns:
        a :class:`Comparison`.
    """
    known = {f.name for f in fields(ComparisonSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PplVaeError(f"unknown option(s) {unknown}; the settings are {sorted(known)}")
    settings = replace(settings or ComparisonSettings(), **options)
    dataset = as_dataset(data, model_kwargs)
    if settings.batch_size is None:
        settings = replace(settings, batch_size=min(DEFAULT_BATCH_SIZE, dataset.rows))
    dataset.validate(settings.batch_size)
    held_out = dataset if test_data is None else as_dataset(test_data, model_kwargs)
    held_out.validate()
    chooser = torch.Generator().manual_seed(settings.seeds[0])
    probe = dataset.take(torch.randperm(dataset.rows, generator=chooser)[: settings.batch_size])
    records = measure_runs(model, guide, dataset, held_out, probe, settings, modules,
                           exact_log_likelihood)
    return Comparison(
        **assemble(records, list(settings.estimators)),
        settings=settings.record() | {
            "modules_reinitialized": len(modules),
            "evaluated_on": "test_data" if test_data is not None else "data (no test_data given)",
            "train_rows": dataset.rows,
            "eval_rows": held_out.rows,
            "exact": exact_log_likelihood is not None,
            "gap_skipped": next((r.gap_skipped for r in records if r.gap_skipped), None),
            "versions": versions(),
        },
    )
