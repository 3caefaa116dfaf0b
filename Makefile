# The README's two commands. Both install everything they need first (scripts/install.sh:
# a CPU-only .venv with SGLang 0.5.17, torch 2.13 CPU and this package; ~2 min, once).
PY := .venv/bin/python

.PHONY: install demo test test-fast

install:
	bash scripts/install.sh

# Start the server on the embedded SmolLM2-135M-Instruct and hold a multi-turn chat with it.
demo: install
	$(PY) -m asynctls_sglang.demo

# Every CPU test (GPU-only tests skip themselves without CUDA).
test: install
	$(PY) -m pytest -q -ra --timeout 1500 -m "not slow"

# Unit tests only (no SGLang engine), a few seconds.
test-fast: install
	$(PY) -m pytest -q -m "not engine" --ignore=tests/kernels
