# make test   create .venv if missing, install the project, run the sync gate, pytest and nbval
# make book   build the Jupyter Book into book/_build/html (added by the book work)
# make check-runs   verify the recorded runs in runs/; make runs [RUN=name]   train them again and record them
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,book,timm
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv export sync-check pytest nbval nbval-portable check-runs runs rekey test bench clean book book-test exercises

venv: $(STAMP)

# Reinstall whenever the project's metadata changes.
$(STAMP): pyproject.toml
	@echo "== installing neural-stack[$(EXTRAS)] into $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

export: venv
	$(BIN)/nbdev-export

# The learner's version of every chapter: exercises/NN_topic.ipynb is nbs/NN_topic.ipynb without its
# `solution` cells and outputs (tools/exercises.py).
exercises: venv
	$(BIN)/python tools/exercises.py

# Notebooks are the source: exporting, cleaning and writing exercises/ from them must not change any file,
# and ruff's formatting (pyproject.toml [tool.ruff]) must already hold for every notebook, test and tool.
sync-check: venv
	@echo "== sync gate: ruff format --check, then nbdev-export, nbdev-clean and tools/exercises.py must change nothing"
	@$(BIN)/ruff format --check . || { \
	  echo "sync gate FAILED: the files above are not formatted as ruff formats them."; \
	  echo "Fix: run '$(BIN)/ruff format .', review 'git diff', commit."; \
	  exit 1; }
	@before="$$(git status --porcelain=v1 --untracked-files=all; git diff)"; \
	$(BIN)/nbdev-export; $(BIN)/nbdev-clean; $(BIN)/python tools/exercises.py; \
	after="$$(git status --porcelain=v1 --untracked-files=all; git diff)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "sync gate FAILED: the package, the notebooks or exercises/ are out of sync. Changed:"; \
	  diff <(echo "$$before") <(echo "$$after") || true; \
	  echo "Fix: run 'make export', '$(BIN)/nbdev-clean' and 'make exercises', review 'git diff', commit."; \
	  exit 1; \
	fi; echo "sync gate passed"

# Two workers on one thread each: two processes of two OpenMP threads each on two cores spin-wait for
# each other's cores, which made this step five times slower.
pytest: venv
	@echo "== pytest tests/, two at a time (the browser test of the book runs in book-test, after the book is built)"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest tests/ --ignore=tests/test_book.py -n 2 --dist worksteal --durations=15

# Strict nbval: every cell re-executed and its outputs compared. Rounding errors compare by the bound the
# chapter asserts (tests/nbval_sanitize.cfg); everything else digit for digit.
NBVAL := $(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg nbs/

# Two chapters at a time, each on PyTorch's default threads: OpenMP threads that sleep while they wait
# (OMP_WAIT_POLICY=PASSIVE) leave the cores to the other chapter instead of spinning on them.
nbval: venv
	@echo "== pytest --nbval nbs/ (strict output comparison), two chapters at a time"
	OMP_WAIT_POLICY=PASSIVE $(NBVAL) -n 2 --dist loadfile --junitxml=$(NBVAL_REPORT) --durations=10

# The same chapters under a second CPU profile, one thread and generic (non-vectorised) kernels: an output
# that holds only on the machine that wrote it fails here, not on a learner's laptop or in Colab.
nbval-portable: venv
	@echo "== pytest --nbval nbs/ under OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default, two chapters at a time"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default $(NBVAL) -q -n 2 --dist loadfile

# The course book: nbs/ and course_docs/, configured in book/, built from the repository root so that
# Sphinx sees both source folders; warnings are errors. Notebooks are rendered with their stored,
# nbval-verified outputs (execute_notebooks: off); book/execution.md shows the last nbval run's times.
BOOK_FLAGS := --config book/_config.yml --toc book/_toc.yml --path-output book -W -n --keep-going
NBVAL_REPORT := book/_build/nbval-report.xml

book: venv
	@echo "== jupyter-book build -> book/_build/html (warnings are errors)"
	$(BIN)/jupyter-book build . $(BOOK_FLAGS)

# Headless Chromium over every page of the built book (skips with a message where Chromium is missing).
book-test: book
	@echo "== browser test of book/_build/html"
	$(BIN)/python -m pytest tests/test_book.py -n 2

# The recorded runs in runs/ that the chapters read (chapter 13, recorded runs). check-runs: every record's
# code fingerprint is current, and the first epoch of one seed of each run (RunRecords.sample) re-trains to
# its record within TOLERANCE, on this CPU's kernels and on the portable profile's. runs: train records again and record them anew, all
# of them or RUN (a record or a folder of records, e.g. RUN=positions); then commit runs/.
# The two profiles re-train on one thread each, so they run side by side, one a core.
check-runs: venv
	@echo "== neural-stack runs check on this CPU's kernels and, beside it, under the portable profile"
	@logs="$$(mktemp -d)"; native=0; portable=0; \
	$(BIN)/neural-stack runs check > "$$logs/native" 2>&1 & pid=$$!; \
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default \
	  $(BIN)/neural-stack runs check > "$$logs/portable" 2>&1 || portable=$$?; \
	wait $$pid || native=$$?; \
	echo "-- this CPU's kernels (exit $$native):"; cat "$$logs/native"; \
	echo "-- portable profile, OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default (exit $$portable):"; \
	cat "$$logs/portable"; rm -rf "$$logs"; \
	test $$native -eq 0 && test $$portable -eq 0

runs: venv
	$(BIN)/neural-stack runs rebuild $(RUN)

# After a change to fingerprinted code that should change no result: rebuild one seed of each stale run and,
# where it comes out bit for bit unchanged, give the run's other seeds the current fingerprint (chapter 13).
rekey: venv
	$(BIN)/neural-stack runs rekey $(RUN)

# Every step, timed: the slowest are listed at the end (tools/steps.py; STEPS_REPORT=FILE keeps them as JSON).
STEPS := venv sync-check check-runs pytest nbval nbval-portable book-test
test:
	@$(PYTHON) tools/steps.py $(if $(STEPS_REPORT),--report $(STEPS_REPORT)) $(STEPS)

bench: venv
	$(BIN)/python bench/attention.py
	$(BIN)/python bench/vit.py
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/epoch_profile.py
	$(BIN)/python bench/threads.py
	$(BIN)/python bench/compile.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
