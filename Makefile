# Conveyor: `make run` starts the server, `make test` runs the whole suite. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
NPM_STAMP := tests/npm/node_modules/.stamp

.PHONY: run test test-loaded test-languages test-floor test-vm lint bench assets screenshots helper install install-test install-bench \
  system-run system-test clean

run: system-run install
	$(BIN)/python -m server

# Two workers (pytest-xdist), each taking whole test files: module fixtures stay per file, and each worker launches
# one Chromium for all its browser tests. About 5 minutes on a quiet 2-core host (the real servers of the tests
# probe only the languages they use: LANGUAGES). PYTEST_ARGS="-n 0" runs it in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: system-test install-test
	$(BIN)/python -m pytest -m "not languages" $(PYTEST_ARGS)

# The suite twice beside one CPU hog per core: what a shared CI machine does to timing windows (by hand).
test-loaded:
	.ci/test-loaded

# Every language of server/sandbox/languages.toml beyond `make run`'s quick set, through the sandbox (tests/languages/) and
# both compat APIs; installs their Debian packages first (about 5 GB, a few minutes). About 6 minutes on 2 cores.
test-languages: system-test install-test
	@.ci/system-packages languages
	$(BIN)/python -m pytest -m languages -n 2 --dist load tests/test_language_matrix.py tests/test_language_compat.py

# The lowest versions pyproject.toml allows (.ci/floor-pins), in a venv of their own, through a quick subset: the
# floors must be what the code needs (aiohttp 3.14: web.RequestKey; redis 5.0.2: its asyncio timeouts and aclose).
FLOOR_VENV := .venv-floor
FLOOR_TESTS ?= tests/test_settings.py tests/test_api.py tests/test_queue.py tests/test_worker.py tests/test_hub.py \
  tests/test_systemd.py
