"""``fit``'s step is Pyro's ``SVI.step``, made cheaper without changing a number.

- The default optimizer, :class:`ppl_vae.optim.ForeachAdam` (one multi-tensor Adam over all
  parameters), gives bitwise the parameters of Pyro's per-parameter ``pyro.optim.Adam``, with
  and without per-parameter gradient clipping, and its state loads into Pyro's and back.
- :func:`ppl_vae.optim.adam_update` (the compiled step's in-graph Adam) gives bitwise the same
  numbers, run eagerly, and applies nothing where told the step was not finite.
- Pyro's validation runs on the first step of a call only (unless ``validate_every_step``);
  that changes no number, and a parameter that leaves its support later is still named.
- Whole runs equal a bare ``SVI.step`` loop over the same minibatches (a noise-free pair).
How much faster this is: ``make bench`` (docs/performance.md), never a timed assertion.
"""

import copy
import json

import numpy as np
import pyro
import pyro.optim
import pytest
import torch
from torch.distributions import constraints

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.optim import ForeachAdam, adam_update
from tests.pairs import delta_pair, drifting_scale_pair

STEPS, BATCH, LR = 40, 64, 3e-3


def vae_fit(data, **kwargs) -> ppl_vae.FitResult:
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=64, z_dim=4, hidden=32)
    return ppl_vae.fit(*pair, data, num_steps=STEPS, batch_size=BATCH, lr=LR, seed=1, **kwargs)


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("estimator", "clip_norm"), [("sampled", None), ("analytic", None), ("sampled", 0.5)]
)
def test_default_optimizer_is_pyro_adam_bitwise(binary_digits, estimator, clip_norm):
    data = binary_digits[0]
    clip = {} if clip_norm is None else {"clip_norm": clip_norm}
    ours = vae_fit(data, estimator=estimator, clip_norm=clip_norm)
    pyros = vae_fit(data, estimator=estimator, optim=pyro.optim.Adam({"lr": LR}, clip))
    assert_same_params(ours.params, pyros.params)
    assert ours.history["elbo"].equals(pyros.history["elbo"])
    unclipped = vae_fit(data, estimator=estimator)
    if clip_norm is not None:  # the clipping did act
        weight = "decoder$$$0.weight"
        assert not torch.equal(ours.params[weight], unclipped.params[weight])


def quadratic_run(optim, steps: int, state: dict | None = None) -> dict:
    """Adam on a loss of two parameters, one constrained, one used only on odd steps."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    a = pyro.param("a", torch.randn(30, 20))
    b = pyro.param("b", torch.rand(7), constraint=constraints.positive)
    if state is not None:
        optim.set_state(state)
    for t in range(steps):
        a, b = pyro.param("a"), pyro.param("b")
        loss = 50 * (a.sin() ** 2).sum() + (a[0, :7] * b.log()).sum() if t % 2 else a.exp().sum()
        loss.backward()
        params = [a.unconstrained(), b.unconstrained()]
        optim(params)
        for p in params:
            p.grad = None
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def test_a_parameter_without_gradient_is_left_alone():
    """``b`` gets no gradient on even steps: both optimizers skip it then, moments included."""
    assert_same_params(quadratic_run(ForeachAdam({"lr": 0.01}), 9),
                       quadratic_run(pyro.optim.Adam({"lr": 0.01}), 9))


class FunctionalAdam:
    """:func:`adam_update` on :meth:`ForeachAdam.state_tensors`, called like a PyroOptim."""

    def __init__(self, optim_args: dict, clip_args: dict | None = None):
        self.optim = ForeachAdam(optim_args, clip_args)

    def __call__(self, params: list[torch.Tensor]) -> None:
        stepped = [p for p in params if p.grad is not None]
        lr = torch.tensor(self.optim.lr(), dtype=torch.float64)
        with torch.no_grad():
            adam_update(stepped, [p.grad for p in stepped], self.optim.state_tensors(stepped),
                        lr, torch.tensor(True))


@pytest.mark.parametrize(("args", "clip"), [
    ({"lr": 0.01}, {}),
    ({"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}, {}),
    ({"lr": 0.01, "amsgrad": True}, {"clip_norm": 3.0}),
])
def test_functional_adam_is_pyro_adam_bitwise(args, clip):
    """The compiled step's Adam, run eagerly, on the quadratic loss (a parameter skipped on
    even steps included): bitwise ``pyro.optim.Adam``'s parameters and state."""
    ours = FunctionalAdam(args, clip)
    theirs = pyro.optim.Adam(args, clip)
    params, mine = quadratic_run(ours, 9), ours.optim.get_state()
    assert_same_params(params, quadratic_run(theirs, 9))
    pyros = theirs.get_state()
    assert mine.keys() == pyros.keys() == {"a", "b"}
    for name in mine:
        for key, value in pyros[name]["state"][0].items():
            assert torch.equal(mine[name]["state"][0][key], value), (name, key)


def test_functional_adam_applies_nothing_when_not_finite():
    a = torch.randn(5, requires_grad=True)
    optim = ForeachAdam({"lr": 0.1})
    state = optim.state_tensors([a])
    before = [t.clone() for t in (a, *state.flat())]
    with torch.no_grad():
        adam_update([a], [torch.full((5,), float("nan"))], state,
                    torch.tensor(0.1, dtype=torch.float64), torch.tensor(False))
    assert all(torch.equal(x, y) for x, y in zip((a, *state.flat()), before, strict=True))


