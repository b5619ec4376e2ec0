r"""``compare_estimators``: the sampled-KL and analytic-KL ELBO measured side by side.

For every seed and estimator the pair is trained by :func:`~ppl_vae.fit` from the same initial
parameters, and these are measured (definitions in docs/estimators.md):

1. *Estimate variance at fixed parameters*: at checkpoints (step 0 = initialization, then
   log-spaced to the end), R draws of the minibatch ELBO estimate and of its KL term on one
   fixed probe minibatch, under every estimator at the same parameters and on the same draws
   (:func:`~ppl_vae.variance.estimate_draws`).
2. *Gradient variance and SNR* at the same checkpoints: tr Cov(g) and ‖E g‖ / sqrt(tr Cov g)
   per parameter group, encoder (φ) and decoder (θ) (Rainforth et al. 2018;
   :func:`~ppl_vae.variance.gradient_variance`).
3. *Convergence*: the training ELBO per datapoint at every step and the held-out ELBO at
   ``num_evals`` evenly spaced steps, against steps and training seconds (measurements are
   excluded from the clock).
4. *Cost*: median milliseconds per step; the memory of one loss-and-gradient pass on the
   probe minibatch: ``graph_mb``, the bytes of the tensors autograd saves for the backward
   pass (activations, parameters excluded; counted with ``saved_tensors_hooks``, the same on
   every device), and on CUDA ``cuda_peak_mb``, the allocator's peak above what was allocated
   before the pass (NaN on CPU, where no allocator peak is kept).
5. *Final quality*: held-out ELBO (closed-form KL where registered, K = ``final_particles``,
   with its Monte Carlo standard error)
   and the importance-sampled log-likelihood (IWAE bound, K = ``ll_samples``; Burda et al.
   2016) per datapoint; with ``exact_log_likelihood`` also the exact log p(x) and the true gap
   log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)). Differences to the first estimator are paired by
   seed, with a 95% Student-t interval over seeds.
6. *Sites*: which latent sites got a closed-form KL under each estimator.

Besides ``"sampled"`` and ``"analytic"``, the optional rows ``"stl"`` and ``"iwae"`` (K =
``iwae_particles`` per training step and per measured draw) can be added to ``estimators``.

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

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyro
import pyro.util
import torch
from scipy import stats
from tqdm.auto import tqdm

from . import params as param_io
from .dataset import as_dataset
from .errors import OutputError, PplVaeError
from .estimators import get
from .evaluation import evaluate, log_likelihood
from .files import atomic_write_text
from .kl import KLFallbackWarning
from .rng import derived_seed
from .runs import read_json, run_directory, versions, write_json
from .traces import run_pair
from .training import DEFAULT_BATCH_SIZE, fit
from .variance import estimate_draws, gradient_variance

FORMAT = "ppl_vae.comparison/1"
QUALITY = ("test_elbo", "log_likelihood", "exact_log_likelihood", "gap")


@dataclass(frozen=True)
class Comparison:
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
        settings: the arguments, what was measured how, and package versions.
    """

    summary: pd.DataFrame
    differences: pd.DataFrame
    runs: pd.DataFrame
    curves: pd.DataFrame
    gradients: pd.DataFrame
    estimates: pd.DataFrame
    draws: pd.DataFrame
    sites: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every DataFrame by its attribute name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the tables as CSV and ``settings.json`` into a new directory ``path``, whole
        or not at all (an existing run is replaced only with ``overwrite=True``)."""
        with run_directory(path, overwrite) as staging:
            self.write(staging)

    def write(self, directory: Path) -> None:
        """Write ``NAME.csv`` per table and ``settings.json`` into an existing directory."""
        for name, table in self.tables().items():
            atomic_write_text(Path(directory) / f"{name}.csv", table.to_csv(index=False))
        write_json(Path(directory) / "settings.json", {"format": FORMAT, **self.settings})

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


def compare_estimators(
    model: Callable,
    guide: Callable,
    data,
    test_data=None,
    *,
    estimators: Sequence[str] = ("sampled", "analytic"),
    seeds: Sequence[int] = (0, 1, 2),
    num_steps: int = 3000,
    batch_size: int | None = None,
    lr: float = 1e-3,
    num_draws: int = 100,
    iwae_particles: int = 5,
    num_checkpoints: int = 5,
    num_evals: int = 20,
    eval_particles: int = 10,
    final_particles: int = 100,
    ll_samples: int = 1000,
    modules: Sequence[torch.nn.Module] = (),
    exact_log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Comparison:
    """Train ``guide`` to ``model`` with each estimator and seed, and measure them side by side.

    Args:
        model, guide: a Pyro pair as for :func:`~ppl_vae.fit`.
        data, test_data: training and held-out rows (an array, or a tuple or dict of per-row
            arrays, as for :func:`~ppl_vae.fit`); without ``test_data`` the "held-out"
            numbers are computed on ``data`` (``settings["evaluated_on"]`` says which).
            Held-out ELBO and log-likelihood are the data set's joint numbers per row
            (global latents counted once; see docs/pairs.md).
        estimators: names from :data:`~ppl_vae.ESTIMATORS`; the first is the reference of the
            paired differences.
        seeds: one run per estimator and seed; a seed fixes initial parameters (see module
            doc), minibatch order and Monte Carlo draws.
        num_steps, batch_size, lr: as for :func:`~ppl_vae.fit` (Adam; batch 128 or all rows).
        num_draws: R draws for estimate and gradient variance at each checkpoint (≥ 2).
        iwae_particles: K of the ``"iwae"`` estimator (≥ 2): its particles per training step
            and per measured draw; the other estimators train with one particle per step.
        num_checkpoints: checkpoints after initialization, log-spaced up to ``num_steps``.
        num_evals, eval_particles: held-out ELBO at this many steps, with this many particles.
        final_particles, ll_samples: particles of the final held-out ELBO and IWAE bound.
        modules: ``torch.nn.Module`` objects to re-initialize per seed (``pair.modules``);
            they are moved to ``device``.
        exact_log_likelihood: ``f(x) -> log p(x)`` per row under the current parameters, when
            the model has one; adds the exact gap log p(x) − ELBO.
        device: where training runs.
        progress: show one bar over all runs' steps.
        model_kwargs: constant keyword arguments passed to model and guide with every call.

    Returns:
        a :class:`Comparison`.
    """
    dataset = as_dataset(data, model_kwargs)
    if batch_size is None:
        batch_size = min(DEFAULT_BATCH_SIZE, dataset.rows)
    settings = _check_arguments(
        estimators,
        seeds,
        num_steps=(num_steps, 1),
        batch_size=(batch_size, 1),
        num_draws=(num_draws, 2),
        iwae_particles=(iwae_particles, 2),
        num_checkpoints=(num_checkpoints, 0),
        num_evals=(num_evals, 1),
        eval_particles=(eval_particles, 1),
        final_particles=(final_particles, 2),
        ll_samples=(ll_samples, 1),
    )
    dataset.validate(batch_size)
    held_out = dataset if test_data is None else as_dataset(test_data, model_kwargs)
    held_out.validate()
    chooser = torch.Generator().manual_seed(int(seeds[0]))
    probe = dataset.take(torch.randperm(dataset.rows, generator=chooser)[:batch_size])
    checkpoints = _checkpoints(num_steps, num_checkpoints)
    evals = {int(s) for s in np.linspace(0, num_steps, num_evals + 1).round()}
    device = torch.device(device)
    options = dict(num_steps=num_steps, batch_size=batch_size, lr=lr, device=device)
    measures = dict(
        num_draws=num_draws, eval_particles=eval_particles, iwae_particles=iwae_particles
    )
    bar = tqdm(
        total=len(seeds) * len(estimators) * num_steps,
        disable=not progress,
        desc="compare",
        unit="step",
    )
    records: list[_Run] = []
    try:
        with _isolated(model, guide, probe, modules, device) as created, warnings.catch_warnings():
            warnings.simplefilter("ignore", KLFallbackWarning)
            for seed in seeds:
                initial = _initial_parameters(model, guide, probe, created, modules, seed, device)
                for estimator in estimators:
                    param_io.restore(initial)
                    bar.set_description(f"compare[{estimator}, seed {seed}]")
                    run = _Run(model, guide, estimator, int(seed), tuple(estimators), probe)
                    run.train(dataset, held_out, options, measures, checkpoints, evals, bar)
                    run.finish(held_out, final_particles, ll_samples, exact_log_likelihood)
                    records.append(run)
    finally:
        bar.close()
    settings |= {
        "learning_rate": lr,
        "num_draws": num_draws,
        "iwae_particles": iwae_particles,
        "checkpoints": checkpoints,
        "eval_particles": eval_particles,
        "final_particles": final_particles,
        "ll_samples": ll_samples,
        "modules_reinitialized": len(modules),
        "device": str(device),
        "evaluated_on": "test_data" if test_data is not None else "data (no test_data given)",
        "train_rows": dataset.rows,
        "eval_rows": held_out.rows,
        "exact": exact_log_likelihood is not None,
        "versions": versions(),
    }
    return _assemble(records, list(estimators), settings)


def _check_arguments(estimators, seeds, **counts: tuple[int, int]) -> dict:
    """Refuse bad estimators, seeds, and counts given as ``name=(value, least)``."""
    estimators = [get(e).name for e in estimators]
    if not estimators or len(set(estimators)) != len(estimators):
        raise PplVaeError(f"estimators must be distinct names, at least one, not {estimators}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise PplVaeError(f"seeds must be distinct integers, at least one, not {list(seeds)}")
    for name, (value, least) in counts.items():
        if int(value) != value or value < least:
            raise PplVaeError(f"{name} must be an integer >= {least}, not {value!r}")
    return {
        "estimators": estimators,
        "seeds": [int(s) for s in seeds],
        "num_steps": counts["num_steps"][0],
        "batch_size": counts["batch_size"][0],
    }


def _checkpoints(num_steps: int, count: int) -> list[int]:
    """Step 0 and ``count`` steps log-spaced from ``num_steps``/100 to ``num_steps``."""
    if count == 0:
        return [0]
    start = max(1.0, num_steps / 100)
    spaced = np.geomspace(start, num_steps, count) if count > 1 else [num_steps]
    return sorted({0, *(int(round(s)) for s in spaced)})


@contextlib.contextmanager
def _isolated(model, guide, probe, modules, device) -> Iterator[set[str]]:
    """Leave Pyro's param store, the pair's modules and Pyro's RNGs as they were found (the
    values; like ``fit``, the parameters are left on ``device``).

    Yields the names of the parameters the pair creates itself (absent before).
    """
    rng = pyro.util.get_rng_state()
    original = {}
    try:
        with param_io.created() as new:
            try:
                for module in modules:
                    module.to(device)
                with param_io.created() as own, torch.no_grad():
                    run_pair(model, guide, probe.to(device))  # registers every parameter
                param_io.to_device(device)
                original = param_io.snapshot()
                yield own
            finally:
                store = pyro.get_param_store()
                param_io.restore({n: v for n, v in original.items() if n in store})
    finally:
        param_io.forget(new)
        pyro.util.set_rng_state(rng)


def _initial_parameters(
    model, guide, probe, created, modules, seed, device
) -> dict[str, torch.Tensor]:
    """Seed ``seed``'s initial parameters (module doc), returned as a snapshot."""
    pyro.set_rng_seed(int(seed))
    param_io.forget(created)
    with torch.no_grad():
        for module in modules:
            for layer in module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        run_pair(model, guide, probe.to(device))
    param_io.to_device(device)
    return param_io.snapshot()


