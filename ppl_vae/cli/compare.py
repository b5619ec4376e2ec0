"""``ppl-vae compare``: train one pair with each estimator and seed, and write the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..estimators.estimators import ESTIMATORS
from ..utils.runs import check_output
from .common import add_pair_options, add_run_options, command_line, load_inputs


def register(commands) -> None:
    parser = commands.add_parser(
        "compare",
        help="compare the sampled-KL and analytic-KL ELBO on a pair and write a report",
        description="Train a model/guide pair with each estimator and seed from the same "
        "initial parameters and measure them side by side: estimate and gradient variance, "
        "convergence per step and per second, cost, held-out ELBO and log-likelihood. Writes "
        "OUT/report.md with PNG figures and every table as CSV.",
    )
    add_pair_options(parser)
    parser.add_argument(
        "--estimators",
        nargs="+",
        choices=sorted(ESTIMATORS),
        default=["sampled", "analytic"],
        help="estimators to compare; the first is the reference (default: sampled analytic)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed (0 1 2)"
    )
    add_run_options(parser, steps=3000)
    parser.add_argument(
        "--draws",
        type=int,
        default=100,
        help="draws for estimate and gradient variance at each checkpoint (100)",
    )
    parser.add_argument(
        "--iwae-particles",
        type=int,
        default=5,
        metavar="K",
        help="importance samples per datapoint of the iwae estimator, per step and draw (5)",
    )
    parser.add_argument(
        "--checkpoints", type=int, default=5, help="log-spaced checkpoints after step 0 (5)"
    )
    parser.add_argument(
        "--ll-samples", type=int, default=1000, help="importance samples for log p(x) (1000)"
    )
    parser.add_argument(
        "--gap-rows", type=int, default=100,
        help="held-out rows whose amortization/approximation gap is split per run (100; 0 "
        "skips it)",
    )
    parser.add_argument(
        "--gap-steps", type=int, default=300,
        help="optimization steps of the best q per datapoint in the gap split (300)",
    )
    parser.add_argument("--out", required=True, help="report directory to create")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it already holds a run"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run, seed=0)


def run(args: argparse.Namespace) -> int:
    # imported here, so that starting the other commands does not load the report's plotting
    from ..comparison.comparison import ComparisonSettings, compare_estimators

    check_output(args.out, args.overwrite)  # refuses a taken OUT before hours of training
    inputs = load_inputs(args)
    model, guide = inputs.pair
    settings = ComparisonSettings(
        estimators=args.estimators,
        seeds=args.seeds,
        num_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_draws=args.draws,
        iwae_particles=args.iwae_particles,
        num_checkpoints=args.checkpoints,
        ll_samples=args.ll_samples,
        gap_rows=args.gap_rows,
        gap_steps=args.gap_steps,
        device=args.device,
        progress=not args.no_progress,
    )
    comparison = compare_estimators(
        model,
        guide,
        inputs.train,
        inputs.test,
        settings,
        modules=inputs.pair.modules,
        exact_log_likelihood=inputs.pair.exact_log_likelihood,
    )
    comparison.save(args.out, args.overwrite, command=command_line(args),
                    description=inputs.description)
    summary = comparison.summary.set_index("estimator")
    lines = [f"{inputs.description}: {len(args.seeds)} seeds x {args.steps} steps"]
    for estimator, row in summary.iterrows():
        lines.append(
            f"  {estimator:>9}: held-out ELBO {row['test_elbo']:.3f} ± {row['test_elbo_sd']:.3f}"
            f", log p(x) {row['log_likelihood']:.3f}, {row['ms_per_step']:.2f} ms/step"
        )
    lines.append(f"wrote {Path(args.out) / 'report.md'}")
    print("\n".join(lines))
    return 0
