# Jobsite: the README's commands. `make run` brings the whole stack up; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast bench chaos lint format migrate lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements-dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python -m jobsite.run

# Development database: debug (and its key under var/) unless the environment says otherwise.
migrate: install
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier, to run between edits (about a minute): every test that starts no Celery
# worker, browser, live server or other process (the marks are set in tests/conftest.py).
test-fast: install
	$(BIN)/python -m pytest -m "not worker and not browser and not live" $(PYTEST_ARGS)

# Benchmarks against PostgreSQL and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL; the local
# servers by default). BENCH_ARGS names a subset, e.g. BENCH_ARGS="e2e latency". The API
# benchmark loads the server with wrk; reports render as in the Docker image.
BENCH_DEBIAN_PACKAGES := wrk libharfbuzz-subset0 fonts-dejavu-core
bench: install
	@missing=$$(for p in $(BENCH_DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos soak: its own PostgreSQL (initdb) and Redis, the Procfile's processes, a mixed
# load (CHAOS_JOBS, 10,000 by default) under a fault schedule (CHAOS_FAULTS); see
# docs/failure-modes.md.
chaos: install
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	$(BIN)/python -m chaos

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Refresh the lock files after changing pyproject.toml: requirements.lock is what the
# production image installs, requirements-dev.lock adds the test and development tools.
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements-dev.lock

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache
