"""Pyro's parameter store: snapshots, in-place restores, device moves, the parameters a call
creates, and a tensors-only file format. Nothing else in ppl_vae reaches into the store.

Restores copy values *into* the existing tensors. ``pyro.module`` keeps a module's own
``Parameter`` objects in the store; replacing them (as ``ParamStoreDict.set_state`` does) would
silently detach the module from the store, so ppl_vae never does.

Files hold unconstrained values and each constraint *by name* (``{"name": "greater_than",
"args": {"lower_bound": 0.0}}``), and are read with ``torch.load(weights_only=True)``: loading
never runs code from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyro
import torch
from pyro.distributions import constraints
from torch.distributions import biject_to

from .errors import CheckpointError, PplVaeError, first_line
from .files import atomic_write

FORMAT = "ppl_vae.params/1"
# Pyro's TraceGraph_ELBO keeps a decaying-average baseline's running average in the store under
# this prefix and the site's name: state of a run, updated by the ELBO, not a parameter of the pair
BASELINE_AVERAGE = "__baseline_avg_downstream_cost_"


def snapshot() -> dict[str, torch.Tensor]:
    """Detached copies of every unconstrained parameter in the store."""
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def unconstrained(names: list[str]) -> list[torch.Tensor]:
    """The store's live unconstrained tensors of ``names`` (what gradients are taken of)."""
    live = dict(pyro.get_param_store().named_parameters())
    return [live[name] for name in names]


def value(name: str) -> torch.Tensor | None:
    """The store's (constrained) value of ``name``, or None where it has none."""
    store = pyro.get_param_store()
    return store[name] if name in store else None


def to_device(device: torch.device) -> None:
    """Move every parameter of the store to ``device``, in place (modules stay linked)."""
    with torch.no_grad():
        for _, value in pyro.get_param_store().named_parameters():
            value.data = value.data.to(device)


def check_device(name) -> torch.device:
    """``name`` as a device this machine has (``"cpu"``, ``"cuda"``, ``"cuda:1"``), or a clear
    error: an unknown name, or CUDA where no GPU is visible."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise PplVaeError(f"unknown device {name!r} ({first_line(e)}); give 'cpu' or 'cuda'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PplVaeError(f"device {name!r} asked for, but no CUDA GPU is visible; use 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PplVaeError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return device


def device() -> torch.device:
    """The device of the store's parameters (CPU if it is empty)."""
    for _, value in pyro.get_param_store().items():
        return value.device
    return torch.device("cpu")


@contextlib.contextmanager
def created() -> Iterator[set[str]]:
    """The names of the parameters created inside the block (filled in when it ends)."""
    store = pyro.get_param_store()
    before = set(store.keys())
    names: set[str] = set()
    try:
        yield names
    finally:
        names.update(set(store.keys()) - before)


def forget(names) -> None:
    """Remove ``names`` from the store (those still there).

    One tensor may be registered under several names (``pyro.module("decoder", vae.decoder)``
    in the model, ``pyro.module("vae", vae)`` in the guide); the store's reverse map then
    holds one of them, and is pointed at a name that stays, if any."""
    store = pyro.get_param_store()
    for name in sorted(set(names) & set(store.keys())):
        value = store._params.pop(name)
        store._constraints.pop(name, None)
        if store._param_to_name.get(value) == name:
            del store._param_to_name[value]
            others = [n for n, v in store._params.items() if v is value]
            if others:
                store._param_to_name[value] = others[0]


def reset(values: dict[str, torch.Tensor]) -> None:
    """Make the store hold exactly ``values`` (a :func:`snapshot`): those restored in place,
    every other parameter forgotten (e.g. a baseline's running average a run created)."""
    forget(set(pyro.get_param_store().keys()) - set(values))
    restore(values)


def restore(values: dict[str, torch.Tensor], constraint_specs: dict | None = None) -> None:
    """Set the store's unconstrained parameters to ``values``, in place where they exist.

    Names not yet in the store are created (with their constraint from ``constraint_specs``).
    """
    store = pyro.get_param_store()
    with torch.no_grad():
        for name, value in values.items():
            if name in store:
                target = store._params[name]
                if target.shape != value.shape:
                    raise CheckpointError(
                        f"parameter {name!r} has shape {tuple(value.shape)} in the file but "
                        f"{tuple(target.shape)} in the pair; {_shape_fix(value, target)}"
                    )
                target.copy_(value.to(target.device))
            else:
                spec = (constraint_specs or {}).get(name, {"name": "real"})
                constraint = decode_constraint(spec)
                store.setdefault(name, biject_to(constraint)(value.clone()), constraint)


