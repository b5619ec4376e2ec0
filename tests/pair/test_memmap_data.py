"""Memory-mapped data: validation and minibatch reads return the file's values and leave the
mapped pages out of the process's resident set (peak RSS is measured by ``make bench``)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import constraints

from ppl_vae.pair.data import check_support, load_data, take, validate_data

STATUS = Path("/proc/self/status")


def resident_mib() -> float:
    line = next(x for x in STATUS.read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture
def big_file(tmp_path):
    rows, cols = 20_000, 400  # 31 MiB of float32 {0, 1}
    path = tmp_path / "x.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    generator = np.random.default_rng(0)
    for start in range(0, rows, 10_000):
        array[start : start + 10_000] = generator.random((10_000, cols)) < 0.5
    array.flush()
    del array
    return path


@pytest.mark.skipif(not STATUS.exists(), reason="reads VmRSS from /proc")
def test_validation_does_not_keep_the_file_resident(big_file):
    before = resident_mib()
    data = load_data(big_file)  # memory-mapped, and validated (one full read)
    assert isinstance(data, np.memmap)
    validate_data(data)
    check_support(data, "x", constraints.boolean, torch.device("cpu"))
    grown = resident_mib() - before
    assert grown < 12, f"resident set grew by {grown:.0f} MiB reading a 31 MiB file"


def test_reads_by_index_return_the_file_values(big_file):
    data = load_data(big_file)
    reference = np.load(big_file)  # read into memory
    index = torch.tensor([19_999, 0, 12_345, 12_345, 7])
    for _ in range(2):  # the second read comes back after the pages were dropped
        torch.testing.assert_close(take(data, index), torch.from_numpy(reference[index.numpy()]))
    writable = np.load(big_file, mmap_mode="r+")
    writable[5000, 7] = 0.5  # in the second chunk that validation reads
    writable.flush()
    del writable
    with pytest.raises(ValueError, match="0.5 at row 5000, column 7 "):
        check_support(load_data(big_file), "x", constraints.boolean, torch.device("cpu"))
