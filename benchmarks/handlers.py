"""What one eager training step costs, layer by layer: ``python -m benchmarks.handlers``.

The digits VAE (``models/bernoulli_vae.py``, 64-128-8, batch 128, ``sampled``), timed in
microseconds per call, each layer adding one piece of what an eager ``fit`` step runs:

- ``networks``: the encoder's and the decoder's forward passes, the tensor work any
  implementation does; ``torch_loss_backward``: the hand-written loss and its backward pass;
  ``torch_step``: with ``torch.optim.Adam`` and the loss read as a number (the benchmark's
  hand-written contender);
- ``guide_bare`` / ``model_bare``: the pair's functions called with no handler on Pyro's stack
  (``pyro.module`` registering ten parameters, the plate, the sample sites: Pyro's primitives
  themselves); ``guide_trace``: the guide under ``poutine.trace``; ``model_trace_replay``: the
  model under ``trace(replay(model, guide_trace))``;
- ``importance_trace``: ``pyro.infer.enum.get_importance_trace``, both traces with their
  log-densities and pruning; ``trace_elbo_loss_and_grads``: ``Trace_ELBO.loss_and_grads`` (the
  ELBO's sum and the backward pass); ``svi_step``: Pyro's ``SVI.step`` with
  ``pyro.optim.Adam``; ``fit_step``: ``ppl_vae.fit``'s step (from its history's ``time_s``).

Pyro's validation is off, as in ``fit``'s steps after the first. Layers are interleaved, the
order rotating every repeat; medians (min, max) over the repeats.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import pandas as pd
import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
from pyro.infer.enum import get_importance_trace

import ppl_vae

from .steps import CONFIGS, LR, batches_for, data_for, fresh_pair, torch_loss
from .tables import markdown

LAYERS = ("networks", "torch_loss_backward", "torch_step", "guide_bare", "model_bare",
          "guide_trace", "model_trace_replay", "importance_trace", "trace_elbo_loss_and_grads",
          "svi_step", "fit_step")


def measure(calls: int = 1000, repeats: int = 5) -> pd.DataFrame:
    """Microseconds per call of each layer: median, min and max over interleaved repeats."""
    config = CONFIGS[0]
    data = data_for(config)
    x = batches_for(data, config.batch_size, 1, seed=0)[0]
    seen: dict[str, list[float]] = {name: [] for name in LAYERS}
    with pyro.validation_enabled(False):
        for repeat in range(repeats):
            shift = repeat % len(LAYERS)
            for name in LAYERS[shift:] + LAYERS[:shift]:
                seen[name].append(_time(name, data, x, calls))
    rows = [(name, statistics.median(v), min(v), max(v)) for name, v in seen.items()]
    return pd.DataFrame(rows, columns=["layer", "us_median", "us_min", "us_max"])


def _time(name: str, data: torch.Tensor, x: torch.Tensor, calls: int) -> float:
    config = CONFIGS[0]
    pair = fresh_pair(config)
    if name == "fit_step":
        history = ppl_vae.fit(pair.model, pair.guide, data, num_steps=calls + 1,
                              batch_size=config.batch_size, lr=LR, seed=0).history["time_s"]
        return (history.iloc[-1] - history.iloc[0]) / calls * 1e6
    call = _layer(name, pair, x)
    for _ in range(min(50, calls)):  # warm-up
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def _layer(name: str, pair: ppl_vae.ModelGuidePair, x: torch.Tensor) -> Callable[[], object]:
    """One call of layer ``name`` on minibatch ``x``."""
    model, guide = pair.model, pair.guide
    encoder, decoder = pair.modules
    params = [*encoder.parameters(), *decoder.parameters()]
    guide(x)  # the parameters registered
    model(x)
    elbo = pyro.infer.Trace_ELBO()
    optimizer = torch.optim.Adam(params, lr=LR)

    def torch_step() -> None:
        loss = torch_loss(encoder, decoder, x, "sampled")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    def freed(fn: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            fn()
            for p in pyro.get_param_store().values():
                p.unconstrained().grad = None
        return call

    guide_trace = poutine.trace(guide).get_trace(x)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    return {
        "networks": lambda: decoder(encoder(x)[0]),
        "torch_loss_backward": freed(lambda: torch_loss(encoder, decoder, x, "sampled")
                                     .backward()),
        "torch_step": torch_step,
        "guide_bare": lambda: guide(x),
        "model_bare": lambda: model(x),
        "guide_trace": lambda: poutine.trace(guide).get_trace(x),
        "model_trace_replay": lambda: poutine.trace(poutine.replay(model, trace=guide_trace))
        .get_trace(x),
        "importance_trace": lambda: get_importance_trace("flat", float("inf"), model, guide,
                                                         (x,), {}),
        "trace_elbo_loss_and_grads": freed(lambda: elbo.loss_and_grads(model, guide, x)),
        "svi_step": lambda: svi.step(x),
    }[name]


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown(measure(*(int(a) for a in sys.argv[1:3]))))
