"""Data-parallel SVI: 1 against 2 processes (torchrun, gloo on CPU) on the MNIST-size model.

Each run is ``python -m torch.distributed.run --standalone --nproc_per_node P -m
benchmarks.dataparallel OUT STEPS BATCH``: every rank trains the MNIST-size Bernoulli VAE with
``ppl_vae.fit`` on the same synthetic data with the global batch BATCH (128 or 1024 rows,
split over the P ranks). Rank 0 writes the training time of the steps after the first
``WARMUP`` (a fresh process's first steps pay one-off costs; launch and set-up are excluded
too) and, with P > 1, the measured time of one all-reduce of the gradient buffer. The runs'
order is reversed every other repeat.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ppl_vae.training.distributed import torchrun_command

from .steps import CONFIGS, data_for, fresh_pair

CONFIG = CONFIGS[1]
WARMUP = 10


# (processes, global batch): each global batch on 1 and 2 processes, and one rank's share
# of it on 1 process (that rank's computation without communication)
RUNS = ((1, 128), (2, 128), (1, 64), (1, 1024), (2, 1024), (1, 512))


def measure(steps: int, repeats: int) -> pd.DataFrame:
    """One row per run: steps/s, samples/s, parameter count, all-reduce time."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppl_vae_ddp_") as directory:
        for repeat in range(repeats):
            for nproc, batch in RUNS if repeat % 2 == 0 else RUNS[::-1]:
                out = Path(directory) / f"{repeat}-{nproc}-{batch}.json"
                argv = [str(out), str(steps), str(batch)]
                command = torchrun_command(nproc, "benchmarks.dataparallel", argv)
                retried = _run(command)
                record = json.loads(out.read_text())
                rows.append({"repeat": repeat, "processes": nproc, "retried": retried} | record)
    return pd.DataFrame(rows)


def _run(command: list[str]) -> bool:
    """Run ``command``; if it fails, report that on stderr and run it once more (seen once: a
    rank aborting in C++, "terminate called without an active exception", with no Python
    traceback, in about 1 of 60 two-process runs, not reproduced in 58 more). Returns whether
    it was run again; a second failure raises."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if not done.returncode:
        return False
    print(f"{' '.join(command)} failed, running it again:\n{done.stderr[-3000:]}", file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed twice:\n{done.stderr[-3000:]}")
    return True


def efficiency(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (processes, global batch): median steps/s and samples/s; the speed-up over 1 process
    with the same global batch taken within each repeat (min/median/max); efficiency = median
    speed-up / processes."""
    keys = ["processes", "batch_size"]
    single = runs[runs["processes"] == 1].set_index(["repeat", "batch_size"])["steps_s"]
    runs = runs.assign(
        speedup=runs["steps_s"] / runs.set_index(["repeat", "batch_size"]).index.map(single)
    )
    grouped = runs.groupby(keys, sort=False)
    table = grouped[["steps_s", "samples_s", "num_params", "allreduce_ms"]].median()
    table = table.join(grouped["speedup"].agg(["min", "median", "max"]).add_prefix("speedup_"))
    table = table.reset_index()
    table["efficiency"] = table["speedup_median"] / table["processes"]
    table["allreduce_mb"] = (table["num_params"] + 1) * 4 / 2**20
    table["runs_retried"] = grouped["retried"].sum().to_numpy()
    return table


def _worker(out: str, steps: int, batch_size: int) -> None:
    import faulthandler

    faulthandler.enable()  # a rank aborting in C++ prints where Python was
    import torch
    import torch.distributed as dist

    import ppl_vae
    from ppl_vae.training.distributed import init_from_env, leave

    torch.set_num_threads(1)
    group = init_from_env()
    pair = fresh_pair(CONFIG)
    data = data_for(CONFIG)
    marks = []  # the clock after every step; the first WARMUP steps are not counted
    result = ppl_vae.fit(
        pair.model,
        pair.guide,
        data,
        num_steps=steps,
        batch_size=batch_size,
        seed=0,
        callback=lambda info: marks.append(time.perf_counter()),
    )
    steps -= WARMUP
    seconds = marks[-1] - marks[WARMUP - 1]
    num_params = sum(p.numel() for p in result.params.values())
    allreduce_ms = float("nan")
    if group.size > 1:
        buffer = torch.zeros(num_params + 1)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(50):
            dist.all_reduce(buffer)
        allreduce_ms = (time.perf_counter() - started) / 50 * 1e3
    if group.rank == 0:
        record = {
            "steps": steps,
            "seconds": seconds,
            "steps_s": steps / seconds,
            "batch_size": batch_size,
            "samples_s": steps * batch_size / seconds,
            "num_params": num_params,
            "allreduce_ms": allreduce_ms,
        }
        Path(out).write_text(json.dumps(record))
    leave()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
