PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stagewise-installed

# llama.cpp detects the build machine's CPU by default and may enable instructions
# (AMX, AVX-512) that crash inside some virtual machines. Build for AVX2, which every
# x86-64 machine here has. pip caches the wheel, so only the first install compiles.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[local-models,embeddings,dev]'
	touch $@

install: $(STAMP)

# The flagship example: a router and specialists on Banking77, optimized on the local models
# (about 6 minutes on 2 cores). `stagewise demo` is a one-minute tour of a two-stage chain.
demo: install
	$(BIN)/stagewise optimize examples/banking/study.toml --out runs/banking

# tests/services.sh starts Redis and PostgreSQL on loopback (installing them, and Chromium for the
# HTML diff page, from Debian packages when missing and running as root) and prints their URLs.
test: install
	services="$$(bash tests/services.sh)" && eval "$$services" && $(BIN)/python -m pytest

bench: install
	services="$$(bash tests/services.sh)" && eval "$$services" && $(BIN)/python benchmarks/scaleout.py
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/fanout.py
	$(BIN)/python benchmarks/optimize_rerun.py
	$(BIN)/python benchmarks/routing.py --embeddings
	$(BIN)/python benchmarks/checkpoint_overhead.py
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
