# One command runs the demo, one runs the tests; both build what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# Test workers (pytest-xdist): most tests wait on a module process or the broker, so more
# workers than the two cores here pay: with 4, the suite took 5 min 11 s of pytest (was 11 min).
TEST_WORKERS ?= 4

.PHONY: demo test browser-deps check docs bench models clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,broker,tools]'
	touch $@

demo: $(BIN)/.installed          ## broker + module + simulator + live results
	$(BIN)/edgeinfer demo

test: $(BIN)/.installed browser-deps ## the whole suite, against a mosquitto it starts itself
	@for tool in mosquitto mosquitto_passwd openssl systemd-analyze; do \
		command -v $$tool >/dev/null || { echo "make test needs $$tool (apt-get install mosquitto openssl systemd)"; exit 1; }; \
	done
	$(BIN)/python -m pytest -n $(TEST_WORKERS)
	@$(MAKE) --no-print-directory docs

browser-deps:                    ## Debian's chromium and chromedriver, for the browser tests
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else \
		echo "make test needs chromium and chromedriver: sudo apt-get install chromium chromium-driver"; \
		exit 1; \
	fi

check: $(BIN)/.installed         ## lint, format, type and layering checks
	$(BIN)/ruff check module tests benchmarks models
	$(BIN)/ruff format --check module tests benchmarks models
	$(BIN)/mypy
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory docs

docs: $(BIN)/.installed          ## the documentation site (docs/, mkdocs.yml) into .site/, --strict
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(BIN)/.installed         ## pipeline (pass-through vs naive vs edgeinfer), then updates
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_update.py

models:                          ## retrain the sample models (needs the heavy 'train' extra)
	$(BIN)/python -m pip install -q -e '.[train]'
	$(BIN)/python models/build_models.py

clean:
	rm -rf $(VENV) .site .pytest_cache .mypy_cache .ruff_cache module/*.egg-info
