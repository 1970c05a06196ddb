# Everything installs itself: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A pinned CPU build: a bare `torch` or an open range pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test bench bench-peers docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[demo,images,test,real,onnx]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m experiments

test: install
	$(PY) -m pytest

bench: install
	$(PIP) install -q -e ".[bench,real]"
	cd benchmarks && export PYTHONPATH=.. && for script in bench_dalr bench_sweep bench_inference bench_storage bench_channel_pruning \
		bench_quantization bench_real_models bench_latency; do echo "== $$script"; ../$(PY) $$script.py || exit 1; done

# torchao, optimum-quanto and Torch-Pruning beside netcompress; the constraint keeps the pinned torch.
bench-peers: install
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -c $(VENV)/torch-constraint.txt -e ".[bench,real,peers]"
	cd benchmarks && PYTHONPATH=.. ../$(PY) bench_peers.py

# The documentation site: mkdocs, Material and mkdocstrings beside the pinned torch; the generated parts
# (docs/results/, the methods table) must be current; any warning fails the build.
docs: install
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -c $(VENV)/torch-constraint.txt -e ".[docs]"
	$(PY) docs/render.py --check
	$(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) netcompress-demo netcompress-deep-compression
