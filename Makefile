# rsvlm: `make demo` and `make test` do all the set-up on a fresh machine (they run `setup` first).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The UI tests' browser (tests/browser.py), installed by `make test` when missing: Debian's chromium, as
# Playwright's own browser download needs a host these machines may not reach. sudo only when not root: CI containers run as root and often have no sudo.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
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

# A fresh image has no package lists; noninteractive: no debconf prompt may stop a CI run.
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

demo: setup
	$(PY) jobs/pipeline.py $(ARGS)

test: setup $(CHROMIUM)
	$(PY) -m pytest -q $(ARGS)

test-unit: setup
	$(PY) -m pytest -q tests/unit $(ARGS)

# Each bench prints one JSON line of figures; docs/PERFORMANCE.md records them with the machine.
bench: setup
	for script in bench/[!_]*.py; do echo "== $$script"; $(PY) $$script $(ARGS); done

# Local stack on 127.0.0.1 (S3 :9000, MLflow :5000, Ray :6379, dashboard :8265; other ports via ARGS, e.g.
# ARGS="--dashboard-port 8266"). Logic in platform/rsvlm/dev/stack.py; state, pids and logs in $(STACK_DIR).
STACK_DIR ?= .stack

stack: setup
	@$(PY) -m rsvlm.dev.stack up --state-dir $(STACK_DIR) $(ARGS)

# eval "$$(make -s stack-env)" exports AWS_ENDPOINT_URL, the fake keys, MLFLOW_TRACKING_URI, RAY_ADDRESS.
stack-env:
	@$(PY) -m rsvlm.dev.stack env --state-dir $(STACK_DIR)

stack-down:
	@$(PY) -m rsvlm.dev.stack down --state-dir $(STACK_DIR) $(ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache

# The Kubeflow pipeline (infra/kubeflow/pipeline.py) run whole on this machine by kfp's local runner: the four steps
# on the embedded default (synthetic data, tiny model, local Ray, sqlite MLflow in runs/pipeline): about 4 min on
# 2 cores, 80 s with the tiny settings of tests/infra/test_pipeline.py. ARGS are Hydra overrides for every step.
.PHONY: pipeline-local
pipeline-local: setup
	$(PY) infra/kubeflow/pipeline.py run-local --workdir runs/pipeline $(ARGS)

# Container images from infra/docker/Dockerfile (build context: the repository root). Needs a Docker daemon; not
# part of `make test`. `make image` is the GPU Ray image rsvlm:<version>-gpu, `make image VARIANT=cpu` the CPU one
# (torch from PyTorch's CPU index), `make image-mlflow` the tracking server. IMAGE=registry.example.com/rsvlm
# names them for your registry; push them and point the kustomizations there (docs/DEPLOY.md).
.PHONY: image image-mlflow
IMAGE ?= rsvlm
VARIANT ?= gpu
IMAGE_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TORCH_INDEX_URL_gpu := https://pypi.org/simple
TORCH_INDEX_URL_cpu := https://download.pytorch.org/whl/cpu
VCS_REF ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DOCKER ?= docker

image:
	@case "$(VARIANT)" in gpu|cpu) ;; *) echo "VARIANT must be gpu or cpu, not '$(VARIANT)'" >&2; exit 2;; esac
	@command -v $(DOCKER) >/dev/null || { echo "make image needs Docker ($(DOCKER) not found)" >&2; exit 1; }
	$(DOCKER) build -f infra/docker/Dockerfile --target runtime \
		--build-arg VERSION=$(IMAGE_VERSION) --build-arg VARIANT=$(VARIANT) --build-arg VCS_REF=$(VCS_REF) \
		--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL_$(VARIANT)) \
		-t $(IMAGE):$(IMAGE_VERSION)-$(VARIANT) .

image-mlflow:
	@command -v $(DOCKER) >/dev/null || { echo "make image-mlflow needs Docker ($(DOCKER) not found)" >&2; exit 1; }
	$(DOCKER) build -f infra/docker/Dockerfile --target mlflow --build-arg VERSION=$(IMAGE_VERSION) \
		-t $(IMAGE)-mlflow:$(IMAGE_VERSION) .
