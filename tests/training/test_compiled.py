"""``fit(compile=...)``: the traced and compiled step trains like the eager one.

The eager ``fit`` is bitwise Pyro's ``SVI.step`` with ``pyro.optim.Adam``
(tests/training/test_training_step.py), so the references here are eager ``fit`` runs on the same
minibatches from the same seed. The compiled step draws the same noise as the eager one, so
with the ``aot_eager`` backend (the traced operations, unfused) the parameters are bitwise
equal, and with TorchInductor (fused kernels) equal up to float rounding. How much faster it
is, is measured by ``make bench`` (docs/performance.md), not here. Compiling is slow on a
small machine, so the pair is small and the TorchInductor compilations are few.
"""

import json
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.pair.dataset import as_dataset
from ppl_vae.training.compiled import CompileFallbackWarning, compile_elbo
from ppl_vae.utils.errors import EstimatorError, PplVaeError

STEPS, BATCH = 40, 64


def small_pair():
    return ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=64, z_dim=4, hidden=32)


def vae_fit(data, pair=small_pair, **kwargs) -> ppl_vae.FitResult:
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = pair()
    options = dict(num_steps=STEPS, batch_size=BATCH, lr=3e-3, seed=1) | kwargs
    return ppl_vae.fit(model, guide, data, **options)


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def elbos(result: ppl_vae.FitResult) -> torch.Tensor:
    return torch.tensor(result.history["elbo"].to_numpy())


@pytest.mark.parametrize("estimator", ["sampled", "analytic"])
def test_aot_eager_backend_is_bitwise_the_eager_step(binary_digits, estimator):
    data = binary_digits[0]
    eager = vae_fit(data, estimator=estimator)
    compiled = vae_fit(data, estimator=estimator, compile="aot_eager")
    assert_same_params(compiled.params, eager.params)
    # the loss is summed in float32 in the graph, in float64 from per-site items by Pyro
    torch.testing.assert_close(elbos(compiled), elbos(eager), rtol=1e-6, atol=0)
    assert eager.compile_s is None and compiled.compile_s > 0
    assert eager.history["elbo"].iloc[-5:].mean() > eager.history["elbo"].iloc[:5].mean()


