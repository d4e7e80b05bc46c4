#!/usr/bin/env bash
# Download, here, the Python 3.12 wheels that the lent GPU machine lacks into .whl/ (git-ignored
# through .git/info/exclude), for `benchmarks/device/gpu_checks.sh` to install there. The machine
# has no network; its python3 already has torch, CuPy, numpy, scipy, msgpack, safetensors, tqdm,
# pillow, matplotlib, hypothesis, pytest(-timeout), pybind11, CMake and ninja (see the device
# tool's KINDS.md). The versions are the ones this project's .venv runs.
#
#   bash benchmarks/device/wheels.sh          # then: run(command="bash benchmarks/device/gpu_checks.sh", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
mkdir -p .whl
PY=${PYTHON:-python3}
platforms=()
for n in 2_28 2_27 2_26 2_24 2_17 2_5; do platforms+=(--platform "manylinux_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# runtime needs of medfl's core and benchmarks, and their own needs the device lacks
wheels=(
  pyzmq==27.3.0 cryptography==51.0.1 cffi==2.1.1 pycparser==3.12 tomli_w==1.2.0 pydicom==3.0.2
  dp-accounting==0.6.0 dm-tree==0.1.10 attrs==23.2.0 opacus
)
for w in "${wheels[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$w"
done
ls -la .whl
du -sh .whl
