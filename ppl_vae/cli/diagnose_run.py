"""What ``ppl-vae diagnose`` does: export a train run's posterior to ArviZ and judge the guide
by k̂, ELPD, calibration and the gap split. Imported when the command runs (its arguments are
defined in :mod:`ppl_vae.cli.diagnose`), so that the other commands do not load ArviZ."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from .. import arviz_compat
from ..diagnostics.diagnostic_figures import gap_figure
from ..diagnostics.diagnostics import vi_diagnostics
from ..diagnostics.inference_data import OBS_DIM, to_inference_data
from ..diagnostics.sbc import calibration
from ..evaluation.gap import inference_gap
from ..evaluation.predictive import elpd, has_local_latents, pointwise_table
from ..evaluation.predictive import summary as elpd_summary
from ..pair.dataset import as_dataset
from ..utils.errors import DataError, PairError
from ..utils.runs import check_output, run_directory, versions, write_json
from .common import command_line, load_run

OUTPUTS = (
    "posterior.nc",
    "khat.csv",
    "elpd.csv",
    "summary.csv",
    "diagnostics.json",
    "posterior.png",
    "ppc.png",
    "khat.png",
)
CALIBRATION_OUTPUTS = ("calibration.csv", "ranks.csv", "calibration.png")
GAP_OUTPUTS = ("gap.csv", "gap.png")


def run(args: argparse.Namespace) -> int:
    for option in ("samples", "khat_samples", "rows", "sbc_draws", "gap_steps"):
        if getattr(args, option) < 1:
            raise DataError(f"--{option.replace('_', '-')} must be at least 1")
    for option in ("sbc_simulations", "gap_rows"):
        if getattr(args, option) < 0:
            raise DataError(f"--{option.replace('_', '-')} must be at least 0 (0 skips it)")
    out = Path(args.out) if args.out else Path(args.run_dir) / "diagnostics"
    check_output(out, args.overwrite)  # refuses a taken OUT before the draws and fits
    inputs, summary = load_run(args.run_dir)
    split = args.split or ("test" if inputs.test is not None else "train")
    if split == "test" and inputs.test is None:
        raise DataError("the run has no held-out data; use --split train")
    data = inputs.test if split == "test" else inputs.train
    seed = summary["seed"] if args.seed is None else args.seed
    model, guide = inputs.pair
    total = as_dataset(data).rows
    rows = list(range(min(args.rows, total)))
    with warnings.catch_warnings():  # what the export's log_likelihood is: in elpd.csv's
        warnings.simplefilter("ignore", UserWarning)  # stead; k̂ is counted in the summary
        idata = to_inference_data(
            model,
            guide,
            data,
            num_samples=args.samples,
            seed=seed,
            obs=rows,
            attrs={
                "estimator": summary.get("estimator", "unknown"),
                "steps": summary.get("steps", -1),
                "run": str(args.run_dir),
                "split": split,
            },
        )
        predictive = elpd(model, guide, data, args.khat_samples, held_out=split == "test",
                          seed=seed)
    table = vi_diagnostics(model, guide, data, num_samples=args.khat_samples, seed=seed)
    elpd_report = elpd_summary(predictive)
    sbc, sbc_report = _calibration(model, guide, data, args, seed)
    gap, gap_report = _gap(inputs.pair, data, args, seed)
    with run_directory(out, args.overwrite) as staging:
        arviz_compat.save(idata, staging / "posterior.nc")
        table.to_csv(staging / "khat.csv")
        pointwise_table(predictive).to_csv(staging / "elpd.csv")
        arviz_compat.summary(idata).to_csv(staging / "summary.csv")
        _figures(idata, table["khat"].to_numpy(), staging)
        written = list(OUTPUTS)
        if sbc is not None:
            sbc.tests.to_csv(staging / "calibration.csv", index=False)
            sbc.ranks.to_csv(staging / "ranks.csv")
            _save(_pyplot(), sbc.plot(), staging / "calibration.png")
            written += CALIBRATION_OUTPUTS
        if gap is not None:
            gap.to_csv(staging / "gap.csv")
            _save(_pyplot(), gap_figure(gap), staging / "gap.png")
            written += GAP_OUTPUTS
        write_json(
            staging / "diagnostics.json",
            {
                "command": command_line(args),
                "run": str(args.run_dir),
                "split": split,
                "rows": total,
                "exported_rows": len(rows),
                "samples": args.samples,
                "khat_samples": args.khat_samples,
                "seed": seed,
                "verdict": table.attrs["verdict"],
                "global_sites": table.attrs["global_sites"],
                "joint_khat": table.attrs.get("joint_khat"),
                "khat_counts": {k: int(v) for k, v in table["verdict"].value_counts().items()},
                "elpd": elpd_report,
                "calibration": sbc_report,
                "inference_gap": gap_report,
                "versions": versions(),
            },
        )
    print(f"{inputs.description}, {split} split: {table.attrs['verdict']}")
    print(f"  ELPD: {_elpd_line(elpd_report)}")
    print(f"  calibration: {sbc_report['summary']}")
    print(f"  gap split: {gap_report['summary']}")
    print(f"wrote {out}/: {' '.join(written)}")
    return 0


def _elpd_line(report: dict) -> str:
    """One line: the ELPD with its standard error, the IWAE beside it, and k̂."""
    line = (
        f"{report['elpd']:.1f} ± {report['se']:.1f} over {report['n_data_points']} datapoints "
        f"(IWAE {report['iwae']:.1f}; {report['evaluated_on']}; S = {report['n_samples']})"
    )
    if report["khat_above"]:
        line += f"; k̂ > {report['good_k']:.2f} at {report['khat_above']} datapoints"
    return line


def _calibration(model, guide, data, args, seed: int):
    """SBC of the guide and its summary, or None and why it was skipped."""
    if args.sbc_simulations == 0:
        return None, {"summary": "skipped (--sbc-simulations 0)"}
    try:
        sbc = calibration(model, guide, data, args.sbc_simulations, args.sbc_draws, seed=seed)
    except PairError as e:  # global latents, an enumerated site: the rest still applies
        return None, {"summary": f"skipped: {e}"}
    counts = sbc.tests["verdict"].value_counts()
    return sbc, {
        "summary": sbc.verdict,
        "verdicts": dict(zip(sbc.tests["coordinate"], map(str, sbc.tests["verdict"]),
                             strict=True)),
        "counts": {str(k): int(v) for k, v in counts.items() if v},
        **{k: v for k, v in sbc.settings.items() if k != "global_sites"},
    }


def _gap(pair, data, args, seed: int):
    """The amortization/approximation split on the first --gap-rows rows, and its summary."""
    if args.gap_rows == 0:
        return None, {"summary": "skipped (--gap-rows 0)"}
    dataset = as_dataset(data)
    subset = dataset.first(args.gap_rows)
    exact = pair.exact_log_likelihood if dataset.single is not None else None
    try:
        gap = inference_gap(*pair, subset, num_steps=args.gap_steps, seed=seed,
                            exact_log_likelihood=exact)
    except PairError as e:  # global sites, other families: the rest still applies
        return None, {"summary": f"skipped: {e}"}
    mean = gap.attrs["mean"]

    def pm(name):
        return f"{mean[name]['mean']:.3f} ± {mean[name]['se']:.3f}"

    line = (
        f"over {len(gap)} datapoints, log p(x) − ELBO = {pm('total_gap')} nats = amortization "
        f"gap {pm('amortization_gap')} + approximation gap {pm('approximation_gap')} "
        f"(± one Monte Carlo standard error; log p(x) {gap.attrs['log_likelihood']})"
    )
    if gap.attrs["still_improving"]:
        line += f"; the optimization was still improving at {gap.attrs['still_improving']} rows"
    return gap, {"summary": line, "rows": len(gap), "mean": mean,
                 "log_likelihood": gap.attrs["log_likelihood"],
                 "still_improving": gap.attrs["still_improving"], **gap.attrs["settings"]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figures(idata, khat: np.ndarray, folder: Path) -> None:
    """Posterior of the latents for the first two exported rows, PPC, and k̂ per datapoint."""
    plt = _pyplot()
    latents = list(arviz_compat.variables(idata))
    row = idata["posterior"].attrs.get("row_dim", OBS_DIM)
    local = has_local_latents(idata)
    coords = {row: arviz_compat.coordinate(idata, "posterior", row)[:2].tolist()} if local else {}
    posterior = arviz_compat.plot_posterior(idata, latents, coords)
    _save(plt, posterior, folder / "posterior.png")
    _save(plt, arviz_compat.plot_ppc(idata), folder / "ppc.png")
    _save(plt, arviz_compat.plot_khat(khat), folder / "khat.png")


def _save(plt, figure, path: Path) -> None:
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
