"""``fit(jit=True)``: Pyro's compiled ``JitTrace_ELBO`` trains exactly like the eager ELBO.

With a point-mass (Delta) guide the ELBO has no sampling noise, so compiled and eager runs
from the same start on the same minibatches must reach the same parameters; with a
reparameterized Normal guide the compiled run is reproducible from its seed. Whether it is
faster is measured by ``make bench`` (docs/performance.md), not here.
"""

import json

import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.utils.errors import EstimatorError, PplVaeError
from tests.pairs import delta_pair


def fitted(pair, data, jit: bool, **kwargs) -> ppl_vae.FitResult:
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = pair()
    return ppl_vae.fit(
        model, guide, data, num_steps=30, batch_size=32, lr=1e-2, seed=3, jit=jit, **kwargs
    )


def test_compiled_equals_eager_without_sampling_noise(digits):
    train = digits[0][:256]
    eager = fitted(lambda: delta_pair(64), train, jit=False)
    compiled = fitted(lambda: delta_pair(64), train, jit=True)
    assert set(eager.params) == set(compiled.params)
    for name, value in eager.params.items():
        torch.testing.assert_close(compiled.params[name], value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(compiled.history["elbo"].to_numpy()),
        torch.tensor(eager.history["elbo"].to_numpy()),
        rtol=1e-5,
        atol=1e-4,
    )
    assert eager.history["elbo"].iloc[-1] > eager.history["elbo"].iloc[0]  # it trained


def test_compiled_run_is_reproducible_from_its_seed(binary_digits):
    train = binary_digits[0][:256]

    def pair():
        return ppl_vae.load_pair("models/bernoulli_vae.py", hidden=32)

    first = fitted(pair, train, jit=True)
    second = fitted(pair, train, jit=True)
    assert first.history["elbo"].tolist() == second.history["elbo"].tolist()
    for name, value in first.params.items():
        assert torch.equal(second.params[name], value)


def test_jit_is_refused_where_it_is_not_faster(binary_digits):
    train = binary_digits[0][:256]

    def pair():
        return ppl_vae.load_pair("models/bernoulli_vae.py", hidden=32)

    with pytest.raises(EstimatorError, match="jit=True is offered for estimator"):
        fitted(pair, train, jit=True, estimator="analytic")
    with pytest.raises(PplVaeError, match="drop jit=True or kl_warmup"):
        fitted(pair, train, jit=True, kl_warmup=10)


def test_cli_train_jit(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "models/bernoulli_vae.py",
        "--data",
        "digits",
        "--steps",
        "5",
        "--no-progress",
        "--jit",
        "--estimator",
        "sampled",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["jit"] is True
    refused = tmp_path / "refused"
    assert main([*args[:-1], str(refused), "--estimator", "analytic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop jit=True" in err
    assert not refused.exists()
