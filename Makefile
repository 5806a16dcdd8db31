# The two commands a newcomer needs:
#   make serve   install what is missing, then run the gateway on its embedded default
#   make test    install what is missing, then run the whole test suite
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
# Real evidence where the kernel offers it; elsewhere the simulated TEE, which the
# gateway announces loudly and no production verifier accepts.
ATTESTATION ?= $(if $(wildcard /sys/kernel/config/tsm/report),auto,simulated)

.PHONY: serve test unit lint env

env:
	@./scripts/setup-env.sh

# The gateway refuses to start beside variables that could steer its code (its environment
# is an allow-list; make itself exports MAKEFLAGS): the rest of yours is passed on.
serve: env
	$(PY) scripts/allowed_env.py $(VENV)/bin/cloister serve --attestation $(ATTESTATION) $(ARGS)

test: env lint
	$(PY) -m pytest -q $(ARGS)

unit: env
	$(PY) -m pytest -q tests/unit $(ARGS)

lint: env
	$(VENV)/bin/ruff check cli gateway enclave attestation proxy tests testkit benchmarks deploy scripts
	$(VENV)/bin/mypy cli enclave attestation gateway proxy
