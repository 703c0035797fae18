# medssl: the README's two commands are `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "medssl needs Python 3.11 ($(PY) not found)" >&2; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned CPU build first, so no dependency drags in a multi-GB CUDA wheel.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(BIN)/medssl demo --out demo_report

# pytest's exit code 5 (no tests collected) is a failure, like any other.
test: install
	$(BIN)/ruff check .
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/io_decode.py

clean:
	rm -rf $(VENV) demo_report .pytest_cache
