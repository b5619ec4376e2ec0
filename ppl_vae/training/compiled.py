r"""A compiled SVI step: the pair traced once to a graph of tensor operations, then compiled.

Pyro's ELBOs build the objective anew on every step: the effect-handler stack runs the guide
and the model, records their traces, computes the log-densities and sums them, all in Python.
For a pair whose structure does not change between steps (the same sites, distributions,
shapes and control flow on every minibatch) that Python work produces the same sequence of
tensor operations every time. :func:`compile_elbo` records that sequence once
(``torch.fx.experimental.proxy_tensor.make_fx``: every ATen operation of one run of the
ELBO's loss and of the backward pass of its surrogate, with the parameters in Pyro's param
store and the minibatch's tensors as the graph's inputs) and compiles it with
``torch.compile`` (TorchInductor by default). A step then calls one compiled function of
(parameters, minibatch) that returns the loss and the gradients of the surrogate loss, which
are the ELBO's (Trace_ELBO: Kingma & Welling 2014; Ranganath et al. 2014 for score-function
sites), without Pyro's handlers or torch's autograd engine running:

.. math::
    \mathrm{loss} = -\big[\textstyle\sum_{\text{model}} \log p - \sum_{\text{guide}} \log q\big],
    \qquad \nabla\,\mathrm{surrogate} = -\nabla\,\mathrm{ELBO}.

With ``fit``'s default optimizer (:class:`~ppl_vae.optim.ForeachAdam`) the Adam update is
part of the compiled function too (:func:`~ppl_vae.optim.adam_update`: the operations of
``torch.optim.Adam``, on the optimizer's own moment and step tensors, updated in place), and
so is the check that the loss and every gradient are finite: a step is one call that returns
(loss, finite) and has applied nothing unless finite. Optimizer state and checkpoints are the
eager run's. Another optimizer (the user's ``optim``), and parameters on a GPU, keep the
update outside: the call returns the gradients and ``fit`` steps the optimizer.

The random draws stay in the graph as ATen random operations on torch's global generator
(Inductor's ``fallback_random``), so a compiled step draws exactly the noise the eager step
draws, in the same order: a compiled run follows the eager run's numbers up to floating-point
rounding of the fused kernels (bitwise with the ``"aot_eager"`` backend, which runs the same
operations unfused), and its checkpoints resume it exactly.

What cannot be compiled is caught before training: a pair whose control flow reads a tensor's
value (``if x.sum() > 0``, ``.item()``) cannot be traced, and an operation that writes into a
tensor the graph does not create (BatchNorm's running statistics) would be replayed on a
stale copy; either makes :func:`compile_elbo` warn and return None, and ``fit`` trains eagerly.
A minibatch of another shape or dtype than the traced one is refused at the step.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable

import pyro
import pyro.infer
import torch
import torch.utils._pytree as pytree
from pyro import poutine
from torch.fx.experimental.proxy_tensor import make_fx

from ..estimators.iwae import IWAE_ELBO
from ..optim import AdamTensors, ForeachAdam, adam_update
from ..pair.dataset import Batch
from ..utils.errors import EstimatorError, PairError, PplVaeError, first_line
from ..utils.rng import forked

BACKENDS = ("inductor", "aot_eager", "eager")


class CompileFallbackWarning(UserWarning):
    """``compile=True`` could not compile the pair; ``fit`` trains with the eager step."""


def check_options(compile: bool | str, *, jit: bool, kl_warmup: int,
                  validate_every_step: bool) -> None:
    """Refuse ``fit`` settings a compiled step cannot honour, before anything runs."""
    if compile is False or compile is None:
        return
    if not (compile is True or isinstance(compile, str)):
        raise PplVaeError(f"compile must be True, False or a backend name, not {compile!r}")
    if compile is not True and compile not in BACKENDS:
        raise PplVaeError(f"compile={compile!r} is not a backend; use True (TorchInductor) or "
                          f"one of {list(BACKENDS)}")
    clash = [name for name, on in (("jit=True", jit), (f"kl_warmup={kl_warmup}", kl_warmup),
                                   ("validate_every_step=True", validate_every_step)) if on]
    if clash:
        raise PplVaeError(
            f"compile cannot be combined with {', '.join(clash)}: the compiled step is traced "
            "once (JIT is another compiler; KL warm-up changes the objective every step; Pyro's "
            "validation runs in the Python that compiling removes); drop one of them"
        )


def check_compilable(elbo: pyro.infer.ELBO, backend: str) -> None:
    """Refuse an ELBO (or backend) the compiled step does not support, naming what it does.

    Raises:
        EstimatorError: the ELBO is not a ``Trace_ELBO`` (``TraceMeanField_ELBO`` and the
            estimators built on them), or it is already a JIT ELBO.
    """
    check_options(backend, jit=False, kl_warmup=0, validate_every_step=False)
    if isinstance(elbo, pyro.infer.TraceEnum_ELBO):
        raise EstimatorError(
            "compile=True cannot trace TraceEnum_ELBO (estimator 'enum') once: Pyro's "
            "enumerated sum (pyro.infer.util.Dice.compute_expectation) chooses on every step, "
            "from the values of the enumerated probabilities, whether to drop zero-probability "
            "terms, a tensor of data-dependent size; drop compile=True for this estimator"
        )
    jit = isinstance(elbo, pyro.infer.JitTrace_ELBO | pyro.infer.JitTraceMeanField_ELBO)
    if jit or not isinstance(elbo, pyro.infer.Trace_ELBO | IWAE_ELBO):
        raise EstimatorError(
            f"compile=True compiles Trace_ELBO-type and importance-weighted estimators (sampled, "
            f"analytic, stl, iwae, dreg), not "
            f"{type(elbo).__name__}; drop compile=True (and jit=True) for this estimator"
        )


class CompiledELBO:
    """The compiled loss of one pair on minibatches shaped like the traced one.

    ``loss_and_grads(model, guide, *args, **kwargs)`` has the meaning of the ELBO's: it
    returns the loss (a float) and leaves the surrogate's gradients in ``.grad`` of
    :attr:`params` (the store's live unconstrained tensors, the ones a step updates; those
    the loss does not depend on, not in :attr:`trained`, keep ``.grad`` None).
    ``compile_s`` is the time that tracing and compiling took, forward and backward.
    """

    def __init__(self, function: Callable, params: list[torch.Tensor],
                 trained: list[torch.Tensor], signature: tuple, compile_s: float,
                 update: _Update | None = None):
        self.function, self.params, self.trained = function, params, trained
        self.signature, self.compile_s, self.update = signature, compile_s, update

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        if self.update is not None:
            raise PplVaeError("this compiled step applies the optimizer itself; call step()")
        with torch.no_grad():  # the graph computes the gradients itself
            loss, *grads = self.function(*self.params, *self._tensors(args, kwargs))
        for p, grad in zip(self.trained, grads, strict=True):
            p.grad = grad
        return float(loss)

    def step(self, model, guide, *args, **kwargs) -> tuple[float, bool]:
        """One whole step, the optimizer's update included (``update`` set): (loss, whether
        the loss and every gradient were finite, i.e. whether the update was applied)."""
        tensors = self._tensors(args, kwargs)
        with torch.no_grad():
            loss, finite = self.function(*self.params, *tensors, *self.update.inputs())
        return float(loss), bool(finite)

    def _tensors(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        tensors, signature = _split(args, kwargs)
        if signature != self.signature:
            raise PplVaeError(
                "the compiled step was traced for minibatches of another shape, dtype or "
                "constant arguments; keep every minibatch alike or drop compile=True"
            )
        return tensors


class _Update:
    """The optimizer's part of a compiled step: its state tensors and learning rate as the
    function's last inputs."""

    def __init__(self, optim: ForeachAdam, trained: list[torch.Tensor]):
        self.optim, self.state = optim, optim.state_tensors(trained)
        self.flat, self.value = self.state.flat(), optim.lr()
        self.lr = torch.tensor(self.value, dtype=torch.float64)

    def inputs(self) -> list[torch.Tensor]:
        if self.optim.lr() != self.value:  # changed between steps: refill, no new tensor
            self.value = self.optim.lr()
            self.lr.fill_(self.value)
        return [*self.flat, self.lr]


def _fusable(optim, params: list[torch.Tensor]) -> bool:
    """Whether the optimizer's update can run in the compiled function (see module doc)."""
    return (isinstance(optim, ForeachAdam) and optim.fusable() is None
            and all(p.device.type == "cpu" for p in params))


def _with_update(graph: Callable, n_params: int, trained_index: list[int],
                 state: AdamTensors) -> Callable:
    """``graph`` (params, tensors -> loss, gradients) followed by the finite check and the
    Adam update: a function of (params, tensors, state tensors, lr) -> (loss, finite)."""
    n_state = len(state.flat())

    def step(*inputs):
        params, lr = inputs[:n_params], inputs[-1]
        loss, *grads = graph(*inputs[:-n_state - 1])
        finite = torch.isfinite(loss)
        for grad in grads:
            finite = finite & torch.isfinite(grad).all()
        adam_update([params[i] for i in trained_index], grads,
                    state.unflat(list(inputs[-n_state - 1:-1])), lr, finite)
        return loss, finite

    return step


def compile_elbo(elbo: pyro.infer.ELBO, model, guide, x: Batch, backend: str = "inductor",
                 processes: int = 1, optim: pyro.optim.PyroOptim | None = None
                 ) -> CompiledELBO | None:
    """Trace ``elbo``'s loss of the pair on minibatch ``x`` and compile it (see module doc),
    with ``optim``'s update when it is a :class:`~ppl_vae.optim.ForeachAdam` it can run.

    Tracing and the first (compiling) call run outside torch's random streams, on copies of
    the parameters and optimizer state, and free the gradients they leave, so the run draws
    what the eager run draws from its first step on. Returns None, after a
    :class:`CompileFallbackWarning` naming the cause, for a pair that cannot be compiled.
    """
    check_compilable(elbo, backend)
    if processes > 1:
        raise PplVaeError("compile=True runs in a single process; drop compile or nproc")
    started = time.perf_counter()
    with forked(), pyro.validation_enabled(False):
        names = _param_names(elbo, model, guide, x)
        store = pyro.get_param_store()
        params = list({id(p): p for p in (store[n].unconstrained() for n in names)}.values())
        tensors, signature = _split(x.args, x.kwargs)
        try:
            graph, trained = _trace(elbo, model, guide, x, params, tensors, names)
            update, inputs = None, [*params, *tensors]
            if _fusable(optim, params):
                update = _Update(optim, trained)
                index = {id(p): i for i, p in enumerate(params)}
                step = _with_update(graph, len(params), [index[id(p)] for p in trained],
                                    update.state)
                inputs = [_copy(v) for v in (*params, *tensors, *update.inputs())]
                with torch.no_grad():  # one graph of its own (torch.compile caches per code)
                    graph = make_fx(step)(*[_copy(v) for v in inputs])
            function = _compiled(graph, backend)
            with torch.no_grad():
                function(*inputs)  # compiles
        except PplVaeError as e:
            _fall_back(str(e))
            return None
        except Exception as e:  # torch's tracing and compiler errors have no common base
            _fall_back(f"{type(e).__name__}: {first_line(e)}")
            return None
        finally:
            for p in params:
                p.grad = None
    return CompiledELBO(function, params, trained, signature, time.perf_counter() - started,
                        update)


