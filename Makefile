# make demo: set up and run the whole pipeline on the embedded street scenes (prepare .. evaluate)
# make test: set up and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo pipeline test test-fast lint mutants bench clean

$(VENV)/.installed: pyproject.toml tools/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c tools/constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m sdm.cli.pipeline conf/pipeline/demo.yaml

# make pipeline CONFIG=conf/pipeline/sidewalk.yaml [ARGS="root=... train.trainer.max_steps=..."]
pipeline: setup
	$(PY) -m sdm.cli.pipeline $(CONFIG) $(ARGS)

test: setup
	$(PY) -m pytest -q --durations=20

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# make mutants [PKG="models diffusion"] [CHANGED=main]: mutation testing, see docs/contributing.md
mutants: setup
	$(PY) tools/mutants.py $(PKG) $(if $(CHANGED),--changed $(CHANGED))

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mkdocs build --strict -q -d /tmp/sdm-site

clean:
	rm -rf runs multirun outputs .pytest_cache
