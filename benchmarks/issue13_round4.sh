#!/usr/bin/env bash
# Issue 13, fourth round, on an nvidia-h200-x2 device call (one measurement per GPU, both at once):
#   GPU 0: benchmarks/quant_linears.py — the Triton NVFP4 dequantisation before cuBLAS (default CUDA backend), NVFP4
#          weights with FP8 GEMMs, the eager Triton FP8 activation pass, fast accumulation; bit-identity checks;
#   GPU 1: benchmarks/quant_memory.py — Wan-14B 480p forward peak / time with NVFP4 (bf16 and FP8 compute), FP8.
# Results in $OUT/round4/.
# Usage: bash benchmarks/issue13_round4.sh   (VARIANTS / SHAPES / MODES override the defaults below)
set -u
OUT=${OUT:-/tmp/out}; R="$OUT/round4"; mkdir -p "$R"
V=${VARIANTS:-bf16,fp8-gemm,fp8-gemm-fast,fp8-q,fp8-qc,fp8-fast,fp8-c-fast,nvfp4-dq-only,nvfp4-dq,nvfp4-dq-c,nvfp4-fp8-fast,nvfp4-fp8-c-fast}
(CUDA_VISIBLE_DEVICES=0 timeout "${LINEARS_TIMEOUT:-420}" python3 benchmarks/quant_linears.py --shapes "${SHAPES:-14b,1.3b}" \
   --variants "$V" --json "$R/linears.json" > "$R/linears.log" 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout "${MEMORY_TIMEOUT:-420}" python3 benchmarks/quant_memory.py --model wan2.1-t2v-14b \
   --size 480p --modes "${MODES:-bf16,nvfp4,nvfp4-fp8,fp8-fast,fp8}" --reps "${REPS:-2}" --out "$R/memory.json" \
   > "$R/memory.log" 2>&1) &
wait
cat "$R/linears.log"; grep -v "^Loading" "$R/memory.log" | tail -n 20
