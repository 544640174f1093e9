#!/usr/bin/env bash
# GPU check of issue 15: the Table 1 VAE step and the derived DDPM step on one GPU and on all GPUs,
# at several batch sizes; throughput and the ratio to hand-written JAX (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh                          # batches 128,1024,8192; 50 rounds
#   BATCHES=256,4096 ROUNDS=100 bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --models vae             # extra arguments go to gpu_check.py
#
# Needs jax with CUDA (pip install -U "jax[cuda12]") and this repository installed (pip install -e .).
# Writes the table to stdout and to benchmarks/gpu_check_result.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
else
    echo "nvidia-smi not found: no NVIDIA GPU here; the run below checks the script only" >&2
fi
python -c "import jax; print('jax', jax.__version__, jax.devices())"

python benchmarks/gpu_check.py --batches "${BATCHES:-128,1024,8192}" --rounds "${ROUNDS:-50}" "$@" \
    | tee benchmarks/gpu_check_result.md
