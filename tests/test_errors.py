"""The bad-input catalogue (docs/reliability.md), table-driven: every case through the Python
API (an error of the ppl_vae family, with the message) and through ``ppl-vae train`` (one line
on stderr, status 2, no traceback), and in both nothing written earlier is touched."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vae
from models import bernoulli_vae, linear_gaussian
from ppl_vae.cli import main
from ppl_vae.training.checkpoint import FILENAME
from ppl_vae.utils.runs import run_directory
from ppl_vae.utils.signals import STOP_SIGNALS

ROOT = Path(__file__).resolve().parent.parent

_GUIDE_MISSES_Z = """
from models import linear_gaussian
from ppl_vae import ModelGuidePair

def make_pair(x_dim):
    model, _ = linear_gaussian.make_pair(x_dim=x_dim)
    return ModelGuidePair(model, lambda x: None, name="no_z")
"""
_GUIDE_ADDS_W = """
import pyro, pyro.distributions as dist
from models import linear_gaussian
from ppl_vae import ModelGuidePair

def make_pair(x_dim):
    model, guide = linear_gaussian.make_pair(x_dim=x_dim)
    def guide_with_w(x):
        guide(x)
        pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    return ModelGuidePair(model, guide_with_w, name="extra_w")
"""
_FIXED_WIDTH = """
from models import linear_gaussian

def make_pair():
    return linear_gaussian.make_pair(x_dim=64)
"""


def _rows(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(40, 5)).astype(np.float32)


def _csv(tmp: Path, rows, name: str = "x.csv") -> Path:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=list("abcde"))
    frame.to_csv(tmp / name, index=False)
    return tmp / name


def _with(value: float, row: int, col: int) -> np.ndarray:
    rows = _rows()
    rows[row, col] = value
    return rows


def _file(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _truncated_npy(tmp: Path) -> Path:
    path = tmp / "x.npy"
    np.save(path, _rows())
    path.write_bytes(path.read_bytes()[:500])
    return path


def _fit(data, pair=None, **kwargs):
    model, guide = pair if pair is not None else linear_gaussian.make_pair(x_dim=5)
    settings = dict(num_steps=2, batch_size=8, seed=0) | kwargs
    return ppl_vae.fit(model, guide, data, **settings)


def _corrupt_checkpoint(tmp: Path) -> Path:
    directory = tmp / "ck"
    _fit(torch.from_numpy(_rows()), checkpoint_dir=directory)
    path = directory / FILENAME
    path.write_bytes(path.read_bytes()[:-300])
    return directory


def _load_pair_file(tmp: Path, name: str, text: str):
    return ppl_vae.load_pair(str(_file(tmp, name, text)), x_dim=5)


@dataclass(frozen=True)
class Case:
    """``api(tmp)`` makes the failing Python call; ``cli(tmp)`` gives the failing arguments of
    ``ppl-vae train`` (model, data and extra flags); both must fail with ``message``."""

    id: str
    error: type[ppl_vae.PplVaeError]
    message: str
    api: Callable[[Path], object]
    cli: Callable[[Path], list[str]]
    cli_message: str | None = None


def _model(spec) -> list[str]:
    return ["--model", str(spec)]


def _data(path) -> list[str]:
    return ["--data", str(path)]


LG = "models/linear_gaussian.py"
CASES = [
    Case("nan", ppl_vae.DataError,
         r"non-finite value \(nan\) at row 3, column 2 \(from 0\); drop or impute",
         lambda t: _fit(torch.from_numpy(_with(np.nan, 3, 2))),
         lambda t: _model(LG) + _data(_csv(t, _with(np.nan, 3, 2))) ),
    Case("inf", ppl_vae.DataError, r"non-finite value \(-inf\) at row 7, column 0",
         lambda t: _fit(_with(-np.inf, 7, 0)),
         lambda t: _model(LG) + _data(_csv(t, _with(-np.inf, 7, 0)))),
    Case("nan_in_memory_mapped_npy", ppl_vae.DataError, r"\(nan\) at row 39, column 4",
         lambda t: (np.save(t / "n.npy", _with(np.nan, 39, 4)),
                    _fit(ppl_vae.load_data(t / "n.npy"))),
         lambda t: (np.save(t / "n.npy", _with(np.nan, 39, 4)),
                    _model(LG) + _data(t / "n.npy"))[1]),
    Case("non_numeric_column", ppl_vae.DataError,
         r"column\(s\) \['label'\] are not numeric; drop them or encode them",
         lambda t: _fit(pd.DataFrame(_rows()).assign(label="cat")),
         lambda t: _model(LG) + _data(_csv(t, pd.DataFrame(_rows()).assign(label="cat")))),
    Case("empty_file", ppl_vae.DataError, r"data file '.*x.csv' is empty",
         lambda t: ppl_vae.load_data(_file(t, "x.csv", "")),
         lambda t: _model(LG) + _data(_file(t, "x.csv", ""))),
    Case("header_only_csv", ppl_vae.DataError, r"DataFrame is empty \(shape \(0, 5\)\)",
         lambda t: ppl_vae.load_data(_file(t, "x.csv", "a,b,c,d,e\n")),
         lambda t: _model(LG) + _data(_file(t, "x.csv", "a,b,c,d,e\n"))),
    Case("wrong_width", ppl_vae.PairError,
         r"minibatch of shape \(8, 5\) failed at models/linear_gaussian.py:\d+ in guide "
         r".*inputs of width 5, the data's number of columns, with weights for width 64: the "
         r"pair was built for 64 columns; build it for 5 \(its x_dim option",
         lambda t: _fit(_rows(), linear_gaussian.make_pair(x_dim=64)),
         lambda t: _model(_file(t, "fixed.py", _FIXED_WIDTH)) + _data(_csv(t, _rows())),
         cli_message="the data has 5 columns but pair 'linear_gaussian' was built for 64"),
    Case("outside_support", ppl_vae.DataError,
         r"outside the support of the observed site 'x' .*binarize",
         lambda t: _fit(_rows(), bernoulli_vae.make_pair(x_dim=5, hidden=8)),
         lambda t: _model("models/bernoulli_vae.py") + _data(_csv(t, _rows()))),
    Case("batch_larger_than_data", ppl_vae.DataError,
         r"batch_size=100 but the data has 40 rows; choose a batch size between 1 and 40",
         lambda t: _fit(_rows(), batch_size=100),
         lambda t: _model(LG) + _data(_csv(t, _rows())) + ["--batch-size", "100"]),
    Case("truncated_memory_mapped_npy", ppl_vae.DataError,
         r"cannot memory-map .*x.npy.*truncated or not a .npy array",
         lambda t: ppl_vae.load_data(_truncated_npy(t)),
         lambda t: _model(LG) + _data(_truncated_npy(t))),
    Case("model_file_missing", ppl_vae.PairError, r"model file '.*nope.py' does not exist",
         lambda t: ppl_vae.load_pair(str(t / "nope.py")),
         lambda t: _model(t / "nope.py") + _data(_csv(t, _rows()))),
    Case("model_file_defines_no_pair", ppl_vae.PairError,
         r"defines no 'make_pair': a pair file must define make_pair",
         lambda t: _load_pair_file(t, "empty.py", "x = 1\n"),
         lambda t: _model(_file(t, "empty.py", "x = 1\n")) + _data(_csv(t, _rows()))),
    Case("guide_misses_a_latent", ppl_vae.PairError,
         r"guide does not sample latent site\(s\) \['z'\] that the model has",
         lambda t: _fit(_rows(), _load_pair_file(t, "no_z.py", _GUIDE_MISSES_Z)),
         lambda t: _model(_file(t, "no_z.py", _GUIDE_MISSES_Z)) + _data(_csv(t, _rows()))),
    Case("guide_samples_a_site_the_model_lacks", ppl_vae.PairError,
         r"guide samples site\(s\) \['w'\] that the model lacks",
         lambda t: _fit(_rows(), _load_pair_file(t, "extra.py", _GUIDE_ADDS_W)),
         lambda t: _model(_file(t, "extra.py", _GUIDE_ADDS_W)) + _data(_csv(t, _rows()))),
    Case("unknown_estimator", ppl_vae.EstimatorError,
         r"unknown estimator 'both'; choose one of \['analytic', ",
         lambda t: _fit(_rows(), estimator="both"),
         lambda t: _model(LG) + _data(_csv(t, _rows())) + ["--estimator", "both"],
         cli_message="argument --estimator: invalid choice: 'both'"),
    Case("truncated_checkpoint", ppl_vae.CheckpointError,
         r"checkpoint.pt' is corrupt, truncated or not a ppl_vae file, and was not loaded",
         lambda t: _fit(_rows(), checkpoint_dir=_corrupt_checkpoint(t), resume=True),
         lambda t: _model(LG) + _data(_csv(t, _rows()))
         + ["--resume", "--checkpoint-dir", str(_corrupt_checkpoint(t))]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_python_api(tmp_path, case):
    """The error class and message; a parameter the user had in the store is untouched."""
    earlier = pyro.param("earlier", torch.arange(3.0)).detach().clone()
    with pytest.raises(case.error, match=case.message):
        case.api(tmp_path)
    assert torch.equal(pyro.param("earlier").detach(), earlier)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A complete run directory made by ppl-vae train, for the failing runs to --overwrite."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    csv = _csv(out.parent, _rows())
    argv = ["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    csv.unlink()
    return out


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_command_line(tmp_path, capsys, earlier_run, case):
    """One line on stderr, status 2; the earlier run given with --overwrite is byte for byte
    what it was, nothing else appears beside it, and inputs (a checkpoint) stay as they were."""
    work = tmp_path / "inputs"
    work.mkdir()
    argv = case.cli(work)
    inputs, before = _snapshot(work), _snapshot(earlier_run)
    try:
        code = main(["train", "--batch-size", "8", *argv, "--steps", "2", "--out",
                     str(earlier_run), "--overwrite", "--no-progress"])  # fmt: skip
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(case.cli_message or case.message, err), err
    assert _snapshot(earlier_run) == before
    assert [p.name for p in earlier_run.parent.iterdir() if p.is_dir()] == ["run"]
    assert _snapshot(work) == inputs


def test_an_existing_run_is_refused_without_overwrite(tmp_path, capsys, earlier_run):
    """Python (run_directory) and CLI: refused before anything is written."""
    before = _snapshot(earlier_run)
    with pytest.raises(ppl_vae.OutputError, match="already holds a run; choose another --out or "
                       "pass --overwrite"):  # fmt: skip
        with run_directory(earlier_run):
            pass
    csv = _csv(tmp_path, _rows())
    code = main(["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8",
                 "--out", str(earlier_run), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "already holds a run" in err
    assert _snapshot(earlier_run) == before
    assert [p.name for p in earlier_run.parent.iterdir() if p.is_dir()] == ["run"]


def test_a_failure_after_training_keeps_the_earlier_run(tmp_path, monkeypatch, earlier_run):
    """Even a failure at the very end (writing the summary) leaves the earlier run whole."""
    import ppl_vae.cli.train as train_cli

    def disk_full(*args, **kwargs):
        raise ppl_vae.OutputError("the disk is full")

    monkeypatch.setattr(train_cli, "write_json", disk_full)
    before = _snapshot(earlier_run)
    csv = _csv(tmp_path, _rows())
    code = main(["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8",
                 "--out", str(earlier_run), "--overwrite", "--no-progress"])  # fmt: skip
    assert code == 2
    assert _snapshot(earlier_run) == before


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    """--out pointing at the data's folder, or at the working directory, is refused even with
    --overwrite; the files in it are untouched."""
    folder = tmp_path / "mydata"
    folder.mkdir()
    csv = _csv(folder, _rows())
    (folder / "pair.py").write_text("# the user's pair\n")
    before = _snapshot(folder)
    code = main(["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8",
                 "--out", str(folder), "--overwrite", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a ppl-vae run" in err
    assert _snapshot(folder) == before
    run = tmp_path / "run"
    assert main(["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8",
                 "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    pair = str(Path(LG).resolve())
    monkeypatch.chdir(run)
    code = main(["train", *_model(pair), *_data(csv), "--steps", "2", "--batch-size", "8",
                 "--out", ".", "--overwrite", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "is the working directory" in err and (run / "summary.json").is_file()


def test_a_second_run_into_a_held_out_or_checkpoint_dir_is_refused(tmp_path, capsys):
    """While one run holds --out (or --checkpoint-dir), another is refused in one line; the
    lock is the OS's, so it ends with its holder."""
    from ppl_vae.utils.locks import exclusive, exclusive_directory

    csv = _csv(tmp_path, _rows())
    args = ["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8",
            "--no-progress"]  # fmt: skip
    out = tmp_path / "run"
    with exclusive(tmp_path / ".run.lock", RuntimeError):  # another run is writing OUT
        assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another ppl-vae run is writing" in err and not out.exists()
    with exclusive_directory(tmp_path / "ck", RuntimeError):
        assert main([*args, "--out", str(out), "--checkpoint-dir", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another run is using checkpoint_dir" in err
    assert main([*args, "--out", str(out), "--checkpoint-dir", str(tmp_path / "ck")]) == 0


def test_a_run_left_retired_by_a_killed_overwrite_is_put_back(tmp_path, capsys):
    """A kill between the two renames of a replacement (where the OS has no atomic exchange)
    leaves no OUT and the old run beside it: the next start puts it back, then refuses."""
    csv = _csv(tmp_path, _rows())
    args = ["train", *_model(LG), *_data(csv), "--steps", "2", "--batch-size", "8",
            "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    before = _snapshot(tmp_path / "run")
    (tmp_path / "run").rename(tmp_path / ".run.retired")
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _snapshot(tmp_path / "run") == before and not (tmp_path / ".run.retired").exists()


def test_exchange_swaps_two_directories_atomically(tmp_path):
    from ppl_vae.utils.locks import exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "old").write_text("old run")
    (tmp_path / "b" / "new").write_text("new run")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this OS has no renameat2(RENAME_EXCHANGE); runs fall back to two renames")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["new"]
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["old"]


def _one_line_error(capsys, argv) -> str:
    """Run the CLI expecting a user error: status 2, one line, no traceback; the line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err, err
    return err


def _object_npz(tmp: Path) -> Path:
    np.savez(tmp / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    return tmp / "o.npz"


PAIR_EXITS = "import sys\nsys.exit('this file is a script')\n"
PAIR_ARGV = "import argparse\nargparse.ArgumentParser().parse_args()\n"
PAIR_RAISES = "def make_pair(x_dim):\n    raise RuntimeError('no GPU here')\n"
PAIR_NEEDS = "def make_pair(x_dim, hidden):\n    pass\n"
PAIR_ANSI = "def make_pair(x_dim):\n    raise ValueError('\\x1b[31mred\\x1b[0m alert')\n"


@pytest.mark.parametrize("make, message", [
    (lambda t: ["--seed", str(2**32)], r"seed must be an integer in \[0, 2\*\*32\)"),
    (lambda t: ["--device", "tpu"], "unknown device 'tpu'"),
    (lambda t: ["--data", str(t)], "is a directory"),
    (lambda t: ["--data", str(_file(t, "r.csv", "a,b\n1,2\n3,4,5\n"))], "same number of fields"),
    (lambda t: ["--data", str(_file(t, "l.csv", b"a,b\n\xff\xfe,1\n"))], "not UTF-8"),
    (lambda t: ["--data", str(_file(t, "s.csv", "a;b;c\n1;2;3\n"))], "separate its fields by ';'"),
    (lambda t: ["--model", str(_file(t, "p.py", PAIR_EXITS))], "SystemExit: this file is a script"),
    # the file parses its own argv, not ppl-vae's, so it imports (and defines no pair)
    (lambda t: ["--model", str(_file(t, "p.py", PAIR_ARGV))], "defines no 'make_pair'"),
    (lambda t: ["--model", str(_file(t, "p.py", PAIR_RAISES))], "raised RuntimeError: no GPU"),
    (lambda t: ["--model", str(_file(t, "p.py", PAIR_NEEDS))], r"needs argument\(s\) \['hidden'\]"),
    (lambda t: ["--model", str(_file(t, "p.py", PAIR_ANSI))], "ValueError: red alert"),
    (lambda t: ["--clip-norm", "nan"], "clip_norm must be a finite number"),
    (lambda t: ["--data", str(_object_npz(t))], "Object arrays cannot be loaded.*numpy.savez"),
    (lambda t: ["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
     "no CUDA GPU is visible|GPU\\(s\\) visible"),
], ids=["seed", "device", "dir", "ragged", "utf8", "semicolon", "exit", "argv", "raises", "needs",
        "ansi", "clip", "object-npz", "cuda"])
def test_more_user_errors_are_one_line(tmp_path, capsys, earlier_run, make, message):
    """Each refused in one line with status 2, and the earlier run given with --overwrite is
    byte for byte intact."""
    before = _snapshot(earlier_run)
    argv = ["train", "--model", LG, "--data", str(_csv(tmp_path, _rows())), "--steps", "2",
            "--batch-size", "8", "--no-progress", "--out", str(earlier_run), "--overwrite",
            *make(tmp_path)]
    assert re.search(message, _one_line_error(capsys, argv))
    assert _snapshot(earlier_run) == before


def test_api_refuses_non_integer_counts_strings_and_data_that_requires_grad():
    model, guide = ppl_vae.load_pair(LG, x_dim=5)
    x = torch.from_numpy(_rows())
    for options, message in (({"num_steps": 3.0}, "num_steps must be a positive integer"),
                             ({"lr": "0.01"}, "lr must be a finite number"),
                             ({"seed": -1}, "seed must be an integer")):
        with pytest.raises(ppl_vae.PplVaeError, match=message):
            ppl_vae.fit(model, guide, x, batch_size=8, **options)
    with pytest.raises(ppl_vae.DataError, match="requires grad; pass x.detach()"):
        ppl_vae.fit(model, guide, x.requires_grad_(), num_steps=1, batch_size=8)


def test_a_crafted_pickle_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "params.pt"
    torch.save({"format": "ppl_vae.params/1", "evil": pd.Timestamp(0)}, path)
    with pytest.raises(ppl_vae.CheckpointError) as raised:
        ppl_vae.load_params(path)
    assert "weights_only" not in str(raised.value) and "nothing in it ran" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_one_dimensional_data_trains_and_writes_its_run(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=40).astype(np.float32))
    (tmp_path / "p.py").write_text(
        "import pyro, pyro.distributions as dist, torch\nimport ppl_vae\n"
        "def model(x):\n    m = pyro.param('m', torch.tensor(0.0))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        pyro.sample('obs', dist.Normal(m, 1.0), obs=x)\n"
        "def make_pair():\n    return ppl_vae.ModelGuidePair(model, lambda x: None)\n"
    )
    assert main(["train", "--model", str(tmp_path / "p.py"), "--data", str(tmp_path / "x.npy"),
                 "--steps", "3", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["x_dim"] == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_termination_signal_stops_a_run_like_ctrl_c(tmp_path, signum):
    """A real `ppl-vae train` process sent SIGTERM (SIGHUP) mid-training: exit 143 (129), one
    line, the checkpoint kept, no output or staging directory left."""
    csv = _csv(tmp_path, _rows())
    out, ck = tmp_path / "run", tmp_path / "ck"
    process = subprocess.Popen(
        [sys.executable, "-m", "ppl_vae", "train", "--model", LG, "--data", str(csv),
         "--steps", "100000", "--batch-size", "8", "--no-progress", "--out", str(out),
         "--checkpoint-dir", str(ck), "--checkpoint-every", "5"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (ck / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"ppl-vae: stopped by {signal.Signals(signum).name}"]
    assert (ck / "checkpoint.pt").is_file() and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []


def _train_process(csv, out, *extra, steps="100000"):
    return subprocess.Popen(
        [sys.executable, "-m", "ppl_vae", "train", "--model", LG, "--data", str(csv),
         "--steps", steps, "--batch-size", "8", "--no-progress", "--out", str(out), *extra],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.parametrize("shared", ["out", "checkpoint-dir"])
def test_two_real_processes_racing_for_one_location_one_is_refused(tmp_path, shared):
    csv = _csv(tmp_path, _rows())
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "5"]
    first = _train_process(csv, tmp_path / "run", *ck)
    _wait_for(tmp_path / "ck" / FILENAME)  # the first one is training, holding both
    out = tmp_path / ("run" if shared == "out" else "other")
    # sharing the checkpoint directory: resuming the run that is still writing it
    resume = [*ck, "--resume"] if shared == "checkpoint-dir" else []
    second = _train_process(csv, out, *resume, steps="100000")
    _, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert second.returncode == 2 and err.count("\n") == 1, err
    expected = "another ppl-vae run is writing" if shared == "out" else "another run is using"
    assert expected in err


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    """A small tmpfs mounted at ``where`` for the block; the test is skipped where none can
    be mounted (no root, a container without mounts)."""
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_nothing_half_written(
    tmp_path, capsys
):
    """A 1 MiB tmpfs as checkpoint_dir, filled so that a checkpoint does not fit: torch's
    writer fails (RuntimeError, not OSError); one line, exit 2, no half-written file, no run
    (skipped where no tmpfs can be mounted)."""
    ck = tmp_path / "ck"
    with _tmpfs(ck, "size=1m"):
        x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        args = ["train", "--model", "models/gaussian_vae.py", "--data", str(tmp_path / "x.npy"),
                "--steps", "6", "--batch-size", "32", "--no-progress", "--out",
                str(tmp_path / "run"), "--checkpoint-dir", str(ck), "--checkpoint-every", "3"]
        filler = ck / "filler"
        filler.write_bytes(b"\0" * (1024 * 1024 - 4096 * 64))  # leave less than a checkpoint
        err = _one_line_error(capsys, args)
        assert "writing the checkpoint of step 3" in err and "free disk space" in err
        assert not (tmp_path / "run").exists()
        assert [p.name for p in ck.iterdir()] == ["filler"]


def test_a_nan_parameter_is_not_blamed_on_the_data_width(tmp_path):
    model, guide = ppl_vae.load_pair(LG, x_dim=5)
    x = torch.from_numpy(_rows())
    ppl_vae.fit(model, guide, x, num_steps=1, batch_size=8)
    with torch.no_grad():
        pyro.get_param_store()["b"].unconstrained().fill_(float("nan"))
    with pytest.raises(ppl_vae.PairError, match="invalid parameter") as raised:
        ppl_vae.evaluate(model, guide, x)
    assert "width" not in str(raised.value)


def test_a_checkpoint_with_fields_of_the_wrong_type_is_refused(tmp_path):
    from ppl_vae.training.checkpoint import read_checkpoint
    from ppl_vae.utils.params import write_tensors

    model, guide = ppl_vae.load_pair(LG, x_dim=5)
    x = torch.from_numpy(_rows())
    options = dict(num_steps=4, batch_size=8, checkpoint_dir=tmp_path, checkpoint_every=2)
    ppl_vae.fit(model, guide, x, **options)
    payload = read_checkpoint(tmp_path / FILENAME)
    payload["rng"] = {"torch": "not a state"}
    write_tensors(tmp_path / FILENAME, payload)
    pyro.clear_param_store()
    model, guide = ppl_vae.load_pair(LG, x_dim=5)
    with pytest.raises(ppl_vae.CheckpointError, match="fields of the wrong type"):
        ppl_vae.fit(model, guide, x, **options | {"num_steps": 6}, resume=True)
    with pytest.raises(ppl_vae.CheckpointError, match="is a directory"):
        ppl_vae.load_params(tmp_path)


def test_a_read_only_out_is_one_line(tmp_path, capsys):
    """--out inside a read-only file system (root ignores permission bits, so a read-only
    tmpfs stands in; skipped where none can be mounted)."""
    place = tmp_path / "ro"
    with _tmpfs(place, "ro,size=64k"):
        argv = ["train", "--model", LG, "--data", str(_csv(tmp_path, _rows())), "--steps", "2",
                "--batch-size", "8", "--no-progress", "--out", str(place / "run")]
        assert "Read-only file system" in _one_line_error(capsys, argv)


def test_the_public_names_are_the_lazily_imported_ones():
    assert sorted(ppl_vae.__all__, key=str.lower) == sorted(ppl_vae._HOME, key=str.lower)
    assert all(getattr(ppl_vae, name) is not None for name in ppl_vae.__all__)


def test_a_second_ctrl_c_while_the_first_unwinds_prints_one_line(monkeypatch, capsys):
    import ppl_vae.cli

    def unwinding(argv):
        try:
            raise KeyboardInterrupt  # the first Ctrl-C
        finally:
            raise KeyboardInterrupt  # a second one while cleaning up

    monkeypatch.setattr(ppl_vae.cli, "_main", unwinding)
    assert ppl_vae.cli.main(["train"]) == 130
    assert capsys.readouterr().err == "ppl-vae: interrupted\n"


def test_ctrl_c_while_the_command_line_loads_prints_one_line(monkeypatch, capsys):
    import builtins

    from ppl_vae.__main__ import main as entry

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "cli" or name.endswith(".cli"):
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        assert entry() == 130
    finally:  # the entry point leaves the stop signals ignored, as the process is ending
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS)
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert capsys.readouterr().err == "ppl-vae: interrupted\n"


# The reliability tail: hostile inputs that each end in one line on the command line (exit 2)
# and in a PplVaeError from Python, naming the cause and the fix, with nothing written or lost.


def _train(tmp: Path, *extra: str, steps: str = "2") -> list[str]:
    return ["train", "--data", str(_csv(tmp, _rows())), "--steps", steps, "--batch-size", "8",
            "--no-progress", *extra]


_LIKELIHOOD_FOR_64 = """
import pyro, pyro.distributions as dist, torch
from ppl_vae import ModelGuidePair

def make_pair(x_dim):
    encoder, decoder = torch.nn.Linear(x_dim, 2), torch.nn.Linear(2, 64)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 1.0).to_event(1))

    return ModelGuidePair(model, guide, name="decoder_for_64")
"""
LIKELIHOOD_WIDTH = (r"the data has 5 columns but the distribution of the model's site 'x' has "
                    r"shape \(8, 64\): the pair was built for 64 columns; build it for 5 \(its "
                    r"x_dim option, e.g. make_pair\(x_dim=5\)\) or give it the data of 64 columns")


@pytest.mark.parametrize("validated", [True, False], ids=["validated", "unvalidated"])
def test_a_likelihood_of_another_width_is_refused_before_the_first_step(tmp_path, validated):
    """The guide takes the data's width, the likelihood is built for 64 columns: refused with
    both widths and the fix before any step runs or any checkpoint is written, with or without
    Pyro's validation."""
    pyro.enable_validation(validated)
    steps = []
    with pytest.raises(ppl_vae.PairError, match=LIKELIHOOD_WIDTH):
        _fit(_rows(), _load_pair_file(tmp_path, "w.py", _LIKELIHOOD_FOR_64),
             callback=steps.append, checkpoint_dir=tmp_path / "ck")
    assert steps == [] and list((tmp_path / "ck").iterdir()) == []


def test_evaluation_refuses_a_likelihood_of_another_width_as_fit_does(tmp_path):
    """evaluate, log_likelihood and vi_diagnostics check the first batch's log-densities too,
    instead of a raw ValueError from inside Pyro's scoring."""
    pair = _load_pair_file(tmp_path, "w.py", _LIKELIHOOD_FOR_64)
    x = torch.as_tensor(_rows()[:8])
    for call in (lambda: ppl_vae.evaluate(*pair, x),
                 lambda: ppl_vae.log_likelihood(*pair, x, num_samples=10),
                 lambda: ppl_vae.vi_diagnostics(*pair, x, num_samples=10)):
        with pytest.raises(ppl_vae.PairError, match=LIKELIHOOD_WIDTH):
            call()


