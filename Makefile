# Two entry points: `make demo` (the main job on its embedded default, offline) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# pytest-xdist workers: two for two cores (on a 2-core machine a third helped a warm checkout, 433 -> 404 s of
# pytest, but slowed a fresh clone, 449 -> 503 s).
PYTEST_WORKERS ?= 2
# Every target's Python processes cache bytecode in the venv, whatever the environment says: without .pyc files
# each process compiles TensorFlow and JAX from source again (~12 CPU-s).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv test demo clean bench profile

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-compile -e ".[test,hf]"  # hf: the Hugging Face parity, PEFT, safetensors tests
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS) tests

demo: $(STAMP)
	JAX_PLATFORMS=cpu bash launch/local/demo.sh

bench: $(STAMP)  # the peer (PyTorch CPU, transformers, peft) comes with the hf extra
	JAX_PLATFORMS=cpu $(PY) -m benchmarks.step_time

profile: $(STAMP)  # where our step's time goes, per XLA operation (huge pages as the step-time workers use)
	JAX_PLATFORMS=cpu GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(PY) -m benchmarks.op_profile

clean:
	rm -rf $(VENV) artifacts build dist *.egg-info
