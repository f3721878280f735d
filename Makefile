# Catalyst Ops Console. `make run` starts everything offline; `make test` runs the suite
# on SQLite, then on PostgreSQL.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
VPY := $(VENV)/bin/python
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/catalyst

# The first Python >= 3.12 among: $(PYTHON), python3.13, python3.12, python3, pyenv's versions.
define FIND_PYTHON
for c in $(PYTHON) python3.13 python3.12 python3 $$(ls -d "$$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
  if "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then echo "$$c"; exit 0; fi; \
  [ -n "$(PYTHON)" ] && [ "$$c" = "$(PYTHON)" ] && { echo "make: PYTHON=$(PYTHON) is not a Python 3.12 or newer" >&2; exit 1; }; \
done; \
echo "make: no Python 3.12 or newer found (Django 6.1 needs it). Tried: $(PYTHON) python3.13 python3.12 python3 and pyenv's versions. Install one, or run make PYTHON=/path/to/python3.12" >&2; exit 1
endef

.PHONY: help run test lint test-sqlite test-postgres reliability bench check clean

help:
	@echo "make run          set up .venv, migrate, start the paper exchange, web console (http://127.0.0.1:8000/admin/), monitor and worker"
	@echo "make test         the import contracts (lint-imports), then the whole suite on SQLite, then on PostgreSQL ($(PG_TEST_URL))"
	@echo "make reliability  the fault, load, bad-input and security suite on PostgreSQL, with its figures"
	@echo "make bench        benchmarks of the monitor and the console (prints figures, never fails on time)"
	@echo "make check        Django's system checks and a migrations check"

$(VENV)/.installed: requirements.txt
	@py="$$($(FIND_PYTHON))" || exit 1; \
	if [ -x $(VPY) ] && ! $(VPY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then rm -rf $(VENV); fi; \
	[ -x $(VPY) ] || { echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV); }
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# A local settings file every manage.py command of this checkout reads (catalyst/settings.py;
# the environment wins over it). Written once, never overwritten, never committed.
.env:
	@printf '%s\n' "# Local settings of this checkout, written by make run; never committed. The environment wins." \
	  "DJANGO_DEBUG=true" "DJANGO_SECRET_KEY=$$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" > $@
	@echo "wrote .env (DJANGO_DEBUG=true, a local secret key): manage.py commands in any terminal read it"

run: $(VENV)/.installed .env
	@mkdir -p var
	@rm -rf var/prometheus && mkdir -p var/prometheus  # the processes' counters, summed by /metrics
	$(VPY) manage.py migrate --noinput
	$(VPY) manage.py demo_setup
	@if [ -n "$$ALPACA_API_KEY" ]; then procs="web monitor stream quotes worker"; else procs=""; fi; \
	PROMETHEUS_MULTIPROC_DIR="$(CURDIR)/var/prometheus" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	  exec $(VENV)/bin/honcho -f Procfile start $$procs

test: lint test-sqlite test-postgres

lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports

test-sqlite: $(VENV)/.installed
	$(VPY) -m pytest -q

test-postgres: $(VENV)/.installed
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "make: PostgreSQL is not answering on 127.0.0.1:5432 (start it: pg_ctlcluster --skip-systemctl-redirect 15 main start)" >&2; exit 1; }
	DATABASE_URL=$(PG_TEST_URL) $(VPY) -m pytest -q

reliability: $(VENV)/.installed
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "make: the reliability suite needs PostgreSQL on 127.0.0.1:5432" >&2; exit 1; }
	DATABASE_URL=$(PG_TEST_URL) $(VPY) -m pytest -q -m reliability

bench: $(VENV)/.installed
	$(VPY) -m bench

check: $(VENV)/.installed
	DJANGO_DEBUG=true $(VPY) manage.py check
	DJANGO_DEBUG=true $(VPY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var/*.sqlite3* .pytest_cache
