"""Data-parallel SVI: 2 processes under torchrun (gloo, 127.0.0.1) against one process.

The pair has point-mass (Delta) guides, so the ELBO has no sampling noise and two ranks must
reproduce the single-process run on the same global batches exactly, up to float summation
order; its global latent checks that terms outside the data plate are not counted twice.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from ppl_vae.cli import main
from ppl_vae.training.distributed import World, shard
from ppl_vae.utils.params import read_params

PAIR = textwrap.dedent(
    """
    import os

    import pyro
    import pyro.distributions as dist
    import torch

    from ppl_vae import ModelGuidePair


    def make_pair(x_dim):
        encoder = torch.nn.Linear(x_dim, 2)
        decoder = torch.nn.Linear(2, x_dim)
        crash_rank = int(os.environ.get("CRASH_RANK", "-1"))
        calls = {"n": 0}

        def model(x):
            pyro.module("decoder", decoder)
            calls["n"] += 1
            if int(os.environ.get("RANK", "0")) == crash_rank and calls["n"] > 3:
                raise SystemExit("simulated crash of this rank")
            w = pyro.sample("w", dist.Normal(torch.zeros(x_dim), 1.0).to_event(1))
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(decoder(z) + w, 1.0).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder", encoder)
            w_loc = pyro.param("w_loc", lambda: torch.randn(x_dim))
            pyro.sample("w", dist.Delta(w_loc).to_event(1))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Delta(torch.tanh(encoder(x))).to_event(1))

        return ModelGuidePair(model, guide, name="delta", modules=(encoder, decoder))
    """
)

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    (folder / "pair.py").write_text(PAIR)
    rng = np.random.default_rng(0)
    np.save(folder / "data.npy", rng.normal(size=(40, 5)).astype(np.float32))
    return folder


def _args(folder, out, *extra):
    return ["train", "--model", str(folder / "pair.py"), "--data", str(folder / "data.npy"),
            "--estimator", "sampled", "--steps", "12", "--batch-size", "16", "--lr", "0.05",
            "--seed", "3", "--no-progress", "--out", str(out), *extra]


def _torchrun(args, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-m", "ppl_vae", *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=environment | env)


def test_shards_are_disjoint_and_cover_the_batch():
    index = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    parts = [shard(index, World(rank, 3)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), index)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(inputs, tmp_path):
    assert main(_args(inputs, tmp_path / "one")) == 0
    done = _torchrun(_args(inputs, tmp_path / "two", "--nproc", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    one = read_params(tmp_path / "one" / "params.pt")["params"]
    two = read_params(tmp_path / "two" / "params.pt")["params"]
    assert sorted(one) == sorted(two) and "w_loc" in one and len(one) == 5
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-5)
    # training moved the parameters (the equality is not that of two untouched inits)
    h1 = pd.read_csv(tmp_path / "one" / "history.csv")
    h2 = pd.read_csv(tmp_path / "two" / "history.csv")
    assert h1["elbo"].iloc[-1] > h1["elbo"].iloc[0] + 0.1
    np.testing.assert_allclose(h2["elbo"], h1["elbo"], rtol=1e-5)
    assert not (tmp_path / "two").with_name("two.partial").exists()


@pytest.mark.slow
def test_a_crashing_rank_fails_the_job_with_a_message(inputs, tmp_path):
    out = tmp_path / "crash"
    done = _torchrun(_args(inputs, out, "--nproc", "2"), CRASH_RANK="1")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ppl-vae: error: data-parallel training with 2 processes failed")
    assert "simulated crash of this rank" in done.stderr
    assert not out.exists()


def test_a_batch_that_does_not_split_is_refused(inputs, tmp_path):
    done = _torchrun(_args(inputs, tmp_path / "odd", "--nproc", "3"))
    assert done.returncode == 2
    assert "does not split evenly over 3 processes" in done.stderr


KEYWORD_PAIR = textwrap.dedent(
    """
    import pyro
    import pyro.distributions as dist
    import torch

    from ppl_vae import ModelGuidePair


    def make_pair(x_dim):
        weights = torch.nn.Linear(x_dim, 1)

        def model(x, y):
            pyro.module("weights", weights)
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(weights(x).squeeze(-1) + b, 1.0), obs=y)

        def guide(x, y):
            pyro.sample("b", dist.Delta(pyro.param("b_loc", torch.tensor(0.5))))

        return ModelGuidePair(model, guide, name="keyword", modules=(weights,))
    """
)


@pytest.mark.slow
def test_two_processes_shard_keyword_data_like_one_process(tmp_path):
    """A .npz of arrays x and y, passed as model(x=..., y=...), minibatched with one index."""
    (tmp_path / "pair.py").write_text(KEYWORD_PAIR)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "xy.npz", x=x, y=(x @ [1.0, -1.0, 0.5] + 2.0).astype(np.float32))

    def args(out, *extra):
        return ["train", "--model", str(tmp_path / "pair.py"), "--data", str(tmp_path / "xy.npz"),
                "--estimator", "sampled", "--steps", "12", "--batch-size", "16", "--lr", "0.05",
                "--seed", "3", "--no-progress", "--out", str(out), *extra]

    assert main(args(tmp_path / "one")) == 0
    done = _torchrun(args(tmp_path / "two", "--nproc", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    one = read_params(tmp_path / "one" / "params.pt")["params"]
    two = read_params(tmp_path / "two" / "params.pt")["params"]
    assert sorted(one) == sorted(two) and "b_loc" in one
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-5)
    assert float(one["b_loc"]) != 0.5  # trained
