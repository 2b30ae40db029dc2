# The README's two commands: `make demo` (main job on built-in data) and `make test` (the test suite).
# Both install what they need first (once; again when pyproject.toml or the install script changes).
PYTHON ?= python3

.PHONY: install demo test bench
install: .install.stamp

.install.stamp: pyproject.toml Utilities/install.sh
	bash Utilities/install.sh
	touch $@

demo: install
	rtrai demo -o demo-output

# The linter first (settings in pyproject.toml's [tool.ruff]): a minute of pytest is not spent on code ruff refuses.
test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

bench: install
	for script in benchmarks/bench_*.py; do $(PYTHON) $$script || exit 1; done
