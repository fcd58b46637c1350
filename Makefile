# Care Companion: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SRC := src/care_companion

.PHONY: install demo test test-env system-deps lint unit docs docs-check bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import care_companion, torch, timm, mlflow, onnxruntime" || (echo "install failed" && exit 1)
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/care-companion demo --serve

# What the tests need besides Python packages (as CI has it): prometheus and chromium via apt where possible,
# PostgreSQL started; quick when already done (scripts/setup-test-env.sh).
test-env: install
	@PYTHON=$(PY) STAMP_DIR=$(VENV) bash scripts/setup-test-env.sh

# Try apt again after a failed attempt (the stamp otherwise stops test-env from retrying every run).
system-deps: install
	@PYTHON=$(PY) STAMP_DIR=$(VENV) bash scripts/setup-test-env.sh --retry

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy $(SRC)

test: test-env lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit -m "not slow"

# Regenerate docs/configuration.md and docs/api.md from Settings and the OpenAPI schema.
docs: install
	$(PY) scripts/gen_docs.py

docs-check: install
	$(PY) scripts/gen_docs.py --check

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf care-data .pytest_cache .mypy_cache .ruff_cache
