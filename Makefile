# Two set-up commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision are pinned to the releases served from this project's development machines;
# elsewhere any torch >= 2.1 works (pyproject.toml).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
RUN_DIR ?= runs/quickstart

.PHONY: run test venv clean help

help:
	@echo "make run   - create .venv, install, prepare synthetic-lt, train CE and ConCutMix (quickstart preset), report and plot them"
	@echo "make test  - create .venv if missing, install with test extras, run pytest"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The quick start: CE and ConCutMix on the same synthetic long-tailed data, then their last-epoch
# accuracy side by side (top-1, many / medium / few) and the pictures (README "Set up and run").
run: venv
	$(VENV)/bin/concutmix prepare synthetic-lt --force
	rm -rf $(RUN_DIR)
	$(VENV)/bin/concutmix train --preset quickstart --method ce --out $(RUN_DIR)/ce
	$(VENV)/bin/concutmix train --preset quickstart --method concutmix --out $(RUN_DIR)/concutmix
	$(VENV)/bin/concutmix plot $(RUN_DIR)/ce $(RUN_DIR)/concutmix --out $(RUN_DIR)/plots
	$(VENV)/bin/concutmix inspect-labels $(RUN_DIR)/concutmix --num 6
	$(VENV)/bin/concutmix report $(RUN_DIR)/ce $(RUN_DIR)/concutmix

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs data/synthetic-lt-if100 .pytest_cache
