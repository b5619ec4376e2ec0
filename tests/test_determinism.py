"""Determinism on CPU: the same seed gives the same run bitwise, whatever the caller's random
streams were; another seed gives another run; the storage of the data does not matter. The
seeded evaluations (``seed=``) give the same numbers bitwise whatever the caller's streams
were, and leave the caller's torch stream where it was.

"Whatever the caller's streams were" is exercised: before every ppl_vae call the test puts
torch's, numpy's, Python's and Pyro's global streams in a state that differs between the runs
compared (``disturb``), after all the seeding the test itself does.
"""

import random

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import ppl_vae
from models import bernoulli_vae
from ppl_vae import arviz_compat

COLUMNS = ["step", "epoch", "elbo", "beta"]  # time_s is wall-clock


def disturb(caller: int) -> None:
    """Leave the caller's global streams in a state of their own for each ``caller``: Pyro's
    seeding (torch, numpy and ``random`` at once), then each stream seeded apart and advanced
    by a number of draws that depends on ``caller``."""
    pick = random.Random(caller)  # a private stream: choosing the disturbance disturbs nothing
    pyro.set_rng_seed(pick.randrange(2**31))
    torch.manual_seed(pick.randrange(2**31))
    torch.rand(pick.randint(1, 1000))
    np.random.seed(pick.randrange(2**31))  # noqa: NPY002
    np.random.random(pick.randint(1, 1000))  # noqa: NPY002
    random.seed(pick.randrange(2**31))
    for _ in range(pick.randint(1, 1000)):
        random.random()


def _pair(seed: int) -> ppl_vae.ModelGuidePair:
    """A small Bernoulli VAE (neural encoder and decoder) whose initial weights are those of
    ``seed``: Pyro's RNGs seeded before the pair is built, as load_inputs does."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return bernoulli_vae.make_pair(x_dim=64, z_dim=2, hidden=16)


def _run(data, seed: int, estimator: str, caller: int) -> ppl_vae.FitResult:
    """The pair of ``seed`` fitted with ``seed``, 2 particles, KL warm-up; the caller's streams
    disturbed by ``caller`` in between (fit must not depend on them)."""
    model, guide = _pair(seed)
    disturb(caller)
    return ppl_vae.fit(model, guide, data, estimator=estimator, num_steps=15, batch_size=50,
                       lr=1e-2, num_particles=2, kl_warmup=5, seed=seed)  # fmt: skip


def _same(a: ppl_vae.FitResult, b: ppl_vae.FitResult) -> bool:
    return a.history[COLUMNS].equals(b.history[COLUMNS]) and all(
        torch.equal(a.params[name], b.params[name]) for name in a.params
    )


@pytest.mark.parametrize("estimator", ["sampled", "analytic"])
def test_same_seed_same_run_other_seed_other_run(binary_digits, estimator):
    data = binary_digits[0][:200]
    first = _run(data, seed=5, estimator=estimator, caller=1)
    again = _run(data, seed=5, estimator=estimator, caller=2)
    other = _run(data, seed=6, estimator=estimator, caller=1)
    assert _same(first, again)
    assert not first.history["elbo"].equals(other.history["elbo"])
    assert all(not torch.equal(first.params[n], other.params[n]) for n in first.params)


def test_memory_mapped_data_gives_the_same_run_as_in_memory_data(binary_digits, tmp_path):
    """The minibatches are the same rows whether read by index from a .npy file or a tensor."""
    data = binary_digits[0][:200]
    np.save(tmp_path / "x.npy", data.numpy())
    mapped = ppl_vae.load_data(tmp_path / "x.npy")
    assert isinstance(mapped, np.memmap)
    assert _same(_run(mapped, 5, "sampled", 0), _run(data, 5, "sampled", 0))


# Each seeded evaluation of ppl_vae's public API, on (pair, x, seed); small draws, and
# particle batches that do not divide the draws, so that several chunks are drawn.
EVALUATIONS = {
    "evaluate": lambda pair, x, seed: ppl_vae.evaluate(
        *pair, x, num_particles=6, estimator="sampled", batch_size=16, seed=seed
    ),
    "log_likelihood": lambda pair, x, seed: ppl_vae.log_likelihood(
        *pair, x, num_samples=50, batch_size=16, particle_batch=20, seed=seed
    ),
    "vi_diagnostics": lambda pair, x, seed: ppl_vae.vi_diagnostics(
        *pair, x, num_samples=50, batch_size=16, particle_batch=20, seed=seed
    ),
    "to_inference_data": lambda pair, x, seed: ppl_vae.to_inference_data(
        *pair, x, num_samples=30, particle_batch=20, seed=seed
    ),
}


def numbers(result) -> dict[str, np.ndarray]:
    """The numbers a result holds, by name: a table's columns and index, a data tree's
    variables and their coordinates."""
    if isinstance(result, pd.Series):
        result = result.to_frame()
    if isinstance(result, pd.DataFrame):
        return {"index": result.index.to_numpy()} | {
            str(c): result[c].to_numpy() for c in result.columns
        }
    out = {}  # InferenceData (a DataTree under arviz 1.x)
    for group in arviz_compat.groups(result):
        for name in result[group].data_vars:
            variable = result[group][name]
            out[f"{group}/{name}"] = variable.values
            out |= {f"{group}/{name}/{dim}": variable[dim].values for dim in variable.dims}
    return out


def assert_bitwise_equal(a, b) -> None:
    """The two results hold the same numbers bit for bit (NaN where the other has NaN), with
    the same dtypes; tables also the same attrs (a data tree's hold its creation time)."""
    x, y = numbers(a), numbers(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name].dtype == y[name].dtype, name
        np.testing.assert_array_equal(x[name], y[name], err_msg=name, strict=True)
    if isinstance(a, pd.DataFrame | pd.Series):
        np.testing.assert_equal(a.attrs, b.attrs)


def assert_differ(a, b) -> None:
    """Some drawn number differs: the seed reaches the draws (equality is not vacuous)."""
    x, y = numbers(a), numbers(b)
    nan = {name: x[name].dtype.kind in "fc" for name in x}  # NaN equals NaN in float columns
    assert any(not np.array_equal(x[n], y[n], equal_nan=nan[n]) for n in x)


@pytest.fixture
def trained(binary_digits):
    """The pair of seed 5 after a short fit, and 24 held-out rows."""
    model, guide = _pair(5)
    ppl_vae.fit(model, guide, binary_digits[0][:200], num_steps=15, batch_size=50, lr=1e-2,
                seed=5)  # fmt: skip
    return (model, guide), binary_digits[1][:24]


@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_seeded_evaluation_ignores_and_keeps_the_callers_streams(trained, name):
    evaluation = EVALUATIONS[name]
    pair, x = trained
    results = []
    for caller in (1, 2):
        disturb(caller)
        before = torch.get_rng_state()
        results.append(evaluation(pair, x, 7))
        assert torch.equal(torch.get_rng_state(), before), "the caller's torch stream moved"
    assert_bitwise_equal(*results)
    disturb(1)
    assert_differ(results[0], evaluation(pair, x, 8))
