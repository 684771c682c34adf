# Two commands on a fresh machine: `make demo` and `make test`; each builds .venv first (`make install` builds it alone).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
# torch is pinned for the whole install so that no dependency swaps it for a multi-GB CUDA build.
PIP_ENV := PIP_CONSTRAINT=$(CURDIR)/$(VENV)/constraints.txt

.PHONY: install test demo benchmark clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	cat constraints.txt > $(VENV)/constraints.txt
	echo "$(TORCH)" >> $(VENV)/constraints.txt
	$(PIP_ENV) $(BIN)/pip install --quiet "$(TORCH)"
	$(PIP_ENV) $(BIN)/pip install --quiet numpy cython wheel setuptools
	# fairseq builds against the torch above, not a fresh one in an isolated build environment.
	$(PIP_ENV) $(BIN)/pip install --quiet --no-build-isolation -e '.[test]'
	# fairseq-fixed requires torchaudio, but PyPI has only CUDA builds of it, which cannot be imported
	# with a CPU torch, and none for torch 2.13; nothing here uses it. Keep it only where it imports.
	$(BIN)/python -c "import torchaudio" 2>/dev/null || $(BIN)/pip uninstall --quiet -y torchaudio
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m fairseq_ecg.demo --out $(DEMO_DIR)

benchmark: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/bench_preparation.py
	$(BIN)/python benchmarks/bench_precision.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/bench_sources.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
