#!/usr/bin/env bash
# Issue 13, fifth round, on an nvidia-h200-x2 device call (both GPUs at once):
#   GPU 0: benchmarks/quant_linears.py (the linear table with the tuned eager FP8 activation pass and the NVFP4
#          backends), then ToyWorld quality of NVFP4 weights and the 6Bit router on a GPU
#          (benchmarks/toyworld_cache_compare.py --device cuda, 8 prompts, 50 steps + CFG);
#   GPU 1: benchmarks/cache_generation.py — whole 50-step CFG generations on the Wan2.1-1.3B architecture (random
#          weights): stock, turbo's default, TDC, diffusers' FirstBlockCache and MagCache.
# Results in $OUT/round5/.   Usage: bash benchmarks/issue13_round5.sh  (GEN_CONFIGS, VARIANTS override)
set -u
OUT=${OUT:-/tmp/out}; R="$OUT/round5"; mkdir -p "$R"
CAL=benchmarks/results/2026-11-30-cpu-toyworld-mixed-calibration.json
V=${VARIANTS:-bf16,fp8-gemm,fp8-gemm-fast,fp8-q,fp8-qc,fp8,fp8-fast,fp8-c-fast,nvfp4-dq-only,nvfp4-dq,nvfp4-dq-c,nvfp4-fp8-fast,nvfp4-fp8-c-fast}
(CUDA_VISIBLE_DEVICES=0 timeout 300 python3 benchmarks/quant_linears.py --variants "$V" --json "$R/linears.json" \
   > "$R/linears.log" 2>&1
 CUDA_VISIBLE_DEVICES=0 timeout 240 python3 benchmarks/toyworld_cache_compare.py --device cuda --prompts 8 \
   --configs "none,nvfp4,mixed@$CAL,mixed@$CAL@0.2" --json "$R/toyworld_quant.json" > "$R/toyworld_quant.log" 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 560 python3 benchmarks/cache_generation.py --model wan2.1-t2v-1.3b --size 480p \
   --steps 50 --configs "${GEN_CONFIGS:-none,default,tdc@0.1,fbc,mag}" --json "$R/generation.json" \
   > "$R/generation.log" 2>&1) &
wait
cat "$R/linears.log"; tail -n 8 "$R/toyworld_quant.log"; tail -n 12 "$R/generation.log"
