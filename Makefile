# One entry point for a fresh machine: `make test` installs what it needs, then runs the suite;
# `make mount` installs only what a mount needs.
VENV := .venv
PY := $(VENV)/bin/python
# What the mount needs: FUSE and what builds pyfuse3; `attr` gives getfattr for its facts.
MOUNT_DEB_PACKAGES := fuse3 libfuse3-dev pkg-config attr
# Servers and tools the tests use on top of that; chromium and its driver for the browser
# tests of `artfs ui` (selenium drives them offline).
TEST_DEB_PACKAGES := nginx rsync fio chromium chromium-driver
# Peers the benchmarks compare against; not needed by the tests.
BENCH_DEB_PACKAGES := rclone s3fs
MOUNT_STAMP := $(VENV)/.installed-mount
STAMP := $(VENV)/.installed
MOUNTPOINT := $(HOME)/artifacts

.PHONY: install test mount umount bench lint clean

# Install missing Debian packages among $(1), saying which.
define deb_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "==> installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

install: $(STAMP)

$(MOUNT_STAMP): pyproject.toml
	$(call deb_install,$(MOUNT_DEB_PACKAGES))
	@test -x $(PY) || { echo "==> creating $(VENV)"; python3.11 -m venv $(VENV); }
	@echo "==> installing artfs and its dependencies into $(VENV) (a minute or two)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install --progress-bar on -e .
	@touch $(MOUNT_STAMP)

$(STAMP): $(MOUNT_STAMP)
	$(call deb_install,$(TEST_DEB_PACKAGES))
	@echo "==> installing the test tools into $(VENV)"
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: install
	$(VENV)/bin/ruff check artfs sdk tests bench
	$(VENV)/bin/pytest

mount: $(MOUNT_STAMP)
	@mkdir -p $(MOUNTPOINT)
	@$(VENV)/bin/artfs mount $(MOUNTPOINT)
	@echo "unmount with \`make umount\` or \`$(VENV)/bin/artfs umount $(MOUNTPOINT)\`"

umount:
	@$(VENV)/bin/artfs umount $(MOUNTPOINT)

bench: install
	$(call deb_install,$(BENCH_DEB_PACKAGES))
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check artfs sdk tests bench

clean:
	rm -rf $(VENV) .pytest_cache
