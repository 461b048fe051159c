# The two commands: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The browser runtime for `belka export web` (docs/client.md): onnxruntime-web from the npm
# registry at a pinned version, fetched once with `npm pack`; only its wasm-only files are kept.
ORT_WEB_VERSION := 1.30.0
ORT_WEB   := .cache/onnxruntime-web/$(ORT_WEB_VERSION)
ORT_STAMP := $(ORT_WEB)/.installed
ORT_FILES := ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm

.PHONY: run test bench clean web-runtime

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned in pyproject.toml (torch==2.13.0, the CPU build); never a bare `torch`.
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(ORT_STAMP):
	rm -rf $(ORT_WEB) && mkdir -p $(ORT_WEB)
	cd $(ORT_WEB) && npm pack --silent onnxruntime-web@$(ORT_WEB_VERSION) >/dev/null
	tar -xzf $(ORT_WEB)/onnxruntime-web-$(ORT_WEB_VERSION).tgz -C $(ORT_WEB) --strip-components=2 \
		$(addprefix package/dist/,$(ORT_FILES))
	tar -xzf $(ORT_WEB)/onnxruntime-web-$(ORT_WEB_VERSION).tgz -C $(ORT_WEB) --strip-components=1 \
		package/package.json
	rm -f $(ORT_WEB)/onnxruntime-web-$(ORT_WEB_VERSION).tgz
	touch $@

web-runtime: $(ORT_STAMP)

run: $(STAMP) $(ORT_STAMP)
	$(VENV)/bin/belka demo -o belka-demo
	@echo "starting the web app on http://127.0.0.1:8000/ (Ctrl-C stops)"
	$(VENV)/bin/belka serve --host 127.0.0.1 --port 8000 --data belka-data

test: $(STAMP) $(ORT_STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) belka-demo belka-data .pytest_cache .cache/onnxruntime-web
