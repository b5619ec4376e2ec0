"""Data: the embedded digits, files, in-memory arrays; validation, splits and minibatches.

Data is a matrix-like array whose first dimension indexes datapoints (the model's data plate).
In-memory data becomes a tensor of the dtype it has (float64 stays float64, int64 row numbers and
bool masks stay what they are, as Pyro's ``SVI.step`` passes its arguments as given; CSV files
and float16 become torch's default dtype); a ``.npy`` file is opened memory-mapped and
minibatches are read by index, so data larger than memory can be trained on: validation reads
it in chunks of about 4 MiB, and the pages of a read-only mapping that a read touched are
dropped from the process's resident set afterwards (they stay in the OS page cache), so peak
memory does not grow with the file (see docs/performance.md).
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.distributions import constraints

from ..utils.errors import DataError, first_line

Array = torch.Tensor | np.ndarray
_CHUNK_BYTES = 4 * 2**20


def load_data(
    source: str | Path,
    *,
    split: str | None = None,
    binarize: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Array:
    """Load a data set by name or path.

    Args:
        source: ``"digits"`` (scikit-learn's 8×8 digits, 1,797 images, shipped inside
            scikit-learn, scaled to [0, 1]) or a path to ``.npy`` (memory-mapped),
            ``.npz`` (its single array, or ``file.npz:key``; :func:`load_arrays` reads all of
            them by name) or ``.csv`` (numeric columns, header row, torch's default dtype).
        split: ``None`` for all rows, ``"train"`` or ``"test"`` for the fixed split made by
            :func:`train_test_split` with ``test_fraction`` and ``seed``.
        binarize: threshold at 0.5 to {0, 1} (for Bernoulli likelihoods).

    Returns:
        a tensor (a stored floating dtype is kept), or a read-only memory-mapped numpy array
        for ``.npy``.
    """
    if str(source) == "digits":
        from sklearn.datasets import load_digits

        data: Array = torch.as_tensor(load_digits().data / 16.0, dtype=torch.float32)
    else:
        data = _load_file(str(source))
    validate_data(data)
    if split is not None:
        if split not in ("train", "test"):
            raise DataError(f"split must be None, 'train' or 'test', not {split!r}")
        train, test = train_test_split(data, test_fraction=test_fraction, seed=seed)
        data = train if split == "train" else test
    if binarize:
        tensor = as_tensor(data)
        data = (tensor > 0.5).to(tensor.dtype)
    return data


def _load_file(spec: str) -> Array:
    """:func:`_read_file`, with what the operating system and the parsers raise on a file
    that cannot be read as data turned into one :class:`DataError` naming it."""
    try:
        return _read_file(spec)
    except PermissionError as e:
        raise DataError(f"data file {spec!r} cannot be read (permission denied)") from e
    except UnicodeDecodeError as e:
        raise DataError(f"data file {spec!r} is not UTF-8 text; save the CSV as UTF-8") from e
    except (pd.errors.ParserError, ValueError, OSError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"data file {spec!r} cannot be read as data ({type(e).__name__}: {first_line(e)}); "
            "give a comma-separated CSV with the same number of fields in every row, or a "
            ".npy/.npz file of numeric arrays"
        ) from e


def _read_file(spec: str) -> Array:
    path_str, _, key = (
        spec.partition(":") if spec.count(":") == 1 and ".npz:" in spec else (spec, "", "")
    )
    path = Path(path_str)
    if path.is_dir():
        raise DataError(f"data file {path_str!r} is a directory; give a .npy, .npz or .csv file")
    if not path.is_file():
        raise DataError(f"data file {path_str!r} does not exist; give 'digits' or a file path")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path_str!r} is empty")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r")
        except ValueError as e:
            raise DataError(
                f"cannot memory-map {path_str!r} ({e}): the file is truncated or not a "
                ".npy array; write it again with numpy.save"
            ) from e
    if suffix == ".npz":
        with np.load(path) as archive:
            names = list(archive.files)
            if key:
                if key not in names:
                    raise DataError(f"{path_str!r} has no array {key!r}; it has {names}")
            elif len(names) == 1:
                key = names[0]
            else:
                raise DataError(f"{path_str!r} holds arrays {names}; choose one as FILE.npz:KEY")
            return as_tensor(np.asarray(archive[key]))
    if suffix == ".csv":
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError as e:
            raise DataError(f"CSV file {path_str!r} has no rows or columns") from e
        _check_csv_layout(frame, path_str)
        return as_tensor(frame).to(torch.get_default_dtype())
    raise DataError(f"unsupported data file {path_str!r}: use .npy, .npz or .csv")


def _check_csv_layout(frame: pd.DataFrame, path: str) -> None:
    """Refuse the two CSV layouts that would train on wrong data without an error: no header
    row (its first data row would become the column names; pandas' own header of a nameless
    frame, ``0,1,...,D-1``, is a header) and a saved index column."""
    names = [str(c) for c in frame.columns]
    default = names == [str(i) for i in range(len(names))]
    if names and not default and all(_is_number(n) for n in names):
        raise DataError(
            f"CSV file {path!r} has numbers as column names {names[:4]}: its first row looks like "
            "data, not a header; add a header row (pandas: to_csv(..., index=False) writes one)"
        )
    first = frame.iloc[:, 0] if len(names) > 1 else None
    if first is not None and names[0].startswith("Unnamed") and first.tolist() == list(
        range(len(frame))
    ):
        raise DataError(
            f"CSV file {path!r} starts with an unnamed column 0, 1, 2, ...: pandas' saved index, "
            "not a feature; write the file with to_csv(..., index=False) or drop that column"
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_arrays(path: str | Path) -> dict[str, torch.Tensor]:
    """Every array of a ``.npz`` file by name, each as :func:`as_tensor` makes it: data for a
    pair whose model takes them as keyword arguments (``model(x=..., y=...)``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    try:
        with np.load(path) as archive:
            return {name: as_tensor(np.asarray(archive[name])) for name in archive.files}
    except (ValueError, OSError) as e:
        raise DataError(
            f"cannot read {str(path)!r} as a .npz archive of numeric arrays ({first_line(e)}); "
            "save it with numpy.savez from arrays of numbers"
        ) from e


def as_tensor(data) -> torch.Tensor:
    """Data (tensor, numpy array, DataFrame) as a tensor, with clear errors.

    The dtype is kept, as Pyro's ``SVI.step`` passes arguments as given: float64 stays
    float64, integer labels and row numbers stay integers, bool masks stay bool. Only float16
    (which Pyro's distributions do not compute in) and unsigned integers wider than 8 bits
    (which torch indexes with poorly) change: to torch's default dtype and int64.
    """
    if isinstance(data, torch.Tensor):
        if data.requires_grad:
            raise DataError("the data tensor requires grad; pass x.detach() (data is not a "
                            "parameter: gradients flow to the pair's parameters only)")
        if not (data.is_floating_point() or data.dtype in _INT_TORCH):
            raise DataError(f"data tensor has dtype {data.dtype}; give numbers")
        return data.to(torch.get_default_dtype()) if data.dtype == torch.float16 else data
    if isinstance(data, pd.DataFrame):
        if data.empty:
            raise DataError(f"the DataFrame is empty (shape {data.shape}); give at least one row")
        bad = [str(c) for c in data.columns if not pd.api.types.is_numeric_dtype(data[c])]
        if bad and len(data.columns) == 1 and ";" in bad[0]:
            raise DataError(
                f"the CSV has one column {bad[0][:40]!r} holding ';': it seems to separate its "
                "fields by ';'; give a comma-separated file"
            )
        if bad:
            raise DataError(f"column(s) {bad} are not numeric; drop them or encode them as numbers")
        dtypes = {np.dtype(t) for t in data.dtypes}
        common = dtypes.pop() if len(dtypes) == 1 else None
        data = data.to_numpy(dtype=_kept_dtype(common if common is not None else np.float16))
    if isinstance(data, np.ndarray):
        if not _is_real(data.dtype):
            raise DataError(f"data array has dtype {data.dtype}; give real numbers")
        array = np.asarray(data, dtype=_kept_dtype(data.dtype))
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    raise DataError(
        f"data of type {type(data).__name__} is not supported; give a torch tensor, a numpy "
        "array, a pandas DataFrame of numeric columns, or a file path"
    )


def _kept_dtype(dtype: np.dtype) -> np.dtype:
    """The numpy dtype a tensor of ``dtype`` data gets: the same in native byte order, except
    float16 (torch's default float dtype, as a DataFrame of mixed column dtypes gets) and
    wide unsigned integers (int64)."""
    if dtype == np.float16:
        return torch.empty((), dtype=torch.get_default_dtype()).numpy().dtype
    if np.issubdtype(dtype, np.unsignedinteger) and dtype.itemsize > 1:
        return np.dtype(np.int64)
    if dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        return dtype.newbyteorder("=")
    return dtype


_INT_TORCH = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _is_real(dtype: np.dtype) -> bool:
    """Integers, floats and booleans (as torch and pandas take them), not complex or text."""
    return dtype == np.bool_ or (
        np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    )


def as_array(data) -> Array:
    """Data as a tensor, keeping memory-mapped numpy arrays as they are (read by index)."""
    if isinstance(data, np.memmap):
        if not _is_real(data.dtype):
            raise DataError(f"memory-mapped data has dtype {data.dtype}; give real numbers")
        return data
    return as_tensor(data)


def validate_data(data: Array, batch_size: int | None = None) -> None:
    """Refuse empty data, a batch larger than the data, and NaN/inf (naming row and column)."""
    if data.ndim == 0 or data.shape[0] == 0 or int(np.prod(data.shape)) == 0:
        raise DataError(f"data is empty (shape {tuple(data.shape)}); give at least one row")
    if batch_size is not None and not 1 <= batch_size <= data.shape[0]:
        raise DataError(
            f"batch_size={batch_size} but the data has {data.shape[0]} rows; "
            f"choose a batch size between 1 and {data.shape[0]}"
        )
    bad = _first_violation(data, torch.isfinite)
    if bad is not None:
        row, col, value = bad
        raise DataError(
            f"data has a non-finite value ({value}) at row {row}, column {col} (from 0); drop or "
            "impute non-finite entries before training"
        )


def train_test_split(
    data: Array, test_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded random split of the rows into train and test tensors."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), not {test_fraction}")
    n = data.shape[0]
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise DataError(f"cannot split {n} rows with test_fraction={test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tensor = as_tensor(np.asarray(data) if isinstance(data, np.memmap) else data)
    return tensor[perm[n_test:]], tensor[perm[:n_test]]


def take(data: Array, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``data`` as a tensor (memory-mapped arrays read by index, their
    dtype kept as :func:`as_tensor` keeps it)."""
    if isinstance(data, torch.Tensor):
        return data.index_select(0, index.to(data.device))
    rows = torch.as_tensor(np.asarray(data[index.numpy()], dtype=_kept_dtype(data.dtype)))
    _release(data)
    return rows


def _release(data: Array) -> None:
    """Drop a read-only memory map's touched pages from this process's resident set.

    ``MADV_DONTNEED`` on a shared read-only file mapping only unmaps pages: the file's data
    stays in the page cache and is faulted back in when read again. Copy-on-write (``"c"``)
    and writable maps are left alone, as dropping their pages could lose changes.
    """
    mapping = getattr(data, "_mmap", None)  # numpy.memmap's mmap.mmap (None when in memory)
    if mapping is not None and getattr(data, "mode", None) == "r":
        mapping.madvise(mmap.MADV_DONTNEED)


def check_support(data: Array, name: str, support, device: torch.device) -> None:
    """Check every entry against an observed site's support constraint.

    ``.to_event`` likelihoods have an ``independent`` support that reduces over the event dims;
    its base constraint is checked entry by entry, so the error names the entry itself.
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    bad = _first_violation(data, lambda chunk: support.check(chunk.to(device)))
    if bad is not None:
        row, col, value = bad
        raise DataError(
            f"data value {value} at row {row}, column {col} (from 0) is outside the support of the "
            f"observed site {name!r} ({support}); rescale the data (e.g. binarize for a "
            "Bernoulli likelihood) or choose a pair whose likelihood fits it"
        )


def first_overflowing(data: torch.Tensor) -> tuple[int, int, float] | None:
    """(row, column, value) of the first entry of floating ``data`` whose square overflows its
    dtype (a log-density of it, such as a Normal's, is then non-finite), or None."""
    if not data.is_floating_point() or data.dim() == 0:
        return None
    bound = math.sqrt(torch.finfo(data.dtype).max)
    return _first_violation(data.detach().cpu(), lambda chunk: ~(chunk.abs() > bound))


def _first_violation(data: Array, predicate) -> tuple[int, int, float] | None:
    """(row, column, value) of the first entry where ``predicate`` is False, read in chunks."""
    row_bytes = data.dtype.itemsize * max(1, int(np.prod(data.shape[1:])))
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, data.shape[0], step):
        chunk = as_tensor(np.asarray(data[start : start + step]))
        _release(data)
        ok = predicate(chunk).cpu()
        if not bool(ok.all()):
            flat = chunk.reshape(chunk.shape[0], -1)
            row, col = (int(i) for i in (~ok).reshape(chunk.shape[0], -1).nonzero()[0])
            return row + start, col, float(flat[row, col])
    return None