test-floor: system-test $(HELPER)
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python .ci/floor-pins test redis > $(FLOOR_VENV)/floor-pins.txt
	$(FLOOR_VENV)/bin/python -m pip install -q -c $(FLOOR_VENV)/floor-pins.txt -e '.[test,redis]'
	$(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider -n 0 -q $(FLOOR_TESTS)

# The cgroup v2 test machine (docs/vm.md): a Debian 12 VM under qemu, built once (root, ~10 min) and cached in
# /var/tmp/conveyor-vm, runs `make run` as root and as a user, the systemd unit, and the sandbox tests.
# VM_SCENARIOS picks some of them (root user unit tests), or `shell` for a root shell in the machine.
VM_SCENARIOS ?= root user unit tests
test-vm:
	.ci/vm/run $(VM_SCENARIOS)

# lint-imports checks pyproject.toml's [tool.importlinter] contracts: the floors of server/ and no import cycles.
lint: install-test
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: system-test install-bench
	$(BIN)/python -m bench $(BENCH_ARGS)

# The pages' vendor bundles (CodeMirror, uPlot, Swagger UI) are committed in static/vendor/; this rebuilds them
# from web/package-lock.json with npm and esbuild (needs node and npm; nothing else the project does needs them).
assets:
	@command -v npm >/dev/null || { echo "conveyor: make assets needs node and npm (apt-get install -y nodejs npm)" >&2; exit 1; }
	cd web && npm ci --no-audit --no-fund && npm run build

# The README's pictures, taken by the browser tests that check those pages (docs/screenshots/).
screenshots: system-test install-test
	CONVEYOR_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/test_editor.py tests/test_testcases.py \
	  tests/test_charts.py tests/test_docs.py \
	  -k "theme or phone or charts_are_full or docs_render or verdict_as_it or in_another_browser"

system-run:
	@.ci/system-packages run

system-test:
	@.ci/system-packages test

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; \
	  else echo "conveyor: Python cannot create virtual environments; install them with: sudo apt-get install -y python3-venv" >&2; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The sandbox's launch and stage-driver helper (server/sandbox/runner.py finds it here). A static PIE when libc.a is there
# (one exec with no dynamic loader, and ASLR), else a dynamic PIE. Hardened: it runs as root until it drops to the
# job's uid, and parses what the server sends it. tests/test_helper.py builds it again with ASan and UBSan.
# Without a C compiler the server still works, starting jobs through perl helpers.
HELPER := server/sandbox/helper/conveyor-run
JAVA_PRELOAD := server/sandbox/helper/java/conveyor/preload/Preload.class
HELPERS := $(HELPER) $(JAVA_PRELOAD)
HELPER_CFLAGS := -O2 -Wall -Wextra -Werror -Wformat=2 -D_FORTIFY_SOURCE=3 -fstack-protector-strong \
  -fstack-clash-protection -fPIE
HELPER_LDFLAGS := -Wl,-z,relro,-z,now
helper: $(HELPERS)
$(HELPER): server/sandbox/helper/conveyor-run.c Makefile
	@if command -v cc >/dev/null; then \
	  cc $(HELPER_CFLAGS) -static-pie $(HELPER_LDFLAGS) -o $@ $< 2>/dev/null || \
	  cc $(HELPER_CFLAGS) -pie $(HELPER_LDFLAGS) -o $@ $<; \
	else echo "conveyor: no C compiler (cc): jobs start through setpriv, prlimit and perl (apt-get install gcc)" >&2; fi

# The launcher of warm java sandboxes' pre-started JVM (server/sandbox/spec.py PRELOADS): Preload.java compiled by the
# host's javac and its native half built against that JDK's jni.h, both into helper/java/ (the boot class path the
# sandbox sees). main is marked @Hidden (jdk.internal.vm.annotation, which the JVM honours for boot class path code).
# Without javac or cc java has no pre-started JVM, nor with a JDK other than 17 or 18: JDK 19 dropped the field the
# native half reads to keep the main thread's identity hash codes a cold start's (every warm run would fall back to a
# cold start), and JDK 24 prints a warning for System.load. helper/java/jdk names the JDK it was built for: a server
# whose `java` is another JDK (a switched alternative) starts no JVM ahead (server/sandbox/spec.py).
JAVA_PRELOAD_DIR := server/sandbox/helper/java
$(JAVA_PRELOAD): server/sandbox/helper/Preload.java server/sandbox/helper/preload-java.c Makefile
	@rm -rf $(JAVA_PRELOAD_DIR)
	@if command -v javac >/dev/null && command -v cc >/dev/null && \
	  javac -version 2>&1 | grep -Eq '^javac (17|18)[.]'; then \
	  jdk=$$(dirname "$$(dirname "$$(readlink -f "$$(command -v javac)")")") && mkdir -p $(JAVA_PRELOAD_DIR) && \
	  cc -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=3 -fstack-protector-strong -fPIC -shared $(HELPER_LDFLAGS) \
	    -I"$$jdk/include" -I"$$jdk/include/linux" -o $(JAVA_PRELOAD_DIR)/libconveyor-preload.so \
	    server/sandbox/helper/preload-java.c -lpthread && \
	  javac -XDignore.symbol.file -nowarn --add-exports java.base/jdk.internal.vm.annotation=ALL-UNNAMED \
	    -d $(JAVA_PRELOAD_DIR) $< && echo "$$jdk" > $(JAVA_PRELOAD_DIR)/jdk || rm -rf $(JAVA_PRELOAD_DIR); \
	fi

install: $(VENV)/.stamp-install $(HELPERS)
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	@touch $@

install-test: $(VENV)/.stamp-test $(NPM_STAMP) $(HELPERS)
$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[test,redis]'
	@touch $@ $(VENV)/.stamp-install

# The npm packages the tests use (tests/npm): the Piston clients tests/test_piston.py drives and axe-core, which
# tests/test_accessibility.py runs in the pages; npm comes with the nodejs package the sandbox needs.
$(NPM_STAMP): tests/npm/package.json tests/npm/package-lock.json
	@if command -v npm >/dev/null; then \
	  npm ci --prefix tests/npm --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "conveyor: npm not found: tests/test_piston.py drives the npm piston-client (install nodejs)" >&2; fi

install-bench: $(VENV)/.stamp-bench $(HELPERS)
$(VENV)/.stamp-bench: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[test,redis,bench]'
	@touch $@ $(VENV)/.stamp-install $(VENV)/.stamp-test

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .mypy_cache .ruff_cache tests/artifacts tests/npm/node_modules
