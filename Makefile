PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two installs: the demo needs the package and the local models only; the tests need everything
# (sentence-embedding router features with a CPU build of torch, pytest, ruff).
DEMO_STAMP := $(VENV)/.stagewise-demo
STAMP := $(VENV)/.stagewise-installed

# llama.cpp detects the build machine's CPU by default and may enable instructions
# (AMX, AVX-512) that crash inside some virtual machines. Build for AVX2, which every
# x86-64 machine here has. pip caches the wheel, so only the first install compiles.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: install demo test docs bench clean

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[local-models]'
	touch $@

$(STAMP): $(DEMO_STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[local-models,embeddings,dev]'
	touch $@

install: $(STAMP)

# The flagship example: a router and specialists on Banking77, optimized on the local models
# (about 6 minutes on 2 cores). `stagewise demo` is a one-minute tour of a two-stage chain.
demo: $(DEMO_STAMP)
	$(BIN)/stagewise optimize examples/banking/study.toml --out runs/banking

# tests/services.sh starts Redis and PostgreSQL on loopback (installing them, and Chromium for the
# HTML diff page, from Debian packages when missing and running as root) and prints their URLs.
# Every service it starts is required (STAGEWISE_REQUIRE_SERVICES=1): a test whose service is missing fails.
test: install
	$(BIN)/ruff check stagewise tests benchmarks examples docs conftest.py
	services="$$(bash tests/services.sh)" && eval "$$services" && STAGEWISE_REQUIRE_SERVICES=1 $(BIN)/python -m pytest

# The documentation site (docs/, mkdocs.yml) into site/; --strict: any warning (a broken link, a docstring
# mkdocstrings cannot render) fails the build. tests/test_docs.py builds it too and runs its code blocks.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Every benchmark writes benchmarks/results/NAME.json and exits non-zero when it misses a goal; all of
# them run, then one table of every figure against its goal (non-zero if any goal was missed).
bench: install
	services="$$(bash tests/services.sh)" && eval "$$services" && status=0 && \
	for script in engine_overhead.py fanout.py optimize_rerun.py "routing.py --embeddings" checkpoint_overhead.py \
	              serve_load.py scaleout.py joint_vs_alternatives.py faults.py; do \
		$(BIN)/python benchmarks/$$script || status=1; \
	done; \
	$(BIN)/python benchmarks/results.py || status=1; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
