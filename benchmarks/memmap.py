"""Training on a memory-mapped ``.npy`` file larger than one wants in memory: peak RSS.

A float32 file of synthetic binary rows (784 columns, MNIST-size) is written on the fly in a
temporary directory, chunk by chunk, and deleted afterwards. A child process
``/usr/bin/time -v python -m benchmarks.memmap FILE STEPS`` loads it with
``ppl_vae.load_data`` (memory-mapped), validates it (non-finite values, Bernoulli support: two
full reads) and trains the MNIST-size Bernoulli VAE on it; ``/usr/bin/time`` reports the
child's peak resident set size. A child with ``STEPS = 0`` that only imports and builds the
pair gives the baseline.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .rss import peak_rss_mib

X_DIM = 784
CHUNK_ROWS = 65536


def write_file(path: Path, gigabytes: float, seed: int = 0) -> int:
    """Write ``gigabytes`` GiB of float32 {0, 1} rows to ``path``; returns the row count."""
    rows = int(gigabytes * 2**30) // (X_DIM * 4)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, X_DIM))
    generator = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        array[start:stop] = generator.random((stop - start, X_DIM), dtype=np.float32) < 0.5
        array.flush()
    del array
    return rows


def measure(gigabytes: float, steps: int) -> pd.DataFrame:
    """Peak RSS (MiB) of a baseline child and of the training child, and the training time."""
    directory = Path(tempfile.mkdtemp(prefix="ppl_vae_memmap_"))
    try:
        path = directory / "data.npy"
        free = shutil.disk_usage(directory).free / 2**30
        if free < gigabytes + 1:
            raise RuntimeError(f"{free:.1f} GiB free in {directory}: too little for the file")
        started = time.perf_counter()
        rows = write_file(path, gigabytes)
        written = time.perf_counter() - started
        size = path.stat().st_size / 2**30
        records = []
        for label, n in (("baseline (imports, pair, no data)", 0), ("train on the file", steps)):
            peak, report = _child(path, n)
            records.append(
                {
                    "run": label,
                    "file_gib": size,
                    "rows": rows,
                    "steps": n,
                    "peak_rss_mib": peak,
                    "write_s": written,
                    **report,
                }
            )
        return pd.DataFrame(records)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _child(path: Path, steps: int) -> tuple[float, dict]:
    peak, out = peak_rss_mib([sys.executable, "-m", "benchmarks.memmap", str(path), str(steps)])
    return peak, json.loads(out.strip().splitlines()[-1])


def _train(path: str, steps: int) -> dict:
    import pyro
    import torch

    import ppl_vae

    torch.set_num_threads(1)
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=X_DIM, z_dim=20, hidden=400)
    if steps == 0:
        return {}
    started = time.perf_counter()
    data = ppl_vae.load_data(path)
    result = ppl_vae.fit(pair.model, pair.guide, data, num_steps=steps, batch_size=128, seed=0)
    seconds = time.perf_counter() - started
    training = float(result.history["time_s"].iloc[-1])
    return {
        "setup_s": seconds - training,
        "train_s": training,
        "steps_s": steps / training,
        "final_elbo": result.final_elbo,
    }


if __name__ == "__main__":
    print(json.dumps(_train(sys.argv[1], int(sys.argv[2]))))
