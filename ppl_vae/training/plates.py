r"""Scaling the data plate's sites, so that a minibatch estimates the full data set's ELBO.

With N rows and a minibatch of B, every site in the data plate is scaled by N/B (as
``pyro.plate(name, N, subsample=...)`` does), while global sites count once:

.. math:: \hat{\mathcal L} = \frac{N}{B}\sum_{n \in \text{batch}} \ell_n(\theta) +
          \log p(\theta) - \log q(\theta),

an unbiased estimate of the full-data ELBO (Hoffman et al. 2013, eq. 12). Without it the
minibatch objective is the ELBO of a B-row data set, and the posterior of global latents
depends on the batch size. Data-parallel ranks use the same scaling by the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.messenger import Messenger

from ..pair.traces import in_data_plate


class DataPlateScale(Messenger):
    """Multiply the scale of every sample site inside the plate named ``plate`` by ``factor``."""

    def __init__(self, factor: float, plate: str):
        super().__init__()
        self.factor = factor
        self.plate = plate

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and in_data_plate(msg, self.plate):
            msg["scale"] = self.factor * msg["scale"]


def scale_data_plate(fn: Callable, factor: float, plate: str) -> Callable:
    """``fn`` with its data-plate sites scaled by ``factor`` (unchanged when it is 1)."""
    return fn if factor == 1 else DataPlateScale(float(factor), plate)(fn)
