"""Run directories that are written whole or not at all.

A command writes into a fresh temporary sibling of the output directory and renames it into
place only when everything succeeded; when anything fails (a full disk too, reported as an
:class:`~ppl_vae.utils.errors.OutputError`) the temporary directory is removed. An existing run is
refused unless ``overwrite=True``, and even then it is replaced only after the new one is
complete: a failure never clobbers half of it.
``overwrite`` replaces only a directory that is a run, which every command marks with its own
record (:data:`RUN_RECORDS`: ``summary.json`` and ``history.csv`` of ``train``,
``settings.json`` of a comparison, ``diagnostics.json`` of ``diagnose``), never another
non-empty directory, and never the working directory or one that holds it.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from .errors import OutputError, PplVaeError
from .files import atomic_write_text, disk_full, umask
from .locks import exchange, exclusive

RUN_RECORDS = ("summary.json", "history.csv", "settings.json", "diagnostics.json")


@contextlib.contextmanager
def run_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` when the block succeeds; ``out`` is
    locked for the block, so a second run into it at the same time is refused."""
    check_output(out, overwrite)  # refused before anything is touched; again under the lock
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    def busy() -> OutputError:
        return OutputError(
            f"another ppl-vae run is writing {str(out)!r} right now; wait for it to finish or "
            "choose another --out"
        )

    with exclusive(out.parent / f".{out.name}.lock", busy):
        recover(out)
        check_output(out, overwrite)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        staging.chmod(0o777 & ~umask())
        try:
            yield staging
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            full = disk_full(e)
            if full is None or isinstance(e, PplVaeError):  # e.g. a checkpoint's, which says so
                raise
            what = f"writing {Path(full.filename).name!r}" if full.filename else "writing"
            kept = " (the earlier run in it is kept)" if out.exists() else ""
            raise OutputError(
                f"the disk is full: {what} for {str(out)!r} failed ({full.strerror}); nothing "
                f"was written to it{kept}; free disk space, or choose another --out on a disk "
                "with room"
            ) from e
        _swap_in(staging, out)


def _swap_in(staging: Path, out: Path) -> None:
    """Put ``staging`` in place of ``out``: an atomic exchange where the OS has one, else two
    renames whose interruption :func:`recover` repairs on the next start."""
    if not out.exists():
        staging.rename(out)
    elif exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old run now
    else:
        retired = _retired(out)
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)


def _retired(out: Path) -> Path:
    return out.with_name(f".{out.name}.retired")


def recover(out: Path) -> None:
    """Put back an earlier run that a kill between the two renames of a replacement left
    retired (no ``out``, the old run beside it); remove one whose replacement is complete."""
    retired = _retired(out)
    if not retired.is_dir():
        return
    if out.exists():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.rename(out)


def check_output(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``out`` that is a file, or a directory holding a run unless ``overwrite``:
    called before a long computation, so that it is not lost at the end."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"output {str(out)!r} exists and is not a directory; choose another --out"
        )
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not is_run(out):
        raise OutputError(
            f"output directory {str(out)!r} is not empty and is not a ppl-vae run; choose a new "
            "or empty --out (--overwrite replaces only an earlier run, never other files)"
        )
    if not overwrite:
        raise OutputError(
            f"output directory {str(out)!r} already holds a run; choose another --out or pass "
            "--overwrite to replace it"
        )
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise OutputError(
            f"--out {str(out)!r} is the working directory or holds it, which --overwrite would "
            "delete; give a directory of its own"
        )


def is_run(directory: Path) -> bool:
    """Whether ``directory`` is a run: it holds one of :data:`RUN_RECORDS`."""
    return any((directory / name).is_file() for name in RUN_RECORDS)


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"{str(path)!r} does not exist; is this a ppl-vae run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OutputError(f"{str(path)!r} is not valid JSON ({e}); the run is damaged") from e


def versions() -> dict[str, str]:
    """Python and the versions of the packages a run depends on."""
    found = {"python": platform.python_version()}
    for name in ("ppl_vae", "pyro-ppl", "torch", "arviz", "pandas", "numpy", "scikit-learn"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