def test_the_optimizer_in_the_graph_clips_and_stops_as_the_eager_step(binary_digits):
    """The update runs in the compiled function: with clipping it is bitwise the eager step,
    a user's optimizer stays outside the graph, and a step whose gradients overflow applies
    nothing, so the parameters left in the store are the eager run's, bitwise."""
    data = binary_digits[0]
    clipped = vae_fit(data, clip_norm=0.5, compile="aot_eager")
    assert clipped.compile_s > 0
    assert_same_params(clipped.params, vae_fit(data, clip_norm=0.5).params)
    pyro_adam = pyro.optim.Adam({"lr": 3e-3})
    assert_same_params(vae_fit(data, optim=pyro_adam, compile="aot_eager").params,
                       vae_fit(data).params)
    left = []
    for options in ({}, {"compile": "aot_eager"}):
        with pytest.raises(ppl_vae.NumericalError, match="stopped at step 2") as error:
            vae_fit(data, lr=1e30, **options)
        assert len(error.value.history) == 1
        left.append({k: v.detach().clone() for k, v in
                     pyro.get_param_store().named_parameters()})
    assert_same_params(*left)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_importance_weighted_estimators_compile(binary_digits, estimator):
    """The compiled IWAE step traces ``IWAE_ELBO.surrogates`` (−Σ sg(w̃) log w), eagerly the
    estimator is Pyro's ``RenyiELBO(alpha=0)``: an independent form of the same gradient,
    equal to float rounding after 40 steps. DReG's two surrogates, each differentiated for
    its own parameters, are its eager step's operations: bitwise."""
    data = binary_digits[0]
    eager = vae_fit(data, estimator=estimator, num_particles=4)
    compiled = vae_fit(data, estimator=estimator, num_particles=4, compile="aot_eager")
    assert compiled.compile_s > 0
    if estimator == "dreg":
        assert_same_params(compiled.params, eager.params)
    for name, value in eager.params.items():
        torch.testing.assert_close(compiled.params[name], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(elbos(compiled), elbos(eager), rtol=1e-6, atol=0)


def test_enum_is_refused_naming_pyros_value_dependent_sum(binary_digits):
    """TraceEnum_ELBO's sum drops zero-probability terms by their values on every step."""
    with pytest.raises(EstimatorError, match="Dice.compute_expectation"):
        compile_elbo(pyro.infer.TraceEnum_ELBO(), None, None, None, "aot_eager")


def test_inductor_equals_eager_up_to_rounding_and_resumes_exactly(binary_digits, tmp_path):
    data = binary_digits[0]
    eager = vae_fit(data)
    compiled = vae_fit(data, compile=True, checkpoint_dir=tmp_path / "whole")
    other_noise = vae_fit(data, seed=2)
    for name, value in eager.params.items():
        torch.testing.assert_close(compiled.params[name], value, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(other_noise.params[name], value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(elbos(compiled), elbos(eager), rtol=1e-5, atol=0)

    stop = tmp_path / "stopped"
    vae_fit(data, compile=True, checkpoint_dir=stop, checkpoint_every=10,
            callback=lambda info: info.step == 15)
    resumed = vae_fit(data, compile=True, checkpoint_dir=stop, resume=True)
    assert_same_params(resumed.params, compiled.params)
    assert resumed.history["elbo"].tolist() == compiled.history["elbo"].tolist()
    with pytest.raises(ppl_vae.CheckpointError, match="compile"):  # eager numbers differ
        vae_fit(data, checkpoint_dir=tmp_path / "whole", resume=True)


def branching_pair():
    """The model takes a branch on the data's values: its steps cannot be traced once."""
    model, guide = small_pair()

    def branching_model(x):
        if x.sum() > 0:
            model(x)

    return branching_model, guide


def batchnorm_pair():
    """An encoder with BatchNorm, whose running statistics change in place every step."""
    encoder = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8))
    decoder = torch.nn.Linear(4, 64)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide


@pytest.mark.parametrize(("pair", "cause"), [(branching_pair, "reads a tensor's value"),
                                              (batchnorm_pair, "in place")])
def test_a_pair_that_cannot_be_compiled_trains_eagerly_saying_so(binary_digits, pair, cause):
    data = binary_digits[0]
    eager = vae_fit(data, pair=pair, num_steps=5)
    with pytest.warns(CompileFallbackWarning, match=cause):
        fallback = vae_fit(data, pair=pair, num_steps=5, compile="aot_eager")
    assert_same_params(fallback.params, eager.params)
    assert fallback.compile_s is None


def test_settings_a_compiled_step_cannot_honour_are_refused(binary_digits):
    data = binary_digits[0]
    with pytest.raises(EstimatorError, match="compiles Trace_ELBO-type and importance"):
        vae_fit(data, estimator="graph", compile=True)
    for option, clash in ((dict(kl_warmup=10), "kl_warmup=10"), (dict(jit=True), "jit=True"),
                          (dict(validate_every_step=True), "validate_every_step=True")):
        with pytest.raises(PplVaeError, match=f"compile cannot be combined with {clash}"):
            vae_fit(data, compile=True, **option)
    for bad in ("fast", 1):
        with pytest.raises(PplVaeError, match="compile"):
            vae_fit(data, compile=bad)


def test_a_minibatch_unlike_the_traced_one_is_refused(binary_digits):
    data = binary_digits[0]
    pyro.clear_param_store()
    model, guide = small_pair()
    elbo = ppl_vae.ESTIMATORS["sampled"].make(1, 1)
    x = as_dataset(data).head(BATCH)
    elbo.loss(model, guide, *x.args)  # creates the parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = compile_elbo(elbo, model, guide, x, "aot_eager")
    assert isinstance(compiled.loss_and_grads(model, guide, *x.args), float)
    with pytest.raises(PplVaeError, match="another shape"):
        compiled.loss_and_grads(model, guide, data[: BATCH // 2])


def test_cli_train_compile(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "models/bernoulli_vae.py", "--data", "digits", "--steps", "5",
            "--no-progress", "--compile", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] is True and summary["compile_s"] > 0
    assert "compiling the step took" in capsys.readouterr().out
    assert main([*args[:-1], str(tmp_path / "refused"), "--kl-warmup", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compile cannot be combined with kl_warmup" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_step_on_cuda(binary_digits):
    data = binary_digits[0]
    eager = vae_fit(data, device="cuda")
    compiled = vae_fit(data, device="cuda", compile=True)
    for name, value in eager.params.items():
        torch.testing.assert_close(compiled.params[name], value, rtol=1e-4, atol=1e-5)
