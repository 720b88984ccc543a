# make study : set up .venv, run every study configuration on the embedded default, then build
#              the HTML report outputs/index.html
# make test  : set up .venv, lint, run the unit tests, the doctests and the notebook smoke runs
#              (PYTEST_WORKERS=1 runs them in one process)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
JOBS   ?= 1
PYTEST_WORKERS ?= 2

.PHONY: setup study test lint unit smoke bench clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mibench)" > /dev/null
	touch $@

study: setup
	$(BIN)/mibench run-all --jobs $(JOBS)
	$(BIN)/mibench report

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not notebook" tests
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --doctest-modules mibench_lib

smoke: setup
	$(BIN)/pytest -q -m notebook

test: lint
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=25 tests
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --doctest-modules mibench_lib

bench: setup
	$(BIN)/python benchmarks/bench_study.py

clean-outputs:
	rm -rf outputs/*/
