# mediastore: `make run` starts everything on the embedded defaults, `make test` runs the whole suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Test processes (pytest-xdist), each with its own test database, Redis, S3 and media servers. Most of the
# suite waits on workers, servers and browsers, so two processes on two cores take it from about 11 min to
# about 6½; PYTEST_WORKERS=0 runs it in this one process.
PYTEST_WORKERS ?= 2

# command-to-check=debian-package
RUN_DEPS := redis-server=redis-server ffmpeg=ffmpeg ffprobe=ffmpeg
# The browser tests use Debian's chromium; CHROMIUM_PATH points them at another Chromium or Chrome instead.
TEST_DEPS := $(RUN_DEPS) docker-compose=docker-compose $(if $(CHROMIUM_PATH),,chromium=chromium)

.PHONY: help run test test-fast test-mongodb test-ytdlp-plain bench faults lint typecheck update-ytdlp system-deps-run system-deps-test

help:
	@echo "make run    set up and start redis, web (http://127.0.0.1:8000) and the gevent worker"
	@echo "make test   set up and run lint, type checks and the whole test suite"
	@echo "make test-fast  lint, type checks and the tests that start no worker, browser or server (under 2 min)"
	@echo "make test-ytdlp-plain  the pipeline, security and lifecycle tests with yt-dlp as a plain subprocess"
	@echo "make bench  run every benchmark in benchmarks/ and print one table"
	@echo "make faults inject worker, broker, store and disk faults; count stuck, lost and leftover (about 10 min)"
	@echo "make update-ytdlp  move yt-dlp (and yt-dlp-ejs) to the newest release if the pipeline tests pass"

run: system-deps-run $(VENV)/.installed-prod
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py collectstatic --noinput -v0
	$(BIN)/python manage.py ensure_superuser
	$(BIN)/python -m mediastore.runstack

test: system-deps-test $(VENV)/.installed-dev lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-fast: system-deps-test $(VENV)/.installed-dev lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not stack" $(PYTEST_ARGS)

# The integration suites that run against a real MongoDB (DATABASE_URL=mongodb://…): the worker's PyMongo async
# path, the API, webhooks recorded in the transition's transaction, cancel. The CI workflow's mongodb job runs
# this target; README "MongoDB" says how to run it locally with Docker.
MONGODB_TESTS := tests/mediastore/test_mongodb.py tests/scenes/test_lifecycle.py tests/scenes/test_api.py \
	tests/scenes/test_api_worker.py tests/downloads/test_pipeline_worker.py tests/scenes/test_webhooks_worker.py \
	tests/downloads/test_cancel_worker.py

test-mongodb: system-deps-test $(VENV)/.installed-dev
	@case "$${DATABASE_URL:-}" in mongodb://*|mongodb+srv://*) ;; *) echo "test-mongodb: set DATABASE_URL=mongodb://…"; exit 2;; esac
	$(BIN)/python -m pytest $(MONGODB_TESTS) $(PYTEST_ARGS)

# The pipeline, security and lifecycle suites with yt-dlp as a plain subprocess per job (MEDIA_YTDLP_HELPER=0),
# the path a worker takes when the helper is off; `make test` runs them on the helper. CI runs both.
YTDLP_PATH_TESTS := tests/downloads/test_pipeline_worker.py tests/downloads/test_egress_worker.py \
	tests/downloads/test_limits_worker.py tests/downloads/test_cancel_worker.py tests/downloads/test_worker_recovery.py \
	tests/scenes/test_api_worker.py tests/scenes/test_lifecycle.py

test-ytdlp-plain: system-deps-test $(VENV)/.installed-dev
	MEDIA_YTDLP_HELPER=0 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(YTDLP_PATH_TESTS) $(PYTEST_ARGS)

bench: system-deps-test $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks

faults: system-deps-test $(VENV)/.installed-dev
	$(BIN)/python -m benchmarks.faults $(FAULTS)

update-ytdlp: system-deps-test $(VENV)/.installed-dev
	$(BIN)/python -m mediastore.update_ytdlp

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy mediastore scenes downloads

system-deps-run:
	@$(call install_missing,$(RUN_DEPS))

system-deps-test:
	@$(call install_missing,$(TEST_DEPS))

# Missing system programs come from apt: directly as root, through sudo when it needs no password,
# otherwise the exact command is printed and make stops.
define install_missing
	missing=""; \
	for pair in $(1); do \
	  command -v "$${pair%%=*}" >/dev/null 2>&1 || missing="$$missing $${pair#*=}"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "Missing system packages:$$missing"; \
	       echo "Install them with: sudo apt-get update && sudo apt-get install -y $$missing"; exit 1; fi; \
	  echo "Installing system packages:$$missing"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mediastore needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

# A stamp per requirements set: pip runs again only when a requirements file changed.
$(VENV)/.installed-prod: requirements/base.txt requirements/prod.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/prod.txt
	touch $@

$(VENV)/.installed-dev: requirements/base.txt requirements/prod.txt requirements/dev.txt | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $@ $(VENV)/.installed-prod
