# Two commands on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench install nginx lua etcd prometheus chromium wrk clean

demo: install
	$(PY) -m lbsplit.demo

# Three workers on two cores: most of a test's time is spent waiting for nginx, etcd or a browser.
test: install lua etcd prometheus chromium
	$(PY) -m pytest -q -n 3

test-slow: install lua etcd prometheus chromium
	$(PY) -m pytest -q -m slow

bench: install wrk
	$(PY) -m benchmarks.run

# Byte-compiled once here: the tests start lbsplit as a command again and again, and where
# PYTHONDONTWRITEBYTECODE is set (as on fresh CI machines) each start would compile lbsplit from source
# again (0.1 s a start). Python checks each .pyc against its source, so an edit is never served stale.
install: nginx $(STAMP)
	@$(PY) -m compileall -q lbsplit

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# nginx from Debian's packages when it is missing (the tests and the demo run their own
# private nginx on loopback; the system service is not used).
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || $(MAKE) --no-print-directory apt PACKAGES=nginx-light

# Debian's nginx lua module, for the tests of the lua split and the zero-reload runtime.
lua: nginx
	@test -f /usr/lib/nginx/modules/ngx_http_lua_module.so || $(MAKE) --no-print-directory apt PACKAGES=libnginx-mod-http-lua

# Debian's etcd, for the tests of the fleet's etcd store (the tests start their own node on loopback).
etcd:
	@command -v etcd >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGES=etcd-server
	@command -v openssl >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGES=openssl  # the TLS etcd test's certificates
	@command -v faketime >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGES=faketime  # the skewed-clock operator

# Debian's Prometheus, for the tests of the prometheus health source (they start their own on loopback).
prometheus:
	@command -v prometheus >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGES=prometheus

# Debian's Chromium, for the dashboard's test in a real headless browser.
chromium:
	@command -v chromium >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGES=chromium

wrk:
	@command -v wrk >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PACKAGES=wrk

apt:
	@echo "installing $(PACKAGES) from Debian's packages"
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PACKAGES) >/dev/null

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
