# The two quick-start commands: `make demo` and `make test` (see README.md).
PY := .venv/bin/python

.PHONY: setup demo test bench

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m theory.synthetic --out runs/synthetic

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) bench/spectral.py
