# Every target sets up what it needs from a fresh clone: a .venv with the package and its dev extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench image-constraints clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ktp demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks

# The exact runtime dependency versions the Dockerfile installs (after changing a dependency).
image-constraints: $(STAMP)
	$(PY) scripts/image_constraints.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info
