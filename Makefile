# The two commands a new user needs: `make demo` (the whole pipeline on the local stack) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install tools system-deps lint stack-up stack-down clean bench mutation rds-ca-bundle

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name playbook --display-name "Python (playbook)"
	touch $(STAMP)

install: $(STAMP)

## checkov (the template security scan) in a venv of its own: its pinned dependencies clash with ours.
TOOLS_STAMP := .venv-tools/.installed
$(TOOLS_STAMP): requirements-tools.txt
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/pip install --quiet --upgrade pip
	.venv-tools/bin/pip install --quiet -r requirements-tools.txt
	touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP)

## Debian packages the proxy and the browser tests use (nginx with the stream module, chromium), and the
## Node.js tools (Stoplight Prism, the OpenAPI mock server) in node_modules/.
system-deps:
	bash scripts/system-deps.sh
	bash scripts/node-deps.sh

## The main job: local stack up, then the whole pipeline on the demo company; reports under reports/.
demo: install
	$(BIN)/playbook demo

## The whole test suite, against a fresh local stack of its own.
test: install tools system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Benchmarks against baselines on throwaway stacks (dlt when installed: pip install -e '.[bench]').
bench: install
	$(BIN)/python -m bench all

## Mutation testing (mutmut) of the modules that decide the numbers; hours, not part of `make test`.
## MUTANTS="pipeline.reading*" narrows it to the mutants of one module; SAMPLE=400 judges a seeded random
## sample of every module instead (SEED=2 draws another), the score with its 95% interval.
mutation: install
	$(BIN)/pip install --quiet -e '.[mutation]'
	SAMPLE=$(SAMPLE) SEED=$(SEED) bash scripts/mutation.sh $(MUTANTS)

## AWS's global RDS CA bundle, which the functions verify the cluster's certificate with (sslmode verify-full).
## `playbook provision --target aws` fetches it when it is missing; this fetches it again (AWS adds CAs).
rds-ca-bundle: install
	$(BIN)/python -c "from playbook.provision import rds_ca_bundle; from playbook.templates import \
		RDS_CA_BUNDLE_FILE as f; print(*rds_ca_bundle(f, refresh=True), '->', f)"

lint: install
	$(BIN)/ruff check .

stack-up: install
	$(BIN)/playbook local up

stack-down: install
	$(BIN)/playbook local down

clean:
	-$(BIN)/playbook local down
	rm -rf $(VENV) .venv-tools .state
