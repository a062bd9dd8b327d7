# TILscope: `make run` starts the app, `make test` runs the whole suite (installing what it needs).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
SYSTEM_PACKAGES := chromium poppler-utils postgresql
PORT ?= 8501

.PHONY: run test install install-dev system-deps bench samples

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# glibc malloc settings of core/allocator.py (ENVIRONMENT), from the server's start so that its
# worker threads share the tuned heap: CPU inference on large tiles about twice as fast.
MALLOC_ENV := MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824

run: $(VENV)/.installed
	$(MALLOC_ENV) $(VENV)/bin/streamlit run app.py --server.port $(PORT)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: $(VENV)/.installed-dev system-deps
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_cd3_detection.py

samples: $(VENV)/.installed
	PYTHONPATH=. $(PY) scripts/make_samples.py
