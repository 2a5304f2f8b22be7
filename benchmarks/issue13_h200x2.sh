#!/usr/bin/env bash
# Issue 13 benchmarks on GPU 0 of an nvidia-h200-x2 device call while GPU 1 trains ToyWorld students (issue 12):
#   GPU 0: benchmarks/quant_linears.py (W8A8 GEMM table, Wan-14B and 1.3B shapes), then benchmarks/compile_forward.py
#          (Wan forward, variants FWD at FWD_MODEL / FWD_SIZE);
#   GPU 1: benchmarks/issue12_h200x2.sh with RUNS_A (and its EXTRA_A / MINUTES_A), nothing on its GPU 0 side.
# Results in $OUT: quant.tar (logs + JSON), and issue12_h200x2.sh's tars.
# Usage: FWD=eager,sla-regional,sla-regional+fp8 RUNS_A=sla2-s2-long MINUTES_A=5.25 bash benchmarks/issue13_h200x2.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/quant
(CUDA_VISIBLE_DEVICES=0 timeout "${LINEARS_TIMEOUT:-240}" python3 benchmarks/quant_linears.py \
   --shapes "${SHAPES:-14b,1.3b}" --json /tmp/quant/linears.json > /tmp/quant/linears.log 2>&1
 if [ -n "${FWD:-}" ]; then
   CUDA_VISIBLE_DEVICES=0 timeout "${FWD_TIMEOUT:-300}" python3 benchmarks/compile_forward.py \
     --model "${FWD_MODEL:-wan2.1-t2v-1.3b}" --size "${FWD_SIZE:-480p}" --variants "$FWD" --reps 5 \
     --out /tmp/quant/forward.json > /tmp/quant/forward.log 2>&1
 fi
 tar -cf "$OUT/quant.tar" -C /tmp quant) &
if [ -n "${RUNS_A:-}" ]; then RUNS_B= BENCH= bash benchmarks/issue12_h200x2.sh > /tmp/issue12.log 2>&1; fi &
wait
cat /tmp/quant/linears.log; grep -v "^\(Loading\|  \)" /tmp/quant/forward.log 2>/dev/null | tail -n 30
tail -n 8 /tmp/issue12.log 2>/dev/null
