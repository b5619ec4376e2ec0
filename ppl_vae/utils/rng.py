"""Explicit seeding that leaves the caller's random streams alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def forked() -> contextlib.AbstractContextManager:
    """A block after which torch's random streams (CPU and every CUDA device) are as before."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's RNG seeded by ``seed``, restoring the previous state after.

    ``seed=None`` draws from the current stream as Pyro itself would.
    """
    if seed is None:
        yield
        return
    with forked():
        torch.manual_seed(seed)
        yield


def derived_seed(seed: int, step: int) -> int:
    """A seed for the draws made at ``step`` of the run seeded by ``seed``: distinct for every
    (seed, step) pair below a million steps, so measurements never share draws."""
    return int(seed) * 1_000_003 + int(step)
