# The README's two commands: `make run` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml client/pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install browser promtool dciodvfy dcmtk orthanc run test fuzz lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[worker,dev]' -e ./client
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(BIN)/glimpse run

test: install browser promtool dciodvfy dcmtk orthanc
	$(BIN)/python -m pytest -q

# Schemathesis at depth: 400 generated cases per operation (over 5,000 in all), against a real
# stack; not part of `make test`, which runs the same module with 25.
fuzz: install
	GLIMPSE_FUZZ_EXAMPLES=400 $(BIN)/python -m pytest -q -rP tests/integration/test_fuzz_api.py

# The demo-page test drives Debian's Chromium; installed here when missing (as root, or by sudo).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the demo-page test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || { \
	    $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

# The alerting rules' test runs promtool, which Debian's prometheus package carries.
promtool:
	@command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus for promtool (the alerting rules' test)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q prometheus >/dev/null 2>&1 || { \
	    $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q prometheus >/dev/null; }; }

# The derived DICOM objects' test checks them with dciodvfy, which Debian's dicom3tools carries.
dciodvfy:
	@command -v dciodvfy >/dev/null || { \
	  echo "installing Debian's dicom3tools for dciodvfy (the derived DICOM objects' test)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q dicom3tools >/dev/null 2>&1 || { \
	    $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q dicom3tools >/dev/null; }; }

# The DICOM decoding tests write JPEG-compressed files with DCMTK's dcmcjpeg.
dcmtk:
	@command -v dcmcjpeg >/dev/null || { \
	  echo "installing Debian's dcmtk for dcmcjpeg (the DICOM decoding tests)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q dcmtk >/dev/null 2>&1 || { \
	    $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q dcmtk >/dev/null; }; }

# The DICOMweb test runs a private Orthanc with its DICOMweb plugin, Debian's orthanc and
# orthanc-dicomweb packages.
orthanc:
	@command -v Orthanc >/dev/null && dpkg -s orthanc-dicomweb >/dev/null 2>&1 || { \
	  echo "installing Debian's orthanc and orthanc-dicomweb for the DICOMweb test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null 2>&1 || { \
	    $$SUDO apt-get update -q >/dev/null && \
	    $$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null; }; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas service workers client/glimpse_client

# The side-by-side suite first (docs/benchmarks.md, "Side by side"). The scripts that import the
# bench package run as modules, from the repository root.
bench: install
	$(BIN)/python -m bench.side_by_side
	$(BIN)/python bench/latency.py
	$(BIN)/python -m bench.shared_passes --model resnet50
	$(BIN)/python -m bench.shared_passes --model densenet121
	$(BIN)/python -m bench.precision
	$(BIN)/python -m bench.torchserve_peer

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
