# Care Companion: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SRC := src/care_companion

.PHONY: install demo test lint unit bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import care_companion, torch, timm, mlflow, onnxruntime" || (echo "install failed" && exit 1)
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/care-companion demo --serve

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy $(SRC)

test: lint
	$(PY) -m pytest

unit: install
	$(PY) -m pytest tests/unit -m "not slow"

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf care-data .pytest_cache .mypy_cache .ruff_cache
