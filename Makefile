# slimmer: `make demo` runs the main job on a real torch environment, `make test` passes the tests.
# Slow things (environments, built wheels, base images) are cached outside the repository, under
# $(CACHE), keyed by version, so a second run reuses them.

SHELL := /bin/bash
PYTHON ?= python3
CACHE ?= $(HOME)/.cache/slimmer-dev
TORCH_VERSION ?= 2.13.0
TORCH_ENV := $(CACHE)/envs/torch-$(TORCH_VERSION)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= /tmp/slimmer-demo

export SLIMMER_CACHE := $(CACHE)
export SLIMMER_TORCH_ENV := $(TORCH_ENV)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv envs demo test unit lint clean

help:
	@echo "make demo   - build a torch $(TORCH_VERSION) environment, slim a copy with --rules default, print the report"
	@echo "make test   - install what the tests need and run them"
	@echo "make unit   - the tests that need no tool, venv, torch environment or Docker engine"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make bench  - slimmer against the seed recipe on real environments (bench/RESULTS.md)"
	@echo "make family-env - build the PyG extension family from sdists (tests/test_family.py skips without it)"

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]' 2>&1 | grep -v "^WARNING: Location 'file:" || true
	$(PY) -c "import slimmer, lief, pathspec, humanize, click, docker, pytest"
	@# make lint runs these very binaries from the venv
	$(VENV)/bin/ruff --version >/dev/null && $(VENV)/bin/mypy --version >/dev/null
	@# the --gpu-arch tests run NVIDIA's cuobjdump from the test extras (nvidia-cuda-cuobjdump): check that very binary
	@tool=$$(ls $(VENV)/lib/python3*/site-packages/nvidia/cu13/bin/cuobjdump 2>/dev/null | head -1); \
	  if [ -z "$$tool" ] || ! "$$tool" --version >/dev/null; then \
	    echo "make venv: cuobjdump from nvidia-cuda-cuobjdump is missing or does not run" >&2; exit 1; fi
	touch $@

venv: $(VENV)/.done

$(TORCH_ENV)/.complete:
	PYTHON=$(PYTHON) fixtures/make_env.sh $(TORCH_ENV) torch==$(TORCH_VERSION)

envs: $(TORCH_ENV)/.complete

demo: venv envs
	rm -rf $(DEMO_DIR) && cp -a $(TORCH_ENV) $(DEMO_DIR)
	$(VENV)/bin/slimmer apply --rules default $(DEMO_DIR)
	$(DEMO_DIR)/bin/python fixtures/smoke.py

# ruff, and mypy --strict on slimmer/ ([tool.mypy] in pyproject.toml); `make test` runs it first.
lint: venv
	$(VENV)/bin/ruff check slimmer tests bench
	$(VENV)/bin/ruff format --check slimmer tests bench
	$(VENV)/bin/mypy

# The tests that need nothing but Python: no compiler or other tool, no venv, no engine (markers in pyproject.toml).
unit: venv
	$(PY) -m pytest -m "not torch and not docker and not slow and not tools and not venv"

test: venv envs bench-tools build-tools elf-fixtures libs-env data-env docker scatter-env
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache

# Benchmark (bench/run.py): slimmer against ../shared/bench/seed_recipe.sh on real environments.
#   make bench                                              all environments, 3 runs per variant
#   make bench BENCH_ENVS=torch-2.13.0 BENCH_ARGS="--repeat 1"
#   make bench BENCH_IMAGES=no                              without the image row (no engine needed)
BENCH_CUDA_VERSION := 2.14.1
BENCH_ENVS ?= torch-2.13.0,torch-$(BENCH_CUDA_VERSION),torch-2.13.0+scatter,torch-2.13.0+pyg-family
BENCH_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: bench bench-envs bench-tools

# GNU time for the peak memory of each run (`/usr/bin/time -v`)
bench-tools:
	@[ -x /usr/bin/time ] || $(SUDO) apt-get install -y -q time 2>/dev/null \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q time; }

