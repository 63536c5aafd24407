# Two set-up commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision are pinned to the releases served from this project's development machines;
# elsewhere any torch >= 2.1 works (pyproject.toml).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
RUN_DIR ?= runs/smoke-make-run

.PHONY: run test venv clean help

help:
	@echo "make run   - create .venv, install, prepare synthetic-lt, train the smoke preset, eval it"
	@echo "make test  - create .venv if missing, install with test extras, run pytest"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/concutmix prepare synthetic-lt --force
	rm -rf $(RUN_DIR)
	$(VENV)/bin/concutmix train --preset smoke --out $(RUN_DIR)
	$(VENV)/bin/concutmix eval $(RUN_DIR)
	$(VENV)/bin/concutmix inspect-labels $(RUN_DIR) --num 6

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs data/synthetic-lt-if100 .pytest_cache