@pytest.mark.parametrize("built, given", [(64, 32), (32, 64)])
def test_a_network_of_another_width_names_both_widths_and_where(built, given):
    """bernoulli_vae built for one width and given data of another: torch's matrix-product
    message recognised, the line of the pair file that ran the layer named."""
    model, guide = ppl_vae.load_pair("models/bernoulli_vae.py", x_dim=built)
    x = (torch.rand(20, given) > 0.5).float()
    with pytest.raises(ppl_vae.PairError) as raised:
        ppl_vae.fit(model, guide, x, num_steps=2)
    message = str(raised.value)
    assert re.search(r"failed at models/bernoulli_vae.py:\d+ in guide", message), message
    assert (f"inputs of width {given}, the data's number of columns, with weights for width "
            f"{built}: the pair was built for {built} columns; build it for {given} (its x_dim "
            f"option, e.g. make_pair(x_dim={given}))") in message
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_an_unrecognised_failure_of_the_pair_names_where_it_was_raised(tmp_path):
    pair = _load_pair_file(tmp_path, "v.py", _GUIDE_MISSES_Z.replace(
        "lambda x: None", "lambda x: x.view(-1, 7)"))
    with pytest.raises(ppl_vae.PairError, match=r"failed at .*v.py:\d+ in <lambda> \(RuntimeError: "
                       r"shape '\[-1, 7\]' is invalid .*check that the data's width"):
        _fit(_rows(), pair)


def test_the_command_line_refuses_a_likelihood_of_another_width(tmp_path, capsys, earlier_run):
    before = _snapshot(earlier_run)
    pair = _file(tmp_path, "w.py", _LIKELIHOOD_FOR_64)
    err = _one_line_error(capsys, _train(tmp_path, "--model", str(pair), "--out",
                                         str(earlier_run), "--overwrite"))
    assert re.search(LIKELIHOOD_WIDTH, err), err
    assert _snapshot(earlier_run) == before


_RAISES_AT_STEP_4 = """
from models import linear_gaussian
from ppl_vae import ModelGuidePair

calls = 0


def check(x):
    global calls
    calls += 1
    if calls == 5:  # the first call is fit's probe of the pair, then one per step
        raise ValueError("boom")


def make_pair(x_dim):
    model, guide = linear_gaussian.make_pair(x_dim=x_dim)

    def my_guide(x):
        check(x)
        guide(x)

    return ModelGuidePair(model, my_guide, name="raises")
"""
def _explode(x):
    if _explode.armed:
        raise _explode.error("boom")


@pytest.mark.parametrize("error", [ValueError, ZeroDivisionError])
def test_the_pairs_own_exception_in_a_step_names_the_step_and_its_frames(tmp_path, error):
    """The guide raises during step 4 (and on every call after it): a PairError naming the
    step and the frames of the guide's file, the user's exception as its cause; nothing
    applied: the parameters are the ones of the checkpoint of step 3, which is kept."""
    model, inner = linear_gaussian.make_pair(x_dim=5)
    _explode.armed, _explode.error = False, error

    def guide(x):
        _explode(x)
        inner(x)

    def arm(info):
        _explode.armed = info.step == 3

    with pytest.raises(ppl_vae.PairError) as raised:
        _fit(_rows(), (model, guide), num_steps=10, checkpoint_dir=tmp_path, checkpoint_every=1,
             callback=arm)
    message = str(raised.value)
    assert re.fullmatch(
        rf"training stopped at step 4: {error.__name__}: boom \(raised at "
        r"tests/test_errors.py:\d+ in _explode, called from tests/test_errors.py:\d+ in guide\); "
        r"nothing was applied: the "
        r"parameters keep their values from the last good step; the last good checkpoint "
        r"\(step 3\) is kept in '.*checkpoint.pt'", message), message
    assert type(raised.value.__cause__) is error and str(raised.value.__cause__) == "boom"
    from ppl_vae.training.checkpoint import read_checkpoint

    saved = read_checkpoint(tmp_path / FILENAME)
    assert saved["step"] == 3
    live = dict(pyro.get_param_store().named_parameters())
    assert all(torch.equal(live[n].detach(), v) for n, v in saved["params"]["params"].items())


