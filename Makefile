# The two quick-start commands: `make demo` and `make test` (see README.md).
PY := .venv/bin/python
# Torch and Numba each run an OpenMP pool; passive waiting keeps them from spinning against each other.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test bench

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m simulate study --out runs/study

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/spectral.py
	$(PY) bench/structure.py
	$(PY) bench/mlr.py
	$(PY) bench/mlr_closed_forms.py
	$(PY) bench/products.py --threads 1
	$(PY) bench/topk.py --threads 1
