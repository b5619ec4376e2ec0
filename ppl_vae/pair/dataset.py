"""The arguments a pair is called with: per-row arrays and constant extras, cut into minibatches.

Pyro's ``SVI.step(*args, **kwargs)`` hands its arguments to the model and the guide; every call
ppl_vae makes does the same. ``data`` is

- one array (tensor, numpy array, DataFrame, memory-mapped ``.npy``): ``model(x)``;
- a tuple of per-row arrays: ``model(x, y)``;
- a dict of per-row arrays: ``model(x=..., y=...)``;

and ``model_kwargs`` (a dict) is passed unchanged with every call, e.g. a constant design matrix
or a flag. All per-row arrays have the same number of rows (the data plate) and are minibatched
with one index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..utils.errors import DataError
from .data import Array, as_array, take, validate_data


@dataclass(frozen=True)
class Batch:
    """One call's arguments: ``fn(*args, **kwargs)``, the per-row tensors cut to ``rows``."""

    args: tuple
    kwargs: Mapping[str, Any]
    rows: int
    per_row: tuple[str, ...] = ()  # the names in ``kwargs`` that are per-row tensors

    def __call__(self, fn: Callable):
        return fn(*self.args, **self.kwargs)

    @property
    def tensors(self) -> list[torch.Tensor]:
        """The per-row tensors, positional first."""
        return list(self.args) + [self.kwargs[k] for k in self.per_row]

    @property
    def shape(self) -> torch.Size:
        """The shape of the first per-row tensor (``x`` of ``model(x)``)."""
        return self.tensors[0].shape

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        def move(v):
            return v.to(device, non_blocking=non_blocking)

        kwargs = {k: move(v) if k in self.per_row else v for k, v in self.kwargs.items()}
        return Batch(tuple(move(a) for a in self.args), kwargs, self.rows, self.per_row)

    def describe(self) -> str:
        """The per-row arguments' shapes, e.g. ``(128, 64)`` or ``x (128, 64), y (128,)``."""
        shapes = [tuple(a.shape) for a in self.args]
        named = [f"{k} {tuple(self.kwargs[k].shape)}" for k in self.per_row]
        if len(shapes) == 1 and not named:
            return str(shapes[0])
        return ", ".join([str(s) for s in shapes] + named)


