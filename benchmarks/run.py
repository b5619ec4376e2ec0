"""``make bench`` = ``python -m benchmarks.run [--full] [--only SECTION ...]``.

Sections (each writes ``benchmarks/results/SECTION*.csv``; all print markdown tables, also
written to ``benchmarks/results/tables.md``, or ``tables-SECTION.md`` with ``--only``):

- ``steps``: training steps/s of NumPyro (where the ``bench`` extra is installed),
  hand-written PyTorch (eager and ``torch.compile``), bare Pyro (eager and JIT) and
  ``ppl_vae.fit`` (eager, ``jit=True``, ``compile=True``), both estimators, digits-size and
  MNIST-size models, interleaved repeats, ratios with min/median/max (``steps.csv``,
  ``steps_ratios.csv``), peak RSS per contender in a fresh process (``memory.csv``) and
  ``fit`` eager against ``compile=True`` under ``iwae`` and ``dreg``
  (``steps_compiled_estimators.csv``);
- ``scaling``: steps/s against batch size, latent size and number of latent sites
  (``scaling.csv``; the figure ``docs/figures/scaling.png``);
- ``profile``: where a ``fit`` step's time goes (cProfile, digits-size model);
- ``handlers``: an eager step layer by layer, from the networks' forward passes through
  Pyro's handlers to ``fit``'s step, microseconds per call (``benchmarks/handlers.py``);
- ``vectorized``: ``log_likelihood`` (K = 1000, digits test split) and the gradient draws of
  the gradient-variance measurement against naive per-sample loops;
- ``memmap``: training on a memory-mapped 4 GiB ``.npy`` file, peak RSS by ``/usr/bin/time -v``
  (the file is written to a temporary directory and deleted);
- ``dataparallel``: 1 against 2 processes under torchrun (gloo), MNIST-size model.

The quick default takes a few minutes on 2 cores; ``--full`` runs more steps and repeats.
Every process runs PyTorch on one thread (``torch.set_num_threads(1)``; XLA likewise) and,
but for ``dataparallel``, is pinned to one CPU (``--cpu``, default the last one this process
may use), so that no library uses more cores than another and timings do not depend on how
many cores other work leaves free.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import torch

from . import dataparallel, handlers, memmap, numpyro_vae, scaling, steps, vectorized
from .profile import profile
from .rss import peak_rss_mib
from .tables import markdown

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("steps", "scaling", "profile", "handlers", "vectorized", "memmap", "dataparallel")
UNPINNED = ("dataparallel",)  # runs several processes, one core each
FIGURE = Path(__file__).parent.parent / "docs" / "figures" / "scaling.png"

# section -> setting -> (quick value, --full value)
SETTINGS = {
    "steps": {
        "digits": (300, 1000),
        "mnist": (100, 300),
        "repeats": (3, 5),
        "memory_steps": (50, 200),
    },
    "scaling": {"steps": (100, 300), "repeats": (3, 3)},
    "profile": {"steps": (400, 1000)},
    "handlers": {"calls": (1000, 3000), "repeats": (5, 7)},
    "vectorized": {"repeats": (3, 5)},
    "memmap": {"gigabytes": (4.0, 4.0), "steps": (200, 1000)},
    "dataparallel": {"steps": (60, 300), "repeats": (3, 5)},
}


def machine() -> str:
    """CPU model, cores, load average, and versions, in one line."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    import pyro

    built = torch.__config__.show()
    parts = [part.strip(" -") for part in built.replace(",", "\n").splitlines()]
    blas = [part.split(": ")[-1] for part in parts if "BLAS_INFO" in part or "capability" in part]
    peers = numpyro_vae.backend() if numpyro_vae.available() else "numpyro not installed"
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load} at the start; "
        f"Python {platform.python_version()}, torch {torch.__version__} ({'; '.join(blas)}), "
        f"pyro {pyro.__version__}, {peers}; torch threads per process: 1; "
        f"CUDA: {'yes' if torch.cuda.is_available() else 'none'}"
    )


