"""Parameter files: tensors only, constraints by name, loaded in place."""

import pyro
import pytest
import torch

import ppl_vae
from models import gaussian_vae
from ppl_vae.pair.traces import run_pair
from ppl_vae.utils.params import restore, snapshot


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


def flip_a_bit_of_the_largest_tensor(path):
    """Flip one bit inside the stored bytes of the file's largest tensor, in place: the zip's
    CRC no longer matches, which torch.load does not check."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_length + extra_length + info.file_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_bit_in_a_params_file_is_refused_on_load(tmp_path):
    pyro.param("w", torch.randn(64, 64))
    path = tmp_path / "params.pt"
    ppl_vae.save_params(path)
    ppl_vae.load_params(path)  # intact: loads
    flip_a_bit_of_the_largest_tensor(path)
    torch.load(path, weights_only=True)  # torch itself loads the damaged file silently
    with pytest.raises(ppl_vae.CheckpointError, match="does not match its own digest"):
        ppl_vae.load_params(path)


def test_a_flipped_bit_in_a_checkpoint_is_refused_on_resume(tmp_path, digits):
    pair = gaussian_vae.make_pair(x_dim=64, z_dim=2, hidden=32)
    options = dict(num_steps=6, batch_size=32, checkpoint_dir=tmp_path, checkpoint_every=3)
    ppl_vae.fit(*pair, digits[0][:64], **options)
    flip_a_bit_of_the_largest_tensor(tmp_path / "checkpoint.pt")
    pyro.clear_param_store()
    pair = gaussian_vae.make_pair(x_dim=64, z_dim=2, hidden=32)
    with pytest.raises(ppl_vae.CheckpointError, match="does not match its own digest"):
        ppl_vae.fit(*pair, digits[0][:64], **options | {"num_steps": 9}, resume=True)
