# KatieDJ: `make run` serves the embedded default; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

# The production-stack half of the suite talks to these (own database / Redis db numbers).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/katiedj
TEST_REDIS_URL ?= redis://127.0.0.1:6379/9

# Debian's Chromium, driven by Playwright in the browser tests (never `playwright install`).
CHROMIUM ?= /usr/bin/chromium
SCREENSHOTS ?= var/test-artifacts/screenshots

.PHONY: install chromium run test test-embedded test-production test-browser lint format bench bench-mutation clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" -e clients/python
	touch $@

install: $(VENV)/.installed

## Debian's chromium package, when missing (apt-get update only if the first install fails).
chromium:
	@test -x $(CHROMIUM) || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && apt-get install -y --no-install-recommends chromium; }; }

## Run the platform on the embedded default (SQLite, in-process channel layer; no services).
run: install
	PORT=$(PORT) $(PY) manage.py serve --port $(PORT)

## The whole suite: in-process tests on the embedded settings, then everything (end-to-end
## tests on both stacks included) on PostgreSQL + Redis, then the browser tests.
test: install chromium test-embedded test-production test-browser

test-embedded: install
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -m "not e2e and not browser" -q

test-production: install
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(PY) -m pytest -m "not browser" -q

## Chromium + Playwright against a real production stack (PostgreSQL, Redis, uvicorn, Celery,
## the local Stripe fake), in a pytest process of its own: Playwright's sync API leaves an
## event loop behind. Screenshots of the main pages land in $(SCREENSHOTS)/.
test-browser: install chromium
	mkdir -p $(SCREENSHOTS)
	env -u DATABASE_URL -u REDIS_URL DJANGO_ALLOW_ASYNC_UNSAFE=true CHROMIUM=$(CHROMIUM) \
		BROWSER_SCREENSHOTS=$(CURDIR)/$(SCREENSHOTS) $(PY) -m pytest -m browser tests/browser -q

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	DATABASE_URL=sqlite://:memory: $(PY) manage.py makemigrations --check --dry-run

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install
	$(PY) -m bench.fanout --listeners 1000 --rate 100 --duration 10

## Mutation testing of simulator/model (5-10 minutes; never part of `make test` or CI):
## the known bugs of issue 14 must be caught, then mutmut. See bench/MUTATION.md.
bench-mutation: install
	$(PY) -m pip install --quiet -e ".[mutation]"
	$(PY) -m bench.mutation known-bugs
	$(PY) -m bench.mutation run --json bench/results/mutation.json

clean:
	rm -rf $(VENV) var
