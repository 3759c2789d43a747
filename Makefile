# The two commands of the README's quick start, and the steps behind them.
#   make run    set up and run civicbus on the sandbox city (API, relay, workers, simulated back-ends)
#   make test   set up and run the whole test suite (real RabbitMQ and PostgreSQL on loopback)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages are installed as root: through sudo for a developer who is not.
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test install services browser lint bench clean

run: install
	deploy/local/ensure-services.sh rabbitmq
	$(BIN)/civicbus run

test: install services browser
	$(BIN)/pytest

install: $(STAMP)

# Reinstalled whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) || { echo "make: $(PYTHON) has no venv module: installing Debian's python3-venv"; \
		$(AS_ROOT) apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv --clear $(VENV); }
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

services:
	deploy/local/ensure-services.sh rabbitmq postgresql

# The browser tests (-m browser) drive Debian's Chromium: Playwright's own browser download
# needs a host that an intranet or CI may not reach.
browser:
	@test -x /usr/bin/chromium || { echo "make: no /usr/bin/chromium: installing Debian's chromium"; \
		$(AS_ROOT) apt-get update -qq && \
		$(AS_ROOT) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install services
	$(BIN)/python tests/bench/bench_intake.py
	$(BIN)/python tests/bench/bench_intake_parts.py
	$(BIN)/python tests/bench/bench_bus.py
	$(BIN)/python tests/bench/bench_status.py

clean:
	rm -rf $(VENV) civicbus.db* var media
