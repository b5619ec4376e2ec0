"""``ppl-vae diagnose``: export a train run's posterior to ArviZ and judge the guide by k̂.

Only the arguments live here; the work is in :mod:`ppl_vae.cli.diagnose_run`, imported when
the command runs, so that starting ``ppl-vae train`` does not load ArviZ and matplotlib.
"""

from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser(
        "diagnose",
        help="export a run's posterior to ArviZ (NetCDF) and compute Pareto k̂ per datapoint",
        description="Load a run written by 'ppl-vae train' and write OUT/posterior.nc (ArviZ "
        "InferenceData of the first --rows datapoints), OUT/khat.csv (Pareto k̂, PSIS "
        "log-likelihood and ESS of the importance weights for every datapoint of the split), "
        "OUT/elpd.csv (the ELPD of every datapoint, ppl_vae.elpd: held out on the test split, "
        "PSIS-LOO of global latents on the train split), OUT/summary.csv (ArviZ's summary), "
        "OUT/diagnostics.json (the verdict and settings) and "
        "the figures posterior.png, ppc.png and khat.png; with --sbc-simulations, "
        "simulation-based calibration of the guide (calibration.csv, ranks.csv, "
        "calibration.png), and with --gap-rows the amortization/approximation gap split "
        "(gap.csv, gap.png).",
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
    parser.add_argument(
        "--sbc-simulations", type=int, default=1000,
        help="simulations of simulation-based calibration (1000; 0 skips it)",
    )
    parser.add_argument(
        "--sbc-draws", type=int, default=99, help="draws of q per SBC simulation (99)"
    )
    parser.add_argument(
        "--gap-rows", type=int, default=100,
        help="datapoints (the first of the split) whose gap is split (100; 0 skips it)",
    )
    parser.add_argument(
        "--gap-steps", type=int, default=300,
        help="optimization steps of the best q per datapoint (300)",
    )
    parser.add_argument("--seed", type=int, help="seed of the draws (default: the run's seed)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it already holds output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .diagnose_run import run as diagnose

    return diagnose(args)
