# Two commands set up and run everything on a fresh machine:
#   make quickstart   # install into .venv, train + decode + score a Difformer on the shipped Multi30k sample
#   make test         # install into .venv, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, so that nothing pulls a different build; fairseq's source build is pinned to it too (its version read
# from the installed metadata: importing torch before numpy is installed prints "Failed to initialize NumPy").
TORCH ?= torch==2.13.0
BUDGET ?= 16
# test workers (pytest-xdist): one per core; every CLI the tests start runs on one thread
TEST_WORKERS ?= auto

.PHONY: install quickstart test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -c "from importlib.metadata import version; print('torch==' + version('torch').split('+')[0])" > $(VENV)/constraints.txt
	PIP_CONSTRAINT=$(CURDIR)/$(VENV)/constraints.txt $(PY) -m pip install --quiet -e ".[test,eval,bert]"
	touch $@

quickstart: install
	$(PY) examples/quickstart.py --budget $(BUDGET)

test: install
	$(PY) -m pytest tests -q -n $(TEST_WORKERS)

test-fast: install
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) -m "not slow"

clean:
	rm -rf runs
