"""``ppl-vae diagnose``: export a train run's posterior to ArviZ and judge the guide by k̂."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import arviz_compat
from ..dataset import as_dataset
from ..diagnostics import vi_diagnostics
from ..errors import DataError
from ..inference_data import OBS_DIM, to_inference_data
from ..runs import run_directory, versions, write_json
from .common import command_line, load_run

OUTPUTS = (
    "posterior.nc",
    "khat.csv",
    "summary.csv",
    "diagnostics.json",
    "posterior.png",
    "ppc.png",
    "khat.png",
)


def register(commands) -> None:
    parser = commands.add_parser(
        "diagnose",
        help="export a run's posterior to ArviZ (NetCDF) and compute Pareto k̂ per datapoint",
        description="Load a run written by 'ppl-vae train' and write OUT/posterior.nc (ArviZ "
        "InferenceData of the first --rows datapoints), OUT/khat.csv (Pareto k̂, PSIS "
        "log-likelihood and ESS of the importance weights for every datapoint of the split), "
        "OUT/summary.csv (ArviZ's summary), OUT/diagnostics.json (the verdict and settings) and "
        "the figures posterior.png, ppc.png and khat.png.",
    )
    parser.add_argument(
        "--run",
        dest="run_dir",
        required=True,
        metavar="RUN",
        help="run directory written by ppl-vae train",
    )
    parser.add_argument("--out", help="output directory (default RUN/diagnostics)")
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        help="which rows to diagnose (default: test when the run has held-out data)",
    )
    parser.add_argument(
        "--samples", type=int, default=500, help="draws of q(z|x) per exported row (500)"
    )
    parser.add_argument(
        "--khat-samples",
        type=int,
        default=1000,
        help="importance samples per datapoint for k̂ (1000)",
    )
    parser.add_argument(
        "--rows", type=int, default=20, help="datapoints exported to posterior.nc (first 20)"
    )
    parser.add_argument("--seed", type=int, help="seed of the draws (default: the run's seed)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it already holds output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for option in ("samples", "khat_samples", "rows"):
        if getattr(args, option) < 1:
            raise DataError(f"--{option.replace('_', '-')} must be at least 1")
    inputs, summary = load_run(args.run_dir)
    split = args.split or ("test" if inputs.test is not None else "train")
    if split == "test" and inputs.test is None:
        raise DataError("the run has no held-out data; use --split train")
    data = inputs.test if split == "test" else inputs.train
    seed = summary["seed"] if args.seed is None else args.seed
    model, guide = inputs.pair
    total = as_dataset(data).rows
    rows = list(range(min(args.rows, total)))
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
    table = vi_diagnostics(model, guide, data, num_samples=args.khat_samples, seed=seed)
    out = Path(args.out) if args.out else Path(args.run_dir) / "diagnostics"
    with run_directory(out, args.overwrite) as staging:
        arviz_compat.save(idata, staging / "posterior.nc")
        table.to_csv(staging / "khat.csv")
        arviz_compat.summary(idata).to_csv(staging / "summary.csv")
        _figures(idata, table["khat"].to_numpy(), staging)
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
                "versions": versions(),
            },
        )
    print(f"{inputs.description}, {split} split: {table.attrs['verdict']}")
    print(f"wrote {out}/: {' '.join(OUTPUTS)}")
    return 0


def _figures(idata, khat: np.ndarray, folder: Path) -> None:
    """Posterior of the latents for the first two exported rows, PPC, and k̂ per datapoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latents = list(arviz_compat.variables(idata))
    row = idata["posterior"].attrs.get("row_dim", OBS_DIM)
    local = any(row in arviz_compat.variables(idata)[name] for name in latents)
    coords = {row: arviz_compat.coordinate(idata, "posterior", row)[:2].tolist()} if local else {}
    posterior = arviz_compat.plot_posterior(idata, latents, coords)
    _save(plt, posterior, folder / "posterior.png")
    _save(plt, arviz_compat.plot_ppc(idata), folder / "ppc.png")
    _save(plt, arviz_compat.plot_khat(khat), folder / "khat.png")


def _save(plt, figure, path: Path) -> None:
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
