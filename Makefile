# Bayledger developer commands. Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

SEEDS ?= 1000
N ?= 1000000
DURATION ?= 120

.PHONY: venv test sim bench bench-storage testnet testnet-down testnet-status clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

sim: $(STAMP)
	$(PY) -m consensus.sim --seeds 0..$$(($(SEEDS)-1))

bench-storage: $(STAMP)
	N=$(N) $(PY) -m storage.bench

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	DURATION=$(DURATION) $(PY) -m testnet.bench

testnet: $(STAMP)
	$(PY) -m testnet up

testnet-down: $(STAMP)
	$(PY) -m testnet down

testnet-status: $(STAMP)
	$(PY) -m testnet status

clean:
	rm -rf $(VENV) build *.egg-info testnet/.run
