# ChangeCast: `make run` to try it, `make test` to check it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-mongodb lint typecheck bench chromium mariadb clean vendor screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run` needs only the runtime (no test tools): one line while it installs, the
# installer's own output in .venv/install.log (shown if it fails).
RUN_STAMP := $(VENV)/.runtime-stamp

$(RUN_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $@; exit 0; fi; \
	echo "Installing ChangeCast and what it needs into $(VENV) (first run only)..."; \
	{ $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip && \
	  $(BIN)/pip install --quiet -e .; } > install.log.tmp 2>&1; status=$$?; \
	mkdir -p $(VENV); mv install.log.tmp $(VENV)/install.log; \
	if [ $$status -ne 0 ]; then tail -25 $(VENV)/install.log; \
	  echo "make run: installing failed (the whole log: $(VENV)/install.log)" >&2; exit 1; fi; \
	touch $@

run: $(RUN_STAMP)
	@$(BIN)/changecast serve

# Chromium comes from Debian's packages (Playwright's own download cannot work here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The binlog source's tests start their own mariadbd (no system service is used).
mariadb:
	@{ command -v mariadbd || test -x /usr/sbin/mariadbd; } >/dev/null 2>&1 || { \
		echo "Installing Debian's mariadb-server for the binlog source's tests..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mariadb-server >/dev/null; }

test: $(STAMP) chromium mariadb
	$(BIN)/ruff check backend streaming seed tests bench loadtest changecast_client examples
	$(BIN)/mypy
	$(BIN)/pytest

# The same suite against a MongoDB replica set: CHANGECAST_TEST_MONGODB_URI=mongodb://...
# Tests that need the embedded server itself are skipped, each saying why.
test-mongodb: $(STAMP)
	@test -n "$$CHANGECAST_TEST_MONGODB_URI" || { \
		echo "make test-mongodb: set CHANGECAST_TEST_MONGODB_URI to a replica set's URI" >&2; exit 2; }
	$(BIN)/pytest -rs tests/integration tests/backend tests/chaos tests/abuse tests/pipeline tests/domain

lint: $(STAMP)
	$(BIN)/ruff check backend streaming seed tests bench loadtest changecast_client examples
	$(BIN)/ruff format --check backend streaming seed tests bench loadtest changecast_client examples

typecheck: $(STAMP)
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Benchmarks (not part of `make test`): JSON + PNG per benchmark in bench/results/.
bench: $(BENCH_STAMP)
	$(BIN)/changecast bench

# Refresh the README's screenshots (docs/screenshots/) from a real browser run.
screenshots: $(STAMP) chromium
	CHANGECAST_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest -q tests/browser -k screenshots

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Re-vendor the pinned front-end packages from npm (the result is committed; needs npm).
vendor:
	bash frontend/vendor-src/vendor.sh
