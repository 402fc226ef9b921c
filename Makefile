# addm-workbench: the two commands of the README, each complete on a fresh machine.
#   make demo   create .venv, install, run the demo pipeline (params/demo.yaml) into outputs/demo/: method checks,
#               data, ADDM, the DDPM baseline (params/ddpm.yaml layered on the demo set), evaluation
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test ci-params clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

# The demo: method checks, data, ADDM training, DDPM training (params/ddpm.yaml layered on the demo set), evaluation.
demo: setup
	$(PY) -m addmlib.pipeline params/demo.yaml --notebooks 00_method,01_prepare_data,02_train
	$(PY) -m addmlib.pipeline params/demo.yaml params/ddpm.yaml --run-dir outputs/demo --notebooks 02_train
	$(PY) -m addmlib.pipeline params/demo.yaml --notebooks 03_evaluate

ci-params: setup
	$(PY) -m addmlib.pipeline params/ci.yaml

test: setup
	$(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