def test_the_command_line_names_the_step_and_frames_of_the_pairs_exception(
    tmp_path, capsys, earlier_run
):
    before = _snapshot(earlier_run)
    pair, ck = _file(tmp_path, "raises.py", _RAISES_AT_STEP_4), tmp_path / "ck"
    args = ["--model", str(pair), "--out", str(earlier_run), "--overwrite", "--checkpoint-dir",
            str(ck), "--checkpoint-every", "1"]
    err = _one_line_error(capsys, _train(tmp_path, *args, steps="10"))
    assert re.search(r"training stopped at step 4: ValueError: boom \(raised at .*raises.py:\d+ "
                     r"in check, called from .*raises.py:\d+ in my_guide\); nothing was applied",
                     err), err
    assert "the last good checkpoint (step 3) is kept" in err
    from ppl_vae.training.checkpoint import read_checkpoint

    assert read_checkpoint(ck / FILENAME)["step"] == 3
    assert _snapshot(earlier_run) == before


def _torch_save_on_a_full_disk(kind: str):
    """A stand-in for torch.save on a full disk: the file's write raises ENOSPC, directly
    (``oserror``) or after some bytes, which torch's zip writer turns into its RuntimeError
    ("unexpected pos", raised while handling the OSError)."""
    real = torch.save

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if kind == "oserror" or self.written + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

    def save(obj, f, *args, **kwargs):
        return real(obj, Full(f), *args, **kwargs)

    return save


