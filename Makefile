# The two commands a new user needs: `make demo` (the whole pipeline on the local stack) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install system-deps lint stack-up stack-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Debian packages the proxy and the browser tests use (nginx with the stream module, chromium).
system-deps:
	bash scripts/system-deps.sh

## The main job: local stack up, then the whole pipeline on the demo company; reports under reports/.
demo: install
	$(BIN)/playbook demo

## The whole test suite, against a fresh local stack of its own.
test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

stack-up: install
	$(BIN)/playbook local up

stack-down: install
	$(BIN)/playbook local down

clean:
	-$(BIN)/playbook local down
	rm -rf $(VENV) .state
