#!/usr/bin/env bash
# The official client SDKs, each in its own virtual environment, for the wire-compatibility tests:
#   openprotein-python 0.2.x (tests/client/test_official_sdk.py)  -> PLMSERVE_OPENPROTEIN_SDK_PYTHON
#   openprotein-python 0.17.0 (tests/client/test_official_sdk017.py) -> PLMSERVE_OPENPROTEIN017_SDK_PYTHON
#   esm 3.2.1.post1 Forge client (tests/api/test_forge_sdk_client.py) -> PLMSERVE_ESM_SDK_PYTHON
#   biolmai 0.4.0 BioLM v3 client (tests/api/test_biolmai_sdk.py)  -> PLMSERVE_BIOLMAI_SDK_PYTHON
# Source it: it exports the variables for the venvs that installed.
SDK_DIR=${PLMSERVE_SDK_DIR:-/tmp/plmserve-sdk}
mkdir -p "$SDK_DIR"
if [ ! -x "$SDK_DIR/openprotein/bin/python" ] || ! "$SDK_DIR/openprotein/bin/python" -c "import openprotein" 2>/dev/null; then
  python -m venv "$SDK_DIR/openprotein" && "$SDK_DIR/openprotein/bin/pip" install -q openprotein-python==0.2.9 \
    || echo "warning: openprotein-python SDK could not be installed; its contract test will skip"
fi
"$SDK_DIR/openprotein/bin/python" -c "import openprotein" 2>/dev/null \
  && export PLMSERVE_OPENPROTEIN_SDK_PYTHON="$SDK_DIR/openprotein/bin/python"
# openprotein-python 0.17.0 (the current SDK; tests/client/test_official_sdk017.py) -> PLMSERVE_OPENPROTEIN017_SDK_PYTHON
if [ ! -x "$SDK_DIR/openprotein017/bin/python" ] || ! "$SDK_DIR/openprotein017/bin/python" -c "import openprotein" 2>/dev/null; then
  python -m venv "$SDK_DIR/openprotein017" && "$SDK_DIR/openprotein017/bin/pip" install -q openprotein-python==0.17.0 \
    || echo "warning: openprotein-python 0.17.0 could not be installed; its contract test will skip"
fi
"$SDK_DIR/openprotein017/bin/python" -c "import openprotein" 2>/dev/null \
  && export PLMSERVE_OPENPROTEIN017_SDK_PYTHON="$SDK_DIR/openprotein017/bin/python"
# esm pins old torch/transformers: install it without dependencies over this python's packages
if [ ! -x "$SDK_DIR/esm/bin/python" ] || ! "$SDK_DIR/esm/bin/python" -c "import esm.sdk.forge" 2>/dev/null; then
  python -m venv --system-site-packages "$SDK_DIR/esm" \
    && "$SDK_DIR/esm/bin/pip" install -q --no-deps esm==3.2.1.post1 \
    && "$SDK_DIR/esm/bin/pip" install -q einops "biotite>=1.0.0" msgpack-numpy biopython scikit-learn \
         brotli attrs cloudpathlib tenacity zstd \
    || echo "warning: esm SDK could not be installed; its contract test will skip"
fi
"$SDK_DIR/esm/bin/python" -c "import esm.sdk.forge" 2>/dev/null \
  && export PLMSERVE_ESM_SDK_PYTHON="$SDK_DIR/esm/bin/python"
# biolmai 0.4.0 (BioLM /api/v3 client; issue 10): its own venv, its own dependencies
if [ ! -x "$SDK_DIR/biolmai/bin/python" ] || ! BIOLMAI_THREADS=4 "$SDK_DIR/biolmai/bin/python" -c "import biolmai" 2>/dev/null; then
  python -m venv "$SDK_DIR/biolmai" && "$SDK_DIR/biolmai/bin/pip" install -q biolmai==0.4.0 \
    || echo "warning: biolmai SDK could not be installed; its contract test will skip"
fi
BIOLMAI_THREADS=4 "$SDK_DIR/biolmai/bin/python" -c "import biolmai" 2>/dev/null \
  && export PLMSERVE_BIOLMAI_SDK_PYTHON="$SDK_DIR/biolmai/bin/python"
true
