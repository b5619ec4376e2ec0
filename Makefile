# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv by itself.
# `make test` runs the whole suite, slow tests included; `make test-fast` skips those. Both run
# one pytest worker per core (pytest-xdist): each worker takes a run of consecutive tests (so a
# file's module fixtures are made once) and an idle one takes over the end of a busy one's run.
# PYTEST_WORKERS=0 runs everything in one process; PYTEST_ARGS adds options (--durations=20).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench bench-peers clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ppl-vae compare --model models/bernoulli_vae.py --data digits --steps 3000 --lr 3e-3 \
		--seeds 0 1 2 --estimators sampled analytic --out runs/demo --overwrite
	@echo "open runs/demo/report.md"

PYTEST_WORKERS ?= auto
PYTEST_ARGS ?=
PYTEST := $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# the training-steps table with NumPyro beside the others: installs the optional `bench` extra
# (numpyro, jax) into .venv; without it `make bench` skips the NumPyro contender with a note
bench-peers: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python -m benchmarks.run --only steps scaling

clean:
	rm -rf $(VENV) build *.egg-info

# Python >= 3.12 installs arviz 1.x (DataTree, arviz_stats, arviz_plots) instead of 0.2x:
# `make test-py312` builds .venv312 and runs the whole suite there, the tests of the other
# generation's API skipping. There is no local CPU torch wheel for 3.12, so pip fetches
# torch==2.13.0 from PyPI — the CUDA build, about 4 GB, which runs on CPU; constraints.txt
# (the 3.11 CPU wheel) is not used. The same torch version keeps seeded numbers comparable.
PYTHON312 ?= python3.12
VENV312 := .venv312
STAMP312 := $(VENV312)/.installed

.PHONY: test-py312

$(STAMP312): pyproject.toml
	$(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/pip install --quiet --upgrade pip
	$(VENV312)/bin/pip install --quiet 'torch==2.13.0' -e '.[dev]'
	touch $(STAMP312)

# docs/diagnostics.md's walk-through is written in arviz 0.2x calls (az.plot_ppc, ...), so its
# page test skips there; the page's arviz 1.x section runs in tests/test_arviz_compat.py.
test-py312: $(STAMP312)
	$(VENV312)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)
