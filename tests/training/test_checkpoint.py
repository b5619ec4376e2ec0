"""Checkpoints: exact resume (in process and after a real SIGKILL), refusals that say what
differs, atomic writes that keep the previous good checkpoint, and safe loading."""

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import ppl_vae
from models import linear_gaussian
from ppl_vae.training.checkpoint import FILENAME, read_checkpoint
from tests.conftest import requires_cuda

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["step", "epoch", "elbo", "beta"]  # time_s continues from the checkpoint instead
STEPS = 12


def _data(width: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(40, width, generator=torch.Generator().manual_seed(seed))


def _fit(x=None, z_dim=2, model=None, **kwargs) -> ppl_vae.FitResult:
    """pPCA (or ``model`` with pPCA's guide) on 40 rows, 8 per batch (5 batches an epoch),
    Adam at lr 0.05, seed 3."""
    x = _data() if x is None else x
    pyro.clear_param_store()
    pyro.set_rng_seed(11)  # whatever the caller's streams were, fit seeds its own
    ppca, guide = linear_gaussian.make_pair(x_dim=x.shape[1], z_dim=z_dim)
    model = ppca if model is None else model
    settings = dict(num_steps=STEPS, batch_size=8, lr=0.05, seed=3) | kwargs
    return ppl_vae.fit(model, guide, x, **settings)


def _assert_same_run(a: ppl_vae.FitResult, b: ppl_vae.FitResult) -> None:
    """Bitwise: every parameter and every history column but time_s."""
    assert a.history[COLUMNS].equals(b.history[COLUMNS])
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name]), name


def _ppca_model(likelihood=dist.Normal, poisoned=None):
    """linear_gaussian's model for 5 columns and 2 latents, with another ``likelihood``, or a
    NaN in the likelihood's mean (as an overflowing decoder gives) while ``poisoned["on"]``."""

    def model(x):
        W = pyro.param("W", lambda: 0.1 * torch.randn(5, 2))
        mu = pyro.param("mu", lambda: torch.zeros(5))
        sigma = pyro.param("sigma", lambda: torch.ones(()), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            mean = z @ W.T + mu
            if poisoned and poisoned["on"]:
                mean = mean * torch.nan
            pyro.sample("x", likelihood(mean, sigma).to_event(1), obs=x)

    return model


@pytest.fixture(scope="module")
def uninterrupted():
    return _fit()


def test_resume_after_a_stop_is_the_uninterrupted_run(tmp_path, uninterrupted):
    """Stopped by its callback at step 7 (checkpoints every 2 steps and at the stop), then
    resumed: the same parameters and history as the run that never stopped; time_s keeps
    increasing across the resume."""
    part = _fit(checkpoint_dir=tmp_path, checkpoint_every=2, callback=lambda i: i.step == 7)
    assert part.stopped_early and read_checkpoint(tmp_path / FILENAME)["step"] == 7
    (tmp_path / f".{FILENAME}.x1y2.tmp").write_bytes(b"PK half")  # a write killed half way
    resumed = _fit(checkpoint_dir=tmp_path, resume=True)
    _assert_same_run(resumed, uninterrupted)
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # the leftover is gone
    assert resumed.history["time_s"].is_monotonic_increasing
    assert resumed.history["time_s"].iloc[:7].equals(part.history["time_s"])
    # the final checkpoint is the finished run; resuming it again trains nothing more
    again = _fit(checkpoint_dir=tmp_path, resume=True)
    _assert_same_run(again, uninterrupted)
    assert read_checkpoint(tmp_path / FILENAME)["step"] == STEPS


def test_resume_of_a_compiled_elbo_is_exact(tmp_path):
    """jit=True traces the ELBO before training, outside the random streams, so a resumed
    compiled run draws what the uninterrupted one drew; resuming it eagerly is refused."""
    whole = _fit(jit=True)
    _fit(jit=True, checkpoint_dir=tmp_path, checkpoint_every=3, callback=lambda i: i.step == 7)
    _assert_same_run(_fit(jit=True, checkpoint_dir=tmp_path, resume=True), whole)
    with pytest.raises(ppl_vae.CheckpointError, match=r"different jit \(True in the checkpoint"):
        _fit(checkpoint_dir=tmp_path, resume=True)


def test_resume_can_extend_a_finished_run(tmp_path):
    """A finished run resumed with more steps is the longer run, bitwise."""
    _fit(checkpoint_dir=tmp_path, checkpoint_every=5)
    longer = _fit(checkpoint_dir=tmp_path, resume=True, num_steps=STEPS + 6)
    _assert_same_run(longer, _fit(num_steps=STEPS + 6))
    with pytest.raises(ppl_vae.CheckpointError, match=r"at step 18 but num_steps=4; give"):
        _fit(checkpoint_dir=tmp_path, resume=True, num_steps=4)


_KILLED = """
import os, signal, sys
import pyro, torch
import ppl_vae
from models import linear_gaussian

directory, kill_at, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
model, guide = linear_gaussian.make_pair(x_dim=5, z_dim=2)

def die(info):
    if info.step == kill_at:  # SIGKILL: no cleanup, no final checkpoint, no flush
        os.kill(os.getpid(), signal.SIGKILL)

ppl_vae.fit(model, guide, x, num_steps={steps}, batch_size=8, lr=0.05, seed=3,
            checkpoint_dir=directory, checkpoint_every=every, callback=die)
"""


@pytest.mark.parametrize(
    "kill_at, every, saved",
    [(1, 3, None), (5, 2, 4), (11, 5, 10), (6, 3, 3)],  # killed before the step-6 write
)
def test_sigkill_at_any_step_then_resume_is_the_uninterrupted_run(
    tmp_path, uninterrupted, kill_at, every, saved
):
    """A subprocess really killed with SIGKILL at step ``kill_at`` (inside the step, before that
    step's checkpoint): the directory holds the checkpoint of step ``saved`` (or none), and
    resuming from it ends bitwise equal to the uninterrupted run."""
    script = tmp_path / "killed.py"
    script.write_text(_KILLED.format(steps=STEPS))
    directory = tmp_path / "ckpt"
    done = subprocess.run(
        [sys.executable, str(script), str(directory), str(kill_at), str(every)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [p.name for p in directory.glob("*")] == ([FILENAME] if saved else [])
    if saved:
        assert read_checkpoint(directory / FILENAME)["step"] == saved
    _assert_same_run(_fit(checkpoint_dir=directory, resume=True), uninterrupted)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(estimator="analytic"),
            r"different estimator \('sampled' in the checkpoint, "
            r"'analytic' now\)",
        ),
        (dict(z_dim=3), r"different params \(changed: \['A', 'W', 'b', 's'\]\)"),
        (dict(x=_data(width=6)), r"data_shape \(\[40, 5\] in the checkpoint, \[40, 6\] now\)"),
        (dict(x=_data(seed=2)), r"different data \(same shape, different values\)"),
        (dict(batch_size=10), r"batch_size \(8 in the checkpoint, 10 now\)"),
        (dict(seed=4), r"seed \(3 in the checkpoint, 4 now\)"),
    ],
)
def test_resuming_something_else_is_refused_saying_what_differs(tmp_path, change, message):
    _fit(checkpoint_dir=tmp_path, num_steps=3)
    before = (tmp_path / FILENAME).read_bytes()
    with pytest.raises(ppl_vae.CheckpointError, match="cannot resume from .*" + message):
        _fit(checkpoint_dir=tmp_path, resume=True, **change)
    assert (tmp_path / FILENAME).read_bytes() == before


