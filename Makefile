# Everything installs itself: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A pinned CPU build: a bare `torch` or an open range pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[demo,images,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/netcompress demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_dalr.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) netcompress-demo