# Builds only the environments BENCH_ENVS names: the CUDA one (5.4 GB: nvidia-* wheels, triton) with
# make_env.sh through `make envs`, the torch_scatter one through the scatter-env target where it exists.
bench-envs: envs
	@case ",$(BENCH_ENVS)," in *,torch-$(BENCH_CUDA_VERSION),*) \
	  $(MAKE) --no-print-directory envs TORCH_VERSION=$(BENCH_CUDA_VERSION);; esac
	@case ",$(BENCH_ENVS)," in *,torch-2.13.0+scatter,*) \
	  if grep -q '^scatter-env:' $(firstword $(MAKEFILE_LIST)); then $(MAKE) --no-print-directory scatter-env; \
	  else echo "bench: no scatter-env target in the Makefile: the torch_scatter environment is skipped"; fi;; esac
	@case ",$(BENCH_ENVS)," in *,torch-2.13.0+pyg-family,*) $(MAKE) --no-print-directory family-env;; esac

# The image row (bench/images.py) needs the engine and base image (make docker) and the torch_scatter wheel.
BENCH_IMAGES ?= yes
bench: venv bench-tools bench-envs $(if $(filter yes,$(BENCH_IMAGES)),docker scatter-env)
	$(PY) bench/run.py --envs $(BENCH_ENVS) $(if $(filter yes,$(BENCH_IMAGES)),,--no-images) $(BENCH_ARGS)