@pytest.mark.parametrize("first", [ForeachAdam, pyro.optim.Adam])
def test_state_loads_into_either_optimizer(first):
    """A state saved after 20 steps by one optimizer continues identically in either, and
    loading it leaves the caller's dict untouched."""
    saver = first({"lr": 0.01, "betas": (0.8, 0.95)})
    quadratic_run(saver, 20)
    state = saver.get_state()
    assert set(state) == {"a", "b"} and int(state["a"]["state"][0]["step"]) == 20
    pristine = copy.deepcopy(state)
    resumed_ours = quadratic_run(ForeachAdam({"lr": 0.01, "betas": (0.8, 0.95)}), 5, state)
    resumed_pyro = quadratic_run(
        pyro.optim.Adam({"lr": 0.01, "betas": (0.8, 0.95)}), 5, copy.deepcopy(pristine)
    )
    fresh = quadratic_run(ForeachAdam({"lr": 0.01, "betas": (0.8, 0.95)}), 5)
    assert_same_params(resumed_ours, resumed_pyro)
    assert not torch.equal(resumed_ours["a"], fresh["a"])  # the moments were used
    assert torch.equal(state["a"]["state"][0]["exp_avg"], pristine["a"]["state"][0]["exp_avg"])
    assert int(state["a"]["state"][0]["step"]) == 20


def test_foreach_adam_refuses_what_it_cannot_do():
    with pytest.raises(TypeError, match="one dict"):
        ForeachAdam(lambda name, param: {"lr": 0.1})
    with pytest.raises(TypeError, match="clip_norm"):
        ForeachAdam({"lr": 0.1}, {"clip_value": 1.0})


def recorded_fit(data, **kwargs) -> tuple[list, ppl_vae.FitResult]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    log = []
    result = ppl_vae.fit(*delta_pair(5, log), data, num_steps=5, batch_size=16, lr=1e-2,
                         **kwargs)
    return log, result


@pytest.fixture
def gaussian_rows():
    return torch.randn(64, 5, generator=torch.Generator().manual_seed(0))


def test_validation_runs_on_the_first_step_only_and_changes_no_number(gaussian_rows):
    log, default = recorded_fit(gaussian_rows)
    assert log == [True, True, False, False, False, False]  # the probe, then steps 1-5
    log, every = recorded_fit(gaussian_rows, validate_every_step=True)
    assert log == [True] * 6
    assert_same_params(default.params, every.params)
    assert pyro.infer.util.is_validation_enabled()  # the user's setting is back after fit


def test_validation_switched_off_by_the_user_stays_off(gaussian_rows):
    with pyro.validation_enabled(False):
        log, _ = recorded_fit(gaussian_rows, validate_every_step=True)
    assert log == [False] * 6


def test_a_resumed_run_validates_its_first_step(gaussian_rows, tmp_path):
    stop_at_2 = {"callback": lambda info: info.step == 2}
    recorded_fit(gaussian_rows, checkpoint_dir=tmp_path, **stop_at_2)
    log, _ = recorded_fit(gaussian_rows, checkpoint_dir=tmp_path, resume=True)
    assert log == [True, True, False, False]  # the probe, then steps 3-5


@pytest.mark.parametrize("every", [False, True])
def test_a_parameter_leaving_its_support_later_is_named(every):
    """Validated or not at that step, training stops at the same step naming the parameter
    (step 1 was valid, so the default no longer validates when it fails)."""
    x = 0.01 * torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    pyro.clear_param_store()
    with pytest.raises(ppl_vae.NumericalError) as info:
        ppl_vae.fit(*drifting_scale_pair(), x, num_steps=500, batch_size=64, lr=0.5,
                    validate_every_step=every)
    message = str(info.value)
    assert "invalid (Expected parameter scale" in message
    assert "GreaterThan(lower_bound=0.0)" in message
    assert 1 < len(info.value.history) < 500
    assert torch.isfinite(pyro.param("scale").detach())
    failed_at = int(message.split("step ")[1].split(":")[0])
    pyro.clear_param_store()
    with pytest.raises(ppl_vae.NumericalError, match=f"step {failed_at}:"):
        ppl_vae.fit(*drifting_scale_pair(), x, num_steps=500, batch_size=64, lr=0.5,
                    validate_every_step=not every)


def test_fit_equals_a_bare_svi_loop(gaussian_rows):
    """Same minibatches (fit's documented order: one permutation per epoch from ``seed``),
    noise-free pair: ``fit`` and ``SVI.step`` with ``pyro.optim.Adam`` agree bitwise."""
    log = []
    _, result = recorded_fit(gaussian_rows, seed=4)
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = delta_pair(5, log)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    order = torch.Generator().manual_seed(4)
    losses = []
    for step in range(5):
        position = step % (64 // 16)
        if position == 0:
            permutation = torch.randperm(64, generator=order)
        losses.append(svi.step(gaussian_rows[permutation[position * 16 : (position + 1) * 16]]))
    bare = {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}
    assert_same_params(result.params, bare)
    assert result.history["elbo"].tolist() == [-loss / 16 for loss in losses]


def test_cli_validate_every_step(tmp_path):
    """``ppl-vae train --validate-every-step``: recorded in summary.json, the same parameters."""
    rows = torch.randn(100, 5, generator=torch.Generator().manual_seed(0)).numpy()
    np.savetxt(tmp_path / "x.csv", rows, delimiter=",", header="a,b,c,d,e", comments="")
    params = {}
    for flag in ([], ["--validate-every-step"]):
        out = tmp_path / f"run{len(flag)}"
        code = main(["train", "--model", "models/gaussian_vae.py", "--data",
                     str(tmp_path / "x.csv"), "--steps", "5", "--batch-size", "20",
                     "--out", str(out), "--no-progress", *flag])
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["validate_every_step"] is bool(flag)
        params[bool(flag)] = torch.load(out / "params.pt", weights_only=True)["params"]
    assert_same_params(params[False], params[True])
