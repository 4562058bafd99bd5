# rsvlm: `make demo` and `make test` do all the set-up on a fresh machine (they run `setup` first).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip warns about every missing local index directory of this machine's pip config; keep the log readable.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup demo test test-unit bench clean stack stack-env stack-down

setup: $(STAMP)

# torch goes in first from the CPU wheel: letting the resolver pick `torch` pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(PY) -c "import torch, ray, transformers, peft, mlflow, hydra; assert '+cpu' in torch.__version__ or torch.cuda.is_available()"
	touch $(STAMP)

demo: setup
	$(PY) jobs/pipeline.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-unit: setup
	$(PY) -m pytest -q tests/unit $(ARGS)

# Each bench prints one JSON line of figures; docs/PERFORMANCE.md records them with the machine.
bench: setup
	for script in bench/[!_]*.py; do echo "== $$script"; $(PY) $$script $(ARGS); done

# Local stack on 127.0.0.1 (S3 :9000, MLflow :5000, Ray :6379, dashboard :8265; other ports via ARGS, e.g.
# ARGS="--dashboard-port 8266"). Logic in platform/rsvlm/stack.py; state, pids and logs in $(STACK_DIR).
STACK_DIR ?= .stack

stack: setup
	@$(PY) -m rsvlm.stack up --state-dir $(STACK_DIR) $(ARGS)

# eval "$$(make -s stack-env)" exports AWS_ENDPOINT_URL, the fake keys, MLFLOW_TRACKING_URI, RAY_ADDRESS.
stack-env:
	@$(PY) -m rsvlm.stack env --state-dir $(STACK_DIR)

stack-down:
	@$(PY) -m rsvlm.stack down --state-dir $(STACK_DIR) $(ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache
