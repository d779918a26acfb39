# The two commands of the README:  `make run`  and  `make test`.
# Both create .venv and install the project (pinned) the first time; nothing else is needed
# beyond Python 3.11, JDK 17 and Maven (the local Kafka broker is fetched from Maven Central).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint unit integration explore clean prometheus

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/mpcio demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit

# Property tests with fresh random draws (CI replays a fixed sequence), 5,000 examples each.
explore: $(BIN)/.installed
	MPCIO_HYPOTHESIS_PROFILE=explore $(BIN)/pytest tests/unit/test_properties.py tests/unit/test_openapi_differential.py

integration: $(BIN)/.installed prometheus
	$(BIN)/pytest tests/integration

test: lint prometheus
	$(BIN)/pytest

# tests/integration/test_prometheus.py runs a real Prometheus (Debian's package). Installed
# once when missing (needs root, as on CI); the package's own service is kept from starting
# (a temporary policy-rc.d when the machine has none): the test starts its own on loopback.
prometheus:
	@command -v prometheus >/dev/null || { \
	  made_policy=; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  status=$$?; \
	  [ -z "$$made_policy" ] || rm -f /usr/sbin/policy-rc.d; \
	  exit $$status; \
	}

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
