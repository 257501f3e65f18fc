#!/usr/bin/env bash
# Prepares .gpu-carry/ for `scripts/gpu_check.sh --offline` on a bare GPU machine (no network, its own torch,
# no diffusers or pydantic): the wheels such a machine lacks, for its Python (default 3.12), and 30,000
# Fashion-MNIST training images as npz (the short run's data; needs the Debian package dataset-fashion-mnist).
# About 22 MB; carry it with the working tree (the device tool's `carry: [".gpu-carry"]`).
#   scripts/gpu_carry.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
pyver="${1:-3.12}"
mkdir -p .gpu-carry/wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-carry/wheels \
  "diffusers==$("$PY" -c 'import diffusers; print(diffusers.__version__)')" \
  "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  annotated-types typing-inspection importlib_metadata "typing-extensions>=4.16"
"$PY" - <<'PYEOF'
import numpy as np
from diffprune.data import load_dataset
ds = load_dataset("fashion-mnist")
idx = np.sort(np.random.default_rng(0).permutation(len(ds))[:30000])
np.savez_compressed(".gpu-carry/fashion-mnist-30k.npz", images=ds.images[idx][:, 0], labels=ds.labels[idx].astype(np.uint8))
PYEOF
du -sh .gpu-carry
