# Two commands on a fresh machine: `make demo` (the whole pipeline on the embedded synthetic default)
# and `make test` (the suite CI runs). Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A matched torch/torchvision pair, installed before the project. The default (PyPI's Linux build)
# runs on CPU and on CUDA 13 GPUs. Windows/CUDA users: TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
DEMO_OUT ?= demo_out

export TORCHDYNAMO_DISABLE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv clean bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(PY) -m sweeps.demo --out $(DEMO_OUT)

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