@dataclass(frozen=True)
class Dataset:
    """Per-row arrays passed positionally and by keyword, and constant keyword extras."""

    positional: tuple[Array, ...]
    keyword: Mapping[str, Array] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def arrays(self) -> list[tuple[str, Array]]:
        """(name, array) of every per-row array: ``arg0``, ``arg1``, ... then the keywords."""
        named = [(f"arg{i}", a) for i, a in enumerate(self.positional)]
        return named + list(self.keyword.items())

    @property
    def rows(self) -> int:
        return int(self.arrays[0][1].shape[0])

    @property
    def single(self) -> Array | None:
        """The one array of ``model(x)``-style data, else None."""
        if len(self.positional) == 1 and not self.keyword:
            return self.positional[0]
        return None

    def take(self, index: torch.Tensor) -> Batch:
        """The rows ``index`` of every per-row array, as one call's arguments."""
        args = tuple(take(a, index) for a in self.positional)
        kwargs = {k: take(a, index) for k, a in self.keyword.items()} | dict(self.extras)
        return Batch(args, kwargs, int(index.numel()), tuple(self.keyword))

    def head(self, rows: int) -> Batch:
        return self.take(torch.arange(min(rows, self.rows)))

    def first(self, rows: int) -> Dataset:
        """The first ``rows`` rows (all when there are fewer), as a data set of tensors."""
        batch = self.head(rows)
        return Dataset(batch.args, {k: batch.kwargs[k] for k in batch.per_row}, self.extras)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Contiguous row batches in order."""
        for start in range(0, self.rows, batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, self.rows)))

    def to(self, device: torch.device) -> Dataset:
        """In-memory tensors moved to ``device`` (memory-mapped arrays stay on disk)."""

        def move(a: Array) -> Array:
            return a.to(device) if isinstance(a, torch.Tensor) else a

        return Dataset(
            tuple(move(a) for a in self.positional),
            {k: move(a) for k, a in self.keyword.items()},
            self.extras,
        )

    def validate(self, batch_size: int | None = None) -> None:
        """Every per-row array non-empty and finite; ``batch_size`` at most the rows."""
        for name, array in self.arrays:
            try:
                validate_data(array, batch_size)
            except DataError as e:
                if len(self.arrays) == 1:
                    raise
                raise DataError(f"per-row array {name!r}: {e}") from e


def as_dataset(data, model_kwargs: Mapping[str, Any] | None = None) -> Dataset:
    """``data`` (an array, a tuple of per-row arrays, or a dict of them) as a :class:`Dataset`.

    Raises:
        DataError: an empty tuple or dict, per-row arrays with different row counts, or a name
            given both as per-row data and in ``model_kwargs``.
    """
    extras = dict(model_kwargs or {})
    if not all(isinstance(k, str) for k in extras):
        raise DataError("model_kwargs must be a dict with str keys (the keyword names)")
    if isinstance(data, Dataset):
        return Dataset(data.positional, data.keyword, dict(data.extras) | extras)
    if isinstance(data, Mapping):
        if not data:
            raise DataError("the data dict is empty; give per-row arrays by keyword name")
        dataset = Dataset((), {str(k): _array(v, repr(k)) for k, v in data.items()}, extras)
    elif isinstance(data, tuple):
        if not data:
            raise DataError("the data tuple is empty; give one or more per-row arrays")
        dataset = Dataset(tuple(_array(v, f"#{i}") for i, v in enumerate(data)), {}, extras)
    else:
        dataset = Dataset((as_array(data),), {}, extras)
    clash = sorted(set(dataset.keyword) & set(extras))
    if clash:
        raise DataError(f"{clash} are given as per-row data and in model_kwargs; give each once")
    counts = {name: int(a.shape[0]) if a.ndim else 0 for name, a in dataset.arrays}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"the per-row arrays have different numbers of rows {counts}; every array in the "
            "data tuple or dict must have one row per datapoint (pass constants in model_kwargs)"
        )
    return dataset


def _array(value, name: str) -> Array:
    try:
        return as_array(value)
    except DataError as e:
        raise DataError(f"per-row array {name}: {e}") from e


def select_rows(
    data, obs: Sequence[int] | None, device: torch.device, model_kwargs=None
) -> tuple[Batch, torch.Tensor]:
    """The rows ``obs`` (default all) of ``data`` as one batch on ``device``, and their row
    numbers; refuses empty, repeated or out-of-range row numbers."""
    dataset = as_dataset(data, model_kwargs)
    dataset.validate()
    index = torch.arange(dataset.rows) if obs is None else _row_index(obs, dataset.rows)
    return dataset.take(index).to(device), index


def _row_index(obs: Sequence[int], num_rows: int) -> torch.Tensor:
    values = np.asarray(obs).reshape(-1)
    if values.size and not (np.issubdtype(values.dtype, np.integer) or (
        np.issubdtype(values.dtype, np.floating) and np.all(np.mod(values, 1) == 0)
    )):
        raise DataError(f"obs must be whole row numbers, not {values[:5].tolist()}")
    index = torch.as_tensor(values.astype(np.int64))
    if index.numel() == 0:
        raise DataError("obs selects no rows; give at least one row number")
    if int(index.min()) < 0 or int(index.max()) >= num_rows:
        raise DataError(
            f"obs has row numbers outside 0..{num_rows - 1} (the data has {num_rows} rows)"
        )
    if index.unique().numel() != index.numel():
        raise DataError("obs repeats row numbers; give each row once")
    return index
