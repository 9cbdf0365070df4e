# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test system-deps lint bench golden clean

$(STAMP): pyproject.toml tools/install-python.sh
	# The one install recipe (the Dockerfile runs it too): venv, torch pinned where none is present, the project.
	PYTHON=$(PYTHON) tools/install-python.sh --dev $(VENV)
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lfm-audio serve

# System packages first (installed as root, else the command to run), before minutes of pip.
test: system-deps $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

system-deps:
	@tools/system-deps.sh

bench: $(STAMP)
	$(BIN)/python -m bench

golden: $(STAMP)
	tools/golden/regenerate.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The committed load test report (docs/loadtests: report.json, report.md, PNGs): a fresh `serve --max-sessions N`
# per N, the issue #9 scenario. Run it on an otherwise idle machine: other work skews every figure.
LOADTEST_USERS ?= 1,2,4,8,16,24,32,40,48
.PHONY: loadtest loadtest-full
loadtest: $(STAMP)
	$(BIN)/python -m loadtests sweep --users $(LOADTEST_USERS) --keep-going --out docs/loadtests

# The other end: the full-size random checkpoint (written once under bench/out) in bfloat16, as far as it holds.
LOADTEST_FULL_USERS ?= 1,2
loadtest-full: $(STAMP)
	$(BIN)/python -c "from pathlib import Path; from bench.harness import checkpoint; checkpoint('full', Path('bench/out'))"
	$(BIN)/python -m loadtests sweep --users $(LOADTEST_FULL_USERS) --keep-going --out docs/loadtests/full-bf16 \
		--server-arg=--model --server-arg=bench/out/ckpt-full --server-arg=--dtype --server-arg=bfloat16

# The committed soak report (docs/soak: soak.json, soak.md): SOAK_MINUTES of sessions and turns against one server,
# its RSS, open file descriptors and threads sampled and their trend judged (loadtests/soak.py). Not in `make test`
# (tests/loadtests/test_soak.py runs a 2-minute version there).
SOAK_MINUTES ?= 20
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python -m loadtests soak --minutes $(SOAK_MINUTES) --out docs/soak
