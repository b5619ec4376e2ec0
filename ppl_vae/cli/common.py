"""Options and input loading shared by the subcommands: train a pair, or reload a train run."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from ..estimators.estimators import ESTIMATORS
from ..pair.data import Array, as_tensor, load_arrays, load_data
from ..pair.dataset import as_dataset
from ..pair.pair import ModelGuidePair, load_pair
from ..pair.traces import run_pair
from ..utils.errors import DataError, OutputError, check_seed
from ..utils.params import load_params
from ..utils.runs import read_json


def add_pair_options(parser: argparse.ArgumentParser) -> None:
    """--model, --data, --test-data, --binarize."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="the pair: a file (models/bernoulli_vae.py) or package.module, optionally "
        "':NAME' of a make_pair(x_dim, ...) callable or a ModelGuidePair (default make_pair)",
    )
    parser.add_argument(
        "--data",
        default="digits",
        metavar="SOURCE",
        help="'digits' (embedded 8x8 digits, fixed 80/20 train/test split) or a .npy "
        "(memory-mapped), .npz[:KEY] or .csv file; a .npz of several arrays (no :KEY) is "
        "passed by keyword, model(x=..., y=...) for arrays x and y (default: digits)",
    )
    parser.add_argument(
        "--test-data",
        metavar="PATH",
        help="held-out data file for a file --data (digits brings its own test split)",
    )
    parser.add_argument(
        "--binarize",
        action="store_true",
        help="threshold the data at 0.5 (automatic for digits when the pair is binary)",
    )


def add_run_options(parser: argparse.ArgumentParser, steps: int) -> None:
    """--steps, --batch-size, --lr, --device: what every training command takes."""
    parser.add_argument("--steps", type=int, default=steps, help=f"SVI steps (default {steps})")
    parser.add_argument(
        "--batch-size", type=int, help="minibatch rows (default 128, or all rows if fewer)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def add_training_options(parser: argparse.ArgumentParser, steps: int) -> None:
    """:func:`add_run_options`, and --seed, --particles, --kl-warmup, --clip-norm."""
    add_run_options(parser, steps)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--particles", type=int, default=1, help="ELBO particles per step, vectorized (1)"
    )
    parser.add_argument(
        "--kl-warmup",
        type=int,
        default=0,
        metavar="W",
        help="anneal the KL weight linearly from 1/W to 1 over W steps (default 0: off)",
    )
    parser.add_argument(
        "--clip-norm",
        type=float,
        metavar="C",
        help="clip each parameter's gradient norm at C, a remedy for non-finite gradients "
        "(default: no clipping)",
    )


def add_estimator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--estimator",
        choices=sorted(ESTIMATORS),
        default="analytic",
        help="; ".join(f"{e.name}: {e.summary}" for e in ESTIMATORS.values())
        + " (default analytic)",
    )


@dataclass(frozen=True)
class Inputs:
    """A loaded pair with its training and (optional) held-out data."""

    pair: ModelGuidePair
    train: Array | dict[str, torch.Tensor]
    test: torch.Tensor | dict[str, torch.Tensor] | None
    description: str


def load_source(source: str):
    """A data file as fit takes it: one array, or a .npz of several arrays as a dict."""
    if source.lower().endswith(".npz"):
        arrays = load_arrays(source)
        if len(arrays) > 1:
            return arrays
    return load_data(source)


def data_width(data) -> int:
    """The width of the data (of its first array for keyword data): what x_dim means."""
    first = next(iter(data.values())) if isinstance(data, dict) else data
    return int(first.shape[1]) if first.ndim > 1 else 1


def _rows(data) -> int:
    return as_dataset(data).rows


def load_inputs(args: argparse.Namespace) -> Inputs:
    """Load data, then the pair built for its width (seeded), then binarize if it needs it."""
    if args.data == "digits":
        train: Array = load_data("digits", split="train")
        test: torch.Tensor | None = as_tensor(load_data("digits", split="test"))
    else:
        train = load_source(args.data)
        test = _in_memory(load_source(args.test_data)) if args.test_data else None
    x_dim = data_width(train)
    pyro.clear_param_store()
    check_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pair = load_pair(args.model, x_dim=x_dim)
    if pair.x_dim is not None and pair.x_dim != x_dim:
        raise DataError(
            f"the data has {x_dim} columns but pair {pair.name!r} was built for {pair.x_dim}; "
            "give data of that width or a pair whose make_pair takes x_dim"
        )
    _check_test_shape(train, test)
    if args.binarize or (pair.binary and args.data == "digits"):
        if isinstance(train, dict):
            raise DataError("--binarize applies to one data array, not a .npz of several; "
                            "store the arrays binarized")
        train = (as_tensor(train) > 0.5).to(torch.float32)
        test = None if test is None else (test > 0.5).to(torch.float32)
    for module in pair.modules:
        module.to(args.device)
    rows = f"{_rows(train)} train" + ("" if test is None else f" / {_rows(test)} test")
    return Inputs(pair, train, test, f"{pair.name} on {args.data} ({rows} rows)")


def _in_memory(data):
    return {k: as_tensor(v) for k, v in data.items()} if isinstance(data, dict) else as_tensor(data)


def _check_test_shape(train, test) -> None:
    """Held-out rows must have the training rows' shape (per array for keyword data)."""
    if test is None:
        return
    pairs = (
        [(k, train[k], test.get(k)) for k in train] if isinstance(train, dict)
        else [("data", train, None if isinstance(test, dict) else test)]
    )
    for name, a, b in pairs:
        if b is None or tuple(b.shape[1:]) != tuple(a.shape[1:]):
            have = None if b is None else tuple(b.shape[1:])
            raise DataError(
                f"test data {name!r} rows have shape {have} but training rows have "
                f"{tuple(a.shape[1:])}; give held-out data of the same arrays and widths"
            )


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, for reports and summaries."""
    return shlex.join(["ppl-vae", *args.argv])


def load_run(run_dir: str | Path) -> tuple[Inputs, dict]:
    """Rebuild a ``ppl-vae train`` run: its pair and data from ``summary.json``, with the
    trained parameters of ``params.pt`` loaded. Returns the inputs and the summary."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    missing = [k for k in ("model", "data", "seed", "x_dim") if k not in summary]
    if missing:
        raise OutputError(
            f"{str(run_dir / 'summary.json')!r} lacks {missing}; give a directory written by "
            "ppl-vae train"
        )
    args = argparse.Namespace(
        model=summary["model"],
        data=summary["data"],
        test_data=summary.get("test_data"),
        binarize=bool(summary.get("binarize", False)),
        seed=int(summary["seed"]),
        device="cpu",
    )
    inputs = load_inputs(args)
    width = data_width(inputs.train)
    if width != int(summary["x_dim"]):
        raise DataError(
            f"the run was trained on {summary['x_dim']} columns but {summary['data']!r} now has "
            f"{width}; give the run the data it was trained on"
        )
    with torch.no_grad():  # registers pyro.module's own Parameters, so loading reaches them
        run_pair(*inputs.pair, as_dataset(inputs.train).head(2))
    load_params(run_dir / "params.pt")
    return inputs, summary
