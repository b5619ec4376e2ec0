"""The state of a run besides Pyro's param store, the optimizer and the RNGs: the steps done,
their history rows, the elapsed training time and the minibatch order.

:class:`~ppl_vae.training.svi.Trainer` steps it and
:class:`~ppl_vae.training.checkpoint.Checkpointer` saves and restores it whole; it lives below
both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class MinibatchOrder:
    """One seeded permutation of the rows per epoch, cut into ``rows // batch_size`` batches
    (the remainder of an epoch is dropped); its state is the generator and the permutation."""

    def __init__(self, rows: int, batch_size: int, seed: int):
        self.rows, self.batch_size = rows, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation: torch.Tensor | None = None

    def batch(self, step: int) -> tuple[int, torch.Tensor]:
        """The epoch of 1-based ``step`` and its minibatch's row indices."""
        epoch, position = divmod(step - 1, self.rows // self.batch_size)
        if position == 0:
            self.permutation = torch.randperm(self.rows, generator=self.generator)
        start = position * self.batch_size
        return epoch, self.permutation[start : start + self.batch_size]

    def state(self) -> dict:
        return {"order": self.generator.get_state(), "permutation": self.permutation}

    def set_state(self, state: dict) -> None:
        self.generator.set_state(state["order"])
        self.permutation = state["permutation"]


@dataclass
class TrainingState:
    """The run so far: ``step`` steps done, their history ``rows``, ``elapsed`` training
    seconds (callbacks excluded), and the minibatch ``order``."""

    order: MinibatchOrder
    step: int = 0
    rows: list[tuple] = field(default_factory=list)
    elapsed: float = 0.0
