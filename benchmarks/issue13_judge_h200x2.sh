#!/usr/bin/env bash
# Issue 13 quality bars at full size on an nvidia-h200-x2 call: the ToyWorld Wan T2V teacher judged on 200 prompts
# (50 steps, CFG 5, 17 frames 256², bf16 as shipped) stock / TDC (GPU 0) and FP8 / FP8 + TDC (GPU 1), each saving its
# first SAVE videos; then same-seed PSNR of each against stock. Results: $OUT/judge.tar (JSONs and logs).
set -u
OUT=${OUT:-/tmp/out}; R=/tmp/judge; mkdir -p "$OUT" $R
SAVE=${SAVE:-64}; PROMPTS=${PROMPTS:-200}; LIMIT=${LIMIT:-220}
acc() {  # GPU NAME extra args...
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu timeout $LIMIT python3 -m pipelines.toyworld accuracy --model models/toyworld/wan-t2v \
    --prompts $PROMPTS --steps 50 --guidance 5 --frames 17 --device cuda --dtype stored --batch-size 50 \
    --save-videos $R/v-$name --save-count $SAVE --json $R/$name.json "$@" > $R/$name.log 2>&1
}
(acc 0 stock; acc 0 tdc --cache tdc) &
(acc 1 fp8 --quant fp8; acc 1 fp8-tdc --quant fp8 --cache tdc) &
wait
for n in tdc fp8 fp8-tdc; do
  python3 -m pipelines.toyworld psnr $R/v-$n/cfg5 $R/v-stock/cfg5 --json $R/psnr-$n.json > $R/psnr-$n.log 2>&1
done
tar -cf "$OUT/judge.tar" -C /tmp --exclude='judge/v-*' judge
for f in $R/*.log; do echo "== $f"; grep -v "it/s\|batch/s\|Loading" $f | tail -n 8; done