def test_a_different_model_with_the_same_parameters_is_refused(tmp_path):
    """Same parameter names and shapes, but a Laplace likelihood instead of a Normal one."""
    _fit(checkpoint_dir=tmp_path, num_steps=3)
    with pytest.raises(ppl_vae.CheckpointError, match=r"different sites \(changed: \['model:x'"):
        _fit(model=_ppca_model(dist.Laplace), checkpoint_dir=tmp_path, resume=True)


def test_a_fresh_run_never_overwrites_a_checkpoint(tmp_path):
    _fit(checkpoint_dir=tmp_path, num_steps=2)
    before = (tmp_path / FILENAME).read_bytes()
    with pytest.raises(
        ppl_vae.CheckpointError,
        match=r"holds a checkpoint of an earlier run; "
        r"pass resume=True \(--resume\)",
    ):
        _fit(checkpoint_dir=tmp_path)
    assert (tmp_path / FILENAME).read_bytes() == before
    with pytest.raises(ppl_vae.CheckpointError, match="resume=True needs the checkpoint_dir"):
        _fit(resume=True)
    with pytest.raises(ppl_vae.CheckpointError, match="checkpoint_every must be a positive"):
        _fit(checkpoint_dir=tmp_path / "other", checkpoint_every=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ppl_vae.CheckpointError, match="is a file; give a directory"):
        _fit(checkpoint_dir=tmp_path / "file")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The third write dies half way (disk full): the step-4 checkpoint is still the complete
    file, no temporary file is left, and the error says what was kept."""
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        if len(calls) == 3:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(
        ppl_vae.CheckpointError,
        match=r"checkpoint of step 6 .* failed .*No "
        r"space left.*last good checkpoint \(step 4\) is kept",
    ):
        _fit(checkpoint_dir=tmp_path, checkpoint_every=2)
    assert calls == [2, 4, 6]
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]
    assert read_checkpoint(tmp_path / FILENAME)["step"] == 4


def test_a_numerical_fault_keeps_the_last_good_checkpoint(tmp_path, uninterrupted):
    """The likelihood turns NaN from step 8 on: training stops naming step 8 and site 'x', the
    checkpoint of step 6 is kept, the parameters are those after step 7, and resuming the
    checkpoint once the fault is gone gives the uninterrupted run."""
    poisoned = {"on": False}

    def poison_after_7(info):
        poisoned["on"] = info.step >= 7

    with pytest.raises(
        ppl_vae.NumericalError,
        match=r"step 8: a distribution's parameter is "
        r"invalid \(Expected parameter loc .*\['x'\].*last good checkpoint "
        r"\(step 6\) is kept.*clip_norm",
    ) as caught:
        _fit(
            model=_ppca_model(poisoned=poisoned),
            checkpoint_dir=tmp_path,
            checkpoint_every=3,
            callback=poison_after_7,
        )
    assert caught.value.history[COLUMNS].equals(uninterrupted.history[COLUMNS].iloc[:7])
    kept = {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}
    after_7 = _fit(num_steps=7).params
    assert kept.keys() == after_7.keys()
    for name, value in kept.items():
        assert torch.equal(value, after_7[name]), name
    assert read_checkpoint(tmp_path / FILENAME)["step"] == 6
    _assert_same_run(_fit(checkpoint_dir=tmp_path, resume=True), uninterrupted)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_checkpoint_crafted_to_run_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "marker"
    _RunsCode.marker = marker
    directory = tmp_path / "ckpt"
    directory.mkdir()
    payload = {"format": "ppl_vae.checkpoint/1", "step": 1, "evil": _RunsCode()}
    with open(directory / FILENAME, "wb") as f:
        torch.save(payload, f) if writer == "torch.save" else pickle.dump(payload, f)
    with open(tmp_path / "control.pkl", "wb") as f:  # the payload really does run code
        pickle.dump(_RunsCode(), f)
    with pytest.raises(
        ppl_vae.CheckpointError,
        match=r"corrupt, truncated or not a ppl_vae "
        r"file, and was not loaded",
    ):
        _fit(checkpoint_dir=directory, resume=True)
    assert not marker.exists()
    pickle.loads((tmp_path / "control.pkl").read_bytes())
    assert marker.exists()


def test_corrupt_truncated_or_foreign_checkpoints_are_refused(tmp_path):
    _fit(checkpoint_dir=tmp_path, num_steps=2)
    good = (tmp_path / FILENAME).read_bytes()
    for damaged in (good[: len(good) // 2], good[:100], b"", b"not a checkpoint at all"):
        (tmp_path / FILENAME).write_bytes(damaged)
        with pytest.raises(
            ppl_vae.CheckpointError,
            match="corrupt, truncated or not a ppl_vae "
            "file, and was not loaded.*use an intact copy",
        ):
            _fit(checkpoint_dir=tmp_path, resume=True)
    ppl_vae.save_params(tmp_path / FILENAME)  # a parameter file is not a checkpoint
    with pytest.raises(ppl_vae.CheckpointError, match=r"not a ppl_vae.checkpoint/1 file"):
        _fit(checkpoint_dir=tmp_path, resume=True)
    torch.save({"format": "ppl_vae.checkpoint/1", "step": 1}, tmp_path / FILENAME)
    with pytest.raises(ppl_vae.CheckpointError, match=r"lacks \['params', 'optimizer'"):
        _fit(checkpoint_dir=tmp_path, resume=True)


def test_the_checkpoint_holds_tensors_numbers_and_names(tmp_path):
    """What the docs promise is in the file: the store with constraints by name, Adam's state
    per parameter, the RNG states, the minibatch order, counters, history and fingerprint."""
    result = _fit(checkpoint_dir=tmp_path, checkpoint_every=5, num_steps=7)
    saved = read_checkpoint(tmp_path / FILENAME)
    assert saved["step"] == 7 and len(saved["rows"]) == 7
    assert saved["params"]["constraints"]["sigma"] == {"name": "positive"}
    for name, value in result.params.items():
        assert torch.equal(saved["params"]["params"][name], value)
    assert set(saved["optimizer"]) == set(result.params)
    assert int(saved["optimizer"]["W"]["state"][0]["step"]) == 7
    assert set(saved["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert sorted(saved["permutation"].tolist()) == list(range(40))  # epoch 1's order
    assert saved["fingerprint"]["data_shape"] == [40, 5]
    normal = "Independent(Normal)"
    assert saved["fingerprint"]["sites"] == {
        "model:z": normal,
        "model:x": normal,
        "guide:z": normal,
    }


@requires_cuda
def test_resume_on_cuda_continues_the_run(tmp_path):
    """On a GPU: data and parameters on the device, the data digest taken on the host; the
    resumed run matches the uninterrupted one (to float tolerance: CUDA kernels need not be
    deterministic)."""
    x = _data().cuda()
    whole = _fit(x=x, device="cuda")
    _fit(x=x, device="cuda", checkpoint_dir=tmp_path, checkpoint_every=3,
         callback=lambda i: i.step == 7)  # fmt: skip
    resumed = _fit(x=x, device="cuda", checkpoint_dir=tmp_path, resume=True)
    assert resumed.history["step"].tolist() == list(range(1, STEPS + 1))
    for name, value in whole.params.items():
        assert torch.allclose(resumed.params[name], value, rtol=1e-5, atol=1e-6), name
