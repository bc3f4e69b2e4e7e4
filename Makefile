# Set-up and everyday commands. `make serve` and `make test` do all the set-up they need on a
# fresh machine (a virtualenv in .venv; llama-cpp-python builds from source, ~6 min on 2 cores).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
# The CPU build of torch lies on this machine's disk; an unpinned torch would pull CUDA (GBs).
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo serve serve-demo serve-tiny lint test test-fast bench clean prometheus llama-server image-base

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_CPU)"
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q -e ".[llamacpp,vllm,training,dev]"
	touch $(STAMP)

models/tiny/model.gguf: $(STAMP)
	$(BIN)/python -m training init-tiny --out models/tiny

# The demo: a customer-support LoRA on a real pretrained base (SmolLM2-135M-Instruct from the
# catalogue, fetched on first use), trained and scored here on CPU (docs/demo.md).
DEMO_BASE := smollm2-135m-instruct
adapters/support-demo/manifest.json: $(STAMP)
	$(BIN)/python -m training build-demo

demo: adapters/support-demo/manifest.json

# A real model from the catalogue, fetched and verified on first use (server/serving/catalogue.py).
MODEL ?= qwen2.5-coder-0.5b-instruct
serve: $(STAMP)
	$(BIN)/python -m server --model $(MODEL) --port $(PORT)

# The demo's base and its adapter (served as support-demo, with every adapter in adapters/).
serve-demo: $(STAMP) adapters/support-demo/manifest.json
	$(BIN)/python -m server --model $(DEMO_BASE) --port $(PORT)

# The random-weight tiny model instead: seconds to build, noise for text, valid tool calls.
serve-tiny: $(STAMP) models/tiny/model.gguf
	$(BIN)/python -m server --model models/tiny/model.gguf --port $(PORT)

# Debian's Prometheus, for the test that scrapes a live gateway with a real server. Installed
# once and quietly; if it cannot be installed, that test skips and says why.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo -n"; \
		{ $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus; } \
			>/dev/null 2>&1 || echo "make: could not install prometheus; its test will skip" >&2; }

# llama.cpp's own C++ server, for the llama-server engine's tests: built from the llama.cpp
# sources inside the llama-cpp-python sdist (the venv's version), ~9 min on 2 cores, tried once.
# If it cannot be built, those tests skip and say why; the log is in .cache/llama-server/.
LLAMA_SERVER_DIR := .cache/llama-server
llama-server: $(LLAMA_SERVER_DIR)/.tried

$(LLAMA_SERVER_DIR)/.tried: | $(STAMP)
	@mkdir -p $(LLAMA_SERVER_DIR)
	@cd $(LLAMA_SERVER_DIR) && { \
		V=$$(../../$(BIN)/python -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))") && \
		../../$(BIN)/pip download -q --no-deps --no-binary :all: "llama-cpp-python==$$V" -d src && \
		tar xzf src/llama_cpp_python-$$V.tar.gz -C src && \
		cmake -S src/llama_cpp_python-$$V/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
			-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
			-DGGML_NATIVE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
			-DBUILD_SHARED_LIBS=OFF && \
		cmake --build build --target llama-server -j$$(nproc) && cp build/bin/llama-server . ; \
	} >build.log 2>&1 || echo "make: could not build llama-server (see $(LLAMA_SERVER_DIR)/build.log); its tests will skip" >&2
	@touch $@

# The gates that cost seconds, run first by `make test` (and so by CI, .ci/run): lint, layout, types.
LINTED := server training
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy --strict $(LINTED)

# Podman and a Debian 12 base image made here (no registry needed), for the test that builds and
# runs the shipped image: installed and made once (~3 min); if that fails, the test skips and says why.
IMAGE_BASE_DIR := .cache/image-base
image-base: $(IMAGE_BASE_DIR)/.tried

$(IMAGE_BASE_DIR)/.tried:
	@mkdir -p $(IMAGE_BASE_DIR)
	@{ SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo -n"; \
		for c in podman runc debootstrap; do command -v $$c >/dev/null 2>&1 || MISSING=1; done; \
		{ [ -z "$$MISSING" ] || { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			$$SUDO apt-get install -y -qq podman runc debootstrap; }; } && \
		{ podman image exists localhost/callgate-base:bookworm || $$SUDO sh deploy/build-local-base.sh; }; \
	} >$(IMAGE_BASE_DIR)/build.log 2>&1 || echo "make: could not make the local base image (see $(IMAGE_BASE_DIR)/build.log); the image test will skip" >&2
	@touch $@

test: $(STAMP) lint prometheus llama-server image-base
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Every bench script, each rewriting its own section of docs/benchmarks.md (long: an hour or more).
bench: $(STAMP) llama-server
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --write || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
