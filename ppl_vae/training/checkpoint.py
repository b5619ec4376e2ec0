"""Checkpoints of a running :func:`~ppl_vae.fit`, and exact resume from them.

A checkpoint is everything the next step depends on, so that a run killed at any step and
resumed ends bitwise equal (on CPU) to the run that was never interrupted:

- the Pyro param store (unconstrained values, constraints *by name*: :mod:`ppl_vae.utils.params`);
- the optimizer state (``PyroOptim.get_state()``: Adam's moments and step counts);
- the RNG states of torch (and CUDA), numpy and Python, and of the minibatch-order generator,
  with the current epoch's permutation of the rows;
- the step counter (epoch and β follow from it) and the history rows so far;
- a fingerprint of the run: parameter names and shapes, latent and observed sites with their
  distributions, data shape and a SHA-256 of all its rows (read in 4 MiB pieces), estimator
  and settings.

Every file carries a SHA-256 of its own content, verified on load
(:func:`ppl_vae.utils.params.write_tensors`): torch does not check the archive's CRCs.

The file ``DIR/checkpoint.pt`` is written atomically (:func:`ppl_vae.utils.files.atomic_write`:
temporary file in ``DIR``, fsync, rename), so the previous good checkpoint stays in place until
the new one is complete (a temporary file left by a write killed half way is removed by the
next run). It holds tensors, numbers and strings only and is read with
``torch.load(weights_only=True)``: loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pyro
import torch

from ..estimators.kl import dist_name
from ..pair.dataset import Dataset
from ..pair.traces import PairTraces, is_latent, is_observed
from ..utils import params as param_io
from ..utils.errors import CheckpointError, first_line, is_integer
from ..utils.locks import exclusive_directory
from .state import TrainingState

FORMAT = "ppl_vae.checkpoint/1"
FILENAME = "checkpoint.pt"
_DIGEST_BYTES = 4 * 2**20  # data hashed this much at a time
_KEYS = (
    "format",
    "step",
    "params",
    "optimizer",
    "rng",
    "order",
    "permutation",
    "rows",
    "elapsed",
    "fingerprint",
)


def fingerprint(layout: PairTraces, data: Dataset, **settings) -> dict:
    """What a checkpoint must agree with to be resumed: pair, data and ``settings``.

    The pair is identified by its parameters (names, shapes; not a baseline's running
    average, which the run creates) and its sample sites (model and guide, with their
    distribution types); the data by its shape and a SHA-256 of all its
    rows; ``settings`` (estimator, batch size, seed, ...) are compared as given.
    """
    store = pyro.get_param_store()
    sites = {
        f"{role}:{name}": dist_name(site["fn"])
        for role, trace in (("model", layout.model), ("guide", layout.guide))
        for name, site in trace.nodes.items()
        if is_latent(site) or is_observed(site)
    }
    digest = hashlib.sha256()
    row_bytes = sum(a.dtype.itemsize * max(1, int(np.prod(a.shape[1:]))) for _, a in data.arrays)
    for batch in data.batches(max(1, _DIGEST_BYTES // row_bytes)):  # streamed: memory-mapped too
        for tensor in batch.tensors:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    shapes = {name: list(a.shape) for name, a in data.arrays}
    return {
        "params": {name: list(p.shape) for name, p in store.named_parameters()
                   if not name.startswith(param_io.BASELINE_AVERAGE)},
        "sites": sites,
        "data_shape": shapes["arg0"] if data.single is not None else shapes,
        "data_digest": digest.hexdigest(),
        "data_digest_of": "all rows",  # absent from checkpoints that hashed the first 256 only
        **settings,
    }


def differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they agree)."""
    found = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            parts = [
                f"{label} {names}"
                for label, names in (
                    ("only in the checkpoint:", sorted(set(old) - set(new))),
                    ("only now:", sorted(set(new) - set(old))),
                    ("changed:", sorted(k for k in set(old) & set(new) if old[k] != new[k])),
                )
                if names
            ]
            found.append(f"{key} ({'; '.join(parts)})")
        elif key == "data_digest":
            if saved.get("data_shape") == current.get("data_shape"):
                found.append("data (same shape, different values)")
            # else the data_shape entry names the difference
        else:
            found.append(f"{key} ({old!r} in the checkpoint, {new!r} now)")
    return found


def _history_rows(rows, step: int, path: Path) -> list[tuple]:
    """The history rows of a checkpoint at ``step``: one per step 1..step, each five numbers
    (step, epoch, elbo, beta, time_s); anything else is refused, not resumed from."""
    good = isinstance(rows, list) and len(rows) == step and all(
        isinstance(row, (list, tuple)) and len(row) == 5 and row[0] == i
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
        for i, row in enumerate(rows, 1)
    )
    if not good:
        raise CheckpointError(
            f"{str(path)!r} has a malformed history (expected {step} rows of step, epoch, elbo, "
            "beta, time_s numbers), and was not resumed; use an intact checkpoint or start a "
            "new run in another checkpoint_dir"
        )
    return [tuple(row) for row in rows]


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors, numbers and tuples."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (Pyro seeds it)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["position"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    random.setstate(state["python"])


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint safely (tensors only, no code runs) and check that it is complete."""
    payload = param_io.read_tensors(path, FORMAT, "checkpoint")
    missing = [key for key in _KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks {missing} and was not loaded; it was not written by "
            "this version of ppl_vae; start a new run in another checkpoint_dir"
        )
    return payload


class Checkpointer:
    """Writes ``DIR/checkpoint.pt`` every ``every`` steps and restores a run from it.

    A directory that already holds a checkpoint is only ever resumed (``resume=True``), never
    overwritten by a fresh run.
    """

    def __init__(self, directory: str | Path | None, every: int, resume: bool):
        if directory is None:
            raise CheckpointError("resume=True needs the checkpoint_dir to resume from")
        if not is_integer(every) or every < 1:
            raise CheckpointError(f"checkpoint_every must be a positive integer, not {every!r}")
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(
                f"checkpoint_dir {str(self.directory)!r} is a file; give a directory"
            )
        self.path = self.directory / FILENAME
        self.every = int(every)
        self.resume = resume
        self.saved_step: int | None = None
        self.fingerprint: dict = {}
        if self.path.exists() and not resume:
            raise CheckpointError(
                f"{str(self.path)!r} holds a checkpoint of an earlier run; pass resume=True "
                "(--resume) to continue it, or choose another checkpoint_dir"
            )

    def locked(self):
        """Hold ``checkpoint_dir`` for this run: a second run using it at the same time is
        refused (the OS releases a killed run's lock)."""

        def busy() -> CheckpointError:
            return CheckpointError(
                f"another run is using checkpoint_dir {str(self.directory)!r} right now; wait "
                "for it to finish or choose another checkpoint_dir"
            )

        return exclusive_directory(self.directory, busy)

    def restore(self, fingerprint: dict, optim, state: TrainingState, num_steps: int) -> None:
        """Load the checkpoint into the live run: parameters (in place, so modules registered
        with ``pyro.module`` stay linked), optimizer, RNGs, and ``state`` whole. Nothing
        changes when there is no checkpoint yet (a fresh start)."""
        self.fingerprint = fingerprint
        for stale in self.directory.glob(f".{FILENAME}.*.tmp"):  # a write killed half way
            stale.unlink(missing_ok=True)
        if not (self.resume and self.path.exists()):
            return
        payload = read_checkpoint(self.path)
        differ = differences(payload["fingerprint"], fingerprint)
        if differ:
            raise CheckpointError(
                f"cannot resume from {str(self.path)!r}: it was made with a different "
                f"{', '.join(differ)}; resume with the pair, data and settings it was made "
                "with, or choose another checkpoint_dir"
            )
        if payload["step"] > num_steps:
            raise CheckpointError(
                f"{str(self.path)!r} is at step {payload['step']} but num_steps={num_steps}; "
                f"give num_steps >= {payload['step']}"
            )
        try:
            param_io.restore(payload["params"]["params"], payload["params"]["constraints"])
            optim.set_state(payload["optimizer"])
            set_rng_state(payload["rng"])
            state.order.set_state(payload)
        except (TypeError, KeyError, ValueError, AttributeError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(
                f"{str(self.path)!r} has fields of the wrong type ({type(e).__name__}: "
                f"{first_line(e)}), and was not resumed; use an intact checkpoint or start a "
                "new run in another checkpoint_dir"
            ) from e
        state.step = payload["step"]
        state.rows = _history_rows(payload["rows"], payload["step"], self.path)
        state.elapsed = payload["elapsed"]
        self.saved_step = payload["step"]

    def save(self, state: TrainingState, optim, final: bool) -> None:
        """Save ``state`` when its step is a multiple of ``every`` or ``final``."""
        step = state.step
        if not (final or step % self.every == 0):
            return
        payload = {
            "format": FORMAT,
            "step": step,
            "params": param_io.state(),
            "optimizer": optim.get_state(),
            "rng": rng_state(),
            **state.order.state(),
            "rows": list(state.rows),
            "elapsed": state.elapsed,
            "fingerprint": self.fingerprint,
        }
        try:
            param_io.write_tensors(self.path, payload)
        except (OSError, RuntimeError) as e:  # torch's zip writer raises RuntimeError
            raise CheckpointError(
                f"writing the checkpoint of step {step} to {str(self.path)!r} failed ({e}); "
                f"{self.kept()}; free disk space or choose another checkpoint_dir"
            ) from e
        self.saved_step = step

    def kept(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        if self.saved_step is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {self.saved_step}) is kept in {str(self.path)!r}"
