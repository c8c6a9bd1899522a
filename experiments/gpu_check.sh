#!/usr/bin/env bash
# One device run: kernel-vs-XLA checks (Triton and Mosaic GPU) and Triton tilings, pooling
# and model benchmarks, the parts of the XLA graph, the kernel and large-logit tests on a
# GPU. Usage (repo root; results under $OUT): bash experiments/gpu_check.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD JAX_PLATFORMS=cuda
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
log() { tee -a "$OUT/log"; }
NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$NAME" in  # nominal HBM bandwidth (datasheet), GB/s
  *H200*) PEAK=4800 ;; *H100*) PEAK=3350 ;; *) PEAK=${PEAK_GBPS:-} ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | log
python3 -W always -c "import jax, triton; print(jax.__version__, triton.__version__,
jax.devices()); import lip_jax.pallas_gpu" 2>&1 | log
timeout 80 python3 -W always::DeprecationWarning experiments/gpu_check.py --sweep \
  --out "$OUT/gpu_check.json" 2>&1 | log
TILES=$(grep -o 'BEST_TILES [0-9,]*' "$OUT/log" | tail -1 | cut -d' ' -f2)
echo "tiles: ${TILES:-default}" | log
timeout 100 python3 experiments/bench_pooling.py --shapes 32,56,56,256 128,28,28,32 \
  --reps 10 --inner 10 ${PEAK:+--peak-gbps $PEAK} ${TILES:+--pallas-tiles $TILES} \
  --out "$OUT/bench_pooling_gpu.json" 2>&1 | log
timeout 200 python3 experiments/bench_models.py --pairs lip_resnet50:resnet50 --batch 64 \
  --dtype bfloat16 --reps 5 --implementations xla pallas_gpu pallas_mosaic_gpu \
  ${TILES:+--pallas-tiles $TILES} \
  --out "$OUT/bench_models_gpu.json" 2>&1 | log
timeout 60 python3 experiments/bench_xla_parts.py --out "$OUT/bench_xla_parts_gpu.json" 2>&1 | log
timeout 80 python3 -m pytest -q -p no:cacheprovider -k "not tpu" tests/test_kernels.py \
  tests/test_large_logits.py 2>&1 | log
timeout 70 python3 experiments/bench_models.py --pairs lip_resnet50:resnet50 --batch 64 \
  --dtype bfloat16 --reps 5 --implementations xla --lip-kwargs '{"remat_logits": true}' \
  --out "$OUT/bench_models_gpu_remat.json" 2>&1 | log
echo "gpu_check.sh done" | log