def _loss(elbo: pyro.infer.ELBO, model, guide, args, kwargs
          ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, set[str] | None]]]:
    """(loss, [(surrogate loss, the names of the parameters it differentiates, None for all)])
    of ``elbo`` as tensors: ``Trace_ELBO.loss_and_grads`` without the backward pass, its
    particles (vectorized: one) averaged; the importance-weighted estimators' own
    ``surrogates``."""
    if isinstance(elbo, IWAE_ELBO):
        return elbo.surrogates(model, guide, args, kwargs)
    loss, surrogate = 0.0, 0.0
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        particle, surrogate_particle = elbo._differentiable_loss_particle(model_trace, guide_trace)
        loss = loss + particle / elbo.num_particles
        surrogate = surrogate + surrogate_particle / elbo.num_particles
    return torch.as_tensor(loss), [(torch.as_tensor(surrogate), None)]


def _param_names(elbo, model, guide, x: Batch) -> list[str]:
    """The names of the parameters one run of the loss reads, in a fixed order."""
    with torch.no_grad(), poutine.trace(param_only=True) as capture, _tensor_items(elbo):
        _loss(elbo, model, guide, x.args, x.kwargs)
    return sorted(capture.trace.nodes)


def _trace(elbo, model, guide, x: Batch, params, tensors, names):
    """The graph of one run of the loss and its gradients, inputs (params, minibatch tensors),
    outputs (loss, the gradient of each parameter that has one); and those parameters."""
    store = pyro.get_param_store()
    by_name = {n: store[n].unconstrained() for n in names}
    spec = pytree.tree_structure((x.args, x.kwargs))
    leaves = pytree.tree_leaves((x.args, x.kwargs))
    trained = []

    def loss_and_grads(*inputs):
        batch = iter(inputs[len(params):])
        flat = [next(batch) if isinstance(v, torch.Tensor) else v for v in leaves]
        args, kwargs = pytree.tree_unflatten(flat, spec)
        loss, parts = _loss(elbo, model, guide, args, kwargs)
        grads = [None] * len(params)
        for surrogate, subset in parts:
            wanted = None if subset is None else {id(by_name[n]) for n in subset}
            index = [i for i, p in enumerate(params) if wanted is None or id(p) in wanted]
            if index and surrogate.requires_grad:
                found = torch.autograd.grad(surrogate, [params[i] for i in index],
                                            allow_unused=True, retain_graph=True)
                for i, g in zip(index, found, strict=True):
                    grads[i] = g if grads[i] is None or g is None else grads[i] + g
        trained[:] = [p for p, g in zip(params, grads, strict=True) if g is not None]
        return loss.detach(), *(g for g in grads if g is not None)

    with poutine.trace(param_only=True) as capture, _tensor_items(elbo):
        try:
            graph = make_fx(loss_and_grads)(*params, *tensors)
        except RuntimeError as e:
            if "_local_scalar_dense" not in str(e):
                raise
            raise PairError(
                "the pair reads a tensor's value in Python (an `if` on a tensor, .item(), "
                "float(...)), so its steps differ with the data and cannot be traced once"
            ) from e
    if sorted(capture.trace.nodes) != names:
        raise PairError("the pair reads other parameters on other runs")
    _check_mutations(graph)
    return graph, trained


