# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv by itself.
# `make test` runs the whole suite, slow tests included; `make test-fast` skips those.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ppl-vae compare --model models/bernoulli_vae.py --data digits --steps 3000 --lr 3e-3 \
		--seeds 0 1 2 --estimators sampled analytic --out runs/demo --overwrite
	@echo "open runs/demo/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info
