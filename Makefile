# addm-workbench: the two commands of the README, each complete on a fresh machine.
#   make demo   create .venv, install the core (pip install -e .), run the demo pipeline (params/demo.yaml) into
#               outputs/demo/: method checks, data, ADDM, the DDPM baseline (params/ddpm.yaml layered on the demo
#               set), evaluation, browsing
#   make test   create .venv, install everything (pip install -e '.[dev]'), install Debian's chromium and npm if
#               missing (browser and site tests), run the tests
# and three more, each installing the extra it needs on top of the core:
#   make ablation-demo  [sweep]: notebooks/04_ablation.ipynb at laptop scale
#   make bench          [bench]: notebooks/06_benchmark.ipynb (diffusers' U-Net as the peer)
#   make site           [site]: the tutorial site from the demo run's executed notebooks into outputs/site/
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# one stamp per install set: .installed (the core), .installed-<extra> (the core and that extra)
STAMP := $(VENV)/.installed

.PHONY: setup demo test ci-params ablation-demo levers-demo levers-tune6 bench site test-tools clean-venv

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

# an extra set (sweep, bench, site, dev) installs the core too, so it renews the core's stamp as well
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[$*]'
	touch $@ $(STAMP)

# The demo: method checks, data, ADDM training, DDPM training (params/ddpm.yaml layered on the demo set), evaluation.
demo: $(STAMP)
	$(PY) -m addmlib.pipeline params/demo.yaml --notebooks 00_method,01_prepare_data,02_train
	$(PY) -m addmlib.pipeline params/demo.yaml params/ddpm.yaml --run-dir outputs/demo --notebooks 02_train
	$(PY) -m addmlib.pipeline params/demo.yaml --notebooks 03_evaluate,05_browse

# The ablation over lambda x T x seeds (notebooks/04_ablation.ipynb) at laptop scale, about 30 minutes on 2 cores
# with native bf16.
# Rerun to resume: finished cells are skipped. A sweep runs without the demo: it prepares its own data.
ABLATION_DIR := $(CURDIR)/outputs/ablation_demo
ablation-demo: $(VENV)/.installed-sweep
	mkdir -p $(ABLATION_DIR)
	$(PY) -m papermill notebooks/04_ablation.ipynb $(ABLATION_DIR)/04_ablation.ipynb -f params/ablation_demo.yaml \
		-p run_dir $(ABLATION_DIR) --cwd notebooks

# The benchmark (notebooks/06_benchmark.ipynb): ours vs diffusers, peak fraction, volume scoring, quality vs steps.
# Uses the demo run's models for the quality-cost curve (make demo first); about 25 minutes on 2 quiet cores.
# The lever campaign (notebooks/07_levers.ipynb) on the tuning split: variants x seeds x scorings beside the floors and
# the DAE. Resumable (finished models and scorings are reused); the first full run takes a few hours on 2 cores.
LEVERS_DIR := $(CURDIR)/outputs/levers
levers-demo: $(STAMP)
	$(PY) -m addmlib.pipeline params/levers_demo.yaml --notebooks 07_levers --run-dir $(LEVERS_DIR) --cell-timeout 86400

# The campaign's models scored on six lesion draws of the tuning host (params/campaigns/levers_tune6.yaml; after levers-demo,
# whose models it reads; scoring only, about an hour on 2 cores). make levers-demo then shows it beside its table.
levers-tune6: $(STAMP)
	$(PY) -m addmlib.levers params/campaigns/levers_tune6.yaml --run-dir $(CURDIR)/outputs/levers-tune6

BENCH_DIR := $(CURDIR)/outputs/bench
bench: $(VENV)/.installed-bench
	mkdir -p $(BENCH_DIR)
	$(PY) -m papermill notebooks/06_benchmark.ipynb $(BENCH_DIR)/06_benchmark.ipynb -f params/bench_demo.yaml \
		-p run_dir $(BENCH_DIR) -p quality_run_dir $(CURDIR)/outputs/demo --cwd notebooks

# The tutorial site (Jupyter Book 1, offline): the demo run's executed notebooks, plus the ablation and benchmark
# notebooks when those runs exist, and the narrative in docs/. Needs npm (the pages serve their own JavaScript).
SITE_EXTRA := $(wildcard $(ABLATION_DIR)/04_ablation.ipynb $(BENCH_DIR)/06_benchmark.ipynb \
	$(LEVERS_DIR)/notebooks/07_levers.ipynb)
site: $(VENV)/.installed-site
	$(PY) -m addmlib.book --run-dir outputs/demo --out outputs/site $(addprefix --notebook ,$(SITE_EXTRA))

# The real-browser tests drive Debian's chromium (playwright cannot download a browser here); the site build needs npm.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-tools:
	@test -x $(CHROMIUM) && command -v npm >/dev/null || { echo "installing Debian's chromium and npm for the tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		$$(test -x $(CHROMIUM) || echo chromium) $$(command -v npm >/dev/null || echo npm); }

ci-params: $(STAMP)
	$(PY) -m addmlib.pipeline params/ci/ci.yaml

test: $(VENV)/.installed-dev test-tools
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
