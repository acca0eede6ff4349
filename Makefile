# Two commands on a fresh machine: `make demo` (the whole pipeline on the embedded synthetic default)
# and `make test` (the suite CI runs). Both create .venv and install everything on first use.
# Every target is `python tasks.py <target>`: the same steps run on Windows as `py tasks.py <target>`.
# A matched torch/torchvision pair is installed before the project. The default (PyPI's Linux build)
# runs on CPU and on CUDA 13 GPUs. Windows/CUDA users: TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
export VENV ?= .venv
export TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export TORCH_INDEX ?=
export DEMO_OUT ?= demo_out

.PHONY: demo test venv clean

demo test venv clean:
	$(PYTHON) tasks.py $@
