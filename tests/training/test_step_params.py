"""``ppl_vae.training.step_params``: the parameters a step read, from the ELBO's own traces, are the
ones Pyro's ``SVI.step`` captures with ``poutine.trace(param_only=True)`` (that fit's
numbers stay bitwise ``SVI.step``'s is tested in tests/training/test_training_step.py)."""

import pyro
import pyro.infer
import pytest
import torch
from pyro import poutine

import ppl_vae
from ppl_vae.pair.dataset import as_dataset
from ppl_vae.training.step_params import StepParams


def captured(elbo, model, guide, x) -> list:
    with poutine.trace(param_only=True) as capture:
        elbo.loss_and_grads(model, guide, x)
    nodes = capture.trace.nodes
    return [nodes[n]["value"].unconstrained() for n in sorted(nodes)]


@pytest.mark.parametrize("estimator", ["sampled", "analytic", "stl", "iwae", "dreg", "graph"])
def test_traces_hold_the_captured_parameters(binary_digits, estimator):
    pyro.clear_param_store()
    model, guide = ppl_vae.load_pair("models/bernoulli_vae.py", hidden=16)
    record = ppl_vae.ESTIMATORS[estimator]
    elbo = record.make(record.particles_per_draw(2), 1)
    x = as_dataset(binary_digits[0]).head(32)
    reference = captured(elbo, model, guide, x.args[0])
    finder = StepParams()
    for _ in range(2):  # the checked first step, then the traces alone
        _, params = finder.loss_and_grads(elbo, model, guide, x)
        assert finder.trusted is True
        assert len(params) == len(reference) == 10
        assert all(a is b for a, b in zip(params, reference, strict=True))
        assert all(p.grad is not None for p in params)
        for p in params:
            p.grad = None
    assert "_get_traces" not in elbo.__dict__  # the class's method again


def test_a_parameter_read_on_some_steps_only(binary_digits):
    """A guide that reads a parameter on odd calls: each step's set is that call's."""
    pyro.clear_param_store()
    calls = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))

    def guide(x):
        calls.append(None)
        loc = pyro.param("loc", torch.tensor(0.0))
        shift = pyro.param("shift", torch.tensor(1.0)) if len(calls) % 2 else 0.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(loc + shift, 1.0))

    elbo = pyro.infer.Trace_ELBO()
    finder = StepParams()
    x = as_dataset(torch.zeros(4, 1)).head(4)
    sizes = []
    for _ in range(4):
        _, params = finder.loss_and_grads(elbo, model, guide, x)
        sizes.append(len(params))
    assert finder.trusted is True and sizes == [2, 1, 2, 1]


def test_a_jit_elbo_keeps_the_capturing_trace(binary_digits):
    pyro.clear_param_store()
    model, guide = ppl_vae.load_pair("models/bernoulli_vae.py", hidden=16)
    elbo = ppl_vae.ESTIMATORS["sampled"].make(1, 1, jit=True)
    x = as_dataset(binary_digits[0]).head(32)
    finder = StepParams()
    for _ in range(2):
        _, params = finder.loss_and_grads(elbo, model, guide, x)
        assert finder.trusted is False and len(params) == 10
