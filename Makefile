# Bayledger developer commands. Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

SEEDS ?= 1000
N ?= 1000000
DURATION ?= 120
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := handshake-frame peer-frame consensus-message entry rpc-request signed-query proof genesis msgpack

.PHONY: venv test fuzz sim bench bench-storage testnet testnet-down testnet-status clean

# Quiet unless it fails: pip's output goes to $(VENV)/install.log, and its end is shown on failure.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing bayledger and its test tools into $(VENV) (log: $(VENV)/install.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[test]'; } > $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "make: installing into $(VENV) failed; the whole log is $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

# make test [TEST_WORKERS=N]: the tests without real validator processes on N workers (default: one per
# core; pytest-xdist), then the `slow` ones alone, since each testnet of four or seven daemons needs
# every core. Both parts always run; make fails if either did.
TEST_WORKERS ?= auto
test: $(STAMP)
	@$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) -m "not slow" tests; parallel=$$?; \
	  $(PY) -m pytest -q -p no:cacheprovider -m slow tests; alone=$$?; \
	  echo "make test: in parallel exit $$parallel, the slow tests alone exit $$alone"; \
	  test $$parallel -eq 0 -a $$alone -eq 0

# Coverage-guided fuzzing (atheris) of every decoder of outside bytes, FUZZ_SECONDS each; corpora
# and logs are kept in build/fuzz/ so the next run starts where this one stopped.
fuzz: $(STAMP)
	@mkdir -p build/fuzz
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz $$target: $(FUZZ_SECONDS) s (log build/fuzz/$$target.log)"; \
	  $(PY) -m tests.fuzz.run $$target --seconds $(FUZZ_SECONDS) --corpus build/fuzz/$$target \
	    > build/fuzz/$$target.log 2>&1 || { tail -n 60 build/fuzz/$$target.log; echo "fuzz $$target: FINDING"; exit 1; }; \
	  grep -h "stat::number_of_executed_units" build/fuzz/$$target.log; \
	done

sim: $(STAMP)
	$(PY) -m consensus.sim --seeds 0..$$(($(SEEDS)-1))

bench-storage: $(STAMP)
	N=$(N) $(PY) -m storage.bench

# make bench [DURATION=S] [LINK_DELAY_MS=D] [LINK_LOSS=P]: D and P go through the link proxy (docs/TESTNET.md).
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	DURATION=$(DURATION) $(PY) -m testnet.bench $(if $(LINK_DELAY_MS),--link-delay-ms $(LINK_DELAY_MS)) $(if $(LINK_LOSS),--link-loss $(LINK_LOSS))

# make testnet [VALIDATORS=4|7|10] [BASE_PORT=P]: both only for a new network (see python -m testnet up --help).
testnet: $(STAMP)
	$(PY) -m testnet up $(if $(VALIDATORS),--validators $(VALIDATORS)) $(if $(BASE_PORT),--base-port $(BASE_PORT))

testnet-down: $(STAMP)
	$(PY) -m testnet down

testnet-status: $(STAMP)
	$(PY) -m testnet status

clean:
	rm -rf $(VENV) build *.egg-info testnet/.run
