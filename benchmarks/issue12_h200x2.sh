#!/usr/bin/env bash
# Issue 12 on an nvidia-h200-x2 device call, both GPUs busy for ~9 minutes:
#   GPU 1: the latent cache, then the ToyWorld students RUNS_A (benchmarks/toyworld_students.py) for MINUTES_A each;
#   GPU 0: the real-size distillation steps BENCH (benchmarks/distill_step.py variants; "" = none), then the students
#          RUNS_B for MINUTES_B each, the teacher's judge run and same-seed PSNR against it.
# Results go to $OUT as tars (at most 8 files come back): bench.tar, evalA.tar, evalB.tar, student-NAME.tar.
# EXTRA_A: more toyworld_students.py arguments for RUNS_A (e.g. --teacher-eval: GPU 1 judges the teacher too).
# Usage: RUNS_A=rcm-sla MINUTES_A=6.5 RUNS_B=sla5,rcm MINUTES_B=4 BENCH=sla-step-gc,dense-step-gc \
#        bash benchmarks/issue12_h200x2.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/bench /tmp/stA /tmp/stB
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > /tmp/bench/gpus.txt
python3 -c "import torch, triton, diffusers; print(torch.__version__, triton.__version__, diffusers.__version__)" \
  >> /tmp/bench/gpus.txt
students() {  # GPU OUTDIR RUNS MINUTES extra args...
  local gpu=$1 out=$2 runs=$3 minutes=$4; shift 4
  timeout "${STUDENT_TIMEOUT:-540}" python3 benchmarks/toyworld_students.py --out "$out" --gpus "$gpu" \
    --cache /tmp/cache --minutes "$minutes" --runs "$runs" "$@" > "$out/students.log" 2>&1
}
students 1 /tmp/stA "${RUNS_A:-rcm-sla}" "${MINUTES_A:-6.5}" ${EXTRA_A:-} &
(if [ -n "${BENCH:-}" ]; then
   CUDA_VISIBLE_DEVICES=0 timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/distill_step.py --variants "$BENCH" \
     --steps 3 --out /tmp/bench/step.json > /tmp/bench/step.log 2>&1
 fi
 tar -cf "$OUT/bench.tar" -C /tmp bench
 [ -n "${RUNS_B:-}" ] && students 0 /tmp/stB "$RUNS_B" "${MINUTES_B:-4}" --wait-cache --teacher-eval) &
wait
for s in A B; do
  d=/tmp/st$s; [ -f $d/students.log ] || continue
  (cd $d && tar -cf "$OUT/eval$s.tar" --exclude='*.npy' --exclude='cache' --exclude='checkpoints' \
     --exclude='student' students.log $(ls -d eval summary.json *.log 2>/dev/null | sort -u))
  for r in $(ls $d); do [ -d $d/$r/student ] && tar -cf "$OUT/student-$r.tar" -C $d/$r student; done
done
ls -la "$OUT"; for f in /tmp/stA/students.log /tmp/stB/students.log; do [ -f $f ] && tail -n 12 $f; done; grep -h "^|" /tmp/bench/step.log 2>/dev/null
