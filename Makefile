# Cloud Connector: `make run` serves the demo, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test screenshots install install-dev lock migrate demo lint bench serve clean

# The venv's own pip (ensurepip's) installs the locks: nothing is fetched unlocked. The dev lock
# pins pip itself, with pip-tools, which builds on it.
$(PY):
	$(PYTHON) -m venv $(VENV)

# Install exactly the locked tree, and again whenever a lock changes. --require-hashes refuses any
# package, transitive ones included, that the lock does not pin with ==, and any file whose hash
# it does not list: an incomplete or tampered lock fails here instead of installing something else.
$(VENV)/.installed: requirements.lock $(PY)
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock $(VENV)/.installed
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Recompile both hashed locks from requirements*.txt for this platform (Linux x86_64, CPython 3.11),
# keeping every pin that still fits; the dev lock is compiled under the runtime lock, so the two
# agree on every runtime package. LOCK_ARGS="--upgrade-package redis" moves one package to its
# newest release, LOCK_ARGS=--upgrade everything. Review the diff, then `make test`.
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS)
lock: $(VENV)/.installed-dev
	$(PIP_COMPILE) --output-file requirements.lock requirements.txt
	$(PIP_COMPILE) --constraint requirements.lock --output-file requirements-dev.lock requirements-dev.txt

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo --address $(HOST):$(PORT)

# The development server and the task worker that delivers webhooks (bin/run stops both).
run: demo
	HOST=$(HOST) PORT=$(PORT) $(PY) bin/run

# Production: migrate, collectstatic, then WORKERS uvicorn processes on PORT, PORT+1, ...
# (bin/serve, docs/deploy.md). WORKERS > 1 needs DATABASE_URL and REDIS_URL.
serve: install
	HOST=$(HOST) PORT=$(PORT) WORKERS=$(WORKERS) $(PY) bin/serve

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# Refresh docs/screenshots/ from the browser tests; `make test` writes them to temporary folders.
screenshots: install-dev
	@test -x /usr/bin/chromium || { echo "Chromium is needed at /usr/bin/chromium (apt-get install -y chromium)"; exit 1; }
	SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest -p no:cacheprovider tests/portal/test_browser*.py tests/portal/test_webhooks_browser.py

# Every benchmark (bench/run.py) on PostgreSQL and Redis, started here when they are down.
bench: install-dev
	bin/services
	$(PY) bench/run.py $(BENCH_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) db.sqlite3 test-db.sqlite3 .pytest_cache
