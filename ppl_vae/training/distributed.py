r"""Data-parallel SVI over ``torch.distributed``: shards, gradient averaging, launching.

With P processes (ranks) and a global minibatch :math:`B` of :math:`|B|` rows, rank
:math:`r` takes the disjoint slice :math:`B_r` (every rank draws the same seeded
permutation) and computes the ELBO on it with every site inside the data plate scaled by P:

.. math:: \hat{\mathcal{L}}_r = P \sum_{n \in B_r} \ell_n(z_n) + \ell_{\text{global}},

where :math:`\ell_n` are the per-datapoint terms and :math:`\ell_{\text{global}}` the terms of
latents outside the data plate. This is the scaling ``pyro.plate(..., subsample=B_r)`` of
a plate of size :math:`|B|` would apply. Averaging over ranks gives

.. math:: \frac1P \sum_r \hat{\mathcal{L}}_r = \sum_{n \in B} \ell_n + \ell_{\text{global}},

the single-process loss of the global batch, and so, averaging gradients, the same update
(up to float summation order and independent sampling noise: rank r seeds Pyro with
``seed + r``). Gradients of every parameter in Pyro's param store and the loss travel in one
flattened buffer: one all-reduce of ``(num_params + 1) × 4`` bytes per step, as in PyTorch's
DistributedDataParallel (Li et al. 2020, "PyTorch Distributed", VLDB).

Processes are started by ``torchrun`` (``ppl-vae train --nproc P`` runs it); the process
group is joined from the environment torchrun sets (gloo on CPU, NCCL on CUDA), so several
machines work through torchrun's rendezvous with no change here.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import torch
import torch.distributed as dist

from ..utils.errors import PplVaeError
from .plates import scale_data_plate

TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` data-parallel processes."""

    rank: int = 0
    size: int = 1


def world() -> World:
    """The current process group (one process when none is initialized)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def init_from_env(device: str | torch.device = "cpu") -> World:
    """Join the process group that torchrun describes in the environment (``WORLD_SIZE`` > 1).

    gloo on CPU, NCCL on CUDA (each rank on GPU ``LOCAL_RANK``). Without torchrun's
    environment this is a no-op returning a one-process :class:`World`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return world()


def leave() -> None:
    """Leave the process group together, if one was joined: a barrier, then destroy it (a rank
    tearing gloo down while another still uses it can abort at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, group: World) -> None:
    """Refuse a global batch that does not split evenly over the processes."""
    if batch_size % group.size:
        raise PplVaeError(
            f"batch_size={batch_size} does not split evenly over {group.size} processes; "
            f"choose a multiple of {group.size}"
        )


def shard(index: torch.Tensor, group: World) -> torch.Tensor:
    """This rank's disjoint, contiguous slice of a global minibatch's row indices."""
    rows = index.shape[0] // group.size
    return index[group.rank * rows : (group.rank + 1) * rows]


def shard_scaled(fn: Callable, group: World, plate: str) -> Callable:
    """``fn`` with its data-plate sites scaled by the number of processes (see module doc)."""
    return scale_data_plate(fn, float(group.size), plate)


def broadcast_params() -> None:
    """Give every rank rank 0's values of all parameters in Pyro's param store."""
    named = dict(pyro.get_param_store().named_parameters())
    values = [named[name] for name in sorted(named)]
    if not values:
        return
    flat = torch.cat([v.detach().reshape(-1) for v in values])
    dist.broadcast(flat, src=0)
    with torch.no_grad():
        for value, chunk in zip(values, flat.split([v.numel() for v in values]), strict=True):
            value.copy_(chunk.view_as(value))


def average_gradients(params: Sequence[torch.Tensor], loss: float) -> float:
    """All-reduce (average) the gradients of ``params`` and ``loss`` in one flat buffer.

    ``params`` must be in the same order on every rank (e.g. sorted by name). A parameter
    without a gradient on this rank contributes zeros. Returns the averaged loss.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = grads[0].device if grads else torch.device("cpu")
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss], device=device)])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    chunks = flat[:-1].split([g.numel() for g in grads])
    for p, chunk in zip(params, chunks, strict=True):
        if p.grad is None:
            p.grad = chunk.view_as(p).clone()
        else:
            p.grad.copy_(chunk.view_as(p))
    return float(flat[-1])


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m ppl_vae ARGV`` in ``nproc`` processes under torchrun on this machine.

    ``argv`` is the command line after ``ppl-vae``; its ``--nproc`` option is dropped.

    torchrun stops every rank as soon as one fails (no hang) and names the failed rank; its
    output lines are prefixed with the rank. Raises :class:`PplVaeError` if the job failed.
    """
    if nproc < 1:
        raise PplVaeError(f"--nproc must be a positive integer, not {nproc}")
    command = torchrun_command(nproc, "ppl_vae", _without_nproc(argv), tee=True)
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        raise PplVaeError(
            f"data-parallel training with {nproc} processes failed (torchrun exit status "
            f"{status}); the failing rank's error is printed above, prefixed with its rank"
        )
    return 0


def torchrun_command(nproc: int, module: str, argv: Sequence[str], tee: bool = False) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node P -m MODULE ARGV``:
    ``nproc`` processes on this machine (``tee``: rank-prefixed output of every rank)."""
    options = ["--standalone", f"--nproc_per_node={nproc}", *(["--tee=3"] if tee else [])]
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", module, *argv]


def _without_nproc(argv: Sequence[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept
