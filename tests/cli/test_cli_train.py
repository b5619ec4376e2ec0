"""`ppl-vae train` end to end, and the shape of its user errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.cli import main


def test_train_a_zoo_model_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "models/bernoulli_vae.py", "--data", "digits",
                 "--estimator", "analytic", "--steps", "60", "--lr", "3e-3", "--out", str(out),
                 "--seed", "1", "--batch-size", "64", "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "params.pt", "sites.csv", "summary.json"]
    history = pd.read_csv(out / "history.csv")
    assert history["step"].tolist() == list(range(1, 61))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimator"] == "analytic" and summary["seed"] == 1 and summary["binarize"]
    assert summary["metrics"]["test_log_likelihood"] > summary["metrics"]["test_elbo"]
    assert summary["sites"][0]["kl"] == "closed-form"
    assert summary["command"].startswith("ppl-vae train")
    printed = capsys.readouterr().out
    assert "test ELBO per datapoint" in printed and "KL of z: closed-form" in printed
    # the saved parameters reproduce the reported held-out ELBO (in a fresh param store, so
    # that pyro.module registers the new pair's own Parameter objects before the load)
    pyro.clear_param_store()
    pair = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=64)
    test = ppl_vae.load_data("digits", split="test", binarize=True)
    ppl_vae.pair.traces.run_pair(pair.model, pair.guide, test[:2])
    ppl_vae.load_params(out / "params.pt")
    terms = ppl_vae.evaluate(pair.model, pair.guide, test, num_particles=100, seed=1)
    assert terms["elbo"].mean() == pytest.approx(summary["metrics"]["test_elbo"], abs=1e-6)


def test_user_pair_by_module_name_and_csv_data(tmp_path, monkeypatch):
    (tmp_path / "my_pairs.py").write_text(
        "from models.gaussian_vae import make_pair as base\n"
        "def small(x_dim):\n    return base(x_dim=x_dim, z_dim=2, hidden=16)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    x = np.random.default_rng(0).normal(size=(100, 5))
    pd.DataFrame(x, columns=list("abcde")).to_csv(tmp_path / "x.csv", index=False)
    out = tmp_path / "run"
    code = main(["train", "--model", "my_pairs:small", "--data", str(tmp_path / "x.csv"),
                 "--estimator", "sampled", "--steps", "5", "--batch-size", "20",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["x_dim"] == 5 and "test_elbo" not in summary["metrics"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "models/nope.py"], "model file 'models/nope.py' does not exist"),
        (["--model", "ppl_vae.pair.data"], "defines no 'make_pair'"),
        (["--model", "models/bernoulli_vae.py", "--batch-size", "5000"],
         "batch_size=5000 but the data has 1438 rows"),
        (["--model", "models/bernoulli_vae.py", "--estimator", "both"], "invalid choice: 'both'"),
        (["--model", "models/mixture_prior_vae.py", "--strict"], "no closed-form KL"),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    try:
        code = main(["train", *args, "--steps", "2", "--out", str(out), "--no-progress"])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_an_existing_run_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("precious\n")
    args = ["train", "--model", "models/linear_gaussian.py", "--steps", "3", "--out", str(out),
            "--no-progress"]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "history.csv").read_text() == "precious\n"
    # a failing --overwrite run leaves the old run in place
    assert main([*args, "--overwrite", "--batch-size", "99999"]) == 2
    assert (out / "history.csv").read_text() == "precious\n"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "history.csv").read_text().startswith("step,epoch,elbo")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging left behind


def test_console_script_help_and_exit_status():
    exe = [sys.executable, "-m", "ppl_vae"]
    helped = subprocess.run([*exe, "train", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    for flag in ("--model", "--data", "--estimator", "--steps", "--out", "--seed",
                 "--batch-size", "--lr"):
        assert flag in helped.stdout
    failed = subprocess.run([*exe, "train", "--model", "x.py", "--out", "o"],
                            capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1
    assert torch.__version__  # the subprocess imported the same stack