@pytest.mark.parametrize("kind", ["oserror", "torch_runtime_error"])
@pytest.mark.parametrize("earlier", [False, True], ids=["new_out", "overwrite"])
def test_a_full_disk_while_writing_out_is_one_line_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, kind, earlier
):
    """params.pt does not fit: one line naming the full disk and the fix; a new --out does not
    exist afterwards, an earlier one given with --overwrite is byte for byte what it was, and
    no staging directory or lock file is left beside it."""
    out = tmp_path / "runs" / "run"
    args = _train(tmp_path, "--model", LG, "--out", str(out))
    if earlier:
        assert main(args) == 0
        args.append("--overwrite")
    before = _snapshot(out) if earlier else None
    if kind == "torch_runtime_error":  # what torch raises is the RuntimeError
        with pytest.raises(RuntimeError, match="unexpected pos"):
            _torch_save_on_a_full_disk(kind)({"a": torch.zeros(1000)}, io.BytesIO())
    monkeypatch.setattr(torch, "save", _torch_save_on_a_full_disk(kind))
    kept = " (the earlier run in it is kept)" if earlier else ""
    assert _one_line_error(capsys, args) == (
        f"ppl-vae: error: the disk is full: writing 'params.pt' for '{out.resolve()}' failed (No "
        f"space left on device); nothing was written to it{kept}; free disk space, or choose "
        "another --out on a disk with room\n")
    assert [p.name for p in out.parent.iterdir()] == (["run"] if earlier else [])
    if earlier:
        assert _snapshot(out) == before


