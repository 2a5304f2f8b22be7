#!/usr/bin/env bash
# Issue 12 on an nvidia-h200-x2 device call: GPU 0 times the real-size distillation steps (benchmarks/jvp_attention.py,
# benchmarks/distill_step.py), GPU 1 trains and judges ToyWorld students (benchmarks/toyworld_students.py) at the same
# time. Results go to $OUT (at most 8 files come back: tars). Usage: bash benchmarks/issue12_h200x2.sh RUNS MINUTES [BENCH]
set -u
RUNS=${1:-rcm,rcm-sla,sla5}; MINUTES=${2:-5}; BENCH=${3:-1}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/st /tmp/bench
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > /tmp/bench/gpus.txt
python3 -c "import torch, triton, diffusers; print(torch.__version__, triton.__version__, diffusers.__version__)" >> /tmp/bench/gpus.txt
if [ "$BENCH" = 1 ]; then
  (CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/jvp_attention.py --json /tmp/bench/jvp.json > /tmp/bench/jvp.log 2>&1
   CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/distill_step.py --steps 2 --out /tmp/bench/step.json > /tmp/bench/step.log 2>&1
   tar -cf "$OUT/bench.tar" -C /tmp bench) &
fi
timeout "${STUDENT_TIMEOUT:-540}" python3 benchmarks/toyworld_students.py --out /tmp/st --gpus 1 --minutes "$MINUTES" \
  --runs "$RUNS" --teacher-eval > /tmp/st/students.log 2>&1
wait
cp /tmp/st/students.log "$OUT/" 2>/dev/null
tar -cf "$OUT/eval.tar" -C /tmp/st eval summary.json $(cd /tmp/st && ls *.log) --exclude='*.npy' 2>/dev/null
for r in ${RUNS//,/ }; do [ -d /tmp/st/$r/student ] && tar -cf "$OUT/student-$r.tar" -C /tmp/st/$r student; done
ls -la "$OUT"; tail -30 /tmp/st/students.log; grep -h "|" /tmp/bench/step.log 2>/dev/null | tail -12
