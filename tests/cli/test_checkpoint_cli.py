"""`ppl-vae train --checkpoint-dir/--checkpoint-every/--resume`: a training process killed from
outside with SIGKILL at an arbitrary moment, resumed, writes the run of the uninterrupted
command; the flags refuse what would lose work."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import ppl_vae
from models import linear_gaussian
from ppl_vae.cli import main
from ppl_vae.training.checkpoint import FILENAME, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
STEPS = 300


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "x.csv"
    rows = np.random.default_rng(0).normal(size=(40, 5))
    pd.DataFrame(rows, columns=list("abcde")).to_csv(path, index=False)
    return path


def _args(csv: Path, out: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return [
        "train", "--model", "models/linear_gaussian.py", "--data", str(csv),
        "--estimator", "sampled", "--steps", str(steps), "--batch-size", "8", "--lr", "0.05",
        "--seed", "3", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_args(csv, out)) == 0
    return out


def _assert_same_run(out: Path, reference: Path) -> None:
    """history.csv equal but for time_s, params.pt bitwise, the same summary metrics."""
    columns = ["step", "epoch", "elbo", "beta"]
    history, expected = (pd.read_csv(d / "history.csv") for d in (out, reference))
    assert history[columns].equals(expected[columns])
    params, expected = (torch.load(d / "params.pt", weights_only=True) for d in (out, reference))
    assert params["params"].keys() == expected["params"].keys()
    for name, value in params["params"].items():
        assert torch.equal(value, expected["params"][name]), name
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert summary["metrics"] == expected["metrics"] and summary["steps"] == STEPS


@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_killed_from_outside_and_resumed_is_the_uninterrupted_run(
    tmp_path, csv, uninterrupted, delay
):
    """Checkpoints every step; SIGKILL lands ``delay`` seconds after the first one appears
    (wherever the process then is: in a step, in a checkpoint write). No OUT is left, the
    checkpoint is complete, and --resume writes the uninterrupted run."""
    out, checkpoints = tmp_path / "run", tmp_path / "run.checkpoints"
    extra = ("--checkpoint-dir", str(checkpoints), "--checkpoint-every", "1")
    process = subprocess.Popen(
        [sys.executable, "-m", "ppl_vae", *_args(csv, out, *extra)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / FILENAME).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        assert process.wait(timeout=60) == -signal.SIGKILL
    step = read_checkpoint(checkpoints / FILENAME)["step"]
    assert 0 < step < STEPS  # killed mid-training
    assert not out.exists()  # OUT is written whole at the end, or not at all
    assert main(_args(csv, out, "--checkpoint-dir", str(checkpoints), "--resume")) == 0
    _assert_same_run(out, uninterrupted)
    assert read_checkpoint(checkpoints / FILENAME)["step"] == STEPS
    assert [p.name for p in checkpoints.iterdir()] == [FILENAME]  # no half-written leftovers


def test_flags_that_would_lose_work_are_refused(tmp_path, csv, capsys):
    """A finished run and its checkpoints stay as they are: --resume into the existing OUT is
    refused (no --overwrite), and so is a fresh run over the checkpoints; flags that cannot
    work say which flag is missing, or that the checkpoints would be replaced with OUT."""
    out, checkpoints = tmp_path / "run", tmp_path / "ck"
    with_checkpoints = ("--checkpoint-dir", str(checkpoints), "--checkpoint-every", "50")
    assert main(_args(csv, out, *with_checkpoints)) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (*out.iterdir(), checkpoints / FILENAME)}
    cases = [
        (_args(csv, out, *with_checkpoints, "--resume"), "already holds a run"),
        (_args(csv, tmp_path / "new", *with_checkpoints), "holds a checkpoint of an earlier run"),
        (_args(csv, tmp_path / "new", "--resume"), "--resume needs --checkpoint-dir DIR"),
        (_args(csv, tmp_path / "new", "--checkpoint-every", "5"), "--checkpoint-every needs"),
        (_args(csv, tmp_path / "new", "--checkpoint-dir", str(tmp_path / "new" / "ck")),
         "is inside --out"),
        (_args(csv, tmp_path / "new", "--checkpoint-dir", str(tmp_path / "c2"),
               "--checkpoint-every", "0"), "checkpoint_every must be a positive integer"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("ppl-vae: error: ") and err.count("\n") == 1 and message in err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "run"]


def test_clip_norm_reaches_the_optimizer(tmp_path, csv):
    """--clip-norm C trains exactly as fit(clip_norm=C) does, and C is recorded."""
    out = tmp_path / "run"
    assert main(_args(csv, out, "--clip-norm", "0.01", steps=20)) == 0
    assert json.loads((out / "summary.json").read_text())["clip_norm"] == 0.01
    saved = torch.load(out / "params.pt", weights_only=True)["params"]
    for clip_norm in (0.01, None):
        pyro.clear_param_store()
        model, guide = linear_gaussian.make_pair(x_dim=5)
        data = ppl_vae.load_data(csv)
        result = ppl_vae.fit(model, guide, data, num_steps=20, batch_size=8, lr=0.05, seed=3,
                             clip_norm=clip_norm)  # fmt: skip
        same = all(torch.equal(saved[name], value) for name, value in result.params.items())
        assert same == (clip_norm is not None)