def test_a_full_disk_under_a_new_out_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """A real full disk (a 1 MiB tmpfs, skipped where none can be mounted): torch's writer fails
    on params.pt; one line, exit 2, nothing left on it but the filler."""
    disk = tmp_path / "disk"
    with _tmpfs(disk, "size=1m"):
        np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(64, 64)).astype("f4"))
        (disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 4096 * 16))
        err = _one_line_error(capsys, [
            "train", "--model", "models/gaussian_vae.py", "--data", str(tmp_path / "x.npy"),
            "--steps", "2", "--batch-size", "32", "--no-progress", "--out", str(disk / "run")])
        assert "the disk is full: writing 'params.pt'" in err and "free disk space" in err
        assert [p.name for p in disk.iterdir()] == ["filler"]


def test_an_interrupt_inside_torchs_writer_is_an_interrupt_not_a_write_error(tmp_path):
    """torch's zip writer turns a KeyboardInterrupt raised in the file's write (a signal while a
    checkpoint is written) into a RuntimeError; the write raises the interrupt itself, so that
    the run stops as interrupted, and leaves no temporary file."""
    from ppl_vae.utils.files import atomic_write

    def interrupted(f):
        class Write:
            def write(self, data):
                raise KeyboardInterrupt

        torch.save({"a": torch.zeros(1000)}, Write())

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "checkpoint.pt", interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_pressed_again_and_again_prints_one_line(tmp_path, signum):
    """A real `ppl-vae train` sent 30 signals 3 ms apart once it checkpoints: the first stops it,
    the others are ignored while it cleans up and exits: one line, exit 130 (143), no
    traceback, the checkpoint loadable, no output or staging directory left."""
    from ppl_vae.training.checkpoint import read_checkpoint

    out, ck = tmp_path / "run", tmp_path / "ck"
    process = _train_process(_csv(tmp_path, _rows()), out, "--checkpoint-dir", str(ck),
                             "--checkpoint-every", "5")
    _wait_for(ck / FILENAME)
    for _ in range(30):
        if process.poll() is not None:
            break
        process.send_signal(signum)
        time.sleep(0.003)
    _, err = process.communicate(timeout=60)
    line = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert process.returncode == 128 + signum and err.splitlines() == [f"ppl-vae: {line}"], err
    assert read_checkpoint(ck / FILENAME)["step"] % 5 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "x.csv"]


_NAN_MODEL = """
import pyro, pyro.distributions as dist, torch
from ppl_vae import ModelGuidePair

def model(x):
    loc = pyro.param("loc", torch.zeros(x.shape[1]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc.log() * 0 - loc.log(), 1.0).to_event(1), obs=x)

def make_pair():
    return ModelGuidePair(model, lambda x: None, name="nan")
"""


def _float64_pair():
    def model(x):
        loc = pyro.param("loc", torch.zeros(x.shape[1], dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    return model, lambda x: None


@pytest.mark.parametrize("dtype, value", [(np.float64, 1e300), (np.float64, 1e160),
                                          (np.float32, 1e20)])
def test_data_whose_square_overflows_names_the_step_the_entry_and_the_fix(dtype, value):
    rows = _with(0.0, 0, 0).astype(dtype)
    rows[7, 3] = value
    data = torch.from_numpy(rows)
    pair = _float64_pair() if dtype == np.float64 else linear_gaussian.make_pair(x_dim=5)
    with pytest.raises(ppl_vae.NumericalError) as raised:
        _fit(data, pair, batch_size=40)
    name = np.dtype(dtype).name
    assert re.fullmatch(
        rf"training stopped at step 1: non-finite loss \(non-finite log-density at site\(s\) "
        rf"\['x'\]\); the data holds {value:g} at row 7, column 3 \(from 0\), whose square "
        rf"overflows {name}; the parameters keep the values they started from; rescale the data "
        r"\(e.g. standardize each column\)", str(raised.value).replace("+", "")), raised.value
    assert raised.value.history.empty


@pytest.mark.parametrize("validated", [True, False], ids=["validated", "unvalidated"])
def test_a_nan_from_the_first_step_names_the_step_and_not_lr(tmp_path, validated):
    pyro.enable_validation(validated)
    pair = ppl_vae.load_pair(str(_file(tmp_path, "nan.py", _NAN_MODEL)))
    with pytest.raises(ppl_vae.NumericalError) as raised:
        _fit(_rows(), pair)
    problem = (r"a distribution's parameter is invalid \(Expected parameter loc .*\) on the first "
               r"minibatch" if validated else
               r"non-finite loss \(non-finite log-density at site\(s\) \['x'\]\); the parameters "
               r"keep the values they started from")
    assert re.fullmatch(
        rf"training stopped at step 1: {problem}; no update had been applied, so neither lr nor "
        r"clip_norm is the cause: the pair gives it with the parameters it starts from; check "
        r"their initial values, what its networks compute, and the data's scale",
        str(raised.value)), raised.value
    assert raised.value.history.empty


def test_the_command_line_names_the_first_step_of_a_nan(tmp_path, capsys, earlier_run):
    before = _snapshot(earlier_run)
    pair = _file(tmp_path, "nan.py", _NAN_MODEL)
    err = _one_line_error(capsys, _train(tmp_path, "--model", str(pair), "--out",
                                         str(earlier_run), "--overwrite"))
    assert "error: training stopped at step 1: a distribution's parameter is invalid" in err
    assert "neither lr nor clip_norm is the cause" in err
    assert _snapshot(earlier_run) == before
