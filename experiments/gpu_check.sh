#!/usr/bin/env bash
# One device run: kernel-vs-XLA checks, kernel tilings, pooling and model
# benchmarks on a GPU. Usage (repo root; results under $OUT): bash experiments/gpu_check.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAX_PLATFORMS=cuda
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
log() { tee -a "$OUT/log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | log
python3 -c "import jax, triton; print(jax.__version__, triton.__version__, jax.devices())" 2>&1 | log
timeout 80 python3 experiments/gpu_check.py --sweep --out "$OUT/gpu_check.json" 2>&1 | log
TILES=$(grep -o 'BEST_TILES [0-9,]*' "$OUT/log" | tail -1 | cut -d' ' -f2)
echo "tiles: ${TILES:-default}" | log
timeout 50 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py 2>&1 | log
timeout 100 python3 experiments/bench_pooling.py --shapes 32,56,56,256 128,28,28,32 \
  --reps 10 --inner 10 --peak-gbps 3350 ${TILES:+--pallas-tiles $TILES} \
  --out "$OUT/bench_pooling_gpu.json" 2>&1 | log
timeout 150 python3 experiments/bench_models.py --pairs lip_resnet50:resnet50 --batch 64 \
  --dtype bfloat16 --reps 5 --implementations xla pallas ${TILES:+--pallas-tiles $TILES} \
  --out "$OUT/bench_models_gpu.json" 2>&1 | log
echo "gpu_check.sh done" | log
