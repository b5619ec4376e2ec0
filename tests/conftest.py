"""Shared test set-up: a clean Pyro param store and a fixed seed for every test.

Torch runs on one thread, in this process and in the ones the tests start (``OMP_NUM_THREADS``
is inherited): the tests' tensors are small, ``make test`` runs one pytest worker per core
(pytest-xdist), and torch's thread pool on contended cores spins instead of working.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here or in children

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import importlib  # noqa: E402
from importlib.metadata import version  # noqa: E402

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Each test starts from an empty param store, seed 0, and Pyro's validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny tensors (the two-thread pool costs
    milliseconds per small op); ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pv():
    """ppl_vae, imported per test so that the Pyro-only tests of a module run whatever its
    state."""
    return importlib.import_module("ppl_vae")


@pytest.fixture(scope="session")
def digits():
    """(train, test) of the embedded digits scaled to [0, 1], the fixed split."""
    from ppl_vae import load_data

    return load_data("digits", split="train"), load_data("digits", split="test")


@pytest.fixture(scope="session")
def binary_digits(digits):
    train, test = digits
    return (train > 0.5).float(), (test > 0.5).float()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ARVIZ = version("arviz")  # tests of one generation's own API are skipped under the other
requires_arviz0 = pytest.mark.skipif(
    not ARVIZ.startswith("0."), reason=f"needs the arviz 0.2x API; arviz {ARVIZ} is installed"
)
requires_arviz1 = pytest.mark.skipif(
    ARVIZ.startswith("0."),
    reason=f"needs the arviz >= 1.0 API (Python >= 3.12, make test-py312); arviz {ARVIZ} here",
)
