"""Data loading and validation: the embedded digits, files, and clear errors."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

import ppl_vae
from ppl_vae.pair.data import load_data, train_test_split, validate_data


def test_embedded_digits_and_its_fixed_split():
    everything = load_data("digits")
    train, test = load_data("digits", split="train"), load_data("digits", split="test")
    assert everything.shape == (1797, 64) and everything.dtype == torch.float32
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    assert train.shape == (1438, 64) and test.shape == (359, 64)
    assert torch.equal(load_data("digits", split="test"), test)  # fixed
    rows = {tuple(r) for r in everything.tolist()}
    assert {tuple(r) for r in train.tolist()} | {tuple(r) for r in test.tolist()} == rows
    binary = load_data("digits", split="train", binarize=True)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary, (train > 0.5).float())


def test_files_round_trip(tmp_path):
    x = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "one.npz", x)
    np.savez(tmp_path / "two.npz", a=x, b=2 * x)
    pd.DataFrame(x, columns=["a", "b", "c"]).to_csv(tmp_path / "x.csv", index=False)
    mapped = load_data(tmp_path / "x.npy")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    assert np.array_equal(load_data(tmp_path / "one.npz").numpy(), x)
    assert np.array_equal(load_data(f"{tmp_path}/two.npz:b").numpy(), 2 * x)
    assert np.allclose(load_data(tmp_path / "x.csv").numpy(), x)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text(""), "is empty"),
        (lambda p: p.write_text("a,b\n1,x\n2,y\n"), r"column\(s\) \['b'\] are not numeric"),
        (lambda p: p.write_text("a,b\n1,2\n3,nan\n"), "non-finite value .* row 1, column 1"),
        (lambda p: p.write_text("a,b\n"), "empty"),
    ],
)
def test_bad_csv_files(tmp_path, make, message):
    path = tmp_path / "bad.csv"
    make(path)
    with pytest.raises(ppl_vae.DataError, match=message):
        load_data(path)


def test_truncated_npy_and_missing_files(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1000, 8), np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ppl_vae.DataError, match="truncated"):
        load_data(tmp_path / "cut.npy")
    with pytest.raises(ppl_vae.DataError, match="does not exist"):
        load_data(tmp_path / "nope.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.ones(3))
    with pytest.raises(ppl_vae.DataError, match=r"choose one as FILE.npz:KEY"):
        load_data(tmp_path / "two.npz")


def test_validation_names_row_and_column():
    x = torch.zeros(10, 4)
    x[6, 2] = float("inf")
    with pytest.raises(ppl_vae.DataError, match=r"\(inf\) at row 6, column 2"):
        validate_data(x)
    with pytest.raises(ppl_vae.DataError, match="batch_size=20 but the data has 10 rows"):
        validate_data(torch.zeros(10, 4), batch_size=20)
    with pytest.raises(ppl_vae.DataError, match="empty"):
        validate_data(torch.zeros(0, 4))


def test_support_and_width_are_checked_before_training(binary_digits, digits):
    from models import bernoulli_vae

    model, guide = bernoulli_vae.make_pair()
    with pytest.raises(ppl_vae.DataError, match=r"value 0\.\d+ at row \d+, column \d+ .*'x'"):
        ppl_vae.fit(model, guide, digits[0], num_steps=1)  # not binarized
    with pytest.raises(ppl_vae.PairError, match=r"minibatch of shape \(128, 10\) failed"):
        ppl_vae.fit(model, guide, binary_digits[0][:, :10], num_steps=1)


def test_split_is_seeded_and_disjoint():
    x = torch.arange(100.0).unsqueeze(1)
    a_train, a_test = train_test_split(x, 0.25, seed=3)
    b_train, b_test = train_test_split(x, 0.25, seed=3)
    assert torch.equal(a_test, b_test) and a_test.shape == (25, 1)
    assert not set(a_train.flatten().tolist()) & set(a_test.flatten().tolist())
    assert not torch.equal(train_test_split(x, 0.25, seed=4)[1], a_test)


def test_csv_without_header_or_with_a_saved_index_is_refused(tmp_path):
    x = np.arange(12.0).reshape(4, 3) + 0.5
    pd.DataFrame(x).to_csv(tmp_path / "noheader.csv", index=False, header=False)
    with pytest.raises(ppl_vae.DataError, match=r"numbers as column names .* add a header row"):
        load_data(tmp_path / "noheader.csv")
    pd.DataFrame(x, columns=list("abc")).to_csv(tmp_path / "index.csv")  # index=True
    with pytest.raises(ppl_vae.DataError, match=r"unnamed column 0, 1, 2.*index=False"):
        load_data(tmp_path / "index.csv")
    pd.DataFrame(x, columns=list("abc")).to_csv(tmp_path / "good.csv", index=False)
    assert load_data(tmp_path / "good.csv").shape == (4, 3)
    pd.DataFrame(x).to_csv(tmp_path / "numbered.csv", index=False)  # header 0,1,2: a header
    assert load_data(tmp_path / "numbered.csv").shape == (4, 3)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i4", ">i8", "<f4"])
def test_non_native_byte_order_is_read_as_native_numbers(tmp_path, dtype):
    """A big-endian (or little-endian) .npy, memory-mapped, and an in-memory array: the
    tensors, minibatches and data checks see the numbers themselves, in native byte order."""
    from ppl_vae.pair.data import as_tensor, take

    values = np.arange(-20, 20).reshape(10, 4) * (0.5 if "f" in dtype else 1)
    native = torch.from_numpy(values.astype(np.dtype(dtype).newbyteorder("=")))
    np.save(tmp_path / "x.npy", values.astype(dtype))
    mapped = load_data(tmp_path / "x.npy")
    assert mapped.dtype == np.dtype(dtype)  # the file as it is, read by index
    index = torch.tensor([7, 0, 3])
    for data in (mapped, values.astype(dtype)):
        assert torch.equal(as_tensor(data), native) and as_tensor(data).dtype == native.dtype
        assert torch.equal(take(data, index), native[index])
        validate_data(data)


def test_big_endian_data_trains_as_the_native_numbers(tmp_path):
    """fit and ppl-vae train on a big-endian float32 .npy give the native file's numbers."""
    from models import linear_gaussian
    from ppl_vae.cli import main

    values = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    runs = {}
    for order in ("<", ">"):
        np.save(tmp_path / f"{order}.npy", values.astype(f"{order}f4"))
        pyro.clear_param_store()
        model, guide = linear_gaussian.make_pair(x_dim=5)
        result = ppl_vae.fit(model, guide, load_data(tmp_path / f"{order}.npy"), num_steps=3,
                             batch_size=8)
        out = tmp_path / f"run{order}"
        assert main(["train", "--model", "models/linear_gaussian.py", "--data",
                     str(tmp_path / f"{order}.npy"), "--steps", "3", "--batch-size", "8",
                     "--no-progress", "--out", str(out)]) == 0
        runs[order] = result.history["elbo"].tolist(), pd.read_csv(out / "history.csv")["elbo"]
    assert runs["<"][0] == runs[">"][0]
    assert runs["<"][1].equals(runs[">"][1])
