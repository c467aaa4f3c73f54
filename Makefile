# One-command set-up: every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint serve clean vendor-echarts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so no dependency can pull a CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	bash tests/ensure_services.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

serve: $(STAMP)
	$(BIN)/scribbleflow serve --host 127.0.0.1 --port 8000

# Re-vendor the dashboard's chart library from npm (CI needs no npm: the file is committed)
# and check it against the pinned digest in server/static/vendor/SHA256SUMS.
ECHARTS_VERSION := 6.1.0
VENDOR_DIR := server/static/vendor
vendor-echarts:
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent echarts@$(ECHARTS_VERSION) >/dev/null \
	  && tar xzf echarts-$(ECHARTS_VERSION).tgz) \
	  && cp $$tmp/package/dist/echarts.min.js $(VENDOR_DIR)/echarts.min.js \
	  && cp $$tmp/package/LICENSE $(VENDOR_DIR)/LICENSE-echarts \
	  && cp $$tmp/package/NOTICE $(VENDOR_DIR)/NOTICE-echarts \
	  && cp $$tmp/package/licenses/LICENSE-d3 $(VENDOR_DIR)/LICENSE-d3; \
	status=$$?; rm -rf $$tmp; exit $$status
	cd $(VENDOR_DIR) && sha256sum -c SHA256SUMS

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .venv-monailabel .venv-monailabel.lock  # the last: tests/monailabel/venv.py
