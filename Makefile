# medfl: `make demo` and `make test` set everything up (through `make install`) and run.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; GPU users pass their own, e.g. make install TORCH="torch==2.13.0"
# together with PIP_EXTRA_INDEX_URL pointing at the CUDA wheel index of their choice.
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: install system-deps demo test bench fuzz bundle deb clean

# System packages the PACS tests need (Orthanc and DCMTK) and the status page's browser test (Chromium);
# installed when running as root.
system-deps:
	@if ! command -v Orthanc >/dev/null || [ ! -x /usr/bin/storescu ] || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc dcmtk chromium >/dev/null; \
	  else echo "note: install Debian's orthanc, dcmtk and chromium (sudo apt-get install orthanc dcmtk chromium) to run the PACS and status-page tests"; fi; \
	fi

install:
	@if [ ! -x $(BIN)/python ]; then \
	  $(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	    else echo "error: '$(PYTHON) -m venv' failed; install python3-venv (sudo apt-get install python3-venv)"; exit 1; fi; }; \
	fi
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q pybind11 cmake ninja
	$(PIP) install -q --no-build-isolation -e ".[test,bundle,sim]"
	@$(BIN)/python -c "import medfl._native as n; print('medfl._native built:', n.build_info())"

demo: install
	$(BIN)/medfl demo --json demo-out/summary.json

test: install system-deps
	$(BIN)/ruff check medfl agent coordinator apps tests benchmarks installer
	$(BIN)/mypy medfl agent coordinator apps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/fixed_point.py --json benchmarks/results/fixed_point.json
	$(PIP) install -q --no-build-isolation -e ".[bench]"
	$(BIN)/python benchmarks/dp_step.py --model cnn --batch 32 --image 128
	$(BIN)/python benchmarks/dp_step.py --model resnet18 --batch 16 --image 224

# Coverage-guided fuzzing of every decoder, longer than CI's 60 s (benchmarks/fuzz/run.py; 1 on a crash)
FUZZ_SECONDS ?= 300
fuzz: install
	$(BIN)/python benchmarks/fuzz/run.py --seconds $(FUZZ_SECONDS) --out fuzz-out --json fuzz-out/results.json

# One-folder PyInstaller bundle holding medfl-agent and medfl-coordinator (no Python needed on the target)
bundle: install
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath build/bundle/dist --workpath build/bundle/work \
	  installer/bundle/medfl.spec
	@du -sh build/bundle/dist/medfl

# Debian packages medfl-agent and medfl-coordinator from the bundle, in dist/deb/
deb: bundle
	$(BIN)/python installer/deb/build_deb.py --bundle build/bundle/dist/medfl --out dist/deb

clean:
	rm -rf build dist *.egg-info demo-out fuzz-out medfl/_native*.so
