# lbm-gateway developer entry points. `make run` and `make test` work on a fresh Debian machine
# with Python 3.11: each sets up what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ./lbm-data
PYTEST_ARGS ?=

.PHONY: venv run test asan lint bench clean-venv

$(BIN)/lbm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# build the capture path's C helpers now, not later inside a hardened unit
	$(BIN)/python -m capture.native.build
	# byte-compile now: under a hardened unit (read-only tree) or PYTHONDONTWRITEBYTECODE every
	# start would compile each module again (about 0.1 s of an `lbm` command's start-up)
	$(BIN)/python -m compileall -q appliance addons capture store
	@touch $(BIN)/lbm

venv: $(BIN)/lbm

# The appliance's main job on the embedded default: local data dir, loopback ports, no external
# services. Ctrl-C stops every daemon.
run: venv
	$(BIN)/lbm --data-dir $(DATA) init
	$(BIN)/lbm --data-dir $(DATA) run

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The capture path's C helpers rebuilt under AddressSanitizer + UndefinedBehaviorSanitizer (in
# their own cache dir, <venv>/var/lbm-capture-asan; the normal build is untouched), then the
# capture property and corpus tests run with them. Python is not built with ASan, so the ASan
# runtime is preloaded; CPython keeps objects until exit by design, so leak reports are off.
# Any sanitizer report ends the test process (UBSan: halt_on_error, -fno-sanitize-recover).
ASAN_TESTS ?= tests/capture/test_capture_asan.py tests/capture/test_capture_reader.py \
	tests/capture/test_capture_reader_oversize.py tests/capture/test_capture_decode.py \
	tests/capture/test_capture_dnsscan.py tests/capture/test_capture_appmeta.py \
	tests/capture/test_capture_malformed.py tests/capture/test_capture_flows.py \
	tests/capture/test_capture_vlan.py tests/capture/test_capture_zeek_agreement.py \
	tests/capture/test_capture_fastdecode.py tests/capture/test_capture_prod_records.py \
	tests/capture/test_capture_cons_passes.py tests/capture/test_capture_cons_dns.py \
	tests/capture/test_capture_mapped.py
CC_FOR_ASAN ?= gcc

asan: venv
	@libasan=$$($(CC_FOR_ASAN) -print-file-name=libasan.so); \
	libubsan=$$($(CC_FOR_ASAN) -print-file-name=libubsan.so); \
	for lib in "$$libasan" "$$libubsan"; do \
	  case "$$lib" in /*) ;; *) echo "make asan: $$lib not found: install gcc (build-essential)" >&2; exit 1;; esac; \
	done; \
	export LBM_CAPTURE_SANITIZE=1 LD_PRELOAD="$$libasan $$libubsan" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1; \
	set -x; $(BIN)/python -m capture.native.build && $(BIN)/pytest -q -p no:cacheprovider $(ASAN_TESTS)

# The benchmarks. bench_capture compares with nfstream (the [bench] extra, pinned) and libpcap's
# bare read (tcpdump, installed here as root; tshark comes with .ci/run's packages).
BENCH_APT ?= tcpdump tshark
BASELINE_VENV ?= .venv-baselines
bench: venv
	@for t in $(BENCH_APT); do command -v $$t >/dev/null && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq --no-install-recommends $$t || \
	      { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$t; } || \
	      { echo "make bench: could not install $$t with apt-get" >&2; exit 1; }; \
	  else echo "make bench: $$t is missing: install it (apt-get install $$t) or run as root" >&2; exit 1; fi; \
	done
	# the baselines (nfstream, pinned in constraints.txt) live in a venv of their own: nfstream
	# brings pandas, and pyarrow imports pandas whenever it is installed (0.15 s of every lbm
	# command), which the appliance's own install never has
	test -x $(BASELINE_VENV)/bin/python || $(PY) -m venv $(BASELINE_VENV)
	$(BASELINE_VENV)/bin/pip install -q -c constraints.txt nfstream
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
