#!/usr/bin/env bash
# The GPU checks a CPU cannot do, as one short script for a lent device (see README "Benchmarks").
# Usage, from the repository root, with the CIFAR-10 copy carried into the checkout (55 MB):
#   mkdir -p .data && cp -r ../shared/datasets/cifar10-jpeg .data/   # .data is git-ignored
#   bash benchmarks/device_check.sh [OUT_DIR]       # OUT_DIR default: benchmarks/results
# It installs the package, runs the CUDA tests of the augmentations, the headline benchmark (trainer vs
# bare backbone at B=64, mu=2, auto precision), the step and loader benchmarks, and a short real
# CIFAR-10-LT run (`cifar10_lt` recipe, STEPS steps), then copies every JSON to OUT_DIR.
set -euo pipefail
OUT=${1:-benchmarks/results}
STEPS=${STEPS:-3000}
export BACON_ZOO_CIFAR10=${BACON_ZOO_CIFAR10:-$PWD/.data/cifar10-jpeg} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python3 -m pip install -q -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -m pytest -q tests/test_augment.py -k cuda 2>&1 | tail -3 | tee "$OUT/cuda_tests.txt"
python3 benchmarks/headline.py
python3 benchmarks/step_time.py
python3 benchmarks/loader.py
start=$(date +%s)
python3 train.py --recipe cifar10_lt --steps "$STEPS" --eval-every 500 --checkpoint-every 1000 \
    --output-dir runs/device_cifar10_lt --no-export
echo "{\"steps\": $STEPS, \"wall_s\": $(( $(date +%s) - start ))}" > "$OUT/cifar10_lt_run_wall.json"
cp runs/device_cifar10_lt/summary.json "$OUT/cifar10_lt_${STEPS}_summary.json"
cp runs/device_cifar10_lt/metrics.jsonl "$OUT/cifar10_lt_${STEPS}_metrics.jsonl"
cp benchmarks/results/*_cuda.json "$OUT/" 2>/dev/null || true
