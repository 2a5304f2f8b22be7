#!/usr/bin/env bash
# Issue 12 (FSDP2 / DDP on GPUs) and issue 13 (NVFP4 memory) on an nvidia-h200-x2 device call. PART selects:
#   PART=step   the real-size rCM step (Wan2.1-1.3B, 480p/81f, random weights) under accelerate's FSDP2 over both
#               GPUs (rcm-step-gc, rcm-step), then the same step under DDP (--multi_gpu): benchmarks/distill_step.py.
#   PART=toy    GPU 0+1: a ToyWorld rCM run end to end through `accelerate launch --use_fsdp --fsdp_version 2 -m
#               turbo.distill` (checkpoints, export; no sample videos: this machine has no imageio-ffmpeg, the FSDP
#               sampling path is tested on the CPU), resumed for 10 more steps, then the same run
#               under DDP; concurrently (QUANT=1) GPU 0 runs benchmarks/quant_memory.py (Wan-14B 480p bf16/NVFP4/FP8).
# Results: $OUT/fsdp.tar (logs, JSON, the FSDP export's card and sample video).
set -u
OUT=${OUT:-/tmp/out}; R=/tmp/fsdp; mkdir -p "$OUT" $R
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $R/gpus.txt
python3 -c "import torch, triton, diffusers, accelerate; print(torch.__version__, triton.__version__, \
diffusers.__version__, accelerate.__version__)" >> $R/gpus.txt
LAUNCH="python3 -m accelerate.commands.launch --num_processes 2 --num_machines 1 --mixed_precision bf16 \
--dynamo_backend no"
FSDP="--use_fsdp --fsdp_version 2"
if [ "${PART:-step}" = step ]; then
  timeout 330 $LAUNCH $FSDP benchmarks/distill_step.py --variants "${STEP_VARIANTS:-rcm-step-gc,rcm-step}" --steps 2 --sim-steps 2 \
    --out $R/step_fsdp.json > $R/step_fsdp.log 2>&1
  [ "${STEP_DDP:-1}" = 1 ] && timeout 200 $LAUNCH --multi_gpu benchmarks/distill_step.py --variants rcm-step-gc --steps 2 --sim-steps 2 \
    --out $R/step_ddp.json > $R/step_ddp.log 2>&1
else
  [ "${QUANT:-1}" = 1 ] && (CUDA_VISIBLE_DEVICES=0 timeout 400 python3 benchmarks/quant_memory.py --model wan2.1-t2v-14b --size 480p \
     --modes bf16,nvfp4,fp8 --out $R/quant_memory.json > $R/quant_memory.log 2>&1) &
  python3 -c "
import torch
from diffusers import DiffusionPipeline
from turbo.distill.data import cache_toyworld
pipe = DiffusionPipeline.from_pretrained('models/toyworld/wan-t2v', dtype=torch.bfloat16).to('cuda')
cache_toyworld(pipe, 64, '$R/cache', seed=0, progress=False)" > $R/cache.log 2>&1
  SETS="--set teacher=models/toyworld/wan-t2v --set data=$R/cache --set batch_size=4 --set save_every=20 \
--set sample_every=0 --set log_every=10 --set tangent_warmup=10 --set show_progress=false"
  timeout 150 $LAUNCH $FSDP -m turbo.distill --config examples/distill_toyworld.yaml --out $R/toy-fsdp $SETS \
    --set steps=30 > $R/toy_fsdp.log 2>&1
  timeout 100 $LAUNCH $FSDP -m turbo.distill --config examples/distill_toyworld.yaml --out $R/toy-fsdp $SETS \
    --set steps=40 --resume > $R/toy_fsdp_resume.log 2>&1
  timeout 150 $LAUNCH --multi_gpu -m turbo.distill --config examples/distill_toyworld.yaml --out $R/toy-ddp $SETS \
    --set steps=30 > $R/toy_ddp.log 2>&1
  wait
  cp $R/toy-fsdp/student/README.md $R/toy_fsdp_card.md 2>/dev/null
  cp $R/toy-fsdp/samples/*.mp4 $R/ 2>/dev/null
  ls -la $R/toy-fsdp $R/toy-fsdp/* > $R/toy_fsdp_files.txt 2>&1
fi
tar -cf "$OUT/fsdp-${PART:-step}.tar" -C /tmp --exclude='fsdp/cache' --exclude='fsdp/toy-*' fsdp
for f in $R/*.log; do echo "== $f"; grep -v "Warning\|warn(" $f | grep -h "^|\|step\|exported\|resumed\|Error\|error\|OOM\|rank" | tail -n 14; done