# ELF fixtures (fixtures/elf/build.sh: gcc -g library and executable, a patchelf-rewritten library,
# an nvcc library for sm_80 and sm_90 when nvcc exists, damaged and odd files), keyed by a hash of
# their sources; and a venv of manylinux wheels whose vendored libraries auditwheel patched.
ELF_FIXTURES := $(CACHE)/elf-fixtures-$(shell cat fixtures/elf/build.sh fixtures/elf/*.c fixtures/elf/*.cu | sha256sum | cut -c1-12)
LIBS_PINS := numpy==2.4.6 scipy==1.17.1 pillow==13.0.0 opencv-python-headless==5.0.0.93
LIBS_ENV := $(CACHE)/envs/manylinux-libs-$(shell echo $(LIBS_PINS) | sha256sum | cut -c1-8)
export SLIMMER_ELF_FIXTURES := $(ELF_FIXTURES)
export SLIMMER_LIBS_ENV := $(LIBS_ENV)
# Used by the CUDA test when it exists; `make test` does not build it (5.4 GB).
export SLIMMER_TORCH_CUDA_ENV := $(CACHE)/envs/torch-2.14.1

.PHONY: elf-fixtures libs-env

# The binaries the fixtures and the tests run themselves (patchelf, strip, readelf, objcopy, gcc, g++), checked
# on every run, not only when a cached fixture is built: a cache can outlive an install.
.PHONY: build-tools
build-tools:
	@command -v patchelf >/dev/null && command -v strip >/dev/null && command -v readelf >/dev/null \
	  && command -v objcopy >/dev/null && command -v gcc >/dev/null && command -v g++ >/dev/null \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q patchelf binutils gcc g++; }

$(ELF_FIXTURES)/.complete: fixtures/elf/build.sh | build-tools
	fixtures/elf/build.sh $(ELF_FIXTURES)

elf-fixtures: $(ELF_FIXTURES)/.complete

$(LIBS_ENV)/.complete:
	PYTHON=$(PYTHON) fixtures/make_env.sh $(LIBS_ENV) $(LIBS_PINS)

libs-env: $(LIBS_ENV)/.complete

# Real packages that read their own data files at run time (tests/test_protect_data_real.py): scikit-learn's
# dataset loaders read descr/*.rst through importlib.resources, towncrier reads its templates/*.rst|md.
DATA_PINS := scikit-learn==1.9.1 towncrier==26.9.0
DATA_ENV := $(CACHE)/envs/data-readers-$(shell echo $(DATA_PINS) | sha256sum | cut -c1-8)
export SLIMMER_DATA_ENV := $(DATA_ENV)

.PHONY: data-env
$(DATA_ENV)/.complete:
	PYTHON=$(PYTHON) fixtures/make_env.sh $(DATA_ENV) $(DATA_PINS)

data-env: $(DATA_ENV)/.complete

# Docker engine and registry-free base images for the pipeline tests (tests/test_pipeline_docker.py):
# installs docker.io and debootstrap if missing, starts dockerd if no engine answers, debootstraps
# Debian $(DOCKER_SUITE) once into $(CACHE)/images and `docker import`s it as slimmer-base:$(DOCKER_SUITE).
DOCKER_SUITE ?= bookworm
export SLIMMER_DOCKER_BASE := slimmer-base:$(DOCKER_SUITE)

.PHONY: docker
docker:
	fixtures/docker_setup.sh $(CACHE) $(DOCKER_SUITE)

# torch_scatter built from its PyPI sdist against the CPU torch environment (tests/test_verify_torch.py,
# bench): the wheel is cached in $(CACHE)/wheels/torch-$(TORCH_VERSION), the environment (a copy of
# $(TORCH_ENV) with the wheel installed) in $(SCATTER_ENV). Compiling takes minutes on 2 cores.
SCATTER_VERSION ?= 2.1.2
SCATTER_ENV := $(CACHE)/envs/torch-$(TORCH_VERSION)-scatter-$(SCATTER_VERSION)
export SLIMMER_SCATTER_ENV := $(SCATTER_ENV)

.PHONY: scatter-env

$(SCATTER_ENV)/.complete: $(TORCH_ENV)/.complete fixtures/make_scatter_env.sh | build-tools
	MAX_JOBS=2 fixtures/make_scatter_env.sh $(TORCH_ENV) $(SCATTER_ENV) $(CACHE)/wheels/torch-$(TORCH_VERSION) $(SCATTER_VERSION)

scatter-env: $(SCATTER_ENV)/.complete

# The PyG extension family (tests/test_family.py, bench): torch_scatter, torch_sparse, torch_cluster and
# torch_spline_conv built from their PyPI sdists against the CPU torch environment (ninja,
# --no-build-isolation, MAX_JOBS from memory, ccache), wheels cached in $(CACHE)/wheels/torch-$(TORCH_VERSION),
# plus torch_geometric (and scipy, which torch_sparse imports) from PyPI. A cold build took 58 min wall
# (33 min CPU) on a busy 2-core machine, a warm one (wheel hits) 55 s, so `make test` does not build it: tests/test_family.py skips, saying
# so, until `make family-env` (or `make bench`) has run. pyg_lib has no sdist on PyPI: it is not built.
FAMILY_SDISTS := torch_scatter==$(SCATTER_VERSION) torch_sparse==0.6.18 torch_cluster==1.6.3 torch_spline_conv==1.2.2
FAMILY_PYPI := torch_geometric==2.8.1 scipy==1.17.1
FAMILY_ENV := $(CACHE)/envs/torch-$(TORCH_VERSION)-pyg-family-$(shell echo $(FAMILY_SDISTS) $(FAMILY_PYPI) | sha256sum | cut -c1-8)
export SLIMMER_FAMILY_ENV := $(FAMILY_ENV)

.PHONY: family-env

$(FAMILY_ENV)/.complete: $(TORCH_ENV)/.complete fixtures/make_family_env.sh | build-tools
	@# make_family_env.sh uses ccache's compiler links in /usr/lib/ccache only when they exist: check those
	@[ -x /usr/lib/ccache/g++ ] || $(SUDO) apt-get install -y -q ccache \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q ccache; } \
	  || echo "family-env: ccache could not be installed, building without it"
	fixtures/make_family_env.sh $(TORCH_ENV) $(FAMILY_ENV) $(CACHE)/wheels/torch-$(TORCH_VERSION) \
	  $(FAMILY_SDISTS) -- $(FAMILY_PYPI)

family-env: venv envs $(FAMILY_ENV)/.complete
