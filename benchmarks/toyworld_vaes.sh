#!/usr/bin/env bash
# Train several ToyWorld VAE candidates at once on one GPU (each process is launch-bound; they share the card), then
# tar the saved VAEs and their logs into $OUT. Usage: bash benchmarks/toyworld_vaes.sh MINUTES BATCH "family:width:lr" ...
set -u
minutes=$1; batch=$2; shift 2
work=/tmp/toyworld-vaes; mkdir -p "$work"
for cfg in "$@"; do
  IFS=: read -r family width lr <<<"$cfg"
  name="vae-$family-w$width-lr$lr"
  python3 -m pipelines.toyworld vae --family "$family" --vae-width "$width" --lr "$lr" --device cuda \
    --minutes "$minutes" --batch-size "$batch" --out "$work/$name" >"$work/$name.log" 2>&1 &
done
wait
for f in "$work"/*.log; do echo "=== $f"; grep -v "it/s\]" "$f" | tail -8; done
tar czf "${OUT:-/tmp}/toyworld-vaes.tgz" -C "$work" .
