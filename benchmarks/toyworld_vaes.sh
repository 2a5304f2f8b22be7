#!/usr/bin/env bash
# Train several ToyWorld VAE candidates at once on one GPU, then tar the saved VAEs and their logs into $OUT.
# Usage: bash benchmarks/toyworld_vaes.sh MINUTES BATCH "family:width:lr" ...   (VAE_EXTRA: more `vae` flags)
# Each process is killed after DEADLINE seconds (default 570) so the tar always happens inside a 10-minute call.
set -u
minutes=$1; batch=$2; shift 2
work=/tmp/toyworld-vaes; mkdir -p "$work"
for cfg in "$@"; do
  IFS=: read -r family width lr <<<"$cfg"
  name="vae-$family-w$width-lr$lr"
  # shellcheck disable=SC2086
  timeout "${DEADLINE:-570}" python3 -m pipelines.toyworld vae --family "$family" --vae-width "$width" --lr "$lr" \
    --device cuda --minutes "$minutes" --batch-size "$batch" --out "$work/$name" ${VAE_EXTRA:-} >"$work/$name.log" 2>&1 &
done
wait
for f in "$work"/*.log; do echo "=== $f"; tr '\r' '\n' <"$f" | grep -v "it/s\]\|^\s*$" | tail -6; done
tar czf "${OUT:-/tmp}/toyworld-vaes.tgz" -C "$work" .