def _joint_se(terms: pd.DataFrame) -> float:
    """The standard error of the mean row's ELBO: without global latents the rows' draws are
    independent (their variances add); with them, the joint estimate's own."""
    if terms.attrs["global_sites"]:
        return terms.attrs["joint"]["elbo_se"] / len(terms)
    return float(np.sqrt((terms["elbo_se"] ** 2).sum()) / len(terms))


class _Run:
    """One (estimator, seed) training run and everything measured along it."""

    def __init__(self, model, guide, estimator, seed, estimators, probe):
        self.model, self.guide = model, guide
        self.estimator, self.seed, self.estimators = estimator, seed, estimators
        self.probe = probe
        self.particles = 1  # per training step; K for "iwae" (set by ``train``)
        self.gradients: list[pd.DataFrame] = []
        self.draws: list[pd.DataFrame] = []
        self.test_elbo: dict[int, float] = {}
        self.final: dict[str, float] = {}

    def measure(self, step: int, measures: dict) -> None:
        """Estimate and gradient variance on the probe minibatch at the current parameters."""
        x = self.probe.to(param_io.device())
        tags = {"run": self.estimator, "seed": self.seed, "step": step}
        how = dict(
            num_draws=measures["num_draws"],
            iwae_particles=measures["iwae_particles"],
            seed=derived_seed(self.seed, step),
        )
        grads = gradient_variance(self.model, self.guide, x, self.estimators, **how)
        draws = estimate_draws(self.model, self.guide, x, self.estimators, **how)
        self.gradients.append(grads.assign(**tags))
        self.draws.append(draws.assign(**tags))

    def evaluate(self, step: int, held_out: torch.Tensor, particles: int) -> None:
        terms = evaluate(
            self.model, self.guide, held_out, particles, seed=derived_seed(self.seed, step)
        )
        self.test_elbo[step] = terms.attrs["joint"]["elbo"] / len(terms)

    def train(self, array, held_out, options, measures, checkpoints, evals, bar) -> None:
        particles = measures["eval_particles"]
        self.particles = get(self.estimator).particles_per_draw(measures["iwae_particles"])
        self.measure(0, measures)
        self.evaluate(0, held_out, particles)

        def callback(info) -> None:
            if info.step in checkpoints:
                self.measure(info.step, measures)
            if info.step in evals:
                self.evaluate(info.step, held_out, particles)
            bar.update()

        self.result = fit(
            self.model,
            self.guide,
            array,
            estimator=self.estimator,
            seed=self.seed,
            num_particles=self.particles,
            callback=callback,
            **options,
        )

    def finish(self, held_out, particles, ll_samples, exact) -> None:
        """Final held-out quality, cost, and the memory of one training step."""
        x = held_out.to(param_io.device())
        seed = derived_seed(self.seed, self.result.num_steps + 1)
        terms = evaluate(self.model, self.guide, x, particles, seed=seed)
        elbo = terms.attrs["joint"]["elbo"] / len(terms)  # the mean row's, globals included
        ll = log_likelihood(self.model, self.guide, x, ll_samples, seed=seed)
        history = self.result.history
        self.final = {
            "test_elbo": elbo,
            # Monte Carlo standard error of the mean over rows (independent draws per row)
            "test_elbo_se": _joint_se(terms),
            "log_likelihood": ll.attrs["joint"] / len(ll),
            "train_elbo": self.result.final_elbo,
            "ms_per_step": 1e3 * float(np.median(np.diff(history["time_s"], prepend=0.0))),
            **self._step_memory(),
            "seconds": float(history["time_s"].iloc[-1]),
        }
        if exact is not None and x.single is not None:
            with torch.no_grad():
                exact_ll = float(exact(x.single).mean())
            self.final |= {"exact_log_likelihood": exact_ll, "gap": exact_ll - elbo}

    def _step_memory(self) -> dict[str, float]:
        """Memory of one loss-and-gradient pass on the probe minibatch (module doc, item 4)."""
        x = self.probe.to(param_io.device())
        layout = run_pair(self.model, self.guide, x)
        elbo = get(self.estimator).make(self.particles, layout.max_plate_nesting)
        params = {p.data_ptr() for _, p in pyro.get_param_store().named_parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        cuda = x.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(x.device)
            base = torch.cuda.memory_allocated(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            pyro.poutine.trace(param_only=True) as capture,
        ):
            elbo.loss_and_grads(self.model, self.guide, *x.args, **x.kwargs)
        peak = (torch.cuda.max_memory_allocated(x.device) - base) / 2**20 if cuda else math.nan
        pyro.infer.util.zero_grads(
            {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        )
        return {"graph_mb": sum(saved.values()) / 2**20, "cuda_peak_mb": peak}


def _assemble(records: list[_Run], estimators: list[str], settings: dict) -> Comparison:
    runs = pd.DataFrame([{"estimator": r.estimator, "seed": r.seed, **r.final} for r in records])
    gradients = pd.concat([g for r in records for g in r.gradients], ignore_index=True)
    gradients = gradients[
        ["run", "seed", "step", "estimator", "param_group", "variance", "snr", "mean_norm"]
        + ["num_params"]
    ]
    draws = pd.concat([d for r in records for d in r.draws], ignore_index=True)
    draws = draws[["run", "seed", "step", "estimator", "draw", "elbo", "kl"]]
    estimates = (
        draws.groupby(["run", "seed", "step", "estimator"], sort=False)
        .agg(
            elbo_mean=("elbo", "mean"),
            elbo_sd=("elbo", "std"),
            kl_mean=("kl", "mean"),
            kl_sd=("kl", "std"),
            num_draws=("draw", "size"),
        )
        .reset_index()
    )
    sites = pd.concat(
        [
            r.result.sites.assign(estimator=r.estimator)
            for r in records
            if r.seed == records[0].seed
        ],
        ignore_index=True,
    )
    sites = sites[["estimator", *[c for c in sites.columns if c != "estimator"]]]
    return Comparison(
        summary=_summary(runs, estimates, gradients, estimators),
        differences=_differences(runs, estimators),
        runs=runs,
        curves=pd.concat([_curve(r) for r in records], ignore_index=True),
        gradients=gradients,
        estimates=estimates,
        draws=draws,
        sites=sites,
        settings=settings,
    )


def _curve(run: _Run) -> pd.DataFrame:
    history = run.result.history
    curve = pd.DataFrame(
        {
            "estimator": run.estimator,
            "seed": run.seed,
            "step": np.concatenate([[0], history["step"].to_numpy()]),
            "time_s": np.concatenate([[0.0], history["time_s"].to_numpy()]),
            "train_elbo": np.concatenate([[np.nan], history["elbo"].to_numpy()]),
        }
    )
    curve["test_elbo"] = curve["step"].map(run.test_elbo)
    return curve


def _summary(runs, estimates, gradients, estimators) -> pd.DataFrame:
    own = estimates[estimates["run"] == estimates["estimator"]]
    own_grads = gradients[gradients["run"] == gradients["estimator"]]
    first, last = own["step"].min(), own["step"].max()
    rows = []
    for estimator in estimators:
        row: dict = {"estimator": estimator}
        per_seed = runs[runs["estimator"] == estimator]
        for column in per_seed.columns.drop(["estimator", "seed"]):
            row[column] = per_seed[column].mean()
            row[f"{column}_sd"] = per_seed[column].std(ddof=1)
        mine = own[own["estimator"] == estimator]
        row["elbo_sd_init"] = mine.loc[mine["step"] == first, "elbo_sd"].mean()
        row["elbo_sd_final"] = mine.loc[mine["step"] == last, "elbo_sd"].mean()
        grads = own_grads[own_grads["estimator"] == estimator]
        for group in sorted(grads["param_group"].unique()):
            in_group = grads[grads["param_group"] == group]
            for when, step in (("init", first), ("final", last)):
                value = in_group.loc[in_group["step"] == step, "variance"].mean()
                row[f"{group}_variance_{when}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _differences(runs: pd.DataFrame, estimators: list[str]) -> pd.DataFrame:
    """Paired (by seed) differences to the first estimator, with 95% t-intervals."""
    columns = ["estimator", "reference", "metric", "difference", "ci_low", "ci_high", "seeds"]
    reference = runs[runs["estimator"] == estimators[0]].set_index("seed")
    rows = []
    for estimator in estimators[1:]:
        other = runs[runs["estimator"] == estimator].set_index("seed")
        for metric in (m for m in QUALITY if m in runs.columns):
            diff = (other[metric] - reference[metric]).dropna()
            n = len(diff)
            half = (
                stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
            )
            mean = float(diff.mean())
            rows.append((estimator, estimators[0], metric, mean, mean - half, mean + half, n))
    return pd.DataFrame(rows, columns=columns)
