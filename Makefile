# The two commands: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in pyproject.toml (torch==2.13.0, the CPU build); never a bare `torch`.
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/belka demo -o belka-demo
	@echo "starting the web app on http://127.0.0.1:8000/ (Ctrl-C stops)"
	$(VENV)/bin/belka serve --host 127.0.0.1 --port 8000 --data belka-data

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) belka-demo belka-data .pytest_cache