def _shape_fix(saved: torch.Tensor, live: torch.Tensor) -> str:
    """What to do when a saved parameter's shape differs from the live one."""
    if saved.dim() and saved.dim() == live.dim() and saved.shape[1:] == live.shape[1:]:
        return (
            f"its first dim looks like one entry per row (a guide with per-row parameters, "
            f"e.g. pyro.param('z_loc', torch.zeros(N, d)) indexed by row): such a guide only "
            f"has a posterior for the {saved.shape[0]} rows it was trained on, so evaluate it "
            f"on those rows, all {saved.shape[0]} of them in their training order (it was "
            f"run here on {live.shape[0]})"
        )
    return "load it into the pair it came from"


def state() -> dict:
    """Unconstrained values (on CPU) and constraint specs of the whole store."""
    store = pyro.get_param_store()
    return {
        "format": FORMAT,
        "params": {n: p.detach().cpu().clone() for n, p in store.named_parameters()},
        "constraints": {n: encode_constraint(store._constraints[n]) for n in store.keys()},
    }


def save_params(path: str | Path) -> None:
    """Write the whole param store to ``path`` atomically, tensors and names only."""
    write_tensors(path, state())


def write_tensors(path: str | Path, payload: dict) -> None:
    """``torch.save`` a payload of tensors, numbers and strings atomically, with a SHA-256
    digest of its content that :func:`read_tensors` verifies (torch does not check the
    archive's CRCs, so a flipped bit would otherwise load silently)."""
    signed = dict(payload, digest=content_digest(payload))
    atomic_write(path, lambda f: torch.save(signed, f))


def content_digest(payload) -> str:
    """SHA-256 of a payload's content: keys, types, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    _feed(digest, payload)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if torch.is_tensor(value):
        value = value.detach().cpu().contiguous()
        digest.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits as int16
            value = value.view(torch.int16)
        digest.update(value.numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=str):
            digest.update(f"{key!r}:".encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def read_params(path: str | Path) -> dict:
    """Read a params file safely (no code runs), checking its format."""
    return read_tensors(path, FORMAT, "parameter file")


def read_tensors(path: str | Path, fmt: str, what: str) -> dict:
    """Read a ppl_vae file of format ``fmt`` with ``torch.load(weights_only=True)``.

    Only tensors, numbers, strings and containers of them are accepted: a file crafted to run
    code on load (a pickle with ``__reduce__``) is refused before anything in it runs.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {str(path)!r} is a directory; give the file in it")
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: never
        raise CheckpointError(
            f"{str(path)!r} is corrupt, truncated or not a ppl_vae file, and was not loaded "
            "(it is not a file of tensors, numbers and strings only; nothing in it ran); use an "
            "intact copy"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(
            f"{str(path)!r} is corrupt, truncated or not a ppl_vae file, and was not loaded "
            f"({first_line(e)}); use an intact copy"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{str(path)!r} is not a {fmt} file; give a ppl_vae {what}")
    stored = payload.pop("digest", None)  # files written before digests have none
    if stored is not None and stored != content_digest(payload):
        raise CheckpointError(
            f"{str(path)!r} does not match its own digest: its content changed after it was "
            f"written (a damaged disk or copy), and it was not loaded; use an intact copy"
        )
    return payload


def load_params(path: str | Path) -> None:
    """Load a params file into the store (in place for parameters that already exist)."""
    payload = read_params(path)
    restore(payload["params"], payload["constraints"])


def encode_constraint(constraint: constraints.Constraint) -> dict:
    """A constraint as a name and plain arguments (floats, ints, tensors, nested specs)."""
    for name in dir(constraints):
        if getattr(constraints, name) is constraint:
            return {"name": name}
    cls = type(constraint)
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.lstrip("_")).lower()
    name = {"independent_constraint": "independent"}.get(name, name)
    args = {}
    for arg in list(inspect.signature(cls.__init__).parameters)[1:]:
        value = getattr(constraint, arg, None)
        args[arg] = encode_constraint(value) if isinstance(value, constraints.Constraint) else value
    spec = {"name": name, "args": args}
    decoded = decode_constraint(spec)
    if type(decoded) is not cls:
        raise CheckpointError(f"constraint {constraint} cannot be stored by name")
    return spec


def decode_constraint(spec: dict) -> constraints.Constraint:
    factory = getattr(constraints, spec.get("name", ""), None)
    if factory is None:
        raise CheckpointError(f"unknown constraint {spec.get('name')!r} in parameter file")
    if "args" not in spec:
        return factory
    args = {k: decode_constraint(v) if isinstance(v, dict) else v for k, v in spec["args"].items()}
    return factory(**args)
