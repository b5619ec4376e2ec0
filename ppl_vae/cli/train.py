"""``ppl-vae train``: fit one pair with one estimator and write the run directory."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..evaluation.evaluation import evaluate, log_likelihood
from ..training.distributed import init_from_env, launch, leave
from ..training.training import fit
from ..utils.errors import CheckpointError, first_line
from ..utils.params import save_params
from ..utils.runs import run_directory, versions, write_json
from .common import (
    add_estimator_option,
    add_pair_options,
    add_training_options,
    command_line,
    data_width,
    load_inputs,
)

OUTPUTS = ("history.csv", "sites.csv", "params.pt", "summary.json")


def register(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="fit a model/guide pair by SVI and write the run directory",
        description="Fit a model/guide pair by SVI. Writes OUT/history.csv (per-step ELBO), "
        "OUT/params.pt (trained parameters, tensors only), OUT/sites.csv (closed-form or "
        "sampled KL per latent site) and OUT/summary.json (settings, held-out ELBO and "
        "importance-sampled log-likelihood, package versions).",
    )
    add_pair_options(parser)
    add_estimator_option(parser)
    add_training_options(parser, steps=2000)
    parser.add_argument("--out", required=True, help="run directory to create")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it already holds a run"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse if the analytic estimator would have to sample some site's KL",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_checkpoint_options(parser)
    parser.add_argument(
        "--jit",
        action="store_true",
        help="compile the sampled ELBO with PyTorch's JIT (measured faster; see "
        "docs/performance.md); refused for the other estimators and with --kl-warmup",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="trace the pair's loss once and compile it with torch.compile (sampled, analytic, "
        "stl; the eager numbers up to float rounding; see docs/performance.md); a pair that "
        "cannot be compiled trains eagerly, with a warning",
    )
    parser.add_argument(
        "--validate-every-step",
        action="store_true",
        help="run Pyro's validation on every step, not on the first one only (slower; "
        "catches a parameter that leaves its support without making the loss non-finite)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="P",
        help="data-parallel SVI in P processes on this machine (runs torchrun; the global "
        "--batch-size is split over them; only rank 0 writes OUT) (default 1)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc != 1 and "WORLD_SIZE" not in os.environ:
        return launch(args.nproc, args.argv)
    _checkpoint_settings(args)  # refuse bad checkpoint flags before loading anything
    group = init_from_env(args.device)  # under torchrun: join the process group
    inputs = load_inputs(args)
    if group.rank > 0:  # only rank 0 writes
        _fit(args, inputs)
        leave()
        return 0
    model, guide = inputs.pair
    with run_directory(args.out, args.overwrite) as staging:
        started = time.perf_counter()
        result = _fit(args, inputs)
        seconds = time.perf_counter() - started
        metrics = {"train_elbo": result.final_elbo}
        failure = None
        if inputs.test is not None:
            try:
                metrics |= _held_out(model, guide, inputs.test, args.seed)
            except Exception as e:  # the trained parameters are written all the same
                failure = f"{type(e).__name__}: {first_line(e)}"
                metrics["evaluation_error"] = failure
        result.history.to_csv(staging / "history.csv", index=False)
        result.sites.to_csv(staging / "sites.csv", index=False)
        save_params(staging / "params.pt")
        summary = _summary(args, inputs, result, metrics, seconds, group)
        write_json(staging / "summary.json", summary)
    _print_summary(inputs.description, args, result, metrics, seconds)
    leave()
    if failure is not None:
        print(f"ppl-vae: error: the run is written, but evaluating it on the held-out data "
              f"failed ({failure})", file=sys.stderr)
        return 2
    return 0


def _summary(args, inputs, result, metrics, seconds, group) -> dict:
    """What summary.json records of a run: its command, inputs, settings and results."""
    return {
        "command": command_line(args),
        "model": args.model,
        "pair": inputs.pair.name,
        "data": args.data,
        "test_data": args.test_data,
        "binarize": bool(args.binarize or (inputs.pair.binary and args.data == "digits")),
        "x_dim": data_width(inputs.train),
        "estimator": args.estimator,
        "steps": result.num_steps,
        "seed": args.seed,
        "batch_size": result.batch_size,
        "lr": args.lr,
        "particles": args.particles,
        "kl_warmup": args.kl_warmup,
        "clip_norm": args.clip_norm,
        "checkpoint_dir": args.checkpoint_dir,
        "nproc": group.size,
        "jit": args.jit,
        "compile": args.compile,
        "compile_s": result.compile_s,
        "validate_every_step": args.validate_every_step,
        "seconds": seconds,
        "metrics": metrics,
        "sites": result.sites.to_dict(orient="records"),
        "versions": versions(),
    }


def _held_out(model, guide, test, seed: int) -> dict[str, float]:
    """Held-out ELBO terms and IWAE bound per datapoint (joint numbers over the rows)."""
    terms = evaluate(model, guide, test, num_particles=100, seed=seed)
    ll = log_likelihood(model, guide, test, num_samples=1000, seed=seed)
    joint, rows = terms.attrs["joint"], len(terms)
    return {
        "test_elbo": joint["elbo"] / rows,
        "test_reconstruction": joint["reconstruction"] / rows,
        "test_kl": joint["kl"] / rows,
        "test_log_likelihood": ll.attrs["joint"] / rows,
    }


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="write DIR/checkpoint.pt every --checkpoint-every steps and at the end, outside "
        "OUT so that a killed run keeps it (e.g. OUT.checkpoints) (default: no checkpoints)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="steps between checkpoints (default 100; needs --checkpoint-dir)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from DIR/checkpoint.pt of --checkpoint-dir (a fresh start if there is "
        "none yet); the result is that of the uninterrupted run",
    )


def _checkpoint_settings(args: argparse.Namespace) -> dict:
    """fit's checkpoint arguments; the directory must lie outside OUT, which is replaced whole."""
    if args.checkpoint_dir is None:
        if args.resume or args.checkpoint_every is not None:
            flag = "--resume" if args.resume else "--checkpoint-every"
            raise CheckpointError(
                f"{flag} needs --checkpoint-dir DIR, the directory the checkpoints are in"
            )
        return {}
    directory, out = Path(args.checkpoint_dir).resolve(), Path(args.out).resolve()
    if directory == out or out in directory.parents:
        raise CheckpointError(
            f"--checkpoint-dir {args.checkpoint_dir!r} is inside --out {args.out!r}, which is "
            "written whole at the end; choose a directory outside it, e.g. OUT.checkpoints"
        )
    return {
        "checkpoint_dir": directory,
        "checkpoint_every": 100 if args.checkpoint_every is None else args.checkpoint_every,
        "resume": args.resume,
    }


