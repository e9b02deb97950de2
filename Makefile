# Quick start: `make bench` (a short run against the embedded server), `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := roombench/servers/node

.PHONY: setup setup-servers setup-browser bench test sweep genbench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(STAMP)

# The other server variants: Node's socket.io (pinned by package-lock.json) and a
# redis-server for the scale-out variants (Debian package; needs root for apt-get).
setup-servers: $(NODE_DIR)/node_modules/.package-lock.json
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error

bench: setup
	$(BIN)/roombench run --users 20 --duration 10 --drop-every 5 --slo 'ack.p99<250' --slo 'lost==0'

# The browser test drives Debian's chromium through playwright (no playwright browser
# download: the package's binary is used); it skips, saying so, only where none exists.
setup-browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: setup setup-servers setup-browser
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tests/parallel.py -j 3

sweep: setup setup-servers
	$(BIN)/roombench sweep bench/sweeps/default.toml

# Generator capacity vs Locust's SocketIOUser, Artillery (installed on demand), Node's client
genbench: setup setup-servers
	$(BIN)/python -m bench.generators.run

clean:
	rm -rf $(VENV) build *.egg-info $(NODE_DIR)/node_modules