def _check_mutations(graph: torch.fx.GraphModule) -> None:
    """Refuse a graph that writes into a tensor it does not create (an input or a constant:
    BatchNorm's running statistics, a counter), which replaying the graph would not keep."""
    outside = {n for n in graph.graph.nodes if n.op in ("placeholder", "get_attr")}
    for node in graph.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        written = [a for a, arg in zip(node.args, schema.arguments, strict=False)
                   if arg.alias_info is not None and arg.alias_info.is_write]
        if any(a in outside for a in written):
            raise PairError(
                f"the pair writes into a tensor in place ({node.target}), e.g. BatchNorm's "
                "running statistics, which a compiled step cannot replay"
            )


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy to compile on, alike in everything ``torch.compile`` guards on."""
    return tensor.detach().clone().requires_grad_(tensor.requires_grad)


def _compiled(graph: Callable, backend: str) -> Callable:
    """``torch.compile`` of the traced graph: whole (no graph breaks), static shapes, random
    operations left to torch's generator so that the draws are the eager ones."""
    options = {"options": {"fallback_random": True}} if backend == "inductor" else {}
    return torch.compile(graph, backend=backend, fullgraph=True, dynamic=False, **options)


@contextlib.contextmanager
def _tensor_items(elbo: pyro.infer.ELBO):
    """While tracing, the ELBO's ``torch_item`` (its loss as a Python float) returns the tensor,
    so that the loss is a graph output rather than a constant of the traced run."""
    method = getattr(type(elbo), "_differentiable_loss_particle", None)
    scope = method.__globals__ if method is not None else {}
    saved = scope.get("torch_item")
    if saved is not None:
        scope["torch_item"] = lambda value: value
    try:
        yield
    finally:
        if saved is not None:
            scope["torch_item"] = saved


def _split(args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], tuple]:
    """The tensors among the arguments, and what the graph was traced for: each tensor's shape,
    dtype and device, and every other argument's value."""
    leaves = pytree.tree_leaves((args, kwargs))
    tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
    signature = tuple(
        (tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else ("value", v)
        for v in leaves
    )
    return tensors, (pytree.tree_structure((args, kwargs)), signature)


def _fall_back(reason: str) -> None:
    warnings.warn(
        f"compile=True could not compile this pair ({reason}); training with the eager step "
        "instead (the same numbers, without the speed-up)",
        CompileFallbackWarning,
        stacklevel=4,
    )