def _fit(args: argparse.Namespace, inputs):
    model, guide = inputs.pair
    return fit(
        model,
        guide,
        inputs.train,
        estimator=args.estimator,
        num_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_particles=args.particles,
        seed=args.seed,
        device=args.device,
        kl_warmup=args.kl_warmup,
        clip_norm=args.clip_norm,
        strict=args.strict,
        progress=not args.no_progress,
        jit=args.jit,
        compile=args.compile,
        validate_every_step=args.validate_every_step,
        **_checkpoint_settings(args),
    )


def _print_summary(description, args, result, metrics, seconds) -> None:
    lines = [
        f"{description}, estimator={args.estimator}, {result.num_steps} steps, {seconds:.1f} s",
        f"  train ELBO per datapoint (last 10% of steps): {metrics['train_elbo']:.3f}",
    ]
    if "test_elbo" in metrics:
        lines += [
            f"  test ELBO per datapoint (K=100):             {metrics['test_elbo']:.3f}",
            f"  test log p(x) per datapoint (IWAE, K=1000):  {metrics['test_log_likelihood']:.3f}",
        ]
    if result.compile_s is not None:
        lines.append(f"  compiling the step took {result.compile_s:.1f} s (not in the steps' time)")
    lines += [f"  KL of {r.site}: {r.kl}" for r in result.sites.itertuples()]
    lines.append(f"wrote {Path(args.out)}/: {' '.join(OUTPUTS)}")
    print("\n".join(lines))
