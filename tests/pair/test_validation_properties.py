"""Property-based tests (hypothesis) of data validation: random shapes, dtypes and placements of
NaN/inf, in memory, in DataFrames, in CSV files and in memory-mapped .npy files read in chunks.
The truth each is checked against is numpy's own view of the same array."""

import re
import tempfile
from pathlib import Path
from unittest import mock

import hypothesis.extra.numpy as hnp
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppl_vae
from ppl_vae.pair import data as data_module
from ppl_vae.pair.data import as_tensor, validate_data

DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.int64,
                          np.uint8, np.bool_])  # fmt: skip
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7)
FEW = settings(max_examples=60, deadline=None)
# a float16 or integer beyond float32's range becomes inf when ppl_vae casts it
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@st.composite
def arrays_with_faults(draw, dtype=DTYPES):
    """An array of random shape and dtype; float ones get NaN/±inf at random places."""
    dtype = draw(dtype)
    shape = draw(SHAPES)
    values = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(
        np.dtype(dtype), allow_nan=False, allow_infinity=False)))  # fmt: skip
    if np.issubdtype(dtype, np.floating):
        faults = draw(st.lists(st.tuples(st.integers(0, values.size - 1),
                                         st.sampled_from([np.nan, np.inf, -np.inf])),
                               max_size=3))  # fmt: skip
        flat = values.reshape(-1)
        for position, fault in faults:
            flat[position] = fault
    return values


def trained_dtype(values: np.ndarray) -> type:
    """What ppl_vae passes to the pair: every dtype as it is (integers, bools, float32,
    float64), except float16, which becomes float32 (torch's default dtype)."""
    return np.float32 if values.dtype == np.float16 else values.dtype.type


def first_fault(values: np.ndarray) -> tuple[int, int] | None:
    """numpy's answer: (row, flattened column) of the first non-finite entry, row-major, in
    the dtype ppl_vae trains on."""
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(values.astype(trained_dtype(values)).reshape(values.shape[0], -1))
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return int(row), int(col)


def _check_validation(values: np.ndarray, data) -> None:
    expected = first_fault(values)
    if expected is None:
        validate_data(data)
        return
    row, col = expected
    with np.errstate(over="ignore"):
        value = float(trained_dtype(values)(values.reshape(values.shape[0], -1)[row, col]))
    with pytest.raises(ppl_vae.DataError, match=rf"non-finite value \({value}\) at row {row}, "
                       rf"column {col} \(from 0\)"):  # fmt: skip
        validate_data(data)


@FEW
@given(arrays_with_faults())
def test_in_memory_data_is_refused_exactly_at_its_first_fault(values):
    """The error names numpy's first non-finite entry; finite data of any numeric dtype passes
    and keeps its dtype (Pyro's SVI passes arrays as given), except float16, which becomes
    float32 (torch's default dtype) with the values numpy's cast gives."""
    kept = trained_dtype(values)
    with np.errstate(over="ignore"):
        tensor, expected = as_tensor(values), values.astype(kept)
    assert tensor.dtype == torch.from_numpy(expected).dtype
    assert tuple(tensor.shape) == values.shape
    assert np.array_equal(tensor.numpy(), expected, equal_nan=True)
    from_torch = as_tensor(torch.from_numpy(values.copy()))
    assert np.array_equal(from_torch.numpy(), expected, equal_nan=True)
    _check_validation(values, tensor)


@FEW
@given(arrays_with_faults(st.sampled_from([np.float32, np.float64])), st.integers(1, 200))
def test_memory_mapped_data_is_read_in_chunks_and_refused_at_the_same_place(values, chunk):
    """A .npy file memory-mapped and checked in chunks of about ``chunk`` bytes finds the same
    first fault as the in-memory check, whatever the chunk boundaries."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, values)
        mapped = np.load(path, mmap_mode="r")
        with mock.patch.object(data_module, "_CHUNK_BYTES", chunk):
            _check_validation(values, ppl_vae.pair.data.as_array(mapped))
        del mapped


@FEW
@given(arrays_with_faults(st.sampled_from([np.float32, np.float64])).filter(
    lambda a: a.ndim == 2))  # fmt: skip
def test_csv_files_are_refused_at_the_same_row_and_column(values):
    """Written to CSV and read back by load_data: the same first fault (a CSV row is a data
    row, the header is not counted; text has no dtype, so it is read as torch's default)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        pd.DataFrame(values, columns=[f"c{j}" for j in range(values.shape[1])]).to_csv(
            path, index=False)  # fmt: skip
        with np.errstate(over="ignore"):
            as_read = values.astype(np.float32)
        _check_validation(as_read, ppl_vae.pair.data._load_file(str(path)))


@FEW
@given(
    st.lists(st.sampled_from(["num", "int", "text", "date", "bool"]), min_size=1, max_size=6),
    st.integers(1, 5),
)
def test_dataframes_name_exactly_their_non_numeric_columns(kinds, rows):
    """Strings and datetimes are refused, naming exactly those columns; numbers and booleans
    (numeric to pandas) are accepted."""
    makers = {
        "num": lambda: np.linspace(0, 1, rows),
        "int": lambda: np.arange(rows),
        "text": lambda: ["a"] * rows,
        "date": lambda: pd.date_range("2020-01-01", periods=rows),
        "bool": lambda: np.arange(rows) % 2 == 0,
    }
    frame = pd.DataFrame({f"{kind}{i}": makers[kind]() for i, kind in enumerate(kinds)})
    text = ("text", "date")
    bad = [name for name, kind in zip(frame.columns, kinds, strict=True) if kind in text]
    if bad:
        message = re.escape(f"column(s) {bad!r} are not numeric")
        with pytest.raises(ppl_vae.DataError, match=message):
            as_tensor(frame)
    else:
        assert as_tensor(frame).shape == (rows, len(kinds))


@FEW
@given(st.integers(1, 50), st.integers(-3, 60))
def test_batch_sizes_outside_one_to_n_are_refused(n, batch_size):
    data = torch.zeros(n, 2)
    if 1 <= batch_size <= n:
        validate_data(data, batch_size)
    else:
        with pytest.raises(ppl_vae.DataError, match=rf"batch_size={batch_size} but the data has "
                           rf"{n} rows; choose a batch size between 1 and {n}"):  # fmt: skip
            validate_data(data, batch_size)


@FEW
@given(st.sampled_from([np.complex64, np.str_, np.object_, np.datetime64]), SHAPES)
def test_arrays_of_non_real_dtypes_are_refused(dtype, shape):
    values = np.zeros(shape, dtype=dtype) if dtype is not np.datetime64 else np.zeros(
        shape, dtype="datetime64[s]")  # fmt: skip
    with pytest.raises(ppl_vae.DataError, match=r"data array has dtype .*; give real numbers"):
        as_tensor(values)


@FEW
@given(st.tuples(st.integers(0, 3), st.integers(0, 3)).filter(lambda s: 0 in s))
def test_empty_data_is_refused(shape):
    with pytest.raises(ppl_vae.DataError, match=r"data is empty \(shape"):
        validate_data(torch.zeros(shape))
