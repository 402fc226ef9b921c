# addm-workbench: the two commands of the README, each complete on a fresh machine.
#   make demo   create .venv, install, run the demo pipeline (params/demo.yaml) into outputs/demo/, then train the
#               DDPM baseline (params/ddpm.yaml layered on the demo set) into the same run folder
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

demo: setup
	$(PY) -m addmlib.pipeline params/demo.yaml
	$(PY) -m addmlib.pipeline params/demo.yaml params/ddpm.yaml --run-dir outputs/demo --notebooks 02_train

ci-params: setup
	$(PY) -m addmlib.pipeline params/ci.yaml
	$(PY) -m addmlib.pipeline params/ci.yaml params/ddpm.yaml --run-dir outputs/ci --notebooks 02_train

test: setup
	$(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
