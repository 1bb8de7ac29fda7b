#!/usr/bin/env bash
# The GPU device check in one call of the lent machine (docs/device-check.md). Here, once:
#   make device-pack         # .device/: CIFAR-10-LT as one .npz + the wheels the lent image lacks
# then one call of the device tool:
#   run(command="bash benchmarks/device_check.sh", carry=[".device"], timeout_s=600)
# It needs only the image's python3 (torch, timm, accelerate, ...) and .device/: no pip install of
# this project (PYTHONPATH=.), no network. The phases (benchmarks/device_check.py) write their files
# into $OUT as each one ends; the whole log goes to $OUT/log.txt as it is printed.
# Rerun some phases only: bash benchmarks/device_check.sh --phases c2,d
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/runs/device/out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export BACON_ZOO_CIFAR10=${BACON_ZOO_CIFAR10:-$PWD/.device/cifar10_lt.npz} BACON_ZOO_CACHE=$PWD/runs/device/cache
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ -f .device/wheels/requirements.txt ]; then  # datasets & co. for the tests on the bundled digits
    SITE=$PWD/runs/device/site
    rm -rf "$SITE"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        --find-links .device/wheels -r .device/wheels/requirements.txt; then
        export PYTHONPATH=$PYTHONPATH:$SITE
        echo "wheels: $(tr '\n' ' ' <.device/wheels/requirements.txt)installed into $SITE"
    else
        echo "wheels: the install failed; the tests on digits (they need datasets) will fail"
    fi
fi
"$PY" benchmarks/device_check.py run --out "$OUT" "$@"
rc=$?
echo "device_check.sh: exit $rc"
exit $rc
