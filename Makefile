# Cloud Connector: `make run` serves the demo, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test install install-dev migrate demo lint bench serve clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the requirement files change.
$(VENV)/.installed: requirements.txt $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py load_demo --address $(HOST):$(PORT)

run: demo
	$(PY) manage.py runserver $(HOST):$(PORT)

# Production: migrate, collectstatic, then WORKERS uvicorn processes on PORT, PORT+1, ...
# (bin/serve, docs/deploy.md). WORKERS > 1 needs DATABASE_URL and REDIS_URL.
serve: install
	HOST=$(HOST) PORT=$(PORT) WORKERS=$(WORKERS) $(PY) bin/serve

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark (bench/run.py) on PostgreSQL and Redis, started here when they are down.
bench: install-dev
	bin/services
	$(PY) bench/run.py $(BENCH_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) db.sqlite3 test-db.sqlite3 .pytest_cache
