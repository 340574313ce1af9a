# The two commands a fresh clone needs: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | sha1sum | cut -c1-12)
# Sharded code is tested on 8 fake CPU devices.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1

.PHONY: demo test test-fast lint venv clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,torch,cloud,ray,tpu]'
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra tests

# The unit tier (markers in pytest.ini): what to run while editing; `make test` stays the full suite and CI.
FAST := not slow and not subprocess and not torch and not browser
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -ra -m "$(FAST)" tests

# ruff.toml holds the rules; .ci/run runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(TEST_ENV) $(PY) -m exif_jax.demo --out demo_out $(DEMO_ARGS)

clean:
	rm -rf demo_out .pytest_cache
