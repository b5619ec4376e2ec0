"""Data-parallel SVI: 1 against 2 processes (torchrun, gloo on CPU) on the MNIST-size model.

Each run is ``python -m torch.distributed.run --standalone --nproc_per_node P -m
benchmarks.dataparallel OUT STEPS``: every rank trains the MNIST-size Bernoulli VAE with
``ppl_vae.fit`` on the same synthetic data and the same global batch of 128 rows (128 / P per
rank); rank 0 writes the training time (``fit``'s own clock, launch and set-up excluded) and,
with P > 1, the measured time of one all-reduce of the gradient buffer. Repeats alternate
P = 1 and P = 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from .steps import CONFIGS, data_for, fresh_pair

CONFIG = CONFIGS[1]


def measure(steps: int, repeats: int, processes: tuple[int, ...] = (1, 2)) -> pd.DataFrame:
    """One row per run: processes, steps/s, samples/s, parameter count, all-reduce time."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppl_vae_ddp_") as directory:
        for repeat in range(repeats):
            for nproc in processes if repeat % 2 == 0 else processes[::-1]:
                out = Path(directory) / f"{repeat}-{nproc}.json"
                command = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={nproc}",
                    "-m",
                    "benchmarks.dataparallel",
                    str(out),
                    str(steps),
                ]
                done = subprocess.run(command, capture_output=True, text=True, timeout=900)
                if done.returncode:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
                rows.append({"repeat": repeat, "processes": nproc} | json.loads(out.read_text()))
    return pd.DataFrame(rows)


def efficiency(runs: pd.DataFrame) -> pd.DataFrame:
    """Median steps/s per process count; speed-up and efficiency (speed-up / P) against P=1."""
    medians = runs.groupby("processes").median(numeric_only=True)
    single = medians.loc[1, "steps_s"]
    table = medians[["steps_s", "samples_s", "num_params", "allreduce_ms"]].copy()
    table["speedup"] = table["steps_s"] / single
    table["efficiency"] = table["speedup"] / table.index
    table["allreduce_mb"] = (table["num_params"] + 1) * 4 / 2**20
    return table.reset_index()


def _worker(out: str, steps: int) -> None:
    import torch
    import torch.distributed as dist

    import ppl_vae
    from ppl_vae.distributed import init_from_env

    torch.set_num_threads(1)
    group = init_from_env()
    pair = fresh_pair(CONFIG)
    data = data_for(CONFIG)
    result = ppl_vae.fit(
        pair.model, pair.guide, data, num_steps=steps, batch_size=CONFIG.batch_size, seed=0
    )
    seconds = float(result.history["time_s"].iloc[-1])
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
            "samples_s": steps * CONFIG.batch_size / seconds,
            "num_params": num_params,
            "allreduce_ms": allreduce_ms,
        }
        Path(out).write_text(json.dumps(record))
    if group.size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