def pin(cpu: int) -> set[int]:
    """Pin this thread (and the threads and processes it starts) to ``cpu``; returns the
    CPUs it could use before."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return before


def run_steps(settings: dict) -> dict[str, pd.DataFrame]:
    if not numpyro_vae.available():
        print("steps: numpyro is not installed, so the NumPyro contender is skipped "
              "(make bench-peers installs the bench extra and runs it)", file=sys.stderr)
    timings = []
    for config in steps.CONFIGS:
        n = settings["digits" if config.x_dim == 64 else "mnist"]
        for estimator in ("sampled", "analytic"):
            print(f"steps: {config.name}, {estimator}, {n} steps", file=sys.stderr)
            timings.append(steps.measure(config, estimator, n, settings["repeats"]))
    timings = pd.concat(timings, ignore_index=True)
    return {
        "steps": timings,
        "steps_speeds": steps.speeds(timings),
        "steps_ratios": steps.ratios(timings),
        "steps_ratios_end_to_end": steps.ratios(timings, "end_to_end_steps_s"),
        "memory": memory(settings["memory_steps"]),
        "steps_compiled_estimators": steps.measure_compiled_estimators(
            settings["digits"], settings["repeats"]),
    }


def memory(n: int) -> pd.DataFrame:
    """Peak RSS of a fresh process per contender (``none``: imports and data only)."""
    rows = []
    for index, config in enumerate(steps.CONFIGS):
        for estimator in ("sampled", "analytic"):
            names = [n for n in steps.contenders(estimator) if n not in steps.ABLATIONS]
            for name in ("none", *names):
                command = [sys.executable, "-m", "benchmarks.steps", str(index), estimator, name]
                peak, _ = peak_rss_mib([*command, str(n)])
                rows.append((config.name, estimator, name, n, peak))
    frame = pd.DataFrame(rows, columns=["model", "estimator", "contender", "steps", "peak_mib"])
    keys = ["model", "estimator"]
    baseline = frame[frame["contender"] == "none"].set_index(keys)["peak_mib"]
    frame["above_baseline_mib"] = frame["peak_mib"] - frame.set_index(keys).index.map(baseline)
    return frame


def run_scaling(settings: dict) -> dict[str, pd.DataFrame]:
    timings = scaling.measure(settings["steps"], settings["repeats"])
    scaling.plot(timings, FIGURE)
    return {"scaling": timings, "scaling_speeds": scaling.summary(timings),
            "scaling_ratios": scaling.relative(timings)}


def run_profile(settings: dict) -> dict[str, pd.DataFrame]:
    runs = [(e, c) for c in (False, True) for e in ("sampled", "analytic")]
    return {f"profile_{e}{'_compiled' if c else ''}": profile(settings["steps"], e, c)
            for e, c in runs}


def run_handlers(settings: dict) -> dict[str, pd.DataFrame]:
    return {"handlers": handlers.measure(settings["calls"], settings["repeats"])}


def run_vectorized(settings: dict) -> dict[str, pd.DataFrame]:
    timings = vectorized.measure(settings["repeats"])
    return {"vectorized": timings, "vectorized_speedups": vectorized.speedups(timings)}


def run_memmap(settings: dict) -> dict[str, pd.DataFrame]:
    return {"memmap": memmap.measure(settings["gigabytes"], settings["steps"])}


def run_dataparallel(settings: dict) -> dict[str, pd.DataFrame]:
    runs = dataparallel.measure(settings["steps"], settings["repeats"])
    return {"dataparallel": runs, "dataparallel_efficiency": dataparallel.efficiency(runs)}


RUNNERS = {
    "steps": run_steps,
    "scaling": run_scaling,
    "profile": run_profile,
    "handlers": run_handlers,
    "vectorized": run_vectorized,
    "memmap": run_memmap,
    "dataparallel": run_dataparallel,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--full", action="store_true", help="more steps and repeats")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)),
                        help="the CPU every timed process runs on (default: the last one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # pinned before anything starts threads (XLA's thread pool starts with jax's first use):
    # a thread keeps the affinity it started with
    unpinned = pin(args.cpu)
    settings = {
        section: {name: values[args.full] for name, values in options.items()}
        for section, options in SETTINGS.items()
    }
    command = "python -m benchmarks.run" + (" --full" if args.full else "")
    if args.only != list(SECTIONS):
        command += " --only " + " ".join(args.only)
    RESULTS.mkdir(exist_ok=True)
    lines = [f"`{command}` on {machine()}; timed processes pinned to CPU {args.cpu}", ""]
    for section in args.only:
        print(f"== {section}", file=sys.stderr)
        os.sched_setaffinity(0, unpinned if section in UNPINNED else {args.cpu})
        frames = RUNNERS[section](settings[section])
        for name, frame in frames.items():
            frame.to_csv(RESULTS / f"{name}.csv", index=False)
            lines += [f"### {name}", "", markdown(frame), ""]
    text = "\n".join(lines)
    name = "tables" if args.only == list(SECTIONS) else "-".join(["tables", *args.only])
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
