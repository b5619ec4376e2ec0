"""Parameter files: tensors only, constraints by name, loaded in place."""

import pyro
import pytest
import torch

import ppl_vae
from models import gaussian_vae
from ppl_vae.params import restore, snapshot
from ppl_vae.traces import run_pair


def test_save_load_round_trip_keeps_modules_linked(tmp_path, digits):
    x = digits[0][:8]
    model, guide = pair = gaussian_vae.make_pair()
    run_pair(model, guide, x)
    ppl_vae.save_params(tmp_path / "p.pt")
    saved = snapshot()
    before = ppl_vae.evaluate(model, guide, x, num_particles=5, seed=0)
    with torch.no_grad():  # wreck every parameter
        for _, p in pyro.get_param_store().named_parameters():
            p.add_(1.0)
    assert not before.equals(ppl_vae.evaluate(model, guide, x, num_particles=5, seed=0))
    ppl_vae.load_params(tmp_path / "p.pt")
    after = ppl_vae.evaluate(model, guide, x, num_particles=5, seed=0)
    assert before.equals(after)  # the modules see the loaded values
    assert all(torch.equal(saved[k], v) for k, v in snapshot().items())
    assert torch.equal(pair.modules[0].loc.weight, pyro.param("encoder$$$loc.weight"))
    constraint = pyro.get_param_store()._constraints["x_scale"]
    assert type(constraint).__name__ == "_GreaterThan" and constraint.lower_bound == 1e-3


def test_load_into_an_empty_store_recreates_constraints(tmp_path, digits):
    model, guide = gaussian_vae.make_pair()
    run_pair(model, guide, digits[0][:4])
    ppl_vae.save_params(tmp_path / "p.pt")
    value = pyro.param("x_scale").detach().clone()
    pyro.clear_param_store()
    ppl_vae.load_params(tmp_path / "p.pt")
    assert torch.equal(pyro.param("x_scale").detach(), value)


def test_restore_refuses_a_shape_mismatch():
    pyro.param("w", torch.zeros(3))
    with pytest.raises(ppl_vae.CheckpointError, match=r"shape \(4,\) in the file but \(3,\)"):
        restore({"w": torch.zeros(4)})


def test_corrupt_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ppl_vae.CheckpointError, match="corrupt, truncated"):
        ppl_vae.load_params(tmp_path / "junk.pt")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ppl_vae.CheckpointError, match="is not a ppl_vae.params/1 file"):
        ppl_vae.load_params(tmp_path / "other.pt")
