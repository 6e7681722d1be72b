#!/usr/bin/env bash
# Install scoresde and its test tools into the current Python environment.
# `bash setup.sh docs` also installs the documentation tools (the `docs` extra: MkDocs, Material,
# mkdocstrings), for `mkdocs build --strict`.
# When no torch is present, the CPU build of torch 2.13.0 is installed first, so that the
# package's "torch>=2.2" requirement does not pull a multi-GB CUDA build. To use a GPU, install
# the torch build you want before running this script; it is then left alone.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
EXTRAS="dev"
case "${1:-}" in
  "") ;;
  docs) EXTRAS="dev,docs" ;;
  *) echo "usage: bash setup.sh [docs]" >&2; exit 2 ;;
esac
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup.sh: no torch found; installing the CPU build torch==2.13.0" >&2
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[$EXTRAS]"
# k-diffusion is a test peer only: its own dependencies would pull a newer torch and torchvision,
# so it is installed without them and the tests load its sampling module alone (tests/peers.py)
"$PY" -m pip install --quiet --no-deps "k-diffusion==0.1.1.post1"
