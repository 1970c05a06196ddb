#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one short run (about 8 minutes on an H100/H200):
# the CUDA tests (methods, TernGrad over NCCL, the torchrun example on the GPU), TernGrad's
# encoding cost, then bench_scale on the 1.1 B LLaMA-shaped model in bf16 (SKIP_SCALE=1 leaves it out).
#
#   benchmarks/bench_scale.py --write-tokens .gpu/tokens.pt     # here: the tokenizer's package is installed
#   OUT=/tmp/gpu benchmarks/gpu_check.sh                          # there: torch with CUDA and transformers
#
# Needs no install: netcompress is imported from src/. Logs and the result table go to $OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/netcompress-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # experiments/ and examples/ live at the root
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py ${EXTRA_TESTS:-} 2>&1 | tee "$OUT/cuda_tests.log" | tail -5
(cd benchmarks && python3 bench_terngrad_codec.py 2>&1 | tee "$OUT/terngrad_codec.log")
[ -n "${SKIP_SCALE:-}" ] && exit 0
(cd benchmarks && timeout "${SCALE_TIMEOUT:-420}" python3 bench_scale.py --size 1.1b \
    --methods "${SCALE_METHODS:-uniform,gptq}" --modes "${SCALE_MODES:-independent,sequential}" --tokens ../.gpu/tokens.pt \
    2>&1 | tee "$OUT/scale.log")
cp benchmarks/results/scale-1.1b-cuda.md benchmarks/results/scale.json "$OUT/" 2>/dev/null
exit 0
