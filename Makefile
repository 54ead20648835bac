# Two commands for a newcomer: `make demo` (the whole pipeline on the embedded synthetic data,
# CPU, minutes) and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: venv demo study test clean-demo

# uv installs in one step what plain pip needs two for: --overrides lifts facenet-pytorch's
# torch<2.3 / numpy<2 / Pillow caps (its MTCNN runs on current versions).
$(VENV)/.installed: requirements.txt overrides.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/python -m uv pip install -q --compile-bytecode --python $(BIN)/python -r requirements.txt --overrides overrides.txt
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python -m facegan.pipeline --check
	dvc config --local core.analytics false && dvc config --local core.check_update false
	$(BIN)/python -m compileall -q facegan models stages   # bytecode once, not in every stage's process
	$(BIN)/python -m facegan.parallel_repro --jobs 2 --set profile=demo
	dvc exp run -S profile=demo   # records the demo as a DVC experiment: every stage is up to date by now
	@echo "report: reports/comparison.md   (params.yaml now says profile: demo; 'git checkout params.yaml' restores the study)"

study: venv
	$(BIN)/python -m facegan.pipeline --check
	dvc repro

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests
