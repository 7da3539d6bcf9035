# One entry point for a fresh machine: `make test` installs what it needs, then runs the suite.
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config nginx rsync attr fio
# Peers the benchmarks compare against; not needed by the tests.
BENCH_DEB_PACKAGES := rclone s3fs
STAMP := $(VENV)/.installed

.PHONY: install test mount bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(VENV)/bin/ruff check artfs sdk tests bench
	$(VENV)/bin/pytest

mount: install
	mkdir -p $(HOME)/artifacts
	$(VENV)/bin/artfs mount $(HOME)/artifacts

bench: install
	@missing=""; for p in $(BENCH_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check artfs sdk tests bench

clean:
	rm -rf $(VENV) .pytest_cache
