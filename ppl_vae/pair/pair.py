"""Model/guide pairs: the optional :class:`ModelGuidePair` bundle and loading pairs by name.

A pair is two plain Pyro functions ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)``
called with a minibatch of the data (``model(x)``, ``model(x, y)``, ``model(x=..., y=...)``; see
docs/pairs.md), whose first dimension is the data plate. Nothing in ppl_vae requires the
bundle; it exists so that a file (ours in ``models/`` or a user's own) can hand the command
line a ready pair together with what the command line needs to know about it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..utils.errors import PairError, first_line


@dataclass(frozen=True)
class ModelGuidePair:
    """A model, its guide, and what a driver needs to know about them.

    Args:
        model: Pyro model ``model(x)``; ``x`` is a minibatch, first dimension the data plate.
        guide: Pyro guide ``guide(x)`` over the same latent sites.
        name: a short name used in reports.
        modules: the ``torch.nn.Module`` objects the pair registers with ``pyro.module``;
            ``fit(device=...)`` moves them (buffers included).
        x_dim: the data width the pair was built for, checked before training.
        binary: the likelihood needs values in {0, 1} (the embedded digits are binarized).
        exact_log_likelihood: ``f(x) -> log p(x)`` per row under the current parameters,
            for models that have it in closed form; comparisons then report the exact gap
            log p(x) − ELBO.

    ``model, guide = pair`` unpacks, so ``fit(*pair, data)`` works.
    """

    model: Callable
    guide: Callable
    name: str = "pair"
    modules: Sequence[torch.nn.Module] = field(default_factory=tuple)
    x_dim: int | None = None
    binary: bool = False
    exact_log_likelihood: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __iter__(self) -> Iterator[Callable]:
        return iter((self.model, self.guide))


def load_pair(spec: str, **kwargs) -> ModelGuidePair:
    """Load a pair from ``path/to/file.py[:name]`` or ``package.module[:name]``.

    ``name`` (default ``make_pair``) is either a :class:`ModelGuidePair` or a callable returning
    one; the callable receives ``kwargs`` it accepts (e.g. ``x_dim``) and ignores the rest.
    """
    target, _, attr = spec.partition(":")
    attr = attr or "make_pair"
    module = _import_target(target)
    if not hasattr(module, attr):
        raise PairError(
            f"{target!r} defines no {attr!r}: a pair file must define make_pair(x_dim, ...) "
            "returning a ppl_vae.ModelGuidePair, or name one with 'file.py:NAME'"
        )
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, ModelGuidePair):
        params = inspect.signature(obj).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        given = {k: v for k, v in kwargs.items() if takes_any or k in params}
        needed = [n for n, p in params.items() if p.default is p.empty and n not in given
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if needed:
            raise PairError(
                f"{spec!r} needs argument(s) {needed} that the command line cannot give (it "
                f"gives {sorted(kwargs)}); give them defaults"
            )
        try:
            obj = obj(**given)
        except (Exception, SystemExit) as e:
            raise PairError(f"{spec!r} raised {type(e).__name__}: {first_line(e)}") from e
    if not isinstance(obj, ModelGuidePair):
        raise PairError(
            f"{spec!r} gave a {type(obj).__name__}, not a ppl_vae.ModelGuidePair; return "
            "ModelGuidePair(model, guide, name=...) from it"
        )
    return obj


def _import_target(target: str):
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if path.is_dir():
            raise PairError(f"model file {target!r} is a directory; give a .py file or module")
        if not path.is_file():
            raise PairError(f"model file {target!r} does not exist; give a .py file or module")
        name = f"ppl_vae_user_pair_{abs(hash(path.resolve()))}"
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # the file imports its neighbours, as `python file.py` would
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        argv, sys.argv = sys.argv, [str(path)]  # the file parses its own argv, not ppl-vae's
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # a user's file failing to import is a user error
            del sys.modules[name]
            raise PairError(
                f"importing {target!r} failed: {type(e).__name__}: {first_line(e)}; a pair file "
                "must define the pair without running a program at import"
            ) from e
        finally:
            sys.argv = argv
        return module
    try:
        return importlib.import_module(target)
    except ImportError as e:
        raise PairError(
            f"cannot import {target!r} ({e}); give a path to a .py file or an importable module"
        ) from e
