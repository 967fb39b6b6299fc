# The two set-up commands of README.md: `make demo` and `make test`. Each builds .venv from
# scratch when it is missing: torch first, pinned (from TORCH_INDEX when set: a plain `torch`
# requirement on the public index pulls a multi-GB CUDA build), then the package with its test extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
# An index for the torch install alone, for a machine whose pip reaches only the public index (where
# `torch==...` is the multi-GB CUDA build): make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Empty (the default): torch comes from pip's configured index, like every other package.
TORCH_INDEX ?=

.PHONY: demo test chromium orthanc clean

$(STAMP): pyproject.toml setup.py infra/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/python -m pip install -q -c infra/constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/enrich-ray demo --out runs/demo

# Chromium renders report.html in the browser test; where it cannot be installed that test skips.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will skip"

# Orthanc with its DICOMweb plugin is the PACS of tests/integration/test_dicomweb.py (started there on a
# free port of 127.0.0.1); where it cannot be installed those tests skip. On a machine with systemd the
# package also starts its own service (ports 8042 and 4242), which the tests do not use.
orthanc:
	@test -x /usr/sbin/Orthanc -a -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || (apt-get update -qq && apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null) || echo "orthanc not installed: the DICOMweb tests will skip"

test: $(STAMP) chromium orthanc
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
